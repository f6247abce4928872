//! Secrets: passwords never reach a log line, an error or `Debug` output. [`AmqpUri`] hides
//! its password, [`redact_uri`] hides the password of any URI (or `password=` parameter), and
//! a value whose key looks secret is never shown at all.

use std::fmt;

/// Substrings of key names whose values are never shown.
const SECRET_KEY_PARTS: &[&str] = &[
    "password", "passwd", "secret", "token", "auth", "api_key", "apikey", "header",
];

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
    /// Wraps a URI; it is not validated here ([`Config::service`](super::Config::service) checks the scheme).
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

/// A value as it may be shown in an error or `Debug`: hidden entirely if its key looks secret,
/// else with URI passwords hidden.
pub(super) fn redact_value(key: &str, value: &str) -> String {
    if SECRET_KEY_PARTS.iter().any(|part| key.contains(part)) {
        "***".to_owned()
    } else {
        redact_uri(value)
    }
}

/// Request headers as `Debug` may show them: names only, every value hidden (header values
/// are credentials as often as not).
pub(crate) fn redacted_headers(headers: &[(String, String)]) -> Vec<(&str, &str)> {
    headers
        .iter()
        .map(|(name, _)| (name.as_str(), "***"))
        .collect()
}
