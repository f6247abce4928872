//! [`GatewaySettings`]: the `[gateway]` section read by `farine gateway`.

use std::net::SocketAddr;
use std::path::PathBuf;

use super::keys::keys;
use super::ServiceConfig;
use crate::Result;

keys! {
    KEYS:
    /// Where the gateway listens: `IP:port`.
    LISTEN = "listen",
    /// The methods browsers may call: `calc.add, calc.count, todo.*`.
    EXPOSE = "expose",
    /// The broadcast exchanges browsers may follow, `exchange` or `exchange:binding key`.
    SUBSCRIBE = "subscribe",
    /// Bearer tokens accepted, separated by commas.
    AUTH_TOKENS = "auth_tokens",
    /// The HS256 secret of accepted JSON Web Tokens.
    AUTH_JWT_SECRET = "auth_jwt_secret",
    /// Origins (`scheme://host[:port]`) whose pages may use the gateway, besides its own.
    ALLOWED_ORIGINS = "allowed_origins",
    /// A folder served at `/` (static files).
    STATIC_DIR = "static_dir",
    /// Largest HTTP request body.
    MAX_BODY_BYTES = "max_body_bytes",
    /// Largest WebSocket message from a browser.
    MAX_WS_MESSAGE_BYTES = "max_ws_message_bytes",
    /// Calls in flight per WebSocket.
    MAX_CALLS_PER_CONNECTION = "max_calls_per_connection",
    /// Calls per second per WebSocket (and per client address over HTTP).
    MAX_CALLS_PER_SECOND = "max_calls_per_second",
    /// HTTP calls in flight in all.
    MAX_HTTP_CALLS = "max_http_calls",
    /// Subscriptions per WebSocket.
    MAX_SUBSCRIPTIONS_PER_CONNECTION = "max_subscriptions_per_connection",
    /// Messages waiting to be sent to one browser before it is disconnected.
    SEND_QUEUE = "send_queue",
    /// Events kept per exchange for `Last-Event-ID` resumption.
    REPLAY_EVENTS = "replay_events",
}

/// The default `listen`.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:8080";

/// One `subscribe` entry: an exchange browsers may follow, and the binding key of the
/// gateway's queue on it (`#` for every message; fanout exchanges ignore it).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Subscription {
    pub exchange: String,
    pub binding_key: String,
}

/// How browsers prove who they are.
#[derive(Clone, PartialEq, Eq)]
pub enum Auth {
    /// Anyone may call what is exposed (the default; say so in the log).
    None,
    /// `Authorization: Bearer <token>` with one of these tokens.
    Tokens(Vec<String>),
    /// `Authorization: Bearer <JWT>` signed with HS256 and this secret, with an `exp` claim.
    Jwt(String),
}

impl std::fmt::Debug for Auth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Auth::None => f.write_str("None"),
            Auth::Tokens(tokens) => write!(f, "Tokens({} tokens, not shown)", tokens.len()),
            Auth::Jwt(_) => f.write_str("Jwt(secret not shown)"),
        }
    }
}

/// The `[gateway]` section, checked.
///
/// ```
/// use farine::config::{Config, GatewaySettings};
///
/// let config = Config::from_str(
///     "[DEFAULT]\namqp_uri = amqp://localhost\n\
///      [gateway]\nlisten = 127.0.0.1:9000\nexpose = calc.add, todo.*\n\
///      subscribe = todo.events, orders:order.*\nauth_tokens = s3cret\n",
///     "farine.ini",
/// )?;
/// let gateway = GatewaySettings::from_settings(&config.service("gateway")?)?;
/// assert_eq!(gateway.listen.port(), 9000);
/// assert_eq!(gateway.expose, ["calc.add", "todo.*"]);
/// assert_eq!(gateway.subscribe[1].exchange, "orders");
/// assert_eq!(gateway.subscribe[1].binding_key, "order.*");
///
/// let bad = Config::from_str("[DEFAULT]\namqp_uri = amqp://h\n[gateway]\nexpose = calc\n", "f.ini")?;
/// let err = GatewaySettings::from_settings(&bad.service("gateway")?).unwrap_err();
/// assert!(err.to_string().starts_with("f.ini [gateway] expose: expected"));
/// # Ok::<(), farine::Error>(())
/// ```
#[derive(Clone, Debug)]
pub struct GatewaySettings {
    pub listen: SocketAddr,
    /// Patterns `service.method` or `service.*`; nothing is exposed when empty.
    pub expose: Vec<String>,
    pub subscribe: Vec<Subscription>,
    pub auth: Auth,
    /// Lowercased `scheme://host[:port]`; `*` allows every origin.
    pub allowed_origins: Vec<String>,
    pub static_dir: Option<PathBuf>,
    pub max_body_bytes: usize,
    pub max_ws_message_bytes: usize,
    pub max_calls_per_connection: usize,
    pub max_calls_per_second: u32,
    pub max_http_calls: usize,
    pub max_subscriptions_per_connection: usize,
    pub send_queue: usize,
    pub replay_events: usize,
}

fn list(value: &str) -> impl Iterator<Item = &str> {
    value.split(',').map(str::trim).filter(|s| !s.is_empty())
}

/// A service or method name as `expose` takes it: letters, digits, `_` and `-`.
pub(crate) fn is_name(part: &str) -> bool {
    !part.is_empty()
        && part
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

impl GatewaySettings {
    /// Reads and checks the gateway keys of `settings` (the `[gateway]` section over
    /// `[DEFAULT]`).
    pub fn from_settings(settings: &ServiceConfig) -> Result<GatewaySettings> {
        let listen = settings
            .typed(
                LISTEN,
                "an IP address and port such as 127.0.0.1:8080",
                |v| v.parse().ok(),
            )?
            .unwrap_or_else(|| {
                DEFAULT_LISTEN
                    .parse()
                    .unwrap_or(SocketAddr::from(([127, 0, 0, 1], 8080)))
            });
        let mut expose = Vec::new();
        for pattern in list(settings.value(EXPOSE).unwrap_or("")) {
            let valid = pattern.split_once('.').is_some_and(|(service, method)| {
                is_name(service) && (method == "*" || is_name(method))
            });
            if !valid {
                return Err(settings.error(
                    EXPOSE.name(),
                    format!(
                        "expected SERVICE.METHOD or SERVICE.* entries separated by commas \
                         (such as calc.add, todo.*), got {pattern:?}"
                    ),
                ));
            }
            expose.push(pattern.to_owned());
        }
        let mut subscribe = Vec::new();
        for entry in list(settings.value(SUBSCRIBE).unwrap_or("")) {
            let (exchange, binding_key) = entry.split_once(':').unwrap_or((entry, "#"));
            let (exchange, binding_key) = (exchange.trim(), binding_key.trim());
            let valid_exchange = !exchange.is_empty()
                && exchange.len() <= 255
                && exchange
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"_-.:".contains(&b));
            if !valid_exchange || binding_key.is_empty() || binding_key.len() > 255 {
                return Err(settings.error(
                    SUBSCRIBE.name(),
                    format!(
                        "expected EXCHANGE or EXCHANGE:BINDING-KEY entries separated by commas \
                         (such as todo.events, orders:order.*), got {entry:?}"
                    ),
                ));
            }
            subscribe.push(Subscription {
                exchange: exchange.to_owned(),
                binding_key: binding_key.to_owned(),
            });
        }
        let tokens: Vec<String> = list(settings.value(AUTH_TOKENS).unwrap_or(""))
            .map(str::to_owned)
            .collect();
        let secret = settings.value(AUTH_JWT_SECRET).map(str::to_owned);
        let auth = match (tokens.is_empty(), secret) {
            (true, None) => Auth::None,
            (false, None) => Auth::Tokens(tokens),
            (true, Some(secret)) if secret.len() >= 32 => Auth::Jwt(secret),
            (true, Some(_)) => {
                return Err(settings.error(
                    AUTH_JWT_SECRET.name(),
                    "expected a secret of at least 32 bytes (HS256 keys shorter than the hash \
                     are guessable; the value is not shown)",
                ))
            }
            (false, Some(_)) => {
                return Err(settings.error(
                    AUTH_JWT_SECRET.name(),
                    "set either auth_tokens or auth_jwt_secret, not both",
                ))
            }
        };
        let mut allowed_origins = Vec::new();
        for origin in list(settings.value(ALLOWED_ORIGINS).unwrap_or("")) {
            let valid = origin == "*"
                || ((origin.starts_with("http://") || origin.starts_with("https://"))
                    && !origin
                        .trim_end_matches('/')
                        .split_once("://")
                        .is_some_and(|(_, rest)| rest.contains('/') || rest.is_empty()));
            if !valid {
                return Err(settings.error(
                    ALLOWED_ORIGINS.name(),
                    format!(
                        "expected origins such as https://app.example.com or \
                         http://localhost:3000 (scheme, host and port, no path), or *, got {origin:?}"
                    ),
                ));
            }
            allowed_origins.push(origin.trim_end_matches('/').to_ascii_lowercase());
        }
        let static_dir = settings.value(STATIC_DIR).map(PathBuf::from);
        if let Some(dir) = &static_dir {
            if !dir.is_dir() {
                return Err(settings.error(
                    STATIC_DIR.name(),
                    format!(
                        "expected a folder of static files, but {} is not one",
                        dir.display()
                    ),
                ));
            }
        }
        let bytes = |key, default: usize| -> Result<usize> {
            Ok(settings
                .typed(
                    key,
                    "a number of bytes from 1 to 512MiB, optionally with a KiB or MiB suffix",
                    |v| super::service::parse_bytes(v).filter(|&n| (1..=512 << 20).contains(&n)),
                )?
                .unwrap_or(default))
        };
        let count = |key, default: usize, max: usize| -> Result<usize> {
            Ok(settings
                .typed(key, &format!("a whole number from 1 to {max}"), |v| {
                    v.parse().ok().filter(|n| (1..=max).contains(n))
                })?
                .unwrap_or(default))
        };
        Ok(GatewaySettings {
            listen,
            expose,
            subscribe,
            auth,
            allowed_origins,
            static_dir,
            max_body_bytes: bytes(MAX_BODY_BYTES, 1 << 20)?,
            max_ws_message_bytes: bytes(MAX_WS_MESSAGE_BYTES, 64 << 10)?,
            max_calls_per_connection: count(MAX_CALLS_PER_CONNECTION, 32, 65_535)?,
            max_calls_per_second: count(MAX_CALLS_PER_SECOND, 100, 1_000_000)? as u32,
            max_http_calls: count(MAX_HTTP_CALLS, 1024, 1 << 20)?,
            max_subscriptions_per_connection: count(MAX_SUBSCRIPTIONS_PER_CONNECTION, 16, 1024)?,
            send_queue: count(SEND_QUEUE, 1024, 1 << 20)?,
            replay_events: count(REPLAY_EVENTS, 1000, 1 << 20)?,
        })
    }

    /// Whether `service.method` is exposed.
    ///
    /// ```
    /// # use farine::config::{Config, GatewaySettings};
    /// let config = Config::from_str("[DEFAULT]\namqp_uri = amqp://h\n[gateway]\nexpose = calc.add, todo.*\n", "f.ini")?;
    /// let gateway = GatewaySettings::from_settings(&config.service("gateway")?)?;
    /// assert!(gateway.exposes("calc", "add"));
    /// assert!(gateway.exposes("todo", "list"));
    /// assert!(!gateway.exposes("calc", "count"));
    /// # Ok::<(), farine::Error>(())
    /// ```
    pub fn exposes(&self, service: &str, method: &str) -> bool {
        self.expose.iter().any(|pattern| {
            pattern
                .split_once('.')
                .is_some_and(|(s, m)| s.eq_ignore_ascii_case(service) && (m == "*" || m == method))
        })
    }

    /// The `subscribe` entry of `exchange`, if browsers may follow it.
    pub fn subscription(&self, exchange: &str) -> Option<&Subscription> {
        self.subscribe.iter().find(|s| s.exchange == exchange)
    }
}
