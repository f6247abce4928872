//! A started service's shared resources, and where code that only knows the service's name
//! (a `Publisher` inside a user method) finds them. The runtime registers each service it
//! starts; outside the runtime the settings come from `FARINE_INI` on first use.

use crate::broker::Broker;
use crate::config::{Config, ServiceConfig};
use crate::db::Database;
use crate::rpc::Client;
use crate::{Error, Result};
use futures::StreamExt;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, RwLock};
use std::time::Duration;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

/// What every entry point of one service shares.
pub struct ServiceContext {
    pub(crate) broker: Arc<Broker>,
    pub(crate) settings: Arc<ServiceConfig>,
    pub(crate) config: Arc<Config>,
    /// The service's database pool, when its section sets `db_connector`.
    pub(crate) db: Option<Arc<Database>>,
    /// The client injected into methods that call other services, made on first use.
    client: tokio::sync::OnceCell<Client>,
    /// Streaming calls in progress, by correlation id, so a caller can cancel one.
    pub(crate) streams: Streams,
    /// What runs around each delivery its entry points handle.
    pub(crate) middleware: crate::middleware::Chain,
    /// Where the service's client counts its calls, when metrics are on.
    pub(crate) metrics: Option<crate::metrics::Metrics>,
}

impl std::fmt::Debug for ServiceContext {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServiceContext")
            .field("service", &self.settings.name)
            .finish()
    }
}

impl ServiceContext {
    pub(crate) fn new(
        broker: Arc<Broker>,
        settings: Arc<ServiceConfig>,
        config: Arc<Config>,
        db: Option<Arc<Database>>,
        middleware: crate::middleware::Chain,
    ) -> Self {
        ServiceContext {
            broker,
            settings,
            config,
            db,
            client: tokio::sync::OnceCell::new(),
            streams: Streams::default(),
            middleware,
            metrics: None,
        }
    }

    /// The service's database; an error naming the section when it has none (the runtime
    /// checks this at start-up for methods that take a database parameter).
    pub fn database(&self) -> Result<&Arc<Database>> {
        self.db.as_ref().ok_or_else(|| Error::Database {
            service: self.settings.name.clone(),
            message: format!(
                "no database: set db_connector = postgres and the db_* keys in [{}] of {}",
                self.settings.name,
                self.settings.file.display()
            ),
        })
    }

    /// The service's RPC client, sharing the service's connections.
    pub async fn client(&self) -> Result<Client> {
        self.client
            .get_or_try_init(|| {
                let metrics = self
                    .metrics
                    .clone()
                    .map(|metrics| (metrics, self.settings.name.clone()));
                Client::with_broker(self.broker.clone(), self.config.clone(), metrics)
            })
            .await
            .cloned()
    }
}

/// Streaming calls in progress, by correlation id, with the `reply_to` a cancel or a credit
/// must name.
#[derive(Default)]
pub(crate) struct Streams(Mutex<HashMap<String, (String, StreamControl)>>);

/// What a caller can do to a stream it reads: stop it, and (a caller that uses credits) let
/// it run further.
#[derive(Clone)]
pub(crate) struct StreamControl {
    pub cancel: CancellationToken,
    pub flow: Option<Arc<Flow>>,
}

/// The items a caller has allowed a stream to send so far.
pub(crate) struct Flow {
    granted: AtomicU64,
    more: Notify,
}

impl Flow {
    /// Waits until item number `sent` (0-based) may go: true once granted, false when
    /// `cancel` fires or no credit comes within `wait`.
    pub async fn wait_for(&self, sent: u64, cancel: &CancellationToken, wait: Duration) -> bool {
        if sent < self.granted.load(Ordering::Acquire) {
            return true;
        }
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            // Registered before the check, so a grant in between is not missed.
            let more = self.more.notified();
            if sent < self.granted.load(Ordering::Acquire) {
                return true;
            }
            tokio::select! {
                _ = more => {}
                _ = cancel.cancelled() => return false,
                _ = tokio::time::sleep_until(deadline) => {
                    return sent < self.granted.load(Ordering::Acquire);
                }
            }
        }
    }

    fn grant(&self, items: u64) {
        // Saturating: a caller cannot wrap the count around.
        let _ = self
            .granted
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |g| {
                Some(g.saturating_add(items))
            });
        self.more.notify_waiters();
    }
}

impl Streams {
    /// Registers a stream; `credit` is the caller's first grant, if it uses credits.
    pub fn register(
        &self,
        correlation_id: &str,
        reply_to: &str,
        credit: Option<u64>,
    ) -> StreamControl {
        let control = StreamControl {
            cancel: CancellationToken::new(),
            flow: credit.map(|items| {
                Arc::new(Flow {
                    granted: AtomicU64::new(items),
                    more: Notify::new(),
                })
            }),
        };
        if !correlation_id.is_empty() {
            self.lock().insert(
                correlation_id.to_string(),
                (reply_to.to_string(), control.clone()),
            );
        }
        control
    }

    pub fn remove(&self, correlation_id: &str, reply_to: &str) {
        let mut streams = self.lock();
        // Another call may reuse the id: only its own entry goes.
        if streams
            .get(correlation_id)
            .is_some_and(|(r, _)| r == reply_to)
        {
            streams.remove(correlation_id);
        }
    }

    /// Stops the stream only when both its correlation id and its `reply_to` match.
    pub fn cancel(&self, correlation_id: &str, reply_to: &str) {
        let mut streams = self.lock();
        if streams
            .get(correlation_id)
            .is_some_and(|(r, _)| r == reply_to)
        {
            if let Some((_, control)) = streams.remove(correlation_id) {
                control.cancel.cancel();
            }
        }
    }

    /// Lets the stream send `items` more, when both its ids match.
    pub fn grant(&self, correlation_id: &str, reply_to: &str, items: u64) {
        let streams = self.lock();
        if let Some((r, control)) = streams.get(correlation_id) {
            if r == reply_to {
                if let Some(flow) = &control.flow {
                    flow.grant(items);
                }
            }
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, (String, StreamControl)>> {
        self.0
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

type Services = RwLock<HashMap<String, Arc<ServiceContext>>>;

fn services() -> &'static Services {
    static SERVICES: OnceLock<Services> = OnceLock::new();
    SERVICES.get_or_init(Default::default)
}

pub(crate) fn register(name: &str, context: Arc<ServiceContext>) {
    services()
        .write()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
        .insert(name.to_string(), context);
}

pub(crate) fn unregister(name: &str) {
    services()
        .write()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
        .remove(name);
}

tokio::task_local! {
    /// The service whose handler runs in this task: a `Publisher` inside it uses that
    /// service's broker, even when several runtimes run a service of the same name in one
    /// process (tests in parallel, each on a broker of its own).
    static CURRENT: Arc<ServiceContext>;
}

/// Runs `future` (a handler) as `context`'s.
pub(crate) fn scope<F: std::future::Future>(
    context: Arc<ServiceContext>,
    future: F,
) -> impl std::future::Future<Output = F::Output> {
    CURRENT.scope(context, future)
}

/// `stream`, each item produced as `context`'s (a streaming RPC method's items run their code
/// when polled, outside the method's own call).
pub(crate) fn scope_stream<S: futures::Stream + Unpin>(
    context: Arc<ServiceContext>,
    mut stream: S,
) -> impl futures::Stream<Item = S::Item> {
    futures::stream::poll_fn(move |cx| {
        CURRENT.sync_scope(context.clone(), || stream.poll_next_unpin(cx))
    })
}

/// The context of `service`: the one whose handler is running, else the running one
/// registered by that name, else one built from `FARINE_INI`.
pub(crate) async fn service(name: &str) -> Result<Arc<ServiceContext>> {
    let current = CURRENT
        .try_with(|context| (context.settings.name == name).then(|| context.clone()))
        .ok()
        .flatten();
    if let Some(context) = current {
        if context.broker.is_connected() {
            return Ok(context);
        }
    }
    let known = services()
        .read()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
        .get(name)
        .cloned();
    if let Some(context) = &known {
        if context.broker.is_connected() {
            return Ok(context.clone());
        }
    }
    let (settings, config) = match &known {
        Some(context) => (context.settings.clone(), context.config.clone()),
        None => {
            let config = Config::from_env()?;
            (Arc::new(config.service(name)?), Arc::new(config))
        }
    };
    let broker = Broker::shared(&settings).await?;
    let db = known.as_ref().and_then(|context| context.db.clone());
    let context = Arc::new(ServiceContext::new(
        broker,
        settings,
        config,
        db,
        Default::default(),
    ));
    register(name, context.clone());
    Ok(context)
}
