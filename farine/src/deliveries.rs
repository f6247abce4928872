//! The delivery loop that every queue entry point (consumers and RPC methods) shares: one task
//! per delivery (bounded by the channel's prefetch), waiting through a lost connection while
//! lapin reconnects, and on shutdown: cancel the consumer, let in-flight work finish within
//! the grace period, and leave the rest unacked so the broker delivers it again.

use crate::{Error, Result};
use futures::StreamExt;
use lapin::message::Delivery;
use lapin::options::{BasicCancelOptions, BasicConsumeOptions};
use lapin::types::FieldTable;
use lapin::{Channel, Consumer};
use std::future::Future;
use std::time::Duration;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

/// A consumer attached to its queue.
pub(crate) struct Subscription {
    label: String,
    queue: String,
    tag: String,
    channel: Channel,
    consumer: Consumer,
}

impl Subscription {
    /// Starts consuming `queue` on `channel` (whose prefetch bounds the work in flight).
    pub(crate) async fn start(label: String, queue: String, channel: Channel) -> Result<Self> {
        let tag = format!("farine.{label}.{}", uuid::Uuid::new_v4().simple());
        let consumer = channel
            .basic_consume(
                queue.as_str().into(),
                tag.as_str().into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await
            .map_err(Error::amqp(format!("{label}: consuming queue {queue:?}")))?;
        Ok(Subscription {
            label,
            queue,
            tag,
            channel,
            consumer,
        })
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
                        tasks.spawn(handle(delivery));
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
                    None => break Some("the broker ended the consumer".to_string()),
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
