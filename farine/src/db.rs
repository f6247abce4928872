//! PostgreSQL per service: one sqlx pool built at start-up from the section's `db_*` keys, and
//! per call a connection ([`Db`]) or a transaction ([`Tx`]) that the entry point commits when
//! the method returned `Ok` and rolls back otherwise, before anything is acked or replied.
//!
//! A streaming method holds its connection for as long as its stream runs, so streams may
//! hold at most `db_stream_share` connections at once (half the pool by default): the rest
//! stay free for short calls.

use crate::backoff::Backoff;
use crate::{Error, Result};
use sqlx::pool::PoolConnection;
use sqlx::postgres::PgPoolOptions;
use sqlx::{PgConnection, PgPool, Postgres, Transaction};
use std::ops::{Deref, DerefMut};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

pub use crate::config::{DbSettings, MAX_CONNECTIONS};

/// A service's pool.
pub struct Database {
    pool: PgPool,
    /// Permits for the connections streams may hold (`db_stream_share`).
    streams: Arc<Semaphore>,
    service: String,
    settings: DbSettings,
}

impl Database {
    /// Builds the pool and checks the database answers, retrying with backoff (a database
    /// still starting does not fail the start); after the last attempt, a clear error.
    pub async fn connect(service: &str, settings: DbSettings) -> Result<Database> {
        let pool = PgPoolOptions::new()
            .max_connections(settings.max_connections)
            .idle_timeout(settings.idle_timeout)
            .acquire_timeout(settings.acquire_timeout)
            .connect_lazy_with(settings.options.clone());
        let mut backoff = Backoff::new(Duration::from_millis(500), Duration::from_secs(8));
        for attempt in 1..=6 {
            match pool.acquire().await {
                Ok(_) => {
                    tracing::info!(service, database = %settings.shown, max_connections = settings.max_connections, "database pool ready");
                    return Ok(Database {
                        pool,
                        streams: Arc::new(Semaphore::new(settings.stream_connections as usize)),
                        service: service.to_string(),
                        settings,
                    });
                }
                // The server answered with a refusal (unknown role, bad password, no such
                // database): waiting will not fix it.
                Err(err) if attempt < 6 && !matches!(err, sqlx::Error::Database(_)) => {
                    let delay = backoff.next();
                    tracing::warn!(service, database = %settings.shown, attempt, retry_in = ?delay, "cannot reach the database: {err}");
                    tokio::time::sleep(delay).await;
                }
                Err(err) => {
                    return Err(Error::Database {
                        service: service.to_string(),
                        message: format!(
                            "cannot reach the database {} after {attempt} attempts: {err} (is PostgreSQL running?)",
                            settings.shown
                        ),
                    })
                }
            }
        }
        unreachable!("the last attempt returns")
    }

    /// The pool itself, for work outside an entry point.
    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    /// A connection for one call; waits up to `db_timeout` for a free one.
    pub async fn acquire(&self) -> Result<Db> {
        self.pool
            .acquire()
            .await
            .map(|conn| Db {
                conn,
                stream_permit: None,
            })
            .map_err(|err| self.error(err))
    }

    /// A connection for a streaming method, held until its stream ends: first one of the
    /// `db_stream_share` stream permits, then a connection, within `db_timeout` each.
    pub async fn acquire_for_stream(&self) -> Result<Db> {
        let permit = tokio::time::timeout(
            self.settings.acquire_timeout,
            self.streams.clone().acquire_owned(),
        )
        .await;
        let permit = match permit {
            Ok(Ok(permit)) => permit,
            // The semaphore is never closed; treat it as the timeout anyway.
            Ok(Err(_)) | Err(_) => {
                return Err(Error::Database {
                    service: self.service.clone(),
                    message: format!(
                        "{} streams already hold their share of the pool of {} (db_stream_share \
                         = {} of db_max_conn = {}) and none ended within db_timeout = {}: raise \
                         db_stream_share or db_max_conn, or retry later",
                        self.settings.stream_connections,
                        self.settings.shown,
                        self.settings.stream_connections,
                        self.settings.max_connections,
                        humantime::format_duration(self.settings.acquire_timeout),
                    ),
                })
            }
        };
        let mut db = self.acquire().await?;
        db.stream_permit = Some(permit);
        Ok(db)
    }

    /// A transaction for one call.
    pub async fn begin(&self) -> Result<Tx> {
        self.pool
            .begin()
            .await
            .map(Tx)
            .map_err(|err| self.error(err))
    }

    fn error(&self, err: sqlx::Error) -> Error {
        let message = match err {
            sqlx::Error::PoolTimedOut => format!(
                "no free connection in the pool of {} within db_timeout = {} (db_max_conn = {}): \
                 the pool is exhausted or the database is unreachable",
                self.settings.shown,
                humantime::format_duration(self.settings.acquire_timeout),
                self.settings.max_connections
            ),
            other => format!("database {}: {other}", self.settings.shown),
        };
        Error::Database {
            service: self.service.clone(),
            message,
        }
    }

    /// Applies the migrations in `dir` (sqlx's format: `<version>_<name>.sql`). Each service
    /// records what it applied in its own table, `_farine_migrations_<service>`, so services
    /// that share a database do not see each other's migrations as unknown.
    pub async fn migrate(&self, dir: &std::path::Path) -> Result<()> {
        let mut migrator =
            sqlx::migrate::Migrator::new(dir)
                .await
                .map_err(|err| Error::Database {
                    service: self.service.clone(),
                    message: format!("reading migrations in {}: {err}", dir.display()),
                })?;
        migrator.dangerous_set_table_name(migrations_table(&self.service));
        migrator
            .run(&self.pool)
            .await
            .map_err(|err| Error::Database {
                service: self.service.clone(),
                message: format!(
                    "applying migrations from {} to {}: {err}",
                    dir.display(),
                    self.settings.shown
                ),
            })
    }
}

/// The table where `service`'s applied migrations are recorded.
pub fn migrations_table(service: &str) -> String {
    let name: String = service
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_lowercase()
            } else {
                '_'
            }
        })
        .collect();
    format!("_farine_migrations_{name}")
}

/// A pooled connection held for one call (for a stream: until it ends or is dropped).
///
/// ```no_run
/// use farine::prelude::*;
///
/// #[derive(Default)]
/// pub struct Todo;
///
/// #[farine::service]
/// impl Todo {
///     #[rpc::method]
///     async fn count(&self, mut db: Db) -> farine::Result<i64> {
///         let (n,): (i64,) = sqlx::query_as("select count(*) from todos")
///             .fetch_one(db.conn())
///             .await?;
///         Ok(n)
///     }
/// }
/// ```
pub struct Db {
    // Declared before the permit so the connection is back in the pool when the permit frees
    // the next stream.
    conn: PoolConnection<Postgres>,
    /// A streaming method's share of the pool (`db_stream_share`), released with the stream.
    stream_permit: Option<OwnedSemaphorePermit>,
}

impl Db {
    /// The connection, for sqlx queries: `.fetch_one(db.conn())`.
    pub fn conn(&mut self) -> &mut PgConnection {
        &mut self.conn
    }
}

impl Deref for Db {
    type Target = PgConnection;
    fn deref(&self) -> &PgConnection {
        &self.conn
    }
}

impl DerefMut for Db {
    fn deref_mut(&mut self) -> &mut PgConnection {
        &mut self.conn
    }
}

/// A transaction for one call, taken as `tx: &mut Tx`: committed after the method returned
/// `Ok`, rolled back after an `Err` or a panic, and only then is the message acked or the
/// reply sent. A failed commit is a failed call.
///
/// ```no_run
/// use farine::prelude::*;
///
/// #[derive(Default)]
/// pub struct Todo;
///
/// #[farine::service]
/// impl Todo {
///     #[rpc::method]
///     async fn add(&self, tx: &mut Tx, title: String) -> farine::Result<i64> {
///         let (id,): (i64,) = sqlx::query_as("insert into todos (title) values ($1) returning id")
///             .bind(title)
///             .fetch_one(tx.conn())
///             .await?;
///         Ok(id)
///     }
/// }
/// ```
pub struct Tx(Transaction<'static, Postgres>);

impl Tx {
    /// The transaction's connection, for sqlx queries: `.execute(tx.conn())`.
    pub fn conn(&mut self) -> &mut PgConnection {
        &mut self.0
    }

    pub(crate) async fn commit(self) -> Result<()> {
        self.0.commit().await.map_err(Error::from)
    }

    pub(crate) async fn rollback(self) -> Result<()> {
        self.0.rollback().await.map_err(Error::from)
    }
}

impl Deref for Tx {
    type Target = PgConnection;
    fn deref(&self) -> &PgConnection {
        &self.0
    }
}

impl DerefMut for Tx {
    fn deref_mut(&mut self) -> &mut PgConnection {
        &mut self.0
    }
}
