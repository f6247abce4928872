//! A test kit for services (feature `testing`): start chosen services in the test process on
//! a fresh in-process broker (`memory://`, no RabbitMQ needed) or on a real broker (same
//! API), set configuration keys in code, call them through their typed client, publish an
//! event and wait until a consumer has handled it (with its outcome), capture what a service
//! publishes, read what was dead-lettered, and stop everything.
//!
//! ```
//! use farine::prelude::*;
//! use farine::testing::{Handling, TestKit};
//! use std::time::Duration;
//!
//! #[derive(Default)]
//! pub struct Adder;
//!
//! #[farine::service(name = "adder")]
//! impl Adder {
//!     #[rpc::method]
//!     async fn add(&self, a: i64, b: i64) -> i64 {
//!         a + b
//!     }
//!
//!     /// Each number on exchange "adder", routing key "numbers", comes back doubled.
//!     #[amqp::consume(routing_key = "numbers")]
//!     async fn on_number(&self, n: i64) -> farine::Result<()> {
//!         self.doubled(n * 2).await
//!     }
//!
//!     #[amqp::publish(routing_key = "doubled")]
//!     async fn doubled(&self, publish: Publisher, n: i64) -> farine::Result<()> {
//!         publish.send(&n).await
//!     }
//! }
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> farine::Result<()> {
//! let kit = TestKit::memory()
//!     .service("adder")
//!     .set("adder", "retry_attempts", "0")
//!     .start()
//!     .await?;
//! let adder = AdderClient::connect(kit.config()).await?;
//! let calls = kit.handled("adder.add");
//! assert_eq!(adder.add(2, 3).await?, 5);
//! assert_eq!(calls.wait(Duration::from_secs(5)).await?, Handling::Done);
//!
//! let doubled = kit.capture("adder", "doubled").await?;
//! let handled = kit.handled("adder.on_number");
//! kit.publish("adder", "numbers", &21).await?;
//! assert_eq!(handled.wait(Duration::from_secs(5)).await?, Handling::Done);
//! assert_eq!(doubled.next(Duration::from_secs(5)).await, Some(farine::json!(42)));
//!
//! kit.publish("adder", "numbers", &"not a number").await?;
//! assert!(matches!(handled.wait(Duration::from_secs(5)).await?, Handling::Poison(_)));
//! assert_eq!(kit.dead_letters("numbers").await?.len(), 1);
//! kit.stop().await
//! # }
//! ```
//!
//! Services must be linked into the test binary (a `#[farine::service]` in the test itself,
//! or `use mycrate as _;` for one in a library).

pub use crate::observe::{Handled, Handling};

use crate::broker::Broker;
use crate::config::Config;
use crate::dlq::{self, DeadLetter};
use crate::middleware::Middleware;
use crate::transport::{Next, Properties, Subscription};
use crate::{Client, Error, Result, Running, Runtime};
use serde::Serialize;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{broadcast, Mutex};

/// Services under test, and the broker they run on.
pub struct TestKit {
    config: Config,
    running: Running,
    broker: Arc<Broker>,
    /// The broker's URI as the observer names it (password hidden).
    broker_uri: String,
}

/// What [`TestKit::memory`] and [`TestKit::broker`] start.
#[must_use = "call .start().await"]
pub struct Builder {
    uri: String,
    services: Vec<String>,
    sections: Vec<(String, String, String)>,
    middleware: Vec<Arc<dyn Middleware>>,
}

impl TestKit {
    /// On a fresh in-process broker of its own (`memory://farine-test-kit-<n>`), so tests run
    /// in parallel without seeing each other's messages.
    pub fn memory() -> Builder {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        Builder::on(format!(
            "memory://farine-test-kit-{}-{n}",
            std::process::id()
        ))
    }

    /// On the broker at `uri` (`amqp://...`, or `memory://NAME` to share one with other code
    /// in the process).
    pub fn broker(uri: impl Into<String>) -> Builder {
        Builder::on(uri.into())
    }

    /// The configuration the services run with: for their typed clients
    /// (`CalcClient::connect(kit.config())`) and for `farine::Client::connect`.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// An untyped client on the kit's broker.
    pub async fn client(&self) -> Result<Client> {
        Client::connect(&self.config).await
    }

    /// Publishes `message` as JSON (persistent, confirmed, mandatory: an error if no queue is
    /// bound for it).
    pub async fn publish<T: Serialize + ?Sized>(
        &self,
        exchange: &str,
        routing_key: &str,
        message: &T,
    ) -> Result<()> {
        let body = serde_json::to_vec(message).map_err(Error::json(format!(
            "encoding a test message for exchange {exchange:?}"
        )))?;
        self.broker
            .publish(
                exchange,
                routing_key,
                &body,
                Properties::json().with_delivery_mode(2),
                true,
            )
            .await
    }

    /// Listens, from now on, to the deliveries that the consumer or RPC method
    /// `service.method` of this kit finishes (not those of another kit in the process).
    /// Call it before publishing or calling, then [`Waiter::wait`].
    pub fn handled(&self, entry_point: &str) -> Waiter {
        Waiter {
            entry_point: entry_point.to_string(),
            broker: self.broker_uri.clone(),
            receiver: Mutex::new(crate::observe::listen()),
        }
    }

    /// Captures, from now on, every message published to `exchange` with `routing_key` (a
    /// private queue bound there; the exchange must exist: a service declares its publishers'
    /// exchanges when it starts).
    pub async fn capture(&self, exchange: &str, routing_key: &str) -> Result<Captured> {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let queue = format!(
            "farine.test-kit.capture.{}.{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        );
        let subscription = self
            .broker
            .private_queue(
                format!("capture of {exchange}/{routing_key}"),
                &queue,
                Some((exchange, routing_key)),
            )
            .await?;
        Ok(Captured {
            subscription: Mutex::new(subscription),
        })
    }

    /// What is parked in `queue`'s dead-letter queue (`queue` or `queue.dlq`), oldest first.
    pub async fn dead_letters(&self, queue: &str) -> Result<Vec<DeadLetter>> {
        dlq::peek(&self.broker, queue, usize::MAX).await
    }

    /// Stops the services (in-flight work finishes) and closes the kit's connection.
    pub async fn stop(self) -> Result<()> {
        let stopped = self.running.shutdown().await;
        self.broker.close().await;
        stopped
    }
}

impl Builder {
    fn on(uri: String) -> Builder {
        Builder {
            uri,
            services: Vec::new(),
            sections: Vec::new(),
            middleware: Vec::new(),
        }
    }

    /// Starts this service (by its name); every service linked in when none is named.
    pub fn service(mut self, name: &str) -> Builder {
        self.services.push(name.to_string());
        self
    }

    /// Runs `middleware` around every delivery the services handle (see
    /// [`crate::middleware`]), as `Runtime::middleware` does.
    pub fn middleware(mut self, middleware: impl Middleware) -> Builder {
        self.middleware.push(Arc::new(middleware));
        self
    }

    /// Sets `key = value` in `[section]` (`DEFAULT` for every service).
    pub fn set(mut self, section: &str, key: &str, value: &str) -> Builder {
        self.sections
            .push((section.to_string(), key.to_string(), value.to_string()));
        self
    }

    /// Starts the services; returns once every entry point is attached.
    pub async fn start(self) -> Result<TestKit> {
        // [DEFAULT] first (the broker, then keys set for every service), then one section
        // per service in the order they were first named.
        let mut text = format!("[DEFAULT]\namqp_uri = {}\n", self.uri);
        let is_default = |section: &str| section.eq_ignore_ascii_case("default");
        for (_, key, value) in self.sections.iter().filter(|(s, _, _)| is_default(s)) {
            text.push_str(&format!("{key} = {value}\n"));
        }
        let mut named: Vec<&str> = Vec::new();
        for (section, _, _) in &self.sections {
            if !is_default(section) && !named.contains(&section.as_str()) {
                named.push(section);
            }
        }
        for section in named {
            text.push_str(&format!("[{section}]\n"));
            for (_, key, value) in self.sections.iter().filter(|(s, _, _)| s == section) {
                text.push_str(&format!("{key} = {value}\n"));
            }
        }
        let config = Config::from_str(&text, "farine::testing")?;
        let mut runtime = Runtime::new(config.clone());
        if !self.services.is_empty() {
            runtime = runtime.only(self.services);
        }
        for middleware in self.middleware {
            runtime = runtime.shared_middleware(middleware);
        }
        let running = runtime.start().await?;
        let settings = config.service("farine-test-kit")?;
        let broker = Arc::new(Broker::for_service(&settings).await?);
        Ok(TestKit {
            config,
            running,
            broker,
            broker_uri: settings.amqp_uri.to_string(),
        })
    }
}

/// Waits for deliveries of one consumer (see [`TestKit::handled`]).
pub struct Waiter {
    entry_point: String,
    broker: String,
    receiver: Mutex<broadcast::Receiver<Handled>>,
}

impl Waiter {
    /// The outcome of the next delivery this entry point finishes (acked, retried or parked;
    /// a call answered), or an error after `within`.
    pub async fn wait(&self, within: Duration) -> Result<Handling> {
        let mut receiver = self.receiver.lock().await;
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let next = tokio::time::timeout_at(deadline, receiver.recv()).await;
            match next {
                Ok(Ok(handled))
                    if handled.entry_point == self.entry_point && handled.broker == self.broker =>
                {
                    return Ok(handled.outcome)
                }
                Ok(Ok(_)) | Ok(Err(broadcast::error::RecvError::Lagged(_))) => continue,
                Ok(Err(broadcast::error::RecvError::Closed)) | Err(_) => {
                    return Err(Error::Runtime(format!(
                        "{} handled nothing within {within:?}",
                        self.entry_point
                    )))
                }
            }
        }
    }
}

/// Messages captured on one exchange and routing key (see [`TestKit::capture`]).
pub struct Captured {
    subscription: Mutex<Box<dyn Subscription>>,
}

impl Captured {
    /// The next captured message's JSON body (a body that is not JSON comes as a string), or
    /// `None` when none arrives within `within`.
    pub async fn next(&self, within: Duration) -> Option<serde_json::Value> {
        let mut subscription = self.subscription.lock().await;
        let deadline = tokio::time::Instant::now() + within;
        loop {
            match tokio::time::timeout_at(deadline, subscription.next()).await {
                Ok(Next::Delivery(delivery)) => {
                    let body = &delivery.message.body;
                    return Some(serde_json::from_slice(body).unwrap_or_else(|_| {
                        serde_json::Value::String(String::from_utf8_lossy(body).into_owned())
                    }));
                }
                Ok(Next::Lost(_)) => {
                    if subscription.recover().await.is_err() {
                        return None;
                    }
                }
                Ok(Next::Cancelled) | Err(_) => return None,
            }
        }
    }
}
