//! RPC over AMQP, wire-compatible with Python farine 0.19 (see PROTOCOL.md): the
//! `#[rpc::method]` server side, the [`Client`] for any service, and the blocking client.

pub(crate) mod args;
pub mod blocking;
mod client;
pub mod frame;
pub(crate) mod names;

pub use client::{split_args, CallOptions, Client, Replies, RpcStream};
pub use farine_macros::rpc_method as method;

/// Events a `#[rpc::method(broadcast = "exchange")]` publishes to its fanout exchange once
/// the call succeeded: after the transaction committed and the reply was sent. A failed call
/// broadcasts nothing. Without this parameter the method's result is the event.
///
/// ```no_run
/// use farine::prelude::*;
///
/// #[derive(Default)]
/// pub struct Todo;
///
/// #[farine::service]
/// impl Todo {
///     #[rpc::method(broadcast = "todo.events")]
///     async fn rename(&self, events: Broadcast, id: i64, title: String) -> farine::Result<bool> {
///         events.send(&serde_json::json!({ "op": "rename", "id": id, "title": title }))?;
///         Ok(true)
///     }
/// }
/// ```
#[derive(Clone, Default, Debug)]
pub struct Broadcast(std::sync::Arc<std::sync::Mutex<Vec<serde_json::Value>>>);

impl Broadcast {
    /// Stages `event`; it is published only if the call succeeds.
    pub fn send<T: serde::Serialize + ?Sized>(&self, event: &T) -> crate::Result<()> {
        let value = serde_json::to_value(event)
            .map_err(crate::Error::json("encoding a broadcast event"))?;
        self.0.lock().unwrap_or_else(|p| p.into_inner()).push(value);
        Ok(())
    }

    pub(crate) fn take(&self) -> Vec<serde_json::Value> {
        std::mem::take(&mut *self.0.lock().unwrap_or_else(|p| p.into_inner()))
    }
}

/// Clients that can be injected into a service method: `farine::Client` and every generated
/// `<Service>Client`. A method parameter whose type's name ends in `Client` is injected.
pub trait FromClient {
    fn from_client(client: Client) -> Self;
}

impl FromClient for Client {
    fn from_client(client: Client) -> Self {
        client
    }
}
