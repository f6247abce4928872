//! `GET /ws`: one WebSocket per browser, JSON messages both ways.
//!
//! In: `{"id": 1, "call": "calc.add", "args": [2, 3]}`, `{"cancel": 1}`,
//! `{"subscribe": "todo.events", "last_event_id"?: "..."}`, `{"unsubscribe": "todo.events"}`.
//! Out: `{"id": 1, "result": 5}`; `{"id": 2, "item": ...}` then `{"id": 2, "end": true}`;
//! `{"id": 3, "error": {"kind", "message", ...}}`; `{"id": 2, "cancelled": true}`;
//! `{"subscribed": "todo.events"}` then `{"event": "todo.events", "id": "...", "data": ...}`;
//! `{"error": {...}}` for a message that is not understood.
//!
//! Many calls run at once on one socket (at most `max_calls_per_connection`). What waits to be
//! written is bounded: stream items wait for room (the stream on the server waits with them),
//! and a browser that takes nothing for [`SLOW`] is disconnected; events are dropped into a
//! bounded queue and a browser that lets it fill is disconnected: the gateway never grows for
//! a browser that does not read.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::ws::{CloseFrame, Message, Utf8Bytes, WebSocket, WebSocketUpgrade};
use axum::extract::{Query, State as Shared};
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use futures::{SinkExt, StreamExt};
use serde_json::{json, Map, Value};
use tokio::sync::broadcast::error::RecvError;
use tokio::sync::mpsc::{self, error::TrySendError};
use tokio_util::sync::CancellationToken;

use super::call::{self, Frame};
use super::http::Params;
use super::reply::PublicError;
use super::State;

/// The longest a browser may take to accept a message before it is disconnected.
const SLOW: Duration = Duration::from_secs(10);

/// What a socket reads at a time. tungstenite's default (128 KiB) is allocated per socket and
/// zeroed before every read (every poll of the socket, even one that finds nothing): a
/// thousand idle browsers would hold 125 MiB, and each message written to one would cost a
/// 128 KiB memset. Larger messages still arrive (the buffer grows to the message).
const READ_BUFFER: usize = 4 << 10;

/// The longest call id, as JSON.
const MAX_ID: usize = 128;

/// Close codes (RFC 6455): policy violation, going away.
const POLICY: u16 = 1008;
const GOING_AWAY: u16 = 1001;

pub(crate) async fn upgrade(
    Shared(state): Shared<Arc<State>>,
    Query(params): Query<Params>,
    headers: HeaderMap,
    ws: WebSocketUpgrade,
) -> Response {
    if let Err(err) = state.auth.check(&headers, params.access_token.as_deref()) {
        return err.into_response();
    }
    let max = state.settings.max_ws_message_bytes;
    ws.max_message_size(max)
        .max_frame_size(max)
        .read_buffer_size(READ_BUFFER)
        .on_upgrade(move |socket| session(state, socket))
}

/// Why a socket is being closed by the gateway.
#[derive(Clone, Default)]
struct Closing {
    token: CancellationToken,
    reason: Arc<Mutex<Option<(u16, &'static str)>>>,
}

impl Closing {
    fn close(&self, code: u16, reason: &'static str) {
        let mut slot = self.reason.lock().unwrap_or_else(|p| p.into_inner());
        if slot.is_none() {
            *slot = Some((code, reason));
        }
        self.token.cancel();
    }

    fn reason(&self) -> Option<(u16, &'static str)> {
        *self.reason.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Where the tasks of one socket put what it must write.
#[derive(Clone)]
struct Outbox {
    /// Replies and stream items: waited for, up to [`SLOW`].
    replies: mpsc::Sender<Utf8Bytes>,
    /// Events and notices: never waited for; full means the browser is not reading.
    events: mpsc::Sender<Utf8Bytes>,
    closing: Closing,
}

impl Outbox {
    async fn reply(&self, message: Value) {
        let text = Utf8Bytes::from(message.to_string());
        match tokio::time::timeout(SLOW, self.replies.send(text)).await {
            Ok(_) => {}
            Err(_) => self
                .closing
                .close(POLICY, "too slow: messages were not read"),
        }
    }

    fn event(&self, text: Utf8Bytes) {
        if let Err(TrySendError::Full(_)) = self.events.try_send(text) {
            self.closing.close(POLICY, "too slow: events were not read");
        }
    }

    fn notice(&self, message: Value) {
        self.event(Utf8Bytes::from(message.to_string()));
    }
}

struct Session {
    state: Arc<State>,
    outbox: Outbox,
    calls: Arc<Mutex<HashMap<String, tokio::task::AbortHandle>>>,
    permits: Arc<tokio::sync::Semaphore>,
    subscriptions: HashMap<String, tokio::task::JoinHandle<()>>,
    rate: governor::DefaultDirectRateLimiter,
}

async fn session(state: Arc<State>, socket: WebSocket) {
    let (mut sink, mut stream) = socket.split();
    let queue = state.settings.send_queue;
    let (replies, mut reply_box) = mpsc::channel::<Utf8Bytes>(queue);
    let (events, mut event_box) = mpsc::channel::<Utf8Bytes>(queue);
    let closing = Closing {
        token: state.shutdown.child_token(),
        reason: Arc::default(),
    };
    let rate = governor::RateLimiter::direct(state.call_rate);
    let mut session = Session {
        permits: Arc::new(tokio::sync::Semaphore::new(
            state.settings.max_calls_per_connection,
        )),
        state,
        outbox: Outbox {
            replies,
            events,
            closing: closing.clone(),
        },
        calls: Arc::default(),
        subscriptions: HashMap::new(),
        rate,
    };
    let mut interrupted = false;
    loop {
        let outgoing = tokio::select! {
            biased;
            () = closing.token.cancelled() => break,
            Some(text) = reply_box.recv() => text,
            Some(text) = event_box.recv() => text,
            incoming = stream.next() => {
                match incoming {
                    Some(Ok(Message::Text(text))) => session.handle(&text),
                    Some(Ok(Message::Binary(_))) => session.outbox.notice(json!({
                        "error": PublicError::bad_request("expected text messages of JSON").body()
                    })),
                    Some(Ok(Message::Ping(_) | Message::Pong(_))) => {}
                    Some(Ok(Message::Close(_))) | Some(Err(_)) | None => break,
                }
                continue;
            }
        };
        // Watching `closing` while writing: an event queue that fills up behind a write that
        // does not finish ends the socket now, not after SLOW.
        let written = tokio::select! {
            written = tokio::time::timeout(SLOW, sink.send(Message::Text(outgoing))) => written,
            () = closing.token.cancelled() => {
                // A frame may be half written: nothing more can be sent on this socket.
                interrupted = true;
                break;
            }
        };
        match written {
            Ok(Ok(())) => {}
            Ok(Err(_)) => break,
            Err(_) => {
                closing.close(POLICY, "too slow: messages were not read");
                interrupted = true;
                break;
            }
        }
    }
    session.end();
    let reason = closing.reason().or_else(|| {
        session
            .state
            .shutdown
            .is_cancelled()
            .then_some((GOING_AWAY, "the gateway is stopping"))
    });
    if let Some((code, reason)) = reason.filter(|_| !interrupted) {
        tracing::debug!("gateway: closing a WebSocket: {reason}");
        let frame = CloseFrame {
            code,
            reason: Utf8Bytes::from_static(reason),
        };
        let _ = tokio::time::timeout(
            Duration::from_secs(1),
            sink.send(Message::Close(Some(frame))),
        )
        .await;
    }
}

impl Session {
    /// Stops every call (their streams are cancelled on the servers) and subscription.
    fn end(&mut self) {
        let calls = std::mem::take(&mut *self.calls.lock().unwrap_or_else(|p| p.into_inner()));
        for (_, call) in calls {
            call.abort();
        }
        for (_, subscription) in self.subscriptions.drain() {
            subscription.abort();
        }
    }

    fn refuse(&self, id: Option<&Value>, err: PublicError) {
        match id {
            Some(id) => self.outbox.notice(json!({ "id": id, "error": err.body() })),
            None => self.outbox.notice(json!({ "error": err.body() })),
        }
    }

    fn handle(&mut self, text: &str) {
        let message = match serde_json::from_str::<Value>(text) {
            Ok(Value::Object(message)) => message,
            Ok(_) => return self.refuse(None, PublicError::bad_request("expected a JSON object")),
            Err(err) => {
                return self.refuse(None, PublicError::bad_request(format!("not JSON: {err}")))
            }
        };
        if let Some(target) = message.get("call") {
            self.call(&message, target);
        } else if let Some(id) = message.get("cancel") {
            self.cancel(id);
        } else if let Some(exchange) = message.get("subscribe") {
            let last = message.get("last_event_id").and_then(Value::as_str);
            self.subscribe(exchange, last);
        } else if let Some(exchange) = message.get("unsubscribe") {
            if let Some(task) = exchange.as_str().and_then(|e| self.subscriptions.remove(e)) {
                task.abort();
            }
        } else {
            self.refuse(
                None,
                PublicError::bad_request(
                    "expected a message with \"call\", \"cancel\", \"subscribe\" or \"unsubscribe\"",
                ),
            );
        }
    }

    fn call(&mut self, message: &Map<String, Value>, target: &Value) {
        let id = match message.get("id") {
            Some(id @ (Value::Number(_) | Value::String(_))) if id.to_string().len() <= MAX_ID => {
                id.clone()
            }
            _ => {
                return self.refuse(
                    None,
                    PublicError::bad_request(format!(
                    "a call needs an \"id\": a number or a string of at most {MAX_ID} characters"
                )),
                )
            }
        };
        let Some((service, method)) = target.as_str().and_then(|t| t.split_once('.')) else {
            return self.refuse(
                Some(&id),
                PublicError::bad_request("\"call\" is \"service.method\", such as \"calc.add\""),
            );
        };
        if let Err(err) = call::exposed(&self.state, service, method) {
            return self.refuse(Some(&id), err);
        }
        if self.rate.check().is_err() {
            return self.refuse(Some(&id), PublicError::rate_limited());
        }
        let key = id.to_string();
        let mut calls = self.calls.lock().unwrap_or_else(|p| p.into_inner());
        if calls.contains_key(&key) {
            drop(calls);
            return self.refuse(
                Some(&id),
                PublicError::bad_request(format!("call {key} is already in flight on this socket")),
            );
        }
        let Ok(permit) = self.permits.clone().try_acquire_owned() else {
            drop(calls);
            return self.refuse(
                Some(&id),
                PublicError::busy(format!(
                    "at most {} calls in flight per connection",
                    self.state.settings.max_calls_per_connection
                )),
            );
        };
        let args = message.get("args").cloned().unwrap_or(Value::Null);
        let (state, outbox, registry) =
            (self.state.clone(), self.outbox.clone(), self.calls.clone());
        let (service, method) = (service.to_owned(), method.to_owned());
        let task = tokio::spawn({
            let key = key.clone();
            async move {
                run_call(&state, &outbox, &id, &service, &method, args).await;
                drop(permit);
                registry
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .remove(&key);
            }
        });
        calls.insert(key, task.abort_handle());
    }

    fn cancel(&mut self, id: &Value) {
        let call = self
            .calls
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&id.to_string());
        if let Some(call) = call {
            // Dropping the call's replies cancels its stream on the server.
            call.abort();
            self.outbox.notice(json!({ "id": id, "cancelled": true }));
        }
    }

    fn subscribe(&mut self, exchange: &Value, last_event_id: Option<&str>) {
        let Some(exchange) = exchange.as_str() else {
            return self.refuse(
                None,
                PublicError::bad_request("\"subscribe\" is an exchange name"),
            );
        };
        if self.subscriptions.contains_key(exchange) {
            return self.outbox.notice(json!({ "subscribed": exchange }));
        }
        let Some(feed) = self.state.hub.feed(exchange) else {
            return self.outbox.notice(json!({
                "subscribe": crate::clip::clip(exchange),
                "error": PublicError::new(
                    axum::http::StatusCode::NOT_FOUND,
                    "not_found",
                    format!("no events of {}", crate::clip::clip(exchange)),
                ).body(),
            }));
        };
        if self.subscriptions.len() >= self.state.settings.max_subscriptions_per_connection {
            return self.outbox.notice(json!({
                "subscribe": exchange,
                "error": PublicError::busy(format!(
                    "at most {} subscriptions per connection",
                    self.state.settings.max_subscriptions_per_connection
                )).body(),
            }));
        }
        let (missed, mut live) = feed.follow(last_event_id);
        self.outbox.notice(json!({ "subscribed": exchange }));
        let outbox = self.outbox.clone();
        let task = tokio::spawn(async move {
            for event in missed {
                outbox.event(event.ws.clone());
            }
            loop {
                match live.recv().await {
                    Ok(event) => outbox.event(event.ws.clone()),
                    Err(RecvError::Lagged(_)) => {
                        outbox
                            .closing
                            .close(POLICY, "too slow: events were not read");
                        break;
                    }
                    Err(RecvError::Closed) => break,
                }
            }
        });
        self.subscriptions.insert(exchange.to_owned(), task);
    }
}

async fn run_call(
    state: &State,
    outbox: &Outbox,
    id: &Value,
    service: &str,
    method: &str,
    args: Value,
) {
    let mut replies = match call::start(state, service, method, args).await {
        Ok(replies) => replies,
        Err(err) => return outbox.reply(json!({ "id": id, "error": err.body() })).await,
    };
    loop {
        match replies.next().await {
            Frame::Result(value) => {
                return outbox.reply(json!({ "id": id, "result": value })).await
            }
            Frame::Item(value) => outbox.reply(json!({ "id": id, "item": value })).await,
            Frame::End => return outbox.reply(json!({ "id": id, "end": true })).await,
            Frame::Error(err) => {
                return outbox.reply(json!({ "id": id, "error": err.body() })).await
            }
        }
    }
}
