//! What the code generated for `#[rpc::method]` calls: wrap a method's future or stream into
//! a [`Call`], and supply injected clients.

use super::frame::{kind, ErrorInfo, Frame};
use super::server::Call;
use super::FromClient;
use crate::context::ServiceContext;
use futures::stream::BoxStream;
use futures::{FutureExt, Stream, StreamExt};
use std::future::Future;

/// A unary method's call. The `Send` bound is where a non-`Send` method is reported.
pub fn unary<F>(future: F) -> Call
where
    F: Future<Output = Frame> + Send + 'static,
{
    Call::Unary(future.boxed())
}

/// A streaming method's call: the future produces the stream (after injecting clients and,
/// for an `async fn`, awaiting it).
pub fn streaming<F>(future: F) -> Call
where
    F: Future<Output = BoxStream<'static, Frame>> + Send + 'static,
{
    Call::Stream(future.into_stream().flatten().boxed())
}

/// Encodes each item of a method's stream; an error item ends the stream.
pub fn frames<S, F>(stream: S, frame: F) -> BoxStream<'static, Frame>
where
    S: Stream + Send + 'static,
    F: FnMut(S::Item) -> Frame + Send + 'static,
{
    stream.map(frame).boxed()
}

pub fn error_frame(err: crate::Error) -> Frame {
    Frame::Error(ErrorInfo::new(kind::INTERNAL, err.to_string()))
}

pub fn error_stream(err: crate::Error) -> BoxStream<'static, Frame> {
    futures::stream::once(async move { error_frame(err) }).boxed()
}

/// A client for a method parameter, sharing the service's connection and reply queue.
pub async fn inject_client<C: FromClient>(context: &ServiceContext) -> crate::Result<C> {
    Ok(C::from_client(context.client().await?))
}
