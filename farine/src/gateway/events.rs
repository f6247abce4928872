//! Broadcasts for browsers: one private queue per subscribed exchange (made at start, never per
//! browser), its events numbered and kept in a bounded ring for `Last-Event-ID` resumption, and
//! fanned out to every browser following the exchange.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::ws::Utf8Bytes;
use futures::FutureExt;
use serde_json::Value;
use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;

use crate::broker::Broker;
use crate::config::{GatewaySettings, ServiceConfig};
use crate::transport::Next;

/// How long to wait before looking again for an exchange that does not exist yet, or binding
/// again after a failure.
const RETRY: Duration = Duration::from_secs(2);

/// One event of an exchange.
pub(crate) struct Event {
    /// Its SSE id: `<gateway epoch>-<sequence>`.
    pub id: String,
    pub seq: u64,
    /// The message body, as compact JSON.
    pub data: String,
    /// The WebSocket message `{"event": exchange, "id": ..., "data": ...}`, made once for every socket.
    pub ws: Utf8Bytes,
}

struct Ring {
    next: u64,
    events: VecDeque<Arc<Event>>,
}

/// The events of one exchange.
pub(crate) struct Feed {
    pub exchange: String,
    epoch: Arc<str>,
    capacity: usize,
    ring: Mutex<Ring>,
    sender: broadcast::Sender<Arc<Event>>,
}

impl Feed {
    fn push(&self, data: String) {
        let mut ring = self.ring.lock().unwrap_or_else(|p| p.into_inner());
        let seq = ring.next;
        ring.next += 1;
        let id = format!("{}-{seq}", self.epoch);
        let ws = format!(
            "{{\"event\":{},\"id\":\"{id}\",\"data\":{data}}}",
            Value::String(self.exchange.clone())
        );
        let event = Arc::new(Event {
            id,
            seq,
            data,
            ws: Utf8Bytes::from(ws),
        });
        if ring.events.len() == self.capacity {
            ring.events.pop_front();
        }
        ring.events.push_back(event.clone());
        // No follower is not an error.
        let _ = self.sender.send(event);
    }

    /// The kept events after `last_id` (none when it is absent, not one of this gateway's ids
    /// or from before its start), then the live ones: taken together, so none is missed or
    /// doubled in between.
    pub fn follow(
        &self,
        last_id: Option<&str>,
    ) -> (Vec<Arc<Event>>, broadcast::Receiver<Arc<Event>>) {
        let ring = self.ring.lock().unwrap_or_else(|p| p.into_inner());
        let after = last_id
            .and_then(|id| id.split_once('-'))
            .filter(|(epoch, _)| *epoch == &*self.epoch)
            .and_then(|(_, seq)| seq.parse::<u64>().ok());
        let missed = match after {
            Some(after) => ring
                .events
                .iter()
                .filter(|event| event.seq > after)
                .cloned()
                .collect(),
            None => Vec::new(),
        };
        (missed, self.sender.subscribe())
    }
}

/// The feeds of every subscribed exchange.
pub(crate) struct Hub {
    feeds: HashMap<String, Arc<Feed>>,
}

impl Hub {
    /// Starts a feed per `subscribe` entry; each binds its queue once its exchange exists.
    pub async fn start(
        settings: &GatewaySettings,
        section: &ServiceConfig,
        broker: Arc<Broker>,
        shutdown: &CancellationToken,
    ) -> (Hub, Vec<tokio::task::JoinHandle<()>>) {
        let epoch: Arc<str> = Arc::from(format!("{:08x}", rand::random::<u32>()));
        let gateway = uuid::Uuid::new_v4().simple().to_string();
        let mut feeds = HashMap::new();
        let mut tasks = Vec::new();
        for (index, subscription) in settings.subscribe.iter().enumerate() {
            let (sender, _) = broadcast::channel(settings.send_queue.max(16));
            let feed = Arc::new(Feed {
                exchange: subscription.exchange.clone(),
                epoch: epoch.clone(),
                capacity: settings.replay_events,
                ring: Mutex::new(Ring {
                    next: 1,
                    events: VecDeque::new(),
                }),
                sender,
            });
            feeds.insert(subscription.exchange.clone(), feed.clone());
            let queue = format!("farine.gateway.{gateway}.{index}");
            let max_bytes = section.max_message_bytes;
            // Bound before the gateway listens when the exchange exists: a browser told
            // "subscribed" then gets every event broadcast after.
            let follow = match attach(&feed, &broker, &queue, &subscription.binding_key).await {
                Ok(Some(bound)) => consume(feed, bound, max_bytes).boxed(),
                _ => pump(
                    feed,
                    broker.clone(),
                    queue,
                    subscription.binding_key.clone(),
                    max_bytes,
                )
                .boxed(),
            };
            let stop = shutdown.clone();
            tasks.push(tokio::spawn(async move {
                tokio::select! {
                    () = follow => {}
                    () = stop.cancelled() => {}
                }
            }));
        }
        (Hub { feeds }, tasks)
    }

    pub fn feed(&self, exchange: &str) -> Option<&Arc<Feed>> {
        self.feeds.get(exchange)
    }
}

/// The queue of `feed` bound to its exchange, if the exchange exists; `Ok(None)` if not yet.
async fn attach(
    feed: &Feed,
    broker: &Broker,
    queue: &str,
    binding_key: &str,
) -> crate::Result<Option<Box<dyn crate::transport::Subscription>>> {
    let exchange = &feed.exchange;
    if !broker.exchange_exists(exchange).await? {
        return Ok(None);
    }
    let subscription = broker
        .private_queue(
            format!("gateway {exchange}"),
            queue,
            Some((exchange, binding_key)),
        )
        .await?;
    tracing::info!("gateway: following exchange {exchange:?} ({binding_key})");
    Ok(Some(subscription))
}

/// Binds the feed's queue once its exchange exists, then consumes it.
async fn pump(
    feed: Arc<Feed>,
    broker: Arc<Broker>,
    queue: String,
    binding_key: String,
    max_bytes: usize,
) {
    let exchange = feed.exchange.clone();
    let mut warned = false;
    let subscription = loop {
        match attach(&feed, &broker, &queue, &binding_key).await {
            Ok(Some(subscription)) => break subscription,
            Ok(None) if !warned => {
                warned = true;
                tracing::warn!(
                    "gateway: exchange {exchange:?} (in [gateway] subscribe) does not exist yet \
                     (is the service that broadcasts on it started?): following it once it does"
                );
            }
            Ok(None) => {}
            Err(err) => tracing::warn!("gateway: cannot follow exchange {exchange:?}: {err}"),
        }
        tokio::time::sleep(RETRY).await;
    };
    consume(feed, subscription, max_bytes).await;
}

/// Consumes the exchange's events into its feed, through reconnections, for ever.
async fn consume(
    feed: Arc<Feed>,
    mut subscription: Box<dyn crate::transport::Subscription>,
    max_bytes: usize,
) {
    let exchange = feed.exchange.clone();
    loop {
        match subscription.next().await {
            Next::Delivery(delivery) => {
                let body = &delivery.message.body;
                if body.len() > max_bytes {
                    tracing::warn!(
                        "gateway: an event of {} bytes on {exchange:?} is over max_message_bytes \
                         ({max_bytes}): not passed on",
                        body.len()
                    );
                    continue;
                }
                match serde_json::from_slice::<Value>(body) {
                    Ok(value) => feed.push(value.to_string()),
                    Err(err) => tracing::warn!(
                        "gateway: an event on {exchange:?} is not JSON ({err}): not passed on"
                    ),
                }
            }
            Next::Lost(why) => {
                tracing::warn!("gateway: following {exchange:?}: connection lost ({why})");
                while let Err(err) = subscription.recover().await {
                    tracing::warn!("gateway: following {exchange:?}: {err}");
                    tokio::time::sleep(RETRY).await;
                }
            }
            Next::Cancelled => {
                while let Err(err) = subscription.reattach().await {
                    tracing::warn!("gateway: following {exchange:?} again: {err}");
                    tokio::time::sleep(RETRY).await;
                }
            }
        }
    }
}
