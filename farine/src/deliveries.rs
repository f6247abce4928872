//! The delivery loop that every queue entry point (consumers and RPC methods) shares: one task
//! per delivery (bounded by the channel's prefetch), waiting through a lost connection while
//! lapin reconnects, and on shutdown: cancel the consumer, let in-flight work finish within
//! the grace period, and leave the rest unacked so the broker delivers it again.

use crate::{Error, Result};
use futures::future::BoxFuture;
use futures::StreamExt;
use lapin::message::Delivery;
use lapin::options::{BasicCancelOptions, BasicConsumeOptions};
use lapin::types::FieldTable;
use lapin::{Channel, Consumer};
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

/// Declares what a subscription's queue needs (the queue, its binding, its retry and
/// dead-letter queues) on its channel: at start, and again whenever the broker cancels the
/// consumer (someone deleted the queue), so the entry point re-attaches instead of stopping.
pub(crate) type Declare = Arc<dyn Fn(Channel) -> BoxFuture<'static, Result<()>> + Send + Sync>;

/// A consumer attached to its queue.
pub(crate) struct Subscription {
    label: String,
    queue: String,
    tag: String,
    channel: Channel,
    consumer: Consumer,
    declare: Declare,
}

/// A body at least this large is followed by handing freed memory back to the system.
const LARGE_BODY: usize = 1024 * 1024;

impl Subscription {
    /// Declares the queue's topology with `declare`, then starts consuming `queue` on
    /// `channel` (whose prefetch bounds the work in flight).
    pub(crate) async fn start(
        label: String,
        queue: String,
        channel: Channel,
        declare: Declare,
    ) -> Result<Self> {
        declare(channel.clone()).await?;
        let tag = format!("farine.{label}.{}", uuid::Uuid::new_v4().simple());
        let consumer = consume(&channel, &label, &queue, &tag).await?;
        Ok(Subscription {
            label,
            queue,
            tag,
            channel,
            consumer,
            declare,
        })
    }

    /// After the broker cancelled the consumer: declares the queue again and consumes it,
    /// retrying with backoff until it works or `shutdown`. `None` on shutdown.
    async fn reattach(&self, shutdown: &CancellationToken) -> Option<Result<Consumer>> {
        let mut delay = Duration::from_millis(100);
        loop {
            if !self.channel.status().connected() {
                return Some(Err(Error::Runtime(format!(
                    "{}: the channel of queue {:?} closed while re-attaching",
                    self.label, self.queue
                ))));
            }
            let attached = async {
                (self.declare)(self.channel.clone()).await?;
                consume(&self.channel, &self.label, &self.queue, &self.tag).await
            };
            match attached.await {
                Ok(consumer) => return Some(Ok(consumer)),
                Err(err) => {
                    tracing::warn!(entry_point = %self.label, queue = %self.queue, "could not re-attach, retrying in {delay:?}: {err}")
                }
            }
            tokio::select! {
                _ = shutdown.cancelled() => return None,
                _ = tokio::time::sleep(delay) => {}
            }
            delay = (delay * 2).min(Duration::from_secs(5));
        }
    }

    /// Runs `handle` on each delivery in a task of its own until `shutdown`. Returns an error
    /// only if the broker ended the consumer for good.
    pub(crate) async fn run<F, Fut>(
        mut self,
        shutdown: CancellationToken,
        grace: Duration,
        mut handle: F,
    ) -> Result<()>
    where
        F: FnMut(Delivery) -> Fut,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let label = self.label.as_str();
        let mut tasks = JoinSet::new();
        let ended = loop {
            tokio::select! {
                _ = shutdown.cancelled() => break None,
                next = self.consumer.next() => match next {
                    Some(Ok(delivery)) => {
                        let large = delivery.data.len() >= LARGE_BODY;
                        let work = handle(delivery);
                        tasks.spawn(async move {
                            work.await;
                            if large {
                                release_memory();
                            }
                        });
                    }
                    Some(Err(err)) => {
                        // Connection lost: lapin reconnects and re-attaches this consumer;
                        // unacked deliveries come back (acks of old ones are dropped).
                        tracing::warn!(entry_point = %label, "connection lost, waiting for the broker: {err}");
                        match self.channel.wait_for_recovery(err).await {
                            Ok(()) => tracing::info!(entry_point = %label, "re-attached after reconnecting"),
                            Err(err) => break Some(format!("the consumer failed and cannot recover: {err}")),
                        }
                    }
                    None => {
                        tracing::warn!(entry_point = %label, queue = %self.queue, "the broker cancelled the consumer (was the queue deleted?): declaring it again and re-attaching");
                        match self.reattach(&shutdown).await {
                            Some(Ok(consumer)) => {
                                self.consumer = consumer;
                                tracing::info!(entry_point = %label, queue = %self.queue, "re-attached");
                            }
                            Some(Err(err)) => break Some(err.to_string()),
                            None => break None,
                        }
                    }
                },
                Some(_) = tasks.join_next(), if !tasks.is_empty() => {}
            }
        };
        if ended.is_none() {
            let _ = self
                .channel
                .basic_cancel(self.tag.as_str().into(), BasicCancelOptions::default())
                .await;
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
                let _ = self.channel.close(200, "OK".into()).await;
                Ok(())
            }
        }
    }
}

async fn consume(channel: &Channel, label: &str, queue: &str, tag: &str) -> Result<Consumer> {
    channel
        .basic_consume(
            queue.into(),
            tag.into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .map_err(Error::amqp(format!("{label}: consuming queue {queue:?}")))
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
