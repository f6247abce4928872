//! A service's database: one connection, within [`WAIT`](super::WAIT), then its migrations
//! record compared with the crate's `migrations/` folder. Nothing is written.

use super::{Report, WAIT};
use crate::config::ServiceConfig;
use crate::db::{migrations_table, DbSettings};
use crate::Error;
use sqlx::{Connection, PgConnection};
use std::collections::BTreeMap;
use std::path::Path;

/// Connects to the database of `settings`, and with `migrations` (the folder and the crate
/// it belongs to) lists what is not applied, or applied otherwise.
pub(super) async fn check(
    report: &mut Report,
    settings: &ServiceConfig,
    db: &DbSettings,
    migrations: Option<(&Path, &str)>,
) {
    let section = &settings.name;
    let shown = &db.shown;
    let by_url = settings.raw("db_url").is_some_and(|url| !url.is_empty());
    // Which key to name: with db_url, it says everything; otherwise the key the failure is about.
    let key = |which: &'static str| if by_url { "db_url" } else { which };
    let connected = tokio::time::timeout(WAIT, PgConnection::connect_with(&db.options)).await;
    let mut conn = match connected {
        Ok(Ok(conn)) => conn,
        Ok(Err(err)) => {
            let (which, message) = refusal(&err, db);
            report.problem(settings.error(key(which), message));
            return;
        }
        Err(_) => {
            report.problem(settings.error(
                key("db_host"),
                format!(
                    "connecting to the database {shown} timed out: no answer within {} (check \
                     db_host and db_port, and that PostgreSQL is running)",
                    humantime::format_duration(WAIT)
                ),
            ));
            return;
        }
    };
    report.line(format!("  [{section}] database {shown}: connected"));
    if let Some((dir, krate)) = migrations {
        let service = &settings.name;
        match tokio::time::timeout(WAIT, pending(&mut conn, service, dir, krate, shown)).await {
            Ok(Ok(Ok(applied))) => report.line(format!(
                "  [{section}] migrations of {}: {applied}",
                dir.display()
            )),
            Ok(Ok(Err(problems))) => {
                for problem in problems {
                    report.problem(settings.error(key("db_name"), problem));
                }
            }
            Ok(Err(err)) => report.problem(err),
            Err(_) => report.problem(settings.error(
                key("db_name"),
                format!(
                    "reading the migrations applied to {shown} timed out: no answer within {}",
                    humantime::format_duration(WAIT)
                ),
            )),
        }
    }
    let _ = tokio::time::timeout(WAIT, conn.close()).await;
}

/// The key to blame for a refused connection, and what happened.
fn refusal(err: &sqlx::Error, db: &DbSettings) -> (&'static str, String) {
    let shown = &db.shown;
    let host = format!("{}:{}", db.options.get_host(), db.options.get_port());
    match err {
        sqlx::Error::Database(refused) => {
            let code = refused.code().map(|c| c.to_string()).unwrap_or_default();
            let said = refused.message();
            match code.as_str() {
                // invalid_catalog_name
                "3D000" => (
                    "db_name",
                    format!(
                        "the database {:?} does not exist on {host}: create it, or correct the \
                         name",
                        db.options.get_database().unwrap_or("")
                    ),
                ),
                // invalid_password
                "28P01" => (
                    "db_password",
                    format!("PostgreSQL at {host} refused the password of {shown} ({said})"),
                ),
                // invalid_authorization_specification: unknown role, or no pg_hba.conf entry
                "28000" => (
                    "db_user",
                    format!("PostgreSQL at {host} refused the login of {shown} ({said})"),
                ),
                _ => (
                    "db_name",
                    format!("PostgreSQL at {host} refused the connection to {shown}: {said} (SQLSTATE {code})"),
                ),
            }
        }
        sqlx::Error::Io(io) => (
            "db_host",
            format!(
                "cannot connect to PostgreSQL at {host} for {shown}: {io} (check db_host and \
                 db_port, and that PostgreSQL is running)"
            ),
        ),
        other => (
            "db_host",
            format!("cannot connect to the database {shown}: {other}"),
        ),
    }
}

/// What the service's migrations table records against the migrations in `dir`: a summary
/// when everything is applied as written, else one problem per kind of difference.
async fn pending(
    conn: &mut PgConnection,
    service: &str,
    dir: &Path,
    krate: &str,
    shown: &str,
) -> crate::Result<Result<String, Vec<String>>> {
    let migrator = sqlx::migrate::Migrator::new(dir)
        .await
        .map_err(|err| Error::Database {
            service: service.to_string(),
            message: format!("reading migrations in {}: {err}", dir.display()),
        })?;
    let table = migrations_table(service);
    let exists: Option<String> = sqlx::query_scalar("select to_regclass($1)::text")
        .bind(&table)
        .fetch_one(&mut *conn)
        .await?;
    let applied: BTreeMap<i64, (Vec<u8>, bool)> = match exists {
        None => BTreeMap::new(),
        Some(_) => {
            // `table` is farine's own name, letters, digits and `_` only.
            let sql = format!("select version, checksum, success from {table}");
            let rows: Vec<(i64, Vec<u8>, bool)> = sqlx::query_as(sqlx::AssertSqlSafe(sql))
                .fetch_all(&mut *conn)
                .await?;
            rows.into_iter()
                .map(|(version, checksum, success)| (version, (checksum, success)))
                .collect()
        }
    };
    let wanted: Vec<_> = migrator
        .iter()
        .filter(|m| !m.migration_type.is_down_migration())
        .collect();
    let name = |version: i64, description: &str| format!("{version} ({description})");
    let mut not_applied = Vec::new();
    let mut changed = Vec::new();
    let mut failed = Vec::new();
    for migration in &wanted {
        let label = name(migration.version, &migration.description);
        match applied.get(&migration.version) {
            None => not_applied.push(label),
            Some((_, false)) => failed.push(label),
            Some((checksum, true)) if checksum[..] != migration.checksum[..] => changed.push(label),
            Some(_) => {}
        }
    }
    let unknown: Vec<String> = applied
        .keys()
        .filter(|version| !wanted.iter().any(|m| m.version == **version))
        .map(i64::to_string)
        .collect();
    let mut problems = Vec::new();
    let count = |n: usize| if n == 1 { "migration" } else { "migrations" };
    if !not_applied.is_empty() {
        problems.push(format!(
            "{} {} of {} not applied to {shown}: {}; run `farine migrate --start {krate}`",
            not_applied.len(),
            count(not_applied.len()),
            dir.display(),
            not_applied.join(", ")
        ));
    }
    if !failed.is_empty() {
        problems.push(format!(
            "{} {} recorded as failed part-way in {table} on {shown}: {}; repair the database by \
             hand, delete the record, then run `farine migrate --start {krate}`",
            failed.len(),
            count(failed.len()),
            failed.join(", ")
        ));
    }
    if !changed.is_empty() {
        problems.push(format!(
            "{} {} of {} changed since they were applied to {shown}: {}; add a new migration \
             instead of editing an applied one",
            changed.len(),
            count(changed.len()),
            dir.display(),
            changed.join(", ")
        ));
    }
    if !unknown.is_empty() {
        problems.push(format!(
            "{} {} applied to {shown} (recorded in {table}) but not in {}: {}",
            unknown.len(),
            count(unknown.len()),
            dir.display(),
            unknown.join(", ")
        ));
    }
    if problems.is_empty() {
        Ok(Ok(format!(
            "{} of {} applied to {shown}",
            wanted.len(),
            wanted.len()
        )))
    } else {
        Ok(Err(problems))
    }
}
