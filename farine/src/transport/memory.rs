//! The transport in process memory: a broker with AMQP 0-9-1's semantics where farine relies
//! on them, so services, clients and the dead-letter tools run with no RabbitMQ
//! (`amqp_uri = memory://NAME`).
//!
//! - **Exchanges**: direct, topic (`*` one word, `#` zero or more), fanout and headers
//!   (`x-match` all/any); the default exchange `""` routes to the queue named by the routing
//!   key; `amq.direct`, `amq.topic`, `amq.fanout`, `amq.headers` and `amq.match` exist.
//! - **Queues**: `durable` is accepted and ignored (nothing persists); exclusive queues belong
//!   to their connection and go with it (or with the subscription that declared them);
//!   auto-delete queues go when their last consumer does. A queue TTL and a message's
//!   `expiration` expire messages at the head of the queue, as RabbitMQ does, on tokio timers
//!   (a paused test clock drives them); expired and rejected messages are dead-lettered with an
//!   `x-death` entry kept as RabbitMQ keeps it (newest first, one per queue and reason, with a
//!   count), and a fully automatic dead-letter cycle drops the message.
//! - **Consuming**: prefetch per subscription (0 unlimited), ack, nack with or without requeue
//!   (a requeued message goes back to the head, marked redelivered), unacked messages back to
//!   their queue when the subscription closes or is dropped, `no_ack`, and
//!   [`Next::Cancelled`] when the consumed queue is deleted ([`Memory::delete_queue`]).
//! - **Publishing**: the confirm resolves once the message is routed; a mandatory message no
//!   queue receives is [`Error::Unroutable`]; a missing exchange is an error.
//!
//! Every [`Memory`] is one connection to a broker of the process: [`Memory::open`] with the
//! same name reaches the same broker, which lives as long as the process. Direct reply-to
//! works as on RabbitMQ, paired per connection rather than per channel (see `memory/direct_reply.rs`).
//! Not supported: exchange-to-exchange bindings, alternate exchanges, queue length limits,
//! priorities.

mod direct_reply;

use super::{
    Binder, Confirm, Declaration, Delivery, HeaderValue, Headers, Message, Moved, Next, Outgoing,
    Properties, QueueOptions, Settle, Subscribe, Subscription, Transport,
};
use crate::config::ExchangeKind;
use crate::{Error, Result};
use futures::future::BoxFuture;
use futures::FutureExt;
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use tokio::sync::Notify;
use tokio::time::{Duration, Instant};

/// The URI scheme of in-process brokers.
pub const SCHEME: &str = "memory://";

/// The broker name of a `memory://NAME` URI (`""` for `memory://`), `None` for any other
/// scheme. A trailing `/` is not part of the name.
///
/// ```
/// use farine::transport::memory::broker_name;
/// assert_eq!(broker_name("memory://orders"), Some("orders"));
/// assert_eq!(broker_name("MEMORY://"), Some(""));
/// assert_eq!(broker_name("amqp://localhost"), None);
/// ```
pub fn broker_name(uri: &str) -> Option<&str> {
    let head = uri.get(..SCHEME.len())?;
    head.eq_ignore_ascii_case(SCHEME)
        .then(|| uri[SCHEME.len()..].trim_end_matches('/'))
}

/// The named brokers of the process.
fn registry() -> &'static Mutex<HashMap<String, Arc<Node>>> {
    static BROKERS: OnceLock<Mutex<HashMap<String, Arc<Node>>>> = OnceLock::new();
    BROKERS.get_or_init(Default::default)
}

/// Connection ids, unique in the process (a broker's channels point at them).
static CONNECTIONS: AtomicU64 = AtomicU64::new(1);

/// One connection to an in-process broker.
pub struct Memory {
    node: Arc<Node>,
    connection: u64,
    closed: AtomicBool,
    /// Kept so the receivers never see the watch end: nothing is ever lost in memory.
    losses: tokio::sync::watch::Sender<u64>,
}

impl std::fmt::Debug for Memory {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Memory")
            .field("broker", &self.node.name)
            .field("connection", &self.connection)
            .finish()
    }
}

impl Memory {
    /// A new connection to the process's broker called `name` (created on first use).
    pub fn open(name: &str) -> Memory {
        let node = registry()
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .entry(name.to_string())
            .or_insert_with(|| Node::new(name))
            .clone();
        Memory::on(node)
    }

    /// A connection to a broker of its own, which no other [`Memory::open`] reaches; more
    /// connections to it with [`Memory::connect`].
    pub fn isolated() -> Memory {
        Memory::on(Node::new("(isolated)"))
    }

    /// Another connection to the same broker.
    pub fn connect(&self) -> Memory {
        Memory::on(self.node.clone())
    }

    fn on(node: Arc<Node>) -> Memory {
        Memory {
            node,
            connection: CONNECTIONS.fetch_add(1, Ordering::Relaxed),
            closed: AtomicBool::new(false),
            losses: tokio::sync::watch::channel(0).0,
        }
    }

    /// Deletes a queue with its messages and bindings; its consumers get [`Next::Cancelled`].
    /// Returns how many ready messages it held, `None` when there was no such queue.
    pub fn delete_queue(&self, queue: &str) -> Option<usize> {
        self.node.with(|state| state.delete_queue(queue))
    }

    /// Deletes an exchange with its bindings; `false` when there was no such exchange.
    pub fn delete_exchange(&self, exchange: &str) -> bool {
        self.node
            .with(|state| !exchange.is_empty() && state.exchanges.remove(exchange).is_some())
    }

    /// Binds `queue` to `exchange` with binding arguments, such as a headers exchange's
    /// (`x-match` = `all` or `any`, and the headers to match); the [`Transport`] binds
    /// without arguments.
    pub fn bind_with_arguments(
        &self,
        queue: &str,
        exchange: &str,
        routing_key: &str,
        arguments: Headers,
    ) -> Result<()> {
        self.check_open()?;
        self.node.with(|state| {
            state.bind(
                self.connection,
                Binding {
                    queue: queue.to_string(),
                    routing_key: routing_key.to_string(),
                    arguments,
                },
                exchange,
            )
        })
    }

    fn check_open(&self) -> Result<()> {
        if self.closed.load(Ordering::Acquire) {
            return Err(Error::Runtime(format!(
                "the connection to {} is closed",
                self.describe()
            )));
        }
        Ok(())
    }
}

/// One in-process broker and its state.
struct Node {
    name: String,
    state: Mutex<State>,
}

impl Node {
    fn new(name: &str) -> Arc<Node> {
        let mut state = State::default();
        for (name, kind) in [
            ("amq.direct", ExchangeKind::Direct),
            ("amq.topic", ExchangeKind::Topic),
            ("amq.fanout", ExchangeKind::Fanout),
            ("amq.headers", ExchangeKind::Headers),
            ("amq.match", ExchangeKind::Headers),
        ] {
            state
                .exchanges
                .insert(name.to_string(), Exchange::new(kind, false));
        }
        Arc::new(Node {
            name: name.to_string(),
            state: Mutex::new(state),
        })
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Runs `f` on the state, then starts the expiry timers it asked for and wakes the
    /// subscriptions whose next step it may have changed (only those: waking every consumer
    /// of the broker at each publish cost more than the routing itself).
    fn with<T>(self: &Arc<Self>, f: impl FnOnce(&mut State) -> T) -> T {
        let (result, timers, wake) = {
            let mut state = self.lock();
            let result = f(&mut state);
            let wake = std::mem::take(&mut state.wake);
            (result, std::mem::take(&mut state.timers), wake)
        };
        for (queue, timer) in timers {
            self.start_timer(queue, timer);
        }
        for channel in wake {
            // A permit is kept when the subscription is not waiting yet: it looks again.
            channel.notify_one();
        }
        result
    }

    /// Expires the head of `queue` at `timer.at`, on a tokio timer of the caller's runtime
    /// (without one, or once that runtime is gone, expiry happens at the next access to the
    /// queue, which starts a timer again).
    fn start_timer(self: &Arc<Self>, queue: String, timer: Timer) {
        /// Marks the timer dead when its task ends or is dropped with its runtime.
        struct Alive(Arc<AtomicBool>);
        impl Drop for Alive {
            fn drop(&mut self) {
                self.0.store(false, Ordering::Release);
            }
        }
        let alive = Alive(timer.alive.clone());
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let node = self.clone();
        runtime.spawn(async move {
            let _alive = alive;
            tokio::time::sleep_until(timer.at).await;
            node.with(|state| {
                if let Some(q) = state.queues.get_mut(&queue) {
                    if q.timer.as_ref().is_some_and(|t| t.same(&timer)) {
                        q.timer = None;
                    }
                }
                state.expire(&queue);
            });
        });
    }
}

#[derive(Default)]
struct State {
    exchanges: HashMap<String, Exchange>,
    queues: HashMap<String, Queue>,
    channels: HashMap<u64, Channel>,
    /// Ids of queues (a queue deleted and declared again is another one), channels and
    /// delivery tags.
    next_id: u64,
    /// Expiry timers to start once the state is unlocked.
    timers: Vec<(String, Timer)>,
    /// The signals of the subscriptions to wake once the state is unlocked.
    wake: Vec<Arc<Notify>>,
}

struct Exchange {
    kind: ExchangeKind,
    auto_delete: bool,
    bindings: Vec<Binding>,
}

impl Exchange {
    fn new(kind: ExchangeKind, auto_delete: bool) -> Exchange {
        Exchange {
            kind,
            auto_delete,
            bindings: Vec::new(),
        }
    }
}

#[derive(Clone, Debug, PartialEq)]
struct Binding {
    queue: String,
    routing_key: String,
    arguments: Headers,
}

struct Queue {
    id: u64,
    options: QueueOptions,
    /// The connection an exclusive queue belongs to.
    owner: Option<u64>,
    ready: VecDeque<Stored>,
    /// The channels consuming it.
    consumers: Vec<u64>,
    /// The pending expiry timer, if one is pending.
    timer: Option<Timer>,
}

/// An expiry timer of a queue.
#[derive(Clone)]
struct Timer {
    at: Instant,
    /// False once its task ended or was dropped (its runtime shut down: a test's runtime,
    /// while the broker lives on in the process).
    alive: Arc<AtomicBool>,
}

impl Timer {
    fn same(&self, other: &Timer) -> bool {
        self.at == other.at && Arc::ptr_eq(&self.alive, &other.alive)
    }
}

#[derive(Clone)]
struct Stored {
    message: Message,
    expires_at: Option<Instant>,
}

/// A subscription's channel: what it consumes, and its unacked deliveries.
struct Channel {
    connection: u64,
    prefetch: u16,
    no_ack: bool,
    /// The queue consumed (name and id), `None` once cancelled (by the subscriber or because
    /// the queue was deleted).
    consuming: Option<(String, u64)>,
    /// By delivery tag: the queue (name and id) it came from, and the message.
    unacked: BTreeMap<u64, (String, u64, Stored)>,
    /// Exclusive queues this subscription declared: they go when it closes.
    exclusive: Vec<String>,
    /// Its connection was closed.
    lost: bool,
    /// Wakes its subscription when it may have a next step.
    wake: Arc<Notify>,
}

/// What a subscription's next step is, decided under the lock.
// Made once per delivery and moved out at once: boxing the message would only add an
// allocation.
#[allow(clippy::large_enum_variant)]
enum Taken {
    Message(Message, Option<u64>),
    Lost,
    Cancelled,
}

impl State {
    fn id(&mut self) -> u64 {
        self.next_id += 1;
        self.next_id
    }

    /// Wakes the subscription of `channel` once the state is unlocked.
    fn wake_channel(&mut self, channel: u64) {
        if let Some(c) = self.channels.get(&channel) {
            self.wake.push(c.wake.clone());
        }
    }

    /// Wakes the consumers of `queue`: it has a message for them.
    fn wake_consumers(&mut self, queue: &str) {
        let Some(q) = self.queues.get(queue) else {
            return;
        };
        for channel in &q.consumers {
            if let Some(c) = self.channels.get(channel) {
                self.wake.push(c.wake.clone());
            }
        }
    }

    /// Declares `topology` for `connection`; exclusive queues declared are added to
    /// `exclusive` when given (a subscription's own).
    fn declare(
        &mut self,
        connection: u64,
        topology: &[Declaration],
        mut exclusive: Option<&mut Vec<String>>,
    ) -> Result<()> {
        for declaration in topology {
            match declaration {
                Declaration::Exchange {
                    name,
                    kind,
                    auto_delete,
                    ..
                } => {
                    if name.is_empty() {
                        continue;
                    }
                    match self.exchanges.get(name) {
                        Some(existing) if existing.kind != *kind => tracing::warn!(
                            exchange = %name,
                            kind = kind.as_str(),
                            "exchange exists with other settings; using it as it is ({})",
                            existing.kind.as_str()
                        ),
                        Some(_) => {}
                        None => {
                            self.exchanges
                                .insert(name.clone(), Exchange::new(*kind, *auto_delete));
                        }
                    }
                }
                Declaration::Queue { name, options } => {
                    self.declare_queue(connection, name, options)?;
                    if options.exclusive {
                        if let Some(exclusive) = exclusive.as_deref_mut() {
                            if !exclusive.contains(name) {
                                exclusive.push(name.clone());
                            }
                        }
                    }
                }
                Declaration::Bind {
                    queue,
                    exchange,
                    routing_key,
                } => self.bind(
                    connection,
                    Binding {
                        queue: queue.clone(),
                        routing_key: routing_key.clone(),
                        arguments: Headers::new(),
                    },
                    exchange,
                )?,
            }
        }
        Ok(())
    }

    fn declare_queue(&mut self, connection: u64, name: &str, options: &QueueOptions) -> Result<()> {
        if name.is_empty() {
            return Err(Error::Runtime(
                "declaring a queue without a name: the memory broker does not name queues".into(),
            ));
        }
        if let Some(existing) = self.queues.get(name) {
            check_owner(existing, connection, name)?;
            // As RabbitMQ's equivalence check, less `durable` (ignored here) and `exclusive`
            // (the owner check above).
            fn same(o: &QueueOptions) -> (bool, Option<u64>, &Option<String>, &Option<String>) {
                (
                    o.auto_delete,
                    o.message_ttl_ms,
                    &o.dead_letter_exchange,
                    &o.dead_letter_routing_key,
                )
            }
            if same(&existing.options) != same(options) {
                return Err(Error::Runtime(format!(
                    "declaring queue {name:?}: it exists with other settings \
                     ({:?}, asked for {options:?}) (PRECONDITION_FAILED)",
                    existing.options
                )));
            }
            // Its timer may have died with another runtime.
            self.arm(name);
            return Ok(());
        }
        let id = self.id();
        self.queues.insert(
            name.to_string(),
            Queue {
                id,
                options: options.clone(),
                owner: options.exclusive.then_some(connection),
                ready: VecDeque::new(),
                consumers: Vec::new(),
                timer: None,
            },
        );
        Ok(())
    }

    fn bind(&mut self, connection: u64, binding: Binding, exchange: &str) -> Result<()> {
        let context = || {
            format!(
                "binding queue {:?} to exchange {exchange:?} with routing key {:?}",
                binding.queue, binding.routing_key
            )
        };
        if exchange.is_empty() {
            return Err(Error::Runtime(format!(
                "{}: the default exchange takes no bindings (ACCESS_REFUSED)",
                context()
            )));
        }
        match self.queues.get(&binding.queue) {
            Some(queue) => check_owner(queue, connection, &binding.queue)?,
            None => {
                return Err(Error::Runtime(format!(
                    "{}: no such queue (NOT_FOUND)",
                    context()
                )))
            }
        }
        let Some(target) = self.exchanges.get_mut(exchange) else {
            return Err(Error::Runtime(format!(
                "{}: no such exchange (NOT_FOUND)",
                context()
            )));
        };
        if !target.bindings.contains(&binding) {
            target.bindings.push(binding);
        }
        Ok(())
    }

    /// The queues `exchange` routes a message to, each once; `None` when there is no such
    /// exchange.
    fn route(&self, exchange: &str, routing_key: &str, headers: &Headers) -> Option<Vec<String>> {
        if exchange.is_empty() {
            let found = self.queues.contains_key(routing_key);
            return Some(found.then(|| routing_key.to_string()).into_iter().collect());
        }
        let target = self.exchanges.get(exchange)?;
        let mut queues: Vec<String> = Vec::new();
        for binding in &target.bindings {
            let matched = match target.kind {
                ExchangeKind::Direct => binding.routing_key == routing_key,
                ExchangeKind::Fanout => true,
                ExchangeKind::Topic => topic_matches(&binding.routing_key, routing_key),
                ExchangeKind::Headers => headers_match(&binding.arguments, headers),
            };
            if matched && !queues.contains(&binding.queue) {
                queues.push(binding.queue.clone());
            }
        }
        Some(queues)
    }

    /// Puts a new message at the tail of `queue`, its expiry from the queue's TTL and the
    /// message's `expiration`, whichever is sooner.
    fn enqueue(&mut self, queue: &str, mut message: Message) {
        let Some(q) = self.queues.get_mut(queue) else {
            return;
        };
        message.redelivered = false;
        let per_message = message
            .properties
            .expiration
            .as_deref()
            .and_then(|text| text.trim().parse::<u64>().ok());
        let ttl = match (q.options.message_ttl_ms, per_message) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        let expires_at = ttl.map(|ms| Instant::now() + Duration::from_millis(ms));
        q.ready.push_back(Stored {
            message,
            expires_at,
        });
        self.wake_consumers(queue);
        self.arm(queue);
    }

    /// Puts an unacked message back at the head of its queue, marked redelivered; dropped
    /// when the queue it came from was deleted meanwhile.
    fn requeue(&mut self, queue: &str, id: u64, mut stored: Stored) {
        let Some(q) = self.queues.get_mut(queue).filter(|q| q.id == id) else {
            return;
        };
        stored.message.redelivered = true;
        q.ready.push_front(stored);
        self.wake_consumers(queue);
        self.arm(queue);
    }

    /// Asks for a timer at the expiry of `queue`'s head, unless a live one fires as soon.
    fn arm(&mut self, queue: &str) {
        let Some(q) = self.queues.get_mut(queue) else {
            return;
        };
        let Some(at) = q.ready.front().and_then(|head| head.expires_at) else {
            return;
        };
        let covered = q
            .timer
            .as_ref()
            .is_some_and(|t| t.at <= at && t.alive.load(Ordering::Acquire));
        if !covered {
            let timer = Timer {
                at,
                alive: Arc::new(AtomicBool::new(true)),
            };
            q.timer = Some(timer.clone());
            self.timers.push((queue.to_string(), timer));
        }
    }

    /// Expires the messages due at the head of `queue` (RabbitMQ expires only there: a
    /// shorter-lived message waits behind a longer-lived one), dead-lettering them.
    fn expire(&mut self, queue: &str) {
        let now = Instant::now();
        loop {
            let Some(q) = self.queues.get_mut(queue) else {
                return;
            };
            let due =
                matches!(q.ready.front().and_then(|head| head.expires_at), Some(at) if at <= now);
            if !due {
                break;
            }
            let Some(stored) = q.ready.pop_front() else {
                break;
            };
            let options = q.options.clone();
            self.dead_letter(queue, &options, stored.message, "expired");
        }
        self.arm(queue);
    }

    /// Dead-letters a message that died in `queue` for `reason` ("expired", "rejected"):
    /// to the queue's dead-letter exchange with an `x-death` entry, or dropped without one.
    fn dead_letter(&mut self, queue: &str, options: &QueueOptions, message: Message, reason: &str) {
        let Some(exchange) = options.dead_letter_exchange.clone() else {
            return;
        };
        let routing_key = options
            .dead_letter_routing_key
            .clone()
            .unwrap_or_else(|| message.routing_key.clone());
        let mut properties = message.properties;
        record_death(
            &mut properties,
            queue,
            reason,
            &message.exchange,
            &message.routing_key,
        );
        // As RabbitMQ: the per-message TTL would expire it again wherever it goes.
        properties.expiration = None;
        let Some(targets) = self.route(&exchange, &routing_key, &properties.headers) else {
            tracing::debug!(queue, exchange = %exchange, "dead-letter exchange missing: message dropped");
            return;
        };
        let deaths = match properties.headers.get(X_DEATH) {
            Some(HeaderValue::List(deaths)) => deaths.clone(),
            _ => Vec::new(),
        };
        for target in targets {
            if reason != "rejected" && is_cycle(&target, &deaths) {
                tracing::debug!(queue, target = %target, "dead-letter cycle: message dropped");
                continue;
            }
            self.enqueue(
                &target,
                Message {
                    body: message.body.clone(),
                    exchange: exchange.clone(),
                    routing_key: routing_key.clone(),
                    redelivered: false,
                    properties: properties.clone(),
                },
            );
        }
    }

    /// Routes a message `connection` published; `Ok(false)` when no queue received it.
    fn publish(&mut self, connection: u64, message: &Outgoing<'_>) -> Result<bool> {
        let direct = self.direct_reply_to(connection, message.properties.reply_to.as_deref())?;
        if let Some(text) = &message.properties.expiration {
            if text.trim().parse::<u64>().is_err() {
                return Err(Error::Runtime(format!(
                    "publishing to exchange {:?}: expiration {text:?} is not a whole number of \
                     milliseconds (PRECONDITION_FAILED)",
                    message.exchange
                )));
            }
        }
        let Some(targets) = self.route(
            message.exchange,
            message.routing_key,
            &message.properties.headers,
        ) else {
            return Err(Error::Runtime(format!(
                "publishing to exchange {:?} with routing key {:?}: no such exchange (NOT_FOUND; \
                 RabbitMQ would close the channel)",
                message.exchange, message.routing_key
            )));
        };
        for target in &targets {
            let mut properties = message.properties.clone();
            if let Some(reply_to) = &direct {
                properties.reply_to = Some(reply_to.clone());
            }
            self.enqueue(
                target,
                Message {
                    body: message.body.to_vec(),
                    exchange: message.exchange.to_string(),
                    routing_key: message.routing_key.to_string(),
                    redelivered: false,
                    properties,
                },
            );
        }
        Ok(!targets.is_empty())
    }

    /// A channel consuming `subscribe.queue` for `connection`, and what wakes its
    /// subscription.
    fn open_channel(
        &mut self,
        connection: u64,
        subscribe: &Subscribe,
    ) -> Result<(u64, Arc<Notify>)> {
        let mut exclusive = Vec::new();
        self.declare(connection, &subscribe.topology, Some(&mut exclusive))?;
        let id = self.id();
        let wake = Arc::new(Notify::new());
        self.channels.insert(
            id,
            Channel {
                connection,
                prefetch: subscribe.prefetch,
                no_ack: subscribe.no_ack,
                consuming: None,
                unacked: BTreeMap::new(),
                exclusive,
                lost: false,
                wake: wake.clone(),
            },
        );
        if let Err(err) = self.consume(id, subscribe) {
            self.channels.remove(&id);
            return Err(err);
        }
        Ok((id, wake))
    }

    fn consume(&mut self, channel: u64, subscribe: &Subscribe) -> Result<()> {
        let direct;
        let name = if subscribe.queue == direct_reply::PSEUDO_QUEUE {
            direct = self.direct_reply_queue(channel, &subscribe.label, subscribe.no_ack)?;
            &direct
        } else {
            &subscribe.queue
        };
        let Some(c) = self.channels.get(&channel) else {
            return Err(Error::Runtime(format!(
                "{}: the subscription to queue {name:?} is closed",
                subscribe.label
            )));
        };
        let connection = c.connection;
        let Some(queue) = self.queues.get_mut(name) else {
            return Err(Error::Runtime(format!(
                "{}: consuming queue {name:?}: no such queue (NOT_FOUND)",
                subscribe.label
            )));
        };
        check_owner(queue, connection, name)?;
        queue.consumers.push(channel);
        let consuming = Some((name.clone(), queue.id));
        if let Some(c) = self.channels.get_mut(&channel) {
            c.consuming = consuming;
        }
        Ok(())
    }

    /// The next delivery of `channel`, if one is ready and its prefetch allows.
    fn take(&mut self, channel: u64) -> Option<Taken> {
        let Some(c) = self.channels.get(&channel) else {
            return Some(Taken::Cancelled);
        };
        if c.lost {
            return Some(Taken::Lost);
        }
        let Some((name, id)) = c.consuming.clone() else {
            return Some(Taken::Cancelled);
        };
        if c.prefetch > 0 && !c.no_ack && c.unacked.len() >= usize::from(c.prefetch) {
            return None;
        }
        let no_ack = c.no_ack;
        self.expire(&name);
        let queue = self.queues.get_mut(&name).filter(|q| q.id == id)?;
        let stored = queue.ready.pop_front()?;
        self.arm(&name);
        if no_ack {
            return Some(Taken::Message(stored.message, None));
        }
        // Kept until settled, to go back to the queue if it is not acked.
        let message = stored.message.clone();
        let tag = self.id();
        if let Some(c) = self.channels.get_mut(&channel) {
            c.unacked.insert(tag, (name, id, stored));
        }
        Some(Taken::Message(message, Some(tag)))
    }

    /// Settles one delivery of `channel`.
    fn settle(&mut self, channel: u64, tag: u64, outcome: Outcome) -> Result<()> {
        let Some(c) = self.channels.get_mut(&channel) else {
            return Err(Error::Runtime(
                "settling a delivery of a closed subscription: it went back to its queue".into(),
            ));
        };
        if c.lost {
            return Err(Error::Runtime(
                "settling a delivery after its connection closed: it went back to its queue".into(),
            ));
        }
        // At its prefetch, the subscription waits for this settle to take more.
        let was_full = c.prefetch > 0 && c.unacked.len() >= usize::from(c.prefetch);
        let Some((queue, id, stored)) = c.unacked.remove(&tag) else {
            return Err(Error::Runtime(format!(
                "unknown delivery tag {tag} (settled twice?) (PRECONDITION_FAILED)"
            )));
        };
        if was_full {
            self.wake_channel(channel);
        }
        match outcome {
            Outcome::Ack => {}
            Outcome::Requeue => self.requeue(&queue, id, stored),
            Outcome::Reject => {
                if let Some(options) = self
                    .queues
                    .get(&queue)
                    .filter(|q| q.id == id)
                    .map(|q| q.options.clone())
                {
                    self.dead_letter(&queue, &options, stored.message, "rejected");
                }
            }
        }
        Ok(())
    }

    /// Stops `channel` consuming; its queue goes if it is auto-delete and this was its last
    /// consumer.
    fn stop_consuming(&mut self, channel: u64) {
        let Some((name, id)) = self
            .channels
            .get_mut(&channel)
            .and_then(|c| c.consuming.take())
        else {
            return;
        };
        self.wake_channel(channel);
        let Some(queue) = self.queues.get_mut(&name).filter(|q| q.id == id) else {
            return;
        };
        queue.consumers.retain(|c| *c != channel);
        if queue.consumers.is_empty() && queue.options.auto_delete {
            self.delete_queue(&name);
        }
    }

    /// Returns the unacked deliveries of `channel` to their queues, in their order.
    fn requeue_unacked(&mut self, channel: u64) {
        let Some(c) = self.channels.get_mut(&channel) else {
            return;
        };
        let unacked = std::mem::take(&mut c.unacked);
        for (queue, id, stored) in unacked.into_values().rev() {
            self.requeue(&queue, id, stored);
        }
    }

    /// Closes `channel`: unacked deliveries back, its exclusive queues gone.
    fn close_channel(&mut self, channel: u64) {
        self.stop_consuming(channel);
        self.requeue_unacked(channel);
        if let Some(c) = self.channels.remove(&channel) {
            for queue in c.exclusive {
                if self
                    .queues
                    .get(&queue)
                    .is_some_and(|q| q.owner == Some(c.connection))
                {
                    self.delete_queue(&queue);
                }
            }
        }
    }

    /// Closes `connection`: its channels lose it, their unacked deliveries go back, and its
    /// exclusive queues go.
    fn close_connection(&mut self, connection: u64) {
        let channels: Vec<u64> = self
            .channels
            .iter()
            .filter(|(_, c)| c.connection == connection)
            .map(|(id, _)| *id)
            .collect();
        for channel in channels {
            self.stop_consuming(channel);
            self.requeue_unacked(channel);
            if let Some(c) = self.channels.get_mut(&channel) {
                c.lost = true;
            }
            // A waiting subscription learns it lost its connection.
            self.wake_channel(channel);
        }
        let owned: Vec<String> = self
            .queues
            .iter()
            .filter(|(_, q)| q.owner == Some(connection))
            .map(|(name, _)| name.clone())
            .collect();
        for queue in owned {
            self.delete_queue(&queue);
        }
    }

    /// Deletes a queue and its bindings (an auto-delete exchange left without bindings goes
    /// too); its consumers are cancelled. The ready messages it held, `None` without it.
    fn delete_queue(&mut self, name: &str) -> Option<usize> {
        let queue = self.queues.remove(name)?;
        for exchange in self.exchanges.values_mut() {
            exchange.bindings.retain(|b| b.queue != name);
        }
        self.exchanges
            .retain(|_, e| !(e.auto_delete && e.bindings.is_empty()));
        for channel in &queue.consumers {
            if let Some(c) = self.channels.get_mut(channel) {
                c.consuming = None;
                // A waiting subscription learns it was cancelled.
                self.wake.push(c.wake.clone());
            }
        }
        Some(queue.ready.len())
    }

    fn queue(&mut self, name: &str) -> Result<&mut Queue> {
        self.expire(name);
        self.queues
            .get_mut(name)
            .ok_or_else(|| Error::Runtime(format!("queue {name:?}: no such queue (NOT_FOUND)")))
    }

    fn move_messages(
        &mut self,
        from: &str,
        to: &str,
        limit: usize,
        rewrite: &(dyn Fn(&Properties) -> Properties + Send + Sync),
    ) -> Result<Moved> {
        if !self.queues.contains_key(to) {
            return Err(Error::Runtime(format!(
                "moving messages into queue {to:?}: no such queue (was it deleted?); they stay in {from:?}"
            )));
        }
        let source = self.queue(from)?;
        let count = limit.min(source.ready.len());
        let taken: Vec<Stored> = source.ready.drain(..count).collect();
        self.arm(from);
        for stored in &taken {
            let message = &stored.message;
            self.enqueue(
                to,
                Message {
                    body: message.body.clone(),
                    exchange: String::new(),
                    routing_key: to.to_string(),
                    redelivered: false,
                    properties: rewrite(&message.properties),
                },
            );
        }
        Ok(Moved { moved: count })
    }
}

enum Outcome {
    Ack,
    Requeue,
    Reject,
}

/// An exclusive queue is used only by the connection that declared it.
fn check_owner(queue: &Queue, connection: u64, name: &str) -> Result<()> {
    match queue.owner {
        Some(owner) if owner != connection => Err(Error::Runtime(format!(
            "queue {name:?} is exclusive to another connection (RESOURCE_LOCKED)"
        ))),
        _ => Ok(()),
    }
}

const X_DEATH: &str = "x-death";

/// Adds or updates the `x-death` entry of a message that died in `queue` for `reason`, as
/// RabbitMQ does: one entry per queue and reason, the latest moved first with its count
/// bumped; `x-first-death-*` set once, `x-last-death-*` each time.
fn record_death(
    properties: &mut Properties,
    queue: &str,
    reason: &str,
    exchange: &str,
    routing_key: &str,
) {
    let text = |s: &str| HeaderValue::Text(s.to_string());
    let headers = &mut properties.headers;
    let mut deaths = match headers.remove(X_DEATH) {
        Some(HeaderValue::List(deaths)) => deaths,
        _ => Vec::new(),
    };
    let same = |death: &HeaderValue| match death {
        HeaderValue::Table(t) => {
            t.get("queue").and_then(HeaderValue::as_text) == Some(queue)
                && t.get("reason").and_then(HeaderValue::as_text) == Some(reason)
        }
        _ => false,
    };
    let entry = match deaths.iter().position(same) {
        Some(at) => {
            let mut entry = match deaths.remove(at) {
                HeaderValue::Table(t) => t,
                _ => Headers::new(),
            };
            let count = entry
                .get("count")
                .and_then(HeaderValue::as_int)
                .unwrap_or(0);
            entry.insert("count".into(), HeaderValue::Int(count + 1));
            entry
        }
        None => {
            let mut entry = Headers::new();
            entry.insert("count".into(), HeaderValue::Int(1));
            entry.insert("queue".into(), text(queue));
            entry.insert("reason".into(), text(reason));
            entry.insert("exchange".into(), text(exchange));
            entry.insert(
                "routing-keys".into(),
                HeaderValue::List(vec![text(routing_key)]),
            );
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs());
            entry.insert("time".into(), HeaderValue::Timestamp(now));
            if let Some(expiration) = &properties.expiration {
                entry.insert("original-expiration".into(), text(expiration));
            }
            entry
        }
    };
    deaths.insert(0, HeaderValue::Table(entry));
    headers.insert(X_DEATH.into(), HeaderValue::List(deaths));
    for (key, value) in [("queue", queue), ("reason", reason), ("exchange", exchange)] {
        headers
            .entry(format!("x-first-death-{key}"))
            .or_insert_with(|| text(value));
        headers.insert(format!("x-last-death-{key}"), text(value));
    }
}

/// RabbitMQ's cycle rule: dead-lettering into `target` is a cycle when `target` already
/// appears in the deaths (newest first) and no death up to that one was a rejection.
fn is_cycle(target: &str, deaths: &[HeaderValue]) -> bool {
    let field = |death: &HeaderValue, key: &str| match death {
        HeaderValue::Table(t) => t
            .get(key)
            .and_then(HeaderValue::as_text)
            .map(str::to_string),
        _ => None,
    };
    let Some(at) = deaths
        .iter()
        .position(|d| field(d, "queue").as_deref() == Some(target))
    else {
        return false;
    };
    deaths[..=at]
        .iter()
        .all(|d| field(d, "reason").as_deref() != Some("rejected"))
}

/// A topic binding key against a routing key: words between dots, `*` one word, `#` zero
/// or more. An empty key has no words.
fn topic_matches(pattern: &str, routing_key: &str) -> bool {
    fn words(key: &str) -> Vec<&str> {
        if key.is_empty() {
            Vec::new()
        } else {
            key.split('.').collect()
        }
    }
    fn matches(pattern: &[&str], key: &[&str]) -> bool {
        match pattern.split_first() {
            None => key.is_empty(),
            Some((&"#", rest)) => (0..=key.len()).any(|skip| matches(rest, &key[skip..])),
            Some((&word, rest)) => match key.split_first() {
                Some((first, tail)) => (word == "*" || word == *first) && matches(rest, tail),
                None => false,
            },
        }
    }
    matches(&words(pattern), &words(routing_key))
}

/// A headers binding against a message's headers: `x-match` = `all` (the default) or `any`
/// of the binding's other arguments equal to the message's; keys starting `x-` take no part
/// unless `x-match` is `all-with-x` or `any-with-x`.
fn headers_match(arguments: &Headers, headers: &Headers) -> bool {
    let mode = arguments
        .get("x-match")
        .and_then(HeaderValue::as_text)
        .unwrap_or("all");
    let (any, with_x) = match mode {
        "any" => (true, false),
        "any-with-x" => (true, true),
        "all-with-x" => (false, true),
        _ => (false, false),
    };
    let mut conditions = arguments
        .iter()
        .filter(|(key, _)| key.as_str() != "x-match" && (with_x || !key.starts_with("x-")));
    let holds = |(key, value): (&String, &HeaderValue)| headers.get(key) == Some(value);
    if any {
        conditions.any(holds)
    } else {
        conditions.all(holds)
    }
}

impl Transport for Memory {
    fn describe(&self) -> String {
        format!("{SCHEME}{}", self.node.name)
    }

    fn is_connected(&self) -> bool {
        !self.closed.load(Ordering::Acquire)
    }

    fn losses(&self) -> tokio::sync::watch::Receiver<u64> {
        self.losses.subscribe()
    }

    fn declare<'a>(&'a self, topology: &'a [Declaration]) -> BoxFuture<'a, Result<()>> {
        async move {
            self.check_open()?;
            self.node
                .with(|state| state.declare(self.connection, topology, None))
        }
        .boxed()
    }

    fn exchange_exists<'a>(&'a self, exchange: &'a str) -> BoxFuture<'a, Result<bool>> {
        async move {
            self.check_open()?;
            Ok(exchange.is_empty() || self.node.lock().exchanges.contains_key(exchange))
        }
        .boxed()
    }

    fn publish<'a>(&'a self, message: Outgoing<'a>) -> BoxFuture<'a, Result<Confirm>> {
        async move {
            self.check_open()?;
            let routed = self
                .node
                .with(|state| state.publish(self.connection, &message))?;
            let confirm: Confirm = if routed || !message.mandatory {
                futures::future::ready(Ok(())).boxed()
            } else {
                futures::future::ready(Err(Error::Unroutable {
                    exchange: message.exchange.to_string(),
                    routing_key: message.routing_key.to_string(),
                }))
                .boxed()
            };
            Ok(confirm)
        }
        .boxed()
    }

    fn subscribe(&self, subscribe: Subscribe) -> BoxFuture<'_, Result<Box<dyn Subscription>>> {
        async move {
            self.check_open()?;
            let (channel, wake) = self
                .node
                .with(|state| state.open_channel(self.connection, &subscribe))?;
            let subscription: Box<dyn Subscription> = Box::new(MemorySubscription {
                node: self.node.clone(),
                connection: self.connection,
                channel,
                wake,
                subscribe,
            });
            Ok(subscription)
        }
        .boxed()
    }

    fn message_count<'a>(&'a self, queue: &'a str) -> BoxFuture<'a, Result<Option<usize>>> {
        async move {
            self.check_open()?;
            Ok(self
                .node
                .with(|state| state.queue(queue).ok().map(|q| q.ready.len())))
        }
        .boxed()
    }

    fn peek<'a>(&'a self, queue: &'a str, limit: usize) -> BoxFuture<'a, Result<Vec<Message>>> {
        async move {
            self.check_open()?;
            self.node.with(|state| {
                let q = state.queue(queue)?;
                Ok(q.ready
                    .iter()
                    .take(limit)
                    .map(|stored| stored.message.clone())
                    .collect())
            })
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
            self.check_open()?;
            // Under one lock: no other operation sees a message in both queues or in neither.
            self.node
                .with(|state| state.move_messages(from, to, limit, rewrite))
        }
        .boxed()
    }

    fn close(&self) -> BoxFuture<'_, ()> {
        async move {
            if !self.closed.swap(true, Ordering::AcqRel) {
                self.node
                    .with(|state| state.close_connection(self.connection));
            }
        }
        .boxed()
    }
}

/// A subscription: one channel of the broker.
struct MemorySubscription {
    node: Arc<Node>,
    connection: u64,
    channel: u64,
    /// Signalled when its channel may have a next step (a message, a settle that frees
    /// prefetch, a cancel, a lost connection).
    wake: Arc<Notify>,
    subscribe: Subscribe,
}

impl Subscription for MemorySubscription {
    fn next(&mut self) -> BoxFuture<'_, Next> {
        async move {
            loop {
                // A change made between this look and the wait leaves a permit: no wake-up
                // is lost.
                let taken = self.node.with(|state| state.take(self.channel));
                match taken {
                    Some(Taken::Message(message, tag)) => {
                        let settle = MemorySettle {
                            node: self.node.clone(),
                            channel: self.channel,
                            tag,
                        };
                        return Next::Delivery(Delivery::new(message, Box::new(settle)));
                    }
                    Some(Taken::Lost) => return Next::Lost("the connection was closed".into()),
                    Some(Taken::Cancelled) => return Next::Cancelled,
                    None => self.wake.notified().await,
                }
            }
        }
        .boxed()
    }

    fn recover(&mut self) -> BoxFuture<'_, Result<()>> {
        async move {
            let lost = !matches!(
                self.node.lock().channels.get(&self.channel),
                Some(c) if !c.lost
            );
            if lost {
                return Err(Error::Runtime(format!(
                    "{}: the connection of queue {:?} was closed",
                    self.subscribe.label, self.subscribe.queue
                )));
            }
            Ok(())
        }
        .boxed()
    }

    fn reattach(&mut self) -> BoxFuture<'_, Result<()>> {
        async move {
            let (channel, connection) = (self.channel, self.connection);
            let subscribe = &self.subscribe;
            self.node.with(|state| {
                let Some(mut exclusive) = state
                    .channels
                    .get_mut(&channel)
                    .filter(|c| !c.lost)
                    .map(|c| std::mem::take(&mut c.exclusive))
                else {
                    return Err(Error::Runtime(format!(
                        "{}: the subscription to queue {:?} is closed",
                        subscribe.label, subscribe.queue
                    )));
                };
                let declared = state.declare(connection, &subscribe.topology, Some(&mut exclusive));
                if let Some(c) = state.channels.get_mut(&channel) {
                    c.exclusive = exclusive;
                }
                declared?;
                let consuming = state
                    .channels
                    .get(&channel)
                    .is_some_and(|c| c.consuming.is_some());
                if consuming {
                    return Ok(());
                }
                state.consume(channel, subscribe)
            })
        }
        .boxed()
    }

    fn binder(&self) -> Arc<dyn Binder> {
        Arc::new(MemoryBinder {
            node: self.node.clone(),
            connection: self.connection,
            queue: self.subscribe.queue.clone(),
        })
    }

    fn cancel(&mut self) -> BoxFuture<'_, ()> {
        async move {
            self.node.with(|state| state.stop_consuming(self.channel));
        }
        .boxed()
    }

    fn close(&mut self) -> BoxFuture<'_, ()> {
        async move {
            self.node.with(|state| state.close_channel(self.channel));
        }
        .boxed()
    }
}

impl Drop for MemorySubscription {
    /// A dropped subscription is a closed one: its unacked deliveries go back.
    fn drop(&mut self) {
        self.node.with(|state| state.close_channel(self.channel));
    }
}

struct MemoryBinder {
    node: Arc<Node>,
    connection: u64,
    queue: String,
}

impl Binder for MemoryBinder {
    fn bind<'a>(&'a self, exchange: &'a str, routing_key: &'a str) -> BoxFuture<'a, Result<()>> {
        async move {
            self.node.with(|state| {
                state.bind(
                    self.connection,
                    Binding {
                        queue: self.queue.clone(),
                        routing_key: routing_key.to_string(),
                        arguments: Headers::new(),
                    },
                    exchange,
                )
            })
        }
        .boxed()
    }
}

/// Settles one delivery; `tag` is `None` for a `no_ack` one, settled when it was sent.
struct MemorySettle {
    node: Arc<Node>,
    channel: u64,
    tag: Option<u64>,
}

impl MemorySettle {
    fn settle(&self, outcome: Outcome) -> Result<()> {
        match self.tag {
            Some(tag) => self
                .node
                .with(|state| state.settle(self.channel, tag, outcome)),
            None => Ok(()),
        }
    }
}

impl Settle for MemorySettle {
    fn ack(&self) -> BoxFuture<'_, Result<()>> {
        futures::future::ready(self.settle(Outcome::Ack)).boxed()
    }

    fn nack(&self, requeue: bool) -> BoxFuture<'_, Result<()>> {
        let outcome = if requeue {
            Outcome::Requeue
        } else {
            Outcome::Reject
        };
        futures::future::ready(self.settle(outcome)).boxed()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const WAIT: Duration = Duration::from_millis(200);

    fn exchange(name: &str, kind: ExchangeKind) -> Declaration {
        Declaration::Exchange {
            name: name.into(),
            kind,
            durable: true,
            auto_delete: false,
        }
    }

    fn queue(name: &str) -> Declaration {
        queue_with(name, QueueOptions::default())
    }

    fn queue_with(name: &str, options: QueueOptions) -> Declaration {
        Declaration::Queue {
            name: name.into(),
            options,
        }
    }

    fn bind(queue: &str, exchange: &str, routing_key: &str) -> Declaration {
        Declaration::Bind {
            queue: queue.into(),
            exchange: exchange.into(),
            routing_key: routing_key.into(),
        }
    }

    fn consume(queue: &str, prefetch: u16, no_ack: bool) -> Subscribe {
        Subscribe {
            label: format!("test.{queue}"),
            queue: queue.into(),
            prefetch,
            no_ack,
            topology: Vec::new(),
        }
    }

    async fn send(
        memory: &Memory,
        exchange: &str,
        routing_key: &str,
        body: &str,
        properties: Properties,
        mandatory: bool,
    ) -> Result<()> {
        memory
            .publish(Outgoing {
                exchange,
                routing_key,
                body: body.as_bytes(),
                properties,
                mandatory,
            })
            .await?
            .await
    }

    async fn put(memory: &Memory, queue: &str, body: &str) {
        send(memory, "", queue, body, Properties::default(), true)
            .await
            .expect("published");
    }

    async fn count(memory: &Memory, queue: &str) -> Option<usize> {
        memory.message_count(queue).await.expect("counted")
    }

    async fn next(subscription: &mut Box<dyn Subscription>) -> Delivery {
        match tokio::time::timeout(WAIT, subscription.next()).await {
            Ok(Next::Delivery(delivery)) => delivery,
            Ok(Next::Lost(why)) => panic!("lost: {why}"),
            Ok(Next::Cancelled) => panic!("cancelled"),
            Err(_) => panic!("no delivery within {WAIT:?}"),
        }
    }

    async fn nothing(subscription: &mut Box<dyn Subscription>) {
        if let Ok(next) = tokio::time::timeout(WAIT, subscription.next()).await {
            match next {
                Next::Delivery(d) => panic!("unexpected delivery {:?}", d.message.body),
                Next::Lost(why) => panic!("lost: {why}"),
                Next::Cancelled => panic!("cancelled"),
            }
        }
    }

    fn body(delivery: &Delivery) -> &str {
        std::str::from_utf8(&delivery.message.body).expect("utf-8 body")
    }

    #[tokio::test]
    async fn direct_and_default_exchanges_route_by_key_and_mandatory_returns() {
        let m = Memory::isolated();
        m.declare(&[
            exchange("d", ExchangeKind::Direct),
            queue("a"),
            queue("b"),
            bind("a", "d", "x"),
            bind("b", "d", "y"),
            bind("b", "d", "x"),
        ])
        .await
        .unwrap();
        send(&m, "d", "x", "1", Properties::default(), true)
            .await
            .unwrap();
        send(&m, "d", "y", "2", Properties::default(), true)
            .await
            .unwrap();
        assert_eq!(
            (count(&m, "a").await, count(&m, "b").await),
            (Some(1), Some(2))
        );
        put(&m, "a", "3").await;
        assert_eq!(count(&m, "a").await, Some(2));
        let peeked = m.peek("a", 10).await.unwrap();
        assert_eq!(peeked[1].exchange, "");
        assert_eq!(peeked[1].routing_key, "a");
        // Not mandatory: dropped quietly; mandatory: returned.
        send(&m, "d", "z", "4", Properties::default(), false)
            .await
            .unwrap();
        let err = send(&m, "d", "z", "4", Properties::default(), true)
            .await
            .unwrap_err();
        assert!(
            matches!(err, Error::Unroutable { ref routing_key, .. } if routing_key == "z"),
            "{err}"
        );
        let err = send(&m, "", "nope", "5", Properties::default(), true)
            .await
            .unwrap_err();
        assert!(matches!(err, Error::Unroutable { .. }), "{err}");
        let err = send(&m, "missing", "k", "6", Properties::default(), false)
            .await
            .unwrap_err();
        assert!(
            matches!(&err, Error::Runtime(text) if text.contains("\"missing\"")),
            "{err}"
        );
        assert!(m.exchange_exists("d").await.unwrap());
        assert!(m.exchange_exists("").await.unwrap());
        assert!(!m.exchange_exists("missing").await.unwrap());
        assert_eq!(count(&m, "missing").await, None);
        // The default exchange takes no bindings; a binding needs its queue and exchange.
        assert!(m.declare(&[bind("a", "", "a")]).await.is_err());
        assert!(m.declare(&[bind("nope", "d", "a")]).await.is_err());
        assert!(m.declare(&[bind("a", "nope", "a")]).await.is_err());
    }

    #[test]
    fn topic_patterns_match_words() {
        let cases = [
            ("a.b.c", "a.b.c", true),
            ("a.*.c", "a.b.c", true),
            ("a.*.c", "a.c", false),
            ("a.*", "a.b.c", false),
            ("a.#", "a", true),
            ("a.#", "a.b.c", true),
            ("#", "", true),
            ("#", "a.b", true),
            ("*", "", false),
            ("#.c", "c", true),
            ("#.c", "a.b.c", true),
            ("a.#.c", "a.c", true),
            ("a.#.c", "a.x.y.c", true),
            ("a.#.c", "a.x.y.d", false),
            ("*.*", "a.b", true),
            ("*.*", "a", false),
            ("", "", true),
            ("", "a", false),
        ];
        for (pattern, key, expected) in cases {
            assert_eq!(
                topic_matches(pattern, key),
                expected,
                "{pattern:?} vs {key:?}"
            );
        }
    }

    #[tokio::test]
    async fn topic_and_fanout_exchanges_route() {
        let m = Memory::isolated();
        m.declare(&[
            exchange("t", ExchangeKind::Topic),
            exchange("f", ExchangeKind::Fanout),
            queue("stars"),
            queue("all"),
            bind("stars", "t", "order.*.eu"),
            bind("all", "t", "order.#"),
            bind("all", "t", "#"),
            bind("stars", "f", "ignored"),
            bind("all", "f", ""),
        ])
        .await
        .unwrap();
        send(&m, "t", "order.new.eu", "1", Properties::default(), true)
            .await
            .unwrap();
        send(&m, "t", "order.new.us", "2", Properties::default(), true)
            .await
            .unwrap();
        // Bound twice, still one copy.
        assert_eq!(
            (count(&m, "stars").await, count(&m, "all").await),
            (Some(1), Some(2))
        );
        send(&m, "f", "anything", "3", Properties::default(), true)
            .await
            .unwrap();
        assert_eq!(
            (count(&m, "stars").await, count(&m, "all").await),
            (Some(2), Some(3))
        );
    }

    #[tokio::test]
    async fn headers_exchange_matches_all_or_any() {
        let m = Memory::isolated();
        m.declare(&[
            exchange("h", ExchangeKind::Headers),
            queue("all"),
            queue("any"),
        ])
        .await
        .unwrap();
        let args = |mode: &str| -> Headers {
            [
                ("x-match", HeaderValue::Text(mode.into())),
                ("format", HeaderValue::Text("pdf".into())),
                ("kind", HeaderValue::Text("report".into())),
            ]
            .into_iter()
            .map(|(k, v)| (k.to_string(), v))
            .collect()
        };
        m.bind_with_arguments("all", "h", "", args("all")).unwrap();
        m.bind_with_arguments("any", "h", "", args("any")).unwrap();
        let with = |pairs: &[(&str, &str)]| {
            Properties::default().with_headers(
                pairs
                    .iter()
                    .map(|(k, v)| (k.to_string(), HeaderValue::Text(v.to_string())))
                    .collect(),
            )
        };
        let both = with(&[("format", "pdf"), ("kind", "report"), ("x-other", "1")]);
        send(&m, "h", "", "1", both, true).await.unwrap();
        send(&m, "h", "", "2", with(&[("format", "pdf")]), true)
            .await
            .unwrap();
        let err = send(&m, "h", "", "3", with(&[("format", "zip")]), true)
            .await
            .unwrap_err();
        assert!(matches!(err, Error::Unroutable { .. }), "{err}");
        assert_eq!(
            (count(&m, "all").await, count(&m, "any").await),
            (Some(1), Some(2))
        );
    }

    #[tokio::test]
    async fn prefetch_bounds_the_unacked_deliveries() {
        let m = Memory::isolated();
        m.declare(&[queue("q")]).await.unwrap();
        for i in 0..3 {
            put(&m, "q", &i.to_string()).await;
        }
        let mut sub = m.subscribe(consume("q", 2, false)).await.unwrap();
        let first = next(&mut sub).await;
        let second = next(&mut sub).await;
        assert_eq!((body(&first), body(&second)), ("0", "1"));
        nothing(&mut sub).await;
        first.ack().await.unwrap();
        let third = next(&mut sub).await;
        assert_eq!(body(&third), "2");
        assert!(first.ack().await.is_err(), "a second ack is an error");
        // No limit with prefetch 0.
        for i in 3..8 {
            put(&m, "q", &i.to_string()).await;
        }
        let mut unlimited = m.subscribe(consume("q", 0, false)).await.unwrap();
        for i in 3..8 {
            assert_eq!(body(&next(&mut unlimited).await), i.to_string());
        }
    }

    #[tokio::test]
    async fn nack_requeues_at_the_head_redelivered_or_drops() {
        let m = Memory::isolated();
        m.declare(&[queue("q")]).await.unwrap();
        put(&m, "q", "a").await;
        put(&m, "q", "b").await;
        let mut sub = m.subscribe(consume("q", 0, false)).await.unwrap();
        let a = next(&mut sub).await;
        assert!(!a.message.redelivered);
        a.nack(true).await.unwrap();
        let again = next(&mut sub).await;
        assert_eq!(body(&again), "a");
        assert!(again.message.redelivered);
        again.nack(false).await.unwrap();
        let b = next(&mut sub).await;
        assert_eq!(body(&b), "b");
        b.ack().await.unwrap();
        nothing(&mut sub).await;
        assert_eq!(count(&m, "q").await, Some(0));
    }

    #[tokio::test]
    async fn unacked_deliveries_return_when_the_subscription_closes_or_is_dropped() {
        let m = Memory::isolated();
        m.declare(&[queue("q")]).await.unwrap();
        put(&m, "q", "a").await;
        put(&m, "q", "b").await;
        let mut sub = m.subscribe(consume("q", 0, false)).await.unwrap();
        let a = next(&mut sub).await;
        let _b = next(&mut sub).await;
        assert_eq!(count(&m, "q").await, Some(0));
        // Cancelled: no more deliveries, but acks still count.
        sub.cancel().await;
        a.ack().await.unwrap();
        assert!(matches!(sub.next().await, Next::Cancelled));
        sub.close().await;
        assert_eq!(count(&m, "q").await, Some(1));
        let mut sub = m.subscribe(consume("q", 0, false)).await.unwrap();
        let b = next(&mut sub).await;
        assert_eq!(body(&b), "b");
        assert!(b.message.redelivered);
        drop(sub);
        assert_eq!(count(&m, "q").await, Some(1));
        assert!(b.ack().await.is_err(), "its subscription is gone");
    }

    #[tokio::test]
    async fn no_ack_deliveries_are_settled_on_sending() {
        let m = Memory::isolated();
        m.declare(&[queue("q")]).await.unwrap();
        for i in 0..3 {
            put(&m, "q", &i.to_string()).await;
        }
        let mut sub = m.subscribe(consume("q", 1, true)).await.unwrap();
        for _ in 0..3 {
            next(&mut sub).await.ack().await.unwrap();
        }
        drop(sub);
        assert_eq!(count(&m, "q").await, Some(0));
    }

    fn retry_queue(ttl: u64, to: &str) -> Declaration {
        queue_with(
            &format!("{to}.retry.{ttl}ms"),
            QueueOptions {
                durable: true,
                message_ttl_ms: Some(ttl),
                dead_letter_exchange: Some(String::new()),
                dead_letter_routing_key: Some(to.to_string()),
                ..Default::default()
            },
        )
    }

    fn deaths(message: &Message) -> Vec<Headers> {
        match message.properties.headers.get(X_DEATH) {
            Some(HeaderValue::List(items)) => items
                .iter()
                .map(|item| match item {
                    HeaderValue::Table(t) => t.clone(),
                    other => panic!("x-death item {other:?}"),
                })
                .collect(),
            other => panic!("x-death {other:?}"),
        }
    }

    fn text_of<'a>(table: &'a Headers, key: &str) -> Option<&'a str> {
        table.get(key).and_then(HeaderValue::as_text)
    }

    #[tokio::test(start_paused = true)]
    async fn expired_messages_are_dead_lettered_with_x_death_as_rabbitmq_does() {
        let m = Memory::isolated();
        m.declare(&[queue("q"), retry_queue(50, "q")])
            .await
            .unwrap();
        let mut sub = m.subscribe(consume("q", 0, false)).await.unwrap();
        let mut headers = Headers::new();
        headers.insert(crate::retry::ATTEMPTS.into(), HeaderValue::Int(1));
        let properties = Properties::json().with_headers(headers);
        send(&m, "", "q.retry.50ms", "m", properties, true)
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_millis(49)).await;
        assert_eq!(count(&m, "q.retry.50ms").await, Some(1));
        assert_eq!(count(&m, "q").await, Some(0));
        // The waiting consumer is woken by the expiry timer.
        let delivery = next(&mut sub).await;
        let message = delivery.message.clone();
        assert_eq!(
            (message.exchange.as_str(), message.routing_key.as_str()),
            ("", "q")
        );
        let list = deaths(&message);
        assert_eq!(list.len(), 1);
        assert_eq!(text_of(&list[0], "queue"), Some("q.retry.50ms"));
        assert_eq!(text_of(&list[0], "reason"), Some("expired"));
        assert_eq!(text_of(&list[0], "exchange"), Some(""));
        assert_eq!(list[0].get("count"), Some(&HeaderValue::Int(1)));
        assert_eq!(
            list[0].get("routing-keys"),
            Some(&HeaderValue::List(vec![HeaderValue::Text(
                "q.retry.50ms".into()
            )]))
        );
        assert_eq!(
            message.properties.header_text("x-first-death-queue"),
            Some("q.retry.50ms")
        );
        // farine's retry logic recognises the round trip.
        assert_eq!(crate::retry::Origin::of(&message, "q").attempts, 1);
        delivery.ack().await.unwrap();

        // Retried once more through the same delay queue: the same entry, counted twice.
        let again = message.properties.clone();
        send(&m, "", "q.retry.50ms", "m", again, true)
            .await
            .unwrap();
        let delivery = next(&mut sub).await;
        let list = deaths(&delivery.message);
        assert_eq!(list.len(), 1);
        assert_eq!(list[0].get("count"), Some(&HeaderValue::Int(2)));

        // Rejected from q (which dead-letters to its own delay queue here): a new entry, first.
        drop(sub);
        m.delete_queue("q");
        m.declare(&[queue_with(
            "q",
            QueueOptions {
                dead_letter_exchange: Some(String::new()),
                dead_letter_routing_key: Some("q.retry.50ms".into()),
                ..Default::default()
            },
        )])
        .await
        .unwrap();
        let mut sub = m.subscribe(consume("q", 0, false)).await.unwrap();
        send(&m, "", "q", "m", delivery.message.properties.clone(), true)
            .await
            .unwrap();
        next(&mut sub).await.nack(false).await.unwrap();
        let back = next(&mut sub).await;
        let list = deaths(&back.message);
        let reasons: Vec<_> = list
            .iter()
            .map(|d| (text_of(d, "queue"), text_of(d, "reason")))
            .collect();
        assert_eq!(
            reasons,
            [
                (Some("q.retry.50ms"), Some("expired")),
                (Some("q"), Some("rejected")),
            ]
        );
    }

    #[tokio::test(start_paused = true)]
    async fn message_expiration_counts_at_the_head_and_is_dropped_when_dead_lettered() {
        let m = Memory::isolated();
        m.declare(&[
            queue("parked"),
            queue_with(
                "q",
                QueueOptions {
                    dead_letter_exchange: Some(String::new()),
                    dead_letter_routing_key: Some("parked".into()),
                    ..Default::default()
                },
            ),
        ])
        .await
        .unwrap();
        put(&m, "q", "forever").await;
        send(
            &m,
            "",
            "q",
            "short",
            Properties::default().with_expiration("10"),
            true,
        )
        .await
        .unwrap();
        tokio::time::sleep(Duration::from_millis(20)).await;
        // Behind a message without expiry, it waits (as in RabbitMQ).
        assert_eq!(count(&m, "q").await, Some(2));
        let mut sub = m.subscribe(consume("q", 0, false)).await.unwrap();
        assert_eq!(body(&next(&mut sub).await), "forever");
        // Now at the head and past its time: expired, not delivered.
        nothing(&mut sub).await;
        let parked = m.peek("parked", 10).await.unwrap();
        assert_eq!(parked.len(), 1);
        assert_eq!(parked[0].properties.expiration, None);
        let list = deaths(&parked[0]);
        assert_eq!(text_of(&list[0], "original-expiration"), Some("10"));
        assert_eq!(text_of(&list[0], "reason"), Some("expired"));
        // A message whose expiration is not a number is refused.
        let bad = send(
            &m,
            "",
            "q",
            "x",
            Properties::default().with_expiration("soon"),
            true,
        );
        assert!(bad.await.is_err());
    }

    #[tokio::test(start_paused = true)]
    async fn an_automatic_dead_letter_cycle_drops_the_message() {
        let m = Memory::isolated();
        m.declare(&[queue_with(
            "loop",
            QueueOptions {
                message_ttl_ms: Some(10),
                dead_letter_exchange: Some(String::new()),
                ..Default::default()
            },
        )])
        .await
        .unwrap();
        put(&m, "loop", "x").await;
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert_eq!(count(&m, "loop").await, Some(0));
    }

    #[test]
    fn expiry_outlives_the_runtime_that_started_its_timer() {
        let m = Memory::isolated();
        let topology = [
            queue("parked"),
            queue_with(
                "q",
                QueueOptions {
                    message_ttl_ms: Some(30),
                    dead_letter_exchange: Some(String::new()),
                    dead_letter_routing_key: Some("parked".into()),
                    ..Default::default()
                },
            ),
        ];
        let runtime = || {
            tokio::runtime::Builder::new_current_thread()
                .enable_time()
                .build()
                .expect("runtime")
        };
        // A test's runtime ends with its timer pending; the broker lives on.
        runtime().block_on(async {
            m.declare(&topology).await.unwrap();
            put(&m, "q", "x").await;
        });
        runtime().block_on(async {
            m.declare(&topology).await.unwrap();
            let mut sub = m.subscribe(consume("parked", 0, false)).await.unwrap();
            assert_eq!(body(&next(&mut sub).await), "x");
        });
    }

    #[tokio::test]
    async fn exclusive_and_auto_delete_queues_go_with_their_owner() {
        let m = Memory::isolated();
        let other = m.connect();
        let private = QueueOptions {
            exclusive: true,
            auto_delete: true,
            ..Default::default()
        };
        let mut sub = m
            .subscribe(Subscribe {
                topology: vec![queue_with("mine", private.clone())],
                ..consume("mine", 0, true)
            })
            .await
            .unwrap();
        // Others may publish to it, not declare or consume it.
        put(&other, "mine", "hello").await;
        assert_eq!(body(&next(&mut sub).await), "hello");
        assert!(other.declare(&[queue_with("mine", private)]).await.is_err());
        assert!(other.subscribe(consume("mine", 0, true)).await.is_err());
        sub.close().await;
        assert_eq!(count(&m, "mine").await, None);

        // Auto-delete: gone with its last consumer.
        let shared = QueueOptions {
            auto_delete: true,
            ..Default::default()
        };
        m.declare(&[queue_with("shared", shared)]).await.unwrap();
        let mut one = m.subscribe(consume("shared", 0, false)).await.unwrap();
        let mut two = other.subscribe(consume("shared", 0, false)).await.unwrap();
        one.cancel().await;
        assert_eq!(count(&m, "shared").await, Some(0));
        two.cancel().await;
        assert_eq!(count(&m, "shared").await, None);

        // Exclusive only: gone when its connection closes.
        let lonely = QueueOptions {
            exclusive: true,
            ..Default::default()
        };
        other
            .declare(&[queue_with("lonely", lonely)])
            .await
            .unwrap();
        assert_eq!(count(&m, "lonely").await, Some(0));
        other.close().await;
        assert!(!other.is_connected());
        assert!(m.is_connected());
        assert_eq!(count(&m, "lonely").await, None);
    }

    #[tokio::test]
    async fn deleting_a_consumed_queue_cancels_the_consumer_which_can_reattach() {
        let m = Memory::isolated();
        let topology = vec![
            exchange("e", ExchangeKind::Direct),
            queue("q"),
            bind("q", "e", "k"),
        ];
        let mut sub = m
            .subscribe(Subscribe {
                topology,
                ..consume("q", 0, false)
            })
            .await
            .unwrap();
        let waiting = tokio::spawn(async move {
            let next = sub.next().await;
            (matches!(next, Next::Cancelled), sub)
        });
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert_eq!(m.delete_queue("q"), Some(0));
        let (cancelled, mut sub) = waiting.await.unwrap();
        assert!(cancelled);
        sub.reattach().await.unwrap();
        send(&m, "e", "k", "after", Properties::default(), true)
            .await
            .unwrap();
        assert_eq!(body(&next(&mut sub).await), "after");
    }

    #[tokio::test]
    async fn a_closed_connection_loses_its_subscriptions_and_returns_their_deliveries() {
        let m = Memory::isolated();
        let watcher = m.connect();
        m.declare(&[queue("q")]).await.unwrap();
        put(&m, "q", "a").await;
        let mut sub = m.subscribe(consume("q", 0, false)).await.unwrap();
        let a = next(&mut sub).await;
        let losses = m.losses();
        m.close().await;
        assert!(matches!(sub.next().await, Next::Lost(_)));
        assert!(sub.recover().await.is_err());
        assert!(a.ack().await.is_err());
        assert_eq!(count(&watcher, "q").await, Some(1));
        assert!(put_fails(&m).await);
        assert!(!losses.has_changed().unwrap());
    }

    async fn put_fails(memory: &Memory) -> bool {
        send(memory, "", "q", "x", Properties::default(), false)
            .await
            .is_err()
    }

    #[tokio::test]
    async fn peek_leaves_messages_and_move_takes_them_all_or_none() {
        let m = Memory::isolated();
        m.declare(&[queue("q"), queue("q.dlq")]).await.unwrap();
        for i in 0..3 {
            put(&m, "q.dlq", &i.to_string()).await;
        }
        assert_eq!(m.peek("q.dlq", 2).await.unwrap().len(), 2);
        assert_eq!(count(&m, "q.dlq").await, Some(3));
        assert!(m.peek("nope", 1).await.is_err());
        let tag = |p: &Properties| Properties {
            app_id: Some("moved".into()),
            ..p.clone()
        };
        let err = m.move_messages("q.dlq", "gone", 10, &tag).await;
        assert!(err.is_err());
        assert_eq!(count(&m, "q.dlq").await, Some(3));
        let moved = m.move_messages("q.dlq", "q", 2, &tag).await.unwrap();
        assert_eq!(moved, Moved { moved: 2 });
        assert_eq!(
            (count(&m, "q").await, count(&m, "q.dlq").await),
            (Some(2), Some(1))
        );
        let first = &m.peek("q", 1).await.unwrap()[0];
        assert_eq!(first.body, b"0");
        assert_eq!(
            (first.exchange.as_str(), first.routing_key.as_str()),
            ("", "q")
        );
        assert_eq!(first.properties.app_id.as_deref(), Some("moved"));
    }

    #[tokio::test]
    async fn connections_with_one_name_share_one_broker() {
        let (one, two) = (Memory::open("t_unit_shared"), Memory::open("t_unit_shared"));
        let apart = Memory::open("t_unit_apart");
        one.declare(&[queue("shared.q")]).await.unwrap();
        put(&two, "shared.q", "x").await;
        assert_eq!(count(&one, "shared.q").await, Some(1));
        assert_eq!(count(&apart, "shared.q").await, None);
        assert_eq!(one.describe(), "memory://t_unit_shared");
        assert_eq!(
            broker_name("memory://t_unit_shared/"),
            Some("t_unit_shared")
        );
    }

    #[tokio::test]
    async fn direct_reply_to_routes_replies_back_to_the_publishing_connection() {
        let caller = Memory::isolated();
        let server = caller.connect();
        server.declare(&[queue("requests")]).await.unwrap();
        let direct = "amq.rabbitmq.reply-to";
        // Without a consumer of the pseudo-queue, such a publish is refused, as on RabbitMQ.
        let asking = Properties::default().with_reply_to(direct);
        let refused = send(&caller, "", "requests", "q", asking.clone(), true).await;
        assert!(refused.is_err());
        assert!(caller.subscribe(consume(direct, 0, false)).await.is_err());
        let mut replies = caller.subscribe(consume(direct, 0, true)).await.unwrap();
        assert!(caller.subscribe(consume(direct, 0, true)).await.is_err());
        send(&caller, "", "requests", "q", asking, true)
            .await
            .unwrap();

        let mut requests = server
            .subscribe(consume("requests", 0, false))
            .await
            .unwrap();
        let request = next(&mut requests).await;
        let reply_to = request.message.properties.reply_to.clone().unwrap();
        assert!(reply_to.starts_with("amq.rabbitmq.reply-to."), "{reply_to}");
        assert!(crate::rpc::names::is_reply_queue(&reply_to));
        for frame in ["one", "two"] {
            send(&server, "", &reply_to, frame, Properties::default(), false)
                .await
                .unwrap();
        }
        request.ack().await.unwrap();
        let (one, two) = (next(&mut replies).await, next(&mut replies).await);
        assert_eq!((body(&one), body(&two)), ("one", "two"));
        assert_eq!(one.message.routing_key, reply_to);
        // The other connection has no direct consumer of its own.
        let theirs = Properties::default().with_reply_to(direct);
        assert!(send(&server, "", "requests", "q", theirs, true)
            .await
            .is_err());

        // Gone with its consumer: a reply is then unroutable.
        replies.close().await;
        let late = send(&server, "", &reply_to, "late", Properties::default(), true).await;
        assert!(matches!(late, Err(Error::Unroutable { .. })));
    }
}
