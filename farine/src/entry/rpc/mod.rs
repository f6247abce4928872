//! The RPC entry point: queue `<service>__<method>` bound to the service exchange; each
//! request is bound to the method's parameters, run, and answered frame by frame to its
//! `reply_to` with its `correlation_id`. The request is acked after the last frame was
//! confirmed by the broker, so a crash mid-call means redelivery, never a lost call.

use super::deliveries::{queue_topology, DeliveryLoop, Turn};
use crate::broker::Broker;
use crate::clip::clip;
use crate::config::ServiceConfig;
use crate::context::{ServiceContext, StreamControl};
use crate::middleware::{Call as CallInfo, Disposition, EntryKind, Handled};
use crate::observe::Handling;
use crate::rpc::args::Args;
use crate::rpc::frame::{self, kind, ErrorInfo, Frame};
use crate::rpc::names::{
    cancel_key, credit_key, is_reply_queue, queue_name, Cancel, Credit, CREDIT_HEADER,
};
use std::sync::atomic::{AtomicBool, Ordering};
pub(crate) mod handler;
pub(crate) mod reply;
use super::EntryPoint;
use crate::outcome::{guard, guard_stream, Outcome};
use crate::retry;
use crate::transport::{Confirm, Delivery, HeaderValue, Message, Next, Properties, Subscribe};
use crate::{Error, Result};
use futures::future::BoxFuture;
use futures::stream::BoxStream;
use futures::{FutureExt, StreamExt};
use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

/// What a bound call is: a future of one reply, a stream of frames, or an argument error.
pub enum Call {
    Unary(BoxFuture<'static, Reply>),
    Stream(BoxStream<'static, Frame>),
    Rejected(ErrorInfo),
}

/// A unary method's answer, and what it broadcasts once the reply is sent.
#[derive(Debug)]
pub struct Reply {
    pub frame: Frame,
    /// Events the method staged on its `Broadcast` parameter; `None` when it has none, in
    /// which case a method with `broadcast = "..."` broadcasts its result.
    pub events: Option<Vec<serde_json::Value>>,
}

impl From<Frame> for Reply {
    fn from(frame: Frame) -> Self {
        Reply {
            frame,
            events: None,
        }
    }
}

/// Binds a request's arguments and starts the method.
pub type RpcHandler = Arc<dyn Fn(Arc<ServiceContext>, Args) -> Call + Send + Sync>;

/// `#[rpc::method(...)]` as written (its queue is always `<service>__<method>`, its prefetch
/// the section's `concurrency` unless given).
#[derive(Clone, Debug)]
pub struct RpcAttr {
    pub method: &'static str,
    pub concurrency: Option<u16>,
    pub broadcast: Option<&'static str>,
}

/// Unconfirmed frames a stream may have in flight: bounds memory without waiting a round
/// trip per item.
const CONFIRM_WINDOW: usize = 256;

pub(crate) struct Attached {
    deliveries: DeliveryLoop,
    shared: Arc<Shared>,
}

struct Shared {
    attr: RpcAttr,
    handler: RpcHandler,
    context: Arc<ServiceContext>,
    service: &'static str,
    queue: String,
    /// `service.method`.
    label: String,
}

pub(crate) async fn attach(
    service: &'static str,
    attr: RpcAttr,
    handler: RpcHandler,
    context: Arc<ServiceContext>,
) -> Result<Attached> {
    let settings: &ServiceConfig = &context.settings;
    let broker = &context.broker;
    let label = format!("{service}.{}", attr.method);
    let queue = queue_name(service, attr.method);
    let concurrency = attr.concurrency.unwrap_or(settings.concurrency);
    let prefetch = settings.prefetch_for(concurrency);
    let mut topology = queue_topology(settings, service, settings.exchange_type, &queue, &queue);
    topology.push(retry::dead_letter_topology(&queue));
    if let Some(exchange) = attr.broadcast {
        broker
            .declare_exchange(
                exchange,
                crate::config::ExchangeKind::Fanout,
                settings.durable,
                false,
            )
            .await?;
    }
    let deliveries = DeliveryLoop::start(
        broker,
        Subscribe {
            label: label.clone(),
            queue: queue.clone(),
            prefetch,
            no_ack: false,
            topology,
        },
        concurrency,
    )
    .await?;
    tracing::info!(entry_point = %label, queue = %queue, concurrency, prefetch, "rpc method attached");
    Ok(Attached {
        deliveries,
        shared: Arc::new(Shared {
            attr,
            handler,
            context,
            service,
            queue,
            label,
        }),
    })
}

impl EntryPoint for Attached {
    /// Serves requests until `shutdown`, then lets in-flight calls finish within `grace`.
    fn run(
        self: Box<Self>,
        shutdown: CancellationToken,
        grace: Duration,
    ) -> BoxFuture<'static, Result<()>> {
        let Attached { deliveries, shared } = *self;
        let stop = shutdown.clone();
        deliveries
            .run(shutdown, grace, move |delivery, turn| {
                serve(shared.clone(), delivery, turn, stop.clone(), grace)
            })
            .boxed()
    }
}

/// Publishes frames to the caller, keeping a bounded window of unconfirmed ones.
struct Replier<'a> {
    broker: &'a Broker,
    reply_to: &'a str,
    /// Replies are mandatory, so a caller that is gone is noticed, except to RabbitMQ's direct
    /// reply-to, which delivers a mandatory reply but also returns it as unroutable.
    mandatory: bool,
    properties: Properties,
    confirms: VecDeque<Confirm>,
    sent: usize,
    /// What the caller was told went wrong, for the test kit's observer.
    failed: Option<Outcome>,
}

impl Replier<'_> {
    /// Sends an error frame: the call failed (`poison`: it could never have succeeded).
    async fn send_error(&mut self, info: &ErrorInfo, poison: bool) -> Result<()> {
        let reason = info.message.clone();
        self.failed = Some(match poison {
            true => Outcome::Poison(reason),
            false => Outcome::Failed(reason),
        });
        self.send(&frame::error_bytes(info)).await
    }

    async fn send(&mut self, body: &[u8]) -> Result<()> {
        if self.confirms.len() >= CONFIRM_WINDOW {
            self.settle_one().await?;
        }
        let confirm = self
            .broker
            .publish_pending(
                "",
                self.reply_to,
                body,
                self.properties.clone(),
                self.mandatory,
            )
            .await?;
        self.confirms.push_back(confirm);
        self.sent += 1;
        Ok(())
    }

    async fn settle_one(&mut self) -> Result<()> {
        match self.confirms.pop_front() {
            Some(confirm) => confirm.await,
            None => Ok(()),
        }
    }

    async fn settle_all(&mut self) -> Result<()> {
        while !self.confirms.is_empty() {
            self.settle_one().await?;
        }
        Ok(())
    }
}

/// Answers one request, through the service's middleware if any.
async fn serve(
    shared: Arc<Shared>,
    delivery: Delivery,
    turn: Turn,
    shutdown: CancellationToken,
    grace: Duration,
) {
    let chain = &shared.context.middleware;
    let handled = if chain.is_empty() {
        answer(&shared, &delivery, turn, &shutdown, grace).await
    } else {
        let message = &delivery.message;
        let call = CallInfo {
            service: shared.service,
            entry_point: &shared.label,
            kind: EntryKind::Rpc,
            queue: &shared.queue,
            exchange: &message.exchange,
            routing_key: &message.routing_key,
            correlation_id: message.properties.correlation_id.as_deref(),
            headers: &message.properties.headers,
            attempt: 1,
        };
        let ran = AtomicBool::new(false);
        let handling = async {
            ran.store(true, Ordering::Relaxed);
            answer(&shared, &delivery, turn, &shutdown, grace).await
        };
        let handled = chain.run(&call, handling.boxed()).await;
        if !ran.load(Ordering::Relaxed) {
            // A middleware answered without handling it: the broker delivers it again.
            settle(&delivery, false).await;
        }
        handled
    };
    crate::observe::handled(
        &shared.context.settings.amqp_uri,
        &shared.label,
        &handled.outcome,
    );
}

/// Answers one request and settles it.
async fn answer(
    shared: &Shared,
    delivery: &Delivery,
    turn: Turn,
    shutdown: &CancellationToken,
    grace: Duration,
) -> Handled {
    let label = &shared.label;
    let broker = &shared.context.broker;
    let request = &delivery.message;
    let Some(reply_to) = request.properties.reply_to.clone() else {
        let reason = format!("{label}: request without reply_to: nobody to answer");
        tracing::error!(queue = %shared.queue, "{reason}");
        return park(shared, delivery, reason).await;
    };
    if !is_reply_queue(&reply_to) {
        let reason = format!(
            "{label}: reply_to {:?} is not a reply queue (expected amq.rabbitmq.reply-to, \
             farine.reply.<32 hex digits> or <32 hex digits>): refusing to publish into it",
            clip(&reply_to)
        );
        return park(shared, delivery, reason).await;
    }
    let correlation_id = request
        .properties
        .correlation_id
        .clone()
        .unwrap_or_default();
    let mut properties = Properties::json().with_delivery_mode(1);
    properties.correlation_id = request.properties.correlation_id.clone();
    let mut replier = Replier {
        broker,
        reply_to: &reply_to,
        mandatory: !reply_to.starts_with("amq.rabbitmq.reply-to"),
        properties,
        confirms: VecDeque::new(),
        sent: 0,
        failed: None,
    };

    let outcome: Result<()> = async {
        if request.body.len() > shared.context.settings.max_message_bytes {
            let info = ErrorInfo::new(
                kind::BAD_ARGUMENTS,
                format!(
                    "{label}: request of {} bytes is over max_message_bytes = {}",
                    request.body.len(),
                    shared.context.settings.max_message_bytes
                ),
            );
            return replier.send_error(&info, true).await;
        }
        let call = match Args::parse(&request.body, shared.service, shared.attr.method) {
            Ok(args) => (shared.handler)(shared.context.clone(), args),
            Err(info) => Call::Rejected(info),
        };
        match call {
            Call::Rejected(info) => {
                tracing::warn!(call = %label, "bad request: {}", info.message);
                replier.send_error(&info, true).await
            }
            Call::Unary(future) => {
                let reply = guard(crate::context::scope(shared.context.clone(), future))
                    .await
                    .unwrap_or_else(|panic| Frame::Error(panicked(label, &panic)).into());
                // The method is done: its slot is free while the reply is confirmed.
                drop(turn);
                match reply.frame {
                    Frame::Item(mut bytes) => {
                        let events = shared
                            .attr
                            .broadcast
                            .map(|_| reply.events.unwrap_or_else(|| result_body(&bytes)));
                        if single_frame(request) && frame::into_last(&mut bytes) {
                            replier.send(&bytes).await?;
                        } else {
                            replier.send(&bytes).await?;
                            replier.send(frame::END).await?;
                        }
                        if let (Some(exchange), Some(events)) = (shared.attr.broadcast, events) {
                            // After the commit (inside the method's future) and the reply.
                            replier.settle_all().await?;
                            broadcast(broker, shared.service, label, exchange, &events).await;
                        }
                        Ok(())
                    }
                    Frame::Error(info) => replier.send_error(&info, false).await,
                }
            }
            Call::Stream(stream) => {
                // Each item is produced as the service's (a `Publisher` inside it finds it).
                let stream = crate::context::scope_stream(shared.context.clone(), stream).boxed();
                let control =
                    shared
                        .context
                        .streams
                        .register(&correlation_id, &reply_to, credit(request));
                let limits = Limits {
                    shutdown,
                    grace,
                    credit_wait: shared.context.settings.rpc_timeout,
                };
                let result = stream_frames(label, stream, &mut replier, &control, limits).await;
                shared.context.streams.remove(&correlation_id, &reply_to);
                result
            }
        }
    }
    .await;
    let outcome = match outcome {
        Ok(()) => replier.settle_all().await,
        Err(err) => Err(err),
    };
    let observed = match &outcome {
        Ok(()) => replier.failed.take().unwrap_or(Outcome::Done),
        Err(err) => Outcome::Failed(format!("could not reply: {err}")),
    };
    let acked = match outcome {
        Ok(()) => true,
        Err(Error::Unroutable { .. }) => {
            // The caller's reply queue is gone: nobody is waiting any more.
            tracing::info!(call = %label, reply_to = %reply_to, "caller gone, reply dropped");
            true
        }
        Err(err) => {
            tracing::error!(call = %label, "could not reply: {err}");
            // Nothing reached the caller yet: let the call be served again.
            replier.sent > 0
        }
    };
    settle(delivery, acked).await;
    let disposition = match acked {
        true => Disposition::Acked,
        false => Disposition::Requeued,
    };
    Handled::new(crate::observe::handling(&observed), disposition)
}

/// Parks a request nobody can be answered for (no or a forged reply address).
async fn park(shared: &Shared, delivery: &Delivery, reason: String) -> Handled {
    let parked = retry::dead_letter(
        &shared.context.broker,
        &shared.queue,
        &delivery.message,
        &reason,
        1,
    )
    .await
    .is_ok();
    settle(delivery, parked).await;
    let disposition = match parked {
        true => Disposition::DeadLettered,
        false => Disposition::Requeued,
    };
    Handled::new(Handling::Poison(reason), disposition)
}

/// Whether the caller reads a unary result as one frame (it said so in a header).
fn single_frame(request: &Message) -> bool {
    matches!(
        request.properties.headers.get(frame::SINGLE_FRAME_HEADER),
        Some(HeaderValue::Bool(true))
    )
}

/// The credit a caller grants a stream at first, if it uses credits: at least one item, and
/// no more than [`MAX_CREDIT`] whatever it wrote.
fn credit(request: &Message) -> Option<u64> {
    match request.properties.headers.get(CREDIT_HEADER) {
        Some(HeaderValue::Int(items)) => {
            Some(u64::try_from(*items).unwrap_or(0).clamp(1, MAX_CREDIT))
        }
        _ => None,
    }
}

/// For a caller without credit: every this many items, the depth of its reply queue is
/// checked, and the stream waits while more than [`UNCREDITED_BACKLOG`] are unread.
const UNCREDITED_CHECK: u64 = 256;
const UNCREDITED_BACKLOG: usize = 4_096;

/// The most items a caller may have granted and not read: a sender cannot make the service
/// and the broker hold more of its stream than this.
const MAX_CREDIT: u64 = 65_536;

/// When a stream stops early.
struct Limits<'a> {
    shutdown: &'a CancellationToken,
    /// After `shutdown`, how long the stream may still run.
    grace: Duration,
    /// How long the stream waits for a caller's credit before it gives up on the caller.
    credit_wait: Duration,
}

/// Waits while the caller's reply queue holds [`UNCREDITED_BACKLOG`] or more messages: false
/// when `cancel` fires or it stays full for `wait`. A reply address that is no queue (direct
/// reply-to) cannot be measured and never waits.
async fn backlog_below(
    broker: &Broker,
    reply_to: &str,
    cancel: &CancellationToken,
    wait: Duration,
) -> bool {
    if reply_to.starts_with("amq.rabbitmq.reply-to") {
        return true;
    }
    let deadline = tokio::time::Instant::now() + wait;
    loop {
        match broker.message_count(reply_to).await {
            Ok(Some(unread)) if unread >= UNCREDITED_BACKLOG => {}
            _ => return true,
        }
        tokio::select! {
            _ = cancel.cancelled() => return false,
            _ = tokio::time::sleep_until(deadline) => return false,
            _ = tokio::time::sleep(Duration::from_millis(50)) => {}
        }
    }
}

/// Sends one frame per item, then the end frame; stops on cancel from the caller, on an
/// error item, when the grace period after shutdown runs out, or when a caller that grants
/// credit grants none for `credit_wait`. The next item is produced only once the caller
/// granted it, so a slow reader holds the stream back instead of filling memory.
async fn stream_frames(
    label: &str,
    stream: BoxStream<'static, Frame>,
    replier: &mut Replier<'_>,
    control: &StreamControl,
    limits: Limits<'_>,
) -> Result<()> {
    let mut stream = std::pin::pin!(guard_stream(stream));
    let cancel = &control.cancel;
    let stopped = async {
        limits.shutdown.cancelled().await;
        tokio::time::sleep(limits.grace).await;
    };
    tokio::pin!(stopped);
    let mut items: u64 = 0;
    loop {
        let allowed = match &control.flow {
            Some(flow) => flow.wait_for(items, cancel, limits.credit_wait).await,
            // No credit (a Python caller): hold back while its reply queue is full.
            None if items > 0 && items.is_multiple_of(UNCREDITED_CHECK) => {
                let (broker, reply_to) = (replier.broker, replier.reply_to);
                backlog_below(broker, reply_to, cancel, limits.credit_wait).await
            }
            None => true,
        };
        if !allowed {
            if cancel.is_cancelled() {
                tracing::debug!(call = %label, "caller cancelled the stream");
                return Ok(());
            }
            let info = ErrorInfo::new(
                kind::TIMEOUT,
                format!(
                    "{label}: the caller read nothing for {:?} (rpc_timeout): stream stopped",
                    limits.credit_wait
                ),
            );
            return replier.send_error(&info, false).await;
        }
        let next = tokio::select! {
            next = stream.next() => next,
            _ = cancel.cancelled() => {
                tracing::debug!(call = %label, "caller cancelled the stream");
                return Ok(());
            }
            _ = &mut stopped => {
                let info = ErrorInfo::new(kind::INTERNAL, format!("{label}: the service shut down mid-stream"));
                return replier.send_error(&info, false).await;
            }
        };
        match next {
            Some(Ok(Frame::Item(bytes))) => {
                replier.send(&bytes).await?;
                items += 1;
            }
            Some(Ok(Frame::Error(info))) => return replier.send_error(&info, false).await,
            Some(Err(panic)) => return replier.send_error(&panicked(label, &panic), false).await,
            None => return replier.send(frame::END).await,
        }
    }
}

/// The `body` of an item frame, as the event a `broadcast` method publishes by default.
fn result_body(item: &[u8]) -> Vec<serde_json::Value> {
    match frame::decode(item) {
        Ok(frame::Incoming::Item(value)) => vec![value],
        _ => Vec::new(),
    }
}

/// Publishes a successful call's events to its fanout exchange. The call already succeeded,
/// so a failure here is logged, not turned into an error for the caller.
async fn broadcast(
    broker: &Broker,
    service: &str,
    label: &str,
    exchange: &str,
    events: &[serde_json::Value],
) {
    let mut properties = Properties::json().with_delivery_mode(2);
    // Part of the call's trace: one publish span for the call's events.
    let outgoing = crate::trace::Outgoing::publish(service, exchange, "");
    if let Some(outgoing) = &outgoing {
        outgoing.inject(&mut properties.headers);
    }
    let sending = async {
        for event in events {
            let body = match serde_json::to_vec(event) {
                Ok(body) => body,
                Err(err) => {
                    tracing::error!(call = %label, exchange, "event does not serialize: {err}");
                    continue;
                }
            };
            if let Err(err) = broker
                .publish(exchange, "", &body, properties.clone(), false)
                .await
            {
                tracing::error!(call = %label, exchange, "could not broadcast an event: {err}");
                if let Some(outgoing) = &outgoing {
                    outgoing.fail(&err);
                }
            }
        }
    };
    sending
        .instrument(crate::trace::Outgoing::span(outgoing.as_ref()))
        .await;
}

fn panicked(label: &str, text: &str) -> ErrorInfo {
    tracing::error!(call = %label, "method panicked: {text}");
    ErrorInfo::new(kind::INTERNAL, format!("{label} panicked: {text}"))
}

async fn settle(delivery: &Delivery, done: bool) {
    let result = if done {
        delivery.ack().await
    } else {
        delivery.nack(true).await
    };
    if let Err(err) = result {
        tracing::warn!("could not settle the request (it will be redelivered): {err}");
    }
}

/// One exclusive queue per service process that hears stream cancellations: every instance
/// hears them, and the one running the stream stops it. It listens until `drained` (after the
/// entry points drained at shutdown, so a stream dropped during the drain still stops).
pub(crate) async fn listen_for_cancels(
    service: &'static str,
    context: Arc<ServiceContext>,
    drained: CancellationToken,
) -> Result<tokio::task::JoinHandle<()>> {
    let queue = format!("farine.cancel.{service}.{}", uuid::Uuid::new_v4().simple());
    let mut notices = context
        .broker
        .private_queue(
            format!("{service}.cancels"),
            &queue,
            Some((service, &cancel_key(service))),
        )
        .await?;
    notices.binder().bind(service, &credit_key(service)).await?;
    Ok(tokio::spawn(async move {
        loop {
            let delivery = tokio::select! {
                _ = drained.cancelled() => break,
                next = notices.next() => match next {
                    Next::Delivery(delivery) => delivery,
                    Next::Lost(_) => {
                        if notices.recover().await.is_err() {
                            break;
                        }
                        continue;
                    }
                    Next::Cancelled => break,
                },
            };
            let body = &delivery.message.body;
            if delivery.message.routing_key == credit_key(service) {
                if let Ok(credit) = serde_json::from_slice::<Credit>(body) {
                    context
                        .streams
                        .grant(&credit.correlation_id, &credit.reply_to, credit.items);
                }
            } else if let Ok(cancel) = serde_json::from_slice::<Cancel>(body) {
                context
                    .streams
                    .cancel(&cancel.correlation_id, &cancel.reply_to);
            }
        }
        notices.close().await;
    }))
}
