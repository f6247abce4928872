//! RabbitMQ's direct reply-to on the memory broker: a no-ack consumer of the pseudo-queue
//! `amq.rabbitmq.reply-to` receives the replies to what its connection publishes with
//! `reply_to = amq.rabbitmq.reply-to`. As RabbitMQ does, the broker rewrites that `reply_to` to
//! a name of its own, `amq.rabbitmq.reply-to.<token>`, which the default exchange routes back
//! to the consumer, so a server answers it as it answers any reply queue.
//!
//! Behind the name is a private queue of the consuming channel (exclusive, auto-delete: gone
//! with the consumer, after which replies to it are unroutable). RabbitMQ pairs a publish with
//! the consumer of the same channel; a [`super::Memory`] publishes on no particular channel, so
//! here the pair is the connection's, and a connection has at most one such consumer.

use super::State;
use crate::transport::QueueOptions;
use crate::{Error, Result};

/// The pseudo-queue callers consume, and the `reply_to` they publish with.
pub(super) const PSEUDO_QUEUE: &str = crate::transport::DIRECT_REPLY_TO;

impl State {
    /// Declares the queue behind a new direct reply-to consumer on `channel` and returns its
    /// name.
    pub(super) fn direct_reply_queue(
        &mut self,
        channel: u64,
        label: &str,
        no_ack: bool,
    ) -> Result<String> {
        let Some(connection) = self.channels.get(&channel).map(|c| c.connection) else {
            return Err(Error::Runtime(format!(
                "{label}: the subscription to {PSEUDO_QUEUE} is closed"
            )));
        };
        if !no_ack {
            return Err(Error::Runtime(format!(
                "{label}: consuming {PSEUDO_QUEUE} needs no_ack: replies are settled on \
                 sending (PRECONDITION_FAILED)"
            )));
        }
        if self.direct_reply_consumer(connection).is_some() {
            return Err(Error::Runtime(format!(
                "{label}: this connection already consumes {PSEUDO_QUEUE} (PRECONDITION_FAILED)"
            )));
        }
        let name = format!("{PSEUDO_QUEUE}.{}", uuid::Uuid::new_v4().simple());
        let options = QueueOptions {
            exclusive: true,
            auto_delete: true,
            ..Default::default()
        };
        self.declare_queue(connection, &name, &options)?;
        if let Some(c) = self.channels.get_mut(&channel) {
            c.exclusive.push(name.clone());
        }
        Ok(name)
    }

    /// The `reply_to` a message published by `connection` travels with: the name of the
    /// connection's direct reply-to consumer in place of the pseudo-queue (`None`: unchanged).
    /// Without such a consumer the publish is refused, as RabbitMQ refuses it.
    pub(super) fn direct_reply_to(
        &self,
        connection: u64,
        reply_to: Option<&str>,
    ) -> Result<Option<String>> {
        if reply_to != Some(PSEUDO_QUEUE) {
            return Ok(None);
        }
        match self.direct_reply_consumer(connection) {
            Some(name) => Ok(Some(name.to_string())),
            None => Err(Error::Runtime(format!(
                "publishing with reply_to {PSEUDO_QUEUE}: this connection does not consume it \
                 (PRECONDITION_FAILED: fast reply consumer does not exist)"
            ))),
        }
    }

    /// The queue of `connection`'s direct reply-to consumer, if it has one.
    fn direct_reply_consumer(&self, connection: u64) -> Option<&str> {
        let prefix = PSEUDO_QUEUE.len();
        self.channels
            .values()
            .filter(|c| c.connection == connection && !c.lost)
            .filter_map(|c| c.consuming.as_ref().map(|(queue, _)| queue.as_str()))
            .find(|queue| {
                queue.starts_with(PSEUDO_QUEUE) && queue.as_bytes().get(prefix) == Some(&b'.')
            })
    }
}
