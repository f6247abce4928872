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
//!
//! # Layout
//!
//! - this module: loading the file, sections, layering, the known-key check;
//! - `env`: `${VAR}` substitution; `secret`: redaction and [`AmqpUri`];
//! - `duration`: the one duration grammar (shared with the macros' arguments);
//! - `keys`: the tables of keys each settings module declares, from which the known keys
//!   are derived;
//! - typed settings, each reading its own keys and nothing else: `service` ([`ServiceConfig`],
//!   including the broker's `amqp_ca_file`), `db` ([`DbSettings`]), `sse` ([`SseSettings`]).
//!   No other module of farine reads a key.

use std::collections::{BTreeMap, HashSet};
use std::fmt;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

use config::{FileFormat, Source};

use crate::{Error, Result};

pub(crate) mod db;
mod duration;
mod env;
pub(crate) mod gateway;
pub(crate) mod keys;
mod log;
mod process;
mod secret;
mod service;
pub(crate) mod sse;

pub use db::{DbSettings, MAX_CONNECTIONS};
pub use gateway::{Auth, GatewaySettings, Subscription as GatewaySubscription, DEFAULT_LISTEN};
pub use log::{LogFormat, LogSettings};
pub(crate) use secret::redacted_headers;
pub use secret::{redact_uri, AmqpUri};
pub use service::{
    ExchangeKind, ParseExchangeKindError, ServiceConfig, MAX_MESSAGE_BYTES_LIMIT,
    MAX_RETRY_ATTEMPTS,
};
pub use sse::{SseSettings, DEFAULT_IDLE_TIMEOUT};

use env::substitute_env;
use keys::{is_known_key, suggestion};
use secret::redact_value;

/// The environment variable naming the configuration file.
pub const ENV_VAR: &str = "FARINE_INI";

/// The configuration file used when [`ENV_VAR`] is unset or empty.
pub const DEFAULT_PATH: &str = "/etc/farine.ini";

/// `[DEFAULT]` as stored (names are lowercased on load).
const DEFAULT_SECTION: &str = "default";

/// The largest configuration file read: a farine.ini is a few KiB, and reading stops here so
/// that a wrong `FARINE_INI` (a log, `/dev/zero`) cannot exhaust memory.
pub const MAX_FILE_BYTES: u64 = 1024 * 1024;

pub use duration::MAX_DURATION;

/// What a duration looks like, for error messages about one: `expected {DURATION_EXPECTED},
/// got "..."`.
///
/// ```
/// assert!(farine::config::DURATION_EXPECTED.contains("at most 7 days"));
/// ```
pub const DURATION_EXPECTED: &str = duration::EXPECTED;

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
        let mut svc = ServiceConfig::unresolved(
            name,
            self.path.clone(),
            section.map_or_else(|| name.to_owned(), |s| s.name.clone()),
        );
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
            check_keys(&svc, section)?;
        }
        svc.resolve()?;
        Ok(svc)
    }

    /// Warns once per process about each key of `[DEFAULT]` no part of farine reads (likely a
    /// typo; a service's section is checked, with an error, by [`Config::service`]).
    /// Before any logger is set (a service binary reads its file first, for the logging
    /// keys) nothing is warned, or recorded as warned: the binary calls this again after.
    pub(crate) fn warn_unknown_keys(&self) {
        if !tracing::dispatcher::has_been_set() {
            return;
        }
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

/// An error for the first key of the service's own section that no part of farine reads,
/// suggesting the closest known key.
fn check_keys(svc: &ServiceConfig, section: &Section) -> Result<()> {
    match section.values.keys().find(|key| !is_known_key(key)) {
        None => Ok(()),
        Some(key) => {
            let hint = match suggestion(key) {
                Some(known) => format!("did you mean {known}?"),
                None => "farine.ini.example lists every key".to_owned(),
            };
            Err(svc.error(key, format!("unknown configuration key ({hint})")))
        }
    }
}

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

/// Parses a duration as every duration key and macro argument does: a humantime-style
/// duration (`"30s"`, `"500ms"`, `"1h 30m"`, `"1.5h"`) or a plain, possibly fractional,
/// number of seconds (`"0.5"`); at most [`MAX_DURATION`]. `None` for anything else.
///
/// ```
/// use farine::config::parse_duration;
/// use std::time::Duration;
///
/// assert_eq!(parse_duration("1h 30m"), Some(Duration::from_secs(5400)));
/// assert_eq!(parse_duration("500ms"), Some(Duration::from_millis(500)));
/// assert_eq!(parse_duration("0.5"), Some(Duration::from_millis(500)));
/// assert_eq!(parse_duration("7d"), Some(farine::config::MAX_DURATION));
/// assert_eq!(parse_duration("8d"), None);
/// assert_eq!(parse_duration("soon"), None);
/// assert_eq!(parse_duration("-1"), None);
/// ```
pub fn parse_duration(text: &str) -> Option<Duration> {
    duration::parse_duration(text)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The grammar replaced humantime's parser: everything humantime accepts within the bound
    /// must still parse, to the same value.
    #[test]
    fn durations_are_a_superset_of_humantime() {
        let accepted = [
            "30s",
            "500ms",
            "2m",
            "1h 30m",
            "1h30m",
            "1.5h",
            "2 minutes",
            "5 seconds",
            "163µs",
            "1 000ms",
            "7d",
            "1w",
            "0.25s",
            "1hour 12min 5s",
            "2hrs",
            "10 millis",
            "999nsec",
            "1.0s",
            "  3s  ",
            "1d 23h 59m 59s",
            "0.000001s",
            "1wk",
        ];
        for text in accepted {
            let expected = humantime::parse_duration(text.trim()).expect(text);
            assert_eq!(parse_duration(text), Some(expected), "{text}");
        }
        let rejected = [
            "",
            "s",
            "5",
            "1.s",
            "1..s",
            "10 parsecs",
            "5S",
            "-1s",
            "1h,30m",
            "1 h x",
            "8d",
            "2M",
            "1y",
            "100000000000000000000y",
            "1.5.5s",
            "soon",
        ];
        for text in rejected {
            let humantime = humantime::parse_duration(text)
                .ok()
                .filter(|d| *d <= MAX_DURATION);
            // "5" is a plain number of seconds for farine.
            if text != "5" {
                assert_eq!(humantime, None, "{text}");
                assert_eq!(parse_duration(text), None, "{text}");
            }
        }
        assert_eq!(parse_duration("5"), Some(Duration::from_secs(5)));
        assert_eq!(parse_duration("0.5"), Some(Duration::from_millis(500)));
        assert_eq!(parse_duration("1e3"), Some(Duration::from_secs(1000)));
        for bad in ["inf", "NaN", "-1", "604801", "1e30"] {
            assert_eq!(parse_duration(bad), None, "{bad}");
        }
    }
}
