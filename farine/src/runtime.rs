//! The supervisor: starts the services compiled into the binary, attaches every entry point,
//! and on SIGINT/SIGTERM stops consuming, lets in-flight work finish within the grace period,
//! then closes the connections. A second signal exits at once.

use crate::broker::Broker;
use crate::config::{Config, LogFormat, LogSettings, ServiceConfig};
use crate::context::{self, ServiceContext};
use crate::db::{Database, DbSettings};
use crate::entry;
use crate::http::{Endpoint, Readiness};
use crate::metrics::Metrics;
use crate::middleware::{Chain, Middleware};
use crate::registry::{self, ServiceRegistration};
use crate::{Error, Result};
use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::EnvFilter;

/// The environment variable that puts a service binary in migration mode: when set, `run`
/// applies the sqlx migrations in the folder it names to every service's database, then
/// returns. `farine migrate --start MODULE` sets it to the crate's `migrations/` folder.
///
/// ```no_run
/// // What `farine migrate` does for each service binary.
/// std::process::Command::new("target/debug/shop")
///     .env(farine::runtime::MIGRATIONS_ENV, "migrations")
///     .status()?;
/// # Ok::<(), std::io::Error>(())
/// ```
pub const MIGRATIONS_ENV: &str = "FARINE_MIGRATIONS";

/// Starts services from a [`Config`]: the whole binary's (`farine::main!`) or a chosen few
/// (tests, embedding).
///
/// ```no_run
/// # async fn demo() -> farine::Result<()> {
/// let config = farine::Config::from_env()?;
/// let running = farine::Runtime::new(config).only(["calc"]).start().await?;
/// // ... every entry point of `calc` is attached here ...
/// running.shutdown().await?;
/// # Ok(()) }
/// ```
pub struct Runtime {
    config: Config,
    only: Option<Vec<String>>,
    /// `farine::main!`'s crates: services linked in from any other crate (a dependency used
    /// for its typed client) are not run.
    crates: Option<Vec<String>>,
    /// Middleware, outermost first, with the service it is for (`None`: every service).
    middleware: Vec<(Option<String>, Arc<dyn Middleware>)>,
    /// The built-in tracing middleware (off only to measure what it costs).
    tracing: bool,
}

/// Services that are started: stop them with [`Running::shutdown`].
pub struct Running {
    services: Vec<String>,
    brokers: Vec<Arc<Broker>>,
    shutdown: CancellationToken,
    tasks: JoinSet<Result<()>>,
    grace: Duration,
    /// The stream-cancel listeners, stopped by `drained` once the entry points have drained:
    /// a caller may drop a stream while it drains, and that stream must stop then too.
    listeners: Vec<tokio::task::JoinHandle<()>>,
    drained: CancellationToken,
    /// The HTTP endpoint (`http_listen`), its metrics and what `/health/ready` reports.
    endpoint: Option<Endpoint>,
    metrics: Option<Metrics>,
    readiness: Option<Arc<Readiness>>,
}

impl Runtime {
    pub fn new(config: Config) -> Self {
        Runtime {
            config,
            only: None,
            crates: None,
            middleware: Vec::new(),
            tracing: true,
        }
    }

    /// Leaves out the built-in tracing middleware: no `farine.handle` span, no trace context
    /// (a received `traceparent` is not passed on). Only to measure what tracing costs
    /// (`farine-bench --observe=off`); not a supported configuration.
    #[doc(hidden)]
    pub fn without_tracing(mut self) -> Self {
        self.tracing = false;
        self
    }

    /// Starts only the services with these names (all compiled-in services otherwise).
    pub fn only<I, S>(mut self, names: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.only = Some(names.into_iter().map(Into::into).collect());
        self
    }

    /// Runs `middleware` around every delivery that every service of this runtime handles
    /// (see [`crate::middleware`]); the first added is the outermost.
    pub fn middleware(self, middleware: impl Middleware) -> Self {
        self.shared_middleware(Arc::new(middleware))
    }

    pub(crate) fn shared_middleware(mut self, middleware: Arc<dyn Middleware>) -> Self {
        self.middleware.push((None, middleware));
        self
    }

    /// Runs `middleware` around every delivery that the service `service` handles.
    pub fn service_middleware(mut self, service: &str, middleware: impl Middleware) -> Self {
        self.middleware
            .push((Some(service.to_string()), Arc::new(middleware)));
        self
    }

    /// The middleware of one service, outermost first: the built-in tracing (the
    /// `farine.handle` span and the delivery's trace context, see [`crate::trace`]), then the
    /// runtime's.
    fn chain_for(&self, service: &str) -> Chain {
        let tracing: Arc<dyn Middleware> = Arc::new(crate::trace::Tracing);
        Chain::new(
            std::iter::once(tracing)
                .filter(|_| self.tracing)
                .chain(
                    self.middleware
                        .iter()
                        .filter(|(only, _)| only.as_deref().is_none_or(|only| only == service))
                        .map(|(_, middleware)| middleware.clone()),
                )
                .collect(),
        )
    }

    /// Reads and checks every service's settings, connects, declares the topology and
    /// attaches every entry point; returns once all are attached.
    pub async fn start(mut self) -> Result<Running> {
        let registrations = self.selected()?;
        let config = Arc::new(self.config.clone());
        // Check every section before touching the network: a bad value stops the start.
        let mut chosen: Vec<(&ServiceRegistration, ServiceConfig)> = Vec::new();
        for registration in registrations {
            let settings = self.config.service(registration.name)?;
            if settings.enabled {
                chosen.push((registration, settings));
            } else {
                tracing::info!(service = registration.name, file = %self.config.path().display(), "service disabled (enabled = false): not started");
            }
        }
        // The endpoint first, so a port already taken stops the start before any connection;
        // it serves liveness at once, and readiness once every entry point is attached.
        let (endpoint, metrics, readiness) = match self.config.http_listen()? {
            Some(addr) => {
                let listener = tokio::net::TcpListener::bind(addr).await.map_err(|err| {
                    self.config
                        .http_listen_error("DEFAULT", format!("cannot listen on {addr}: {err}"))
                })?;
                let metrics = Metrics::new();
                let readiness = Arc::new(Readiness::default());
                let endpoint = crate::http::serve(listener, metrics.clone(), readiness.clone());
                // Outermost: its timing covers the other middleware too.
                self.middleware
                    .insert(0, (None, Arc::new(metrics.clone()) as Arc<dyn Middleware>));
                (Some(endpoint), Some(metrics), Some(readiness))
            }
            None => (None, None, None),
        };
        let mut attached: Vec<crate::http::Started> = Vec::new();
        let shutdown = CancellationToken::new();
        let mut running = Running {
            services: Vec::new(),
            brokers: Vec::new(),
            shutdown: shutdown.clone(),
            tasks: JoinSet::new(),
            grace: Duration::ZERO,
            listeners: Vec::new(),
            drained: CancellationToken::new(),
            endpoint,
            metrics,
            readiness,
        };
        for (registration, settings) in chosen {
            let def = (registration.build)();
            let broker = match running
                .brokers
                .iter()
                .find(|b| b.uri().expose() == settings.amqp_uri.expose())
            {
                Some(broker) => broker.clone(),
                None => {
                    let broker = connect(&settings).await?;
                    running.brokers.push(broker.clone());
                    broker
                }
            };
            let db = match DbSettings::from_settings(&settings)? {
                Some(db) => Some(Arc::new(Database::connect(def.name, db).await?)),
                None if !def.db_methods.is_empty() => {
                    return Err(settings.error(
                        "db_connector",
                        format!(
                            "{}.{} takes a database parameter, but the section sets no db_connector = postgres",
                            def.name, def.db_methods[0]
                        ),
                    ))
                }
                None => None,
            };
            let settings = Arc::new(settings);
            let mut service = ServiceContext::new(
                broker.clone(),
                settings.clone(),
                config.clone(),
                db,
                self.chain_for(def.name),
            );
            service.metrics = running.metrics.clone();
            let service = Arc::new(service);
            context::register(def.name, service.clone());
            for publisher in &def.publishers {
                if settings.auto_declare {
                    let spec = publisher.spec(def.name);
                    broker
                        .declare_exchange(
                            spec.exchange,
                            settings.exchange_type,
                            settings.durable,
                            settings.auto_delete,
                        )
                        .await?;
                }
            }
            let mut counts = [0usize; 4];
            let mut rpcs = 0;
            for registered in def.entries {
                counts[match &registered {
                    entry::Registered::Consume(..) => 0,
                    entry::Registered::Rpc(..) => {
                        rpcs += 1;
                        1
                    }
                    entry::Registered::Listen(..) => 2,
                    entry::Registered::Execute(..) => 3,
                }] += 1;
                let attached = entry::attach(def.name, registered, service.clone()).await?;
                running
                    .tasks
                    .spawn(attached.run(shutdown.child_token(), settings.shutdown_grace));
            }
            // After the methods: they declare the exchange the listener binds to.
            if rpcs > 0 {
                let listener = entry::rpc::listen_for_cancels(
                    def.name,
                    service.clone(),
                    running.drained.clone(),
                )
                .await?;
                running.listeners.push(listener);
            }
            let [consumers, methods, listeners, loops] = counts;
            tracing::info!(service = def.name, broker = %settings.amqp_uri, consumers, rpc_methods = methods, listeners, loops, publishers = def.publishers.len(), "service ready");
            running.grace = running.grace.max(settings.shutdown_grace);
            running.services.push(def.name.to_string());
            attached.push(crate::http::Started {
                service: def.name.to_string(),
                broker,
                db: service.db.clone(),
            });
        }
        if let Some(readiness) = &running.readiness {
            readiness.started(attached);
        }
        Ok(running)
    }

    fn selected(&self) -> Result<Vec<&'static ServiceRegistration>> {
        let mut all = registry::services();
        if let Some(crates) = &self.crates {
            all.retain(|r| crates.iter().any(|c| c == r.krate()));
        }
        let Some(only) = &self.only else {
            return Ok(all);
        };
        only.iter()
            .map(|name| {
                all.iter().copied().find(|r| r.name == name).ok_or_else(|| {
                    let known: Vec<&str> = all.iter().map(|r| r.name).collect();
                    Error::Runtime(format!(
                        "no service named {name:?} in this binary (it has: {})",
                        known.join(", ")
                    ))
                })
            })
            .collect()
    }
}

/// This runtime's own connections (closing them at shutdown must not affect another runtime
/// in the process); a broker still booting gets `CONNECT_WAIT` to answer.
async fn connect(settings: &ServiceConfig) -> Result<Arc<Broker>> {
    match Broker::for_service(settings).await {
        Ok(broker) => Ok(Arc::new(broker)),
        Err(err) => Err(Error::Runtime(format!(
            "service {}: {err} (`rabbitmq-server -detached` starts a local RabbitMQ)",
            settings.name
        ))),
    }
}

impl Running {
    /// Names of the services started (disabled ones are not).
    pub fn services(&self) -> &[String] {
        &self.services
    }

    /// Readiness: every connection of these services is up, so every entry point is attached
    /// (lapin re-attaches them after a reconnect). Also in the logs: "service ready" at start,
    /// then "connection lost" and "re-attached after reconnecting" per entry point.
    pub fn is_ready(&self) -> bool {
        self.brokers
            .iter()
            .all(|broker| broker.is_connected() && broker.detached() == 0)
    }

    /// The address the HTTP endpoint listens on, when `http_listen` is set (with port 0 in
    /// `http_listen`, the port the system chose).
    pub fn http_addr(&self) -> Option<SocketAddr> {
        self.endpoint.as_ref().map(|endpoint| endpoint.addr)
    }

    /// The metrics served at `/metrics`, when `http_listen` is set.
    pub fn metrics(&self) -> Option<&Metrics> {
        self.metrics.as_ref()
    }

    /// Waits until an entry point stops on its own, which only happens on failure (for
    /// example the broker connection was lost); returns that failure.
    pub async fn failed(&mut self) -> Error {
        loop {
            match self.tasks.join_next().await {
                Some(Ok(Err(err))) => return err,
                Some(Ok(Ok(()))) => continue,
                Some(Err(join)) => {
                    return Error::Runtime(format!("an entry point task failed: {join}"))
                }
                None => std::future::pending::<()>().await,
            }
        }
    }

    /// Stops consuming, waits for in-flight messages within the grace period, closes the
    /// connections. Unfinished messages return to their queues.
    pub async fn shutdown(mut self) -> Result<()> {
        if let Some(readiness) = &self.readiness {
            readiness.stopping();
        }
        self.shutdown.cancel();
        let bound = self.grace + Duration::from_secs(5);
        let mut first_error = None;
        let drained = tokio::time::timeout(bound, async {
            while let Some(result) = self.tasks.join_next().await {
                if let Ok(Err(err)) = result {
                    first_error.get_or_insert(err);
                }
            }
        })
        .await;
        if drained.is_err() {
            self.tasks.abort_all();
        }
        self.drained.cancel();
        for listener in std::mem::take(&mut self.listeners) {
            let abort = listener.abort_handle();
            if tokio::time::timeout(Duration::from_secs(5), listener)
                .await
                .is_err()
            {
                abort.abort();
            }
        }
        for name in &self.services {
            context::unregister(name);
        }
        for broker in &self.brokers {
            broker.close().await;
        }
        tracing::info!(services = ?self.services, "stopped");
        first_error.map_or(Ok(()), Err)
    }
}

/// Sets up logging: human-readable lines, at the levels of `RUST_LOG` if set, else `info`.
pub fn init_logging() {
    init_logging_with(&LogSettings::default());
}

/// Sets up logging as `[DEFAULT]`'s `log_format` (`text` or `json`: one object per line, with
/// the fields of the event and of its spans) and `log_level` say. `RUST_LOG`, when set, wins
/// over `log_level`. Does nothing when the process already has a logger.
pub fn init_logging_with(settings: &LogSettings) {
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stdout());
    let rust_log = std::env::var("RUST_LOG").ok();
    let _ = subscriber(settings, rust_log.as_deref(), std::io::stdout, ansi).try_init();
}

/// The levels: `rust_log` if set and valid, else `log_level`, else `info`; lapin kept quiet.
fn filter(settings: &LogSettings, rust_log: Option<&str>) -> EnvFilter {
    let mut filter = rust_log
        .filter(|value| !value.trim().is_empty())
        .and_then(|value| EnvFilter::try_new(value).ok())
        .or_else(|| {
            settings
                .level
                .as_deref()
                .and_then(|level| EnvFilter::try_new(level).ok())
        })
        .unwrap_or_else(|| EnvFilter::new("info"));
    // lapin logs every returned message whole (its body as a list of decimal bytes: a
    // 15 MiB body makes a 60 MiB line); farine reports unroutable messages itself.
    if let Ok(quiet) = "lapin::returned_messages=error".parse() {
        filter = filter.add_directive(quiet);
    }
    // A check closes a channel for each exchange or queue not declared yet; lapin logs each.
    if let Some(Ok(quiet)) = std::env::var_os(crate::check::CHECK_ENV).map(|_| "lapin=off".parse())
    {
        filter = filter.add_directive(quiet);
    }
    filter
}

/// The logger `settings` describe, writing to `writer`.
fn subscriber<W>(
    settings: &LogSettings,
    rust_log: Option<&str>,
    writer: W,
    ansi: bool,
) -> Box<dyn tracing::Subscriber + Send + Sync>
where
    W: for<'w> tracing_subscriber::fmt::MakeWriter<'w> + Send + Sync + 'static,
{
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter(settings, rust_log))
        .with_writer(writer);
    match settings.format {
        LogFormat::Text => Box::new(builder.with_ansi(ansi).finish()),
        LogFormat::Json => Box::new(
            builder
                .json()
                .with_current_span(true)
                .with_span_list(true)
                .finish(),
        ),
    }
}

/// Runs every service compiled into the binary, configured from `FARINE_INI`, until SIGINT
/// or SIGTERM. Exit code 0 after a graceful stop. `farine::main!` runs only the services of
/// the crates it names (and of the binary's own package).
pub fn run() -> ExitCode {
    run_services(None)
}

/// What `farine::main!` runs: the services defined in these crates (a service crate linked
/// only for its typed client is not run).
#[doc(hidden)]
pub fn run_crates(crates: &[&str]) -> ExitCode {
    // A package's library is named like the package, with `_` for `-`.
    let crates = crates.iter().map(|c| c.replace('-', "_")).collect();
    run_services(Some(crates))
}

fn run_services(crates: Option<Vec<String>>) -> ExitCode {
    // Before logging, which would write to stdout: the document is all that is printed.
    if std::env::var_os(crate::describe::ENV).is_some() {
        return crate::describe::run(crates.as_deref());
    }
    // Read first for its logging keys; a file that cannot be read is reported below, once.
    let config = match Config::from_env() {
        Ok(config) => config,
        Err(err) => {
            eprintln!("farine: {err}");
            return ExitCode::FAILURE;
        }
    };
    match LogSettings::from_config(&config) {
        Ok(settings) => {
            init_logging_with(&settings);
            config.warn_unknown_keys();
        }
        Err(err) => {
            eprintln!("farine: {err}");
            return ExitCode::FAILURE;
        }
    }
    // Spans exported over OTLP when configured (feature `otel`); not for a check or a
    // migration, which handle nothing.
    let serving = std::env::var_os(crate::check::CHECK_ENV).is_none()
        && std::env::var_os(MIGRATIONS_ENV).is_none();
    let export = match export_spans(&config, serving) {
        Ok(export) => export,
        Err(err) => {
            eprintln!("farine: {err}");
            return ExitCode::FAILURE;
        }
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("farine: cannot start the async runtime: {err}");
            return ExitCode::FAILURE;
        }
    };
    let served = runtime.block_on(serve(crates, config));
    // The last spans, once the entry points have drained.
    if let Some(export) = export {
        export.shutdown();
    }
    match served {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            // Once, on stderr: logging it as well printed every start-up error twice.
            eprintln!("farine: {err}");
            ExitCode::FAILURE
        }
    }
}

/// The OTLP exporter `config` and the `OTEL_*` variables ask for, installed (feature
/// `otel`, and `serving`).
#[cfg(feature = "otel")]
fn export_spans(config: &Config, serving: bool) -> Result<Option<crate::otel::Export>> {
    if !serving {
        config.otlp_endpoint()?;
        return Ok(None);
    }
    crate::otel::Export::from_config(config)
}

/// Without the `otel` feature: `otlp_endpoint` is checked, and a warning says that it is
/// ignored.
#[cfg(not(feature = "otel"))]
fn export_spans(config: &Config, serving: bool) -> Result<Option<NoExport>> {
    if config.otlp_endpoint()?.is_some() && serving {
        tracing::warn!(
            file = %config.path().display(),
            "otlp_endpoint is set in [DEFAULT], but this binary is built without farine's otel feature: no spans are exported"
        );
    }
    Ok(None)
}

/// Without the `otel` feature, no exporter.
#[cfg(not(feature = "otel"))]
enum NoExport {}

#[cfg(not(feature = "otel"))]
impl NoExport {
    fn shutdown(self) {
        match self {}
    }
}

async fn serve(crates: Option<Vec<String>>, config: Config) -> Result<()> {
    // Before anything else: a signal that came while entry points were still attaching would
    // otherwise meet the default action and kill the process instead of stopping it.
    let mut signals = Signals::install()?;
    if let Some(migrations) = std::env::var_os(crate::check::CHECK_ENV) {
        return crate::check::run(&config, crates.as_deref(), &migrations).await;
    }
    if let Some(dir) = std::env::var_os(MIGRATIONS_ENV) {
        return migrate(&config, std::path::Path::new(&dir), crates.as_deref()).await;
    }
    let linked = registry::services();
    if linked.is_empty() {
        return Err(Error::Runtime(
            "no #[farine::service] is compiled into this binary".into(),
        ));
    }
    if let Some(crates) = &crates {
        if !linked
            .iter()
            .any(|r| crates.contains(&r.krate().to_string()))
        {
            let mut others: Vec<String> = linked
                .iter()
                .map(|r| format!("{} (crate {})", r.name, r.krate()))
                .collect();
            others.dedup();
            return Err(Error::Runtime(format!(
                "no #[farine::service] in crate {}; linked from other crates, not run: {} \
                 (name a crate in farine::main!(...) to run its services)",
                crates.join(" or "),
                others.join(", ")
            )));
        }
    }
    let mut runtime = Runtime::new(config);
    runtime.crates = crates;
    let mut running = tokio::select! {
        started = runtime.start() => started?,
        signal = signals.next() => {
            tracing::info!("{signal} while starting: stopping");
            return Ok(());
        }
    };
    if running.services().is_empty() {
        tracing::info!("every service is disabled: nothing to run");
        return Ok(());
    }
    let stop = tokio::select! {
        signal = signals.next() => Ok(signal),
        err = running.failed() => Err(err),
    };
    match stop {
        Ok(signal) => {
            tracing::info!("{signal}: shutting down (a second signal exits at once)");
            // The same handlers: a second signal is never missed between the two.
            tokio::spawn(async move {
                let again = signals.next().await;
                tracing::warn!("{again} again: exiting now");
                std::process::exit(130);
            });
            running.shutdown().await
        }
        Err(err) => {
            let _ = running.shutdown().await;
            Err(err)
        }
    }
}

/// Migration mode (`farine migrate`): applies `dir` to the database of every service in this
/// binary that has one, then returns.
async fn migrate(config: &Config, dir: &std::path::Path, crates: Option<&[String]>) -> Result<()> {
    let mut migrated = 0;
    // The services `farine::main!` runs: not those of a crate linked for its client.
    let ours = registry::services()
        .into_iter()
        .filter(|r| crates.is_none_or(|crates| crates.iter().any(|c| c == r.krate())));
    for registration in ours {
        let settings = config.service(registration.name)?;
        let Some(db) = DbSettings::from_settings(&settings)? else {
            continue;
        };
        let database = Database::connect(registration.name, db).await?;
        database.migrate(dir).await?;
        tracing::info!(service = registration.name, migrations = %dir.display(), "migrations applied");
        migrated += 1;
    }
    if migrated == 0 {
        return Err(Error::Runtime(format!(
            "no service in this binary has a database (db_connector = postgres) in {}",
            config.path().display()
        )));
    }
    Ok(())
}

/// SIGINT and SIGTERM, listened to from the start of the process to its end.
pub(crate) struct Signals {
    #[cfg(unix)]
    interrupt: tokio::signal::unix::Signal,
    #[cfg(unix)]
    terminate: tokio::signal::unix::Signal,
}

impl Signals {
    pub(crate) fn install() -> Result<Signals> {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{signal, SignalKind};
            let listen = |kind: SignalKind, name: &str| {
                signal(kind)
                    .map_err(|err| Error::Runtime(format!("cannot listen for {name}: {err}")))
            };
            Ok(Signals {
                interrupt: listen(SignalKind::interrupt(), "SIGINT")?,
                terminate: listen(SignalKind::terminate(), "SIGTERM")?,
            })
        }
        #[cfg(not(unix))]
        {
            Ok(Signals {})
        }
    }

    /// The next signal's name.
    pub(crate) async fn next(&mut self) -> &'static str {
        #[cfg(unix)]
        {
            tokio::select! {
                _ = self.interrupt.recv() => "SIGINT",
                _ = self.terminate.recv() => "SIGTERM",
            }
        }
        #[cfg(not(unix))]
        {
            let _ = tokio::signal::ctrl_c().await;
            "Ctrl-C"
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::middleware::{Call, Disposition, EntryKind, Handled};
    use crate::observe::Handling;
    use crate::transport::{HeaderValue, Headers};
    use futures::FutureExt;
    use std::sync::Mutex;

    #[derive(Clone, Default)]
    struct Buffer(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Buffer {
        fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(bytes);
            Ok(bytes.len())
        }

        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    /// The lines a handled delivery logs, with these settings.
    async fn log_one_delivery(settings: &LogSettings, rust_log: Option<&str>) -> Vec<String> {
        let buffer = Buffer::default();
        let sink = buffer.clone();
        let _logger = subscriber(settings, rust_log, move || sink.clone(), false).set_default();
        let mut headers = Headers::new();
        headers.insert(
            "traceparent".into(),
            HeaderValue::Text("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01".into()),
        );
        let call = Call {
            service: "calc",
            entry_point: "calc.add",
            kind: EntryKind::Rpc,
            queue: "calc__add",
            exchange: "calc",
            routing_key: "calc__add",
            correlation_id: Some("c-1"),
            headers: &headers,
            attempt: 1,
        };
        let handling = async {
            tracing::info!(answer = 3, "adding");
            Handled::new(Handling::Done, Disposition::Acked)
        }
        .boxed();
        let chain = Chain::new(vec![Arc::new(crate::trace::Tracing)]);
        assert!(chain.run(&call, handling).await.is_done());
        let text = String::from_utf8(buffer.0.lock().unwrap().clone()).unwrap();
        text.lines().map(str::to_owned).collect()
    }

    #[tokio::test]
    async fn json_logs_carry_the_span_fields() {
        let settings = LogSettings {
            format: LogFormat::Json,
            level: Some("farine=debug,info".into()),
        };
        let lines = log_one_delivery(&settings, None).await;
        let parsed: Vec<serde_json::Value> = lines
            .iter()
            .map(|line| serde_json::from_str(line).expect(line))
            .collect();
        let [adding, handled] = &parsed[..] else {
            panic!("{lines:?}");
        };
        assert_eq!(adding["level"], "INFO");
        assert_eq!(adding["fields"]["message"], "adding");
        assert_eq!(adding["fields"]["answer"], 3);
        let span = &adding["span"];
        assert_eq!(span["name"], "farine.handle");
        assert_eq!(span["service"], "calc");
        assert_eq!(span["entry_point"], "calc.add");
        assert_eq!(span["kind"], "rpc");
        assert_eq!(span["queue"], "calc__add");
        assert_eq!(span["routing_key"], "calc__add");
        assert_eq!(span["correlation_id"], "c-1");
        assert_eq!(span["attempt"], 1);
        assert_eq!(span["trace_id"], "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(span["parent_id"], "00f067aa0ba902b7");
        assert_eq!(span["span_id"].as_str().unwrap().len(), 16);
        // When done: the outcome and the duration.
        assert_eq!(handled["level"], "DEBUG");
        assert_eq!(handled["fields"]["message"], "handled");
        assert_eq!(handled["span"]["outcome"], "done");
        assert!(handled["span"]["duration_ms"].as_f64().unwrap() >= 0.0);
        assert_eq!(handled["span"]["span_id"], span["span_id"]);
    }

    #[tokio::test]
    async fn text_logs_by_default_and_rust_log_wins_over_log_level() {
        let settings = LogSettings {
            format: LogFormat::Text,
            level: Some("debug".into()),
        };
        let lines = log_one_delivery(&settings, Some("warn")).await;
        assert!(lines.is_empty(), "{lines:?}");
        let lines = log_one_delivery(&settings, None).await;
        assert_eq!(lines.len(), 2, "{lines:?}");
        assert!(lines[0].contains("farine.handle{"), "{}", lines[0]);
        assert!(lines[0].contains("calc.add"), "{}", lines[0]);
        assert!(lines[0].contains("adding answer=3"), "{}", lines[0]);
        assert!(serde_json::from_str::<serde_json::Value>(&lines[0]).is_err());
    }
}
