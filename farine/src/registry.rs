//! What the macros register at link time: each service's name and a function that builds
//! its entry points around one shared instance. The runtime reads these; nothing else does.

use crate::context::ServiceContext;
use crate::execute::{ExecuteHandler, ExecuteSpec};
pub use crate::rpc::server::{Call, RpcEntry, RpcHandler, RpcSpec};
use crate::stream::EventHandler;
use futures::future::BoxFuture;
use futures::FutureExt;
use serde::de::DeserializeOwned;
use std::future::Future;
use std::sync::Arc;

/// One `#[farine::service]`, collected with `inventory`.
pub struct ServiceRegistration {
    pub name: &'static str,
    pub build: fn() -> ServiceDef,
}

inventory::collect!(ServiceRegistration);

/// Every service compiled into this binary, in name order.
pub fn services() -> Vec<&'static ServiceRegistration> {
    let mut all: Vec<_> = inventory::iter::<ServiceRegistration>().collect();
    all.sort_by_key(|s| s.name);
    all
}

/// A service's entry points, built around one instance of the service.
pub struct ServiceDef {
    pub name: &'static str,
    pub consumers: Vec<ConsumeEntry>,
    pub rpcs: Vec<RpcEntry>,
    pub publishers: Vec<PublishSpec>,
    pub listeners: Vec<(ListenAttr, EventHandler)>,
    pub loops: Vec<(ExecuteAttr, ExecuteHandler)>,
    /// Methods that take a database parameter: the service must have a database.
    pub db_methods: Vec<&'static str>,
}

impl ServiceDef {
    pub fn new(name: &'static str) -> Self {
        ServiceDef {
            name,
            consumers: Vec::new(),
            rpcs: Vec::new(),
            listeners: Vec::new(),
            loops: Vec::new(),
            publishers: Vec::new(),
            db_methods: Vec::new(),
        }
    }

    /// Adds a consumer, its destination resolved against the service's name.
    pub fn consume(&mut self, attr: ConsumeAttr, handler: ConsumeHandler) {
        let spec = attr.spec(self.name);
        self.consumers.push(ConsumeEntry { spec, handler });
    }

    pub fn rpc(&mut self, spec: RpcSpec, handler: RpcHandler) {
        self.rpcs.push(RpcEntry { spec, handler });
    }

    /// Records a publisher, its destination resolved against the service's name.
    pub fn publish(&mut self, attr: PublishAttr) {
        let spec = attr.spec(self.name);
        self.publishers.push(spec);
    }

    pub fn listen(&mut self, attr: ListenAttr, handler: EventHandler) {
        self.listeners.push((attr, handler));
    }

    pub fn execute(&mut self, attr: ExecuteAttr, handler: ExecuteHandler) {
        self.loops.push((attr, handler));
    }

    pub fn uses_db(&mut self, method: &'static str) {
        self.db_methods.push(method);
    }
}

/// `#[amqp::consume(...)]` as written: what is not given is decided by [`ConsumeAttr::spec`].
#[derive(Clone, Debug)]
pub struct ConsumeAttr {
    pub method: &'static str,
    pub exchange: Option<&'static str>,
    pub routing_key: Option<&'static str>,
    pub exchange_type: Option<&'static str>,
    pub queue: Option<&'static str>,
    pub concurrency: Option<u16>,
}

impl ConsumeAttr {
    /// The consumer's destination: exchange and routing key default to the service's name.
    /// (The queue, the exchange type and the prefetch need the settings: `consumer::attach`.)
    pub fn spec(&self, service: &'static str) -> ConsumeSpec {
        ConsumeSpec {
            method: self.method,
            exchange: self.exchange.unwrap_or(service),
            routing_key: self.routing_key.unwrap_or(service),
            exchange_type: self.exchange_type,
            queue: self.queue,
            concurrency: self.concurrency,
        }
    }
}

/// A consumer's destination, resolved from its [`ConsumeAttr`].
#[derive(Clone, Debug)]
pub struct ConsumeSpec {
    pub method: &'static str,
    pub exchange: &'static str,
    pub routing_key: &'static str,
    pub exchange_type: Option<&'static str>,
    pub queue: Option<&'static str>,
    pub concurrency: Option<u16>,
}

/// `#[stream::http(...)]` as written.
#[derive(Clone, Debug)]
pub struct ListenAttr {
    pub method: &'static str,
    pub endpoint: Option<&'static str>,
}

/// `#[execute::method(...)]` as written; what is not given comes from [`ExecuteSpec::new`].
#[derive(Clone, Debug)]
pub struct ExecuteAttr {
    pub method: &'static str,
    pub restart: Option<bool>,
    pub restart_delay_ms: Option<u64>,
    pub max_restarts: Option<u32>,
}

impl ExecuteAttr {
    pub fn spec(&self, service: &str) -> ExecuteSpec {
        let mut spec = ExecuteSpec::new(format!("{service}.{}", self.method));
        if let Some(restart) = self.restart {
            spec.restart = restart;
        }
        if let Some(ms) = self.restart_delay_ms {
            spec.restart_delay = std::time::Duration::from_millis(ms);
        }
        spec.max_restarts = self.max_restarts;
        spec
    }
}

/// `#[amqp::publish(...)]` as written.
#[derive(Clone, Debug)]
pub struct PublishAttr {
    pub method: &'static str,
    pub exchange: Option<&'static str>,
    pub routing_key: Option<&'static str>,
}

impl PublishAttr {
    /// Where the publisher sends: the exchange and routing key default to the service name.
    pub fn spec(&self, service: &'static str) -> PublishSpec {
        let (exchange, routing_key) =
            crate::amqp::publish_destination(service, self.exchange, self.routing_key);
        PublishSpec {
            method: self.method,
            exchange,
            routing_key,
        }
    }
}

/// Where a method's publisher sends, resolved from its [`PublishAttr`].
#[derive(Clone, Debug)]
pub struct PublishSpec {
    pub method: &'static str,
    pub exchange: &'static str,
    pub routing_key: &'static str,
}

pub struct ConsumeEntry {
    pub spec: ConsumeSpec,
    pub handler: ConsumeHandler,
}

/// How one delivery ended, as the entry point must act on it.
#[derive(Debug)]
pub enum Outcome {
    /// Handled: ack.
    Done,
    /// The handler failed (error or panic): retry per policy, then dead-letter.
    Failed(String),
    /// The message can never be handled (bad JSON, wrong shape): dead-letter at once.
    Poison(String),
}

/// Runs the user's method on a raw body.
pub type ConsumeHandler =
    Arc<dyn Fn(Arc<ServiceContext>, &[u8]) -> BoxFuture<'static, Outcome> + Send + Sync>;

/// What a handler may return: `()` or any `Result` whose error can be displayed.
#[diagnostic::on_unimplemented(
    message = "a consume, stream::http or execute method returns `()` or `Result<_, E>` with `E: Display`, not `{Self}`",
    label = "returns `{Self}`",
    note = "`()` and `Ok(_)` are success; `Err(_)` is a failure, logged, and for a consumed message retried then dead-lettered"
)]
pub trait HandlerResult {
    fn into_outcome(self) -> Outcome;
}

impl HandlerResult for Outcome {
    fn into_outcome(self) -> Outcome {
        self
    }
}

impl HandlerResult for () {
    fn into_outcome(self) -> Outcome {
        Outcome::Done
    }
}

impl<T, E: std::fmt::Display> HandlerResult for Result<T, E> {
    fn into_outcome(self) -> Outcome {
        match self {
            Ok(_) => Outcome::Done,
            Err(err) => Outcome::Failed(crate::clip::clip_owned(err.to_string())),
        }
    }
}

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
        let call =
            std::panic::AssertUnwindSafe(method(service.clone(), context, value)).catch_unwind();
        async move {
            match call.await {
                Ok(result) => result.into_outcome(),
                Err(panic) => Outcome::Failed(format!("handler panicked: {}", panic_text(&panic))),
            }
        }
        .boxed()
    })
}

/// The message of a panic payload.
pub fn panic_text(panic: &Box<dyn std::any::Any + Send>) -> String {
    if let Some(text) = panic.downcast_ref::<&str>() {
        crate::clip::clip(text).into_owned()
    } else if let Some(text) = panic.downcast_ref::<String>() {
        crate::clip::clip(text).into_owned()
    } else {
        "(no message)".to_string()
    }
}
