//! `#[cfg]` on an entry method is carried to its registration and its client method: a method
//! compiled out leaves nothing behind that names it.
use farine::prelude::*;

#[derive(Default)]
pub struct Gated;

#[farine::service]
impl Gated {
    /// Never compiled: with it, the registration and the client would name a missing method.
    #[cfg(any())]
    #[rpc::method]
    async fn gone(&self) -> u32 {
        1
    }

    /// Compiled: this file is a module of the `ui` test crate, built with `--test`.
    #[cfg(test)]
    #[rpc::method]
    async fn kept(&self) -> u32 {
        2
    }

    #[cfg(any())]
    #[amqp::consume(routing_key = "gone")]
    async fn gone_consumer(&self, _body: String) {}
}

// `kept` is on the client; `gone` is not (`client.gone()` would not compile: the trait
// `HasGone` below is implemented only if the client has no such method).
async fn callers(client: GatedClient) -> farine::Result<u32> {
    client.kept().await
}

trait HasGone {
    fn gone(&self) -> &'static str {
        "not on the client"
    }
}
impl HasGone for GatedClient {}

fn gone_is_not_a_client_method(client: &GatedClient) -> &'static str {
    // Resolves to the trait's method: an inherent `gone` would take precedence and be async.
    client.gone()
}
