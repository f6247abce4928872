//! The seam between farine and a broker: the little that entry points, clients and the
//! dead-letter tools need, shaped by them rather than by all of AMQP.
//!
//! - **Declare** topology: exchanges, queues (with a message TTL and dead-lettering, which the
//!   retry delay queues use), bindings ([`Declaration`]).
//! - **Publish** with confirms, optionally mandatory ([`Outgoing`]; the returned [`Confirm`]
//!   resolves once the broker took the message, or fails if it refused or could not route it).
//! - **Consume** a queue as [`Delivery`]s, each settled with `ack` or `nack` ([`Subscribe`],
//!   [`Subscription`]); the subscription's topology is declared with it and again if the
//!   broker cancels it (its queue was deleted).
//! - **Connection state**: up or down, and a count of losses that waiting calls watch.
//! - **Parked messages**: count, peek and move (the dead-letter tools).
//!
//! [`amqp`] implements it on RabbitMQ with lapin; nothing outside that module sees a lapin
//! type. [`memory`] implements it in process memory (`memory://NAME`), for tests and setups
//! without RabbitMQ. Messages are described by farine's own [`Properties`] and [`Headers`].

pub mod amqp;
pub mod memory;

use crate::config::ExchangeKind;
use crate::Result;
use futures::future::BoxFuture;
use std::collections::BTreeMap;

/// Message headers, by name.
pub type Headers = BTreeMap<String, HeaderValue>;

/// One header value, as AMQP field tables carry them.
#[derive(Clone, Debug, PartialEq)]
pub enum HeaderValue {
    Text(String),
    Int(i64),
    Float(f64),
    Bool(bool),
    Bytes(Vec<u8>),
    List(Vec<HeaderValue>),
    Table(Headers),
    /// Seconds since the epoch.
    Timestamp(u64),
    /// A value farine has no use for (void, decimal, timestamp ...), kept as its debug text.
    Other(String),
}

impl HeaderValue {
    /// The value as text, when it is text.
    pub fn as_text(&self) -> Option<&str> {
        match self {
            HeaderValue::Text(text) => Some(text),
            _ => None,
        }
    }

    /// The value as a whole number, when it is one.
    pub fn as_int(&self) -> Option<i64> {
        match self {
            HeaderValue::Int(n) => Some(*n),
            _ => None,
        }
    }
}

/// The properties of a message that farine reads or writes.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Properties {
    pub content_type: Option<String>,
    pub content_encoding: Option<String>,
    pub headers: Headers,
    /// 1 transient, 2 persistent.
    pub delivery_mode: Option<u8>,
    pub priority: Option<u8>,
    pub correlation_id: Option<String>,
    pub reply_to: Option<String>,
    /// Per-message TTL in milliseconds, as text (AMQP's spelling).
    pub expiration: Option<String>,
    pub message_id: Option<String>,
    /// Seconds since the epoch.
    pub timestamp: Option<u64>,
    /// AMQP's `type`.
    pub kind: Option<String>,
    /// Checked by the broker against the publishing connection's user.
    pub user_id: Option<String>,
    pub app_id: Option<String>,
}

impl Properties {
    /// `content_type = application/json`, as every farine body is.
    pub fn json() -> Properties {
        Properties {
            content_type: Some("application/json".into()),
            ..Properties::default()
        }
    }

    pub fn with_delivery_mode(mut self, mode: u8) -> Properties {
        self.delivery_mode = Some(mode);
        self
    }

    pub fn with_correlation_id(mut self, id: impl Into<String>) -> Properties {
        self.correlation_id = Some(id.into());
        self
    }

    pub fn with_reply_to(mut self, reply_to: impl Into<String>) -> Properties {
        self.reply_to = Some(reply_to.into());
        self
    }

    pub fn with_expiration(mut self, expiration: impl Into<String>) -> Properties {
        self.expiration = Some(expiration.into());
        self
    }

    pub fn with_headers(mut self, headers: Headers) -> Properties {
        self.headers = headers;
        self
    }

    /// A text header.
    pub fn header_text(&self, key: &str) -> Option<&str> {
        self.headers.get(key).and_then(HeaderValue::as_text)
    }
}

/// A message as it was received.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Message {
    pub body: Vec<u8>,
    /// The exchange it was published to (`""` for the default exchange).
    pub exchange: String,
    pub routing_key: String,
    /// The broker delivered it before (to this or another consumer).
    pub redelivered: bool,
    pub properties: Properties,
}

/// How a delivery is settled with the broker.
pub trait Settle: Send + Sync {
    fn ack(&self) -> BoxFuture<'_, Result<()>>;
    fn nack(&self, requeue: bool) -> BoxFuture<'_, Result<()>>;
}

/// A message to handle, settled once handled: acked, or nacked (requeued or not).
pub struct Delivery {
    pub message: Message,
    settle: Box<dyn Settle>,
}

impl std::fmt::Debug for Delivery {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Delivery")
            .field("exchange", &self.message.exchange)
            .field("routing_key", &self.message.routing_key)
            .field("bytes", &self.message.body.len())
            .finish()
    }
}

impl Delivery {
    pub fn new(message: Message, settle: Box<dyn Settle>) -> Delivery {
        Delivery { message, settle }
    }

    /// Handled: the broker forgets it.
    pub async fn ack(&self) -> Result<()> {
        self.settle.ack().await
    }

    /// Not handled: back to its queue (`requeue`) or dropped (dead-lettered by the queue's
    /// policy, if it has one).
    pub async fn nack(&self, requeue: bool) -> Result<()> {
        self.settle.nack(requeue).await
    }
}

/// How a queue is declared.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct QueueOptions {
    pub durable: bool,
    pub exclusive: bool,
    pub auto_delete: bool,
    /// Messages expire after this many milliseconds (`x-message-ttl`).
    pub message_ttl_ms: Option<u64>,
    /// Where expired or rejected messages go (`x-dead-letter-exchange`, `""` for the default).
    pub dead_letter_exchange: Option<String>,
    /// With which routing key (`x-dead-letter-routing-key`).
    pub dead_letter_routing_key: Option<String>,
}

/// One piece of topology.
#[derive(Clone, Debug, PartialEq)]
pub enum Declaration {
    /// An exchange; one that exists with other settings is used as it is, with a warning.
    Exchange {
        name: String,
        kind: ExchangeKind,
        durable: bool,
        auto_delete: bool,
    },
    Queue {
        name: String,
        options: QueueOptions,
    },
    Bind {
        queue: String,
        exchange: String,
        routing_key: String,
    },
}

/// A message to publish.
#[derive(Clone, Debug)]
pub struct Outgoing<'a> {
    pub exchange: &'a str,
    pub routing_key: &'a str,
    pub body: &'a [u8],
    pub properties: Properties,
    /// A message no queue receives is an error rather than dropped.
    pub mandatory: bool,
}

/// The broker's answer to one publish: `Ok` once it took the message; an error if it refused
/// it (nack) or, for a mandatory message, no queue received it.
pub type Confirm = BoxFuture<'static, Result<()>>;

/// RabbitMQ's direct reply-to pseudo-queue. A subscription to it (`no_ack`, no topology)
/// receives the replies to the messages its transport publishes with this `reply_to`: the
/// broker rewrites it to a name of its own (`amq.rabbitmq.reply-to.<token>`) that routes back
/// through the default exchange. A transport pairs the two as RabbitMQ does (the request goes
/// out on the consumer's channel); one such subscription per transport.
pub const DIRECT_REPLY_TO: &str = "amq.rabbitmq.reply-to";

/// What to consume, and the topology it needs.
#[derive(Clone, Debug)]
pub struct Subscribe {
    /// For log lines and errors: `service.method`.
    pub label: String,
    pub queue: String,
    /// Deliveries in flight at most (unacked); 0 for no limit.
    pub prefetch: u16,
    /// Deliveries are settled by the broker on sending (replies, notices): no ack.
    pub no_ack: bool,
    /// Declared before consuming, and again when the broker cancels the consumer.
    pub topology: Vec<Declaration>,
}

/// What a subscription yields next.
// Moved once from the transport to the delivery loop: boxing the delivery would cost an
// allocation per message for nothing.
#[allow(clippy::large_enum_variant)]
pub enum Next {
    Delivery(Delivery),
    /// The connection was lost; [`Subscription::recover`] waits for it to come back (the
    /// transport re-attaches the subscription by itself). Unsettled deliveries come back.
    Lost(String),
    /// The broker ended the consumer (its queue was deleted): [`Subscription::reattach`].
    Cancelled,
}

/// A queue being consumed.
pub trait Subscription: Send {
    fn next(&mut self) -> BoxFuture<'_, Next>;
    /// After [`Next::Lost`]: waits until the connection and this subscription are back.
    fn recover(&mut self) -> BoxFuture<'_, Result<()>>;
    /// After [`Next::Cancelled`]: declares the topology again and consumes anew.
    fn reattach(&mut self) -> BoxFuture<'_, Result<()>>;
    /// What binds the subscription's queue to more exchanges (kept across reconnections),
    /// usable while the subscription is being read elsewhere.
    fn binder(&self) -> std::sync::Arc<dyn Binder>;
    /// Stops consuming; unsettled deliveries go back to the queue when it closes.
    fn cancel(&mut self) -> BoxFuture<'_, ()>;
    /// Closes the subscription (its exclusive queues go with it).
    fn close(&mut self) -> BoxFuture<'_, ()>;
}

/// Binds one subscription's queue to exchanges.
pub trait Binder: Send + Sync {
    fn bind<'a>(&'a self, exchange: &'a str, routing_key: &'a str) -> BoxFuture<'a, Result<()>>;
}

/// What a move of parked messages did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Moved {
    pub moved: usize,
}

/// A broker.
pub trait Transport: Send + Sync + 'static {
    /// Where, for log lines and errors (no password).
    fn describe(&self) -> String;
    fn is_connected(&self) -> bool;
    /// Bumped at each lost connection: calls waiting for replies fail at once.
    fn losses(&self) -> tokio::sync::watch::Receiver<u64>;
    /// Declares topology (an exchange once per process).
    fn declare<'a>(&'a self, topology: &'a [Declaration]) -> BoxFuture<'a, Result<()>>;
    /// Whether `exchange` exists.
    fn exchange_exists<'a>(&'a self, exchange: &'a str) -> BoxFuture<'a, Result<bool>>;
    /// Publishes, waiting through a lost connection for a bounded time; the confirm comes
    /// later, so several publishes can be in flight.
    fn publish<'a>(&'a self, message: Outgoing<'a>) -> BoxFuture<'a, Result<Confirm>>;
    fn subscribe(&self, subscribe: Subscribe) -> BoxFuture<'_, Result<Box<dyn Subscription>>>;
    /// Messages ready in `queue`; `None` when it does not exist.
    fn message_count<'a>(&'a self, queue: &'a str) -> BoxFuture<'a, Result<Option<usize>>>;
    /// Up to `limit` messages of `queue`, oldest first, left in place.
    fn peek<'a>(&'a self, queue: &'a str, limit: usize) -> BoxFuture<'a, Result<Vec<Message>>>;
    /// Moves up to `limit` messages from queue `from` into queue `to` (through the default
    /// exchange), `rewrite` giving each one's new properties. Atomic per batch: interrupted
    /// at any point, no message is lost or in both queues.
    fn move_messages<'a>(
        &'a self,
        from: &'a str,
        to: &'a str,
        limit: usize,
        rewrite: &'a (dyn Fn(&Properties) -> Properties + Send + Sync),
    ) -> BoxFuture<'a, Result<Moved>>;
    /// Closes the connections; unacked deliveries go back to their queues.
    fn close(&self) -> BoxFuture<'_, ()>;
}
