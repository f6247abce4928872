//! [`SseSettings`]: the keys of a service's `#[stream::http]` listeners, besides `endpoint`
//! (a [`ServiceConfig`] field, since the attribute may give it instead).

use std::time::Duration;

use super::keys::keys;
use super::ServiceConfig;
use crate::Result;

keys! {
    KEYS:
    IDLE_TIMEOUT = "idle_timeout",
}

/// The family of request-header keys: `header.<Name> = value`.
pub(crate) const HEADER_PREFIX: &str = "header.";

/// The `idle_timeout` used when the key is unset.
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(60);

/// The listener keys of a service, checked: `header.<Name>` and `idle_timeout`.
///
/// ```
/// use farine::config::{Config, SseSettings};
/// use std::time::Duration;
///
/// let config = Config::from_str(
///     "[DEFAULT]\namqp_uri = amqp://localhost\n\
///      [ticker]\nheader.Authorization = Bearer s3cret\nheader.X-Empty =\nidle_timeout = 0\n\
///      [bad]\nidle_timeout = later\n",
///     "farine.ini",
/// )?;
/// let sse = SseSettings::from_settings(&config.service("ticker")?)?;
/// assert_eq!(sse.headers, [("authorization".to_string(), "Bearer s3cret".to_string())]);
/// assert_eq!(sse.idle_timeout, Duration::ZERO);
///
/// let err = SseSettings::from_settings(&config.service("bad")?).unwrap_err();
/// assert!(err.to_string().starts_with("farine.ini [bad] idle_timeout: expected a duration"));
/// # Ok::<(), farine::Error>(())
/// ```
#[derive(Clone)]
pub struct SseSettings {
    /// `header.<Name> = value`: a request header per key, name lowercased; a key with an empty
    /// value (such as an unset `${TOKEN:}`) sends no header.
    pub headers: Vec<(String, String)>,
    /// `idle_timeout`: a connection with no byte for this long is dropped and reconnected;
    /// default 60s, `0` disables it.
    pub idle_timeout: Duration,
}

impl std::fmt::Debug for SseSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SseSettings")
            .field("headers", &super::redacted_headers(&self.headers))
            .field("idle_timeout", &self.idle_timeout)
            .finish()
    }
}

impl SseSettings {
    /// Reads and checks the listener keys of `settings`.
    pub fn from_settings(settings: &ServiceConfig) -> Result<SseSettings> {
        let mut headers = Vec::new();
        for (key, value) in settings.raw_prefixed(HEADER_PREFIX) {
            let name = &key[HEADER_PREFIX.len()..];
            let value = value.trim();
            if value.is_empty() {
                continue;
            }
            if reqwest::header::HeaderName::from_bytes(name.as_bytes()).is_err() {
                return Err(settings.error(
                    key,
                    format!("expected an HTTP header name after \"header.\", got {name:?}"),
                ));
            }
            if reqwest::header::HeaderValue::from_str(value).is_err() {
                return Err(settings.error(
                    key,
                    "expected a header value of printable text without line breaks (the value \
                     is not shown)",
                ));
            }
            headers.push((name.to_owned(), value.to_owned()));
        }
        let expected = "a duration of at most 7 days such as 60s, 500ms or 2m, or a number of \
                        seconds (0 disables it)";
        let idle_timeout = settings
            .typed(IDLE_TIMEOUT, expected, super::parse_duration)?
            .unwrap_or(DEFAULT_IDLE_TIMEOUT);
        Ok(SseSettings {
            headers,
            idle_timeout,
        })
    }
}
