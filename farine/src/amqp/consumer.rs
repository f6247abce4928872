//! The consume entry point: declares its exchange, queue and failure queues, then runs the
//! method for each delivery, concurrently up to the entry point's prefetch, and acks only
//! after the method returned `Ok` (or after a failed message was safely re-queued elsewhere).

use crate::broker::{Broker, QueueOptions};
use crate::config::{ExchangeKind, ServiceConfig};
use crate::context::ServiceContext;
use crate::deliveries::{Declare, Subscription};
use crate::registry::{ConsumeEntry, Outcome};
use crate::retry::{self, RetryPolicy};
use crate::{Error, Result};
use futures::FutureExt;
use lapin::message::Delivery;
use lapin::options::{BasicAckOptions, BasicNackOptions};
use lapin::types::FieldTable;
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// A consume entry point that is declared and attached to its queue.
pub(crate) struct Attached {
    subscription: Subscription,
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
    let channel = broker.consume_channel(prefetch).await?;
    let policy = RetryPolicy::from_settings(settings);
    let declare: Declare = {
        let broker = broker.clone();
        let (exchange, routing_key) = (spec.exchange, spec.routing_key);
        let queue = queue.clone();
        let policy = policy.clone();
        let auto_declare = settings.auto_declare;
        let (durable, auto_delete) = (settings.durable, settings.auto_delete);
        let options = QueueOptions {
            durable,
            exclusive: settings.exclusive,
            auto_delete,
            arguments: FieldTable::default(),
        };
        Arc::new(move |channel| {
            let (broker, queue, policy, options) = (
                broker.clone(),
                queue.clone(),
                policy.clone(),
                options.clone(),
            );
            async move {
                if auto_declare {
                    broker
                        .declare_exchange(exchange, kind, durable, auto_delete)
                        .await?;
                    Broker::declare_queue(
                        &channel,
                        &queue,
                        &options,
                        Some((exchange, routing_key)),
                    )
                    .await?;
                }
                retry::declare(&channel, &queue, &policy).await
            }
            .boxed()
        })
    };
    let subscription = Subscription::start(label.clone(), queue.clone(), channel, declare).await?;
    tracing::info!(entry_point = %label, queue = %queue, exchange = spec.exchange, routing_key = spec.routing_key, prefetch, "consumer attached");
    let max_message_bytes = settings.max_message_bytes;
    let shared = Arc::new(Shared {
        entry,
        context: context.clone(),
        broker,
        queue: queue.clone(),
        policy,
        max_message_bytes,
    });
    Ok(Attached {
        subscription,
        shared,
    })
}

impl Attached {
    /// Handles deliveries until `shutdown`, then lets the in-flight ones finish within `grace`.
    pub(crate) async fn run(self, shutdown: CancellationToken, grace: Duration) -> Result<()> {
        let shared = self.shared;
        self.subscription
            .run(shutdown, grace, move |delivery| {
                handle(shared.clone(), delivery)
            })
            .await
    }
}

/// Runs the handler for one delivery and settles it with the broker.
async fn handle(shared: Arc<Shared>, delivery: Delivery) {
    let queue = shared.queue.as_str();
    let outcome = if delivery.data.len() > shared.max_message_bytes {
        Outcome::Poison(format!(
            "message of {} bytes is over max_message_bytes = {}",
            delivery.data.len(),
            shared.max_message_bytes
        ))
    } else {
        (shared.entry.handler)(shared.context.clone(), &delivery.data).await
    };
    let settled = match &outcome {
        Outcome::Done => Ok(()),
        Outcome::Failed(reason) => {
            retry::retry_or_dead_letter(&shared.broker, queue, &delivery, reason, &shared.policy)
                .await
        }
        Outcome::Poison(reason) => {
            tracing::warn!(
                queue,
                delivery_tag = delivery.delivery_tag,
                "undecodable message: {reason}"
            );
            retry::dead_letter(&shared.broker, queue, &delivery, reason, 1).await
        }
    };
    let acked = match settled {
        Ok(()) => delivery.ack(BasicAckOptions::default()).await,
        Err(err) => {
            // Keep the message: back to the queue rather than lost.
            tracing::error!(
                queue,
                delivery_tag = delivery.delivery_tag,
                "could not retry or dead-letter the message, requeueing it: {err}"
            );
            delivery
                .nack(BasicNackOptions {
                    requeue: true,
                    ..Default::default()
                })
                .await
        }
    };
    if let Err(err) = acked {
        tracing::warn!(
            queue,
            delivery_tag = delivery.delivery_tag,
            "could not settle the message (it will be redelivered): {err}"
        );
    }
}
