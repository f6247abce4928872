//! Publish and consume against a real RabbitMQ: acks after success, retries then dead
//! letters on failure, poison messages, concurrency, confirms, graceful shutdown.

mod support;

use farine::prelude::*;
use serde::Deserialize;
use serde_json::{json, Value};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::Duration;
use support::{config, eventually, header, Raw};

const WAIT: Duration = Duration::from_secs(10);

/// Every queue farine may declare for consumer queue `queue` with the policies used here.
fn companions(queue: &str) -> Vec<String> {
    let mut all = vec![queue.to_string(), format!("{queue}.dlq")];
    for ms in [100, 1000, 2000, 4000] {
        all.push(format!("{queue}.retry.{ms}ms"));
    }
    all
}

async fn clean(raw: &Raw, queues: &[&str], exchanges: &[&str]) {
    for queue in queues {
        let names = companions(queue);
        let names: Vec<&str> = names.iter().map(String::as_str).collect();
        raw.delete_queues(&names).await;
    }
    raw.delete_exchanges(exchanges).await;
}

// ---------------------------------------------------------------- consume, ack on success

#[derive(Debug, Deserialize, PartialEq)]
struct Point {
    x: i64,
    y: i64,
}

static POINTS: Mutex<Vec<(i64, i64)>> = Mutex::new(Vec::new());

#[derive(Default)]
struct ConsumeOk;

#[farine::service(name = "t_consume_ok")]
impl ConsumeOk {
    #[amqp::consume(
        exchange = "t_consume_ok.ex",
        routing_key = "points",
        queue = "t_consume_ok.points"
    )]
    async fn on_point(&self, point: Point) -> farine::Result<()> {
        POINTS.lock().unwrap().push((point.x, point.y));
        Ok(())
    }
}

#[tokio::test]
async fn consumed_messages_reach_the_typed_handler_and_are_acked() {
    let raw = Raw::connect().await;
    let queue = "t_consume_ok.points";
    clean(&raw, &[queue], &["t_consume_ok.ex"]).await;
    let running = farine::Runtime::new(config(""))
        .only(["t_consume_ok"])
        .start()
        .await
        .expect("service starts");
    for i in 0..5 {
        raw.publish(
            "t_consume_ok.ex",
            "points",
            json!({"x": i, "y": -i}).to_string().as_bytes(),
        )
        .await;
    }
    assert!(eventually(WAIT, || POINTS.lock().unwrap().len() == 5).await);
    let mut seen = POINTS.lock().unwrap().clone();
    seen.sort();
    assert_eq!(seen, (0..5).map(|i| (i, -i)).collect::<Vec<_>>());
    running.shutdown().await.expect("clean shutdown");
    // Acked: nothing is left or comes back after the consumer is gone.
    assert_eq!(raw.ready(queue).await, 0);
    assert_eq!(raw.ready(&format!("{queue}.dlq")).await, 0);
    clean(&raw, &[queue], &["t_consume_ok.ex"]).await;
}

// ---------------------------------------------------------------- poison messages

static POISON_CALLS: AtomicUsize = AtomicUsize::new(0);

#[derive(Default)]
struct Poison;

#[farine::service(name = "t_poison")]
impl Poison {
    #[amqp::consume(exchange = "t_poison.ex", routing_key = "in", queue = "t_poison.in")]
    async fn on_point(&self, _point: Point) -> farine::Result<()> {
        POISON_CALLS.fetch_add(1, Ordering::SeqCst);
        Ok(())
    }
}

#[tokio::test]
async fn undecodable_messages_are_dead_lettered_at_once_with_their_reason() {
    let raw = Raw::connect().await;
    let queue = "t_poison.in";
    clean(&raw, &[queue], &["t_poison.ex"]).await;
    let running = farine::Runtime::new(config(""))
        .only(["t_poison"])
        .start()
        .await
        .expect("service starts");
    raw.publish("t_poison.ex", "in", b"this is not json").await;
    raw.publish("t_poison.ex", "in", br#"{"x": "one"}"#).await;
    raw.publish("t_poison.ex", "in", br#"{"x": 1, "y": 2}"#)
        .await;
    let dlq = format!("{queue}.dlq");
    let first = raw
        .get(&dlq, WAIT)
        .await
        .expect("not-JSON message dead-lettered");
    assert_eq!(first.delivery.data, b"this is not json");
    let reason = header(&first.delivery.properties, "x-farine-error").unwrap();
    assert!(reason.contains("does not decode"), "{reason}");
    assert_eq!(
        header(&first.delivery.properties, "x-farine-original-exchange").as_deref(),
        Some("t_poison.ex")
    );
    assert_eq!(
        header(&first.delivery.properties, "x-farine-original-routing-key").as_deref(),
        Some("in")
    );
    assert_eq!(
        header(&first.delivery.properties, "x-farine-queue").as_deref(),
        Some(queue)
    );
    assert!(header(&first.delivery.properties, "x-farine-failed-at").is_some());
    let second = raw
        .get(&dlq, WAIT)
        .await
        .expect("wrong-shape message dead-lettered");
    let reason = header(&second.delivery.properties, "x-farine-error").unwrap();
    assert!(reason.contains("invalid type"), "{reason}");
    // The good message behind them was handled: poison blocks nothing.
    assert!(eventually(WAIT, || POISON_CALLS.load(Ordering::SeqCst) == 1).await);
    running.shutdown().await.unwrap();
    assert_eq!(raw.ready(queue).await, 0);
    clean(&raw, &[queue], &["t_poison.ex"]).await;
}

// ---------------------------------------------------------------- failures: retry, then DLQ

static FAILS: AtomicUsize = AtomicUsize::new(0);
static PANICS: AtomicUsize = AtomicUsize::new(0);
static AFTER: AtomicUsize = AtomicUsize::new(0);

#[derive(Default)]
struct Failing;

#[farine::service(name = "t_failing")]
impl Failing {
    #[amqp::consume(
        exchange = "t_failing.ex",
        routing_key = "fail",
        queue = "t_failing.fail"
    )]
    async fn always_fails(&self, _body: Value) -> Result<(), String> {
        FAILS.fetch_add(1, Ordering::SeqCst);
        Err("the ledger is closed".into())
    }

    #[amqp::consume(
        exchange = "t_failing.ex",
        routing_key = "panic",
        queue = "t_failing.panic"
    )]
    async fn panics_first(&self, body: Value) -> farine::Result<()> {
        if body["panic"] == json!(true) {
            PANICS.fetch_add(1, Ordering::SeqCst);
            panic!("boom");
        }
        AFTER.fetch_add(1, Ordering::SeqCst);
        Ok(())
    }
}

#[tokio::test]
async fn failing_handlers_are_retried_then_dead_lettered_and_keep_serving() {
    let raw = Raw::connect().await;
    let queues = ["t_failing.fail", "t_failing.panic"];
    clean(&raw, &queues, &["t_failing.ex"]).await;
    let settings =
        "[t_failing]\nretry_attempts = 2\nretry_delay = 100ms\nretry_max_delay = 100ms\n";
    let running = farine::Runtime::new(config(settings))
        .only(["t_failing"])
        .start()
        .await
        .expect("service starts");

    raw.publish("t_failing.ex", "fail", br#"{"n": 1}"#).await;
    let dead = raw
        .get("t_failing.fail.dlq", WAIT)
        .await
        .expect("dead-lettered after retries");
    assert_eq!(FAILS.load(Ordering::SeqCst), 3, "first attempt + 2 retries");
    assert_eq!(dead.delivery.data, br#"{"n": 1}"#);
    assert_eq!(
        header(&dead.delivery.properties, "x-farine-attempts").as_deref(),
        Some("3")
    );
    assert_eq!(
        header(&dead.delivery.properties, "x-farine-error").as_deref(),
        Some("the ledger is closed")
    );
    assert_eq!(
        header(&dead.delivery.properties, "x-farine-original-exchange").as_deref(),
        Some("t_failing.ex")
    );
    assert_eq!(
        header(&dead.delivery.properties, "x-farine-original-routing-key").as_deref(),
        Some("fail")
    );

    // A panic is a failure like an error: the entry point survives and keeps consuming.
    raw.publish("t_failing.ex", "panic", br#"{"panic": true}"#)
        .await;
    raw.publish("t_failing.ex", "panic", br#"{"panic": false}"#)
        .await;
    let dead = raw
        .get("t_failing.panic.dlq", WAIT)
        .await
        .expect("panicking message dead-lettered");
    let reason = header(&dead.delivery.properties, "x-farine-error").unwrap();
    assert!(reason.contains("panicked: boom"), "{reason}");
    assert_eq!(PANICS.load(Ordering::SeqCst), 3);
    assert!(eventually(WAIT, || AFTER.load(Ordering::SeqCst) == 1).await);

    running.shutdown().await.unwrap();
    for queue in queues {
        assert_eq!(raw.ready(queue).await, 0, "{queue} drained");
    }
    clean(&raw, &queues, &["t_failing.ex"]).await;
}

// ---------------------------------------------------------------- concurrency

static ACTIVE: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);
static FINISHED: AtomicUsize = AtomicUsize::new(0);

#[derive(Default)]
struct Parallel;

#[farine::service(name = "t_parallel")]
impl Parallel {
    #[amqp::consume(
        exchange = "t_parallel.ex",
        routing_key = "work",
        queue = "t_parallel.work",
        concurrency = 4
    )]
    async fn work(&self, _body: Value) -> farine::Result<()> {
        let now = ACTIVE.fetch_add(1, Ordering::SeqCst) + 1;
        PEAK.fetch_max(now, Ordering::SeqCst);
        tokio::time::sleep(Duration::from_millis(150)).await;
        ACTIVE.fetch_sub(1, Ordering::SeqCst);
        FINISHED.fetch_add(1, Ordering::SeqCst);
        Ok(())
    }
}

#[tokio::test]
async fn deliveries_run_concurrently_up_to_the_entry_points_concurrency() {
    let raw = Raw::connect().await;
    let queue = "t_parallel.work";
    clean(&raw, &[queue], &["t_parallel.ex"]).await;
    let running = farine::Runtime::new(config(""))
        .only(["t_parallel"])
        .start()
        .await
        .expect("service starts");
    for i in 0..12 {
        raw.publish(
            "t_parallel.ex",
            "work",
            json!({ "i": i }).to_string().as_bytes(),
        )
        .await;
    }
    let done = eventually(WAIT, || FINISHED.load(Ordering::SeqCst) == 12).await;
    assert!(
        done,
        "finished {} peak {}",
        FINISHED.load(Ordering::SeqCst),
        PEAK.load(Ordering::SeqCst)
    );
    assert_eq!(
        PEAK.load(Ordering::SeqCst),
        4,
        "prefetch = concurrency bounds the handlers in flight"
    );
    running.shutdown().await.unwrap();
    clean(&raw, &[queue], &["t_parallel.ex"]).await;
}

// ---------------------------------------------------------------- publish with confirms

#[derive(Default)]
struct Announcer;

#[farine::service(name = "t_announce")]
impl Announcer {
    #[amqp::publish(exchange = "t_announce.ex", routing_key = "news")]
    async fn announce(&self, publish: Publisher, text: &str) -> farine::Result<()> {
        publish.send(&json!({ "text": text })).await
    }

    #[amqp::publish(exchange = "t_announce.ex", routing_key = "nobody-listens")]
    async fn shout(&self, publish: Publisher) -> farine::Result<()> {
        publish.send(&json!("hello?")).await
    }
}

#[tokio::test]
async fn publishers_send_persistent_json_and_report_unroutable_messages() {
    let raw = Raw::connect().await;
    let queue = "t_announce.news";
    clean(&raw, &[queue], &["t_announce.ex"]).await;
    let running = farine::Runtime::new(config(""))
        .only(["t_announce"])
        .start()
        .await
        .expect("service starts");
    raw.bound_queue(queue, "t_announce.ex", "news").await;

    Announcer
        .announce("flour is in")
        .await
        .expect("confirmed publish");
    let got = raw.get(queue, WAIT).await.expect("published message");
    let body: Value = serde_json::from_slice(&got.delivery.data).unwrap();
    assert_eq!(body, json!({ "text": "flour is in" }));
    assert_eq!(got.delivery.properties.delivery_mode(), &Some(2));
    assert_eq!(
        got.delivery
            .properties
            .content_type()
            .as_ref()
            .map(|c| c.as_str()),
        Some("application/json")
    );

    let err = Announcer
        .shout()
        .await
        .expect_err("no queue is bound for this key");
    assert!(matches!(err, farine::Error::Unroutable { .. }), "{err}");
    assert!(err.to_string().contains("nobody-listens"), "{err}");

    running.shutdown().await.unwrap();
    clean(&raw, &[queue], &["t_announce.ex"]).await;
}

// ---------------------------------------------------------------- graceful shutdown

static SLOW_STARTED: AtomicUsize = AtomicUsize::new(0);
static SLOW_DONE: AtomicUsize = AtomicUsize::new(0);

#[derive(Default)]
struct Slow;

#[farine::service(name = "t_slow")]
impl Slow {
    #[amqp::consume(
        exchange = "t_slow.ex",
        routing_key = "slow",
        queue = "t_slow.slow",
        concurrency = 2
    )]
    async fn slow(&self, _body: Value) -> farine::Result<()> {
        SLOW_STARTED.fetch_add(1, Ordering::SeqCst);
        tokio::time::sleep(Duration::from_millis(700)).await;
        SLOW_DONE.fetch_add(1, Ordering::SeqCst);
        Ok(())
    }
}

#[tokio::test]
async fn shutdown_lets_in_flight_messages_finish_and_leaves_the_rest_queued() {
    let raw = Raw::connect().await;
    let queue = "t_slow.slow";
    clean(&raw, &[queue], &["t_slow.ex"]).await;
    let running = farine::Runtime::new(config("[t_slow]\nshutdown_grace = 10s\n"))
        .only(["t_slow"])
        .start()
        .await
        .expect("service starts");
    for i in 0..5 {
        raw.publish(
            "t_slow.ex",
            "slow",
            json!({ "i": i }).to_string().as_bytes(),
        )
        .await;
    }
    assert!(eventually(WAIT, || SLOW_STARTED.load(Ordering::SeqCst) == 2).await);
    running.shutdown().await.expect("graceful shutdown");
    // The two in flight finished and were acked; the three never started stay queued.
    assert_eq!(SLOW_DONE.load(Ordering::SeqCst), 2);
    assert_eq!(SLOW_STARTED.load(Ordering::SeqCst), 2);
    assert!(eventually(WAIT, || true).await);
    let mut left = 0;
    for _ in 0..50 {
        left = raw.ready(queue).await;
        if left == 3 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(left, 3);
    clean(&raw, &[queue], &["t_slow.ex"]).await;
}

// ---------------------------------------------------------------- enabled = false, bad config

#[derive(Default)]
struct Disabled;

#[farine::service(name = "t_disabled")]
impl Disabled {
    #[amqp::consume(exchange = "t_disabled.ex", routing_key = "x", queue = "t_disabled.x")]
    async fn never(&self, _body: Value) -> farine::Result<()> {
        Ok(())
    }
}

#[tokio::test]
async fn a_disabled_service_declares_and_consumes_nothing() {
    let raw = Raw::connect().await;
    clean(&raw, &["t_disabled.x"], &["t_disabled.ex"]).await;
    let running = farine::Runtime::new(config("[t_disabled]\nenabled = false\n"))
        .only(["t_disabled"])
        .start()
        .await
        .expect("start succeeds");
    assert!(running.services().is_empty());
    assert!(!raw.queue_exists("t_disabled.x").await);
    running.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_bad_value_stops_the_start_naming_file_section_and_key() {
    let err = farine::Runtime::new(config("[t_disabled]\nconcurrency = lots\n"))
        .only(["t_disabled"])
        .start()
        .await
        .err()
        .expect("start fails");
    let text = err.to_string();
    assert!(text.contains("test.ini"), "{text}");
    assert!(text.contains("[t_disabled]"), "{text}");
    assert!(text.contains("concurrency"), "{text}");
    assert!(text.contains("lots"), "{text}");
}

#[tokio::test]
async fn an_unknown_service_name_is_reported_with_the_known_ones() {
    let err = farine::Runtime::new(config(""))
        .only(["nope"])
        .start()
        .await
        .err()
        .expect("start fails");
    let text = err.to_string();
    assert!(
        text.contains("\"nope\"") && text.contains("t_consume_ok"),
        "{text}"
    );
}

// ---------------------------------------------------------------- shutdown under load

static LOAD_SEEN: Mutex<Vec<i64>> = Mutex::new(Vec::new());

#[derive(Default)]
struct Loaded;

#[farine::service(name = "t_load")]
impl Loaded {
    #[amqp::consume(
        exchange = "t_load.ex",
        routing_key = "work",
        queue = "t_load.work",
        concurrency = 50
    )]
    async fn work(&self, body: Value) -> farine::Result<()> {
        tokio::time::sleep(Duration::from_millis(30)).await;
        LOAD_SEEN.lock().unwrap().push(body["i"].as_i64().unwrap());
        Ok(())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_under_load_loses_nothing_and_repeats_nothing() {
    let raw = Raw::connect().await;
    let queue = "t_load.work";
    clean(&raw, &[queue], &["t_load.ex"]).await;
    let total = 600;
    // Queued before the service starts: how fast the test can publish must not decide how
    // much of the batch is done when the stop comes (publishing slower than the handlers
    // drain once let the whole batch finish first).
    raw.exchange("t_load.ex", lapin::ExchangeKind::Direct).await;
    raw.bound_queue(queue, "t_load.ex", "work").await;
    for i in 0..total {
        raw.publish(
            "t_load.ex",
            "work",
            json!({ "i": i }).to_string().as_bytes(),
        )
        .await;
    }
    let first = farine::Runtime::new(config("[t_load]\nshutdown_grace = 10s\n"))
        .only(["t_load"])
        .start()
        .await
        .unwrap();
    assert!(eventually(WAIT, || LOAD_SEEN.lock().unwrap().len() >= 100).await);
    // Stop with up to 50 handlers running and more prefetched: the running ones finish and
    // are acked, the rest go back to the queue unprocessed.
    first.shutdown().await.unwrap();
    let handled_first = LOAD_SEEN.lock().unwrap().len();
    assert!(handled_first < total, "stopped before the end of the batch");
    let second = farine::Runtime::new(config(""))
        .only(["t_load"])
        .start()
        .await
        .unwrap();
    assert!(
        eventually(Duration::from_secs(30), || LOAD_SEEN.lock().unwrap().len()
            >= total)
        .await
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    second.shutdown().await.unwrap();
    let mut seen = LOAD_SEEN.lock().unwrap().clone();
    seen.sort();
    assert_eq!(
        seen,
        (0..total as i64).collect::<Vec<_>>(),
        "each message handled exactly once"
    );
    clean(&raw, &[queue], &["t_load.ex"]).await;
}
