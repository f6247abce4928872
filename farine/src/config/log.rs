//! [`LogSettings`]: how a service binary logs, from `[DEFAULT]`'s `log_format` and
//! `log_level` (one process, one logger: a service's section cannot change them).

use super::keys::{keys, Key};
use super::{env::substitute_env, Config};
use crate::{Error, Result};

keys! {
    KEYS:
    /// `text` (human-readable, the default) or `json` (one object per line).
    LOG_FORMAT = "log_format",
    /// An `EnvFilter` of levels: `info`, `farine=debug,warn` ...; `RUST_LOG` wins over it.
    LOG_LEVEL = "log_level",
}

/// How log lines are written.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum LogFormat {
    /// Human-readable lines (colored on a terminal).
    #[default]
    Text,
    /// One JSON object per line, with the fields of the event and of its spans.
    Json,
}

/// The logging keys of `[DEFAULT]`, checked.
///
/// ```
/// use farine::config::{Config, LogFormat, LogSettings};
///
/// let config = Config::from_str("[DEFAULT]\nlog_format = json\nlog_level = farine=debug,info\n", "f.ini")?;
/// let log = LogSettings::from_config(&config)?;
/// assert_eq!(log.format, LogFormat::Json);
/// assert_eq!(log.level.as_deref(), Some("farine=debug,info"));
///
/// let bad = Config::from_str("[DEFAULT]\nlog_level = loud\n", "f.ini")?;
/// let err = LogSettings::from_config(&bad).unwrap_err().to_string();
/// assert!(err.starts_with("f.ini [DEFAULT] log_level: "), "{err}");
/// # Ok::<(), farine::Error>(())
/// ```
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct LogSettings {
    pub format: LogFormat,
    /// The filter `log_level` sets (`None`: `info`); `RUST_LOG`, when set, is used instead.
    pub level: Option<String>,
}

const LEVELS: &[&str] = &["trace", "debug", "info", "warn", "error", "off"];

impl LogSettings {
    /// Reads `log_format` and `log_level` from `[DEFAULT]`.
    pub fn from_config(config: &Config) -> Result<LogSettings> {
        let section = &config.defaults;
        let error = |key: Key, message: String| Error::Config {
            file: config.path.clone(),
            section: section.name.clone(),
            key: key.name().to_owned(),
            message,
        };
        let value = |key: Key| -> Result<Option<String>> {
            match section.values.get(key.name()) {
                None => Ok(None),
                Some(raw) => {
                    let value = substitute_env(raw).map_err(|message| error(key, message))?;
                    let value = value.trim();
                    Ok((!value.is_empty()).then(|| value.to_owned()))
                }
            }
        };
        let format = match value(LOG_FORMAT)?.as_deref() {
            None => LogFormat::Text,
            Some(text) if text.eq_ignore_ascii_case("text") => LogFormat::Text,
            Some(json) if json.eq_ignore_ascii_case("json") => LogFormat::Json,
            Some(other) => {
                return Err(error(
                    LOG_FORMAT,
                    format!("expected text or json, got {other:?}"),
                ))
            }
        };
        let level = match value(LOG_LEVEL)? {
            Some(level) => Some(check_filter(&level).map_err(|message| error(LOG_LEVEL, message))?),
            None => None,
        };
        Ok(LogSettings { format, level })
    }
}

/// Checks a filter: comma-separated directives, each a level or `target=level` (a bare word
/// that is not a level would silently mean "everything from that target"); returns it without
/// the spaces around directives.
pub(crate) fn check_filter(filter: &str) -> std::result::Result<String, String> {
    let expected = || {
        format!(
            "expected a level ({}) or target=level directives separated by commas, got {filter:?}",
            LEVELS.join(", ")
        )
    };
    for directive in filter.split(',').map(str::trim) {
        let level = match directive.rsplit_once('=') {
            Some((target, level)) if !target.trim().is_empty() => level,
            Some(_) => return Err(expected()),
            None => directive,
        };
        if !LEVELS.iter().any(|l| l.eq_ignore_ascii_case(level.trim())) {
            return Err(expected());
        }
    }
    let filter: Vec<&str> = filter.split(',').map(str::trim).collect();
    let filter = filter.join(",");
    tracing_subscriber::EnvFilter::try_new(&filter)
        .map(|_| filter.clone())
        .map_err(|err| format!("{}: {err}", expected()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filters_are_levels_or_target_levels() {
        for good in [
            "info",
            "WARN",
            "farine=debug",
            "farine=debug, lapin=warn,info",
        ] {
            assert!(check_filter(good).is_ok(), "{good}");
        }
        assert_eq!(
            check_filter(" farine=debug , info").as_deref(),
            Ok("farine=debug,info")
        );
        for bad in ["", "loud", "farine", "farine=loud", "=info", "info,,debug"] {
            assert!(check_filter(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn a_bad_format_names_the_key() {
        let config = Config::from_str("[DEFAULT]\nlog_format = xml\n", "f.ini").unwrap();
        assert_eq!(
            LogSettings::from_config(&config).unwrap_err().to_string(),
            "f.ini [DEFAULT] log_format: expected text or json, got \"xml\""
        );
        let unset = Config::from_str("[DEFAULT]\n", "f.ini").unwrap();
        assert_eq!(
            LogSettings::from_config(&unset).unwrap(),
            LogSettings::default()
        );
    }
}
