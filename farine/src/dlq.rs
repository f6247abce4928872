//! Dead-letter queues seen from outside: what is parked in `<queue>.dlq` and why, and putting
//! it back into the queue it was parked from. Used by `farine dlq list|show|replay QUEUE`.

use crate::broker::Broker;
use crate::retry::{self, ERROR, FAILED_AT, ORIGINAL_EXCHANGE, ORIGINAL_ROUTING_KEY};
use crate::transport::{HeaderValue, Properties};
use crate::{Error, Result};

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

fn letter_of(body: Vec<u8>, properties: &Properties) -> DeadLetter {
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
    Ok(broker
        .peek(&dlq, limit)
        .await?
        .into_iter()
        .map(|message| letter_of(message.body, &message.properties))
        .collect())
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
    if broker.message_count(&target).await?.is_none() {
        return Err(Error::Runtime(format!(
            "queue {target:?} does not exist: start its service (which declares it) before replaying {dlq:?}"
        )));
    }
    let Some(present) = broker.message_count(&dlq).await? else {
        return Err(Error::Runtime(format!(
            "dead-letter queue {dlq:?} does not exist"
        )));
    };
    let todo = present.min(limit);
    let moved = broker
        .move_messages(&dlq, &target, todo, &replayed_properties)
        .await?
        .moved;
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
fn replayed_properties(properties: &Properties) -> Properties {
    let mut headers = retry::foreign_headers(properties);
    // Its dead-letter history would pass for a retry's (see `retry::Origin`).
    headers.remove("x-death");
    for key in [ORIGINAL_EXCHANGE, ORIGINAL_ROUTING_KEY] {
        if let Some(value) = properties.header_text(key) {
            headers.insert(key.to_string(), HeaderValue::Text(value.to_string()));
        }
    }
    retry::kept_properties(properties, headers)
}

/// The count of `queue` once it stopped growing (replayed messages that fail again come
/// back within moments), waiting 2 s at most.
async fn settled_count(broker: &Broker, queue: &str) -> Result<usize> {
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(2);
    let mut last = broker.message_count(queue).await?.unwrap_or(0);
    loop {
        tokio::time::sleep(std::time::Duration::from_millis(300)).await;
        let now = broker.message_count(queue).await?.unwrap_or(0);
        if now == last || tokio::time::Instant::now() >= deadline {
            return Ok(now);
        }
        last = now;
    }
}
