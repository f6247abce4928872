//! The Server-Sent-Events listener behind `#[stream::http]`: its spec (resolved against the
//! service's settings), its handler, and its run loop (`listen`), with the SSE parser
//! (`parse`). The user-facing names are in [`crate::stream`].

mod listen;
mod parse;
#[cfg(test)]
mod tests;

#[allow(unused_imports)] // the runtime starts #[stream::http] entry points with it
pub(crate) use listen::run;
#[cfg(feature = "otel")]
pub(crate) use listen::tls_config;

use super::EntryPoint;
use crate::config::{redact_uri, ServiceConfig, SseSettings};
use crate::context::ServiceContext;
use crate::outcome::{guard_outcome, HandlerResult, Outcome};
use crate::{Error, Result};
use futures::future::BoxFuture;
use futures::FutureExt;
use serde::de::DeserializeOwned;
use std::any::Any;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// The `idle_timeout` used when the key is unset.
pub use crate::config::DEFAULT_IDLE_TIMEOUT;

/// One server-sent event, as the method receives it.
///
/// `T` is how `data` is delivered: `String` (the default) is the text as sent; any other
/// type is decoded from JSON (see the [module documentation](crate::stream)).
///
/// ```
/// use farine::stream::Event;
///
/// let event: Event = Event {
///     id: Some("42".into()),
///     event: "price".into(),
///     data: r#"{"symbol":"ACME","cents":1234}"#.into(),
/// };
/// let value: serde_json::Value = event.json()?;
/// assert_eq!(value["cents"], 1234);
/// # Ok::<(), farine::Error>(())
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Event<T = String> {
    /// The event's id: the last `id:` the server sent, which persists across events until
    /// the server sends another (`None` when it never sent one, or reset it with an empty
    /// `id:`).
    pub id: Option<String>,
    /// The event's type: its `event:` field, `"message"` when it has none.
    pub event: String,
    /// The event's data.
    pub data: T,
}

impl Event<String> {
    /// Decodes the data as JSON, for methods that take raw events and decode them depending
    /// on their type.
    ///
    /// ```
    /// # use farine::stream::Event;
    /// let event = Event { id: None, event: "ping".to_string(), data: "not json".to_string() };
    /// let err = event.json::<serde_json::Value>().unwrap_err();
    /// assert!(err.to_string().starts_with("JSON decoding the data of event \"ping\""));
    /// ```
    pub fn json<U: DeserializeOwned>(&self) -> Result<U> {
        serde_json::from_str(&self.data).map_err(Error::json(format!(
            "decoding the data of event {:?}",
            self.event
        )))
    }
}

/// Decodes event data as `T`: the text itself when `T` is `String`, JSON otherwise.
fn decode<T: DeserializeOwned + 'static>(data: String) -> std::result::Result<T, String> {
    let mut slot = Some(data);
    if let Some(raw) = (&mut slot as &mut dyn Any).downcast_mut::<Option<T>>() {
        if let Some(raw) = raw.take() {
            return Ok(raw);
        }
    }
    let data = slot.unwrap_or_default();
    serde_json::from_str(&data).map_err(|err| {
        format!(
            "event data does not decode as JSON {}: {err}",
            std::any::type_name::<T>()
        )
    })
}

/// Runs a `#[stream::http]` method on one event; built by [`event_handler`].
pub type EventHandler =
    Arc<dyn Fn(Arc<ServiceContext>, Event<String>) -> BoxFuture<'static, Outcome> + Send + Sync>;

/// Builds the handler of a `#[stream::http]` method: decodes the event's data as `T` (see
/// [`Event`]), calls the method, and turns its result into an [`Outcome`]. Data that does not
/// decode is [`Outcome::Poison`] (the method is not called); a panic in the method is
/// [`Outcome::Failed`], not a dead listener.
///
/// ```
/// use farine::stream::{event_handler, Event};
/// use std::sync::Arc;
///
/// struct Feed;
/// impl Feed {
///     async fn on_event(&self, event: Event<serde_json::Value>) -> farine::Result<()> {
///         println!("{}", event.data);
///         Ok(())
///     }
/// }
///
/// let handler = event_handler(Arc::new(Feed), |feed: Arc<Feed>, _context, event| async move {
///     feed.on_event(event).await
/// });
/// # let _ = handler;
/// ```
pub fn event_handler<S, T, F, Fut>(service: Arc<S>, method: F) -> EventHandler
where
    S: Send + Sync + 'static,
    T: DeserializeOwned + Send + 'static,
    F: Fn(Arc<S>, Arc<ServiceContext>, Event<T>) -> Fut + Send + Sync + 'static,
    Fut: Future + Send + 'static,
    Fut::Output: HandlerResult,
{
    let method = Arc::new(method);
    Arc::new(move |context: Arc<ServiceContext>, event: Event<String>| {
        let data = match decode::<T>(event.data) {
            Ok(data) => data,
            Err(reason) => return futures::future::ready(Outcome::Poison(reason)).boxed(),
        };
        let event = Event {
            id: event.id,
            event: event.event,
            data,
        };
        let service = service.clone();
        let method = method.clone();
        // The method is called inside the guarded future, so even a panic before its first
        // `.await` (or in a non-async closure) becomes a failure.
        guard_outcome(async move { method(service, context, event).await }).boxed()
    })
}

/// Where and how one `#[stream::http]` entry point listens.
#[derive(Clone)]
pub struct ListenerSpec {
    /// `service.method`, for logs.
    pub label: String,
    /// The event stream's URL (`http://` or `https://`; a `user:password@` in it is sent as
    /// basic authentication and never logged).
    pub endpoint: String,
    /// Extra request headers, sent on every connection (values are never logged).
    pub headers: Vec<(String, String)>,
    /// A connection that receives no byte for this long (keep-alive comments count), or a
    /// request that gets no response for this long, is dropped and reconnected.
    /// `Duration::ZERO` disables it.
    pub idle_timeout: Duration,
    /// The first reconnection delay after a failure, and the delay after a stream ends when
    /// the server did not set one with `retry:`.
    pub retry_min: Duration,
    /// The cap on the doubling reconnection delay.
    pub retry_max: Duration,
    /// Events (and lines) larger than this are skipped, so a broken server cannot exhaust
    /// memory.
    pub max_event_bytes: usize,
    /// On shutdown, how long the event being handled may take to finish.
    pub shutdown_grace: Duration,
}

impl std::fmt::Debug for ListenerSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let headers = crate::config::redacted_headers(&self.headers);
        f.debug_struct("ListenerSpec")
            .field("label", &self.label)
            .field("endpoint", &redact_uri(&self.endpoint))
            .field("headers", &headers)
            .field("idle_timeout", &self.idle_timeout)
            .field("retry_min", &self.retry_min)
            .field("retry_max", &self.retry_max)
            .field("max_event_bytes", &self.max_event_bytes)
            .field("shutdown_grace", &self.shutdown_grace)
            .finish()
    }
}

impl ListenerSpec {
    /// The listener of entry point `label` (`"service.method"`), configured from the
    /// service's settings:
    ///
    /// - `endpoint`: the attribute's `endpoint` if given, else the section's `endpoint` key
    ///   (else an [`Error::Config`] naming the file, section and key `endpoint`);
    /// - `header.<Name> = value`: a request header per key (an empty value, such as an unset
    ///   `${TOKEN:}`, sends no header); `Accept: text/event-stream` and
    ///   `Cache-Control: no-cache` are always sent unless overridden this way;
    /// - `idle_timeout`: default 60s, `0` disables it;
    /// - `retry_delay` / `retry_max_delay`: the reconnection delay bounds (the same keys as
    ///   the consumers' retries: 1s and 60s by default);
    /// - `max_message_bytes`: the largest event accepted; `shutdown_grace`.
    ///
    /// ```
    /// use farine::config::Config;
    /// use farine::stream::ListenerSpec;
    /// use std::time::Duration;
    ///
    /// let config = Config::from_str(
    ///     "[DEFAULT]\namqp_uri = amqp://localhost\n\
    ///      [ticker]\nendpoint = https://prices.example/stream\n\
    ///      header.Authorization = Bearer s3cret\nidle_timeout = 90s\n",
    ///     "farine.ini",
    /// )?;
    /// let spec = ListenerSpec::from_settings("ticker.on_price", None, &config.service("ticker")?)?;
    /// assert_eq!(spec.endpoint, "https://prices.example/stream");
    /// assert_eq!(spec.headers, [("authorization".to_string(), "Bearer s3cret".to_string())]);
    /// assert_eq!(spec.idle_timeout, Duration::from_secs(90));
    /// assert!(!format!("{spec:?}").contains("s3cret"));
    ///
    /// let err = ListenerSpec::from_settings("shop.feed", None, &config.service("shop")?).unwrap_err();
    /// assert!(err.to_string().starts_with("farine.ini [shop] endpoint: required by #[stream::http] shop.feed"));
    /// # Ok::<(), farine::Error>(())
    /// ```
    pub fn from_settings(
        label: impl Into<String>,
        attribute_endpoint: Option<&str>,
        settings: &ServiceConfig,
    ) -> Result<ListenerSpec> {
        let label = label.into();
        let endpoint = match attribute_endpoint {
            Some(endpoint) => {
                check_url(endpoint).map_err(|message| {
                    Error::Runtime(format!(
                        "#[stream::http] {label}: endpoint {:?}: {message}",
                        redact_uri(endpoint)
                    ))
                })?;
                endpoint.to_owned()
            }
            None => {
                let Some(endpoint) = settings.endpoint.as_deref() else {
                    return Err(settings.error(
                        "endpoint",
                        format!(
                            "required by #[stream::http] {label}: expected the event stream's \
                             http:// or https:// URL, in the service's section or as \
                             #[stream::http(endpoint = \"...\")]"
                        ),
                    ));
                };
                check_url(endpoint).map_err(|message| {
                    settings.error(
                        "endpoint",
                        format!("{message}, got {:?}", redact_uri(endpoint)),
                    )
                })?;
                endpoint.to_owned()
            }
        };
        let sse = SseSettings::from_settings(settings)?;
        Ok(ListenerSpec {
            label,
            endpoint,
            headers: sse.headers,
            idle_timeout: sse.idle_timeout,
            retry_min: settings.retry_delay,
            retry_max: settings.retry_max_delay,
            max_event_bytes: settings.max_message_bytes,
            shutdown_grace: settings.shutdown_grace,
        })
    }
}

/// Checks that `url` is an absolute http(s) URL with a host; the error says what is wrong.
fn check_url(url: &str) -> std::result::Result<(), String> {
    let parsed = reqwest::Url::parse(url)
        .map_err(|err| format!("expected an http:// or https:// URL ({err})"))?;
    if !matches!(parsed.scheme(), "http" | "https") {
        return Err(format!(
            "expected an http:// or https:// URL, not {}://",
            parsed.scheme()
        ));
    }
    if parsed.host_str().is_none_or(str::is_empty) {
        return Err("expected an http:// or https:// URL with a host".to_owned());
    }
    Ok(())
}

/// `#[stream::http(...)]` as written.
#[derive(Clone, Debug)]
pub struct ListenAttr {
    pub method: &'static str,
    pub endpoint: Option<&'static str>,
}

/// A listener, its spec resolved, ready to run.
pub(crate) struct Listener {
    spec: ListenerSpec,
    handler: EventHandler,
    context: Arc<ServiceContext>,
}

/// Resolves a listener's spec against the service's settings (an endpoint is required).
pub(crate) fn attach(
    service: &'static str,
    attr: ListenAttr,
    handler: EventHandler,
    context: Arc<ServiceContext>,
) -> Result<Listener> {
    let label = format!("{service}.{}", attr.method);
    let spec = ListenerSpec::from_settings(label, attr.endpoint, &context.settings)?;
    Ok(Listener {
        spec,
        handler,
        context,
    })
}

impl EntryPoint for Listener {
    /// Listens until `shutdown`; events are handled one at a time, so there is nothing in
    /// flight to wait for beyond the current one.
    fn run(
        self: Box<Self>,
        shutdown: CancellationToken,
        _grace: Duration,
    ) -> BoxFuture<'static, Result<()>> {
        let Listener {
            spec,
            handler,
            context,
        } = *self;
        async move {
            run(spec, handler, context, shutdown).await;
            Ok(())
        }
        .boxed()
    }
}
