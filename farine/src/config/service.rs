//! [`ServiceConfig`]: the typed settings of one service, its keys, and the value grammars
//! they share (booleans, bounded numbers, sizes).

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use super::duration::{self, parse_duration};
use super::keys::{is_known_key, keys, Key};
use super::secret::{redact_uri, redact_value, AmqpUri};
use crate::{Error, Result};

keys! {
    KEYS:
    /// The broker: `amqp://`, `amqps://`, or `memory://NAME` for one in the process.
    AMQP_URI = "amqp_uri",
    /// Read by the broker connection for `amqps://`.
    AMQP_CA_FILE = "amqp_ca_file",
    TYPE = "type",
    DURABLE = "durable",
    AUTO_DECLARE = "auto_declare",
    DELIVERY_MODE = "delivery_mode",
    EXCLUSIVE = "exclusive",
    AUTO_DELETE = "auto_delete",
    ENABLED = "enabled",
    CONCURRENCY = "concurrency",
    PREFETCH = "prefetch",
    SHUTDOWN_GRACE = "shutdown_grace",
    HEARTBEAT = "heartbeat",
    RPC_TIMEOUT = "rpc_timeout",
    RETRY_ATTEMPTS = "retry_attempts",
    RETRY_DELAY = "retry_delay",
    RETRY_MAX_DELAY = "retry_max_delay",
    MAX_MESSAGE_BYTES = "max_message_bytes",
    /// The SSE endpoint; the listener's other keys are in `sse`.
    ENDPOINT = "endpoint",
}

// Built-in defaults, documented on the `ServiceConfig` fields.
const DEFAULT_CONCURRENCY: u16 = 10;

/// Deliveries prefetched per call an entry point may run, unless `prefetch` says otherwise:
/// while a call's reply or retry waits for the broker's confirm, its slot is still taken, so
/// a prefetch of `concurrency` alone would leave methods idle (chosen with farine-bench's
/// rpc_pipelined; see the README's performance section).
pub const PREFETCH_PER_CALL: u16 = 4;
const DEFAULT_SHUTDOWN_GRACE: Duration = Duration::from_secs(30);
const DEFAULT_HEARTBEAT: u16 = 30;
const DEFAULT_RPC_TIMEOUT: Duration = Duration::from_secs(30);
const DEFAULT_RETRY_ATTEMPTS: u32 = 3;
const DEFAULT_RETRY_DELAY: Duration = Duration::from_secs(1);
const DEFAULT_RETRY_MAX_DELAY: Duration = Duration::from_secs(60);
const DEFAULT_MAX_MESSAGE_BYTES: usize = 16 * 1024 * 1024;

/// The most `retry_attempts`: each distinct delay is a queue, and more than this many retries
/// of one message is a loop, not a retry policy.
pub const MAX_RETRY_ATTEMPTS: u32 = 100;

/// The largest `max_message_bytes`: RabbitMQ refuses bodies over 512 MiB whatever its settings.
pub const MAX_MESSAGE_BYTES_LIMIT: usize = 512 * 1024 * 1024;

/// The typed settings of one service, from [`Config::service`](super::Config::service).
///
/// The database keys are typed by [`DbSettings`](super::DbSettings) and the SSE listener's by
/// [`SseSettings`](super::SseSettings), read from these settings when a service needs them.
/// [`ServiceConfig::raw`], [`ServiceConfig::parse`] and [`ServiceConfig::error`] give any
/// resolved value, as written or parsed, and errors in the same form. `Debug` never shows a
/// password.
///
/// ```
/// use farine::config::Config;
///
/// let config = Config::from_str(
///     "[DEFAULT]\namqp_uri = amqp://guest:guest@localhost/%2f\n\
///      [shop]\ndb_url = postgres://shop:hunter2@db/shop\ndb_port = 5432\n",
///     "inline",
/// )?;
/// let shop = config.service("shop")?;
/// assert_eq!(shop.raw("db_url"), Some("postgres://shop:hunter2@db/shop"));
/// assert_eq!(shop.parse::<u16>("db_port", "a port number")?, Some(5432));
/// assert!(!format!("{shop:?}").contains("hunter2"));
/// assert!(!format!("{shop:?}").contains("guest:guest"));
/// # Ok::<(), farine::Error>(())
/// ```
#[derive(Clone)]
pub struct ServiceConfig {
    /// The service name, as given to [`Config::service`].
    pub name: String,
    /// The configuration file, for error messages.
    pub file: PathBuf,
    /// `amqp_uri` (required): the broker, `amqp://` or `amqps://`; or `memory://NAME`, a
    /// broker in the process's memory, shared by every service and client of the process
    /// with the same name (nothing persists; for tests and single-process setups).
    pub amqp_uri: AmqpUri,
    /// `type`: the service exchange's type; default `direct`.
    pub exchange_type: ExchangeKind,
    /// `durable`: exchanges and queues survive a broker restart; default `true`.
    pub durable: bool,
    /// `auto_declare`: declare exchanges, queues and bindings at start; default `true`.
    pub auto_declare: bool,
    /// `delivery_mode`: 1 (transient) or 2 (persistent) for published messages; default 2.
    pub delivery_mode: u8,
    /// `exclusive`: consumer queues are exclusive to their connection; default `false`.
    pub exclusive: bool,
    /// `auto_delete`: queues go away when their last consumer does; default `false`.
    pub auto_delete: bool,
    /// `enabled`: whether the runtime starts this service; default `true`.
    pub enabled: bool,
    /// `concurrency`: method calls running at once per entry point; default 10.
    pub concurrency: u16,
    /// `prefetch`: deliveries the broker may send an entry point ahead of their acks; by
    /// default [`PREFETCH_PER_CALL`] per `concurrency` (see [`ServiceConfig::prefetch_for`]).
    pub prefetch: Option<u16>,
    /// `shutdown_grace`: how long running handlers may finish on shutdown; default 30s.
    pub shutdown_grace: Duration,
    /// `heartbeat`: AMQP heartbeat in seconds, 0 disables; default 30.
    pub heartbeat: u16,
    /// `rpc_timeout`: how long a caller waits for a reply; default 30s.
    pub rpc_timeout: Duration,
    /// `retry_attempts`: retries after a handler's first failure, then dead-letter; default 3.
    pub retry_attempts: u32,
    /// `retry_delay`: delay before the first retry, doubling each attempt; default 1s.
    pub retry_delay: Duration,
    /// `retry_max_delay`: cap on the retry delay; default 60s.
    pub retry_max_delay: Duration,
    /// `max_message_bytes`: largest message body accepted; default 16 MiB.
    pub max_message_bytes: usize,
    /// `endpoint`: the SSE URL for `#[stream::http]` entry points, if any.
    pub endpoint: Option<String>,
    /// `amqp_ca_file`: a PEM file of certificate authorities trusted for `amqps://`, on top
    /// of the system's; default none.
    pub amqp_ca_file: Option<PathBuf>,
    /// Every resolved key (section over DEFAULT), env-substituted.
    pub(super) raw: BTreeMap<String, String>,
    /// The service's section name as written in the file (its name when there is none).
    pub(super) section: String,
    /// Keys whose value came from `[DEFAULT]`, so errors name the right section.
    pub(super) from_default: BTreeSet<String>,
}

impl ServiceConfig {
    /// The prefetch of an entry point that runs up to `concurrency` calls at once: the
    /// `prefetch` key, else [`PREFETCH_PER_CALL`] per call, never below `concurrency`.
    ///
    /// ```
    /// let config = farine::Config::from_str("[DEFAULT]\namqp_uri = memory://\n[a]\nprefetch = 7\n", "inline")?;
    /// assert_eq!(config.service("a")?.prefetch_for(10), 10);
    /// assert_eq!(config.service("b")?.prefetch_for(10), 40);
    /// # Ok::<(), farine::Error>(())
    /// ```
    pub fn prefetch_for(&self, concurrency: u16) -> u16 {
        self.prefetch
            .unwrap_or_else(|| concurrency.saturating_mul(PREFETCH_PER_CALL))
            .max(concurrency)
    }

    /// The resolved, env-substituted value of any key (case-insensitive), as written.
    ///
    /// ```
    /// let config = farine::config::Config::from_str(
    ///     "[DEFAULT]\namqp_uri = amqp://localhost\ndb_name = ${FARINE_DOC_UNSET_DB:shop}\n",
    ///     "inline",
    /// )?;
    /// let shop = config.service("shop")?;
    /// assert_eq!(shop.raw("DB_NAME"), Some("shop"));
    /// assert_eq!(shop.raw("db_host"), None);
    /// # Ok::<(), farine::Error>(())
    /// ```
    pub fn raw(&self, key: &str) -> Option<&str> {
        self.raw.get(&key.to_ascii_lowercase()).map(String::as_str)
    }

    /// The resolved keys starting with `prefix` and their values, in key order (for families
    /// of keys such as `header.*`).
    ///
    /// ```
    /// let config = farine::config::Config::from_str(
    ///     "[DEFAULT]\namqp_uri = amqp://localhost\n\
    ///      [feed]\nheader.Accept = text/event-stream\nheader.x-api-key = k\n",
    ///     "inline",
    /// )?;
    /// let feed = config.service("feed")?;
    /// let headers: Vec<_> = feed.raw_prefixed("header.").collect();
    /// assert_eq!(headers, [("header.accept", "text/event-stream"), ("header.x-api-key", "k")]);
    /// # Ok::<(), farine::Error>(())
    /// ```
    pub fn raw_prefixed<'a>(
        &'a self,
        prefix: &'a str,
    ) -> impl Iterator<Item = (&'a str, &'a str)> + 'a {
        self.raw
            .iter()
            .filter(move |(k, _)| k.starts_with(prefix))
            .map(|(k, v)| (k.as_str(), v.as_str()))
    }

    /// Parses a key's value with `FromStr`: `Ok(None)` if the key is unset or empty, and an
    /// [`Error::Config`] saying `expected {expected}, got "..."` if it does not parse.
    ///
    /// ```
    /// let config = farine::config::Config::from_str(
    ///     "[DEFAULT]\namqp_uri = amqp://localhost\n[shop]\ndb_max_conn = many\n",
    ///     "f.ini",
    /// )?;
    /// let shop = config.service("shop")?;
    /// assert_eq!(shop.parse::<u32>("db_timeout", "a number")?, None);
    /// assert_eq!(
    ///     shop.parse::<u32>("db_max_conn", "a whole number").unwrap_err().to_string(),
    ///     "f.ini [shop] db_max_conn: expected a whole number, got \"many\"",
    /// );
    /// # Ok::<(), farine::Error>(())
    /// ```
    pub fn parse<T: FromStr>(&self, key: &str, expected: &str) -> Result<Option<T>> {
        self.typed_named(&key.to_ascii_lowercase(), expected, |v| v.parse().ok())
    }

    /// An [`Error::Config`] about `key`, naming the file and the section the key's value came
    /// from (`DEFAULT` or the service's section).
    ///
    /// ```
    /// let config = farine::config::Config::from_str(
    ///     "[DEFAULT]\namqp_uri = amqp://localhost\ndb_connector = oracle\n",
    ///     "f.ini",
    /// )?;
    /// let shop = config.service("shop")?;
    /// let err = shop.error("db_connector", "expected postgres, got \"oracle\"");
    /// assert_eq!(err.to_string(), "f.ini [DEFAULT] db_connector: expected postgres, got \"oracle\"");
    /// # Ok::<(), farine::Error>(())
    /// ```
    pub fn error(&self, key: &str, message: impl Into<String>) -> Error {
        let key = key.to_ascii_lowercase();
        let section = if self.from_default.contains(&key) {
            "DEFAULT".to_owned()
        } else {
            self.section.clone()
        };
        Error::Config {
            file: self.file.clone(),
            section,
            key,
            message: message.into(),
        }
    }

    /// The settings before any key is read: built-in defaults, no values.
    pub(super) fn unresolved(name: &str, file: PathBuf, section: String) -> ServiceConfig {
        ServiceConfig {
            name: name.to_owned(),
            file,
            amqp_uri: AmqpUri::new(String::new()),
            exchange_type: ExchangeKind::default(),
            durable: true,
            auto_declare: true,
            delivery_mode: 2,
            exclusive: false,
            auto_delete: false,
            enabled: true,
            concurrency: DEFAULT_CONCURRENCY,
            prefetch: None,
            shutdown_grace: DEFAULT_SHUTDOWN_GRACE,
            heartbeat: DEFAULT_HEARTBEAT,
            rpc_timeout: DEFAULT_RPC_TIMEOUT,
            retry_attempts: DEFAULT_RETRY_ATTEMPTS,
            retry_delay: DEFAULT_RETRY_DELAY,
            retry_max_delay: DEFAULT_RETRY_MAX_DELAY,
            max_message_bytes: DEFAULT_MAX_MESSAGE_BYTES,
            endpoint: None,
            amqp_ca_file: None,
            raw: BTreeMap::new(),
            section,
            from_default: BTreeSet::new(),
        }
    }

    /// Reads and checks every key of [`KEYS`] from the resolved values.
    pub(super) fn resolve(&mut self) -> Result<()> {
        self.amqp_uri = self.resolve_amqp_uri()?;
        if let Some(kind) = self.typed(TYPE, ExchangeKind::EXPECTED, |v| v.parse().ok())? {
            self.exchange_type = kind;
        }
        self.durable = self.bool_or(DURABLE, self.durable)?;
        self.auto_declare = self.bool_or(AUTO_DECLARE, self.auto_declare)?;
        self.exclusive = self.bool_or(EXCLUSIVE, self.exclusive)?;
        self.auto_delete = self.bool_or(AUTO_DELETE, self.auto_delete)?;
        self.enabled = self.bool_or(ENABLED, self.enabled)?;
        if let Some(mode) = self.typed(
            DELIVERY_MODE,
            "1 (transient) or 2 (persistent)",
            parse_delivery_mode,
        )? {
            self.delivery_mode = mode;
        }
        if let Some(n) = self.typed(CONCURRENCY, "a whole number from 1 to 65535", |v| {
            parse_uint(v, 1, u16::MAX.into()).and_then(|n| u16::try_from(n).ok())
        })? {
            self.concurrency = n;
        }
        if let Some(n) = self.typed(PREFETCH, "a whole number from 1 to 65535", |v| {
            parse_uint(v, 1, u16::MAX.into()).and_then(|n| u16::try_from(n).ok())
        })? {
            self.prefetch = Some(n);
        }
        if let Some(n) = self.typed(
            HEARTBEAT,
            "a whole number of seconds from 0 to 65535 (0 disables heartbeats)",
            |v| parse_uint(v, 0, u16::MAX.into()).and_then(|n| u16::try_from(n).ok()),
        )? {
            self.heartbeat = n;
        }
        if let Some(n) = self.typed(
            RETRY_ATTEMPTS,
            &format!("a whole number from 0 to {MAX_RETRY_ATTEMPTS}"),
            |v| parse_uint(v, 0, MAX_RETRY_ATTEMPTS.into()).and_then(|n| u32::try_from(n).ok()),
        )? {
            self.retry_attempts = n;
        }
        self.shutdown_grace = self.duration_or(SHUTDOWN_GRACE, self.shutdown_grace)?;
        if let Some(d) = self.typed(
            RPC_TIMEOUT,
            "a duration greater than zero and at most 7 days, such as 30s, 500ms or 2m, or a \
             number of seconds",
            |v| parse_duration(v).filter(|d| !d.is_zero()),
        )? {
            self.rpc_timeout = d;
        }
        self.retry_delay = self.duration_or(RETRY_DELAY, self.retry_delay)?;
        self.retry_max_delay = self.duration_or(RETRY_MAX_DELAY, self.retry_max_delay)?;
        if let Some(n) = self.typed(
            MAX_MESSAGE_BYTES,
            "a number of bytes from 1 to 512MiB, optionally with a KiB, MiB or GiB suffix",
            |v| parse_bytes(v).filter(|&n| n <= MAX_MESSAGE_BYTES_LIMIT),
        )? {
            self.max_message_bytes = n;
        }
        self.endpoint = self.typed(ENDPOINT, "an http:// or https:// URL", |v| {
            has_scheme(v, &["http://", "https://"]).then(|| v.to_owned())
        })?;
        // Any path: whether it is a readable PEM file is checked when connecting.
        self.amqp_ca_file = self.value(AMQP_CA_FILE).map(PathBuf::from);
        Ok(())
    }

    /// The value of a key as written (untrimmed, possibly empty), `None` when unset.
    pub(crate) fn raw_value(&self, key: Key) -> Option<&str> {
        debug_assert!(is_known_key(key.name()), "{key:?} is in no keys! table");
        self.raw.get(key.name()).map(String::as_str)
    }

    /// The trimmed value of a key, `None` when unset or empty (empty means "built-in default").
    pub(crate) fn value(&self, key: Key) -> Option<&str> {
        self.raw_value(key).map(str::trim).filter(|v| !v.is_empty())
    }

    /// Parses a key with `parse`, turning a failure into `expected ..., got "..."`.
    pub(crate) fn typed<T>(
        &self,
        key: Key,
        expected: &str,
        parse: impl FnOnce(&str) -> Option<T>,
    ) -> Result<Option<T>> {
        debug_assert!(is_known_key(key.name()), "{key:?} is in no keys! table");
        self.typed_named(key.name(), expected, parse)
    }

    /// [`ServiceConfig::typed`] for a key by name (for [`ServiceConfig::parse`]).
    fn typed_named<T>(
        &self,
        key: &str,
        expected: &str,
        parse: impl FnOnce(&str) -> Option<T>,
    ) -> Result<Option<T>> {
        let value = self
            .raw
            .get(key)
            .map(|v| v.trim())
            .filter(|v| !v.is_empty());
        match value {
            None => Ok(None),
            Some(value) => parse(value).map(Some).ok_or_else(|| {
                self.error(
                    key,
                    format!("expected {expected}, got {:?}", redact_value(key, value)),
                )
            }),
        }
    }

    fn bool_or(&self, key: Key, default: bool) -> Result<bool> {
        let expected = "true or false (or yes/no, on/off, 1/0)";
        Ok(self.typed(key, expected, parse_bool)?.unwrap_or(default))
    }

    fn duration_or(&self, key: Key, default: Duration) -> Result<Duration> {
        Ok(self.duration(key)?.unwrap_or(default))
    }

    /// A duration key of any settings module (at most 7 days): `None` when unset or empty.
    pub(crate) fn duration(&self, key: Key) -> Result<Option<Duration>> {
        self.typed(key, duration::EXPECTED, parse_duration)
    }

    fn resolve_amqp_uri(&self) -> Result<AmqpUri> {
        let expected =
            "a URI starting with amqp:// or amqps:// (or memory://NAME for an in-process broker)";
        match self.typed(AMQP_URI, expected, |v| {
            has_scheme(
                v,
                &["amqp://", "amqps://", crate::transport::memory::SCHEME],
            )
            .then(|| AmqpUri::new(v))
        })? {
            Some(uri) => Ok(uri),
            None => Err(self.error(
                AMQP_URI.name(),
                format!(
                    "required but set neither in [{}] nor in [DEFAULT]: expected {expected}, \
                     such as amqp://guest:guest@127.0.0.1:5672/%2f",
                    self.section
                ),
            )),
        }
    }
}

impl fmt::Debug for ServiceConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let raw: BTreeMap<&str, String> = self
            .raw
            .iter()
            .map(|(k, v)| (k.as_str(), redact_value(k, v)))
            .collect();
        let endpoint = self.endpoint.as_deref().map(redact_uri);
        f.debug_struct("ServiceConfig")
            .field("name", &self.name)
            .field("file", &self.file)
            .field("amqp_uri", &self.amqp_uri)
            .field("exchange_type", &self.exchange_type)
            .field("durable", &self.durable)
            .field("auto_declare", &self.auto_declare)
            .field("delivery_mode", &self.delivery_mode)
            .field("exclusive", &self.exclusive)
            .field("auto_delete", &self.auto_delete)
            .field("enabled", &self.enabled)
            .field("concurrency", &self.concurrency)
            .field("prefetch", &self.prefetch)
            .field("shutdown_grace", &self.shutdown_grace)
            .field("heartbeat", &self.heartbeat)
            .field("rpc_timeout", &self.rpc_timeout)
            .field("retry_attempts", &self.retry_attempts)
            .field("retry_delay", &self.retry_delay)
            .field("retry_max_delay", &self.retry_max_delay)
            .field("max_message_bytes", &self.max_message_bytes)
            .field("endpoint", &endpoint)
            .field("amqp_ca_file", &self.amqp_ca_file)
            .field("raw", &raw)
            .finish()
    }
}

/// The exchange type of a service (`type` in the configuration).
///
/// ```
/// use farine::config::ExchangeKind;
///
/// assert_eq!("Topic".parse::<ExchangeKind>(), Ok(ExchangeKind::Topic));
/// assert_eq!(ExchangeKind::Fanout.as_str(), "fanout");
/// assert_eq!(ExchangeKind::default(), ExchangeKind::Direct);
/// let err = "broadcast".parse::<ExchangeKind>().unwrap_err();
/// assert_eq!(err.to_string(), "expected one of direct, topic, fanout, headers, got \"broadcast\"");
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum ExchangeKind {
    /// Routes on an exact routing key.
    #[default]
    Direct,
    /// Routes on routing-key patterns (`*`, `#`).
    Topic,
    /// Copies to every bound queue.
    Fanout,
    /// Routes on message headers.
    Headers,
}

impl ExchangeKind {
    /// What the error for a bad `type` says was expected.
    const EXPECTED: &'static str = "one of direct, topic, fanout, headers";

    /// The AMQP name: `"direct"`, `"topic"`, `"fanout"` or `"headers"`.
    ///
    /// ```
    /// assert_eq!(farine::config::ExchangeKind::Headers.as_str(), "headers");
    /// ```
    pub fn as_str(&self) -> &'static str {
        match self {
            ExchangeKind::Direct => "direct",
            ExchangeKind::Topic => "topic",
            ExchangeKind::Fanout => "fanout",
            ExchangeKind::Headers => "headers",
        }
    }
}

impl fmt::Display for ExchangeKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for ExchangeKind {
    type Err = ParseExchangeKindError;

    /// Case-insensitive; surrounding whitespace is ignored.
    fn from_str(s: &str) -> std::result::Result<Self, Self::Err> {
        match s.trim().to_ascii_lowercase().as_str() {
            "direct" => Ok(ExchangeKind::Direct),
            "topic" => Ok(ExchangeKind::Topic),
            "fanout" => Ok(ExchangeKind::Fanout),
            "headers" => Ok(ExchangeKind::Headers),
            _ => Err(ParseExchangeKindError(s.to_owned())),
        }
    }
}

/// A string that is not an exchange type; its message lists the accepted ones.
///
/// ```
/// let err = "fan-out".parse::<farine::config::ExchangeKind>().unwrap_err();
/// assert!(err.to_string().contains("direct, topic, fanout, headers"));
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ParseExchangeKindError(String);

impl fmt::Display for ParseExchangeKindError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "expected {}, got {:?}", ExchangeKind::EXPECTED, self.0)
    }
}

impl std::error::Error for ParseExchangeKindError {}

fn has_scheme(value: &str, schemes: &[&str]) -> bool {
    schemes.iter().any(|scheme| {
        value
            .get(..scheme.len())
            .is_some_and(|head| head.eq_ignore_ascii_case(scheme))
    })
}

fn parse_bool(value: &str) -> Option<bool> {
    match value.to_ascii_lowercase().as_str() {
        "true" | "yes" | "on" | "1" => Some(true),
        "false" | "no" | "off" | "0" => Some(false),
        _ => None,
    }
}

fn parse_uint(value: &str, min: u64, max: u64) -> Option<u64> {
    value
        .parse::<u64>()
        .ok()
        .filter(|n| (min..=max).contains(n))
}

fn parse_delivery_mode(value: &str) -> Option<u8> {
    match value.to_ascii_lowercase().as_str() {
        "1" | "transient" => Some(1),
        "2" | "persistent" => Some(2),
        _ => None,
    }
}

/// Bytes, optionally with a binary suffix: "1048576", "512KiB", "16MiB", "1GiB".
pub(crate) fn parse_bytes(value: &str) -> Option<usize> {
    let lower = value.to_ascii_lowercase();
    let (number, unit) = [("kib", 1u64 << 10), ("mib", 1 << 20), ("gib", 1 << 30)]
        .into_iter()
        .find_map(|(suffix, unit)| Some((lower.strip_suffix(suffix)?, unit)))
        .unwrap_or((lower.as_str(), 1));
    let bytes = number.trim().parse::<u64>().ok()?.checked_mul(unit)?;
    usize::try_from(bytes).ok().filter(|&n| n > 0)
}
