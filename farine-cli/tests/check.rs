//! `farine check` against the real RabbitMQ and PostgreSQL: a good configuration passes and
//! lists calc's entry points; a wrong broker password, a missing database, an exchange of
//! another type, pending migrations, an unreachable or silent server are each reported naming
//! file, section and key, all of them in one run; and the check declares nothing.
//!
//! Each test has a RabbitMQ virtual host of its own (created with `rabbitmqctl`, deleted at
//! the end), so one test's `calc` exchange is not another's; databases are created and
//! dropped likewise.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use farine::sqlx;
use farine_test_support::{pg, require_postgres};
use lapin::options::{ExchangeDeclareOptions, QueueDeclareOptions};
use lapin::types::FieldTable;
use lapin::{Connection, ConnectionProperties, ExchangeKind};
use tempfile::TempDir;

fn farine() -> Command {
    Command::new(env!("CARGO_BIN_EXE_farine"))
}

fn workspace_root() -> PathBuf {
    Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/.."))
        .canonicalize()
        .expect("the workspace root exists")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// Runs `farine check ARGS` from the workspace root with `ini` as FARINE_INI.
fn check(ini: &Path, args: &[&str]) -> Output {
    farine()
        .arg("check")
        .args(args)
        .current_dir(workspace_root())
        .env("FARINE_INI", ini)
        .env_remove("RUST_LOG")
        .stdin(Stdio::null())
        .output()
        .expect("run farine check")
}

/// A RabbitMQ virtual host for one test, deleted when dropped.
struct Vhost(farine_test_support::Vhost);

impl std::ops::Deref for Vhost {
    type Target = farine_test_support::Vhost;

    fn deref(&self) -> &Self::Target {
        &self.0
    }
}

impl Vhost {
    fn new(test: &str) -> Vhost {
        Vhost(farine_test_support::Vhost::new(&format!(
            "farine-check-{test}"
        )))
    }

    async fn connect(&self) -> Connection {
        Connection::connect(&self.uri(), ConnectionProperties::default())
            .await
            .expect("connect to the test virtual host")
    }

    /// Declares exchange `name` of `kind`, durable, as a service or an operator would.
    async fn exchange(&self, name: &str, kind: ExchangeKind) {
        let connection = self.connect().await;
        let channel = connection.create_channel().await.expect("channel");
        channel
            .exchange_declare(
                name.into(),
                kind,
                ExchangeDeclareOptions {
                    durable: true,
                    ..Default::default()
                },
                FieldTable::default(),
            )
            .await
            .expect("declare exchange");
        let _ = connection.close(200, "OK".into()).await;
    }

    /// Whether the exchange exists (a passive declare, on a channel of its own).
    async fn exchange_exists(&self, name: &str) -> bool {
        let connection = self.connect().await;
        let channel = connection.create_channel().await.expect("channel");
        let exists = channel
            .exchange_declare(
                name.into(),
                ExchangeKind::Direct,
                ExchangeDeclareOptions {
                    passive: true,
                    ..Default::default()
                },
                FieldTable::default(),
            )
            .await
            .is_ok();
        let _ = connection.close(200, "OK".into()).await;
        exists
    }

    /// Whether exchange `name` is (still) of `kind`: declaring it so again is accepted.
    async fn exchange_is(&self, name: &str, kind: ExchangeKind) -> bool {
        let connection = self.connect().await;
        let channel = connection.create_channel().await.expect("channel");
        let same = channel
            .exchange_declare(
                name.into(),
                kind,
                ExchangeDeclareOptions {
                    durable: true,
                    passive: false,
                    ..Default::default()
                },
                FieldTable::default(),
            )
            .await
            .is_ok();
        let _ = connection.close(200, "OK".into()).await;
        same
    }

    async fn queue_exists(&self, name: &str) -> bool {
        let connection = self.connect().await;
        let channel = connection.create_channel().await.expect("channel");
        let exists = channel
            .queue_declare(
                name.into(),
                QueueDeclareOptions {
                    passive: true,
                    ..Default::default()
                },
                FieldTable::default(),
            )
            .await
            .is_ok();
        let _ = connection.close(200, "OK".into()).await;
        exists
    }
}

/// A PostgreSQL database for one test (empty: no migration applied), dropped when dropped.
struct Database {
    name: String,
}

impl Database {
    async fn new(test: &str) -> Database {
        require_postgres();
        let name = format!("farine_check_{}_{test}", std::process::id());
        let pool = pg().await;
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "drop database if exists {name}"
        )))
        .execute(&pool)
        .await
        .expect("drop database");
        sqlx::query(sqlx::AssertSqlSafe(format!("create database {name}")))
            .execute(&pool)
            .await
            .expect("create database");
        pool.close().await;
        Database { name }
    }
}

impl Drop for Database {
    fn drop(&mut self) {
        // Dropped outside the test's runtime: psql is what the machine has for sure.
        let _ = Command::new("psql")
            .args(["-h", "127.0.0.1", "-U", "postgres", "-d", "test", "-qc"])
            .arg(format!(
                "drop database if exists {} with (force)",
                self.name
            ))
            .stdout(Stdio::null())
            .status();
    }
}

/// A `farine.ini` in a directory of its own.
fn ini(dir: &TempDir, text: &str) -> PathBuf {
    let path = dir.path().join("farine.ini");
    std::fs::write(&path, text).expect("write farine.ini");
    path
}

fn temp_dir() -> TempDir {
    tempfile::Builder::new()
        .prefix("farine-check-test-")
        .tempdir()
        .expect("create a temporary directory")
}

fn todo_section(db_name: &str) -> String {
    format!(
        "[todo]\ndb_connector = postgres\ndb_host = 127.0.0.1\ndb_port = 5432\ndb_name = {db_name}\n\
         db_user = postgres\ndb_password =\n"
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_good_config_passes_lists_calcs_entry_points_and_declares_nothing() {
    let vhost = Vhost::new("good");
    // An exchange that exists as calc declares it, and queues that do not exist yet.
    vhost.exchange("calc", ExchangeKind::Direct).await;
    let dir = temp_dir();
    let ini = ini(
        &dir,
        &format!("[DEFAULT]\namqp_uri = {}\n[calc]\n", vhost.uri()),
    );

    let output = check(&ini, &["--start", "calc"]);
    let (stdout, stderr) = (text(&output.stdout), text(&output.stderr));
    assert!(output.status.success(), "{stdout}\n{stderr}");
    for line in [
        r#"  calc.on_operation: consume, queue "operations" bound to exchange "calc" (direct) with routing key "operations""#,
        r#"  calc.on_result: consume, queue "results" bound to exchange "calc" (direct) with routing key "results""#,
        r#"  calc.add: rpc, queue "calc__add" bound to exchange "calc" (direct) with routing key "calc__add""#,
        r#"  calc.count: rpc, queue "calc__count" bound to exchange "calc" (direct) with routing key "calc__count""#,
        r#"  calc.publish_sum: publish, to exchange "calc" with routing key "results""#,
        r#"  [calc] exist as declared: exchange "calc" (direct, durable)"#,
        "check passed",
    ] {
        assert!(
            stdout.lines().any(|l| l == line),
            "{line}\nnot in:\n{stdout}"
        );
    }
    assert!(
        stdout.contains(r#"will be declared at start: queue "operations" (durable), queue "operations.dlq" (durable)"#),
        "{stdout}"
    );
    // Nothing was declared: the queues it found missing still are.
    for queue in [
        "operations",
        "operations.dlq",
        "calc__add",
        "results.retry.1000ms",
    ] {
        assert!(!vhost.queue_exists(queue).await, "{queue} was declared");
    }

    // The INI alone.
    let output = check(&ini, &[]);
    let stdout = text(&output.stdout);
    assert!(
        output.status.success(),
        "{stdout}\n{}",
        text(&output.stderr)
    );
    assert!(stdout.contains("[calc]: settings parse"), "{stdout}");
    assert!(
        stdout.contains("broker amqp://guest:***@127.0.0.1:5672/"),
        "{stdout}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_broker_password_is_reported_on_amqp_uri() {
    let vhost = Vhost::new("password");
    let dir = temp_dir();
    let wrong = vhost.uri().replace("guest:guest", "guest:not-the-password");
    let ini = ini(&dir, &format!("[calc]\namqp_uri = {wrong}\n"));
    let expected = format!(
        "{} [calc] amqp_uri: the broker refused the login (ACCESS_REFUSED): wrong user or password in amqp://guest:***@127.0.0.1:5672/{}",
        ini.display(),
        vhost.name
    );
    for args in [&[][..], &["--start", "calc"][..]] {
        let output = check(&ini, args);
        let stderr = text(&output.stderr);
        assert_eq!(output.status.code(), Some(1), "{args:?}: {stderr}");
        assert!(stderr.contains(&expected), "{args:?}: {stderr}");
        assert!(!stderr.contains("not-the-password"), "{stderr}");
        assert!(!text(&output.stdout).contains("not-the-password"));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_database_is_reported_on_db_name() {
    let vhost = Vhost::new("nodb");
    let dir = temp_dir();
    let missing = format!("farine_check_{}_missing", std::process::id());
    let ini = ini(
        &dir,
        &format!(
            "[DEFAULT]\namqp_uri = {}\n{}",
            vhost.uri(),
            todo_section(&missing)
        ),
    );
    let expected = format!(
        "{} [todo] db_name: the database \"{missing}\" does not exist on 127.0.0.1:5432",
        ini.display()
    );
    for args in [&[][..], &["--start", "todo"][..]] {
        let output = check(&ini, args);
        let stderr = text(&output.stderr);
        assert_eq!(output.status.code(), Some(1), "{args:?}: {stderr}");
        assert!(stderr.contains(&expected), "{args:?}: {stderr}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_exchange_of_another_type_is_reported_and_left_as_it_is() {
    let vhost = Vhost::new("conflict");
    vhost.exchange("calc", ExchangeKind::Fanout).await;
    let dir = temp_dir();
    let ini = ini(
        &dir,
        &format!("[DEFAULT]\namqp_uri = {}\n[calc]\n", vhost.uri()),
    );
    let output = check(&ini, &["--start", "calc"]);
    let stderr = text(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    let expected = format!(
        "{} [calc] type: calc.on_operation declares exchange \"calc\" (direct, durable), but it \
         exists with other settings: the broker refuses that declaration (PRECONDITION_FAILED - \
         inequivalent arg 'type' for exchange 'calc' in vhost '{}': received 'direct' but current \
         is 'fanout')",
        ini.display(),
        vhost.name
    );
    assert!(stderr.contains(&expected), "{stderr}");
    // Still a fanout, and no queue was declared.
    assert!(vhost.exchange_is("calc", ExchangeKind::Fanout).await);
    assert!(!vhost.queue_exists("operations").await);
}

/// The three at once: calc meets a fanout `calc`; todo a wrong broker password and a
/// database that does not exist. One run lists all three and fails.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_problem_is_listed_in_one_run() {
    let vhost = Vhost::new("all");
    vhost.exchange("calc", ExchangeKind::Fanout).await;
    let dir = temp_dir();
    let missing = format!("farine_check_{}_absent", std::process::id());
    let wrong = vhost.uri().replace("guest:guest", "guest:wrong");
    let ini = ini(
        &dir,
        &format!(
            "[DEFAULT]\namqp_uri = {}\n[calc]\n{}amqp_uri = {wrong}\n",
            vhost.uri(),
            todo_section(&missing)
        ),
    );
    let output = check(&ini, &["--start", "calc", "--start", "todo"]);
    let stderr = text(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    let file = ini.display().to_string();
    for expected in [
        format!(
            "{file} [calc] type: calc.on_operation declares exchange \"calc\" (direct, durable)"
        ),
        format!("{file} [todo] amqp_uri: the broker refused the login (ACCESS_REFUSED)"),
        format!("{file} [todo] db_name: the database \"{missing}\" does not exist"),
        "farine: check failed for calc, todo".to_string(),
    ] {
        assert!(stderr.contains(&expected), "{expected}\nnot in:\n{stderr}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pending_migrations_of_todo_are_reported_until_applied() {
    let vhost = Vhost::new("migrations");
    let database = Database::new("fresh").await;
    let dir = temp_dir();
    let ini = ini(
        &dir,
        &format!(
            "[DEFAULT]\namqp_uri = {}\n{}",
            vhost.uri(),
            todo_section(&database.name)
        ),
    );
    let migrations = workspace_root().join("examples/todo/migrations");
    let output = check(&ini, &["--start", "todo"]);
    let (stdout, stderr) = (text(&output.stdout), text(&output.stderr));
    assert_eq!(output.status.code(), Some(1), "{stdout}\n{stderr}");
    let expected = format!(
        "{} [todo] db_name: 1 migration of {} not applied to postgres://postgres@127.0.0.1:5432/{}: \
         20261122000001 (todos); run `farine migrate --start todo`",
        ini.display(),
        migrations.display(),
        database.name
    );
    assert!(stderr.contains(&expected), "{expected}\nnot in:\n{stderr}");
    assert!(
        stdout.contains(r#"  todo.add: rpc, queue "todo__add" bound to exchange "todo" (direct) with routing key "todo__add", broadcasts to fanout exchange "todo.events""#),
        "{stdout}"
    );
    // The check wrote nothing: no migrations table, no todos table, no exchange.
    let pool = sqlx::postgres::PgPoolOptions::new()
        .max_connections(1)
        .connect(&format!(
            "postgres://postgres@127.0.0.1:5432/{}",
            database.name
        ))
        .await
        .expect("connect to the test database");
    let tables: Vec<(String,)> =
        sqlx::query_as("select tablename::text from pg_tables where schemaname = 'public'")
            .fetch_all(&pool)
            .await
            .expect("list tables");
    assert!(tables.is_empty(), "{tables:?}");
    assert!(!vhost.exchange_exists("todo.events").await);

    let migrated = farine()
        .args(["migrate", "--start", "todo"])
        .current_dir(workspace_root())
        .env("FARINE_INI", &ini)
        .stdin(Stdio::null())
        .output()
        .expect("run farine migrate");
    assert!(migrated.status.success(), "{}", text(&migrated.stderr));
    let output = check(&ini, &["--start", "todo"]);
    let stdout = text(&output.stdout);
    assert!(
        output.status.success(),
        "{stdout}\n{}",
        text(&output.stderr)
    );
    assert!(
        stdout.contains(&format!(
            "  [todo] migrations of {}: 1 of 1 applied",
            migrations.display()
        )),
        "{stdout}"
    );
    pool.close().await;
}

/// Without --start: every section, each problem naming its key; a server that accepts the
/// connection and never answers costs at most the bound, and the message says which one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sections_alone_are_checked_with_bounded_waits() {
    // Accepts connections (the kernel does, into the backlog) and never answers.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = silent.local_addr().expect("address").port();
    let vhost = Vhost::new("sections");
    let dir = temp_dir();
    let ini = ini(
        &dir,
        &format!(
            "[DEFAULT]\namqp_uri = {good}\n\
             [silent]\namqp_uri = amqp://guest:guest@127.0.0.1:{port}/x\n\
             [refused]\ndb_connector = postgres\ndb_host = 127.0.0.1\ndb_port = 1\ndb_name = test\n\
             db_user = postgres\ndb_password =\n\
             [quiet_db]\ndb_connector = postgres\ndb_url = postgres://postgres@127.0.0.1:{port}/test\n\
             [typo]\nconcurency = 3\n\
             [bad]\nretry_attempts = lots\n",
            good = vhost.uri()
        ),
    );
    let started = Instant::now();
    let output = check(&ini, &[]);
    let took = started.elapsed();
    let stderr = text(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    let file = ini.display().to_string();
    for expected in [
        format!("{file} [silent] amqp_uri: connecting to the broker at amqp://guest:***@127.0.0.1:{port}/x timed out: no answer within 5s"),
        format!("{file} [refused] db_host: cannot connect to PostgreSQL at 127.0.0.1:1"),
        format!("{file} [quiet_db] db_url: connecting to the database postgres://postgres@127.0.0.1:{port}/test timed out: no answer within 5s"),
        format!("{file} [typo] concurency: unknown configuration key (did you mean concurrency?)"),
        format!("{file} [bad] retry_attempts: expected a whole number from 0 to 100, got \"lots\""),
        "farine: check found 5 problems (listed above)".to_string(),
    ] {
        assert!(stderr.contains(&expected), "{expected}\nnot in:\n{stderr}");
    }
    // Two silent servers, 5 s each at most.
    assert!(took < Duration::from_secs(20), "took {took:?}");
    drop(silent);
}

#[test]
fn a_bad_gateway_section_is_reported_on_its_key() {
    let dir = temp_dir();
    let ini = ini(
        &dir,
        "[DEFAULT]\namqp_uri = amqp://guest:guest@127.0.0.1:5672/%2f\n\
         [gateway]\nexpose = calc\nauth_jwt_secret = short\n",
    );
    let output = check(&ini, &[]);
    let stderr = text(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains(&format!(
            "{} [gateway] expose: expected SERVICE.METHOD",
            ini.display()
        )),
        "{stderr}"
    );
}
