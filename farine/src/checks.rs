//! What farine requires of your types, checked when the service compiles.
//!
//! A type returned by an `#[rpc::method]` must be [`RpcReturn`] (the typed client decodes it),
//! and the body of an `#[amqp::consume]` method a [`MessageBody`] (decoded from the message):
//! both are what `#[derive(Deserialize)]` gives. You never implement these traits; they exist
//! so that a type that falls short is one compile error, on the type you wrote, in words.
//!
//! ```
//! use farine::checks::{MessageBody, RpcReturn};
//! use serde::{Deserialize, Serialize};
//!
//! #[derive(Serialize, Deserialize)]
//! pub struct Total {
//!     pub cents: i64,
//! }
//!
//! fn returnable<T: RpcReturn>() {}
//! fn consumable<T: MessageBody>() {}
//! returnable::<Total>();
//! consumable::<Total>();
//! ```
//!
//! How: each requirement is a trait with an `#[diagnostic::on_unimplemented]` message and a
//! blanket impl marked `#[diagnostic::do_not_recommend]` (so rustc reports the requirement,
//! not the serde bound behind it). `#[farine::service]` asserts it once with the user's type
//! tokens, as `<Type as Requirement>::check`, which leaves no note pointing into farine. The
//! generated code that uses the type adds no error of its own: the typed client states the
//! bound as a higher-ranked where clause (not checked where it is written), and a consumer
//! picks its handler by autoref (see `ConsumeBody`).

use crate::context::ServiceContext;
use crate::registry::{consume_handler, ConsumeHandler, HandlerResult, Outcome};
use futures::FutureExt;
use serde::de::DeserializeOwned;
use std::future::Future;
use std::marker::PhantomData;
use std::sync::Arc;

/// What an `#[rpc::method]` returns (or a streaming one yields): the typed client decodes it.
#[diagnostic::on_unimplemented(
    message = "`{Self}` is returned by an #[rpc::method], so it must implement `Deserialize`: the service's typed client decodes it for callers",
    label = "returned to callers, who decode it: needs `Deserialize`",
    note = "derive both for a returned type: `#[derive(Serialize, Deserialize)]`"
)]
pub trait RpcReturn {
    #[doc(hidden)]
    fn check() {}
}

#[diagnostic::do_not_recommend]
impl<T: DeserializeOwned> RpcReturn for T {}

/// What an `#[amqp::consume]` method takes: decoded from the message's JSON body.
#[diagnostic::on_unimplemented(
    message = "`{Self}` is the body of an #[amqp::consume] message, so it must implement `Deserialize`: farine decodes it from the message's JSON",
    label = "decoded from each message: needs `Deserialize`",
    note = "derive it: `#[derive(Deserialize)]`; a body is also owned and `Send` (no borrowed data, no `Rc`)"
)]
pub trait MessageBody {
    #[doc(hidden)]
    fn check() {}
}

#[diagnostic::do_not_recommend]
impl<T: DeserializeOwned + Send + 'static> MessageBody for T {}

#[doc(hidden)]
/// The body type of a consumer, to build its handler with
/// `(&&ConsumeBody::<T>::new()).handler(service, method)`: with a [`MessageBody`] method
/// resolution picks the impl on `&ConsumeBody<T>`, whose handler decodes and runs the method;
/// otherwise the one on `ConsumeBody<T>`, a stand-in, so that the only error is the
/// `MessageBody` check on the user's type (the stand-in never runs: the check fails the build).
pub struct ConsumeBody<T>(PhantomData<fn() -> T>);

impl<T> ConsumeBody<T> {
    #[allow(clippy::new_without_default)]
    pub fn new() -> Self {
        ConsumeBody(PhantomData)
    }
}

#[doc(hidden)]
pub trait ViaMessageBody<T> {
    fn handler<S, F, Fut>(&self, service: Arc<S>, method: F) -> ConsumeHandler
    where
        S: Send + Sync + 'static,
        F: Fn(Arc<S>, Arc<ServiceContext>, T) -> Fut + Send + Sync + 'static,
        Fut: Future + Send + 'static,
        Fut::Output: HandlerResult;
}

impl<T: MessageBody + DeserializeOwned + Send + 'static> ViaMessageBody<T> for &ConsumeBody<T> {
    fn handler<S, F, Fut>(&self, service: Arc<S>, method: F) -> ConsumeHandler
    where
        S: Send + Sync + 'static,
        F: Fn(Arc<S>, Arc<ServiceContext>, T) -> Fut + Send + Sync + 'static,
        Fut: Future + Send + 'static,
        Fut::Output: HandlerResult,
    {
        consume_handler(service, method)
    }
}

#[doc(hidden)]
pub trait ViaUndecodable<T> {
    fn handler<S, F, Fut>(&self, service: Arc<S>, method: F) -> ConsumeHandler
    where
        S: Send + Sync + 'static,
        F: Fn(Arc<S>, Arc<ServiceContext>, T) -> Fut + Send + Sync + 'static,
        Fut: Future + Send + 'static,
        Fut::Output: HandlerResult;
}

impl<T> ViaUndecodable<T> for ConsumeBody<T> {
    fn handler<S, F, Fut>(&self, _service: Arc<S>, _method: F) -> ConsumeHandler
    where
        S: Send + Sync + 'static,
        F: Fn(Arc<S>, Arc<ServiceContext>, T) -> Fut + Send + Sync + 'static,
        Fut: Future + Send + 'static,
        Fut::Output: HandlerResult,
    {
        stand_in(format!(
            "{} cannot be decoded: it does not implement Deserialize",
            std::any::type_name::<T>()
        ))
    }
}

/// Not generic, so that the handler does not depend on `T` (which need not be `'static`).
fn stand_in(reason: String) -> ConsumeHandler {
    Arc::new(move |_, _| futures::future::ready(Outcome::Poison(reason.clone())).boxed())
}
