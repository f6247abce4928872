//! The delivery loop that every queue entry point (consumers and RPC methods) shares: one task
//! per delivery (bounded by the subscription's prefetch), waiting through a lost connection
//! while the transport reconnects, re-attaching when the broker cancels the consumer (its
//! queue was deleted), and on shutdown: cancel the consumer, let in-flight work finish within
//! the grace period, and leave the rest unacked so the broker delivers it again.

use crate::backoff::{Backoff, MIN_DELAY};
use crate::broker::Broker;
use crate::config::{ExchangeKind, ServiceConfig};
use crate::transport::{Declaration, Delivery, Next, QueueOptions, Subscribe, Subscription};
use crate::{Error, Result};
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

/// A queue entry point's deliveries.
pub(crate) struct DeliveryLoop {
    label: String,
    queue: String,
    subscription: Box<dyn Subscription>,
    calls: Arc<Semaphore>,
    /// Told when the consumer is lost and when it is back (readiness).
    broker: Arc<Broker>,
}

/// An entry point's own queue bound to its exchange, declared as the service's section says
/// (nothing when `auto_declare = false`: the queue is then someone else's to declare).
pub(crate) fn queue_topology(
    settings: &ServiceConfig,
    exchange: &str,
    kind: ExchangeKind,
    queue: &str,
    routing_key: &str,
) -> Vec<Declaration> {
    if !settings.auto_declare {
        return Vec::new();
    }
    vec![
        Declaration::Exchange {
            name: exchange.to_string(),
            kind,
            durable: settings.durable,
            auto_delete: settings.auto_delete,
        },
        Declaration::Queue {
            name: queue.to_string(),
            options: QueueOptions {
                durable: settings.durable,
                exclusive: settings.exclusive,
                auto_delete: settings.auto_delete,
                ..Default::default()
            },
        },
        Declaration::Bind {
            queue: queue.to_string(),
            exchange: exchange.to_string(),
            routing_key: routing_key.to_string(),
        },
    ]
}

/// A call's turn to run its method (one of `concurrency`): taken by the delivery loop in
/// delivery order, dropped by the entry point as soon as the method returned, while its reply
/// or retry is still being confirmed. So the broker can send `prefetch` deliveries ahead
/// without more than `concurrency` methods running, and `concurrency = 1` runs them one at a
/// time, in order.
pub(crate) struct Turn(#[allow(dead_code)] tokio::sync::OwnedSemaphorePermit);

/// A body at least this large is followed by handing freed memory back to the system.
const LARGE_BODY: usize = 1024 * 1024;

impl DeliveryLoop {
    /// Declares the subscription's topology and starts consuming its queue.
    /// Declares the subscription's topology and starts consuming its queue; at most
    /// `concurrency` methods run at once.
    pub(crate) async fn start(
        broker: &Arc<Broker>,
        subscribe: Subscribe,
        concurrency: u16,
    ) -> Result<Self> {
        let (label, queue) = (subscribe.label.clone(), subscribe.queue.clone());
        let subscription = broker.subscribe(subscribe).await?;
        Ok(DeliveryLoop {
            label,
            queue,
            subscription,
            calls: Arc::new(Semaphore::new(usize::from(concurrency.max(1)))),
            broker: broker.clone(),
        })
    }

    /// After the broker cancelled the consumer: declares the queue again and consumes it,
    /// retrying with backoff until it works or `shutdown`. `None` on shutdown.
    async fn reattach(&mut self, shutdown: &CancellationToken) -> Option<Result<()>> {
        let mut backoff = Backoff::new(MIN_DELAY, Duration::from_secs(5)).jitter(0.25);
        loop {
            match self.subscription.reattach().await {
                Ok(()) => return Some(Ok(())),
                Err(err @ Error::Runtime(_)) => return Some(Err(err)),
                Err(err) => {
                    tracing::warn!(entry_point = %self.label, queue = %self.queue, "could not re-attach, retrying: {err}")
                }
            }
            tokio::select! {
                _ = shutdown.cancelled() => return None,
                _ = tokio::time::sleep(backoff.next()) => {}
            }
        }
    }

    /// Runs `handle` on each delivery in a task of its own until `shutdown`. Returns an error
    /// only if the consumer ended for good.
    pub(crate) async fn run<F, Fut>(
        mut self,
        shutdown: CancellationToken,
        grace: Duration,
        mut handle: F,
    ) -> Result<()>
    where
        F: FnMut(Delivery, Turn) -> Fut,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let label = self.label.clone();
        let mut tasks = JoinSet::new();
        let ended = loop {
            tokio::select! {
                _ = shutdown.cancelled() => break None,
                next = self.subscription.next() => match next {
                    Next::Delivery(delivery) => {
                        // Taken in delivery order. At shutdown the delivery is left unacked:
                        // it goes back to the queue when the consumer closes.
                        let turn = tokio::select! {
                            biased;
                            permit = self.calls.clone().acquire_owned() => match permit {
                                Ok(permit) => Turn(permit),
                                Err(_) => break None,
                            },
                            _ = shutdown.cancelled() => break None,
                        };
                        let large = delivery.message.body.len() >= LARGE_BODY;
                        // Boxed at once: a handler's future is large (several KiB for an
                        // RPC), and spawning moves it through several frames by value.
                        let work = Box::pin(handle(delivery, turn));
                        tasks.spawn(async move {
                            work.await;
                            if large {
                                release_memory();
                            }
                        });
                        // Finished tasks are reaped here rather than by waiting on them: a
                        // wait would wake this loop once more per delivery for nothing (and
                        // on a busy worker, that wake-up asks another worker to steal work).
                        // The prefetch bounds how many can pile up.
                        while tasks.try_join_next().is_some() {}
                    }
                    Next::Lost(err) => {
                        // The transport reconnects and re-attaches this consumer; unacked
                        // deliveries come back (acks of old ones are dropped).
                        tracing::warn!(entry_point = %label, "connection lost, waiting for the broker: {err}");
                        self.broker.mark_attached(false);
                        match self.subscription.recover().await {
                            Ok(()) => {
                                self.broker.mark_attached(true);
                                tracing::info!(entry_point = %label, "re-attached after reconnecting")
                            }
                            Err(err) => break Some(format!("the consumer failed and cannot recover: {err}")),
                        }
                    }
                    Next::Cancelled => {
                        tracing::warn!(entry_point = %label, queue = %self.queue, "the broker cancelled the consumer (was the queue deleted?): declaring it again and re-attaching");
                        self.broker.mark_attached(false);
                        match self.reattach(&shutdown).await {
                            Some(Ok(())) => {
                                self.broker.mark_attached(true);
                                tracing::info!(entry_point = %label, queue = %self.queue, "re-attached")
                            }
                            Some(Err(err)) => break Some(err.to_string()),
                            None => break None,
                        }
                    }
                },
            }
        };
        if ended.is_none() {
            self.subscription.cancel().await;
        }
        if !tasks.is_empty() {
            tracing::info!(entry_point = %label, in_flight = tasks.len(), "waiting for in-flight work");
        }
        let drained =
            tokio::time::timeout(grace, async { while tasks.join_next().await.is_some() {} }).await;
        if drained.is_err() {
            tracing::warn!(entry_point = %label, left = tasks.len(), "grace period over: unfinished work goes back to the queue");
            tasks.abort_all();
        }
        match ended {
            Some(reason) => Err(Error::Runtime(format!(
                "{label} (queue {:?}): {reason}",
                self.queue
            ))),
            None => {
                self.subscription.close().await;
                Ok(())
            }
        }
    }
}

/// Hands freed heap memory back to the system after a large message: glibc keeps it in its
/// arenas otherwise, and a burst of big bodies would leave the process hundreds of MiB large.
fn release_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only walks the allocator's own free lists.
    unsafe {
        libc::malloc_trim(0);
    }
}
