//! Shared by the integration tests: the broker's address, a raw lapin client to set up and
//! inspect queues, and polling helpers. Every test names its own exchanges and queues.
#![allow(dead_code)]

use lapin::options::*;
use lapin::types::FieldTable;
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties};
use std::time::Duration;

pub fn amqp_uri() -> String {
    std::env::var("FARINE_TEST_AMQP_URI")
        .unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".to_string())
}

/// Fails the test with how to start RabbitMQ when it is not reachable.
pub fn require_rabbitmq() {
    let address = std::net::SocketAddr::from(([127, 0, 0, 1], 5672));
    if std::net::TcpStream::connect_timeout(&address, Duration::from_secs(2)).is_err() {
        panic!(
            "RabbitMQ is not reachable on 127.0.0.1:5672: this test needs it. Start it with \
             `rabbitmq-server -detached` (or see README.md, \"Running the tests\")."
        );
    }
}

/// A configuration with `[DEFAULT] amqp_uri` set to the test broker, plus `extra`.
pub fn config(extra: &str) -> farine::Config {
    let text = format!("[DEFAULT]\namqp_uri = {}\n{extra}\n", amqp_uri());
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
        let channel = self.connection.create_channel().await.expect("channel");
        let declared = channel
            .queue_declare(
                queue.into(),
                QueueDeclareOptions {
                    passive: true,
                    ..Default::default()
                },
                FieldTable::default(),
            )
            .await
            .ok();
        let _ = channel.close(200, "OK".into()).await;
        declared
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
    let address = std::net::SocketAddr::from(([127, 0, 0, 1], 5432));
    if std::net::TcpStream::connect_timeout(&address, Duration::from_secs(2)).is_err() {
        panic!(
            "PostgreSQL is not reachable on 127.0.0.1:5432: this test needs it. Start it with \
             `pg_ctlcluster --skip-systemctl-redirect $(ls /etc/postgresql) main start`."
        );
    }
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
