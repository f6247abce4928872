//! One call from a browser, over HTTP or WebSocket: which methods may be called, how the
//! arguments are read, and what the reply frames turn out to be (one result, or a stream).

use serde_json::{Map, Value};

use super::reply::PublicError;
use super::State;
use crate::rpc::{CallOptions, Replies};

/// The longest service or method name looked at.
const MAX_NAME: usize = 128;

fn is_name(part: &str) -> bool {
    part.len() <= MAX_NAME && crate::config::gateway::is_name(part)
}

/// `service.method` split, if it is exposed; a 404 otherwise (the same as for a method that
/// does not exist).
pub(crate) fn exposed<'a>(
    state: &State,
    service: &'a str,
    method: &'a str,
) -> Result<(), PublicError> {
    if is_name(service) && is_name(method) && state.settings.exposes(service, method) {
        Ok(())
    } else {
        Err(PublicError::not_found(service, method))
    }
}

/// A JSON array is the positional arguments, an object the arguments by name, `null` (or
/// nothing) none.
pub(crate) fn arguments(args: Value) -> Result<(Vec<Value>, Map<String, Value>), PublicError> {
    match args {
        Value::Null => Ok((Vec::new(), Map::new())),
        Value::Array(args) => Ok((args, Map::new())),
        Value::Object(kwargs) => Ok((Vec::new(), kwargs)),
        _ => Err(PublicError::bad_request(
            "expected the arguments as a JSON array (positional) or object (by name)",
        )),
    }
}

/// Sends the request.
pub(crate) async fn start(
    state: &State,
    service: &str,
    method: &str,
    args: Value,
) -> Result<CallReplies, PublicError> {
    exposed(state, service, method)?;
    let (args, kwargs) = arguments(args)?;
    let replies = state
        .client
        .request_unary(service, method, args, kwargs, CallOptions::default())
        .await
        .map_err(|err| PublicError::from_call(err, service, method))?;
    Ok(CallReplies {
        replies,
        service: service.to_owned(),
        method: method.to_owned(),
        held: None,
        started: false,
        done: false,
    })
}

/// What the next frame of a call is, for a browser.
pub(crate) enum Frame {
    /// The call's one result (a unary method's; or a stream of exactly one item, which a
    /// Python service's unary reply cannot be told from).
    Result(Value),
    /// An item of a stream.
    Item(Value),
    /// The end of a stream.
    End,
    Error(PublicError),
}

/// The reply frames of one call. Dropping it cancels a stream on the server.
pub(crate) struct CallReplies {
    replies: Replies,
    service: String,
    method: String,
    /// The frame read ahead while telling a result from a stream.
    held: Option<Frame>,
    started: bool,
    done: bool,
}

impl CallReplies {
    async fn read(&mut self) -> Frame {
        use futures::StreamExt;
        match self.replies.next().await {
            None => Frame::End,
            Some(Ok(value)) => Frame::Item(value),
            Some(Err(err)) => {
                Frame::Error(PublicError::from_call(err, &self.service, &self.method))
            }
        }
    }

    /// The next frame; [`Frame::End`] once the call is over.
    pub async fn next(&mut self) -> Frame {
        if self.done {
            return Frame::End;
        }
        if let Some(frame) = self.held.take() {
            self.done = !matches!(frame, Frame::Item(_));
            return frame;
        }
        if self.started {
            let frame = self.read().await;
            self.done = !matches!(frame, Frame::Item(_));
            return frame;
        }
        self.started = true;
        let frame = match self.read().await {
            // A farine service's unary reply is one frame that ends the call.
            Frame::Item(value) if self.replies.finished() => Frame::Result(value),
            // One item then the end: a unary reply of a Python service.
            Frame::Item(value) => match self.read().await {
                Frame::End => Frame::Result(value),
                next => {
                    self.held = Some(next);
                    Frame::Item(value)
                }
            },
            Frame::End => {
                // A stream of no items.
                Frame::End
            }
            frame => frame,
        };
        self.done = !matches!(frame, Frame::Item(_));
        frame
    }
}
