//! The consume entry point: declares its exchange, queue and failure queues, then runs the
//! method for each delivery, concurrently up to the entry point's prefetch, and acks only
//! after the method returned `Ok` (or after a failed message was safely re-queued elsewhere).

use super::deliveries::{queue_topology, DeliveryLoop, Turn};
use super::EntryPoint;
use crate::broker::Broker;
use crate::config::{ExchangeKind, ServiceConfig};
use crate::context::ServiceContext;
use crate::middleware::{Call, Disposition, EntryKind, Handled};
use crate::outcome::{guard_outcome, HandlerResult, Outcome};
use crate::retry::{self, RetryPolicy};
use crate::transport::{Delivery, Subscribe};
use crate::{Error, Result};
use futures::future::BoxFuture;
use futures::FutureExt;
use serde::de::DeserializeOwned;
use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// `#[amqp::consume(...)]` as written: what is not given is decided by `ConsumeSpec::resolve`.
#[derive(Clone, Debug)]
pub struct ConsumeAttr {
    pub method: &'static str,
    pub exchange: Option<&'static str>,
    pub routing_key: Option<&'static str>,
    pub exchange_type: Option<&'static str>,
    pub queue: Option<&'static str>,
    pub concurrency: Option<u16>,
}

/// A consumer as it runs: its attribute resolved against the service's name and settings.
#[derive(Clone, Debug)]
pub(crate) struct ConsumeSpec {
    pub label: String,
    pub exchange: &'static str,
    pub kind: ExchangeKind,
    pub routing_key: &'static str,
    pub queue: String,
    /// Calls running at once, and deliveries prefetched.
    pub concurrency: u16,
    pub prefetch: u16,
}

impl ConsumeSpec {
    /// The one place a consumer's defaults are decided: exchange and routing key are the
    /// service's name; the queue is the routing key; the service's own exchange has its
    /// section's `type`, any other `direct`; the concurrency is the section's, the prefetch
    /// follows it (`ServiceConfig::prefetch_for`).
    pub(crate) fn resolve(
        service: &'static str,
        attr: &ConsumeAttr,
        settings: &ServiceConfig,
    ) -> Result<ConsumeSpec> {
        let label = format!("{service}.{}", attr.method);
        let exchange = attr.exchange.unwrap_or(service);
        let routing_key = attr.routing_key.unwrap_or(service);
        let kind = match attr.exchange_type {
            Some(kind) => kind
                .parse::<ExchangeKind>()
                .map_err(|message| Error::Runtime(format!("{label}: exchange_type: {message}")))?,
            None if exchange == service => settings.exchange_type,
            None => ExchangeKind::Direct,
        };
        Ok(ConsumeSpec {
            queue: attr.queue.unwrap_or(routing_key).to_string(),
            concurrency: attr.concurrency.unwrap_or(settings.concurrency),
            prefetch: settings.prefetch_for(attr.concurrency.unwrap_or(settings.concurrency)),
            label,
            exchange,
            kind,
            routing_key,
        })
    }
}

/// Runs the user's method on a raw body.
pub type ConsumeHandler =
    Arc<dyn Fn(Arc<ServiceContext>, &[u8]) -> BoxFuture<'static, Outcome> + Send + Sync>;

/// Builds the handler of a consume entry point: decode the body as `T`, call the method,
/// and turn a panic into a failure instead of a dead task.
pub fn consume_handler<S, T, F, Fut>(service: Arc<S>, method: F) -> ConsumeHandler
where
    S: Send + Sync + 'static,
    T: DeserializeOwned + Send + 'static,
    F: Fn(Arc<S>, Arc<ServiceContext>, T) -> Fut + Send + Sync + 'static,
    Fut: Future + Send + 'static,
    Fut::Output: HandlerResult,
{
    Arc::new(move |context: Arc<ServiceContext>, body: &[u8]| {
        // Decoding is synchronous: only the method's own future runs in the task.
        let value: T = match serde_json::from_slice(body) {
            Ok(value) => value,
            Err(err) => {
                let reason = crate::clip::clip_owned(format!(
                    "body does not decode as {}: {err}",
                    std::any::type_name::<T>()
                ));
                return futures::future::ready(Outcome::Poison(reason)).boxed();
            }
        };
        guard_outcome(method(service.clone(), context, value)).boxed()
    })
}

/// A consume entry point that is declared and attached to its queue.
pub(crate) struct Attached {
    deliveries: DeliveryLoop,
    shared: Arc<Shared>,
}

/// What every delivery task of one entry point needs.
struct Shared {
    /// `service.method`.
    label: String,
    handler: ConsumeHandler,
    context: Arc<ServiceContext>,
    broker: Arc<Broker>,
    queue: String,
    policy: RetryPolicy,
    max_message_bytes: usize,
}

/// Declares the topology of a consumer and starts consuming.
pub(crate) async fn attach(
    service: &'static str,
    attr: ConsumeAttr,
    handler: ConsumeHandler,
    context: Arc<ServiceContext>,
) -> Result<Attached> {
    let broker = context.broker.clone();
    let settings: &ServiceConfig = &context.settings;
    let spec = ConsumeSpec::resolve(service, &attr, settings)?;
    let ConsumeSpec {
        label,
        exchange,
        kind,
        routing_key,
        queue,
        concurrency,
        prefetch,
    } = spec;
    let policy = RetryPolicy::from_settings(settings);
    let mut topology = queue_topology(settings, exchange, kind, &queue, routing_key);
    topology.extend(retry::topology(&queue, &policy));
    let deliveries = DeliveryLoop::start(
        &broker,
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
    tracing::info!(entry_point = %label, queue = %queue, exchange, routing_key, concurrency, prefetch, "consumer attached");
    let max_message_bytes = settings.max_message_bytes;
    let shared = Arc::new(Shared {
        label: label.clone(),
        handler,
        context: context.clone(),
        broker,
        queue,
        policy,
        max_message_bytes,
    });
    Ok(Attached { deliveries, shared })
}

impl EntryPoint for Attached {
    /// Handles deliveries until `shutdown`, then lets the in-flight ones finish within `grace`.
    fn run(
        self: Box<Self>,
        shutdown: CancellationToken,
        grace: Duration,
    ) -> BoxFuture<'static, Result<()>> {
        let Attached { deliveries, shared } = *self;
        deliveries
            .run(shutdown, grace, move |delivery, turn| {
                handle(shared.clone(), delivery, turn)
            })
            .boxed()
    }
}

/// Handles one delivery through the service's middleware, if any.
async fn handle(shared: Arc<Shared>, delivery: Delivery, turn: Turn) {
    let chain = &shared.context.middleware;
    let handled = if chain.is_empty() {
        settle_one(&shared, &delivery, turn).await
    } else {
        let message = &delivery.message;
        let call = Call {
            service: &shared.context.settings.name,
            entry_point: &shared.label,
            kind: EntryKind::Consume,
            queue: &shared.queue,
            exchange: &message.exchange,
            routing_key: &message.routing_key,
            correlation_id: message.properties.correlation_id.as_deref(),
            headers: &message.properties.headers,
            attempt: retry::retried(message, &shared.queue) + 1,
        };
        let ran = AtomicBool::new(false);
        let handling = async {
            ran.store(true, Ordering::Relaxed);
            settle_one(&shared, &delivery, turn).await
        };
        let handled = chain.run(&call, handling.boxed()).await;
        if !ran.load(Ordering::Relaxed) {
            // A middleware answered without handling it: the broker delivers it again.
            if let Err(err) = delivery.nack(true).await {
                tracing::warn!(queue = %shared.queue, "could not requeue the message: {err}");
            }
        }
        handled
    };
    crate::observe::handled(
        &shared.context.settings.amqp_uri,
        &shared.label,
        &handled.outcome,
    );
}

/// Runs the handler for one delivery and settles it with the broker.
async fn settle_one(shared: &Shared, delivery: &Delivery, turn: Turn) -> Handled {
    let queue = shared.queue.as_str();
    let message = &delivery.message;
    let outcome = if message.body.len() > shared.max_message_bytes {
        Outcome::Poison(format!(
            "message of {} bytes is over max_message_bytes = {}",
            message.body.len(),
            shared.max_message_bytes
        ))
    } else {
        let call = (shared.handler)(shared.context.clone(), &message.body);
        crate::context::scope(shared.context.clone(), call).await
    };
    // The method returned: another call may start while this one is retried or acked.
    drop(turn);
    let settled = match &outcome {
        Outcome::Done => Ok(Disposition::Acked),
        Outcome::Failed(reason) => {
            retry::retry_or_dead_letter(&shared.broker, queue, message, reason, &shared.policy)
                .await
        }
        Outcome::Poison(reason) => {
            tracing::warn!(queue, "undecodable message: {reason}");
            retry::dead_letter(&shared.broker, queue, message, reason, 1)
                .await
                .map(|()| Disposition::DeadLettered)
        }
    };
    let (acked, disposition) = match settled {
        Ok(disposition) => (delivery.ack().await, disposition),
        Err(err) => {
            // Keep the message: back to the queue rather than lost.
            tracing::error!(
                queue,
                "could not retry or dead-letter the message, requeueing it: {err}"
            );
            (delivery.nack(true).await, Disposition::Requeued)
        }
    };
    if let Err(err) = acked {
        tracing::warn!(
            queue,
            "could not settle the message (it will be redelivered): {err}"
        );
    }
    Handled::new(crate::observe::handling(&outcome), disposition)
}
