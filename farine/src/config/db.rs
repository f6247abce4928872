//! [`DbSettings`]: the `db_*` keys of a service, for its PostgreSQL pool (`farine::db`).

use std::time::Duration;

use sqlx::postgres::PgConnectOptions;

use super::keys::{keys, Key};
use super::{redact_uri, ServiceConfig};
use crate::Result;

keys! {
    KEYS:
    DB_CONNECTOR = "db_connector",
    DB_URL = "db_url",
    DB_NAME = "db_name",
    DB_USER = "db_user",
    DB_PASSWORD = "db_password",
    DB_HOST = "db_host",
    DB_PORT = "db_port",
    DB_MAX_CONN = "db_max_conn",
    DB_STALE_TIMEOUT = "db_stale_timeout",
    DB_TIMEOUT = "db_timeout",
    DB_STREAM_SHARE = "db_stream_share",
}

/// The most `db_max_conn`: the pool sizes its bookkeeping by it, and PostgreSQL itself serves
/// a few hundred connections at most by default.
pub const MAX_CONNECTIONS: u32 = 10_000;

/// The `db_*` keys of a section, checked.
#[derive(Clone)]
pub struct DbSettings {
    pub(crate) options: PgConnectOptions,
    /// Where the database is, for messages (never the password).
    pub(crate) shown: String,
    /// `db_max_conn`: the pool's size.
    pub max_connections: u32,
    /// `db_stream_share`: connections streaming methods may hold at once.
    pub stream_connections: u32,
    /// `db_stale_timeout`: idle connections are closed after this.
    pub idle_timeout: Option<Duration>,
    /// `db_timeout`: the longest wait for a free connection.
    pub acquire_timeout: Duration,
}

impl std::fmt::Debug for DbSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DbSettings")
            .field("database", &self.shown)
            .field("max_connections", &self.max_connections)
            .field("stream_connections", &self.stream_connections)
            .field("idle_timeout", &self.idle_timeout)
            .field("acquire_timeout", &self.acquire_timeout)
            .finish()
    }
}

impl DbSettings {
    /// The database settings of a section: `None` without `db_connector`. `db_url`, or
    /// `db_name`, `db_user`, `db_password`, `db_host` (required) and `db_port` (5432);
    /// `db_max_conn` (10, at most 10000), `db_stale_timeout` (idle connections closed after,
    /// 10 min), `db_timeout` (longest wait for a free connection, 5 s), `db_stream_share`
    /// (connections streams may hold at once: a count, or a fraction of the pool such as 0.5;
    /// default half the pool, at least 1).
    ///
    /// An empty `db_password` means no password (trust or peer authentication; as with libpq,
    /// `PGPASSWORD` or `~/.pgpass` still apply).
    ///
    /// ```
    /// let config = farine::Config::from_str(
    ///     "[DEFAULT]\namqp_uri = amqp://localhost\n\
    ///      [todo]\ndb_connector = postgres\ndb_url = postgres://me:secret@127.0.0.1/test\n\
    ///      [trusted]\ndb_connector = postgres\ndb_host = 127.0.0.1\ndb_name = test\n\
    ///      db_user = postgres\ndb_password =\ndb_max_conn = 4\n",
    ///     "farine.ini",
    /// )?;
    /// let db = farine::db::DbSettings::from_settings(&config.service("todo")?)?.unwrap();
    /// assert_eq!((db.max_connections, db.stream_connections), (10, 5));
    /// assert!(!format!("{db:?}").contains("secret"));
    ///
    /// let db = farine::db::DbSettings::from_settings(&config.service("trusted")?)?.unwrap();
    /// assert_eq!((db.max_connections, db.stream_connections), (4, 2));
    /// # Ok::<(), farine::Error>(())
    /// ```
    pub fn from_settings(settings: &ServiceConfig) -> Result<Option<DbSettings>> {
        let Some(connector) = settings.raw_value(DB_CONNECTOR).filter(|c| !c.is_empty()) else {
            return Ok(None);
        };
        if !connector.eq_ignore_ascii_case("postgres")
            && !connector.eq_ignore_ascii_case("postgresql")
        {
            return Err(settings.error(
                DB_CONNECTOR.name(),
                format!("expected postgres, got {connector:?}"),
            ));
        }
        let options = match settings.raw_value(DB_URL).filter(|u| !u.is_empty()) {
            Some(url) => url.parse::<PgConnectOptions>().map_err(|err| {
                settings.error(
                    DB_URL.name(),
                    format!(
                        "expected postgres://user:password@host:port/database, got {}: {err}",
                        redact_uri(url)
                    ),
                )
            })?,
            None => {
                let required = |key: Key| {
                    settings
                        .raw_value(key)
                        .filter(|v| !v.is_empty())
                        .ok_or_else(|| {
                            settings.error(
                                key.name(),
                                "missing: required with db_connector = postgres (or set db_url)",
                            )
                        })
                };
                let port = settings
                    .typed(DB_PORT, "a port number from 1 to 65535", |v| v.parse().ok())?
                    .unwrap_or(5432);
                let options = PgConnectOptions::new()
                    .host(required(DB_HOST)?)
                    .port(port)
                    .username(required(DB_USER)?)
                    .database(required(DB_NAME)?);
                // Written but empty means "no password" (trust or peer authentication); only
                // a missing key is an error, so a forgotten password is still noticed.
                match settings.raw_value(DB_PASSWORD) {
                    Some(password) if !password.is_empty() => options.password(password),
                    Some(_) => options,
                    None => {
                        return Err(settings.error(
                            DB_PASSWORD.name(),
                            "missing: required with db_connector = postgres (or set db_url); \
                             write \"db_password =\" for none",
                        ))
                    }
                }
            }
        };
        let expected = format!("a whole number of connections from 1 to {MAX_CONNECTIONS}");
        let max_connections = settings
            .typed(DB_MAX_CONN, &expected, |v| v.parse::<u32>().ok())?
            .unwrap_or(10);
        if !(1..=MAX_CONNECTIONS).contains(&max_connections) {
            return Err(settings.error(
                DB_MAX_CONN.name(),
                format!("expected {expected}, got {max_connections}"),
            ));
        }
        let stream_connections = stream_share(settings, max_connections)?;
        let idle_timeout = settings
            .duration(DB_STALE_TIMEOUT)?
            .or(Some(Duration::from_secs(600)));
        let acquire_timeout = settings
            .duration(DB_TIMEOUT)?
            .unwrap_or(Duration::from_secs(5));
        let shown = format!(
            "postgres://{}@{}:{}/{}",
            options.get_username(),
            options.get_host(),
            options.get_port(),
            options.get_database().unwrap_or("")
        );
        Ok(Some(DbSettings {
            options,
            shown,
            max_connections,
            stream_connections,
            idle_timeout,
            acquire_timeout,
        }))
    }
}

/// `db_stream_share`: a count of connections (`3`) or a fraction of the pool (`0.5`, `50%`),
/// from 1 connection to the whole pool; half the pool when unset.
fn stream_share(settings: &ServiceConfig, max_connections: u32) -> Result<u32> {
    let Some(text) = settings.value(DB_STREAM_SHARE) else {
        return Ok((max_connections / 2).max(1));
    };
    let bad = || {
        settings.error(
            DB_STREAM_SHARE.name(),
            format!(
                "expected a number of connections from 1 to db_max_conn = {max_connections}, \
                 or a fraction of the pool such as 0.5 or 50%, got {text:?}"
            ),
        )
    };
    let fraction = match text.strip_suffix('%') {
        Some(percent) => Some(percent.trim().parse::<f64>().map_err(|_| bad())? / 100.0),
        None if text.contains('.') => Some(text.parse::<f64>().map_err(|_| bad())?),
        None => None,
    };
    let count = match fraction {
        Some(f) if f > 0.0 && f <= 1.0 => (f * f64::from(max_connections)).floor().max(1.0) as u32,
        Some(_) => return Err(bad()),
        None => text.parse::<u32>().map_err(|_| bad())?,
    };
    if (1..=max_connections).contains(&count) {
        Ok(count)
    } else {
        Err(bad())
    }
}
