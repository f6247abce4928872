//! Configuration: one INI file with a `[DEFAULT]` section and one section per service.
//!
//! The file is `FARINE_INI`, or `/etc/farine.ini` when that is unset. It is parsed by the
//! `config` crate's INI format; farine adds what the format lacks:
//!
//! - **Case.** Section names and keys are case-insensitive: `[Calc]` is service `calc`, and
//!   `[DEFAULT]` is found however it is spelled.
//! - **Layering.** A service's value comes from its section, else from `[DEFAULT]`, else from
//!   the built-in default. A service without a section is allowed. An empty value counts as
//!   unset for the typed keys (so `concurrency = ${CONCURRENCY:}` means "the built-in default").
//! - **Environment.** `${VAR}` and `${VAR:default}` anywhere in a value are replaced from the
//!   environment when a service's settings are resolved. The default applies when `VAR` is
//!   unset or empty and may itself be empty (`${VAR:}`); `${VAR:-default}` is accepted as a
//!   spelling of the same thing. `${VAR}` with `VAR` unset and no default is an error.
//! - **Types.** Every typed key is checked when [`Config::service`] is called, so a bad value
//!   stops the start with an [`Error::Config`] naming file, section, key, what was expected and
//!   what was found.
//! - **Secrets.** Passwords never reach a log line or `Debug` output: [`AmqpUri`] hides its
//!   password, and [`ServiceConfig`]'s `Debug` hides URI passwords and every value whose key looks
//!   secret (`password`, `secret`, `token`, `auth`, `api_key`, headers).
//! - **Typos.** A key farine does not know is an error in a service's section (with the closest
//!   known key as a suggestion) and a warning, logged once, in `[DEFAULT]` (which other programs
//!   sharing the file may use).
//! - **Bounds.** Every number is range-checked (`retry_attempts` at most 100, durations at most
//!   7 days, `max_message_bytes` at most 512 MiB), and a file over 1 MiB is refused unread.
//!
//! ```
//! use farine::config::{Config, ExchangeKind};
//!
//! let config = Config::from_str(
//!     "[DEFAULT]\n\
//!      amqp_uri = amqp://guest:guest@127.0.0.1:5672/%2f\n\
//!      concurrency = 4\n\
//!      [Calc]\n\
//!      type = topic\n",
//!     "farine.ini",
//! )?;
//! let calc = config.service("calc")?;
//! assert_eq!(calc.exchange_type, ExchangeKind::Topic);
//! assert_eq!(calc.concurrency, 4);
//! assert_eq!(calc.amqp_uri.to_string(), "amqp://guest:***@127.0.0.1:5672/%2f");
//! # Ok::<(), farine::Error>(())
//! ```

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::fmt;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

use config::{FileFormat, Source};

use crate::{Error, Result};

/// The environment variable naming the configuration file.
pub const ENV_VAR: &str = "FARINE_INI";

/// The configuration file used when [`ENV_VAR`] is unset or empty.
pub const DEFAULT_PATH: &str = "/etc/farine.ini";

/// `[DEFAULT]` as stored (names are lowercased on load).
const DEFAULT_SECTION: &str = "default";

/// Keys some part of farine reads; anything else is an error in a service's section and a
/// warning in `[DEFAULT]`.
const KNOWN_KEYS: &[&str] = &[
    "amqp_uri",
    "type",
    "durable",
    "auto_declare",
    "delivery_mode",
    "exclusive",
    "auto_delete",
    "enabled",
    "concurrency",
    "shutdown_grace",
    "heartbeat",
    "rpc_timeout",
    "retry_attempts",
    "retry_delay",
    "retry_max_delay",
    "max_message_bytes",
    "endpoint",
    "db_connector",
    "db_url",
    "db_name",
    "db_user",
    "db_password",
    "db_host",
    "db_port",
    "db_max_conn",
    "db_stale_timeout",
    "db_timeout",
    "db_stream_share",
    "headers",
    "idle_timeout",
    "retry",
    "serializer",
    "amqp_ca_file",
];

/// Key prefixes other modules own (SSE request headers).
const KNOWN_PREFIXES: &[&str] = &["header."];

/// Substrings of key names whose values are never shown.
const SECRET_KEY_PARTS: &[&str] = &[
    "password", "passwd", "secret", "token", "auth", "api_key", "apikey", "header",
];

// Built-in defaults, documented on the `ServiceConfig` fields.
const DEFAULT_CONCURRENCY: u16 = 10;
const DEFAULT_SHUTDOWN_GRACE: Duration = Duration::from_secs(30);
const DEFAULT_HEARTBEAT: u16 = 30;
const DEFAULT_RPC_TIMEOUT: Duration = Duration::from_secs(30);
const DEFAULT_RETRY_ATTEMPTS: u32 = 3;
const DEFAULT_RETRY_DELAY: Duration = Duration::from_secs(1);
const DEFAULT_RETRY_MAX_DELAY: Duration = Duration::from_secs(60);
const DEFAULT_MAX_MESSAGE_BYTES: usize = 16 * 1024 * 1024;

/// The largest configuration file read: a farine.ini is a few KiB, and reading stops here so
/// that a wrong `FARINE_INI` (a log, `/dev/zero`) cannot exhaust memory.
pub const MAX_FILE_BYTES: u64 = 1024 * 1024;

/// The most `retry_attempts`: each distinct delay is a queue, and more than this many retries
/// of one message is a loop, not a retry policy.
pub const MAX_RETRY_ATTEMPTS: u32 = 100;

/// The longest duration any key accepts. Far above any sane timeout, and below RabbitMQ's
/// limit on a queue's message TTL (used for retry delays) and the range of a clock instant.
pub const MAX_DURATION: Duration = Duration::from_secs(7 * 24 * 60 * 60);

/// The largest `max_message_bytes`: RabbitMQ refuses bodies over 512 MiB whatever its settings.
pub const MAX_MESSAGE_BYTES_LIMIT: usize = 512 * 1024 * 1024;

/// One INI section: its name as written (for error messages) and its lowercased keys.
#[derive(Clone)]
struct Section {
    name: String,
    values: BTreeMap<String, String>,
}

/// A loaded configuration file: the `[DEFAULT]` values and one section per service, as raw
/// strings. Typed, validated settings come from [`Config::service`].
///
/// ```
/// use farine::config::Config;
///
/// let config = Config::from_str(
///     "[DEFAULT]\namqp_uri = amqp://localhost\n[calc]\n[Shop]\n",
///     "example.ini",
/// )?;
/// assert_eq!(config.sections(), ["calc", "shop"]);
/// assert!(config.has_section("SHOP"));
/// # Ok::<(), farine::Error>(())
/// ```
#[derive(Clone)]
pub struct Config {
    path: PathBuf,
    defaults: Section,
    sections: BTreeMap<String, Section>,
}

impl Config {
    /// Loads the file named by the `FARINE_INI` environment variable, or `/etc/farine.ini`
    /// when it is unset or empty.
    ///
    /// ```no_run
    /// let config = farine::config::Config::from_env()?;
    /// let calc = config.service("calc")?;
    /// # Ok::<(), farine::Error>(())
    /// ```
    pub fn from_env() -> Result<Config> {
        match std::env::var_os(ENV_VAR) {
            Some(path) if !path.is_empty() => Config::load(PathBuf::from(path)),
            _ => Config::load(DEFAULT_PATH),
        }
    }

    /// Loads an INI file. A missing or unreadable file, one over [`MAX_FILE_BYTES`], or one
    /// that is not valid INI, is an [`Error::ConfigFile`].
    ///
    /// ```
    /// let err = farine::config::Config::load("/nonexistent/farine.ini").unwrap_err();
    /// assert!(err.to_string().contains("set FARINE_INI"));
    /// ```
    pub fn load(path: impl AsRef<Path>) -> Result<Config> {
        let path = path.as_ref();
        let file_error = |message: String| Error::ConfigFile {
            file: path.to_path_buf(),
            message,
        };
        // Read the file ourselves rather than through `config::File::new`: that would also
        // try `path.ini`, needs a UTF-8 path, and reports a missing file less helpfully.
        // One byte more than the limit tells a file at the limit from a larger one.
        let mut bytes = Vec::new();
        std::fs::File::open(path)
            .and_then(|file| file.take(MAX_FILE_BYTES + 1).read_to_end(&mut bytes))
            .map_err(|err| file_error(read_error_message(path, &err)))?;
        if bytes.len() as u64 > MAX_FILE_BYTES {
            return Err(file_error(format!(
                "configuration file {} is larger than {} KiB: expected a farine.ini of a few KiB \
                 (is {ENV_VAR} pointing at the right file?)",
                path.display(),
                MAX_FILE_BYTES / 1024
            )));
        }
        let text = String::from_utf8(bytes).map_err(|_| {
            file_error(format!(
                "configuration file {} is not UTF-8 text",
                path.display()
            ))
        })?;
        Config::from_str(&text, path)
    }

    /// Parses INI text; `origin` is the name errors and warnings give as the file.
    ///
    /// ```
    /// use farine::config::Config;
    ///
    /// let config = Config::from_str("[DEFAULT]\namqp_uri = amqp://localhost\n", "inline")?;
    /// assert_eq!(config.path().to_str(), Some("inline"));
    ///
    /// let err = Config::from_str("amqp_uri = amqp://localhost\n", "inline").unwrap_err();
    /// assert!(err.to_string().contains("before any [section]"));
    /// # Ok::<(), farine::Error>(())
    /// ```
    pub fn from_str(text: &str, origin: impl Into<PathBuf>) -> Result<Config> {
        let path = origin.into();
        let file_error = |message: String| Error::ConfigFile {
            file: path.clone(),
            message,
        };
        // `Source::collect` on the file itself, not a built `config::Config`: the builder would
        // split dotted section names into nested tables and drop empty sections.
        let parsed = config::File::from_str(text, FileFormat::Ini)
            .collect()
            .map_err(|err| file_error(format!("not a valid INI file: {}", ini_error(&err))))?;

        // The parsed map is unordered; sort so sections that differ only in case always merge
        // in the same order.
        let mut entries: Vec<_> = parsed.into_iter().collect();
        entries.sort_by(|a, b| a.0.cmp(&b.0));

        let mut defaults = Section {
            name: "DEFAULT".to_owned(),
            values: BTreeMap::new(),
        };
        let mut sections: BTreeMap<String, Section> = BTreeMap::new();
        for (name, value) in entries {
            let table = value.into_table().map_err(|_| {
                file_error(format!(
                    "key {name:?} appears before any [section]: move it under [DEFAULT] or a \
                     service's section"
                ))
            })?;
            let name = name.trim().to_owned();
            let lower = name.to_lowercase();
            let section = if lower == DEFAULT_SECTION {
                &mut defaults
            } else {
                sections.entry(lower).or_insert_with(|| Section {
                    name,
                    values: BTreeMap::new(),
                })
            };
            for (key, value) in table {
                // The INI parser reads a key up to `=` or `:` across line ends, so a line
                // without either silently becomes part of the next key.
                if let Some((line, _)) = key.split_once('\n') {
                    return Err(file_error(format!(
                        "[{}]: expected \"key = value\", got {:?}",
                        section.name,
                        line.trim()
                    )));
                }
                // INI only yields strings; anything else would be a bug in the parser.
                let value = value
                    .into_string()
                    .map_err(|err| file_error(format!("[{}] {key}: {err}", section.name)))?;
                section
                    .values
                    .insert(key.trim().to_ascii_lowercase(), value);
            }
        }

        let config = Config {
            path,
            defaults,
            sections,
        };
        config.warn_unknown_keys();
        Ok(config)
    }

    /// The file this configuration came from (or the `origin` given to [`Config::from_str`]).
    ///
    /// ```
    /// let config = farine::config::Config::from_str("", "/etc/farine.ini")?;
    /// assert_eq!(config.path(), std::path::Path::new("/etc/farine.ini"));
    /// # Ok::<(), farine::Error>(())
    /// ```
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Whether the file has a section for this service (case-insensitive; `DEFAULT` is not
    /// a service section).
    ///
    /// ```
    /// let config = farine::config::Config::from_str("[DEFAULT]\n[Calc]\n", "inline")?;
    /// assert!(config.has_section("calc"));
    /// assert!(!config.has_section("default"));
    /// assert!(!config.has_section("shop"));
    /// # Ok::<(), farine::Error>(())
    /// ```
    pub fn has_section(&self, name: &str) -> bool {
        self.sections.contains_key(&name.to_lowercase())
    }

    /// The service sections, lowercased and sorted, without `DEFAULT`.
    ///
    /// ```
    /// let config = farine::config::Config::from_str("[DEFAULT]\n[shop]\n[Calc]\n", "inline")?;
    /// assert_eq!(config.sections(), ["calc", "shop"]);
    /// # Ok::<(), farine::Error>(())
    /// ```
    pub fn sections(&self) -> Vec<String> {
        self.sections.keys().cloned().collect()
    }

    /// The typed, validated settings of a service: its section's values over `[DEFAULT]` over
    /// the built-in defaults. A service without a section is allowed. `amqp_uri` is required.
    ///
    /// ```
    /// use std::time::Duration;
    /// use farine::config::Config;
    ///
    /// let config = Config::from_str(
    ///     "[DEFAULT]\n\
    ///      amqp_uri = amqp://guest:guest@localhost/%2f\n\
    ///      rpc_timeout = 5s\n\
    ///      [calc]\n\
    ///      rpc_timeout = 0.5\n\
    ///      durable = no\n",
    ///     "inline",
    /// )?;
    /// let calc = config.service("calc")?;
    /// assert_eq!(calc.rpc_timeout, Duration::from_millis(500));
    /// assert!(!calc.durable);
    ///
    /// // No [shop] section: DEFAULT and built-ins apply.
    /// let shop = config.service("shop")?;
    /// assert_eq!(shop.rpc_timeout, Duration::from_secs(5));
    /// assert!(shop.durable);
    ///
    /// let bad = Config::from_str("[DEFAULT]\namqp_uri = amqp://h\n[calc]\ndurable = yes please\n", "f.ini")?;
    /// assert_eq!(
    ///     bad.service("calc").unwrap_err().to_string(),
    ///     "f.ini [calc] durable: expected true or false (or yes/no, on/off, 1/0), got \"yes please\"",
    /// );
    /// # Ok::<(), farine::Error>(())
    /// ```
    pub fn service(&self, name: &str) -> Result<ServiceConfig> {
        let section = self.sections.get(&name.to_lowercase());
        let mut svc = ServiceConfig {
            name: name.to_owned(),
            file: self.path.clone(),
            amqp_uri: AmqpUri::new(String::new()),
            exchange_type: ExchangeKind::default(),
            durable: true,
            auto_declare: true,
            delivery_mode: 2,
            exclusive: false,
            auto_delete: false,
            enabled: true,
            concurrency: DEFAULT_CONCURRENCY,
            shutdown_grace: DEFAULT_SHUTDOWN_GRACE,
            heartbeat: DEFAULT_HEARTBEAT,
            rpc_timeout: DEFAULT_RPC_TIMEOUT,
            retry_attempts: DEFAULT_RETRY_ATTEMPTS,
            retry_delay: DEFAULT_RETRY_DELAY,
            retry_max_delay: DEFAULT_RETRY_MAX_DELAY,
            max_message_bytes: DEFAULT_MAX_MESSAGE_BYTES,
            endpoint: None,
            raw: BTreeMap::new(),
            section: section.map_or_else(|| name.to_owned(), |s| s.name.clone()),
            from_default: BTreeSet::new(),
        };

        // Layer the raw values first so every error below can name the section a value
        // came from.
        for (key, value) in &self.defaults.values {
            if !section.is_some_and(|s| s.values.contains_key(key)) {
                svc.from_default.insert(key.clone());
                svc.raw.insert(key.clone(), value.clone());
            }
        }
        if let Some(section) = section {
            for (key, value) in &section.values {
                svc.raw.insert(key.clone(), value.clone());
            }
        }
        let mut substituted = BTreeMap::new();
        for (key, value) in &svc.raw {
            let value = substitute_env(value).map_err(|message| svc.error(key, message))?;
            substituted.insert(key.clone(), value);
        }
        svc.raw = substituted;
        if let Some(section) = section {
            svc.check_keys(section)?;
        }

        svc.amqp_uri = svc.resolve_amqp_uri()?;
        if let Some(kind) = svc.typed("type", ExchangeKind::EXPECTED, |v| v.parse().ok())? {
            svc.exchange_type = kind;
        }
        svc.durable = svc.bool_or("durable", svc.durable)?;
        svc.auto_declare = svc.bool_or("auto_declare", svc.auto_declare)?;
        svc.exclusive = svc.bool_or("exclusive", svc.exclusive)?;
        svc.auto_delete = svc.bool_or("auto_delete", svc.auto_delete)?;
        svc.enabled = svc.bool_or("enabled", svc.enabled)?;
        if let Some(mode) = svc.typed(
            "delivery_mode",
            "1 (transient) or 2 (persistent)",
            parse_delivery_mode,
        )? {
            svc.delivery_mode = mode;
        }
        if let Some(n) = svc.typed("concurrency", "a whole number from 1 to 65535", |v| {
            parse_uint(v, 1, u16::MAX.into()).and_then(|n| u16::try_from(n).ok())
        })? {
            svc.concurrency = n;
        }
        if let Some(n) = svc.typed(
            "heartbeat",
            "a whole number of seconds from 0 to 65535 (0 disables heartbeats)",
            |v| parse_uint(v, 0, u16::MAX.into()).and_then(|n| u16::try_from(n).ok()),
        )? {
            svc.heartbeat = n;
        }
        if let Some(n) = svc.typed(
            "retry_attempts",
            &format!("a whole number from 0 to {MAX_RETRY_ATTEMPTS}"),
            |v| parse_uint(v, 0, MAX_RETRY_ATTEMPTS.into()).and_then(|n| u32::try_from(n).ok()),
        )? {
            svc.retry_attempts = n;
        }
        svc.shutdown_grace = svc.duration_or("shutdown_grace", svc.shutdown_grace)?;
        if let Some(d) = svc.typed(
            "rpc_timeout",
            "a duration greater than zero and at most 7 days, such as 30s, 500ms or 2m, or a \
             number of seconds",
            |v| parse_duration(v).filter(|d| !d.is_zero()),
        )? {
            svc.rpc_timeout = d;
        }
        svc.retry_delay = svc.duration_or("retry_delay", svc.retry_delay)?;
        svc.retry_max_delay = svc.duration_or("retry_max_delay", svc.retry_max_delay)?;
        if let Some(n) = svc.typed(
            "max_message_bytes",
            "a number of bytes from 1 to 512MiB, optionally with a KiB, MiB or GiB suffix",
            |v| parse_bytes(v).filter(|&n| n <= MAX_MESSAGE_BYTES_LIMIT),
        )? {
            svc.max_message_bytes = n;
        }
        svc.endpoint = svc.typed("endpoint", "an http:// or https:// URL", |v| {
            has_scheme(v, &["http://", "https://"]).then(|| v.to_owned())
        })?;
        Ok(svc)
    }

    /// Warns once per process about each key of `[DEFAULT]` no part of farine reads (likely a
    /// typo; a service's section is checked, with an error, by [`Config::service`]).
    fn warn_unknown_keys(&self) {
        static WARNED: OnceLock<Mutex<HashSet<(PathBuf, String, String)>>> = OnceLock::new();
        let warned = WARNED.get_or_init(Default::default);
        let section = &self.defaults;
        for key in section.values.keys().filter(|key| !is_known_key(key)) {
            let entry = (self.path.clone(), section.name.clone(), key.clone());
            // A poisoned lock only means another thread panicked while warning.
            let first = warned
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner())
                .insert(entry);
            if first {
                tracing::warn!(
                    "{} [{}] {}: unknown configuration key, ignored{}",
                    self.path.display(),
                    section.name,
                    key,
                    suggestion(key)
                        .map(|known| format!(" (did you mean {known}?)"))
                        .unwrap_or_default(),
                );
            }
        }
    }
}

impl fmt::Debug for Config {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let redacted = |section: &Section| -> BTreeMap<String, String> {
            section
                .values
                .iter()
                .map(|(k, v)| (k.clone(), redact_value(k, v)))
                .collect()
        };
        let sections: BTreeMap<&str, BTreeMap<String, String>> = self
            .sections
            .iter()
            .map(|(name, section)| (name.as_str(), redacted(section)))
            .collect();
        f.debug_struct("Config")
            .field("path", &self.path)
            .field("defaults", &redacted(&self.defaults))
            .field("sections", &sections)
            .finish()
    }
}

/// The typed settings of one service, from [`Config::service`].
///
/// Other modules read the keys not typed here (`db_*`, `header.*`, ...) with
/// [`ServiceConfig::raw`] or [`ServiceConfig::parse`], and report their own bad values with
/// [`ServiceConfig::error`]. `Debug` never shows a password.
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
    /// `amqp_uri` (required): the broker, `amqp://` or `amqps://`.
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
    /// `concurrency`: deliveries in flight per entry point (its prefetch); default 10.
    pub concurrency: u16,
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
    /// Every resolved key (section over DEFAULT), env-substituted.
    raw: BTreeMap<String, String>,
    /// The service's section name as written in the file (its name when there is none).
    section: String,
    /// Keys whose value came from `[DEFAULT]`, so errors name the right section.
    from_default: BTreeSet<String>,
}

impl ServiceConfig {
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
        self.typed(&key.to_ascii_lowercase(), expected, |v| v.parse().ok())
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

    /// The trimmed value of a key, `None` when unset or empty (empty means "built-in default").
    fn value(&self, key: &str) -> Option<&str> {
        self.raw
            .get(key)
            .map(|v| v.trim())
            .filter(|v| !v.is_empty())
    }

    /// Parses a key with `parse`, turning a failure into `expected ..., got "..."`.
    fn typed<T>(
        &self,
        key: &str,
        expected: &str,
        parse: impl FnOnce(&str) -> Option<T>,
    ) -> Result<Option<T>> {
        match self.value(key) {
            None => Ok(None),
            Some(value) => parse(value).map(Some).ok_or_else(|| {
                self.error(
                    key,
                    format!("expected {expected}, got {:?}", redact_value(key, value)),
                )
            }),
        }
    }

    fn bool_or(&self, key: &str, default: bool) -> Result<bool> {
        let expected = "true or false (or yes/no, on/off, 1/0)";
        Ok(self.typed(key, expected, parse_bool)?.unwrap_or(default))
    }

    fn duration_or(&self, key: &str, default: Duration) -> Result<Duration> {
        Ok(self.duration(key)?.unwrap_or(default))
    }

    /// A duration key of any module (at most [`MAX_DURATION`]): `None` when unset or empty.
    pub(crate) fn duration(&self, key: &str) -> Result<Option<Duration>> {
        let expected =
            "a duration of at most 7 days, such as 30s, 500ms or 2m, or a number of seconds";
        self.typed(key, expected, parse_duration)
    }

    /// An error for the first key of the service's own section that no part of farine reads,
    /// suggesting the closest known key.
    fn check_keys(&self, section: &Section) -> Result<()> {
        match section.values.keys().find(|key| !is_known_key(key)) {
            None => Ok(()),
            Some(key) => {
                let hint = match suggestion(key) {
                    Some(known) => format!("did you mean {known}?"),
                    None => "farine.ini.example lists every key".to_owned(),
                };
                Err(self.error(key, format!("unknown configuration key ({hint})")))
            }
        }
    }

    fn resolve_amqp_uri(&self) -> Result<AmqpUri> {
        let expected = "a URI starting with amqp:// or amqps://";
        match self.typed("amqp_uri", expected, |v| {
            has_scheme(v, &["amqp://", "amqps://"]).then(|| AmqpUri::new(v))
        })? {
            Some(uri) => Ok(uri),
            None => Err(self.error(
                "amqp_uri",
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
            .field("shutdown_grace", &self.shutdown_grace)
            .field("heartbeat", &self.heartbeat)
            .field("rpc_timeout", &self.rpc_timeout)
            .field("retry_attempts", &self.retry_attempts)
            .field("retry_delay", &self.retry_delay)
            .field("retry_max_delay", &self.retry_max_delay)
            .field("max_message_bytes", &self.max_message_bytes)
            .field("endpoint", &endpoint)
            .field("raw", &raw)
            .finish()
    }
}

/// An AMQP URI whose `Display` and `Debug` never show the password; [`AmqpUri::expose`] gives
/// the real one for connecting.
///
/// ```
/// use farine::config::AmqpUri;
///
/// let uri = AmqpUri::new("amqp://guest:guest@host:5672/%2f");
/// assert_eq!(uri.to_string(), "amqp://guest:***@host:5672/%2f");
/// assert_eq!(format!("{uri:?}"), "AmqpUri(\"amqp://guest:***@host:5672/%2f\")");
/// assert_eq!(uri.expose(), "amqp://guest:guest@host:5672/%2f");
/// ```
#[derive(Clone)]
pub struct AmqpUri(String);

impl AmqpUri {
    /// Wraps a URI; it is not validated here ([`Config::service`] checks the scheme).
    ///
    /// ```
    /// let uri = farine::config::AmqpUri::new("amqps://broker.example");
    /// assert_eq!(uri.expose(), "amqps://broker.example");
    /// ```
    pub fn new(uri: impl Into<String>) -> Self {
        AmqpUri(uri.into())
    }

    /// The URI with its password, for connecting. Never log this.
    ///
    /// ```
    /// let uri = farine::config::AmqpUri::new("amqp://u:p@h");
    /// assert_eq!(uri.expose(), "amqp://u:p@h");
    /// ```
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for AmqpUri {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&redact_uri(&self.0))
    }
}

impl fmt::Debug for AmqpUri {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("AmqpUri")
            .field(&redact_uri(&self.0))
            .finish()
    }
}

/// Replaces the password of every `scheme://user:password@...` in `text` with `***`, and the
/// value of every `password=...` (as in a query string or a libpq connection string).
///
/// When in doubt it hides more rather than less: everything from the first `:` after
/// `scheme://` up to the last `@` of that word is treated as the password.
///
/// ```
/// use farine::config::redact_uri;
///
/// assert_eq!(redact_uri("amqp://guest:guest@host:5672/%2f"), "amqp://guest:***@host:5672/%2f");
/// assert_eq!(redact_uri("postgres://shop:s3cr@t@db/shop"), "postgres://shop:***@db/shop");
/// assert_eq!(redact_uri("amqp://guest@host"), "amqp://guest@host");
/// assert_eq!(redact_uri("host=db password=x user=y"), "host=db password=*** user=y");
/// assert_eq!(redact_uri("not a uri"), "not a uri");
/// ```
pub fn redact_uri(uri: &str) -> String {
    let mut out = String::with_capacity(uri.len());
    let mut rest = uri;
    while let Some(i) = rest.find("://") {
        let (head, tail) = rest.split_at(i + 3);
        out.push_str(head);
        let word_end = tail.find(char::is_whitespace).unwrap_or(tail.len());
        let word = &tail[..word_end];
        match word
            .rfind('@')
            .and_then(|at| Some((at, word[..at].find(':')?)))
        {
            Some((at, colon)) => {
                out.push_str(&word[..=colon]);
                out.push_str("***");
                out.push_str(&word[at..]);
            }
            None => out.push_str(word),
        }
        rest = &tail[word_end..];
    }
    out.push_str(rest);
    redact_password_params(&out)
}

/// Hides the value of each `password=` (case-insensitive) up to whitespace, `&` or `;`.
fn redact_password_params(text: &str) -> String {
    const NEEDLE: &str = "password=";
    let lower = text.to_ascii_lowercase();
    let mut out = String::with_capacity(text.len());
    let mut pos = 0;
    while let Some(i) = lower[pos..].find(NEEDLE) {
        let start = pos + i + NEEDLE.len();
        let end = text[start..]
            .find(|c: char| c.is_whitespace() || c == '&' || c == ';')
            .map_or(text.len(), |n| start + n);
        out.push_str(&text[pos..start]);
        if end > start {
            out.push_str("***");
        }
        pos = end;
    }
    out.push_str(&text[pos..]);
    out
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

fn read_error_message(path: &Path, err: &std::io::Error) -> String {
    match err.kind() {
        std::io::ErrorKind::NotFound => format!(
            "configuration file {} not found: set {ENV_VAR} to the path of your farine.ini, or \
             create {} (farine.ini.example lists every key)",
            path.display(),
            path.display()
        ),
        _ => format!("cannot read configuration file {}: {err}", path.display()),
    }
}

/// The INI parser's error, with its "line:column" prefix spelt out.
fn ini_error(err: &config::ConfigError) -> String {
    let text = err.to_string();
    let position = text.split_once(' ').and_then(|(position, rest)| {
        let (line, column) = position.split_once(':')?;
        Some((line.parse::<u32>().ok()?, column.parse::<u32>().ok()?, rest))
    });
    match position {
        Some((line, column, rest)) => format!("line {line}, column {column}: {rest}"),
        None => text,
    }
}

fn is_known_key(key: &str) -> bool {
    KNOWN_KEYS.contains(&key) || KNOWN_PREFIXES.iter().any(|p| key.starts_with(p))
}

/// The known key closest to a misspelt one, if one is close enough to be what was meant.
fn suggestion(key: &str) -> Option<&'static str> {
    KNOWN_KEYS
        .iter()
        .map(|known| (edit_distance(key, known), *known))
        .filter(|&(distance, known)| distance <= 3 && distance < known.len().min(key.len()))
        .min()
        .map(|(_, known)| known)
}

/// Levenshtein distance, by characters.
fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut diagonal = row[0];
        row[0] = i + 1;
        for (j, &cb) in b.iter().enumerate() {
            let next = (diagonal + usize::from(ca != cb))
                .min(row[j] + 1)
                .min(row[j + 1] + 1);
            diagonal = row[j + 1];
            row[j + 1] = next;
        }
    }
    row[b.len()]
}

/// A value as it may be shown in an error or `Debug`: hidden entirely if its key looks secret,
/// else with URI passwords hidden.
fn redact_value(key: &str, value: &str) -> String {
    if SECRET_KEY_PARTS.iter().any(|part| key.contains(part)) {
        "***".to_owned()
    } else {
        redact_uri(value)
    }
}

/// Replaces `${VAR}` and `${VAR:default}` from the environment; the error is the message.
fn substitute_env(value: &str) -> std::result::Result<String, String> {
    let mut out = String::with_capacity(value.len());
    let mut rest = value;
    while let Some(start) = rest.find("${") {
        out.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        let Some(end) = after.find('}') else {
            return Err(format!(
                "expected \"}}\" to close \"${{\", got {:?}",
                redact_uri(&rest[start..])
            ));
        };
        let inner = &after[..end];
        let (var, default) = match inner.split_once(':') {
            // `:-` is the shell's spelling; accept it so `${VAR:-x}` does not yield "-x".
            Some((var, default)) => (var, Some(default.strip_prefix('-').unwrap_or(default))),
            None => (inner, None),
        };
        if !is_env_name(var) {
            return Err(format!(
                "expected an environment variable name (letters, digits, _) in ${{...}}, got {:?}",
                var
            ));
        }
        match std::env::var(var) {
            Ok(found) if !found.is_empty() || default.is_none() => out.push_str(&found),
            Ok(_) | Err(std::env::VarError::NotPresent) => match default {
                Some(default) => out.push_str(default),
                None => {
                    return Err(format!(
                        "expected environment variable {var} to be set (or a default: \
                         ${{{var}:default}}), but it is not set"
                    ))
                }
            },
            Err(std::env::VarError::NotUnicode(_)) => {
                return Err(format!(
                    "expected environment variable {var} to be UTF-8 text, but it is not"
                ))
            }
        }
        rest = &after[end + 1..];
    }
    out.push_str(rest);
    Ok(out)
}

fn is_env_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

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

/// A humantime duration ("30s", "500ms", "1h 30m") or a plain, possibly fractional, number
/// of seconds; at most [`MAX_DURATION`].
pub(crate) fn parse_duration(value: &str) -> Option<Duration> {
    let duration = match value.parse::<f64>() {
        // try_from_secs_f64 rejects negative, NaN and overflowing values.
        Ok(secs) => Duration::try_from_secs_f64(secs).ok()?,
        Err(_) => humantime::parse_duration(value).ok()?,
    };
    (duration <= MAX_DURATION).then_some(duration)
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
fn parse_bytes(value: &str) -> Option<usize> {
    let lower = value.to_ascii_lowercase();
    let (number, unit) = [("kib", 1u64 << 10), ("mib", 1 << 20), ("gib", 1 << 30)]
        .into_iter()
        .find_map(|(suffix, unit)| Some((lower.strip_suffix(suffix)?, unit)))
        .unwrap_or((lower.as_str(), 1));
    let bytes = number.trim().parse::<u64>().ok()?.checked_mul(unit)?;
    usize::try_from(bytes).ok().filter(|&n| n > 0)
}
