//! The connection to RabbitMQ: one connection for consuming and one for publishing per
//! process (per broker URI), a confirm-mode channel shared by every publisher, topology
//! declaration, and confirmed publishing where a nack or a returned message is an error.

use crate::config::{AmqpUri, ExchangeKind, ServiceConfig};
use crate::{Error, Result};
use lapin::options::{
    BasicPublishOptions, BasicQosOptions, ConfirmSelectOptions, ExchangeDeclareOptions,
    QueueBindOptions, QueueDeclareOptions,
};
use lapin::types::FieldTable;
use lapin::PublisherConfirm;
use lapin::{BasicProperties, Channel, Confirmation, Connection, ConnectionProperties};
use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// How long the first connection to a broker may take.
pub const CONNECT_WAIT: Duration = Duration::from_secs(15);

/// How long a publish waits for a lost connection to come back before it fails.
pub const PUBLISH_WAIT: Duration = Duration::from_secs(30);

/// How a queue is declared.
#[derive(Clone, Debug, Default)]
pub struct QueueOptions {
    pub durable: bool,
    pub exclusive: bool,
    pub auto_delete: bool,
    pub arguments: FieldTable,
}

/// Both connections to one broker, and the publishing channel.
pub struct Broker {
    uri: AmqpUri,
    consume: Connection,
    publish: Connection,
    publish_channel: Channel,
    /// Bumped each time the consuming connection is lost: waiting RPC calls fail at once.
    losses: tokio::sync::watch::Receiver<u64>,
    /// Exchanges already declared by this process, so each is declared once.
    declared: Mutex<HashSet<String>>,
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
        let ca = match settings.raw("amqp_ca_file").filter(|path| !path.is_empty()) {
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

    /// Opens the two connections. `heartbeat` is in seconds (0 disables).
    pub async fn connect(uri: &AmqpUri, heartbeat: u16) -> Result<Broker> {
        Broker::connect_tls(uri, heartbeat, None).await
    }

    /// [`Broker::connect`], trusting the PEM certificates `ca` for `amqps://` as well.
    pub async fn connect_tls(uri: &AmqpUri, heartbeat: u16, ca: Option<String>) -> Result<Broker> {
        let mut parsed: lapin::uri::AMQPUri = uri.expose().parse().map_err(|message: String| {
            Error::Runtime(format!("amqp_uri {uri} is not a valid AMQP URI: {message}"))
        })?;
        parsed.query.heartbeat = Some(heartbeat);
        // Without a frame size, lapin grows each connection's buffers to 4 MiB and touches
        // every page: 16 MiB of resident memory for an idle service. 32 KiB frames keep it small.
        if parsed.query.frame_max.is_none() {
            parsed.query.frame_max = Some(32_768);
        }
        if parsed.query.connection_timeout.is_none() {
            parsed.query.connection_timeout = Some(10_000);
        }
        let name = std::env::current_exe()
            .ok()
            .and_then(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
            .unwrap_or_else(|| "farine".into());
        let open = |role: &str, recover: bool| {
            let mut properties = ConnectionProperties::default()
                .with_connection_name(format!("{name} ({role}, farine)").into());
            if recover {
                // lapin reconnects by itself and replays channels, queues, bindings,
                // consumers, QoS and confirms; entry points wait for that with
                // `wait_for_recovery`.
                properties = properties
                    .enable_auto_recover()
                    .configure_backoff(|backoff| {
                        backoff
                            .with_min_delay(Duration::from_millis(200))
                            .with_max_delay(Duration::from_secs(5))
                            .with_jitter()
                            .without_max_times()
                    });
            }
            let tls = lapin::tcp::OwnedTLSConfig {
                identity: None,
                cert_chain: ca.clone(),
            };
            async {
                let runtime = lapin::runtime::default_runtime()?;
                Connection::connect_uri_with_config(parsed.clone(), properties, tls, runtime).await
            }
        };
        let unreachable = |reason: String| {
            Error::Runtime(format!(
                "cannot connect to the broker at {uri}: {reason} (is RabbitMQ running and \
                 reachable at that address? for amqps://, is its certificate trusted? see \
                 amqp_ca_file)"
            ))
        };
        let wait = humantime::format_duration(CONNECT_WAIT);
        // With recovery on, lapin retries even the first connection, without end, in an IO
        // thread nothing can stop: that thread outlived a failed start and panicked when the
        // runtime shut down. So first one attempt without recovery (or retries), whose error
        // is final: a refused connection, a bad certificate or bad credentials fail at once.
        match tokio::time::timeout(CONNECT_WAIT, open("probe", false)).await {
            Ok(Ok(probe)) => {
                let _ = probe.close(200, "OK".into()).await;
            }
            Ok(Err(err)) => return Err(unreachable(err.to_string())),
            Err(_) => return Err(unreachable(format!("no answer within {wait}"))),
        }
        // The broker answered: only now the connections that recover, still bounded.
        let (unreachable, wait) = (&unreachable, &wait);
        let connect = |role: &'static str| {
            let attempt = open(role, true);
            async move {
                match tokio::time::timeout(CONNECT_WAIT, attempt).await {
                    Ok(connected) => connected.map_err(Error::amqp(format!("connecting to {uri}"))),
                    Err(_) => Err(unreachable(format!("no connection within {wait}"))),
                }
            }
        };
        let consume = connect("consume").await?;
        let losses = watch_losses(&consume, uri);
        let publish = connect("publish").await?;
        let publish_channel = publish
            .create_channel()
            .await
            .map_err(Error::amqp("opening the publishing channel"))?;
        publish_channel
            .confirm_select(ConfirmSelectOptions::default())
            .await
            .map_err(Error::amqp("enabling publisher confirms"))?;
        Ok(Broker {
            uri: uri.clone(),
            consume,
            publish,
            publish_channel,
            losses,
            declared: Mutex::new(HashSet::new()),
        })
    }

    /// Changes each time the connection is lost (lapin then reconnects by itself).
    pub fn losses(&self) -> tokio::sync::watch::Receiver<u64> {
        self.losses.clone()
    }

    /// The URI, with its password hidden when displayed.
    pub fn uri(&self) -> &AmqpUri {
        &self.uri
    }

    pub fn is_connected(&self) -> bool {
        self.consume.status().connected()
            && self.publish.status().connected()
            && self.publish_channel.status().connected()
    }

    /// A new channel on the consuming connection with `prefetch` unacked deliveries at most.
    pub async fn consume_channel(&self, prefetch: u16) -> Result<Channel> {
        let channel = self
            .consume
            .create_channel()
            .await
            .map_err(Error::amqp("opening a consuming channel"))?;
        channel
            .basic_qos(prefetch, BasicQosOptions::default())
            .await
            .map_err(Error::amqp(format!("setting prefetch {prefetch}")))?;
        Ok(channel)
    }

    /// A private queue of this process (exclusive, deleted with the connection), optionally
    /// bound, and consumed without acks: for replies and notices that mean nothing once the
    /// process is gone. Named by the caller, so lapin's recovery declares the same queue again.
    pub async fn private_queue(
        &self,
        queue: &str,
        bind: Option<(&str, &str)>,
    ) -> Result<(Channel, lapin::Consumer)> {
        let channel = self.consume_channel(0).await?;
        let options = QueueOptions {
            exclusive: true,
            auto_delete: true,
            ..Default::default()
        };
        Broker::declare_queue(&channel, queue, &options, bind).await?;
        let consumer = channel
            .basic_consume(
                queue.into(),
                "".into(),
                lapin::options::BasicConsumeOptions {
                    no_ack: true,
                    ..Default::default()
                },
                FieldTable::default(),
            )
            .await
            .map_err(Error::amqp(format!("consuming queue {queue:?}")))?;
        Ok((channel, consumer))
    }

    /// A short-lived channel for declarations whose failure (for example an exchange that
    /// exists with another type) must not close a channel that carries traffic. On the
    /// consuming connection, which owns the exclusive queues it may bind.
    pub async fn scratch_channel(&self) -> Result<Channel> {
        self.consume
            .create_channel()
            .await
            .map_err(Error::amqp("opening a declaration channel"))
    }

    /// Declares `exchange` once per process. An exchange that already exists with other
    /// settings is used as it is, with a warning: publishing to it still works.
    pub async fn declare_exchange(
        &self,
        exchange: &str,
        kind: ExchangeKind,
        durable: bool,
        auto_delete: bool,
    ) -> Result<()> {
        if exchange.is_empty() || self.is_declared(exchange) {
            return Ok(());
        }
        let channel = self.scratch_channel().await?;
        let options = ExchangeDeclareOptions {
            durable,
            auto_delete,
            ..Default::default()
        };
        let result = channel
            .exchange_declare(exchange.into(), kind.into(), options, FieldTable::default())
            .await;
        match result {
            Ok(()) => {
                let _ = channel.close(200, "OK".into()).await;
            }
            Err(err) if is_precondition_failed(&err) => {
                tracing::warn!(
                    exchange,
                    kind = kind.as_str(),
                    durable,
                    "exchange exists with other settings; using it as it is: {err}"
                );
            }
            Err(err) => {
                return Err(Error::Amqp {
                    context: format!("declaring exchange {exchange:?} ({})", kind.as_str()),
                    source: err,
                })
            }
        }
        self.declared
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .insert(exchange.to_string());
        Ok(())
    }

    fn is_declared(&self, exchange: &str) -> bool {
        self.declared
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .contains(exchange)
    }

    /// Declares `queue` on `channel` (and binds it to `exchange` with `routing_key` when an
    /// exchange is given).
    pub async fn declare_queue(
        channel: &Channel,
        queue: &str,
        options: &QueueOptions,
        bind: Option<(&str, &str)>,
    ) -> Result<()> {
        let declare = QueueDeclareOptions {
            durable: options.durable,
            exclusive: options.exclusive,
            auto_delete: options.auto_delete,
            ..Default::default()
        };
        channel
            .queue_declare(queue.into(), declare, options.arguments.clone())
            .await
            .map_err(Error::amqp(format!("declaring queue {queue:?}")))?;
        if let Some((exchange, routing_key)) = bind {
            channel
                .queue_bind(
                    queue.into(),
                    exchange.into(),
                    routing_key.into(),
                    QueueBindOptions::default(),
                    FieldTable::default(),
                )
                .await
                .map_err(Error::amqp(format!(
                    "binding queue {queue:?} to exchange {exchange:?} with routing key {routing_key:?}"
                )))?;
        }
        Ok(())
    }

    /// Publishes and waits for the broker's confirm. With `mandatory`, a message no queue
    /// receives is an [`Error::Unroutable`]; a broker nack is an [`Error::Nacked`].
    pub async fn publish(
        &self,
        exchange: &str,
        routing_key: &str,
        body: &[u8],
        properties: BasicProperties,
        mandatory: bool,
    ) -> Result<()> {
        let confirm = self
            .publish_pending(exchange, routing_key, body, properties, mandatory)
            .await?;
        self.settle(exchange, routing_key, confirm).await
    }

    /// Publishes without waiting for the confirm, so several can be in flight; pass the
    /// returned confirm to [`Broker::settle`].
    pub async fn publish_pending(
        &self,
        exchange: &str,
        routing_key: &str,
        body: &[u8],
        properties: BasicProperties,
        mandatory: bool,
    ) -> Result<PublisherConfirm> {
        let deadline = tokio::time::Instant::now() + PUBLISH_WAIT;
        loop {
            let published = self
                .publish_channel
                .basic_publish(
                    exchange.into(),
                    routing_key.into(),
                    BasicPublishOptions {
                        mandatory,
                        ..Default::default()
                    },
                    body,
                    properties.clone(),
                )
                .await;
            let err = match published {
                Ok(confirm) => return Ok(confirm),
                Err(err) => err,
            };
            // The connection is down: wait for lapin to bring it back, within a bound.
            let recovered = tokio::time::timeout_at(
                deadline,
                self.publish_channel.wait_for_recovery(err.clone()),
            )
            .await;
            match recovered {
                Ok(Ok(())) => continue,
                Ok(Err(source)) => {
                    return Err(Error::Amqp {
                        context: publishing(exchange, routing_key),
                        source,
                    })
                }
                Err(_) => {
                    return Err(Error::Runtime(format!(
                        "{}: the broker {} is unreachable; gave up after waiting {} for the connection ({err})",
                        publishing(exchange, routing_key),
                        self.uri,
                        humantime::format_duration(PUBLISH_WAIT)
                    )))
                }
            }
        }
    }

    /// Waits for a publish's confirm: a nack or a returned (unroutable) message is an error.
    pub async fn settle(
        &self,
        exchange: &str,
        routing_key: &str,
        confirm: PublisherConfirm,
    ) -> Result<()> {
        let confirmation = confirm.await.map_err(|source| Error::Amqp {
            context: publishing(exchange, routing_key),
            source,
        })?;
        match confirmation {
            Confirmation::Ack(None) | Confirmation::NotRequested => Ok(()),
            Confirmation::Ack(Some(_)) => Err(Error::Unroutable {
                exchange: exchange.into(),
                routing_key: routing_key.into(),
            }),
            Confirmation::Nack(_) => Err(Error::Nacked {
                exchange: exchange.into(),
                routing_key: routing_key.into(),
            }),
        }
    }

    /// Closes both connections; unacked deliveries go back to their queues.
    pub async fn close(&self) {
        let _ = self.publish_channel.close(200, "OK".into()).await;
        let _ = self.consume.close(200, "farine shutdown".into()).await;
        let _ = self.publish.close(200, "farine shutdown".into()).await;
    }
}

/// Watches the connection's state and counts its losses, logging them and the reconnections.
/// (Polled: lapin reports a connection forced closed by the broker on no event stream.)
fn watch_losses(connection: &Connection, uri: &AmqpUri) -> tokio::sync::watch::Receiver<u64> {
    let (sender, receiver) = tokio::sync::watch::channel(0u64);
    let status = connection.status().clone();
    let uri = uri.clone();
    tokio::spawn(async move {
        let mut was_up = true;
        loop {
            tokio::time::sleep(Duration::from_millis(100)).await;
            if sender.is_closed() {
                return;
            }
            let up = status.connected();
            if was_up && !up {
                tracing::warn!(broker = %uri, "connection lost, reconnecting");
                sender.send_modify(|losses| *losses += 1);
            } else if !was_up && up {
                tracing::info!(broker = %uri, "reconnected");
            }
            was_up = up;
        }
    });
    receiver
}

fn publishing(exchange: &str, routing_key: &str) -> String {
    format!("publishing to exchange {exchange:?} with routing key {routing_key:?}")
}

fn is_precondition_failed(err: &lapin::Error) -> bool {
    err.to_string().contains("PRECONDITION_FAILED")
}

impl From<ExchangeKind> for lapin::ExchangeKind {
    fn from(kind: ExchangeKind) -> Self {
        match kind {
            ExchangeKind::Direct => lapin::ExchangeKind::Direct,
            ExchangeKind::Topic => lapin::ExchangeKind::Topic,
            ExchangeKind::Fanout => lapin::ExchangeKind::Fanout,
            ExchangeKind::Headers => lapin::ExchangeKind::Headers,
        }
    }
}
