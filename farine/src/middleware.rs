//! Middleware: code that runs around every delivery an entry point handles (a consumed
//! message, an RPC request), sees what the call is ([`Call`]) and how it ended ([`Handled`]).
//! Timing, logging, tracing and metrics are written this way, without touching the entry
//! points.
//!
//! A middleware wraps the whole handling: decoding, the method, the reply or the retry, and
//! the ack. It calls [`Next::run`] once to go on (or answers without calling it, which leaves
//! the delivery unhandled: it is requeued).
//!
//! The runtime's own tracing middleware ([`crate::trace`]) is always the outermost: the
//! others run inside the delivery's `farine.handle` span and trace context.
//!
//! ```
//! use farine::middleware::{Call, Handled, Middleware, Next};
//! use futures::future::BoxFuture;
//! use std::sync::atomic::{AtomicU64, Ordering};
//!
//! /// Counts the deliveries that failed.
//! #[derive(Default)]
//! struct Failures(AtomicU64);
//!
//! impl Middleware for Failures {
//!     fn around<'a>(&'a self, call: &'a Call<'a>, next: Next<'a>) -> BoxFuture<'a, Handled> {
//!         Box::pin(async move {
//!             let handled = next.run().await;
//!             if !handled.is_done() {
//!                 self.0.fetch_add(1, Ordering::Relaxed);
//!                 farine::tracing::warn!(entry_point = call.entry_point, "failed");
//!             }
//!             handled
//!         })
//!     }
//! }
//!
//! // Every service of this runtime (or `.service_middleware("calc", ...)` for one):
//! # fn demo(config: farine::Config) {
//! let runtime = farine::Runtime::new(config).middleware(Failures::default());
//! # }
//! ```

use crate::observe::Handling;
use crate::transport::Headers;
use futures::future::BoxFuture;
use std::sync::Arc;

/// What kind of entry point handles the delivery.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EntryKind {
    /// `#[amqp::consume]`.
    Consume,
    /// `#[rpc::method]`.
    Rpc,
}

/// One delivery an entry point is about to handle.
#[derive(Debug)]
#[non_exhaustive]
pub struct Call<'a> {
    pub service: &'a str,
    /// `service.method`.
    pub entry_point: &'a str,
    pub kind: EntryKind,
    /// The queue it was consumed from.
    pub queue: &'a str,
    /// The exchange and routing key it was published with.
    pub exchange: &'a str,
    pub routing_key: &'a str,
    /// The caller's correlation id (RPC), or the message's, if any.
    pub correlation_id: Option<&'a str>,
    /// The message's headers, as the sender wrote them (trust none of them).
    pub headers: &'a Headers,
    /// 1 for the first delivery, then one more per retry (counted as farine trusts it).
    pub attempt: u32,
}

/// How the delivery ended.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct Handled {
    /// The method's outcome (for a call: its answer).
    pub outcome: Handling,
    /// What happened to the message.
    pub disposition: Disposition,
}

impl Handled {
    /// Whether the method succeeded (and the message was acked or the call answered).
    pub fn is_done(&self) -> bool {
        self.outcome == Handling::Done
    }

    /// A delivery given back to the broker unhandled, which delivers it again: what a
    /// middleware answers when it holds one back (and what shutdown does to those waiting).
    pub fn requeued() -> Handled {
        Handled::new(
            Handling::Failed("not handled: given back to the broker".into()),
            Disposition::Requeued,
        )
    }

    pub(crate) fn new(outcome: Handling, disposition: Disposition) -> Handled {
        Handled {
            outcome,
            disposition,
        }
    }
}

/// What became of a handled message.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Disposition {
    /// Acknowledged: handled (an RPC request: answered, whatever the answer).
    Acked,
    /// Failed and sent to a delay queue, to be tried again.
    Retried,
    /// Parked in `<queue>.dlq`.
    DeadLettered,
    /// Given back to the broker unhandled (it will be delivered again).
    Requeued,
}

/// A middleware: see the [module](self) documentation.
pub trait Middleware: Send + Sync + 'static {
    /// Runs around one delivery; calls `next.run()` to handle it.
    fn around<'a>(&'a self, call: &'a Call<'a>, next: Next<'a>) -> BoxFuture<'a, Handled>;
}

/// The rest of the chain: the following middlewares, then the handling itself.
pub struct Next<'a> {
    rest: &'a [Arc<dyn Middleware>],
    call: &'a Call<'a>,
    handling: BoxFuture<'a, Handled>,
}

impl<'a> Next<'a> {
    /// Goes on with the delivery: the next middleware, or the handling itself.
    pub fn run(self) -> BoxFuture<'a, Handled> {
        match self.rest.split_first() {
            Some((first, rest)) => first.around(
                self.call,
                Next {
                    rest,
                    call: self.call,
                    handling: self.handling,
                },
            ),
            None => self.handling,
        }
    }
}

/// The middlewares of one service, outermost first.
#[derive(Clone, Default)]
pub(crate) struct Chain(Arc<[Arc<dyn Middleware>]>);

impl Chain {
    pub(crate) fn new(middlewares: Vec<Arc<dyn Middleware>>) -> Chain {
        Chain(middlewares.into())
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Runs `handling` through the chain (the caller skips this when it is empty, so a
    /// service without middleware pays nothing for it).
    pub(crate) async fn run<'a>(
        &'a self,
        call: &'a Call<'a>,
        handling: BoxFuture<'a, Handled>,
    ) -> Handled {
        Next {
            rest: &self.0,
            call,
            handling,
        }
        .run()
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::FutureExt;
    use std::sync::Mutex;

    struct Record(&'static str, Arc<Mutex<Vec<String>>>);

    impl Middleware for Record {
        fn around<'a>(&'a self, call: &'a Call<'a>, next: Next<'a>) -> BoxFuture<'a, Handled> {
            Box::pin(async move {
                self.1
                    .lock()
                    .unwrap()
                    .push(format!("{} in {}", self.0, call.entry_point));
                let handled = next.run().await;
                self.1.lock().unwrap().push(format!("{} out", self.0));
                handled
            })
        }
    }

    #[tokio::test]
    async fn middlewares_run_outermost_first_around_the_handling() {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let chain = Chain::new(vec![
            Arc::new(Record("a", seen.clone())),
            Arc::new(Record("b", seen.clone())),
        ]);
        let headers = Headers::new();
        let call = Call {
            service: "calc",
            entry_point: "calc.add",
            kind: EntryKind::Rpc,
            queue: "calc__add",
            exchange: "calc",
            routing_key: "calc__add",
            correlation_id: Some("1"),
            headers: &headers,
            attempt: 1,
        };
        let inner = seen.clone();
        let handling = async move {
            inner.lock().unwrap().push("handled".into());
            Handled::new(Handling::Done, Disposition::Acked)
        }
        .boxed();
        let handled = chain.run(&call, handling).await;
        assert!(handled.is_done());
        assert_eq!(
            *seen.lock().unwrap(),
            [
                "a in calc.add",
                "b in calc.add",
                "handled",
                "b out",
                "a out"
            ]
        );
    }
}
