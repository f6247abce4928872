//! What the code generated for `#[rpc::method]` calls: wrap a method's future or stream into
//! a [`Call`], and supply injected clients.

use super::{Call, Reply};
use crate::context::ServiceContext;
use crate::db::{Db, Tx};
use crate::rpc::frame::{kind, ErrorInfo, Frame};
use crate::rpc::{Broadcast, FromClient};
use futures::stream::BoxStream;
use futures::{FutureExt, Stream, StreamExt};
use std::future::Future;

/// A unary method's call. The `Send` bound is where a non-`Send` method is reported.
pub fn unary<F>(future: F) -> Call
where
    F: Future<Output = Reply> + Send + 'static,
{
    Call::Unary(future.boxed())
}

/// A unary answer, with the events staged on the method's `Broadcast` parameter if it has one.
pub fn reply(frame: Frame, events: Option<&Broadcast>) -> Reply {
    Reply {
        frame,
        events: events.map(Broadcast::take),
    }
}

tokio::task_local! {
    /// Set while a streaming method's parameters are injected, so that its `Db`, held for the
    /// whole stream, counts against the pool's `db_stream_share`. (A flag rather than another
    /// injection function keeps the generated code the same for every kind of entry point.)
    static STREAM_CALL: ();
}

/// The call's connection from the service's pool; for a streaming method, within the share
/// of the pool streams may hold.
pub async fn acquire_db(context: &ServiceContext) -> crate::Result<Db> {
    let database = context.database()?;
    if STREAM_CALL.try_with(|_| ()).is_ok() {
        database.acquire_for_stream().await
    } else {
        database.acquire().await
    }
}

/// The call's transaction.
pub async fn begin_tx(context: &ServiceContext) -> crate::Result<Tx> {
    context.database()?.begin().await
}

/// Commits after a successful answer (a failed commit turns it into an error), rolls back
/// after an error: the reply is sent only after this.
pub async fn settle_tx_frame(tx: Tx, frame: Frame) -> Frame {
    match frame {
        Frame::Item(_) => match tx.commit().await {
            Ok(()) => frame,
            Err(err) => Frame::Error(ErrorInfo::new(
                kind::INTERNAL,
                format!("the transaction did not commit: {err}"),
            )),
        },
        Frame::Error(_) => {
            if let Err(err) = tx.rollback().await {
                tracing::warn!("rollback failed: {err}");
            }
            frame
        }
    }
}

/// A streaming method's call: the future produces the stream (after injecting clients and,
/// for an `async fn`, awaiting it).
pub fn streaming<F>(future: F) -> Call
where
    F: Future<Output = BoxStream<'static, Frame>> + Send + 'static,
{
    Call::Stream(
        STREAM_CALL
            .scope((), future)
            .into_stream()
            .flatten()
            .boxed(),
    )
}

/// Encodes each item of a method's stream; an error item ends the stream.
pub fn frames<S, F>(stream: S, frame: F) -> BoxStream<'static, Frame>
where
    S: Stream + Send + 'static,
    F: FnMut(S::Item) -> Frame + Send + 'static,
{
    stream.map(frame).boxed()
}

pub fn error_frame(err: crate::Error) -> Reply {
    Frame::Error(ErrorInfo::new(kind::INTERNAL, err.to_string())).into()
}

pub fn error_stream(err: crate::Error) -> BoxStream<'static, Frame> {
    futures::stream::once(
        async move { Frame::Error(ErrorInfo::new(kind::INTERNAL, err.to_string())) },
    )
    .boxed()
}

/// A client for a method parameter, sharing the service's connection and reply queue.
pub async fn inject_client<C: FromClient>(context: &ServiceContext) -> crate::Result<C> {
    Ok(C::from_client(context.client().await?))
}
