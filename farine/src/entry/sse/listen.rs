//! The connection loop of a `#[stream::http]` entry point: connect, parse, dispatch one event
//! at a time, and reconnect after whatever went wrong until the service shuts down.

use super::parse::{Parsed, Parser, RawEvent, MAX_ID_BYTES};
use super::{Event, EventHandler, ListenerSpec};
use crate::backoff::Backoff;
use crate::config::redact_uri;
use crate::context::ServiceContext;
use crate::outcome::{guard, Outcome};
use futures::future::BoxFuture;
use futures::FutureExt;
use reqwest::header::{HeaderMap, HeaderName, HeaderValue, ACCEPT, CACHE_CONTROL, CONTENT_TYPE};
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// No reconnection comes faster than this, whatever the settings or the server's `retry:` say.
const MIN_DELAY: Duration = crate::backoff::MIN_DELAY;

/// The largest random addition to a reconnection delay, as a fraction of it.
const JITTER: f64 = 0.25;

/// A connection that ends sooner than this after it was opened counts as a failure for the
/// backoff, even if it delivered events: a server that closes after each event (with
/// `retry: 0`) would otherwise be reconnected to as fast as the network allows.
const SHORT_CONNECTION: Duration = Duration::from_secs(1);

/// How long establishing a TCP (and TLS) connection may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(30);

/// The handler with its context bound: what the loop calls for each event.
pub(crate) type Dispatch = Arc<dyn Fn(Event<String>) -> BoxFuture<'static, Outcome> + Send + Sync>;

/// Runs a `#[stream::http]` entry point until `shutdown`; nothing else ends it.
///
/// - **Requests.** One HTTP client for the listener's life; each connection is a `GET` with
///   `Accept: text/event-stream`, `Cache-Control: no-cache`, the configured headers, and
///   `Last-Event-ID` once the stream has given an id.
/// - **A connection fails** when it cannot be made, the answer is not a 2xx with content type
///   `text/event-stream`, the stream breaks or ends, or no byte arrives for `idle_timeout`.
///   Each failure is logged as a warning with its reason and the (password-redacted)
///   endpoint, then the listener waits and reconnects.
/// - **The wait.** After a connection that delivered data and lasted a second or more, the
///   server's `retry:` value (else `retry_min`), at least 100ms. After a failure, a backoff
///   doubling with each failure in a row up to `retry_max`, from the server's `retry:` (at
///   least 100ms) when the connection that failed had delivered data but lasted less than a
///   second, else from the larger of `retry:`/`retry_min` (and 100ms). Either way plus up to
///   25% of random jitter, so clients of a restarted server do not all come back at once.
/// - **The last event ID** is not kept when longer than 1 KiB, and is forgotten when the
///   server answers a request that carried it with a 4xx status (it may be what the server
///   refuses: 400, 413, 431...); both are logged as warnings.
/// - **Events** are handled one at a time, in order. A failing or panicking handler, or data
///   that does not decode, is logged with the event's id and the next event follows.
/// - **Shutdown** stops reading at once; an event being handled gets `shutdown_grace` to
///   finish, then is dropped.
pub(crate) async fn run(
    spec: ListenerSpec,
    handler: EventHandler,
    context: Arc<ServiceContext>,
    shutdown: CancellationToken,
) {
    let dispatch: Dispatch = Arc::new(move |event| {
        crate::context::scope(context.clone(), handler(context.clone(), event)).boxed()
    });
    listen(spec, dispatch, shutdown).await;
}

/// [`run`] without the service context (which only the handler needs).
pub(crate) async fn listen(spec: ListenerSpec, dispatch: Dispatch, shutdown: CancellationToken) {
    let shown = redact_uri(&spec.endpoint);
    let headers = match request_headers(&spec) {
        Ok(headers) => headers,
        Err(message) => {
            // Only reachable with a hand-made spec: `from_settings` checks the headers.
            tracing::error!(entry_point = %spec.label, endpoint = %shown, "{message}: the listener cannot start");
            shutdown.cancelled().await;
            return;
        }
    };
    let mut listener = Listener {
        parser: Parser::new(spec.max_event_bytes),
        spec,
        shown,
        headers,
        client: None,
        dispatch,
        shutdown,
    };
    tracing::info!(entry_point = %listener.spec.label, endpoint = %listener.shown, "SSE listener started");
    let mut failures: u32 = 0;
    loop {
        let opened = tokio::time::Instant::now();
        let (reason, received) = match listener.connection().await {
            Ended::Shutdown => break,
            Ended::Lost { reason, received } => (reason, received),
        };
        failures = if received && opened.elapsed() >= SHORT_CONNECTION {
            0
        } else {
            failures.saturating_add(1)
        };
        let delay = jitter(reconnect_delay(
            listener.spec.retry_min,
            listener.spec.retry_max,
            listener.parser.retry(),
            failures,
            received,
        ));
        let last_event_id = listener.parser.last_event_id();
        tracing::warn!(
            entry_point = %listener.spec.label,
            endpoint = %listener.shown,
            last_event_id,
            failures,
            retry_in = %humantime::format_duration(Duration::from_millis(delay.as_millis() as u64)),
            "SSE stream {reason}: reconnecting"
        );
        tokio::select! {
            _ = listener.shutdown.cancelled() => break,
            _ = tokio::time::sleep(delay) => {}
        }
    }
    tracing::info!(entry_point = %listener.spec.label, "SSE listener stopped");
}

/// Why a connection is over.
enum Ended {
    Shutdown,
    /// `reason` completes "SSE stream ...". `received`: the connection delivered bytes.
    Lost {
        reason: String,
        received: bool,
    },
}

fn lost(reason: impl Into<String>, received: bool) -> Ended {
    Ended::Lost {
        reason: reason.into(),
        received,
    }
}

struct Listener {
    spec: ListenerSpec,
    /// The endpoint as logged.
    shown: String,
    headers: HeaderMap,
    /// Built on first use and kept, so its connection pool and TLS state are reused.
    client: Option<reqwest::Client>,
    parser: Parser,
    dispatch: Dispatch,
    shutdown: CancellationToken,
}

impl Listener {
    /// One connection, from the request to its end.
    async fn connection(&mut self) -> Ended {
        self.parser.reset_connection();
        let client = match &self.client {
            Some(client) => client.clone(),
            None => match build_client() {
                Ok(client) => self.client.insert(client).clone(),
                Err(message) => return lost(format!("cannot be opened: {message}"), false),
            },
        };
        let mut request = client
            .get(&self.spec.endpoint)
            .headers(self.headers.clone());
        let last_event_id = self.parser.last_event_id();
        let mut sent_id = false;
        if !last_event_id.is_empty() {
            match HeaderValue::from_bytes(last_event_id.as_bytes()) {
                Ok(value) => {
                    request = request.header("last-event-id", value);
                    sent_id = true;
                }
                Err(_) => tracing::warn!(
                    entry_point = %self.spec.label,
                    last_event_id,
                    "the last event id cannot be sent as an HTTP header: reconnecting without it"
                ),
            }
        }
        let response = tokio::select! {
            biased;
            _ = self.shutdown.cancelled() => return Ended::Shutdown,
            response = within(self.spec.idle_timeout, request.send()) => response,
        };
        let response = match response {
            None => {
                return lost(
                    format!(
                        "got no response within idle_timeout = {}",
                        humantime::format_duration(self.spec.idle_timeout)
                    ),
                    false,
                )
            }
            Some(Err(err)) => return lost(format!("request failed: {}", describe(&err)), false),
            Some(Ok(response)) => response,
        };
        let status = response.status();
        if status.is_client_error() && sent_id {
            // The id may be what the server refuses (431 for a header too large, 400, 413):
            // resending it would fail forever. Resuming from scratch loses less.
            tracing::warn!(
                entry_point = %self.spec.label,
                endpoint = %self.shown,
                last_event_id = self.parser.last_event_id(),
                %status,
                "the server refused a request with Last-Event-ID: forgetting the id, the next \
                 connection starts without it"
            );
            self.parser.forget_last_event_id();
        }
        if !status.is_success() {
            return lost(format!("got HTTP status {status}"), false);
        }
        let content_type = response
            .headers()
            .get(CONTENT_TYPE)
            .map(|value| String::from_utf8_lossy(value.as_bytes()).into_owned());
        let essence = content_type
            .as_deref()
            .and_then(|value| value.split(';').next())
            .map(|essence| essence.trim().to_ascii_lowercase());
        if essence.as_deref() != Some("text/event-stream") {
            return lost(
                format!(
                    "has content type {:?} instead of text/event-stream (is the endpoint right?)",
                    content_type.as_deref().unwrap_or("(none)")
                ),
                false,
            );
        }
        tracing::info!(
            entry_point = %self.spec.label,
            endpoint = %self.shown,
            last_event_id = self.parser.last_event_id(),
            "SSE stream connected"
        );
        self.read(response).await
    }

    /// Reads and dispatches until the connection ends.
    async fn read(&mut self, mut response: reqwest::Response) -> Ended {
        let mut received = false;
        let mut parsed = Vec::new();
        loop {
            let chunk = tokio::select! {
                biased;
                _ = self.shutdown.cancelled() => return Ended::Shutdown,
                chunk = within(self.spec.idle_timeout, response.chunk()) => chunk,
            };
            let bytes = match chunk {
                None => {
                    return lost(
                        format!(
                            "stalled: no data for idle_timeout = {}",
                            humantime::format_duration(self.spec.idle_timeout)
                        ),
                        received,
                    )
                }
                Some(Ok(None)) => return lost("was closed by the server", received),
                Some(Err(err)) => return lost(format!("broke: {}", describe(&err)), received),
                Some(Ok(Some(bytes))) => bytes,
            };
            received = true;
            self.parser.feed(&bytes, &mut parsed);
            for item in parsed.drain(..) {
                match item {
                    Parsed::Event(event) => {
                        if !self.handle(event).await {
                            return Ended::Shutdown;
                        }
                    }
                    Parsed::Oversized { id, limit } => tracing::warn!(
                        entry_point = %self.spec.label,
                        event_id = (!id.is_empty()).then_some(id.as_str()),
                        "event larger than max_message_bytes = {limit} skipped"
                    ),
                    Parsed::LongId { bytes } => tracing::warn!(
                        entry_point = %self.spec.label,
                        last_event_id = self.parser.last_event_id(),
                        "an event id of {bytes} bytes ignored (over {MAX_ID_BYTES}): it would \
                         not be accepted back as Last-Event-ID"
                    ),
                }
                if self.shutdown.is_cancelled() {
                    return Ended::Shutdown;
                }
            }
        }
    }

    /// Runs the handler on one event and logs how it went; `false` if shutdown interrupted it.
    async fn handle(&self, raw: RawEvent) -> bool {
        let id = (!raw.id.is_empty()).then_some(raw.id);
        let kind = raw.event;
        let event = Event {
            id: id.clone(),
            event: kind.clone(),
            data: raw.data,
        };
        let dispatch = self.dispatch.clone();
        // The handler is called inside the guarded future: a panic anywhere in it is caught.
        let call = guard(async move { dispatch(event).await });
        tokio::pin!(call);
        let (result, finished) = tokio::select! {
            result = &mut call => (Some(result), true),
            _ = self.shutdown.cancelled() => {
                match tokio::time::timeout(self.spec.shutdown_grace, &mut call).await {
                    Ok(result) => (Some(result), false),
                    Err(_) => (None, false),
                }
            }
        };
        let label = self.spec.label.as_str();
        let event_id = id.as_deref();
        match result {
            Some(Ok(Outcome::Done)) => {}
            Some(Ok(Outcome::Failed(reason))) => tracing::error!(
                entry_point = label,
                event_id,
                event = %kind,
                "handler failed, event skipped (SSE has no redelivery): {reason}"
            ),
            Some(Ok(Outcome::Poison(reason))) => tracing::warn!(
                entry_point = label,
                event_id,
                event = %kind,
                "undecodable event data, event skipped: {reason}"
            ),
            Some(Err(panic)) => tracing::error!(
                entry_point = label,
                event_id,
                event = %kind,
                "handler panicked, event skipped: {panic}"
            ),
            None => tracing::warn!(
                entry_point = label,
                event_id,
                event = %kind,
                "shutdown_grace is over: the handling of this event was cancelled"
            ),
        }
        finished
    }
}

/// Runs `future` for at most `limit`; `Duration::ZERO` means no limit.
async fn within<F: Future>(limit: Duration, future: F) -> Option<F::Output> {
    if limit.is_zero() {
        Some(future.await)
    } else {
        tokio::time::timeout(limit, future).await.ok()
    }
}

/// The delay before the next connection, without jitter. `failures` counts the connections in
/// a row that delivered nothing or ended within [`SHORT_CONNECTION`] (0: the last one
/// delivered data and lasted); `received`: the last one delivered data.
fn reconnect_delay(
    retry_min: Duration,
    retry_max: Duration,
    server_retry: Option<Duration>,
    failures: u32,
    received: bool,
) -> Duration {
    let base = server_retry.unwrap_or(retry_min).max(MIN_DELAY);
    if failures == 0 {
        return base;
    }
    // A server that delivers then closes at once is honoured from its own retry:, backed off;
    // one that delivers nothing is not trusted to ask for faster than retry_min.
    let first = if received { base } else { base.max(retry_min) };
    Backoff::new(first, retry_max).delay(failures)
}

/// `delay` plus up to 25% more, at random.
fn jitter(delay: Duration) -> Duration {
    crate::backoff::add_jitter(delay, JITTER)
}

/// The headers every request carries: the SSE ones, then the configured ones (which may
/// override them). Values are marked sensitive so that no debug output shows them.
fn request_headers(spec: &ListenerSpec) -> Result<HeaderMap, String> {
    let mut headers = HeaderMap::new();
    headers.insert(ACCEPT, HeaderValue::from_static("text/event-stream"));
    headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    for (name, value) in &spec.headers {
        let name = HeaderName::from_bytes(name.as_bytes())
            .map_err(|_| format!("header.{name} is not a valid HTTP header name"))?;
        let mut value = HeaderValue::from_str(value)
            .map_err(|_| format!("header.{name} has a value that is not a valid header value"))?;
        value.set_sensitive(true);
        headers.insert(name, value);
    }
    Ok(headers)
}

/// The HTTP client: HTTP/1.1 over rustls, verifying certificates with the operating
/// system's roots, with the process's default rustls crypto provider if one is installed
/// and *ring* (which farine's AMQP connections use too) otherwise.
fn build_client() -> Result<reqwest::Client, String> {
    reqwest::Client::builder()
        .tls_backend_preconfigured(tls_config()?)
        .connect_timeout(CONNECT_TIMEOUT)
        .tcp_keepalive(Duration::from_secs(30))
        .user_agent(concat!("farine/", env!("CARGO_PKG_VERSION")))
        .build()
        .map_err(|err| describe(&err))
}

/// TLS for an HTTP/1.1 client: the operating system's roots, with the process's default
/// rustls crypto provider if one is installed and *ring* (which farine's AMQP connections use
/// too) otherwise. Also the OTLP exporter's (feature `otel`).
pub(crate) fn tls_config() -> Result<rustls::ClientConfig, String> {
    let provider = rustls::crypto::CryptoProvider::get_default()
        .cloned()
        .unwrap_or_else(|| Arc::new(rustls::crypto::ring::default_provider()));
    let verifier = rustls_platform_verifier::Verifier::new(provider.clone())
        .map_err(|err| format!("cannot set up TLS certificate verification: {err}"))?;
    let mut tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|err| format!("cannot set up TLS: {err}"))?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(verifier))
        .with_no_client_auth();
    tls.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(tls)
}

/// A reqwest error and its causes, without the URL (which may hold a password).
fn describe(err: &reqwest::Error) -> String {
    let mut text = if err.is_timeout() {
        "timed out".to_owned()
    } else if err.is_connect() {
        "cannot connect".to_owned()
    } else if err.is_body() || err.is_decode() {
        "error reading the response body".to_owned()
    } else {
        "error".to_owned()
    };
    let mut source = std::error::Error::source(err);
    while let Some(cause) = source {
        let cause_text = redact_uri(&cause.to_string());
        if !text.ends_with(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reconnect_delays() {
        let ms = Duration::from_millis;
        let (min, max) = (ms(1000), ms(30_000));
        // After a connection that delivered data and lasted: the server's retry, else
        // retry_min, never under 100ms (`retry: 0` made thousands of connections a second).
        assert_eq!(reconnect_delay(min, max, None, 0, true), ms(1000));
        assert_eq!(reconnect_delay(min, max, Some(ms(150)), 0, true), ms(150));
        assert_eq!(reconnect_delay(min, max, Some(ms(50)), 0, true), MIN_DELAY);
        assert_eq!(reconnect_delay(min, max, Some(ms(0)), 0, true), MIN_DELAY);
        // Failures in a row double from retry_min up to retry_max.
        let doubling: Vec<_> = (1..=7)
            .map(|n| reconnect_delay(min, max, None, n, false).as_millis())
            .collect();
        assert_eq!(doubling, [1000, 2000, 4000, 8000, 16000, 30000, 30000]);
        assert_eq!(reconnect_delay(min, max, None, u32::MAX, false), max);
        // A server retry above retry_min is the base; one below does not speed failures up.
        assert_eq!(
            reconnect_delay(min, max, Some(ms(5000)), 1, false),
            ms(5000)
        );
        assert_eq!(
            reconnect_delay(min, max, Some(ms(5000)), 2, false),
            ms(10_000)
        );
        assert_eq!(reconnect_delay(min, max, Some(ms(10)), 1, false), ms(1000));
        // A server retry above retry_max is honoured.
        assert_eq!(
            reconnect_delay(min, max, Some(ms(60_000)), 3, false),
            ms(60_000)
        );
        // Short connections that delivered data back off from the server's retry (floored).
        let short: Vec<_> = (1..=10)
            .map(|n| reconnect_delay(min, max, Some(ms(0)), n, true).as_millis())
            .collect();
        assert_eq!(
            short,
            [100, 200, 400, 800, 1600, 3200, 6400, 12800, 25600, 30000]
        );
        // Failures never hammer the server, even with zero settings.
        assert_eq!(
            reconnect_delay(ms(0), ms(0), Some(ms(0)), 1, false),
            MIN_DELAY
        );
    }

    #[test]
    fn jitter_adds_at_most_a_quarter() {
        let delay = Duration::from_millis(1000);
        for _ in 0..1000 {
            let jittered = jitter(delay);
            assert!(jittered >= delay && jittered < Duration::from_millis(1250));
        }
        assert_eq!(jitter(Duration::ZERO), Duration::ZERO);
    }

    #[test]
    fn sse_headers_and_configured_ones() {
        let spec = ListenerSpec {
            label: "feed.on_event".into(),
            endpoint: "http://127.0.0.1/".into(),
            headers: vec![
                ("authorization".into(), "Bearer t0ken".into()),
                (
                    "accept".into(),
                    "text/event-stream, application/json".into(),
                ),
            ],
            idle_timeout: Duration::ZERO,
            retry_min: Duration::ZERO,
            retry_max: Duration::ZERO,
            max_event_bytes: 1024,
            shutdown_grace: Duration::ZERO,
        };
        let headers = request_headers(&spec).unwrap();
        assert_eq!(headers["cache-control"], "no-cache");
        assert_eq!(headers["accept"], "text/event-stream, application/json");
        assert!(headers["authorization"].is_sensitive());
        assert!(!format!("{headers:?}").contains("t0ken"));
        let bad = ListenerSpec {
            headers: vec![("bad name".into(), "x".into())],
            ..spec
        };
        assert!(request_headers(&bad).is_err());
    }

    #[test]
    fn the_client_builds() {
        build_client().unwrap();
    }
}
