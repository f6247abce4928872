//! What happens to a message that failed: retried through delay queues, then parked in a
//! dead-letter queue with headers that say why.
//!
//! Topology, per consumed queue `q` (all durable, declared at start-up):
//! - `q.retry.<ms>ms`: one queue per distinct backoff step, with `x-message-ttl` and
//!   dead-lettering back to `q` through the default exchange. Equal TTLs in one queue keep it
//!   FIFO, so a retry never waits behind a longer one, and a retry survives a restart.
//! - `q.dlq`: where a message lands after its last attempt, or at once when it can never be
//!   handled (not JSON, wrong shape, too big).
//!
//! The main queue gets no arguments, so it stays compatible with peers (Python farine) that
//! declare it plainly. A failed message is acked only after its copy was confirmed.

use crate::backoff::Backoff;
use crate::broker::Broker;
use crate::clip::clip;
use crate::config::ServiceConfig;
use crate::middleware::Disposition;
use crate::transport::{Declaration, HeaderValue, Headers, Message, Properties, QueueOptions};
use crate::Result;
use std::time::Duration;

pub(crate) const ATTEMPTS: &str = "x-farine-attempts";
pub(crate) const ERROR: &str = "x-farine-error";
pub(crate) const ORIGINAL_EXCHANGE: &str = "x-farine-original-exchange";
pub(crate) const ORIGINAL_ROUTING_KEY: &str = "x-farine-original-routing-key";
pub(crate) const QUEUE: &str = "x-farine-queue";
pub(crate) const FAILED_AT: &str = "x-farine-failed-at";
/// What every header of farine's starts with; a sender's are dropped (see [`Origin`]).
pub(crate) const FARINE_PREFIX: &str = "x-farine-";

/// Retries after the first failure, with a doubling delay capped at `max_delay`.
#[derive(Clone, Debug)]
pub(crate) struct RetryPolicy {
    pub attempts: u32,
    pub delay: Duration,
    pub max_delay: Duration,
}

impl RetryPolicy {
    pub fn from_settings(settings: &ServiceConfig) -> Self {
        RetryPolicy {
            attempts: settings.retry_attempts,
            delay: settings.retry_delay,
            max_delay: settings.retry_max_delay,
        }
    }

    /// Delay before retry number `retry` (0-based), in whole milliseconds (the delay
    /// queues' TTL): the shared backoff, without jitter, so equal steps share one queue.
    fn delay_ms(&self, retry: u32) -> u64 {
        let backoff = Backoff::new(self.delay, self.max_delay).min(Duration::from_millis(1));
        u64::try_from(backoff.delay(retry + 1).as_millis()).unwrap_or(u64::MAX)
    }

    fn steps(&self) -> Vec<u64> {
        let mut steps: Vec<u64> = (0..self.attempts).map(|r| self.delay_ms(r)).collect();
        steps.dedup();
        steps
    }
}

pub(crate) fn dead_letter_queue(queue: &str) -> String {
    format!("{queue}.dlq")
}

fn retry_queue(queue: &str, delay_ms: u64) -> String {
    format!("{queue}.retry.{delay_ms}ms")
}

/// The dead-letter queue and the delay queues of `queue`.
pub(crate) fn topology(queue: &str, policy: &RetryPolicy) -> Vec<Declaration> {
    let mut topology = vec![dead_letter_topology(queue)];
    for delay_ms in policy.steps() {
        topology.push(Declaration::Queue {
            name: retry_queue(queue, delay_ms),
            options: QueueOptions {
                durable: true,
                message_ttl_ms: Some(delay_ms),
                dead_letter_exchange: Some(String::new()),
                dead_letter_routing_key: Some(queue.to_string()),
                ..Default::default()
            },
        });
    }
    topology
}

/// Only the dead-letter queue of `queue` (RPC requests are answered, not retried).
pub(crate) fn dead_letter_topology(queue: &str) -> Declaration {
    Declaration::Queue {
        name: dead_letter_queue(queue),
        options: QueueOptions {
            durable: true,
            ..Default::default()
        },
    }
}

/// Where a failed delivery came from and how often it was tried, as farine may trust it.
///
/// `x-farine-*` headers are farine's own: a sender can write them too, so the attempts are
/// believed only on a message that came back from one of this queue's own delay queues (the
/// broker dead-lettered it to the default exchange with the queue's name, and its newest
/// `x-death` entry names `<queue>.retry.*`). Every other delivery counts as a first arrival:
/// its attempts start at 0 and its origin is the exchange and routing key it arrived by (or,
/// when it was put straight into the queue, as a replay does, what its headers say: nothing
/// routes by them).
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Origin {
    pub exchange: String,
    pub routing_key: String,
    /// Retries already done.
    pub attempts: u32,
}

impl Origin {
    pub fn of(delivery: &Message, queue: &str) -> Origin {
        let properties = &delivery.properties;
        let arrived = || Origin {
            exchange: delivery.exchange.clone(),
            routing_key: delivery.routing_key.clone(),
            attempts: 0,
        };
        let first = arrived();
        let retried = came_back_from_retry(delivery, queue);
        // Put straight into this queue (a retry, or `farine dlq replay`): the origin headers
        // only describe it (nothing routes by them), so they are kept for the next parking.
        let direct = delivery.exchange.is_empty() && delivery.routing_key == queue;
        if !retried && !direct {
            return first;
        }
        Origin {
            exchange: header_text(properties, ORIGINAL_EXCHANGE).unwrap_or(first.exchange),
            routing_key: header_text(properties, ORIGINAL_ROUTING_KEY).unwrap_or(first.routing_key),
            attempts: if retried { attempts(properties) } else { 0 },
        }
    }
}

/// Whether the broker dead-lettered this delivery to `queue` from one of its delay queues.
fn came_back_from_retry(delivery: &Message, queue: &str) -> bool {
    if !delivery.exchange.is_empty() || delivery.routing_key != queue {
        return false;
    }
    let Some(HeaderValue::List(deaths)) = delivery.properties.headers.get("x-death") else {
        return false;
    };
    // The broker keeps the most recent death first.
    let Some(HeaderValue::Table(newest)) = deaths.first() else {
        return false;
    };
    let field = |key: &str| newest.get(key).and_then(HeaderValue::as_text);
    let retry_prefix = format!("{queue}.retry.");
    field("reason") == Some("expired")
        && field("queue").is_some_and(|q| q.starts_with(&retry_prefix))
}

/// How many times this delivery was already retried ([`Origin::of`]'s `attempts`, without
/// copying its exchange and routing key).
pub(crate) fn retried(delivery: &Message, queue: &str) -> u32 {
    if came_back_from_retry(delivery, queue) {
        attempts(&delivery.properties)
    } else {
        0
    }
}

/// How many times this message was already retried, by its `x-farine-attempts` header.
pub(crate) fn attempts(properties: &Properties) -> u32 {
    properties
        .headers
        .get(ATTEMPTS)
        .and_then(HeaderValue::as_int)
        .and_then(|n| u32::try_from(n).ok())
        .unwrap_or(0)
}

/// A text header, as farine writes them.
pub(crate) fn header_text(properties: &Properties, key: &str) -> Option<String> {
    properties.header_text(key).map(str::to_string)
}

/// The sender's headers without any `x-farine-*` one.
pub(crate) fn foreign_headers(properties: &Properties) -> Headers {
    properties
        .headers
        .iter()
        .filter(|(key, _)| !key.starts_with(FARINE_PREFIX))
        .map(|(key, value)| (key.clone(), value.clone()))
        .collect()
}

/// The properties of a copy farine keeps (a retry or a parked message): the sender's content
/// properties and headers, farine's headers, always persistent, and never the sender's
/// `expiration` (a parked message stays until someone replays or deletes it) nor `user_id`
/// (the broker checks it against the publishing connection's user).
pub(crate) fn kept_properties(properties: &Properties, headers: Headers) -> Properties {
    Properties {
        headers,
        delivery_mode: Some(2),
        expiration: None,
        user_id: None,
        ..properties.clone()
    }
}

/// The properties of a failed delivery's copy: the sender's, with farine's headers (origin,
/// queue, and `extra`) in place of any `x-farine-*` the sender wrote.
fn annotated(
    delivery: &Message,
    origin: &Origin,
    queue: &str,
    extra: Vec<(&str, HeaderValue)>,
) -> Properties {
    let mut headers = foreign_headers(&delivery.properties);
    headers.insert(
        ORIGINAL_EXCHANGE.into(),
        HeaderValue::Text(origin.exchange.clone()),
    );
    headers.insert(
        ORIGINAL_ROUTING_KEY.into(),
        HeaderValue::Text(origin.routing_key.clone()),
    );
    headers.insert(QUEUE.into(), HeaderValue::Text(queue.to_string()));
    for (key, value) in extra {
        headers.insert(key.to_string(), value);
    }
    kept_properties(&delivery.properties, headers)
}

/// Schedules a retry of a failed delivery, or dead-letters it after its last attempt.
/// Returns once the copy is confirmed by the broker, so the caller may then ack.
pub(crate) async fn retry_or_dead_letter(
    broker: &Broker,
    queue: &str,
    delivery: &Message,
    reason: &str,
    policy: &RetryPolicy,
) -> Result<Disposition> {
    let origin = Origin::of(delivery, queue);
    let done = origin.attempts;
    if done >= policy.attempts {
        return dead_letter(broker, queue, delivery, reason, done + 1)
            .await
            .map(|()| Disposition::DeadLettered);
    }
    let reason = clip(reason);
    let delay_ms = policy.delay_ms(done);
    tracing::warn!(
        queue,
        attempt = done + 1,
        retry_in_ms = delay_ms,
        "handler failed: {reason}"
    );
    let properties = annotated(
        delivery,
        &origin,
        queue,
        vec![
            (ATTEMPTS, HeaderValue::Int(i64::from(done + 1))),
            (ERROR, HeaderValue::Text(reason.to_string())),
        ],
    );
    broker
        .publish(
            "",
            &retry_queue(queue, delay_ms),
            &delivery.body,
            properties,
            true,
        )
        .await
        .map(|()| Disposition::Retried)
}

/// Parks a delivery in `<queue>.dlq` with why, how many attempts, where it came from and when.
pub(crate) async fn dead_letter(
    broker: &Broker,
    queue: &str,
    delivery: &Message,
    reason: &str,
    attempts: u32,
) -> Result<()> {
    let dlq = dead_letter_queue(queue);
    let origin = Origin::of(delivery, queue);
    let reason = clip(reason);
    tracing::error!(queue, attempts, dead_letter_queue = %dlq, "message dead-lettered: {reason}");
    let now = humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string();
    let properties = annotated(
        delivery,
        &origin,
        queue,
        vec![
            (ATTEMPTS, HeaderValue::Int(i64::from(attempts))),
            (ERROR, HeaderValue::Text(reason.to_string())),
            (FAILED_AT, HeaderValue::Text(now)),
        ],
    );
    broker
        .publish("", &dlq, &delivery.body, properties, true)
        .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delay_queues_double_up_to_the_cap_one_queue_per_step() {
        let policy = |attempts, delay, max| RetryPolicy {
            attempts,
            delay: Duration::from_millis(delay),
            max_delay: Duration::from_millis(max),
        };
        assert_eq!(policy(3, 1000, 60_000).steps(), [1000, 2000, 4000]);
        assert_eq!(policy(4, 100, 150).steps(), [100, 150]);
        assert_eq!(policy(0, 100, 150).steps(), Vec::<u64>::new());
        assert_eq!(policy(100, 1000, 60_000).steps().last(), Some(&60_000));
    }
}
