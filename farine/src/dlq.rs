//! Dead-letter queues seen from outside: what is parked in `<queue>.dlq` and why, and putting
//! it back into the queue it was parked from. Used by `farine dlq list|show|replay QUEUE`.

use crate::broker::Broker;
use crate::retry::{self, ERROR, FAILED_AT, ORIGINAL_EXCHANGE, ORIGINAL_ROUTING_KEY};
use crate::{Error, Result};
use lapin::options::{BasicAckOptions, BasicGetOptions, BasicPublishOptions, QueueDeclareOptions};
use lapin::types::{AMQPValue, FieldTable};
use lapin::BasicProperties;

/// One parked message.
#[derive(Debug, Clone)]
pub struct DeadLetter {
    pub body: Vec<u8>,
    /// Why it was parked (`x-farine-error`).
    pub error: Option<String>,
    /// How many times it was tried (`x-farine-attempts`).
    pub attempts: u32,
    pub original_exchange: Option<String>,
    pub original_routing_key: Option<String>,
    /// When, RFC 3339 (`x-farine-failed-at`).
    pub failed_at: Option<String>,
}

/// `orders` and `orders.dlq` both name the dead-letter queue `orders.dlq`.
pub fn queue_name(queue: &str) -> String {
    if queue.ends_with(".dlq") {
        queue.to_string()
    } else {
        retry::dead_letter_queue(queue)
    }
}

fn dead_letter(body: Vec<u8>, properties: &BasicProperties) -> DeadLetter {
    let text = |key| retry::header_text(properties, key);
    DeadLetter {
        body,
        error: text(ERROR),
        attempts: retry::attempts(properties),
        original_exchange: text(ORIGINAL_EXCHANGE),
        original_routing_key: text(ORIGINAL_ROUTING_KEY),
        failed_at: text(FAILED_AT),
    }
}

/// Up to `limit` parked messages, oldest first, left in the queue.
pub async fn peek(broker: &Broker, queue: &str, limit: usize) -> Result<Vec<DeadLetter>> {
    let dlq = queue_name(queue);
    // Unacked gets on a channel of their own: closing it puts every message back in place.
    let channel = broker.scratch_channel().await?;
    let mut letters = Vec::new();
    while letters.len() < limit {
        let got = channel
            .basic_get(dlq.as_str().into(), BasicGetOptions { no_ack: false })
            .await
            .map_err(Error::amqp(format!("reading dead-letter queue {dlq:?}")))?;
        let Some(message) = got else { break };
        letters.push(dead_letter(
            message.delivery.data.clone(),
            &message.delivery.properties,
        ));
    }
    let _ = channel.close(200, "OK".into()).await;
    Ok(letters)
}

/// What a replay did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Replayed {
    /// Messages moved from the dead-letter queue back to their queue.
    pub moved: usize,
    /// Messages that were in the dead-letter queue when the replay started and are still
    /// there (over the limit, or the replay stopped).
    pub left: usize,
    /// How many more messages the dead-letter queue held shortly after the replay than it
    /// had left: replayed messages that failed again (or other new failures).
    pub came_back: usize,
}

/// Messages moved per transaction: each batch is moved whole or not at all.
const REPLAY_BATCH: usize = 100;

/// Moves the messages parked in `queue`'s dead-letter queue when the call starts (at most
/// `limit`) back to `queue` itself, through the default exchange: only to the queue a message
/// was parked from, whatever its headers say, and never to the other queues bound to its
/// original exchange. Messages that fail again and come back are not taken a second time.
///
/// Each batch of gets, publishes and acks is one AMQP transaction, so a replay interrupted at
/// any point (even killed) leaves every message either in the queue or still parked, never
/// in both and never lost. A message the broker cannot route (the queue was deleted meanwhile)
/// is parked again and the replay stops with an error.
pub async fn replay(broker: &Broker, queue: &str, limit: usize) -> Result<Replayed> {
    let dlq = queue_name(queue);
    let target = dlq.strip_suffix(".dlq").unwrap_or(&dlq).to_string();
    if message_count(broker, &target).await?.is_none() {
        return Err(Error::Runtime(format!(
            "queue {target:?} does not exist: start its service (which declares it) before replaying {dlq:?}"
        )));
    }
    let Some(present) = message_count(broker, &dlq).await? else {
        return Err(Error::Runtime(format!(
            "dead-letter queue {dlq:?} does not exist"
        )));
    };
    let todo = present.min(limit);
    let channel = broker.scratch_channel().await?;
    channel
        .tx_select()
        .await
        .map_err(Error::amqp("starting a replay transaction"))?;
    let mut moved = 0;
    while moved < todo {
        let batch = moved..todo.min(moved + REPLAY_BATCH);
        let mut in_batch = 0;
        for _ in batch {
            let got = channel
                .basic_get(dlq.as_str().into(), BasicGetOptions { no_ack: false })
                .await
                .map_err(Error::amqp(format!("reading dead-letter queue {dlq:?}")))?;
            let Some(message) = got else { break };
            let delivery = &message.delivery;
            channel
                .basic_publish(
                    "".into(),
                    target.as_str().into(),
                    BasicPublishOptions {
                        mandatory: true,
                        ..Default::default()
                    },
                    &delivery.data,
                    replayed_properties(&delivery.properties),
                )
                .await
                .map_err(Error::amqp(format!("replaying into queue {target:?}")))?;
            delivery
                .ack(BasicAckOptions::default())
                .await
                .map_err(Error::amqp(format!(
                    "removing a replayed message from {dlq:?}"
                )))?;
            in_batch += 1;
        }
        if in_batch == 0 {
            break;
        }
        channel
            .tx_commit()
            .await
            .map_err(Error::amqp(format!("committing a replay from {dlq:?}")))?;
        // Returns arrive before the commit's answer; a returned message was acked in the
        // same transaction, so park it again before anything else.
        let returned = channel
            .wait_for_confirms()
            .await
            .map_err(Error::amqp(format!("replaying into queue {target:?}")))?;
        if !returned.is_empty() {
            for message in &returned {
                broker
                    .publish(
                        "",
                        &dlq,
                        &message.delivery.data,
                        message.delivery.properties.clone(),
                        true,
                    )
                    .await?;
            }
            let _ = channel.close(200, "OK".into()).await;
            return Err(Error::Runtime(format!(
                "queue {target:?} refused {} replayed message(s) (was it deleted?): they are back in {dlq:?}",
                returned.len()
            )));
        }
        moved += in_batch - returned.len();
    }
    let _ = channel.close(200, "OK".into()).await;
    let left = present - moved;
    let came_back = settled_count(broker, &dlq).await?.saturating_sub(left);
    Ok(Replayed {
        moved,
        left,
        came_back,
    })
}

/// The properties a replayed message travels with: the parked copy's, without farine's
/// bookkeeping (a replay starts its attempts afresh) but with where it first came from.
fn replayed_properties(properties: &BasicProperties) -> BasicProperties {
    let mut headers = FieldTable::default();
    for (key, value) in retry::foreign_headers(properties).inner() {
        // Its dead-letter history would pass for a retry's (see `retry::Origin`).
        if key.as_str() != "x-death" {
            headers.insert(key.clone(), value.clone());
        }
    }
    for key in [ORIGINAL_EXCHANGE, ORIGINAL_ROUTING_KEY] {
        if let Some(value) = retry::header_text(properties, key) {
            headers.insert(key.into(), AMQPValue::LongString(value.as_str().into()));
        }
    }
    retry::kept_properties(properties, headers)
}

/// Messages ready in `queue`, `None` when it does not exist.
async fn message_count(broker: &Broker, queue: &str) -> Result<Option<usize>> {
    // A passive declare of a missing queue closes its channel: use a channel of its own.
    let channel = broker.scratch_channel().await?;
    let declared = channel
        .queue_declare(
            queue.into(),
            QueueDeclareOptions {
                passive: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await;
    let _ = channel.close(200, "OK".into()).await;
    Ok(declared.ok().map(|q| q.message_count() as usize))
}

/// The count of `queue` once it stopped growing (replayed messages that fail again come
/// back within moments), waiting 2 s at most.
async fn settled_count(broker: &Broker, queue: &str) -> Result<usize> {
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(2);
    let mut last = message_count(broker, queue).await?.unwrap_or(0);
    loop {
        tokio::time::sleep(std::time::Duration::from_millis(300)).await;
        let now = message_count(broker, queue).await?.unwrap_or(0);
        if now == last || tokio::time::Instant::now() >= deadline {
            return Ok(now);
        }
        last = now;
    }
}
