//! Dead-letter queues seen from outside: what is parked in `<queue>.dlq` and why, and putting
//! it back where it came from. Used by `farine dlq list|show|replay QUEUE`.

use crate::broker::Broker;
use crate::retry::{
    self, ATTEMPTS, ERROR, FAILED_AT, ORIGINAL_EXCHANGE, ORIGINAL_ROUTING_KEY, QUEUE,
};
use crate::{Error, Result};
use lapin::options::{BasicAckOptions, BasicGetOptions};
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

fn text(headers: &FieldTable, key: &str) -> Option<String> {
    match headers.inner().get(key)? {
        AMQPValue::LongString(s) => Some(String::from_utf8_lossy(s.as_bytes()).into_owned()),
        AMQPValue::ShortString(s) => Some(s.as_str().to_string()),
        _ => None,
    }
}

fn dead_letter(body: Vec<u8>, properties: &BasicProperties) -> DeadLetter {
    let headers = properties.headers().clone().unwrap_or_default();
    DeadLetter {
        body,
        error: text(&headers, ERROR),
        attempts: retry::attempts(properties),
        original_exchange: text(&headers, ORIGINAL_EXCHANGE),
        original_routing_key: text(&headers, ORIGINAL_ROUTING_KEY),
        failed_at: text(&headers, FAILED_AT),
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

/// Republishes up to `limit` parked messages to their original exchange and routing key
/// (with fresh attempts), each removed from the dead-letter queue only once the broker
/// confirmed its copy. Returns how many were replayed.
pub async fn replay(broker: &Broker, queue: &str, limit: usize) -> Result<usize> {
    let dlq = queue_name(queue);
    let channel = broker.scratch_channel().await?;
    let mut replayed = 0;
    while replayed < limit {
        let got = channel
            .basic_get(dlq.as_str().into(), BasicGetOptions { no_ack: false })
            .await
            .map_err(Error::amqp(format!("reading dead-letter queue {dlq:?}")))?;
        let Some(message) = got else { break };
        let delivery = &message.delivery;
        let letter = dead_letter(Vec::new(), &delivery.properties);
        let (Some(exchange), Some(routing_key)) =
            (letter.original_exchange, letter.original_routing_key)
        else {
            let _ = channel.close(200, "OK".into()).await;
            return Err(Error::Runtime(format!(
                "a message in {dlq:?} has no {ORIGINAL_EXCHANGE}/{ORIGINAL_ROUTING_KEY} headers: it was not parked by farine, replay it by hand"
            )));
        };
        let mut headers = delivery.properties.headers().clone().unwrap_or_default();
        let kept: FieldTable = {
            let mut kept = FieldTable::default();
            for (key, value) in headers.inner() {
                if ![
                    ATTEMPTS,
                    ERROR,
                    FAILED_AT,
                    QUEUE,
                    ORIGINAL_EXCHANGE,
                    ORIGINAL_ROUTING_KEY,
                ]
                .contains(&key.as_str())
                {
                    kept.insert(key.clone(), value.clone());
                }
            }
            kept
        };
        headers = kept;
        let properties = delivery.properties.clone().with_headers(headers);
        broker
            .publish(&exchange, &routing_key, &delivery.data, properties, true)
            .await?;
        delivery
            .ack(BasicAckOptions::default())
            .await
            .map_err(Error::amqp(format!(
                "removing a replayed message from {dlq:?}"
            )))?;
        replayed += 1;
    }
    let _ = channel.close(200, "OK".into()).await;
    Ok(replayed)
}
