//! Entry points: what connects a service's methods to their sources. One contract,
//! [`EntryPoint`], and one module per kind, each owning its attribute as the macro wrote it
//! (`*Attr`), its defaults resolved against the service's settings once, at start (`*Spec`),
//! its handler type, and its run loop:
//!
//! - [`consume`]: `#[amqp::consume]`, a queue's messages, retried then dead-lettered;
//! - [`rpc`]: `#[rpc::method]`, requests answered frame by frame (unary and streaming);
//! - [`sse`]: `#[stream::http]`, the events of a Server-Sent-Events endpoint;
//! - [`execute`]: `#[execute::method]`, a supervised loop.
//!
//! Consumers and RPC methods share the [`deliveries`] loop. A new kind is a new module here
//! that implements [`EntryPoint`], one variant of [`Registered`] with its arm in [`attach`],
//! and the macro support that registers it (`farine::__private`, `farine-macros`).

pub(crate) mod consume;
pub(crate) mod deliveries;
pub(crate) mod execute;
pub(crate) mod rpc;
pub(crate) mod sse;

use crate::context::ServiceContext;
use crate::Result;
use futures::future::BoxFuture;
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// One entry point of a service, attached (its topology declared, its source reached) and
/// ready to run.
pub(crate) trait EntryPoint: Send {
    /// Runs until `shutdown`, then lets in-flight work finish within `grace`. An error means
    /// the entry point ended for good (the runtime stops the process).
    fn run(
        self: Box<Self>,
        shutdown: CancellationToken,
        grace: Duration,
    ) -> BoxFuture<'static, Result<()>>;
}

/// An entry point as the macros registered it, by kind.
pub enum Registered {
    Consume(consume::ConsumeAttr, consume::ConsumeHandler),
    Rpc(rpc::RpcAttr, rpc::RpcHandler),
    Listen(sse::ListenAttr, sse::EventHandler),
    Execute(execute::ExecuteAttr, execute::ExecuteHandler),
}

/// Attaches one registered entry point of `service`.
pub(crate) async fn attach(
    service: &'static str,
    registered: Registered,
    context: Arc<ServiceContext>,
) -> Result<Box<dyn EntryPoint>> {
    Ok(match registered {
        Registered::Consume(attr, handler) => {
            Box::new(consume::attach(service, attr, handler, context).await?)
        }
        Registered::Rpc(attr, handler) => {
            Box::new(rpc::attach(service, attr, handler, context).await?)
        }
        Registered::Listen(attr, handler) => {
            Box::new(sse::attach(service, attr, handler, context)?)
        }
        Registered::Execute(attr, handler) => {
            Box::new(execute::attach(service, attr, handler, context))
        }
    })
}
