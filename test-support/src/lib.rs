//! What farine's own tests share (every test crate of the workspace depends on it, as a
//! dev-dependency): the test broker, a raw lapin client to set up and inspect queues,
//! PostgreSQL, and helpers for polling and for child processes.
//!
//! **Isolation.** Broker tests never run in a virtual host a user may use: they run in
//! `farine-test` (or the one `FARINE_TEST_AMQP_URI` names), which [`amqp_uri`] creates when
//! it is missing and `.ci/test` deletes at the end. Each test also names its own exchanges,
//! queues and tables, so tests run in parallel.

use lapin::options::*;
use lapin::types::FieldTable;
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties};
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::OnceLock;
use std::time::Duration;

/// The virtual host the tests use unless `FARINE_TEST_AMQP_URI` says otherwise.
pub const TEST_VHOST: &str = "farine-test";

/// The test broker: `FARINE_TEST_AMQP_URI`, else the local RabbitMQ's `farine-test` virtual
/// host, created on first use (with `rabbitmqctl`, as the machine's administrator).
pub fn amqp_uri() -> String {
    static URI: OnceLock<String> = OnceLock::new();
    URI.get_or_init(|| {
        if let Ok(uri) = std::env::var("FARINE_TEST_AMQP_URI") {
            if !uri.is_empty() {
                return uri;
            }
        }
        require_rabbitmq();
        ensure_vhost(TEST_VHOST);
        format!("amqp://guest:guest@127.0.0.1:5672/{TEST_VHOST}")
    })
    .clone()
}

/// Creates `vhost` and lets `guest` use it, unless it exists.
fn ensure_vhost(vhost: &str) {
    let how = format!(
        "create it as the broker's administrator: `rabbitmqctl add_vhost {vhost} && \
         rabbitmqctl set_permissions -p {vhost} guest '.*' '.*' '.*'` (or set \
         FARINE_TEST_AMQP_URI to a virtual host of your own)"
    );
    let listed = Command::new("rabbitmqctl")
        .args(["list_vhosts", "--quiet", "--no-table-headers"])
        .output()
        .unwrap_or_else(|err| panic!("the tests need RabbitMQ virtual host {vhost:?}: cannot run rabbitmqctl ({err}); {how}"));
    if String::from_utf8_lossy(&listed.stdout)
        .lines()
        .any(|line| line.trim() == vhost)
    {
        return;
    }
    for args in [
        vec!["add_vhost", vhost],
        vec!["set_permissions", "-p", vhost, "guest", ".*", ".*", ".*"],
    ] {
        let status = Command::new("rabbitmqctl")
            .args(&args)
            .stdout(Stdio::null())
            .status();
        // Another test process may have created it a moment ago: only the end state counts.
        if !matches!(status, Ok(s) if s.success()) && args[0] != "add_vhost" {
            panic!(
                "the tests need RabbitMQ virtual host {vhost:?}: `rabbitmqctl {}` failed; {how}",
                args.join(" ")
            );
        }
    }
}

/// The repository's `farine.ini.example` as the examples' tests use it: the same file, with
/// its broker set to the test broker. Written once per test process.
pub fn example_ini() -> PathBuf {
    static PATH: OnceLock<PathBuf> = OnceLock::new();
    PATH.get_or_init(|| {
        let example = concat!(env!("CARGO_MANIFEST_DIR"), "/../farine.ini.example");
        let text = std::fs::read_to_string(example).expect("farine.ini.example is readable");
        let default = "${AMQP_URI:amqp://guest:guest@127.0.0.1:5672/%2f}";
        assert!(
            text.contains(default),
            "farine.ini.example no longer sets amqp_uri = {default}"
        );
        let path =
            std::env::temp_dir().join(format!("farine-test-example-{}.ini", std::process::id()));
        std::fs::write(&path, text.replace(default, &amqp_uri()))
            .expect("write the test copy of farine.ini.example");
        path
    })
    .clone()
}

/// Fails the test with how to start RabbitMQ when it is not reachable.
pub fn require_rabbitmq() {
    require(5672, "RabbitMQ", "bash .ci/services");
}

/// Fails the test with how to start `name` when nothing listens on `port` of 127.0.0.1.
pub fn require(port: u16, name: &str, start: &str) {
    let address = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    if std::net::TcpStream::connect_timeout(&address, Duration::from_secs(2)).is_err() {
        panic!(
            "{name} is not reachable on 127.0.0.1:{port}: this test needs it. Start it with \
             `{start}` (see README.md, \"Running the tests\")."
        );
    }
}

/// The `[DEFAULT]` section pointing at the test broker, for INI files written by tests.
pub fn ini_defaults() -> String {
    format!("[DEFAULT]\namqp_uri = {}\n", amqp_uri())
}

/// A configuration with `[DEFAULT] amqp_uri` set to the test broker, plus `extra`.
pub fn config(extra: &str) -> farine::Config {
    let text = format!("{}{extra}\n", ini_defaults());
    farine::Config::from_str(&text, "test.ini").expect("test configuration parses")
}

/// Polls `check` every 20 ms until it is true or `within` has passed.
pub async fn eventually(within: Duration, mut check: impl FnMut() -> bool) -> bool {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        if check() {
            return true;
        }
        if tokio::time::Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A plain lapin connection for arranging and inspecting the broker from the outside.
pub struct Raw {
    pub connection: Connection,
    pub channel: Channel,
}

impl Raw {
    pub async fn connect() -> Raw {
        require_rabbitmq();
        let connection = Connection::connect(&amqp_uri(), ConnectionProperties::default())
            .await
            .expect("connect to RabbitMQ");
        let channel = connection.create_channel().await.expect("channel");
        channel
            .confirm_select(ConfirmSelectOptions::default())
            .await
            .expect("confirms");
        Raw {
            connection,
            channel,
        }
    }

    pub async fn exchange(&self, name: &str, kind: lapin::ExchangeKind) {
        self.channel
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
    }

    /// A durable queue bound to `exchange` with `routing_key`.
    pub async fn bound_queue(&self, queue: &str, exchange: &str, routing_key: &str) {
        self.channel
            .queue_declare(
                queue.into(),
                QueueDeclareOptions {
                    durable: true,
                    ..Default::default()
                },
                FieldTable::default(),
            )
            .await
            .expect("declare queue");
        self.channel
            .queue_bind(
                queue.into(),
                exchange.into(),
                routing_key.into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await
            .expect("bind queue");
    }

    pub async fn publish(&self, exchange: &str, routing_key: &str, body: &[u8]) {
        let properties = BasicProperties::default().with_content_type("application/json".into());
        self.publish_with(exchange, routing_key, body, properties)
            .await;
    }

    /// Publishes with the given properties (as a hostile or foreign sender would).
    pub async fn publish_with(
        &self,
        exchange: &str,
        routing_key: &str,
        body: &[u8],
        properties: BasicProperties,
    ) {
        self.channel
            .basic_publish(
                exchange.into(),
                routing_key.into(),
                BasicPublishOptions::default(),
                body,
                properties,
            )
            .await
            .expect("publish")
            .await
            .expect("confirm");
    }

    /// Takes one message from `queue` (acking it), waiting up to `within`.
    pub async fn get(
        &self,
        queue: &str,
        within: Duration,
    ) -> Option<lapin::message::BasicGetMessage> {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let got = self
                .channel
                .basic_get(queue.into(), BasicGetOptions { no_ack: true })
                .await
                .expect("basic.get");
            if got.is_some() || tokio::time::Instant::now() >= deadline {
                return got;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Messages ready in `queue` (0 if it does not exist).
    pub async fn ready(&self, queue: &str) -> u32 {
        self.passive(queue).await.map_or(0, |q| q.message_count())
    }

    pub async fn queue_exists(&self, queue: &str) -> bool {
        self.passive(queue).await.is_some()
    }

    /// The queue as the broker reports it, on a channel of its own (a missing queue closes it).
    async fn passive(&self, queue: &str) -> Option<lapin::Queue> {
        passive_queue(&self.connection, queue).await.ok()
    }

    /// Deletes queues (with farine's `.dlq` and `.retry.*` companions named in `queues`).
    pub async fn delete_queues(&self, queues: &[&str]) {
        for queue in queues {
            let _ = self
                .channel
                .queue_delete((*queue).into(), QueueDeleteOptions::default())
                .await;
        }
    }

    pub async fn delete_exchanges(&self, exchanges: &[&str]) {
        for exchange in exchanges {
            let _ = self
                .channel
                .exchange_delete((*exchange).into(), ExchangeDeleteOptions::default())
                .await;
        }
    }
}

/// A header of a message as text.
pub fn header(properties: &BasicProperties, key: &str) -> Option<String> {
    use lapin::types::AMQPValue;
    match properties.headers().as_ref()?.inner().get(key)? {
        AMQPValue::LongString(s) => Some(String::from_utf8_lossy(s.as_bytes()).into_owned()),
        AMQPValue::ShortString(s) => Some(s.as_str().to_string()),
        AMQPValue::LongLongInt(n) => Some(n.to_string()),
        other => Some(format!("{other:?}")),
    }
}

pub const PG_URL: &str = "postgres://postgres@127.0.0.1:5432/test";

/// Fails the test with how to start PostgreSQL when it is not reachable.
pub fn require_postgres() {
    require(5432, "PostgreSQL", "bash .ci/services");
}

/// A direct connection to the test database, to arrange and inspect tables.
pub async fn pg() -> sqlx::PgPool {
    require_postgres();
    sqlx::postgres::PgPoolOptions::new()
        .max_connections(2)
        .connect(PG_URL)
        .await
        .expect("connect to PostgreSQL")
}

/// Waits up to `within` for `child` to exit.
pub fn wait_exit(child: &mut Child, within: Duration) -> Option<ExitStatus> {
    let deadline = std::time::Instant::now() + within;
    while std::time::Instant::now() < deadline {
        if let Ok(Some(status)) = child.try_wait() {
            return Some(status);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    None
}

/// Runs `rabbitmqctl ARGS`, failing the test if it fails.
pub fn rabbitmqctl(args: &[&str]) {
    let status = Command::new("rabbitmqctl")
        .args(args)
        .stdout(Stdio::null())
        .status()
        .expect("rabbitmqctl runs (these tests run as the broker's administrator)");
    assert!(status.success(), "rabbitmqctl {args:?} failed");
}

/// A RabbitMQ virtual host of one test, which `guest` may use, deleted when dropped (even when
/// the test fails): for tests whose names must not meet another test's.
pub struct Vhost {
    pub name: String,
}

impl Vhost {
    /// A new virtual host named `<prefix>-<process>-<n>`.
    pub fn new(prefix: &str) -> Vhost {
        require_rabbitmq();
        static NEXT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let name = format!("{prefix}-{}-{n}", std::process::id());
        rabbitmqctl(&["add_vhost", &name]);
        let vhost = Vhost { name };
        rabbitmqctl(&[
            "set_permissions",
            "-p",
            &vhost.name,
            "guest",
            ".*",
            ".*",
            ".*",
        ]);
        vhost
    }

    /// Its URI, as `guest`.
    pub fn uri(&self) -> String {
        format!("amqp://guest:guest@127.0.0.1:5672/{}", self.name)
    }
}

impl Drop for Vhost {
    fn drop(&mut self) {
        let _ = Command::new("rabbitmqctl")
            .args(["delete_vhost", &self.name])
            .stdout(Stdio::null())
            .status();
    }
}

/// The broker stopped (`rabbitmqctl stop_app`) until this is dropped, even when the test
/// fails: it is started again (`start_app`, then `await_startup`).
pub struct BrokerStopped;

impl BrokerStopped {
    pub fn now() -> BrokerStopped {
        rabbitmqctl(&["stop_app"]);
        BrokerStopped
    }
}

impl Drop for BrokerStopped {
    fn drop(&mut self) {
        let _ = Command::new("rabbitmqctl").arg("start_app").status();
        let _ = Command::new("rabbitmqctl").arg("await_startup").status();
    }
}

/// A child process killed when dropped, so a failing test leaves no service running.
pub struct Killed(pub Child);

impl std::ops::Deref for Killed {
    type Target = Child;
    fn deref(&self) -> &Child {
        &self.0
    }
}

impl std::ops::DerefMut for Killed {
    fn deref_mut(&mut self) -> &mut Child {
        &mut self.0
    }
}

impl Drop for Killed {
    fn drop(&mut self) {
        if matches!(self.0.try_wait(), Ok(None)) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

/// A passive declare of `queue` on a channel of its own (a missing queue closes the channel):
/// the queue as the broker reports it, or the broker's refusal (`NOT_FOUND`, or
/// `RESOURCE_LOCKED` for another connection's exclusive queue).
pub async fn passive_queue(
    connection: &Connection,
    queue: &str,
) -> Result<lapin::Queue, lapin::Error> {
    let channel = connection.create_channel().await.expect("channel");
    let declared = channel
        .queue_declare(
            queue.into(),
            QueueDeclareOptions {
                passive: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await;
    let _ = channel.close(200, "OK".into()).await;
    declared
}

/// SQL built from a test's own names (no outside input).
pub fn sql(text: String) -> sqlx::AssertSqlSafe<String> {
    sqlx::AssertSqlSafe(text)
}

/// A PostgreSQL schema of a test's own in the test database, holding what `migration`
/// creates: a service pointed at [`Schema::db_url`] finds its tables there, so tests run in
/// parallel and leave no table behind (once [`Schema::drop`] ran).
pub struct Schema {
    pub pool: sqlx::PgPool,
    pub name: String,
}

impl Schema {
    /// Drops any leftover of `name` and creates it anew with `migration` applied.
    pub async fn new(name: String, migration: &str) -> Schema {
        let pool = pg().await;
        sqlx::raw_sql(sql(format!(
            "drop schema if exists {name} cascade; create schema {name}; \
             set search_path = {name};\n{migration}"
        )))
        .execute(&pool)
        .await
        .expect("create the test's schema");
        Schema { pool, name }
    }

    /// The test database, with this schema first on the path.
    pub fn db_url(&self) -> String {
        format!("{PG_URL}?options=-c%20search_path%3D{}", self.name)
    }

    /// Runs `statement` with this schema first on the path.
    pub async fn execute(&self, statement: &str) {
        sqlx::raw_sql(sql(format!(
            "set search_path = {};\n{statement}",
            self.name
        )))
        .execute(&self.pool)
        .await
        .expect("run a statement in the test's schema");
    }

    pub async fn drop(self) {
        sqlx::raw_sql(sql(format!("drop schema {} cascade", self.name)))
            .execute(&self.pool)
            .await
            .expect("drop the test's schema");
    }
}
