//! The contract between `#[farine::service]` and the runtime: every item the macro's output
//! names, and nothing else. The output names them as `::farine::__private::<item>` (this
//! module, re-exported under that name and hidden from the docs); it names no other path of
//! farine, which a snapshot test of the expansion of a fixed service checks
//! (`farine-macros/src/snapshot.rs`). Nothing here is for users: the names may change with any
//! release, together with the macro.
//!
//! The macro emits what was written and the runtime decides: each attribute becomes a struct
//! of `Option`s (`ConsumeAttr`, `PublishAttr`, `RpcAttr`, `ListenAttr`, `ExecuteAttr`), and
//! the defaults are applied by one runtime function per kind (`ConsumeAttr::spec`,
//! `PublishAttr::spec` and [`publisher`], `ExecuteAttr::spec`, the listener's settings).
//!
//! What the expansion of a service holds, and the items each part uses:
//!
//! - **Registration**, one per service, collected at link time: a function building a
//!   [`ServiceDef`] around one `Arc` of the service, submitted with [`inventory`] as a
//!   [`ServiceRegistration`]. `ServiceDef::{consume, rpc, publish, listen, execute, uses_db}`
//!   add the entry points, each with its attribute struct and its handler. Its `module`
//!   (`module_path!()`) tells `farine::main!`'s [`run_crates`] which crate defines it.
//! - **Handlers**, one per entry point, called with the service's [`ServiceContext`]:
//!   - consume: [`ConsumeBody`] picks, by autoref ([`ViaMessageBody`], [`ViaUndecodable`]),
//!     the real handler or a stand-in, so that a body type that is not `Deserialize` is one
//!     error, the [`MessageBody`] check on the user's type;
//!   - rpc: a closure from the call's [`Args`] to a [`Call`], built with [`unary`] and
//!     [`reply`], or [`streaming`] and [`frames`]; the returned value becomes a frame through
//!     [`Returned`] and autoref ([`ViaSerializableError`], [`ViaSerializeOnlyError`],
//!     [`ViaDisplayError`], [`ViaValue`]); [`error_frame`] and [`error_stream`] answer when
//!     an injected parameter could not be made; a [`Broadcast`] parameter's events go with
//!     the reply;
//!   - stream::http and execute: [`event_handler`], [`execute_handler`], the method's result
//!     turned into an [`Outcome`] by [`HandlerResult`]; an execute method gets a [`Shutdown`].
//! - **Injected parameters**: [`inject_client`] (anything [`FromClient`]), [`acquire_db`],
//!   [`begin_tx`], settled by [`settle_tx_frame`] or [`settle_tx_outcome`] after the method;
//!   an `#[amqp::publish]` method's `Publisher` is bound by [`publisher`].
//! - **The typed client** `<Service>Client`: wraps a [`Client`] and [`CallOptions`]; each
//!   method encodes its arguments with [`encode_arg`] and calls [`call`] or [`call_stream`]
//!   (an [`RpcStream`]). Its return type is the method's declared type through [`RpcOutput`]
//!   (see there), asserted `Deserialize` by [`RpcReturn`]; [`Config`], [`Result`],
//!   [`Deserialize`] and [`Value`] appear in its signatures.
//! - **Schemas**, for `farine describe`: `ServiceDef::schemas` records a consumer's body type
//!   and an RPC method's argument and result types, each as a [`SchemaFn`] picked by autoref
//!   on [`SchemaOf`] ([`ViaJsonSchema`] when the type implements `JsonSchema` and farine's
//!   `schema` feature is on, else [`ViaNoSchema`]), so that any type compiles.

use crate::entry::consume::{consume_handler, ConsumeHandler};
use crate::rpc::CallOptions as Options;
use futures::FutureExt;
use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::{Map, Value as Json};
use std::future::Future;
use std::marker::PhantomData;
use std::sync::Arc;

pub use crate::amqp::PublishAttr;
pub use crate::amqp::Publisher;
pub use crate::checks::{MessageBody, RpcReturn};
pub use crate::config::Config;
pub use crate::context::ServiceContext;
pub use crate::describe::SchemaFn;
pub use crate::entry::consume::ConsumeAttr;
pub use crate::entry::execute::{execute_handler, ExecuteAttr, Shutdown};
pub use crate::entry::rpc::handler::{
    acquire_db, begin_tx, error_frame, error_stream, frames, inject_client, reply, settle_tx_frame,
    streaming, unary,
};
pub use crate::entry::rpc::reply::{
    Returned, ViaDisplayError, ViaSerializableError, ViaSerializeOnlyError, ViaValue,
};
pub use crate::entry::rpc::{Call, RpcAttr};
pub use crate::entry::sse::{event_handler, ListenAttr};
pub use crate::error::Result;
pub use crate::outcome::{HandlerResult, Outcome};
pub use crate::registry::{ServiceDef, ServiceRegistration};
pub use crate::rpc::args::Args;
pub use crate::rpc::{Broadcast, CallOptions, Client, FromClient, RpcStream};
pub use crate::runtime::run_crates;
pub use inventory;
pub use serde::Deserialize;
pub use serde_json::Value;

/// The `Publisher` of an `#[amqp::publish]` method, its attribute's arguments as written
/// (the defaults are `amqp::publisher::destination`'s).
pub fn publisher(
    service: &'static str,
    exchange: Option<&'static str>,
    routing_key: Option<&'static str>,
) -> Publisher {
    Publisher::declared(service, exchange, routing_key)
}

/// Encodes one argument of a typed call; `call` (`service.method`) and `name` are for the
/// error.
pub fn encode_arg<T: Serialize + ?Sized>(call: &str, name: &str, value: &T) -> Result<Json> {
    serde_json::to_value(value).map_err(crate::Error::json(format!(
        "encoding argument `{name}` of {call}"
    )))
}

/// A typed unary call: positional arguments already encoded, the result decoded as `T`.
pub async fn call<T: DeserializeOwned>(
    client: &Client,
    service: &str,
    method: &str,
    args: Vec<Json>,
    options: Options,
) -> Result<T> {
    let value = client
        .request_unary(service, method, args, Map::new(), options)
        .await?
        .unary()
        .await?;
    serde_json::from_value(value).map_err(crate::Error::json(format!(
        "decoding the result of {service}.{method}"
    )))
}

/// A typed streaming call: its items decoded as `T`.
pub async fn call_stream<T: DeserializeOwned>(
    client: &Client,
    service: &str,
    method: &str,
    args: Vec<Json>,
    options: Options,
) -> Result<RpcStream<T>> {
    Ok(client
        .request(service, method, args, Map::new(), options)
        .await?
        .stream())
}

/// What a caller of an `#[rpc::method]` receives, from the type the method declares (or the
/// item type of a streaming method): the typed client's method returns
/// `farine::Result<<Declared as RpcOutput<Shape>>::Ok>`.
///
/// Going through the trait, rather than reading the type's tokens, is what makes an alias
/// (`type MyResult<T> = Result<T, MyError>`) decode as its `T`. Rust cannot select an impl
/// for "every type but `Result`" (that is specialization), so the macro names the shape it
/// reads from the tokens, and each shape's impl holds only for types of that shape:
///
/// - [`Fallible`]: a path named `Result` or `...Result` (`farine::Result<T>`, `io::Result<T>`,
///   `MyResult<T>`): implemented for `Result<T, E>` only, giving `T`. A type so named that is
///   not a `Result` is a compile error (this impl is missing).
/// - [`FallibleBorrowed`]: the same whose first argument is a reference
///   (`Result<&'static str, E>`): the owned form, `String`.
/// - [`Borrowed`]: a reference, `&'static str` -> `String`, `&'static [T]` -> `Vec<T>`.
/// - [`Plain`]: anything else, as itself. So that an alias of `Result` not named `...Result`
///   cannot decode wrongly at run time, the macro asserts such a type is no `Result`
///   ([`NotAResult`]).
pub trait RpcOutput<Shape> {
    type Ok;
}

/// See [`RpcOutput`].
pub struct Fallible;
/// See [`RpcOutput`].
pub struct FallibleBorrowed;
/// See [`RpcOutput`].
pub struct Borrowed;
/// See [`RpcOutput`].
pub struct Plain;

impl<T, E> RpcOutput<Fallible> for std::result::Result<T, E> {
    type Ok = T;
}

impl<T: ?Sized + Owned, E> RpcOutput<FallibleBorrowed> for std::result::Result<&T, E> {
    type Ok = T::Owned;
}

impl<T: ?Sized + Owned> RpcOutput<Borrowed> for &T {
    type Ok = T::Owned;
}

/// What a borrowed return value is decoded into: `str` -> `String`, `[T]` -> `Vec<T>`, `T`
/// -> `T` (unlike `ToOwned`, without requiring `Clone`: the caller decodes, not clones).
pub trait Owned {
    type Owned;
}

impl<T> Owned for T {
    type Owned = T;
}

impl Owned for str {
    type Owned = String;
}

impl<T> Owned for [T] {
    type Owned = Vec<T>;
}

impl<T> RpcOutput<Plain> for T {
    type Ok = T;
}

/// `<T as NotAResult<_>>::check` compiles only when `T` is not a `Result`: for a `Result`
/// both impls apply and the `_` cannot be inferred ("type annotations needed" on the
/// method's return type). The macro asserts it of a declared type it takes as [`Plain`].
pub trait NotAResult<Which> {
    fn check() {}
}

/// See [`NotAResult`].
pub struct AnyType;
/// See [`NotAResult`].
pub struct IsAResult;

impl<T: ?Sized> NotAResult<AnyType> for T {}
impl<T, E> NotAResult<IsAResult> for std::result::Result<T, E> {}

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

/// The same for consumers, listeners and loops: the message is acked only after a commit.
pub async fn settle_tx_outcome(tx: crate::db::Tx, outcome: Outcome) -> Outcome {
    match outcome {
        Outcome::Done => match tx.commit().await {
            Ok(()) => Outcome::Done,
            Err(err) => Outcome::Failed(format!("the transaction did not commit: {err}")),
        },
        other => {
            if let Err(err) = tx.rollback().await {
                tracing::warn!("rollback failed: {err}");
            }
            other
        }
    }
}

/// A type whose schema `farine describe` wants: `(&&SchemaOf::<T>::new()).schema()` is the
/// [`SchemaFn`] of `T`, by autoref: [`ViaJsonSchema`] (on `&SchemaOf<T>`) when `T` implements
/// `schemars::JsonSchema` and the `schema` feature is on, else [`ViaNoSchema`] (`{}`).
pub struct SchemaOf<T>(PhantomData<fn() -> T>);

impl<T> SchemaOf<T> {
    #[allow(clippy::new_without_default)]
    pub fn new() -> Self {
        SchemaOf(PhantomData)
    }
}

/// See [`SchemaOf`].
pub trait ViaJsonSchema {
    fn schema(&self) -> SchemaFn;
}

#[cfg(feature = "schema")]
impl<T: schemars::JsonSchema> ViaJsonSchema for &SchemaOf<T> {
    fn schema(&self) -> SchemaFn {
        crate::describe::json_schema::<T>
    }
}

/// See [`SchemaOf`].
pub trait ViaNoSchema {
    fn schema(&self) -> SchemaFn;
}

impl<T> ViaNoSchema for SchemaOf<T> {
    fn schema(&self) -> SchemaFn {
        crate::describe::no_schema
    }
}
