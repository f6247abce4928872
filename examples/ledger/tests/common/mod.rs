//! What the ledger tests share: the example's configuration, the service binary, and a fresh
//! `ledger_entries` table created by the crate's own migration.
#![allow(dead_code)]

use std::process::{Child, Command, Stdio};
use std::time::Duration;

pub const INI: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../farine.ini.example");
pub const ENTRIES: i64 = 3000;

pub fn require(port: u16, name: &str, start: &str) {
    let address = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    if std::net::TcpStream::connect_timeout(&address, Duration::from_secs(2)).is_err() {
        panic!("{name} is not reachable on 127.0.0.1:{port}: start it with `{start}`");
    }
}

/// A service binary with the example's configuration, logging only warnings.
pub fn spawn(program: &str) -> Child {
    Command::new(program)
        .env("FARINE_INI", INI)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .spawn()
        .unwrap_or_else(|err| panic!("{program}: {err}"))
}

/// Drops `ledger_entries` and its migration record, then migrates as `farine migrate` would.
pub async fn fresh_database() -> sqlx::PgPool {
    require(
        5432,
        "PostgreSQL",
        "pg_ctlcluster --skip-systemctl-redirect $(ls /etc/postgresql) main start",
    );
    let pool = sqlx::PgPool::connect("postgres://postgres@127.0.0.1:5432/test")
        .await
        .unwrap();
    for statement in [
        "drop table if exists ledger_entries",
        "drop table if exists _farine_migrations_ledger",
    ] {
        sqlx::query(statement).execute(&pool).await.unwrap();
    }
    let migrated = Command::new(env!("CARGO_BIN_EXE_ledger"))
        .env("FARINE_INI", INI)
        .env(
            "FARINE_MIGRATIONS",
            concat!(env!("CARGO_MANIFEST_DIR"), "/migrations"),
        )
        .output()
        .unwrap();
    assert!(
        migrated.status.success(),
        "{}",
        String::from_utf8_lossy(&migrated.stderr)
    );
    pool
}

pub async fn count(pool: &sqlx::PgPool) -> i64 {
    let (n,): (i64,) = sqlx::query_as("select count(*) from ledger_entries")
        .fetch_one(pool)
        .await
        .unwrap();
    n
}
