//! The consume entry point: declares its exchange, queue and failure queues, then runs the
//! method for each delivery, concurrently up to the entry point's prefetch, and acks only
//! after the method returned `Ok` (or after a failed message was safely re-queued elsewhere).

use crate::broker::Broker;
use crate::config::{ExchangeKind, ServiceConfig};
use crate::context::ServiceContext;
use crate::deliveries::DeliveryLoop;
use crate::registry::{ConsumeEntry, Outcome};
use crate::retry::{self, RetryPolicy};
use crate::transport::{Declaration, Delivery, QueueOptions, Subscribe};
use crate::{Error, Result};
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// A consume entry point that is declared and attached to its queue.
pub(crate) struct Attached {
    deliveries: DeliveryLoop,
    shared: Arc<Shared>,
}

/// What every delivery task of one entry point needs.
struct Shared {
    entry: ConsumeEntry,
    context: Arc<ServiceContext>,
    broker: Arc<Broker>,
    queue: String,
    policy: RetryPolicy,
    max_message_bytes: usize,
}

/// Declares the topology of `entry` and starts consuming.
pub(crate) async fn attach(
    service: &str,
    entry: ConsumeEntry,
    context: Arc<ServiceContext>,
) -> Result<Attached> {
    let broker = context.broker.clone();
    let settings: &ServiceConfig = &context.settings;
    let spec = &entry.spec;
    let label = format!("{service}.{}", spec.method);
    let queue = spec.queue.unwrap_or(spec.routing_key).to_string();
    let prefetch = spec.concurrency.unwrap_or(settings.concurrency);
    let kind = match spec.exchange_type {
        Some(kind) => kind
            .parse::<ExchangeKind>()
            .map_err(|message| Error::Runtime(format!("{label}: exchange_type: {message}")))?,
        // The service's own exchange follows its section's `type`; others default to direct.
        None if spec.exchange == service => settings.exchange_type,
        None => ExchangeKind::Direct,
    };
    let policy = RetryPolicy::from_settings(settings);
    let mut topology = Vec::new();
    if settings.auto_declare {
        topology.push(Declaration::Exchange {
            name: spec.exchange.to_string(),
            kind,
            durable: settings.durable,
            auto_delete: settings.auto_delete,
        });
        topology.push(Declaration::Queue {
            name: queue.clone(),
            options: QueueOptions {
                durable: settings.durable,
                exclusive: settings.exclusive,
                auto_delete: settings.auto_delete,
                ..Default::default()
            },
        });
        topology.push(Declaration::Bind {
            queue: queue.clone(),
            exchange: spec.exchange.to_string(),
            routing_key: spec.routing_key.to_string(),
        });
    }
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
    )
    .await?;
    tracing::info!(entry_point = %label, queue = %queue, exchange = spec.exchange, routing_key = spec.routing_key, prefetch, "consumer attached");
    let max_message_bytes = settings.max_message_bytes;
    let shared = Arc::new(Shared {
        entry,
        context: context.clone(),
        broker,
        queue,
        policy,
        max_message_bytes,
    });
    Ok(Attached { deliveries, shared })
}

impl Attached {
    /// Handles deliveries until `shutdown`, then lets the in-flight ones finish within `grace`.
    pub(crate) async fn run(self, shutdown: CancellationToken, grace: Duration) -> Result<()> {
        let shared = self.shared;
        self.deliveries
            .run(shutdown, grace, move |delivery| {
                handle(shared.clone(), delivery)
            })
            .await
    }
}

/// Runs the handler for one delivery and settles it with the broker.
async fn handle(shared: Arc<Shared>, delivery: Delivery) {
    let queue = shared.queue.as_str();
    let message = &delivery.message;
    let outcome = if message.body.len() > shared.max_message_bytes {
        Outcome::Poison(format!(
            "message of {} bytes is over max_message_bytes = {}",
            message.body.len(),
            shared.max_message_bytes
        ))
    } else {
        (shared.entry.handler)(shared.context.clone(), &message.body).await
    };
    let settled = match &outcome {
        Outcome::Done => Ok(()),
        Outcome::Failed(reason) => {
            retry::retry_or_dead_letter(&shared.broker, queue, message, reason, &shared.policy)
                .await
        }
        Outcome::Poison(reason) => {
            tracing::warn!(queue, "undecodable message: {reason}");
            retry::dead_letter(&shared.broker, queue, message, reason, 1).await
        }
    };
    let acked = match settled {
        Ok(()) => delivery.ack().await,
        Err(err) => {
            // Keep the message: back to the queue rather than lost.
            tracing::error!(
                queue,
                "could not retry or dead-letter the message, requeueing it: {err}"
            );
            delivery.nack(true).await
        }
    };
    if let Err(err) = acked {
        tracing::warn!(
            queue,
            "could not settle the message (it will be redelivered): {err}"
        );
    }
}
