//! The broker a process talks to: one [`Transport`] per broker URI, shared by every service
//! and client of the process (one connection for consuming and one for publishing), with
//! what farine does on top of it: confirmed publishing where a nack or an unroutable
//! mandatory message is an error.

use crate::config::{AmqpUri, ExchangeKind, ServiceConfig};
use crate::transport::amqp::Amqp;
use crate::transport::memory::{self, Memory};
use crate::transport::{
    Confirm, Declaration, Message, Moved, Outgoing, Properties, QueueOptions, Subscribe,
    Subscription, Transport,
};
use crate::Result;
use std::collections::HashMap;
use std::sync::Arc;

pub use crate::transport::amqp::{CONNECT_WAIT, PUBLISH_WAIT};

/// A connected broker.
pub struct Broker {
    uri: AmqpUri,
    transport: Box<dyn Transport>,
    /// Entry points on this connection that lost their consumer and have not re-attached.
    detached: std::sync::atomic::AtomicUsize,
}

impl std::fmt::Debug for Broker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Broker").field("uri", &self.uri).finish()
    }
}

type BrokerCache = tokio::sync::Mutex<HashMap<String, Arc<Broker>>>;

fn cache() -> &'static BrokerCache {
    static CACHE: std::sync::OnceLock<BrokerCache> = std::sync::OnceLock::new();
    CACHE.get_or_init(Default::default)
}

impl Broker {
    /// The process's broker for `uri`, connected on first use and shared afterwards.
    pub async fn shared(settings: &ServiceConfig) -> Result<Arc<Broker>> {
        let uri = &settings.amqp_uri;
        let mut brokers = cache().lock().await;
        if let Some(broker) = brokers.get(uri.expose()) {
            if broker.is_connected() {
                return Ok(broker.clone());
            }
        }
        let broker = Arc::new(Broker::for_service(settings).await?);
        brokers.insert(uri.expose().to_string(), broker.clone());
        Ok(broker)
    }

    /// The broker of a service's settings: its `amqp_uri`, `heartbeat`, and for `amqps://`
    /// the certificate authorities of `amqp_ca_file` (PEM) on top of the system's.
    pub async fn for_service(settings: &ServiceConfig) -> Result<Broker> {
        let ca = match settings.amqp_ca_file.as_deref() {
            Some(path) => Some(std::fs::read_to_string(path).map_err(|err| {
                settings.error(
                    "amqp_ca_file",
                    format!("expected a readable PEM file of CA certificates, cannot read {path:?}: {err}"),
                )
            })?),
            None => None,
        };
        Broker::connect_tls(&settings.amqp_uri, settings.heartbeat, ca).await
    }

    /// Connects to `uri`. `heartbeat` is in seconds (0 disables).
    pub async fn connect(uri: &AmqpUri, heartbeat: u16) -> Result<Broker> {
        Broker::connect_tls(uri, heartbeat, None).await
    }

    /// [`Broker::connect`], trusting the PEM certificates `ca` for `amqps://` as well. The
    /// scheme chooses the transport: `memory://NAME` a new connection to the process's
    /// in-memory broker `NAME` (shared by every connection with that name), anything else
    /// RabbitMQ.
    pub async fn connect_tls(uri: &AmqpUri, heartbeat: u16, ca: Option<String>) -> Result<Broker> {
        let transport: Box<dyn Transport> = match memory::broker_name(uri.expose()) {
            Some(name) => Box::new(Memory::open(name)),
            None => Box::new(Amqp::connect(uri, heartbeat, ca).await?),
        };
        Ok(Broker::on(uri.clone(), transport))
    }

    /// A broker over any transport.
    pub fn on(uri: AmqpUri, transport: Box<dyn Transport>) -> Broker {
        Broker {
            uri,
            transport,
            detached: Default::default(),
        }
    }

    /// The transport underneath.
    pub fn transport(&self) -> &dyn Transport {
        self.transport.as_ref()
    }

    /// Changes each time the connection is lost (the transport then reconnects by itself).
    pub fn losses(&self) -> tokio::sync::watch::Receiver<u64> {
        self.transport.losses()
    }

    /// The URI, with its password hidden when displayed.
    pub fn uri(&self) -> &AmqpUri {
        &self.uri
    }

    pub fn is_connected(&self) -> bool {
        self.transport.is_connected()
    }

    /// How many entry points on this connection are waiting to re-attach their consumer
    /// (after a lost connection or a deleted queue): ready means connected and none.
    pub fn detached(&self) -> usize {
        self.detached.load(std::sync::atomic::Ordering::Acquire)
    }

    /// An entry point lost its consumer (`attached = false`) or has it again (`true`).
    pub(crate) fn mark_attached(&self, attached: bool) {
        use std::sync::atomic::Ordering;
        if attached {
            let _ = self
                .detached
                .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| n.checked_sub(1));
        } else {
            self.detached.fetch_add(1, Ordering::AcqRel);
        }
    }

    /// Declares topology; an exchange once per process, and one that exists with other
    /// settings is used as it is, with a warning.
    pub async fn declare(&self, topology: &[Declaration]) -> Result<()> {
        self.transport.declare(topology).await
    }

    /// Declares one exchange (see [`Broker::declare`]).
    pub async fn declare_exchange(
        &self,
        exchange: &str,
        kind: ExchangeKind,
        durable: bool,
        auto_delete: bool,
    ) -> Result<()> {
        self.declare(&[Declaration::Exchange {
            name: exchange.to_string(),
            kind,
            durable,
            auto_delete,
        }])
        .await
    }

    /// Whether `exchange` exists.
    pub async fn exchange_exists(&self, exchange: &str) -> Result<bool> {
        self.transport.exchange_exists(exchange).await
    }

    /// Publishes and waits for the broker's confirm. With `mandatory`, a message no queue
    /// receives is an [`crate::Error::Unroutable`]; a broker nack is an [`crate::Error::Nacked`].
    pub async fn publish(
        &self,
        exchange: &str,
        routing_key: &str,
        body: &[u8],
        properties: Properties,
        mandatory: bool,
    ) -> Result<()> {
        self.publish_pending(exchange, routing_key, body, properties, mandatory)
            .await?
            .await
    }

    /// Publishes without waiting for the confirm, so several can be in flight; await the
    /// returned [`Confirm`].
    pub async fn publish_pending(
        &self,
        exchange: &str,
        routing_key: &str,
        body: &[u8],
        properties: Properties,
        mandatory: bool,
    ) -> Result<Confirm> {
        self.transport
            .publish(Outgoing {
                exchange,
                routing_key,
                body,
                properties,
                mandatory,
            })
            .await
    }

    /// Consumes a queue (declaring its topology first).
    pub async fn subscribe(&self, subscribe: Subscribe) -> Result<Box<dyn Subscription>> {
        self.transport.subscribe(subscribe).await
    }

    /// A private queue of this process (exclusive, deleted with the connection), optionally
    /// bound, and consumed without acks: for replies and notices that mean nothing once the
    /// process is gone. Named by the caller, so it is declared again as it was after a
    /// reconnection.
    pub async fn private_queue(
        &self,
        label: String,
        queue: &str,
        bind: Option<(&str, &str)>,
    ) -> Result<Box<dyn Subscription>> {
        let mut topology = vec![Declaration::Queue {
            name: queue.to_string(),
            options: QueueOptions {
                exclusive: true,
                auto_delete: true,
                ..Default::default()
            },
        }];
        if let Some((exchange, routing_key)) = bind {
            topology.push(Declaration::Bind {
                queue: queue.to_string(),
                exchange: exchange.to_string(),
                routing_key: routing_key.to_string(),
            });
        }
        self.subscribe(Subscribe {
            label,
            queue: queue.to_string(),
            prefetch: 0,
            no_ack: true,
            topology,
        })
        .await
    }

    /// Messages ready in `queue`; `None` when it does not exist.
    pub async fn message_count(&self, queue: &str) -> Result<Option<usize>> {
        self.transport.message_count(queue).await
    }

    /// Up to `limit` messages of `queue`, oldest first, left in place.
    pub async fn peek(&self, queue: &str, limit: usize) -> Result<Vec<Message>> {
        self.transport.peek(queue, limit).await
    }

    /// Moves up to `limit` messages from queue `from` into queue `to`, transactionally.
    pub async fn move_messages(
        &self,
        from: &str,
        to: &str,
        limit: usize,
        rewrite: &(dyn Fn(&Properties) -> Properties + Send + Sync),
    ) -> Result<Moved> {
        self.transport.move_messages(from, to, limit, rewrite).await
    }

    /// Closes the connections; unacked deliveries go back to their queues.
    pub async fn close(&self) {
        self.transport.close().await
    }
}
