//! `#[execute::method]`: a method the runtime starts with the service and keeps running.
//!
//! ```no_run
//! use farine::prelude::*;
//! use farine::execute::Shutdown;
//! use std::time::Duration;
//!
//! #[derive(Default)]
//! pub struct Shop;
//!
//! #[farine::service]
//! impl Shop {
//!     /// Runs again 30s after each return; after an error, with a growing delay.
//!     #[execute::method(restart_delay = "30s")]
//!     async fn reconcile(&self) -> farine::Result<()> {
//!         // ... one pass of work ...
//!         Ok(())
//!     }
//!
//!     /// A loop of its own that stops cleanly when the service shuts down.
//!     #[execute::method]
//!     async fn poll(&self, shutdown: Shutdown) -> farine::Result<()> {
//!         while shutdown.sleep(Duration::from_secs(5)).await {
//!             // ... poll something ...
//!         }
//!         Ok(())
//!     }
//! }
//! ```
//!
//! # Supervision
//!
//! With `restart = true` (the default):
//!
//! - when the method returns `Ok` (or `()`), it runs again after `restart_delay` (default 1s);
//! - when it returns `Err` or panics, the failure is logged with its error and the method is
//!   restarted after a backoff: `restart_delay` (at least 100ms) for the first failure,
//!   doubling with each failure in a row, up to `backoff_max` (default 60s);
//! - a run that returns `Ok`, or one that lasted at least `backoff_max` before failing,
//!   counts as healthy: the backoff and the count of failures start over;
//! - `max_restarts = N` bounds the restarts after failures *in a row*: when the method fails
//!   again after N such restarts, the entry point gives up: it logs an error and ends with an
//!   `Err`, which the runtime treats like any entry point that died (the process stops with
//!   that error, so whatever supervises the process notices and can restart it). Without
//!   `max_restarts` it is restarted forever.
//!
//! With `restart = false` it runs once; how it ended is logged, and the service carries on.
//!
//! # Shutdown
//!
//! On shutdown the [`Shutdown`] the method may take is signalled, and the method gets the
//! service's `shutdown_grace` to return; after that it is cancelled (its future is dropped at
//! its current `.await`). It is never restarted once shutdown has begun.

pub use crate::entry::execute::{
    execute_handler, ExecuteHandler, ExecuteSpec, Shutdown, MIN_FAILURE_DELAY,
};
pub use farine_macros::execute_method as method;
