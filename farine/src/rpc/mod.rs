//! RPC over AMQP, wire-compatible with Python farine 0.19 (see PROTOCOL.md): the
//! `#[rpc::method]` server side, the [`Client`] for any service, and the blocking client.

pub mod args;
pub mod blocking;
mod client;
pub mod frame;
pub mod handler;
pub mod reply;
pub mod server;

pub use client::{encode_arg, CallOptions, Client, Replies, RpcStream};
pub use farine_macros::rpc_method as method;

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
