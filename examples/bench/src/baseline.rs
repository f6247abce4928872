//! The same exchange of messages written directly against lapin, with the settings a careful
//! user would pick: one connection per side, prefetch set, each delivery handled in its own
//! task, direct reply-to, publisher confirms pipelined (never one round trip per message).
//!
//! It sends what farine sends (PROTOCOL.md): requests `{"args": [..], "kwargs": {}}` with
//! `correlation_id`, `reply_to`, the configured delivery mode and an expiration, mandatory;
//! replies are an item frame and an end frame through the default exchange, confirmed (not
//! mandatory: see `publish_reply`); a request is acked after its replies were confirmed. Durability, delivery mode, prefetch and
//! timeout come from the same configuration section as the farine side.
//!
//! Next to it, the **minimal** baseline of BENCH.md (`Flavor::Minimal`): what RabbitMQ can do
//! for the same work with nothing extra. Transient messages, a non-durable auto-delete queue,
//! no publisher confirms on requests or replies, one reply frame `{"body": x}` per call
//! (a stream: its items, then the end frame), replies consumed with `no_ack` on direct
//! reply-to, the server's one channel at prefetch 256 with a task per delivery; events
//! published with confirms awaited in batches of 1024 and consumed at prefetch 512.

use crate::{counter, Res};
use futures::{StreamExt, TryStreamExt};
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicNackOptions, BasicPublishOptions, BasicQosOptions,
    ConfirmSelectOptions, ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions,
};
use lapin::types::{FieldTable, ShortString};
use lapin::{
    BasicProperties, Channel, Confirmation, Connection, ConnectionProperties, PublisherConfirm,
};
use serde::{Deserialize, Serialize};
use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::mpsc;

pub const RPC_EXCHANGE: &str = "bench_lapin";
pub const ADD_QUEUE: &str = "bench_lapin__add";
pub const COUNT_QUEUE: &str = "bench_lapin__count";
pub const EVENTS_EXCHANGE: &str = "bench_lapin_events";
pub const EVENTS_QUEUE: &str = "bench_lapin_events";
pub const MIN_RPC_EXCHANGE: &str = "bench_minimal";
pub const MIN_ADD_QUEUE: &str = "bench_minimal__add";
pub const MIN_COUNT_QUEUE: &str = "bench_minimal__count";
pub const MIN_EVENTS_EXCHANGE: &str = "bench_minimal_events";
pub const MIN_EVENTS_QUEUE: &str = "bench_minimal_events";
/// The minimal server's prefetch, its events consumer's, and its publisher's confirm batch.
const MIN_RPC_PREFETCH: u16 = 256;
const MIN_EVENTS_PREFETCH: u16 = 512;
const MIN_CONFIRM_BATCH: usize = 1024;
const DIRECT_REPLY_TO: &str = "amq.rabbitmq.reply-to";
/// Unconfirmed reply frames a stream may have in flight (farine's window too).
const CONFIRM_WINDOW: usize = 256;
const END: &[u8] = br#"{"__end__": true}"#;

/// Which lapin baseline: the same guarantees as farine, or the broker's limit.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Flavor {
    Same,
    Minimal,
}

/// The settings both sides share, from the farine section of the service they stand for.
#[derive(Clone, Debug)]
pub struct Settings {
    pub uri: String,
    pub prefetch: u16,
    pub durable: bool,
    pub delivery_mode: u8,
    pub timeout: Duration,
}

impl Settings {
    pub fn of(config: &farine::Config, service: &str) -> Res<Settings> {
        let section = config.service(service)?;
        Ok(Settings {
            uri: section.amqp_uri.expose().to_string(),
            // farine's own: concurrency calls, the broker sending prefetch ahead.
            prefetch: section.prefetch_for(section.concurrency),
            durable: section.durable,
            delivery_mode: section.delivery_mode,
            timeout: section.rpc_timeout,
        })
    }
}

async fn connect(settings: &Settings, role: &str) -> Res<Connection> {
    let properties = ConnectionProperties::default()
        .with_connection_name(format!("farine-bench lapin {role}").into());
    Ok(Connection::connect(&settings.uri, properties).await?)
}

async fn declare(channel: &Channel, exchange: &str, queue: &str, durable: bool) -> Res<()> {
    channel
        .exchange_declare(
            exchange.into(),
            lapin::ExchangeKind::Direct,
            ExchangeDeclareOptions {
                durable,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await?;
    channel
        .queue_declare(
            queue.into(),
            QueueDeclareOptions {
                durable,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await?;
    channel
        .queue_bind(
            queue.into(),
            exchange.into(),
            queue.into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await?;
    Ok(())
}

/// The minimal topology: a non-durable direct exchange and a non-durable auto-delete queue.
async fn declare_minimal(channel: &Channel, exchange: &str, queue: &str) -> Res<()> {
    channel
        .exchange_declare(
            exchange.into(),
            lapin::ExchangeKind::Direct,
            ExchangeDeclareOptions::default(),
            FieldTable::default(),
        )
        .await?;
    channel
        .queue_declare(
            queue.into(),
            QueueDeclareOptions {
                auto_delete: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await?;
    channel
        .queue_bind(
            queue.into(),
            exchange.into(),
            queue.into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await?;
    Ok(())
}

fn mandatory() -> BasicPublishOptions {
    BasicPublishOptions {
        mandatory: true,
        ..Default::default()
    }
}

fn json_properties() -> BasicProperties {
    BasicProperties::default().with_content_type("application/json".into())
}

fn check(confirmation: Confirmation) -> Res<()> {
    match confirmation {
        Confirmation::Ack(None) | Confirmation::NotRequested => Ok(()),
        Confirmation::Ack(Some(_)) => Err("message returned: no queue is bound".into()),
        Confirmation::Nack(_) => Err("message nacked by the broker".into()),
    }
}

#[derive(Serialize)]
struct ItemOut<T> {
    body: T,
    __end__: bool,
}

#[derive(Deserialize)]
struct FrameIn<T> {
    #[serde(default = "Option::default")]
    body: Option<T>,
    #[serde(default, rename = "__end__")]
    end: Option<bool>,
    #[serde(default, rename = "__except__")]
    except: Option<serde_json::Value>,
}

#[derive(Serialize)]
struct BodyOut<T> {
    body: T,
}

#[derive(Serialize)]
struct Request<A> {
    args: A,
    kwargs: Empty,
}

#[derive(Serialize, Deserialize)]
struct Empty {}

#[derive(Deserialize)]
struct Args<A> {
    args: A,
}

#[derive(Serialize, Deserialize)]
pub struct Event {
    pub n: u64,
}

// ------------------------------------------------------------------ RPC server

/// The RPC service: queues `bench_lapin__add` and `bench_lapin__count`, one consuming
/// channel each (prefetch set), replies on a confirm-mode channel, all on one connection.
pub async fn rpc_server(settings: &Settings) -> Res<Connection> {
    let connection = connect(settings, "rpc server").await?;
    let replies = connection.create_channel().await?;
    replies
        .confirm_select(ConfirmSelectOptions::default())
        .await?;
    for queue in [ADD_QUEUE, COUNT_QUEUE] {
        let channel = connection.create_channel().await?;
        channel
            .basic_qos(settings.prefetch, BasicQosOptions::default())
            .await?;
        declare(&channel, RPC_EXCHANGE, queue, settings.durable).await?;
        let mut consumer = channel
            .basic_consume(
                queue.into(),
                "".into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await?;
        let replies = replies.clone();
        tokio::spawn(async move {
            let _channel = channel;
            while let Some(Ok(delivery)) = consumer.next().await {
                let replies = replies.clone();
                tokio::spawn(async move {
                    let acked = match answer(&replies, queue, &delivery).await {
                        Ok(()) => delivery.ack(BasicAckOptions::default()).await,
                        Err(err) => {
                            eprintln!("lapin rpc server: {err}");
                            delivery
                                .nack(BasicNackOptions {
                                    requeue: false,
                                    ..Default::default()
                                })
                                .await
                        }
                    };
                    if let Err(err) = acked {
                        eprintln!("lapin rpc server: settling: {err}");
                    }
                });
            }
        });
    }
    Ok(connection)
}

async fn answer(replies: &Channel, queue: &str, delivery: &lapin::message::Delivery) -> Res<()> {
    let reply_to = delivery
        .properties
        .reply_to()
        .clone()
        .ok_or("request without reply_to")?;
    let mut properties = json_properties().with_delivery_mode(1);
    if let Some(id) = delivery.properties.correlation_id() {
        properties = properties.with_correlation_id(id.clone());
    }
    let mut confirms: VecDeque<PublisherConfirm> = VecDeque::new();
    let send = |body: Vec<u8>| publish_reply(replies, reply_to.clone(), properties.clone(), body);
    if queue == ADD_QUEUE {
        let Args { args: (a, b) } = serde_json::from_slice::<Args<(i64, i64)>>(&delivery.data)?;
        // One frame, as farine answers a caller that says it reads a unary result so.
        let item = serde_json::to_vec(&ItemOut {
            body: a.wrapping_add(b),
            __end__: true,
        })?;
        confirms.push_back(send(item).await?);
        while let Some(confirm) = confirms.pop_front() {
            settle_reply(Some(confirm)).await?;
        }
        return Ok(());
    } else {
        let Args { args: (n,) } = serde_json::from_slice::<Args<(u32,)>>(&delivery.data)?;
        for i in 0..n {
            if confirms.len() >= CONFIRM_WINDOW {
                settle_reply(confirms.pop_front()).await?;
            }
            let item = serde_json::to_vec(&ItemOut {
                body: i,
                __end__: false,
            })?;
            confirms.push_back(send(item).await?);
        }
    }
    confirms.push_back(send(END.to_vec()).await?);
    while let Some(confirm) = confirms.pop_front() {
        settle_reply(Some(confirm)).await?;
    }
    Ok(())
}

/// Not mandatory: RabbitMQ (3.10 at least) delivers a reply to a direct reply-to name and
/// yet returns it as `NO_ROUTE` when it is published mandatory, which costs a
/// `basic.return` per reply frame for nothing. A careful user of direct reply-to leaves the
/// flag off (a reply to a caller that is gone is dropped either way).
async fn publish_reply(
    replies: &Channel,
    reply_to: ShortString,
    properties: BasicProperties,
    body: Vec<u8>,
) -> lapin::Result<PublisherConfirm> {
    replies
        .basic_publish(
            "".into(),
            reply_to,
            BasicPublishOptions::default(),
            &body,
            properties,
        )
        .await
}

/// Waits for a reply's confirm: only a nack fails the request.
async fn settle_reply(confirm: Option<PublisherConfirm>) -> Res<()> {
    match confirm {
        Some(confirm) => match confirm.await? {
            Confirmation::Nack(_) => Err("reply nacked by the broker".into()),
            Confirmation::Ack(_) | Confirmation::NotRequested => Ok(()),
        },
        None => Ok(()),
    }
}

/// The minimal RPC server: queues `bench_minimal__add` and `bench_minimal__count` consumed
/// on one channel at prefetch 256, a task per delivery that publishes its reply frames
/// (transient, unconfirmed) on that channel and acks.
pub async fn minimal_rpc_server(settings: &Settings) -> Res<Connection> {
    let connection = connect(settings, "minimal rpc server").await?;
    let channel = connection.create_channel().await?;
    channel
        .basic_qos(MIN_RPC_PREFETCH, BasicQosOptions::default())
        .await?;
    for queue in [MIN_ADD_QUEUE, MIN_COUNT_QUEUE] {
        declare_minimal(&channel, MIN_RPC_EXCHANGE, queue).await?;
        let mut consumer = channel
            .basic_consume(
                queue.into(),
                "".into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await?;
        let channel = channel.clone();
        tokio::spawn(async move {
            while let Some(Ok(delivery)) = consumer.next().await {
                let channel = channel.clone();
                tokio::spawn(async move {
                    if let Err(err) = answer_minimal(&channel, queue, &delivery).await {
                        eprintln!("minimal rpc server: {err}");
                    }
                    if let Err(err) = delivery.ack(BasicAckOptions::default()).await {
                        eprintln!("minimal rpc server: ack: {err}");
                    }
                });
            }
        });
    }
    Ok(connection)
}

async fn answer_minimal(
    channel: &Channel,
    queue: &str,
    delivery: &lapin::message::Delivery,
) -> Res<()> {
    let reply_to = delivery
        .properties
        .reply_to()
        .clone()
        .ok_or("request without reply_to")?;
    let mut properties = json_properties().with_delivery_mode(1);
    if let Some(id) = delivery.properties.correlation_id() {
        properties = properties.with_correlation_id(id.clone());
    }
    let send = |body: Vec<u8>| {
        let (reply_to, properties) = (reply_to.clone(), properties.clone());
        async move {
            channel
                .basic_publish(
                    "".into(),
                    reply_to,
                    BasicPublishOptions::default(),
                    &body,
                    properties,
                )
                .await
        }
    };
    if queue == MIN_ADD_QUEUE {
        let Args { args: (a, b) } = serde_json::from_slice::<Args<(i64, i64)>>(&delivery.data)?;
        send(serde_json::to_vec(&BodyOut {
            body: a.wrapping_add(b),
        })?)
        .await?;
    } else {
        let Args { args: (n,) } = serde_json::from_slice::<Args<(u32,)>>(&delivery.data)?;
        for i in 0..n {
            send(serde_json::to_vec(&BodyOut { body: i })?).await?;
        }
        send(END.to_vec()).await?;
    }
    Ok(())
}

// ------------------------------------------------------------------ RPC client

type Pending = Arc<Mutex<HashMap<u64, mpsc::UnboundedSender<Vec<u8>>>>>;

/// An RPC caller on direct reply-to: one connection, one channel that both publishes the
/// requests and consumes `amq.rabbitmq.reply-to` (`no_ack`). `Flavor::Same`: the channel is
/// in confirm mode, requests are mandatory, carry the configured delivery mode and an
/// expiration, and a call awaits its request's confirm and its reply within the timeout.
/// `Flavor::Minimal`: transient requests, no confirms, no expiration, no timer.
pub struct RpcClient {
    flavor: Flavor,
    connection: Connection,
    channel: Channel,
    pending: Pending,
    next: AtomicU64,
    settings: Settings,
    expiration: ShortString,
}

impl RpcClient {
    pub async fn connect(settings: &Settings, flavor: Flavor) -> Res<RpcClient> {
        let role = match flavor {
            Flavor::Same => "rpc client",
            Flavor::Minimal => "minimal rpc client",
        };
        let connection = connect(settings, role).await?;
        let channel = connection.create_channel().await?;
        if flavor == Flavor::Same {
            channel
                .confirm_select(ConfirmSelectOptions::default())
                .await?;
        }
        let mut consumer = channel
            .basic_consume(
                DIRECT_REPLY_TO.into(),
                "".into(),
                BasicConsumeOptions {
                    no_ack: true,
                    ..Default::default()
                },
                FieldTable::default(),
            )
            .await?;
        let pending: Pending = Arc::default();
        let routes = pending.clone();
        tokio::spawn(async move {
            while let Some(Ok(delivery)) = consumer.next().await {
                let Some(id) = delivery
                    .properties
                    .correlation_id()
                    .as_ref()
                    .and_then(|id| id.as_str().parse::<u64>().ok())
                else {
                    continue;
                };
                if let Some(sender) = routes.lock().unwrap().get(&id) {
                    let _ = sender.send(delivery.data);
                }
            }
        });
        Ok(RpcClient {
            flavor,
            connection,
            channel,
            pending,
            next: AtomicU64::new(0),
            expiration: settings.timeout.as_millis().max(1).to_string().into(),
            settings: settings.clone(),
        })
    }

    /// Publishes a request to method `add` or `count`; its frames arrive on the receiver.
    async fn request<A: Serialize>(
        &self,
        method: &str,
        args: A,
    ) -> Res<(Call<'_>, PublisherConfirm)> {
        let (exchange, routing_key) = match (self.flavor, method) {
            (Flavor::Same, "add") => (RPC_EXCHANGE, ADD_QUEUE),
            (Flavor::Same, _) => (RPC_EXCHANGE, COUNT_QUEUE),
            (Flavor::Minimal, "add") => (MIN_RPC_EXCHANGE, MIN_ADD_QUEUE),
            (Flavor::Minimal, _) => (MIN_RPC_EXCHANGE, MIN_COUNT_QUEUE),
        };
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        let body = serde_json::to_vec(&Request {
            args,
            kwargs: Empty {},
        })?;
        let (sender, receiver) = mpsc::unbounded_channel();
        self.pending.lock().unwrap().insert(id, sender);
        let call = Call {
            client: self,
            id,
            receiver,
        };
        let properties = json_properties()
            .with_correlation_id(id.to_string().into())
            .with_reply_to(DIRECT_REPLY_TO.into());
        let (properties, options) = match self.flavor {
            // Transient, expiring at the deadline: farine's requests.
            Flavor::Same => (
                properties
                    .with_delivery_mode(1)
                    .with_expiration(self.expiration.clone()),
                mandatory(),
            ),
            Flavor::Minimal => (
                properties.with_delivery_mode(1),
                BasicPublishOptions::default(),
            ),
        };
        let confirm = self
            .channel
            .basic_publish(
                exchange.into(),
                routing_key.into(),
                options,
                &body,
                properties,
            )
            .await?;
        Ok((call, confirm))
    }

    /// `add(a, b)`: done when the request is confirmed and the item frame arrived (both
    /// awaited together).
    pub async fn add(&self, a: i64, b: i64) -> Res<i64> {
        let (mut call, confirm) = self.request("add", (a, b)).await?;
        if self.flavor == Flavor::Minimal {
            let frame = call.frame::<i64>().await?;
            return frame.body.ok_or_else(|| "a reply without body".into());
        }
        let reply = async {
            let frame = call.frame::<i64>().await?;
            frame.body.ok_or_else(|| "a reply without body".into())
        };
        let (confirmed, reply) = tokio::time::timeout(self.settings.timeout, async {
            tokio::join!(confirm, reply)
        })
        .await
        .map_err(|_| "add: timed out")?;
        check(confirmed?)?;
        reply
    }

    /// `count(n)`, read to its end frame (within the RPC timeout): the number of items.
    pub async fn count(&self, n: u32) -> Res<u64> {
        let (mut call, confirm) = self.request("count", (n,)).await?;
        let items = async {
            let mut items = 0u64;
            loop {
                let frame = call.frame::<u32>().await?;
                if frame.end == Some(true) {
                    return Ok::<u64, crate::BoxError>(items);
                }
                items += 1;
            }
        };
        if self.flavor == Flavor::Minimal {
            return items.await;
        }
        let (confirmed, items) = tokio::time::timeout(self.settings.timeout, async {
            tokio::join!(confirm, items)
        })
        .await
        .map_err(|_| "count: timed out")?;
        check(confirmed?)?;
        items
    }

    pub async fn close(&self) {
        let _ = self.connection.close(200, "OK".into()).await;
    }
}

/// One call's frames; forgets the call when dropped.
struct Call<'a> {
    client: &'a RpcClient,
    id: u64,
    receiver: mpsc::UnboundedReceiver<Vec<u8>>,
}

impl Call<'_> {
    async fn frame<T: serde::de::DeserializeOwned>(&mut self) -> Res<FrameIn<T>> {
        let bytes = self.receiver.recv().await.ok_or("disconnected")?;
        let frame: FrameIn<T> = serde_json::from_slice(&bytes)?;
        if let Some(except) = frame.except {
            return Err(format!("remote error: {except}").into());
        }
        Ok(frame)
    }
}

impl Drop for Call<'_> {
    fn drop(&mut self) {
        self.client.pending.lock().unwrap().remove(&self.id);
    }
}

// ------------------------------------------------------------------ events

/// The events consumer: queue `bench_lapin_events`, prefetch set, a task per delivery that
/// decodes, acks, and counts.
/// `Flavor::Minimal`: queue `bench_minimal_events` (non-durable, auto-delete), prefetch 512.
pub async fn events_consumer(settings: &Settings, flavor: Flavor) -> Res<Connection> {
    let connection = connect(settings, "events consumer").await?;
    let channel = connection.create_channel().await?;
    let queue = match flavor {
        Flavor::Same => {
            channel
                .basic_qos(settings.prefetch, BasicQosOptions::default())
                .await?;
            declare(&channel, EVENTS_EXCHANGE, EVENTS_QUEUE, settings.durable).await?;
            EVENTS_QUEUE
        }
        Flavor::Minimal => {
            channel
                .basic_qos(MIN_EVENTS_PREFETCH, BasicQosOptions::default())
                .await?;
            declare_minimal(&channel, MIN_EVENTS_EXCHANGE, MIN_EVENTS_QUEUE).await?;
            MIN_EVENTS_QUEUE
        }
    };
    let mut consumer = channel
        .basic_consume(
            queue.into(),
            "".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await?;
    tokio::spawn(async move {
        let _channel = channel;
        while let Some(Ok(delivery)) = consumer.next().await {
            tokio::spawn(async move {
                match serde_json::from_slice::<Event>(&delivery.data) {
                    Ok(event) => {
                        std::hint::black_box(event.n);
                        match delivery.ack(BasicAckOptions::default()).await {
                            Ok(_) => counter::hit(),
                            Err(err) => eprintln!("lapin events consumer: ack: {err}"),
                        }
                    }
                    Err(err) => {
                        eprintln!("lapin events consumer: {err}");
                        let _ = delivery.nack(BasicNackOptions::default()).await;
                    }
                }
            });
        }
    });
    Ok(connection)
}

/// The events publisher: one connection, a confirm-mode channel. `Flavor::Same`: mandatory,
/// `window` messages in flight, each confirm checked. `Flavor::Minimal`: transient, not
/// mandatory, confirms awaited in batches of 1024.
pub struct EventsPublisher {
    flavor: Flavor,
    connection: Connection,
    channel: Channel,
}

impl EventsPublisher {
    pub async fn connect(settings: &Settings, flavor: Flavor) -> Res<EventsPublisher> {
        let connection = connect(settings, "events publisher").await?;
        let channel = connection.create_channel().await?;
        channel
            .confirm_select(ConfirmSelectOptions::default())
            .await?;
        Ok(EventsPublisher {
            flavor,
            connection,
            channel,
        })
    }

    /// Publishes `{"n": i}` for each i in `range` with `delivery_mode` (the minimal flavor:
    /// always 1), each confirmed.
    pub async fn publish(
        &self,
        range: std::ops::Range<u64>,
        window: usize,
        delivery_mode: u8,
    ) -> Res<()> {
        if self.flavor == Flavor::Minimal {
            let mut confirms = Vec::with_capacity(MIN_CONFIRM_BATCH);
            for n in range {
                let body = serde_json::to_vec(&Event { n })?;
                confirms.push(
                    self.channel
                        .basic_publish(
                            MIN_EVENTS_EXCHANGE.into(),
                            MIN_EVENTS_QUEUE.into(),
                            BasicPublishOptions::default(),
                            &body,
                            json_properties().with_delivery_mode(1),
                        )
                        .await?,
                );
                if confirms.len() == MIN_CONFIRM_BATCH {
                    settle_batch(&mut confirms).await?;
                }
            }
            return settle_batch(&mut confirms).await;
        }
        futures::stream::iter(range)
            .map(|n| async move {
                let body = serde_json::to_vec(&Event { n })?;
                let confirm = self
                    .channel
                    .basic_publish(
                        EVENTS_EXCHANGE.into(),
                        EVENTS_QUEUE.into(),
                        mandatory(),
                        &body,
                        json_properties().with_delivery_mode(delivery_mode),
                    )
                    .await?;
                check(confirm.await?)
            })
            .buffer_unordered(window)
            .try_collect::<()>()
            .await
    }

    pub async fn close(&self) {
        let _ = self.connection.close(200, "OK".into()).await;
    }
}

/// Awaits a batch of publisher confirms.
async fn settle_batch(confirms: &mut Vec<PublisherConfirm>) -> Res<()> {
    for confirmation in futures::future::try_join_all(confirms.drain(..)).await? {
        check(confirmation)?;
    }
    Ok(())
}
