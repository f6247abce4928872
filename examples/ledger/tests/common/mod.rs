//! What the ledger tests share: the example's configuration, the service binary, and a fresh
//! `ledger_entries` table created by the crate's own migration.
#![allow(dead_code)]

use std::process::{Child, Command, Stdio};

pub use farine_test_support::example_ini;

pub const ENTRIES: i64 = 3000;

/// A service binary with the example's configuration, logging only warnings.
pub fn spawn(program: &str) -> Child {
    Command::new(program)
        .env("FARINE_INI", example_ini())
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .spawn()
        .unwrap_or_else(|err| panic!("{program}: {err}"))
}

/// Drops `ledger_entries` and its migration record, then migrates as `farine migrate` would.
pub async fn fresh_database() -> sqlx::PgPool {
    let pool = farine_test_support::pg().await;
    for statement in [
        "drop table if exists ledger_entries",
        "drop table if exists _farine_migrations_ledger",
    ] {
        sqlx::query(statement).execute(&pool).await.unwrap();
    }
    let migrated = Command::new(env!("CARGO_BIN_EXE_ledger"))
        .env("FARINE_INI", example_ini())
        .env(
            farine::runtime::MIGRATIONS_ENV,
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
