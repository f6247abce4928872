//! What a hostile or careless sender can do to a service, against a real RabbitMQ: messages
//! that ask to expire, forged `x-farine-*` headers, reply addresses that name other queues,
//! forged cancels, huge arguments, and a queue deleted under a running service.

mod support;

use farine::prelude::*;
use lapin::types::{AMQPValue, FieldTable, ShortString};
use lapin::BasicProperties;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;
use support::{config, eventually, header, Raw};

const WAIT: Duration = Duration::from_secs(10);

fn headers(pairs: &[(&str, AMQPValue)]) -> FieldTable {
    let mut table = FieldTable::default();
    for (key, value) in pairs {
        table.insert(ShortString::from(*key), value.clone());
    }
    table
}

fn text(value: &str) -> AMQPValue {
    AMQPValue::LongString(value.into())
}

/// Every queue a consumer on `queue` declares with `retry_delay = 100ms` (3 attempts at most).
async fn clean_consumer(raw: &Raw, queue: &str, exchange: &str) {
    let mut names = vec![queue.to_string(), format!("{queue}.dlq")];
    names.extend([100, 200, 400].map(|ms| format!("{queue}.retry.{ms}ms")));
    let names: Vec<&str> = names.iter().map(String::as_str).collect();
    raw.delete_queues(&names).await;
    raw.delete_exchanges(&[exchange]).await;
}

async fn connect_broker() -> farine::broker::Broker {
    let uri = farine::config::AmqpUri::new(support::amqp_uri());
    farine::broker::Broker::connect(&uri, 30)
        .await
        .expect("connect")
}

// ------------------------------------------------------------- parked messages stay parked

#[derive(Deserialize)]
struct Point {
    #[allow(dead_code)]
    x: i64,
}

#[derive(Default)]
struct Parking;

#[farine::service(name = "t_atk_park")]
impl Parking {
    #[amqp::consume(routing_key = "points", queue = "t_atk_park.points")]
    async fn on_point(&self, _point: Point) -> farine::Result<()> {
        Ok(())
    }
}

#[tokio::test]
async fn a_parked_message_keeps_no_expiration_and_is_persistent() {
    let raw = Raw::connect().await;
    let queue = "t_atk_park.points";
    clean_consumer(&raw, queue, "t_atk_park").await;
    let running = farine::Runtime::new(config("[t_atk_park]\nretry_delay = 100ms\n"))
        .only(["t_atk_park"])
        .start()
        .await
        .expect("service starts");
    let transient = BasicProperties::default()
        .with_expiration("2000".into())
        .with_delivery_mode(1);
    raw.publish_with("t_atk_park", "points", b"not json", transient)
        .await;
    let dlq = format!("{queue}.dlq");
    assert_eq!(wait_ready(&raw, &dlq, 1).await, 1, "parked");
    // Past the sender's expiration: still there.
    tokio::time::sleep(Duration::from_millis(3000)).await;
    let message = raw
        .get(&dlq, Duration::from_secs(1))
        .await
        .expect("the parked message outlived the sender's expiration");
    let properties = &message.delivery.properties;
    assert_eq!(properties.expiration(), &None);
    assert_eq!(properties.delivery_mode(), &Some(2));
    running.shutdown().await.unwrap();
    clean_consumer(&raw, queue, "t_atk_park").await;
}

// ------------------------------------------------------------------ replay, bounded, once

#[derive(Default)]
struct Replay;

#[farine::service(name = "t_atk_replay")]
impl Replay {
    #[amqp::consume(routing_key = "ops", queue = "t_atk_replay.ops")]
    async fn on_op(&self, _point: Point) -> farine::Result<()> {
        Ok(())
    }
}

async fn wait_ready(raw: &Raw, queue: &str, count: u32) -> u32 {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let now = raw.ready(queue).await;
        if now == count || tokio::time::Instant::now() >= deadline {
            return now;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replaying_poison_ends_moves_each_once_and_survives_interruption() {
    let raw = Raw::connect().await;
    let queue = "t_atk_replay.ops";
    let dlq = format!("{queue}.dlq");
    clean_consumer(&raw, queue, "t_atk_replay").await;
    let running = farine::Runtime::new(config("[t_atk_replay]\nretry_delay = 100ms\n"))
        .only(["t_atk_replay"])
        .start()
        .await
        .expect("service starts");
    for i in 0..200 {
        raw.publish("t_atk_replay", "ops", format!("poison {i}").as_bytes())
            .await;
    }
    assert_eq!(wait_ready(&raw, &dlq, 200).await, 200);

    // Every message is poison: each comes back, and the replay still ends.
    let broker = connect_broker().await;
    let replayed = tokio::time::timeout(
        Duration::from_secs(30),
        farine::dlq::replay(&broker, queue, usize::MAX),
    )
    .await
    .expect("replay ends")
    .expect("replay works");
    assert_eq!(replayed.moved, 200);
    assert_eq!(replayed.left, 0);
    assert_eq!(wait_ready(&raw, &dlq, 200).await, 200, "no duplicate");
    assert!(replayed.came_back > 0, "{replayed:?}");
    broker.close().await;

    // Interrupted at some point (its connection dropped mid-way): nothing lost or doubled.
    for stop_after_ms in [5, 30, 80] {
        let broker = connect_broker().await;
        let _ = tokio::time::timeout(
            Duration::from_millis(stop_after_ms),
            farine::dlq::replay(&broker, queue, usize::MAX),
        )
        .await;
        broker.close().await;
        // Let the moved ones fail and come back.
        tokio::time::sleep(Duration::from_millis(500)).await;
        assert_eq!(
            wait_ready(&raw, &dlq, 200).await,
            200,
            "interrupted after {stop_after_ms} ms"
        );
        assert_eq!(raw.ready(queue).await, 0);
    }
    running.shutdown().await.unwrap();
    clean_consumer(&raw, queue, "t_atk_replay").await;
}

// ------------------------------------------------------------- forged x-farine-* headers

static FORGED_CALLS: AtomicUsize = AtomicUsize::new(0);

#[derive(Default)]
struct Forged;

#[farine::service(name = "t_atk_forged")]
impl Forged {
    #[amqp::consume(routing_key = "in", queue = "t_atk_forged.in")]
    async fn on_in(&self, body: Value) -> Result<(), String> {
        if body == json!("fail") {
            FORGED_CALLS.fetch_add(1, Ordering::SeqCst);
            return Err("always fails".into());
        }
        Ok(())
    }

    #[amqp::consume(routing_key = "point", queue = "t_atk_forged.point")]
    async fn on_point(&self, _point: Point) -> farine::Result<()> {
        Ok(())
    }
}

#[tokio::test]
async fn forged_farine_headers_decide_nothing() {
    let raw = Raw::connect().await;
    let sink = "t_atk_forged.sink";
    raw.delete_queues(&[sink]).await;
    for queue in ["t_atk_forged.in", "t_atk_forged.point"] {
        clean_consumer(&raw, queue, "t_atk_forged").await;
    }
    raw.exchange("t_atk_forged", lapin::ExchangeKind::Direct)
        .await;
    raw.bound_queue(sink, "t_atk_forged", "sink").await;
    let running = farine::Runtime::new(config(
        "[t_atk_forged]\nretry_attempts = 1\nretry_delay = 100ms\n",
    ))
    .only(["t_atk_forged"])
    .start()
    .await
    .expect("service starts");

    // A forged attempt count skips no retry.
    let forged = BasicProperties::default().with_headers(headers(&[(
        "x-farine-attempts",
        AMQPValue::LongLongInt(99),
    )]));
    raw.publish_with("t_atk_forged", "in", br#""fail""#, forged)
        .await;
    let parked = raw
        .get("t_atk_forged.in.dlq", WAIT)
        .await
        .expect("dead-lettered after its retry");
    assert_eq!(
        FORGED_CALLS.load(Ordering::SeqCst),
        2,
        "first try + 1 retry"
    );
    assert_eq!(
        header(&parked.delivery.properties, "x-farine-attempts").as_deref(),
        Some("2")
    );

    // A forged origin is overwritten, and replay goes only to the queue it was parked from.
    let forged = BasicProperties::default().with_headers(headers(&[
        ("x-farine-original-exchange", text("")),
        ("x-farine-original-routing-key", text(sink)),
    ]));
    raw.publish_with("t_atk_forged", "point", b"not json", forged)
        .await;
    let dlq = "t_atk_forged.point.dlq";
    assert_eq!(wait_ready(&raw, dlq, 1).await, 1);
    let letters = {
        let broker = connect_broker().await;
        let letters = farine::dlq::peek(&broker, "t_atk_forged.point", 10)
            .await
            .unwrap();
        let replayed = farine::dlq::replay(&broker, "t_atk_forged.point", 10)
            .await
            .unwrap();
        assert_eq!(replayed.moved, 1);
        broker.close().await;
        letters
    };
    assert_eq!(
        letters[0].original_exchange.as_deref(),
        Some("t_atk_forged")
    );
    assert_eq!(letters[0].original_routing_key.as_deref(), Some("point"));
    // Replayed into t_atk_forged.point, failed again, parked again: never in the sink.
    assert_eq!(wait_ready(&raw, dlq, 1).await, 1);
    assert_eq!(raw.ready(sink).await, 0, "replay followed a forged header");
    running.shutdown().await.unwrap();
    for queue in ["t_atk_forged.in", "t_atk_forged.point"] {
        clean_consumer(&raw, queue, "t_atk_forged").await;
    }
    raw.delete_queues(&[sink]).await;
}

// ------------------------------------------------------------------ replies and cancels

#[derive(Default)]
struct Replies;

#[derive(Serialize, Deserialize, Debug, PartialEq)]
enum PlainError {
    DivideByZero,
}

#[farine::service(name = "t_atk_rpc")]
impl Replies {
    #[rpc::method]
    async fn echo(&self, text: String) -> String {
        text
    }

    #[rpc::method]
    async fn add(&self, a: i64, b: i64) -> i64 {
        a.wrapping_add(b)
    }

    /// An error type that is `Serialize` but not `Display`.
    #[rpc::method]
    async fn div(&self, a: u32, b: u32) -> Result<u32, PlainError> {
        a.checked_div(b).ok_or(PlainError::DivideByZero)
    }

    #[rpc::method]
    fn ticks(&self) -> impl Stream<Item = u64> + Send + 'static {
        futures::stream::unfold(0u64, |n| async move {
            tokio::time::sleep(Duration::from_millis(20)).await;
            Some((n, n + 1))
        })
    }
}

fn request(correlation_id: &str, reply_to: &str) -> BasicProperties {
    BasicProperties::default()
        .with_content_type("application/json".into())
        .with_correlation_id(correlation_id.into())
        .with_reply_to(reply_to.into())
}

async fn start_rpc() -> (Raw, farine::Running) {
    let raw = Raw::connect().await;
    let running = farine::Runtime::new(config(""))
        .only(["t_atk_rpc"])
        .start()
        .await
        .expect("service starts");
    (raw, running)
}

async fn clean_rpc(raw: &Raw) {
    for method in ["echo", "add", "div", "ticks"] {
        let queue = format!("t_atk_rpc__{method}");
        let dlq = format!("{queue}.dlq");
        raw.delete_queues(&[&queue, &dlq]).await;
    }
    raw.delete_queues(&["t_atk_rpc.sink"]).await;
    raw.delete_exchanges(&["t_atk_rpc"]).await;
}

#[tokio::test]
async fn replies_go_only_to_reply_queues_and_cancels_must_name_theirs() {
    let (raw, running) = start_rpc().await;
    let sink = "t_atk_rpc.sink";
    raw.bound_queue(sink, "t_atk_rpc", "sink").await;
    let body = br#"{"args": ["hello"], "kwargs": {}}"#;
    for reply_to in [sink, "t_atk_rpc__add"] {
        raw.publish_with(
            "t_atk_rpc",
            "t_atk_rpc__echo",
            body,
            request("c0", reply_to),
        )
        .await;
    }
    let refused = raw
        .get("t_atk_rpc__echo.dlq", WAIT)
        .await
        .expect("a request with a foreign reply_to is dead-lettered");
    let reason = header(&refused.delivery.properties, "x-farine-error").unwrap();
    assert!(reason.contains("is not a reply queue"), "{reason}");
    assert!(raw.get("t_atk_rpc__echo.dlq", WAIT).await.is_some());
    assert_eq!(
        raw.ready(sink).await,
        0,
        "a reply went into a foreign queue"
    );
    assert_eq!(raw.ready("t_atk_rpc__add.dlq").await, 0);

    // A stream to a reply queue of our own; a cancel naming another reply_to is ignored.
    let reply_queue = format!("farine.reply.{}", uuid::Uuid::new_v4().simple());
    raw.channel
        .queue_declare(
            reply_queue.as_str().into(),
            lapin::options::QueueDeclareOptions {
                exclusive: true,
                auto_delete: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .unwrap();
    raw.publish_with(
        "t_atk_rpc",
        "t_atk_rpc__ticks",
        br#"{"args": [], "kwargs": {}}"#,
        request("s1", &reply_queue),
    )
    .await;
    assert!(
        raw.get(&reply_queue, WAIT).await.is_some(),
        "stream started"
    );
    let forged = json!({"correlation_id": "s1", "reply_to": "amq.rabbitmq.reply-to"});
    raw.publish(
        "t_atk_rpc",
        "t_atk_rpc.__cancel__",
        forged.to_string().as_bytes(),
    )
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let before = raw.ready(&reply_queue).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        raw.ready(&reply_queue).await > before,
        "a forged cancel stopped the stream"
    );
    let genuine = json!({"correlation_id": "s1", "reply_to": reply_queue});
    raw.publish(
        "t_atk_rpc",
        "t_atk_rpc.__cancel__",
        genuine.to_string().as_bytes(),
    )
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let after = raw.ready(&reply_queue).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        raw.ready(&reply_queue).await,
        after,
        "the cancel was ignored"
    );

    running.shutdown().await.unwrap();
    clean_rpc(&raw).await;
}

#[tokio::test]
async fn huge_arguments_are_not_echoed_back() {
    let (raw, running) = start_rpc().await;
    let client = farine::Client::connect(&config("")).await.unwrap();
    let huge = "x".repeat(2 * 1024 * 1024);
    let err = client
        .call("t_atk_rpc", "add", json!([huge, 1]))
        .await
        .unwrap_err();
    let message = err.to_string();
    assert!(message.contains("argument `a`"), "{}", &message[..200]);
    assert!(message.len() < 4096, "error of {} bytes", message.len());
    running.shutdown().await.unwrap();
    clean_rpc(&raw).await;
}

#[tokio::test]
async fn an_error_type_without_display_is_still_an_error() {
    let (raw, running) = start_rpc().await;
    let client = RepliesClient::connect(&config("")).await.unwrap();
    assert_eq!(client.div(7, 2).await.unwrap(), 3);
    let err = client.div(1, 0).await.unwrap_err();
    assert_eq!(
        err.service_error::<PlainError>(),
        Some(PlainError::DivideByZero)
    );
    let untyped = farine::Client::connect(&config("")).await.unwrap();
    assert_eq!(
        untyped
            .call("t_atk_rpc", "div", json!([6, 3]))
            .await
            .unwrap(),
        json!(2)
    );
    running.shutdown().await.unwrap();
    clean_rpc(&raw).await;
}

// ------------------------------------------------------------- a queue deleted under us

static REATTACHED: AtomicUsize = AtomicUsize::new(0);

#[derive(Default)]
struct Deleted;

#[farine::service(name = "t_atk_deleted")]
impl Deleted {
    #[amqp::consume(routing_key = "in", queue = "t_atk_deleted.in")]
    async fn on_in(&self, _body: Value) -> farine::Result<()> {
        REATTACHED.fetch_add(1, Ordering::SeqCst);
        Ok(())
    }

    #[rpc::method]
    async fn ping(&self) -> &'static str {
        "pong"
    }
}

#[tokio::test]
async fn deleting_an_entry_points_queue_re_attaches_it() {
    let raw = Raw::connect().await;
    clean_consumer(&raw, "t_atk_deleted.in", "t_atk_deleted").await;
    raw.delete_queues(&["t_atk_deleted__ping", "t_atk_deleted__ping.dlq"])
        .await;
    let mut running = farine::Runtime::new(config("[t_atk_deleted]\nretry_delay = 100ms\n"))
        .only(["t_atk_deleted"])
        .start()
        .await
        .expect("service starts");
    raw.delete_queues(&["t_atk_deleted.in", "t_atk_deleted__ping"])
        .await;
    // The consumer is back: a message published once its queue is declared and bound again
    // is handled. (The queue exists a moment before its binding does, and a publish in
    // between is dropped as unroutable: publish again until one gets through.)
    let mut handled = false;
    for _ in 0..50 {
        if raw.queue_exists("t_atk_deleted.in").await {
            raw.publish("t_atk_deleted", "in", b"{}").await;
            handled = eventually(Duration::from_millis(200), || {
                REATTACHED.load(Ordering::SeqCst) > 0
            })
            .await;
            if handled {
                break;
            }
        } else {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    assert!(handled, "the consumer was not re-attached");
    let client = farine::Client::connect(&config("")).await.unwrap();
    let mut answered = false;
    for _ in 0..50 {
        if let Ok(pong) = client.call("t_atk_deleted", "ping", json!([])).await {
            assert_eq!(pong, json!("pong"));
            answered = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(answered, "the RPC method was not re-attached");
    let failed = tokio::time::timeout(Duration::from_millis(300), running.failed()).await;
    assert!(failed.is_err(), "the runtime stopped: {:?}", failed.ok());
    running.shutdown().await.unwrap();
    clean_consumer(&raw, "t_atk_deleted.in", "t_atk_deleted").await;
    raw.delete_queues(&["t_atk_deleted__ping", "t_atk_deleted__ping.dlq"])
        .await;
}
