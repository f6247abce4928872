//! OpenTelemetry export (cargo feature `otel`): farine's spans sent to a collector over OTLP
//! (HTTP with protobuf bodies).
//!
//! With the feature, every span farine makes (see [`crate::trace`]) is also a span of the
//! global OpenTelemetry tracer provider, and carries the ids farine puts on the wire, so the
//! spans of a chain of services link up in the collector:
//!
//! - `handle <service.method>`, per handled delivery: kind server (an RPC request) or
//!   consumer (a message); parent: the sender's span named by the `traceparent` header;
//!   attributes `messaging.system` (`rabbitmq`), `messaging.operation.type` (`process`),
//!   `messaging.destination.name` (the exchange), `messaging.rabbitmq.destination.routing_key`,
//!   `messaging.message.conversation_id` (the correlation id), `farine.service`,
//!   `farine.entry_point`, `farine.kind`, `farine.queue`, `farine.attempt`, then
//!   `farine.outcome` (`done`, `failed`, `poison`) and `farine.disposition` (`acked`,
//!   `retried`, `dead_lettered`, `requeued`); `rpc.system`, `rpc.service`, `rpc.method` for a
//!   request; status error with the failure's text when the method failed.
//! - `call <service.method>`, per RPC call made in a trace: kind client, from the request
//!   to the result (or until a stream's replies are dropped); status error when the call
//!   failed.
//! - `publish <exchange>`, per publish (and per broadcast of an RPC method) made in a trace:
//!   kind producer, until the broker confirmed.
//!
//! A service binary (`farine::main!`, [`crate::run`]) exports when
//! `OTEL_EXPORTER_OTLP_ENDPOINT` (the collector's base URL, spans going to
//! `<it>/v1/traces`), `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` (the full URL) or `otlp_endpoint`
//! in `[DEFAULT]` (like the first; the variables win) is set, and flushes the last spans when
//! it stops gracefully. The other standard variables apply as the OpenTelemetry SDK reads
//! them: `OTEL_SERVICE_NAME` (default: the executable's name), `OTEL_RESOURCE_ATTRIBUTES`,
//! `OTEL_TRACES_SAMPLER` and `OTEL_TRACES_SAMPLER_ARG` (default: every trace, or as the
//! caller decided), `OTEL_EXPORTER_OTLP_HEADERS`, `OTEL_EXPORTER_OTLP_TIMEOUT` (milliseconds,
//! default 10 s), `OTEL_BSP_*` (batching); `OTEL_SDK_DISABLED=true` or
//! `OTEL_TRACES_EXPORTER=none` turn export off. A sampler's decision travels in the
//! `traceparent` flags, so the services after a caller follow it.
//!
//! An application that starts services itself ([`crate::Runtime`]) calls
//! [`Export::from_config`] (or installs a tracer provider of its own with
//! `opentelemetry::global::set_tracer_provider`: farine uses whichever is global):
//!
//! ```no_run
//! # fn demo() -> farine::Result<()> {
//! let config = farine::Config::from_env()?;
//! // Before the async runtime: the exporter has threads of its own.
//! let export = farine::otel::Export::from_config(&config)?;
//! let runtime = tokio::runtime::Runtime::new().map_err(|e| farine::Error::Runtime(e.to_string()))?;
//! runtime.block_on(async {
//!     let running = farine::Runtime::new(config).start().await?;
//!     // ...
//!     running.shutdown().await
//! })?;
//! if let Some(export) = export {
//!     export.shutdown(); // sends the spans still buffered
//! }
//! # Ok(()) }
//! ```
//!
//! Within a handler, the delivery's span is OpenTelemetry's current span: spans the code
//! opens with the global tracer are its children, and a call or publish made inside such a
//! span has it as parent. A client outside any delivery that runs in an OpenTelemetry span
//! (a web handler's, say) makes its calls children of that span.

use crate::config::Config;
use crate::{Error, Result};
use opentelemetry_otlp::{Protocol, WithExportConfig, WithHttpConfig};
use opentelemetry_sdk::trace::SdkTracerProvider;
use opentelemetry_sdk::Resource;
use std::time::Duration;

/// The variables that set the collector's address.
const ENDPOINT_VARIABLES: [&str; 2] = [
    "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
    "OTEL_EXPORTER_OTLP_ENDPOINT",
];
const PROTOCOL_VARIABLES: [&str; 2] = [
    "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL",
    "OTEL_EXPORTER_OTLP_PROTOCOL",
];
const TIMEOUT_VARIABLES: [&str; 2] = [
    "OTEL_EXPORTER_OTLP_TRACES_TIMEOUT",
    "OTEL_EXPORTER_OTLP_TIMEOUT",
];
/// How long the exporter waits for the collector when the variables say nothing.
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);

/// Spans exported over OTLP/HTTP, through the global tracer provider this installed. Stop it
/// with [`Export::shutdown`] to send what is still buffered.
pub struct Export {
    provider: SdkTracerProvider,
    endpoint: String,
}

/// An environment variable's value, if set and not blank.
fn variable(name: &str) -> Option<String> {
    std::env::var(name)
        .ok()
        .map(|value| value.trim().to_owned())
        .filter(|value| !value.is_empty())
}

fn first_variable(names: &[&str]) -> Option<(String, String)> {
    names
        .iter()
        .find_map(|name| variable(name).map(|value| (name.to_string(), value)))
}

impl Export {
    /// Installs the OTLP/HTTP exporter as the global tracer provider when the variables or
    /// `otlp_endpoint` name a collector (see the [module](self)); `Ok(None)` when none does,
    /// or export is turned off. An `otlp_endpoint` that is not an `http(s)://` URL is an
    /// [`Error::Config`] naming the file, section and key; a variable farine cannot follow
    /// (a protocol other than `http/protobuf`, an exporter other than `otlp`) is an error
    /// naming it.
    pub fn from_config(config: &Config) -> Result<Option<Export>> {
        let from_ini = config.otlp_endpoint()?;
        if variable("OTEL_SDK_DISABLED").is_some_and(|v| v.eq_ignore_ascii_case("true")) {
            return Ok(None);
        }
        match variable("OTEL_TRACES_EXPORTER") {
            Some(exporter) if exporter.eq_ignore_ascii_case("none") => return Ok(None),
            Some(exporter) if !exporter.eq_ignore_ascii_case("otlp") => {
                return Err(Error::Runtime(format!(
                    "OTEL_TRACES_EXPORTER={exporter:?}: farine exports spans over otlp only (or none)"
                )))
            }
            _ => {}
        }
        let endpoint = match (first_variable(&ENDPOINT_VARIABLES), from_ini) {
            (Some((name, value)), _) => Endpoint::Variable(name, value),
            (None, Some(base)) => Endpoint::Ini(format!("{base}/v1/traces")),
            (None, None) => return Ok(None),
        };
        if let Some((name, protocol)) = first_variable(&PROTOCOL_VARIABLES) {
            if protocol != "http/protobuf" {
                return Err(Error::Runtime(format!(
                    "{name}={protocol:?}: farine exports spans over http/protobuf only"
                )));
            }
        }
        let timeout = match first_variable(&TIMEOUT_VARIABLES) {
            Some((name, value)) => {
                value
                    .parse::<u64>()
                    .map(Duration::from_millis)
                    .map_err(|_| {
                        Error::Runtime(format!(
                            "{name}={value:?}: expected a number of milliseconds"
                        ))
                    })?
            }
            None => DEFAULT_TIMEOUT,
        };
        let client = blocking_client(timeout)?;
        let mut builder = opentelemetry_otlp::SpanExporter::builder()
            .with_http()
            .with_http_client(client)
            .with_protocol(Protocol::HttpBinary);
        if let Endpoint::Ini(url) = &endpoint {
            builder = builder.with_endpoint(url.clone());
        }
        let exporter = builder.build().map_err(|err| match &endpoint {
            Endpoint::Ini(_) => Error::Config {
                file: config.path().to_path_buf(),
                section: "DEFAULT".into(),
                key: "otlp_endpoint".into(),
                message: format!("cannot export spans there: {err}"),
            },
            Endpoint::Variable(name, _) => {
                Error::Runtime(format!("{name}: cannot export spans there: {err}"))
            }
        })?;
        let provider = SdkTracerProvider::builder()
            .with_batch_exporter(exporter)
            .with_resource(resource())
            .build();
        opentelemetry::global::set_tracer_provider(provider.clone());
        let endpoint = match endpoint {
            Endpoint::Variable(name, value) => format!("{value} ({name})"),
            Endpoint::Ini(url) => url,
        };
        tracing::info!(%endpoint, "exporting spans over OTLP/HTTP");
        Ok(Some(Export { provider, endpoint }))
    }

    /// Where the spans go, and what said so.
    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }

    /// Sends the spans still buffered (waiting at most the exporter's timeout), then stops
    /// exporting. Blocks: call it outside the async runtime, or from a blocking task. A
    /// failure is logged, not returned: the process is stopping anyway.
    pub fn shutdown(self) {
        if let Err(err) = self.provider.shutdown() {
            tracing::warn!(endpoint = %self.endpoint, "could not send the last spans: {err}");
        }
    }
}

/// Where the spans go.
enum Endpoint {
    /// Said by this variable (which the exporter reads itself).
    Variable(String, String),
    /// `otlp_endpoint`'s URL, with `/v1/traces`.
    Ini(String),
}

/// The resource of every span: the SDK's (`OTEL_SERVICE_NAME`, `OTEL_RESOURCE_ATTRIBUTES`),
/// named after the executable when they name no service.
fn resource() -> Resource {
    let named = variable("OTEL_SERVICE_NAME").is_some()
        || variable("OTEL_RESOURCE_ATTRIBUTES")
            .is_some_and(|attributes| attributes.contains("service.name="));
    let executable = std::env::current_exe().ok().and_then(|path| {
        path.file_stem()
            .map(|stem| stem.to_string_lossy().into_owned())
    });
    match executable {
        Some(name) if !named => Resource::builder().with_service_name(name).build(),
        _ => Resource::builder().build(),
    }
}

/// The exporter's HTTP client: reqwest's blocking one (the batch exporter runs on a thread
/// of its own), on rustls with farine's TLS set-up. Built on a thread of its own: reqwest's
/// blocking client must not be built inside an async runtime.
fn blocking_client(timeout: Duration) -> Result<reqwest::blocking::Client> {
    let failed = |message: String| Error::Runtime(format!("OTLP exporter: {message}"));
    std::thread::Builder::new()
        .name("farine-otlp-client".into())
        .spawn(move || {
            reqwest::blocking::Client::builder()
                .tls_backend_preconfigured(crate::entry::sse::tls_config()?)
                .timeout(timeout)
                .user_agent(concat!("farine/", env!("CARGO_PKG_VERSION")))
                .build()
                .map_err(|err| format!("cannot build the HTTP client: {err}"))
        })
        .map_err(|err| failed(format!("cannot start a thread: {err}")))?
        .join()
        .map_err(|_| failed("building the HTTP client panicked".into()))?
        .map_err(failed)
}
