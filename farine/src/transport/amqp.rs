//! The transport on RabbitMQ, with lapin: one connection for consuming and one for
//! publishing per broker, a confirm-mode channel shared by every publisher, a channel per
//! subscription (its prefetch bounds the work in flight), and lapin's recovery, which
//! reconnects and replays channels, queues, bindings and consumers.

use super::{
    Binder, Confirm, Declaration, Delivery, HeaderValue, Headers, Message, Moved, Next, Outgoing,
    Properties, QueueOptions, Settle, Subscribe, Subscription, Transport, DIRECT_REPLY_TO,
};
use crate::config::{AmqpUri, ExchangeKind};
use crate::{Error, Result};
use futures::future::BoxFuture;
use futures::{FutureExt, StreamExt};
use lapin::options::{
    BasicAckOptions, BasicCancelOptions, BasicConsumeOptions, BasicGetOptions, BasicNackOptions,
    BasicPublishOptions, BasicQosOptions, ConfirmSelectOptions, ExchangeDeclareOptions,
    QueueBindOptions, QueueDeclareOptions,
};
use lapin::types::{AMQPValue, FieldArray, FieldTable, LongString, ShortString};
use lapin::{BasicProperties, Channel, Confirmation, Connection, ConnectionProperties};
use std::collections::HashSet;
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::Duration;

/// How long the first connection to a broker may take.
pub const CONNECT_WAIT: Duration = Duration::from_secs(15);

/// How long a publish waits for a lost connection to come back before it fails.
pub const PUBLISH_WAIT: Duration = Duration::from_secs(30);

/// Messages moved per transaction by [`Transport::move_messages`].
const MOVE_BATCH: usize = 100;

/// The transport on one RabbitMQ.
pub struct Amqp(Arc<Inner>);

impl std::ops::Deref for Amqp {
    type Target = Inner;
    fn deref(&self) -> &Inner {
        &self.0
    }
}

/// Both connections to one RabbitMQ, and the publishing channel; shared with subscriptions,
/// which declare through it again when they re-attach.
pub struct Inner {
    uri: AmqpUri,
    consume: Connection,
    publish: Connection,
    /// Replaced when the broker closes it over a channel error (see `reopen_publish_channel`).
    publish_channel: RwLock<Channel>,
    losses: tokio::sync::watch::Receiver<u64>,
    /// Exchanges already declared by this process, so each is declared once.
    declared: Mutex<HashSet<String>>,
    /// The channel consuming [`DIRECT_REPLY_TO`], if one does: RabbitMQ delivers replies to
    /// a request only when it was published on the channel of that consumer.
    direct_reply: Mutex<Option<Channel>>,
}

impl Amqp {
    /// Connects to `uri`: first one attempt without recovery, whose error is final (a refused
    /// connection, a bad certificate or bad credentials fail at once), then the two
    /// connections that recover. `heartbeat` is in seconds (0 disables); `ca` is PEM
    /// certificates trusted for `amqps://` on top of the system's.
    pub async fn connect(uri: &AmqpUri, heartbeat: u16, ca: Option<String>) -> Result<Amqp> {
        let parsed = parse_uri(uri, heartbeat, 10_000)?;
        let name = process_name();
        let open = |role: &str, recover: bool| {
            let mut properties = ConnectionProperties::default()
                .with_connection_name(format!("{name} ({role}, farine)").into());
            if recover {
                // lapin reconnects by itself and replays channels, queues, bindings,
                // consumers, QoS and confirms; subscriptions wait for that in `recover`.
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
        // runtime shut down. So first one attempt without recovery (or retries).
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
        let publish_channel = open_publish_channel(&publish).await?;
        Ok(Amqp(Arc::new(Inner {
            uri: uri.clone(),
            consume,
            publish,
            publish_channel: RwLock::new(publish_channel),
            losses,
            declared: Mutex::new(HashSet::new()),
            direct_reply: Mutex::new(None),
        })))
    }
}

/// `uri` as lapin takes it, with farine's connection settings: `heartbeat` in seconds, 32 KiB
/// frames, and `timeout_ms` for the TCP connection unless the URI sets one.
fn parse_uri(uri: &AmqpUri, heartbeat: u16, timeout_ms: u64) -> Result<lapin::uri::AMQPUri> {
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
        parsed.query.connection_timeout = Some(timeout_ms);
    }
    Ok(parsed)
}

/// The executable's name, which names its connections in the broker's management UI.
fn process_name() -> String {
    std::env::current_exe()
        .ok()
        .and_then(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
        .unwrap_or_else(|| "farine".into())
}

/// A channel in confirm mode on the publishing connection.
async fn open_publish_channel(publish: &Connection) -> Result<Channel> {
    let channel = publish
        .create_channel()
        .await
        .map_err(Error::amqp("opening the publishing channel"))?;
    channel
        .confirm_select(ConfirmSelectOptions::default())
        .await
        .map_err(Error::amqp("enabling publisher confirms"))?;
    Ok(channel)
}

impl Inner {
    /// The publishing channel (a handle to it).
    fn publish_channel(&self) -> Channel {
        self.publish_channel
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Whether `channel` was closed by the broker over a channel error (a publish to an
    /// exchange that does not exist: `NOT_FOUND`) while its connection stays up. lapin
    /// recovers channels only with their connection, so such a channel stays closed.
    fn closed_by_channel_error(&self, channel: &Channel) -> bool {
        let status = channel.status();
        !status.connected() && !status.reconnecting() && self.publish.status().connected()
    }

    /// Opens a publishing channel in place of one the broker closed (unless another
    /// publisher did already), so one bad publish does not stop every later one.
    async fn reopen_publish_channel(&self) -> Result<()> {
        let fresh = open_publish_channel(&self.publish).await?;
        let unused = {
            let mut current = self
                .publish_channel
                .write()
                .unwrap_or_else(PoisonError::into_inner);
            if self.closed_by_channel_error(&current) {
                tracing::info!(broker = %self.uri, "publishing channel closed by the broker: opened another");
                *current = fresh;
                None
            } else {
                Some(fresh)
            }
        };
        if let Some(unused) = unused {
            let _ = unused.close(200, "OK".into()).await;
        }
        Ok(())
    }

    fn direct_reply_slot(&self) -> std::sync::MutexGuard<'_, Option<Channel>> {
        self.direct_reply
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// The channel to publish a request that asks for a direct reply-to answer on.
    fn direct_reply_channel(&self) -> Result<Channel> {
        self.direct_reply_slot().clone().ok_or_else(|| {
            Error::Runtime(format!(
                "publishing with reply_to {DIRECT_REPLY_TO}: nothing consumes it on this connection (subscribe to {DIRECT_REPLY_TO} with no_ack first)"
            ))
        })
    }

    /// A short-lived channel for declarations whose failure (an exchange that exists with
    /// another type, a passive check of a missing queue) must not close a channel that
    /// carries traffic. On the consuming connection, which owns the exclusive queues.
    async fn scratch_channel(&self) -> Result<Channel> {
        self.consume
            .create_channel()
            .await
            .map_err(Error::amqp("opening a declaration channel"))
    }

    async fn declare_exchange(
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
            Err(err) if err.to_string().contains("PRECONDITION_FAILED") => {
                tracing::warn!(
                    exchange,
                    kind = kind.as_str(),
                    durable,
                    "exchange exists with other settings; using it as it is: {err}"
                );
            }
            Err(err) => {
                return Err(Error::amqp(format!(
                    "declaring exchange {exchange:?} ({})",
                    kind.as_str()
                ))(err))
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

    /// Declares `topology` on `channel` (exchanges on their own channel, once).
    async fn declare_on(&self, channel: &Channel, topology: &[Declaration]) -> Result<()> {
        for declaration in topology {
            match declaration {
                Declaration::Exchange {
                    name,
                    kind,
                    durable,
                    auto_delete,
                } => {
                    self.declare_exchange(name, *kind, *durable, *auto_delete)
                        .await?
                }
                Declaration::Queue { name, options } => {
                    channel
                        .queue_declare(
                            name.as_str().into(),
                            QueueDeclareOptions {
                                durable: options.durable,
                                exclusive: options.exclusive,
                                auto_delete: options.auto_delete,
                                ..Default::default()
                            },
                            queue_arguments(options),
                        )
                        .await
                        .map_err(Error::amqp(format!("declaring queue {name:?}")))?;
                }
                Declaration::Bind {
                    queue,
                    exchange,
                    routing_key,
                } => bind(channel, queue, exchange, routing_key).await?,
            }
        }
        Ok(())
    }

    /// Waits for a publish's confirm: a nack or a returned (unroutable) message is an error.
    async fn settle(
        exchange: String,
        routing_key: String,
        confirm: lapin::PublisherConfirm,
    ) -> Result<()> {
        let confirmation = confirm
            .await
            .map_err(Error::amqp(publishing(&exchange, &routing_key)))?;
        match confirmation {
            Confirmation::Ack(None) | Confirmation::NotRequested => Ok(()),
            Confirmation::Ack(Some(_)) => Err(Error::Unroutable {
                exchange,
                routing_key,
            }),
            Confirmation::Nack(_) => Err(Error::Nacked {
                exchange,
                routing_key,
            }),
        }
    }
}

impl std::fmt::Debug for Amqp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Amqp").field("uri", &self.uri).finish()
    }
}

impl Transport for Amqp {
    fn describe(&self) -> String {
        self.uri.to_string()
    }

    fn is_connected(&self) -> bool {
        self.consume.status().connected()
            && self.publish.status().connected()
            // A channel the broker closed over a channel error is replaced at the next publish.
            && (self.publish_channel().status().connected()
                || self.closed_by_channel_error(&self.publish_channel()))
    }

    fn losses(&self) -> tokio::sync::watch::Receiver<u64> {
        self.losses.clone()
    }

    fn declare<'a>(&'a self, topology: &'a [Declaration]) -> BoxFuture<'a, Result<()>> {
        async move {
            let needs_channel = topology
                .iter()
                .any(|d| !matches!(d, Declaration::Exchange { .. }));
            if !needs_channel {
                return self.declare_on(&self.publish_channel(), topology).await;
            }
            let channel = self.scratch_channel().await?;
            let declared = self.declare_on(&channel, topology).await;
            let _ = channel.close(200, "OK".into()).await;
            declared
        }
        .boxed()
    }

    fn exchange_exists<'a>(&'a self, exchange: &'a str) -> BoxFuture<'a, Result<bool>> {
        async move {
            // A passive check of a missing exchange closes its channel: a channel of its own.
            let channel = self.scratch_channel().await?;
            let exists = channel
                .exchange_declare(
                    exchange.into(),
                    lapin::ExchangeKind::Direct,
                    ExchangeDeclareOptions {
                        passive: true,
                        ..Default::default()
                    },
                    FieldTable::default(),
                )
                .await
                .is_ok();
            if exists {
                let _ = channel.close(200, "OK".into()).await;
            }
            Ok(exists)
        }
        .boxed()
    }

    fn publish<'a>(&'a self, message: Outgoing<'a>) -> BoxFuture<'a, Result<Confirm>> {
        async move {
            let properties = to_lapin(&message.properties);
            // A request asking for a direct reply goes on the channel consuming the replies.
            let direct = match message.properties.reply_to.as_deref() == Some(DIRECT_REPLY_TO) {
                true => Some(self.direct_reply_channel()?),
                false => None,
            };
            let deadline = tokio::time::Instant::now() + PUBLISH_WAIT;
            loop {
                let channel = match &direct {
                    Some(direct) => direct.clone(),
                    None => self.publish_channel(),
                };
                let published = channel
                    .basic_publish(
                        message.exchange.into(),
                        message.routing_key.into(),
                        BasicPublishOptions {
                            mandatory: message.mandatory,
                            ..Default::default()
                        },
                        message.body,
                        properties.clone(),
                    )
                    .await;
                let err = match published {
                    Ok(confirm) => {
                        let (exchange, routing_key) =
                            (message.exchange.to_string(), message.routing_key.to_string());
                        return Ok(Inner::settle(exchange, routing_key, confirm).boxed());
                    }
                    Err(err) => err,
                };
                if direct.is_none()
                    && self.closed_by_channel_error(&channel)
                    && tokio::time::Instant::now() < deadline
                {
                    self.reopen_publish_channel().await?;
                    continue;
                }
                // The connection is down: wait for lapin to bring it back, within a bound.
                let recovered =
                    tokio::time::timeout_at(deadline, channel.wait_for_recovery(err.clone()))
                .await;
                match recovered {
                    Ok(Ok(())) => continue,
                    Ok(Err(source)) => {
                        return Err(Error::amqp(publishing(
                            message.exchange,
                            message.routing_key,
                        ))(source))
                    }
                    Err(_) => {
                        return Err(Error::Runtime(format!(
                            "{}: the broker {} is unreachable; gave up after waiting {} for the connection ({err})",
                            publishing(message.exchange, message.routing_key),
                            self.uri,
                            humantime::format_duration(PUBLISH_WAIT)
                        )))
                    }
                }
            }
        }
        .boxed()
    }

    fn subscribe(&self, subscribe: Subscribe) -> BoxFuture<'_, Result<Box<dyn Subscription>>> {
        async move {
            let channel = self
                .consume
                .create_channel()
                .await
                .map_err(Error::amqp("opening a consuming channel"))?;
            if !subscribe.no_ack {
                channel
                    .basic_qos(subscribe.prefetch, BasicQosOptions::default())
                    .await
                    .map_err(Error::amqp(format!(
                        "setting prefetch {}",
                        subscribe.prefetch
                    )))?;
            }
            // On the subscription's own channel, so lapin's recovery declares them again.
            self.declare_on(&channel, &subscribe.topology).await?;
            let tag = format!(
                "farine.{}.{}",
                subscribe.label,
                uuid::Uuid::new_v4().simple()
            );
            let consumer = consume(&channel, &subscribe, &tag).await?;
            if subscribe.queue == DIRECT_REPLY_TO {
                *self.direct_reply_slot() = Some(channel.clone());
            }
            let subscription: Box<dyn Subscription> = Box::new(AmqpSubscription {
                transport: self.0.clone(),
                channel,
                consumer,
                tag,
                subscribe,
                lost: None,
            });
            Ok(subscription)
        }
        .boxed()
    }

    fn message_count<'a>(&'a self, queue: &'a str) -> BoxFuture<'a, Result<Option<usize>>> {
        async move {
            // A passive declare of a missing queue closes its channel: a channel of its own.
            let channel = self.scratch_channel().await?;
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
        .boxed()
    }

    fn peek<'a>(&'a self, queue: &'a str, limit: usize) -> BoxFuture<'a, Result<Vec<Message>>> {
        async move {
            // Unacked gets on a channel of their own: closing it puts every message back.
            let channel = self.scratch_channel().await?;
            let mut messages = Vec::new();
            while messages.len() < limit {
                let got = channel
                    .basic_get(queue.into(), BasicGetOptions { no_ack: false })
                    .await
                    .map_err(Error::amqp(format!("reading queue {queue:?}")))?;
                let Some(got) = got else { break };
                messages.push(message_of(&got.delivery));
            }
            let _ = channel.close(200, "OK".into()).await;
            Ok(messages)
        }
        .boxed()
    }

    fn move_messages<'a>(
        &'a self,
        from: &'a str,
        to: &'a str,
        limit: usize,
        rewrite: &'a (dyn Fn(&Properties) -> Properties + Send + Sync),
    ) -> BoxFuture<'a, Result<Moved>> {
        async move {
            // Gets, publishes and acks of a batch are one AMQP transaction.
            let channel = self.scratch_channel().await?;
            channel
                .tx_select()
                .await
                .map_err(Error::amqp("starting a transaction"))?;
            let mut moved = 0;
            while moved < limit {
                let mut in_batch = 0;
                while in_batch < MOVE_BATCH && moved + in_batch < limit {
                    let got = channel
                        .basic_get(from.into(), BasicGetOptions { no_ack: false })
                        .await
                        .map_err(Error::amqp(format!("reading queue {from:?}")))?;
                    let Some(got) = got else { break };
                    let delivery = &got.delivery;
                    let properties = rewrite(&properties_of(&delivery.properties));
                    channel
                        .basic_publish(
                            "".into(),
                            to.into(),
                            BasicPublishOptions {
                                mandatory: true,
                                ..Default::default()
                            },
                            &delivery.data,
                            to_lapin(&properties),
                        )
                        .await
                        .map_err(Error::amqp(format!("moving a message into queue {to:?}")))?;
                    delivery
                        .ack(BasicAckOptions::default())
                        .await
                        .map_err(Error::amqp(format!("removing a moved message from {from:?}")))?;
                    in_batch += 1;
                }
                if in_batch == 0 {
                    break;
                }
                channel
                    .tx_commit()
                    .await
                    .map_err(Error::amqp(format!("committing a move from {from:?}")))?;
                // Returns arrive before the commit's answer; a returned message was acked in
                // the same transaction, so put it back before anything else.
                let returned = channel
                    .wait_for_confirms()
                    .await
                    .map_err(Error::amqp(format!("moving messages into queue {to:?}")))?;
                if !returned.is_empty() {
                    for message in &returned {
                        let confirm = self
                            .publish(Outgoing {
                                exchange: "",
                                routing_key: from,
                                body: &message.delivery.data,
                                properties: properties_of(&message.delivery.properties),
                                mandatory: true,
                            })
                            .await?;
                        confirm.await?;
                    }
                    let _ = channel.close(200, "OK".into()).await;
                    return Err(Error::Runtime(format!(
                        "queue {to:?} refused {} moved message(s) (was it deleted?): they are back in {from:?}",
                        returned.len()
                    )));
                }
                moved += in_batch;
            }
            let _ = channel.close(200, "OK".into()).await;
            Ok(Moved { moved })
        }
        .boxed()
    }

    fn close(&self) -> BoxFuture<'_, ()> {
        async move {
            let _ = self.publish_channel().close(200, "OK".into()).await;
            let _ = self.consume.close(200, "farine shutdown".into()).await;
            let _ = self.publish.close(200, "farine shutdown".into()).await;
        }
        .boxed()
    }
}

struct AmqpSubscription {
    transport: Arc<Inner>,
    channel: Channel,
    consumer: lapin::Consumer,
    tag: String,
    subscribe: Subscribe,
    /// Why the connection was lost, for `recover`.
    lost: Option<lapin::Error>,
}

impl Subscription for AmqpSubscription {
    fn next(&mut self) -> BoxFuture<'_, Next> {
        async move {
            match self.consumer.next().await {
                Some(Ok(delivery)) => {
                    let message = message_of(&delivery);
                    Next::Delivery(Delivery::new(
                        message,
                        Box::new(Acker(delivery.acker, self.subscribe.no_ack)),
                    ))
                }
                Some(Err(err)) => {
                    let text = err.to_string();
                    self.lost = Some(err);
                    Next::Lost(text)
                }
                None => Next::Cancelled,
            }
        }
        .boxed()
    }

    fn recover(&mut self) -> BoxFuture<'_, Result<()>> {
        async move {
            let Some(err) = self.lost.take() else {
                return Ok(());
            };
            self.channel
                .wait_for_recovery(err)
                .await
                .map_err(Error::amqp(format!(
                    "{}: the consumer of queue {:?} cannot recover",
                    self.subscribe.label, self.subscribe.queue
                )))
        }
        .boxed()
    }

    fn reattach(&mut self) -> BoxFuture<'_, Result<()>> {
        async move {
            if !self.channel.status().connected() {
                return Err(Error::Runtime(format!(
                    "{}: the channel of queue {:?} closed",
                    self.subscribe.label, self.subscribe.queue
                )));
            }
            let transport = &self.transport;
            {
                let mut declared = transport
                    .declared
                    .lock()
                    .unwrap_or_else(|poisoned| poisoned.into_inner());
                // Whoever deleted the queue may have deleted its exchange too.
                for declaration in &self.subscribe.topology {
                    if let Declaration::Exchange { name, .. } = declaration {
                        declared.remove(name);
                    }
                }
            }
            transport
                .declare_on(&self.channel, &self.subscribe.topology)
                .await?;
            self.consumer = consume(&self.channel, &self.subscribe, &self.tag).await?;
            Ok(())
        }
        .boxed()
    }

    fn binder(&self) -> Arc<dyn Binder> {
        Arc::new(AmqpBinder {
            channel: self.channel.clone(),
            queue: self.subscribe.queue.clone(),
        })
    }

    fn cancel(&mut self) -> BoxFuture<'_, ()> {
        async move {
            let _ = self
                .channel
                .basic_cancel(self.tag.as_str().into(), BasicCancelOptions::default())
                .await;
        }
        .boxed()
    }

    fn close(&mut self) -> BoxFuture<'_, ()> {
        async move {
            {
                let mut direct = self.transport.direct_reply_slot();
                if direct.as_ref().is_some_and(|c| c.id() == self.channel.id()) {
                    *direct = None;
                }
            }
            let _ = self.channel.close(200, "OK".into()).await;
        }
        .boxed()
    }
}

/// Binds on the subscription's channel, so lapin's recovery binds again after a reconnection.
struct AmqpBinder {
    channel: Channel,
    queue: String,
}

impl Binder for AmqpBinder {
    fn bind<'a>(&'a self, exchange: &'a str, routing_key: &'a str) -> BoxFuture<'a, Result<()>> {
        bind(&self.channel, &self.queue, exchange, routing_key).boxed()
    }
}

struct Acker(lapin::Acker, bool);

impl Settle for Acker {
    fn ack(&self) -> BoxFuture<'_, Result<()>> {
        async move {
            if self.1 {
                return Ok(());
            }
            self.0
                .ack(BasicAckOptions::default())
                .await
                .map(drop)
                .map_err(Error::amqp("acknowledging a delivery"))
        }
        .boxed()
    }

    fn nack(&self, requeue: bool) -> BoxFuture<'_, Result<()>> {
        async move {
            if self.1 {
                return Ok(());
            }
            self.0
                .nack(BasicNackOptions {
                    requeue,
                    ..Default::default()
                })
                .await
                .map(drop)
                .map_err(Error::amqp("returning a delivery"))
        }
        .boxed()
    }
}

async fn consume(channel: &Channel, subscribe: &Subscribe, tag: &str) -> Result<lapin::Consumer> {
    channel
        .basic_consume(
            subscribe.queue.as_str().into(),
            tag.into(),
            BasicConsumeOptions {
                no_ack: subscribe.no_ack,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .map_err(Error::amqp(format!(
            "{}: consuming queue {:?}",
            subscribe.label, subscribe.queue
        )))
}

async fn bind(channel: &Channel, queue: &str, exchange: &str, routing_key: &str) -> Result<()> {
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
        )))
}

fn queue_arguments(options: &QueueOptions) -> FieldTable {
    let mut arguments = FieldTable::default();
    if let Some(ttl) = options.message_ttl_ms {
        arguments.insert(
            "x-message-ttl".into(),
            AMQPValue::LongLongInt(i64::try_from(ttl).unwrap_or(i64::MAX)),
        );
    }
    if let Some(exchange) = &options.dead_letter_exchange {
        arguments.insert(
            "x-dead-letter-exchange".into(),
            AMQPValue::LongString(exchange.as_str().into()),
        );
    }
    if let Some(routing_key) = &options.dead_letter_routing_key {
        arguments.insert(
            "x-dead-letter-routing-key".into(),
            AMQPValue::LongString(routing_key.as_str().into()),
        );
    }
    arguments
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

fn message_of(delivery: &lapin::message::Delivery) -> Message {
    Message {
        body: delivery.data.clone(),
        exchange: delivery.exchange.as_str().to_string(),
        routing_key: delivery.routing_key.as_str().to_string(),
        redelivered: delivery.redelivered,
        properties: properties_of(&delivery.properties),
    }
}

fn text(value: &Option<ShortString>) -> Option<String> {
    value.as_ref().map(|s| s.as_str().to_string())
}

fn properties_of(properties: &BasicProperties) -> Properties {
    Properties {
        content_type: text(properties.content_type()),
        content_encoding: text(properties.content_encoding()),
        headers: properties
            .headers()
            .as_ref()
            .map(headers_of)
            .unwrap_or_default(),
        delivery_mode: *properties.delivery_mode(),
        priority: *properties.priority(),
        correlation_id: text(properties.correlation_id()),
        reply_to: text(properties.reply_to()),
        expiration: text(properties.expiration()),
        message_id: text(properties.message_id()),
        timestamp: *properties.timestamp(),
        kind: text(properties.kind()),
        user_id: text(properties.user_id()),
        app_id: text(properties.app_id()),
    }
}

fn to_lapin(properties: &Properties) -> BasicProperties {
    let mut out = BasicProperties::default();
    let short = |s: &String| ShortString::from(s.as_str());
    if let Some(v) = &properties.content_type {
        out = out.with_content_type(short(v));
    }
    if let Some(v) = &properties.content_encoding {
        out = out.with_content_encoding(short(v));
    }
    if !properties.headers.is_empty() {
        out = out.with_headers(table_of(&properties.headers));
    }
    if let Some(v) = properties.delivery_mode {
        out = out.with_delivery_mode(v);
    }
    if let Some(v) = properties.priority {
        out = out.with_priority(v);
    }
    if let Some(v) = &properties.correlation_id {
        out = out.with_correlation_id(short(v));
    }
    if let Some(v) = &properties.reply_to {
        out = out.with_reply_to(short(v));
    }
    if let Some(v) = &properties.expiration {
        out = out.with_expiration(short(v));
    }
    if let Some(v) = &properties.message_id {
        out = out.with_message_id(short(v));
    }
    if let Some(v) = properties.timestamp {
        out = out.with_timestamp(v);
    }
    if let Some(v) = &properties.kind {
        out = out.with_type(short(v));
    }
    if let Some(v) = &properties.user_id {
        out = out.with_user_id(short(v));
    }
    if let Some(v) = &properties.app_id {
        out = out.with_app_id(short(v));
    }
    out
}

fn headers_of(table: &FieldTable) -> Headers {
    table
        .inner()
        .iter()
        .map(|(key, value)| (key.as_str().to_string(), header_of(value)))
        .collect()
}

fn header_of(value: &AMQPValue) -> HeaderValue {
    match value {
        AMQPValue::Boolean(b) => HeaderValue::Bool(*b),
        AMQPValue::ShortShortInt(n) => HeaderValue::Int(i64::from(*n)),
        AMQPValue::ShortShortUInt(n) => HeaderValue::Int(i64::from(*n)),
        AMQPValue::ShortInt(n) => HeaderValue::Int(i64::from(*n)),
        AMQPValue::ShortUInt(n) => HeaderValue::Int(i64::from(*n)),
        AMQPValue::LongInt(n) => HeaderValue::Int(i64::from(*n)),
        AMQPValue::LongUInt(n) => HeaderValue::Int(i64::from(*n)),
        AMQPValue::LongLongInt(n) => HeaderValue::Int(*n),
        AMQPValue::Float(f) => HeaderValue::Float(f64::from(*f)),
        AMQPValue::Double(f) => HeaderValue::Float(*f),
        AMQPValue::ShortString(s) => HeaderValue::Text(s.as_str().to_string()),
        AMQPValue::LongString(s) => {
            HeaderValue::Text(String::from_utf8_lossy(s.as_bytes()).into_owned())
        }
        AMQPValue::FieldArray(items) => {
            HeaderValue::List(items.as_slice().iter().map(header_of).collect())
        }
        AMQPValue::Timestamp(t) => HeaderValue::Timestamp(*t),
        AMQPValue::FieldTable(table) => HeaderValue::Table(headers_of(table)),
        AMQPValue::ByteArray(bytes) => HeaderValue::Bytes(bytes.as_slice().to_vec()),
        other => HeaderValue::Other(format!("{other:?}")),
    }
}

fn table_of(headers: &Headers) -> FieldTable {
    let mut table = FieldTable::default();
    for (key, value) in headers {
        table.insert(ShortString::from(key.as_str()), amqp_value_of(value));
    }
    table
}

fn amqp_value_of(value: &HeaderValue) -> AMQPValue {
    match value {
        HeaderValue::Text(s) => AMQPValue::LongString(LongString::from(s.as_str())),
        HeaderValue::Int(n) => AMQPValue::LongLongInt(*n),
        HeaderValue::Float(f) => AMQPValue::Double(*f),
        HeaderValue::Bool(b) => AMQPValue::Boolean(*b),
        HeaderValue::Bytes(bytes) => AMQPValue::ByteArray(bytes.clone().into()),
        HeaderValue::List(items) => AMQPValue::FieldArray(FieldArray::from(
            items.iter().map(amqp_value_of).collect::<Vec<_>>(),
        )),
        HeaderValue::Table(table) => AMQPValue::FieldTable(table_of(table)),
        HeaderValue::Timestamp(t) => AMQPValue::Timestamp(*t),
        HeaderValue::Other(text) => AMQPValue::LongString(LongString::from(text.as_str())),
    }
}

/// What the broker has under a name, compared with what farine would declare there.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Found {
    /// Nothing: the declaration would create it.
    Missing,
    /// It exists, and declaring it as farine would changes nothing.
    AsDeclared,
    /// It exists, but the broker refuses farine's declaration; its answer, e.g.
    /// `PRECONDITION_FAILED - inequivalent arg 'type' for exchange 'calc' ...: received
    /// 'direct' but current is 'fanout'`, or `RESOURCE_LOCKED` for another connection's
    /// exclusive queue.
    Refused(String),
}

/// One plain connection (no recovery, no publishing channel) for looking at a broker without
/// changing it: what `farine check` uses. Every operation waits at most the `wait` given to
/// [`Inspector::connect`].
pub struct Inspector {
    connection: Connection,
    wait: Duration,
}

impl Inspector {
    /// Connects once, within `wait`: no retry, so a refused login or an unreachable broker
    /// is an error at once, saying which.
    pub async fn connect(uri: &AmqpUri, ca: Option<String>, wait: Duration) -> Result<Inspector> {
        let timeout_ms = u64::try_from(wait.as_millis()).unwrap_or(u64::MAX);
        let parsed = parse_uri(uri, 0, timeout_ms)?;
        let properties = ConnectionProperties::default()
            .with_connection_name(format!("{} (check, farine)", process_name()).into());
        let tls = lapin::tcp::OwnedTLSConfig {
            identity: None,
            cert_chain: ca,
        };
        let connect = async {
            let runtime = lapin::runtime::default_runtime()?;
            Connection::connect_uri_with_config(parsed, properties, tls, runtime).await
        };
        match tokio::time::timeout(wait, connect).await {
            Ok(Ok(connection)) => Ok(Inspector { connection, wait }),
            Ok(Err(err)) => Err(Error::Runtime(connect_failure(uri, &err))),
            Err(_) => Err(Error::Runtime(format!(
                "connecting to the broker at {uri} timed out: no answer within {}",
                humantime::format_duration(wait)
            ))),
        }
    }

    /// Compares exchange `name` with the declaration farine would make, changing nothing:
    /// on one channel, a passive declare and the same declare farine makes, sent together.
    /// When the exchange is missing, the passive declare fails and the broker closes the
    /// channel, discarding the second declare unread, so nothing is created; when it exists,
    /// the second declare is a no-op if it is equivalent and refused if not.
    pub async fn exchange(
        &self,
        name: &str,
        kind: ExchangeKind,
        durable: bool,
        auto_delete: bool,
    ) -> Result<Found> {
        let what = format!("exchange {name:?}");
        self.bounded(&what, async {
            let channel = self.channel(&what).await?;
            let passive = channel.exchange_declare(
                name.into(),
                kind.into(),
                ExchangeDeclareOptions {
                    passive: true,
                    ..Default::default()
                },
                FieldTable::default(),
            );
            // `amq.*` names are the broker's own: only a passive declare is allowed on them.
            if name.starts_with("amq.") {
                return Self::settle(&channel, &what, passive.await, Ok(())).await;
            }
            let same = channel.exchange_declare(
                name.into(),
                kind.into(),
                ExchangeDeclareOptions {
                    durable,
                    auto_delete,
                    ..Default::default()
                },
                FieldTable::default(),
            );
            let (passive, same) = futures::future::join(passive, same).await;
            Self::settle(&channel, &what, passive, same).await
        })
        .await
    }

    /// Compares queue `name` with the declaration farine would make, as
    /// [`Inspector::exchange`] does (a missing queue is not created).
    pub async fn queue(&self, name: &str, options: &QueueOptions) -> Result<Found> {
        let what = format!("queue {name:?}");
        self.bounded(&what, async {
            let channel = self.channel(&what).await?;
            let passive = channel.queue_declare(
                name.into(),
                QueueDeclareOptions {
                    passive: true,
                    ..Default::default()
                },
                FieldTable::default(),
            );
            let same = channel.queue_declare(
                name.into(),
                QueueDeclareOptions {
                    durable: options.durable,
                    exclusive: options.exclusive,
                    auto_delete: options.auto_delete,
                    ..Default::default()
                },
                queue_arguments(options),
            );
            let (passive, same) = futures::future::join(passive, same).await;
            Self::settle(&channel, &what, passive.map(drop), same.map(drop)).await
        })
        .await
    }

    /// Closes the connection.
    pub async fn close(&self) {
        let _ = tokio::time::timeout(self.wait, self.connection.close(200, "OK".into())).await;
    }

    async fn channel(&self, what: &str) -> Result<Channel> {
        self.connection
            .create_channel()
            .await
            .map_err(Error::amqp(format!("opening a channel to check {what}")))
    }

    async fn bounded<T>(
        &self,
        what: &str,
        work: impl std::future::Future<Output = Result<T>>,
    ) -> Result<T> {
        match tokio::time::timeout(self.wait, work).await {
            Ok(result) => result,
            Err(_) => Err(Error::Runtime(format!(
                "checking {what} timed out: the broker did not answer within {}",
                humantime::format_duration(self.wait)
            ))),
        }
    }

    /// What the passive declare and the declare farine makes said.
    async fn settle(
        channel: &Channel,
        what: &str,
        passive: lapin::Result<()>,
        same: lapin::Result<()>,
    ) -> Result<Found> {
        let found = match (passive, same) {
            (Err(err), _) if err.to_string().contains("NOT_FOUND") => Found::Missing,
            // Another connection's exclusive queue, or no permission to look.
            (Err(err), _) if err.is_amqp_soft_error() => Found::Refused(broker_text(&err)),
            (Err(err), _) => return Err(Error::amqp(format!("checking {what}"))(err)),
            (Ok(()), Ok(())) => Found::AsDeclared,
            (Ok(()), Err(err)) if err.is_amqp_soft_error() => Found::Refused(broker_text(&err)),
            (Ok(()), Err(err)) => return Err(Error::amqp(format!("checking {what}"))(err)),
        };
        if found == Found::AsDeclared {
            let _ = channel.close(200, "OK".into()).await;
        }
        Ok(found)
    }
}

/// The broker's own words in a lapin error ("PRECONDITION_FAILED - inequivalent arg ...").
fn broker_text(err: &lapin::Error) -> String {
    match err.kind() {
        lapin::ErrorKind::ProtocolError(amqp) => amqp.get_message().to_string(),
        _ => err.to_string(),
    }
}

/// Why a first connection failed, in words: a refused login or virtual host, or the network.
fn connect_failure(uri: &AmqpUri, err: &lapin::Error) -> String {
    let text = err.to_string();
    if text.contains("ACCESS_REFUSED") || text.contains("authentication") {
        format!(
            "the broker refused the login (ACCESS_REFUSED): wrong user or password in {uri} ({})",
            broker_text(err)
        )
    } else if text.contains("NOT_ALLOWED") {
        format!(
            "the broker refused the virtual host (NOT_ALLOWED): it does not exist or the user \
             may not use it, in {uri} ({})",
            broker_text(err)
        )
    } else {
        format!("cannot connect to the broker at {uri}: {text} (is RabbitMQ running and reachable at that address?)")
    }
}
