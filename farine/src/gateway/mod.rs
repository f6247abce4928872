//! `farine gateway`: RPC and broadcasts for browsers, over HTTP, Server-Sent Events and
//! WebSocket (feature `gateway`).
//!
//! The gateway is a process between browsers and services: it calls the methods its
//! `[gateway]` section exposes with farine's own client, and follows the broadcast exchanges it
//! subscribes to with one queue each, fanning their events out to the browsers that follow
//! them. What a browser sees is bounded and cleaned: only exposed methods exist for it, sizes,
//! rates and queues are limited, and an infrastructure error is a short message with a request
//! id (the detail is in the gateway's log, under that id).
//!
//! - `POST /rpc/{service}/{method}` with a JSON array (positional arguments) or object (by
//!   name): the result as JSON, or as `application/x-ndjson` / `text/event-stream` items when
//!   the `Accept` header asks for them;
//! - `GET /events/{exchange}`: the exchange's events as Server-Sent Events, with ids and
//!   `Last-Event-ID` resumption within the last `replay_events`;
//! - `GET /ws`: a WebSocket of JSON messages (calls, stream items, cancels, subscriptions);
//! - everything else: the files of `static_dir`, if set.
//!
//! ```no_run
//! # async fn demo() -> farine::Result<()> {
//! let config = farine::Config::from_str(
//!     "[DEFAULT]\namqp_uri = amqp://guest:guest@127.0.0.1:5672/%2f\n\
//!      [gateway]\nlisten = 127.0.0.1:8080\nexpose = calc.add\n",
//!     "farine.ini",
//! )?;
//! let gateway = farine::gateway::Gateway::start(&config).await?;
//! println!("listening on {}", gateway.local_addr());
//! gateway.stop().await;
//! # Ok(()) }
//! ```

mod auth;
mod call;
mod events;
mod http;
mod origin;
mod reply;
mod ws;

use std::net::SocketAddr;
use std::sync::Arc;

use tokio_util::sync::CancellationToken;

use crate::broker::Broker;
use crate::config::GatewaySettings;
use crate::rpc::Client;
use crate::{Config, Error, Result};

/// The section of the INI file the gateway reads.
pub const SECTION: &str = "gateway";

/// What every request handler shares.
pub(crate) struct State {
    pub settings: GatewaySettings,
    pub client: Client,
    pub hub: events::Hub,
    pub auth: auth::Authenticator,
    /// HTTP calls in flight, in all.
    pub http_calls: Arc<tokio::sync::Semaphore>,
    /// `max_calls_per_second`, as a quota (each WebSocket has a limiter of its own).
    pub call_rate: governor::Quota,
    /// Calls per second per client address over HTTP.
    pub http_rate: governor::DefaultKeyedRateLimiter<std::net::IpAddr>,
    /// Cancelled when the gateway stops: sockets close, event streams end.
    pub shutdown: CancellationToken,
}

/// A running gateway.
pub struct Gateway {
    addr: SocketAddr,
    shutdown: CancellationToken,
    server: tokio::task::JoinHandle<()>,
    broker: Arc<Broker>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Gateway {
    /// Reads `[gateway]`, connects to the broker, follows the subscribed exchanges and
    /// listens. Errors name the file, section and key, or the address that cannot be bound.
    pub async fn start(config: &Config) -> Result<Gateway> {
        let section = config.service(SECTION)?;
        let settings = GatewaySettings::from_settings(&section)?;
        let auth = auth::Authenticator::new(&settings.auth);
        if matches!(settings.auth, crate::config::Auth::None) && !settings.expose.is_empty() {
            tracing::warn!(
                "gateway: no auth_tokens or auth_jwt_secret in [{SECTION}]: anyone who reaches \
                 {} may call {}",
                settings.listen,
                settings.expose.join(", ")
            );
        }
        let listener = tokio::net::TcpListener::bind(settings.listen)
            .await
            .map_err(|err| Error::Config {
                file: config.path().to_owned(),
                section: SECTION.to_owned(),
                key: "listen".to_owned(),
                message: format!("cannot listen on {}: {err}", settings.listen),
            })?;
        let addr = listener.local_addr().map_err(|err| Error::Config {
            file: config.path().to_owned(),
            section: SECTION.to_owned(),
            key: "listen".to_owned(),
            message: format!("cannot read the address listened on: {err}"),
        })?;
        let broker = Arc::new(Broker::for_service(&section).await?);
        let client = Client::with_broker(broker.clone(), Arc::new(config.clone()), None).await?;
        let shutdown = CancellationToken::new();
        let (hub, mut tasks) =
            events::Hub::start(&settings, &section, broker.clone(), &shutdown).await;
        let call_rate = governor::Quota::per_second(
            std::num::NonZeroU32::new(settings.max_calls_per_second.max(1))
                .unwrap_or(std::num::NonZeroU32::MIN),
        );
        let state = Arc::new(State {
            http_calls: Arc::new(tokio::sync::Semaphore::new(settings.max_http_calls)),
            http_rate: governor::RateLimiter::keyed(call_rate),
            call_rate,
            settings,
            client,
            hub,
            auth,
            shutdown: shutdown.clone(),
        });
        tasks.push(tokio::spawn(forget_idle_addresses(state.clone())));
        let app = http::router(state.clone());
        let stop = shutdown.clone();
        let server = tokio::spawn(async move {
            let served = axum::serve(
                listener,
                app.into_make_service_with_connect_info::<SocketAddr>(),
            )
            .with_graceful_shutdown(async move { stop.cancelled().await })
            .await;
            if let Err(err) = served {
                tracing::error!("gateway: the HTTP server stopped: {err}");
            }
        });
        tracing::info!(
            "gateway listening on http://{addr}; exposed: {}; subscribable: {}",
            list_or_none(&state.settings.expose),
            list_or_none(
                &state
                    .settings
                    .subscribe
                    .iter()
                    .map(|s| s.exchange.clone())
                    .collect::<Vec<_>>()
            ),
        );
        Ok(Gateway {
            addr,
            shutdown,
            server,
            broker,
            tasks,
        })
    }

    /// The address it listens on (useful with `listen = 127.0.0.1:0`).
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Closes every socket and event stream, waits for the HTTP calls in flight, and
    /// disconnects.
    pub async fn stop(self) {
        self.shutdown.cancel();
        let _ = self.server.await;
        for task in self.tasks {
            task.abort();
            let _ = task.await;
        }
        self.broker.close().await;
    }
}

fn list_or_none(items: &[String]) -> String {
    if items.is_empty() {
        "none".to_owned()
    } else {
        items.join(", ")
    }
}

/// The HTTP rate limiter keeps a cell per client address: forget those idle for a while, so
/// many clients over time do not grow it without bound.
async fn forget_idle_addresses(state: Arc<State>) {
    let mut every = tokio::time::interval(std::time::Duration::from_secs(60));
    loop {
        every.tick().await;
        state.http_rate.retain_recent();
        state.http_rate.shrink_to_fit();
    }
}

/// Runs the gateway of `FARINE_INI` until SIGINT or SIGTERM.
pub fn run() -> std::process::ExitCode {
    let config = match Config::from_env() {
        Ok(config) => config,
        Err(err) => {
            eprintln!("farine gateway: {err}");
            return std::process::ExitCode::FAILURE;
        }
    };
    match crate::config::LogSettings::from_config(&config) {
        Ok(settings) => crate::runtime::init_logging_with(&settings),
        Err(err) => {
            eprintln!("farine gateway: {err}");
            return std::process::ExitCode::FAILURE;
        }
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("farine gateway: cannot start the async runtime: {err}");
            return std::process::ExitCode::FAILURE;
        }
    };
    runtime.block_on(async {
        let mut signals = match crate::runtime::Signals::install() {
            Ok(signals) => signals,
            Err(err) => {
                eprintln!("farine gateway: {err}");
                return std::process::ExitCode::FAILURE;
            }
        };
        let gateway = match Gateway::start(&config).await {
            Ok(gateway) => gateway,
            Err(err) => {
                eprintln!("farine gateway: {err}");
                return std::process::ExitCode::FAILURE;
            }
        };
        let signal = signals.next().await;
        tracing::info!("{signal}: gateway stopping");
        gateway.stop().await;
        std::process::ExitCode::SUCCESS
    })
}
