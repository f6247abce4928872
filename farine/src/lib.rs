//! # farine
//!
//! Message-driven services on RabbitMQ. Annotate the methods of a service's `impl` block and
//! the runtime wires each to its source:
//!
//! ```no_run
//! use farine::prelude::*;
//! use serde::Deserialize;
//!
//! #[derive(Deserialize)]
//! pub struct Order {
//!     pub id: i64,
//! }
//!
//! #[derive(Default)]
//! pub struct Shop;
//!
//! #[farine::service] // service "shop": exchange "shop", config section [shop]
//! impl Shop {
//!     /// Runs for every message on exchange "orders" with routing key "created".
//!     #[amqp::consume(exchange = "orders", routing_key = "created")]
//!     async fn on_created(&self, order: Order) -> farine::Result<()> {
//!         farine::tracing::info!(order = order.id, "new order");
//!         Ok(())
//!     }
//!
//!     /// Callers write `shop.notify(7).await`: the publisher is supplied by farine.
//!     #[amqp::publish(exchange = "orders", routing_key = "created")]
//!     pub async fn notify(&self, publish: Publisher, id: i64) -> farine::Result<()> {
//!         publish.send(&farine::json!({ "id": id })).await
//!     }
//! }
//!
//! farine::main!();
//! ```
//!
//! The binary runs every service it holds, configured by the INI file named by `FARINE_INI`
//! (default `/etc/farine.ini`); `farine --start shop` builds and runs it.
//!
//! # A map of the crate
//!
//! What a service uses: [`prelude`], the attribute namespaces [`amqp`] (with [`Publisher`]),
//! [`rpc`] (with the clients), [`stream`] (`#[stream::http]`, [`stream::Event`]) and
//! [`execute`] (`#[execute::method]`, [`execute::Shutdown`]), the database types in [`db`],
//! [`config`], and [`Error`].
//!
//! Inside, data flows one way: a message arrives through the [`transport`] (the seam:
//! `transport::amqp` on RabbitMQ with lapin, `transport::memory` in process for
//! `amqp_uri = memory://`), owned per broker by [`broker`]; an entry point (private module
//! `entry`: `consume`, `rpc`, `sse`, `execute`, behind one `EntryPoint` contract) decodes it,
//! runs the user's method under the one panic guard (`outcome`), and settles it: a reply,
//! an ack, or a retry then a dead letter (`retry`; [`dlq`] reads and replays them). The
//! [`runtime`] starts what the macros registered (`registry`) and supervises it; the macros'
//! generated code names only `farine::__private` (`codegen.rs`, its contract documented
//! there); [`check`] looks at what a start would meet, changing nothing (`farine check`).
//! Shared leaves: `backoff` (the one backoff), `clip` (bounded texts), [`config`]
//! (every key is read there).

pub mod amqp;
mod backoff;
pub mod broker;
pub mod check;
pub mod checks;
mod clip;
pub mod config;
mod context;
pub mod db;
pub mod describe;
pub mod dlq;
mod entry;
mod error;
pub mod execute;
#[cfg(feature = "gateway")]
pub mod gateway;
mod http;
pub mod metrics;
pub mod middleware;
mod observe;
#[cfg(feature = "otel")]
pub mod otel;
mod outcome;
mod registry;
mod retry;
pub mod rpc;
pub mod runtime;
pub mod stream;
#[cfg(feature = "testing")]
pub mod testing;
pub mod trace;
pub mod transport;

pub use config::Config;
pub use error::{Error, Result};
pub use farine_macros::service;
pub use runtime::{run, Running, Runtime};

pub use amqp::Publisher;
pub use rpc::Client;

// What a service's code uses, re-exported so that a service crate depends on `farine` alone
// (plus `serde`, whose derives name it), at the versions farine was built with: `farine::json!`,
// `farine::futures::stream::iter`, `farine::sqlx::query(..)` on a `Db` or `Tx`,
// `farine::tracing::info!`.
pub use futures;
/// The OpenTelemetry API and SDK farine exports through (feature `otel`): to install a
/// tracer provider of one's own, or open spans inside a handler.
#[cfg(feature = "otel")]
pub use opentelemetry;
#[cfg(feature = "otel")]
pub use opentelemetry_sdk;
/// With the `schema` feature: derive `farine::schemars::JsonSchema` (with
/// `#[schemars(crate = "farine::schemars")]`) on a service's types to have their schemas in
/// `farine describe`.
#[cfg(feature = "schema")]
pub use schemars;
pub use serde;
pub use serde_json;
pub use serde_json::json;
pub use sqlx;
pub use tracing;

/// What a service module needs: `use farine::prelude::*;`.
pub mod prelude {
    pub use crate::amqp::{self, Publisher};
    pub use crate::db::{Db, Tx};
    pub use crate::execute::Shutdown;
    pub use crate::rpc::Broadcast;
    pub use crate::stream::Event;
    pub use crate::{execute, rpc, stream};
    pub use futures::{Stream, StreamExt};
}

/// The `main` of a service binary: runs the services defined in this package, and in the
/// crates it names.
///
/// In a binary crate that defines its services itself, or whose library (named like the
/// package) does:
///
/// ```ignore
/// farine::main!();
/// ```
///
/// When the services live in other library crates, name them so they are linked in and run:
///
/// ```ignore
/// farine::main!(calc, todo);
/// ```
///
/// A service crate linked only for its typed client (a dependency that the binary does not
/// name) is not run.
#[macro_export]
macro_rules! main {
    () => {
        fn main() -> ::std::process::ExitCode {
            $crate::__private::run_crates(&[
                ::core::env!("CARGO_CRATE_NAME"),
                ::core::env!("CARGO_PKG_NAME"),
            ])
        }
    };
    ($($krate:ident),+ $(,)?) => {
        $(#[allow(unused_imports)] use $krate as _;)+
        fn main() -> ::std::process::ExitCode {
            $crate::__private::run_crates(&[
                ::core::env!("CARGO_CRATE_NAME"),
                ::core::env!("CARGO_PKG_NAME"),
                $(::core::stringify!($krate)),+
            ])
        }
    };
}

// The only path the macro output names; codegen.rs documents the contract.
#[doc(hidden)]
#[path = "codegen.rs"]
pub mod __private;
