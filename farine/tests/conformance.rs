//! One conformance suite, two transports: every case below runs, as the same test body, on
//! the real RabbitMQ (`rabbitmq::<case>`, in the test virtual host) and on the in-process broker
//! (`memory::<case>`, a `memory://` broker of its own), through `farine::testing::TestKit`.
//! A case passes on both or the transports differ; where the memory broker cannot behave as
//! RabbitMQ does, the case says so.
//!
//! **Isolation.** Service names are global to the test binary (they register at link time),
//! so each case defines its own services (`conf_<case>`). The two variants of a case start
//! the same services and watch the same process-wide things (the kit's `handled` feed is by
//! entry point name, and the cases count calls in statics), so they take a per-case lock and
//! never overlap; different cases run in parallel. On RabbitMQ a case deletes the queues and
//! exchanges it declares, before (leftovers of a failed run) and after; the cases that need
//! PostgreSQL use tables of their own, dropped at the end.

mod support;

use farine::broker::Broker;
use farine::prelude::*;
use farine::testing::{Builder, Handling, TestKit};
use farine::transport::Properties;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use support::{pg, Raw, PG_URL};

/// How long anything that should happen may take.
const WAIT: Duration = Duration::from_secs(10);
/// How long to watch for something that should not happen.
const QUIET: Duration = Duration::from_millis(300);

// ---------------------------------------------------------------- the harness

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Transport {
    Amqp,
    Memory,
}

/// What a case body gets: the transport it runs on.
struct Env {
    transport: Transport,
}

impl Env {
    /// A test kit on this transport: the test virtual host, or a fresh in-process broker.
    fn kit(&self) -> Builder {
        match self.transport {
            Transport::Amqp => TestKit::broker(support::amqp_uri()),
            Transport::Memory => TestKit::memory(),
        }
    }

    /// Deletes `queues` and `exchanges` on RabbitMQ (a memory broker is the test's own and
    /// goes with the process).
    async fn clean(&self, queues: &[String], exchanges: &[&str]) {
        if self.transport == Transport::Amqp {
            let raw = Raw::connect().await;
            let queues: Vec<&str> = queues.iter().map(String::as_str).collect();
            raw.delete_queues(&queues).await;
            raw.delete_exchanges(exchanges).await;
            let _ = raw.connection.close(200, "OK".into()).await;
        }
    }
}

/// Another connection to the kit's broker: to publish raw bytes, count and peek at queues.
async fn probe(kit: &TestKit) -> Broker {
    let settings = kit.config().service("conf_probe").expect("probe settings");
    Broker::for_service(&settings)
        .await
        .expect("the probe connects to the kit's broker")
}

/// A consumer queue with its dead-letter queue and its delay queues: those of `delays`, and
/// those of the default retry policy (3 attempts from 1 s).
fn consumer_queues(queue: &str, delays: &[&str]) -> Vec<String> {
    let mut all = vec![queue.to_string(), format!("{queue}.dlq")];
    let defaults = ["1000ms", "2000ms", "4000ms"];
    all.extend(
        delays
            .iter()
            .chain(&defaults)
            .map(|delay| format!("{queue}.retry.{delay}")),
    );
    all
}

/// The request queues of RPC `methods` of `service`, with their dead-letter queues.
fn rpc_queues(service: &str, methods: &[&str]) -> Vec<String> {
    methods
        .iter()
        .flat_map(|method| {
            let queue = format!("{service}__{method}");
            [format!("{queue}.dlq"), queue]
        })
        .collect()
}

/// Polls `check` until it holds or [`WAIT`] has passed.
async fn eventually(check: impl FnMut() -> bool) -> bool {
    support::eventually(WAIT, check).await
}

/// Polls `queue`'s ready messages until there are `expected`; returns the last count.
async fn wait_count(broker: &Broker, queue: &str, expected: usize) -> Option<usize> {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let count = broker.message_count(queue).await.expect("message count");
        if count == Some(expected) || tokio::time::Instant::now() >= deadline {
            return count;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The dead letters of `queue` once there are `expected`.
async fn wait_dead_letters(
    kit: &TestKit,
    queue: &str,
    expected: usize,
) -> Vec<farine::dlq::DeadLetter> {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let letters = kit.dead_letters(queue).await.expect("dead letters");
        if letters.len() >= expected || tokio::time::Instant::now() >= deadline {
            return letters;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Runs one case on one transport, holding the case's lock.
async fn run<F, Fut>(transport: Transport, case: &'static str, body: F)
where
    F: FnOnce(Env) -> Fut,
    Fut: Future<Output = ()>,
{
    static LOCKS: Mutex<BTreeMap<&'static str, Arc<tokio::sync::Mutex<()>>>> =
        Mutex::new(BTreeMap::new());
    let lock = LOCKS
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
        .entry(case)
        .or_default()
        .clone();
    let _case = lock.lock().await;
    body(Env { transport }).await;
}

/// `mod rabbitmq` and `mod memory` (not `amqp`: the prelude's `amqp` is used by the services), each with one test per case calling the case's body.
macro_rules! conformance {
    ($($case:ident),* $(,)?) => {
        mod rabbitmq {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $case() {
                    super::run(super::Transport::Amqp, stringify!($case), super::$case).await;
                }
            )*
        }

        mod memory {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $case() {
                    super::run(super::Transport::Memory, stringify!($case), super::$case).await;
                }
            )*
        }
    };
}

conformance!(
    publish_and_consume,
    topic_and_fanout_routing,
    rpc_unary,
    rpc_streaming,
    rpc_errors,
    deadlines,
    unknown_service_and_method_fail_at_once,
    dropped_stream_is_cancelled,
    slow_reader_holds_the_stream_back,
    retries_then_dead_letter,
    poison_is_parked_without_retries,
    concurrency_limit,
    shutdown_drains_in_flight,
    broadcast_after_commit,
    ack_after_commit,
);

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
struct Point {
    x: i64,
    y: i64,
}

// ---------------------------------------------------------------- publish and consume

static PUBSUB_SEEN: Mutex<Vec<Point>> = Mutex::new(Vec::new());

#[derive(Default)]
struct PubSub;

#[farine::service(name = "conf_pubsub")]
impl PubSub {
    /// One at a time, so the order of arrival is the order of publication.
    #[amqp::consume(
        exchange = "conf_pubsub.in",
        routing_key = "points",
        queue = "conf_pubsub.points",
        concurrency = 1
    )]
    async fn on_point(&self, point: Point) -> farine::Result<()> {
        lock(&PUBSUB_SEEN).push(point.clone());
        self.moved(Point {
            x: point.x + 1,
            y: point.y,
        })
        .await
    }

    #[amqp::publish(exchange = "conf_pubsub.out", routing_key = "moved")]
    async fn moved(&self, publish: Publisher, point: Point) -> farine::Result<()> {
        publish.send(&point).await
    }
}

async fn publish_and_consume(env: Env) {
    let queue = "conf_pubsub.points";
    let queues = consumer_queues(queue, &[]);
    let exchanges = ["conf_pubsub.in", "conf_pubsub.out"];
    env.clean(&queues, &exchanges).await;
    lock(&PUBSUB_SEEN).clear();
    let kit = env
        .kit()
        .service("conf_pubsub")
        .start()
        .await
        .expect("conf_pubsub starts");
    let probe = probe(&kit).await;
    let moved = kit
        .capture("conf_pubsub.out", "moved")
        .await
        .expect("capture");
    let handled = kit.handled("conf_pubsub.on_point");
    let points: Vec<Point> = (0..5).map(|i| Point { x: i, y: -i }).collect();
    for point in &points {
        kit.publish("conf_pubsub.in", "points", point)
            .await
            .expect("routed to the consumer's queue");
    }
    for _ in &points {
        assert_eq!(handled.wait(WAIT).await.expect("handled"), Handling::Done);
    }
    assert_eq!(*lock(&PUBSUB_SEEN), points, "received in order, decoded");
    for point in &points {
        assert_eq!(
            moved.next(WAIT).await,
            Some(json!({"x": point.x + 1, "y": point.y})),
            "what the handler published"
        );
    }
    assert_eq!(moved.next(QUIET).await, None, "one publish per message");

    // A mandatory message no queue receives is refused, naming where it went.
    let err = kit
        .publish("conf_pubsub.in", "nobody-listens", &1)
        .await
        .expect_err("unroutable");
    assert!(
        matches!(&err, farine::Error::Unroutable { exchange, routing_key }
            if exchange == "conf_pubsub.in" && routing_key == "nobody-listens"),
        "{err:?}"
    );
    // So is one to an exchange that does not exist (RabbitMQ closes the publishing channel
    // for it: farine opens another, so the publishes after it still work).
    let err = kit
        .publish("conf_pubsub.missing", "points", &1)
        .await
        .expect_err("no such exchange");
    assert!(err.to_string().contains("conf_pubsub.missing"), "{err}");
    // The kit still publishes after those refusals.
    kit.publish("conf_pubsub.in", "points", &Point { x: 9, y: 9 })
        .await
        .expect("publishes again");
    assert_eq!(handled.wait(WAIT).await.expect("handled"), Handling::Done);

    kit.stop().await.expect("clean stop");
    // Acked: nothing is left in the queue, nothing parked.
    assert_eq!(wait_count(&probe, queue, 0).await, Some(0));
    assert_eq!(
        probe
            .message_count(&format!("{queue}.dlq"))
            .await
            .expect("count"),
        Some(0)
    );
    probe.close().await;
    env.clean(&queues, &exchanges).await;
}

// ---------------------------------------------------------------- routing

static ROUTED: Mutex<Vec<(&str, String)>> = Mutex::new(Vec::new());

#[derive(Default)]
struct Routing;

#[farine::service(name = "conf_routing")]
impl Routing {
    #[amqp::consume(
        exchange = "conf_routing.topic",
        exchange_type = "topic",
        routing_key = "stock.*.nyse",
        queue = "conf_routing.star"
    )]
    async fn on_star(&self, tag: String) -> farine::Result<()> {
        lock(&ROUTED).push(("star", tag));
        Ok(())
    }

    #[amqp::consume(
        exchange = "conf_routing.topic",
        exchange_type = "topic",
        routing_key = "stock.#",
        queue = "conf_routing.hash"
    )]
    async fn on_hash(&self, tag: String) -> farine::Result<()> {
        lock(&ROUTED).push(("hash", tag));
        Ok(())
    }

    #[amqp::consume(
        exchange = "conf_routing.fan",
        exchange_type = "fanout",
        routing_key = "a",
        queue = "conf_routing.fan_a"
    )]
    async fn on_fan_a(&self, tag: String) -> farine::Result<()> {
        lock(&ROUTED).push(("fan_a", tag));
        Ok(())
    }

    #[amqp::consume(
        exchange = "conf_routing.fan",
        exchange_type = "fanout",
        routing_key = "b",
        queue = "conf_routing.fan_b"
    )]
    async fn on_fan_b(&self, tag: String) -> farine::Result<()> {
        lock(&ROUTED).push(("fan_b", tag));
        Ok(())
    }
}

async fn topic_and_fanout_routing(env: Env) {
    let queues: Vec<String> = ["star", "hash", "fan_a", "fan_b"]
        .iter()
        .flat_map(|q| consumer_queues(&format!("conf_routing.{q}"), &[]))
        .collect();
    let exchanges = ["conf_routing.topic", "conf_routing.fan"];
    env.clean(&queues, &exchanges).await;
    lock(&ROUTED).clear();
    let kit = env
        .kit()
        .service("conf_routing")
        .start()
        .await
        .expect("conf_routing starts");
    // `*` is exactly one word, `#` zero or more.
    for key in [
        "stock.usd.nyse",
        "stock.eur.lse",
        "stock.nyse",
        "stock",
        "stock.a.b.nyse",
    ] {
        kit.publish("conf_routing.topic", key, &key)
            .await
            .expect("routed");
    }
    let err = kit
        .publish("conf_routing.topic", "bond.usd.nyse", &"bond.usd.nyse")
        .await
        .expect_err("no binding matches");
    assert!(matches!(err, farine::Error::Unroutable { .. }), "{err:?}");
    // A fanout exchange ignores routing keys (theirs and the binding's).
    kit.publish("conf_routing.fan", "whatever", &"fan")
        .await
        .expect("routed");
    let mut expected = vec![
        ("star", "stock.usd.nyse".to_string()),
        ("hash", "stock.usd.nyse".to_string()),
        ("hash", "stock.eur.lse".to_string()),
        ("hash", "stock.nyse".to_string()),
        ("hash", "stock".to_string()),
        ("hash", "stock.a.b.nyse".to_string()),
        ("fan_a", "fan".to_string()),
        ("fan_b", "fan".to_string()),
    ];
    expected.sort();
    assert!(
        eventually(|| lock(&ROUTED).len() >= expected.len()).await,
        "{:?}",
        lock(&ROUTED)
    );
    tokio::time::sleep(QUIET).await;
    let mut routed = lock(&ROUTED).clone();
    routed.sort();
    assert_eq!(routed, expected);
    kit.stop().await.expect("clean stop");
    env.clean(&queues, &exchanges).await;
}

// ---------------------------------------------------------------- RPC, unary

#[derive(Default)]
struct Unary;

#[farine::service(name = "conf_unary")]
impl Unary {
    #[rpc::method]
    async fn add(&self, a: i64, b: i64) -> i64 {
        a + b
    }

    #[rpc::method]
    async fn greet(&self, name: String, greeting: Option<String>) -> String {
        format!("{}, {name}", greeting.unwrap_or_else(|| "hello".into()))
    }

    #[rpc::method]
    async fn nothing(&self) {}
}

async fn rpc_unary(env: Env) {
    let queues = rpc_queues("conf_unary", &["add", "greet", "nothing"]);
    env.clean(&queues, &["conf_unary"]).await;
    let kit = env
        .kit()
        .service("conf_unary")
        .set("conf_unary", "rpc_timeout", "5s")
        .start()
        .await
        .expect("conf_unary starts");
    let unary = UnaryClient::connect(kit.config())
        .await
        .expect("typed client");
    assert_eq!(unary.add(2, 3).await.expect("add"), 5);
    assert_eq!(
        unary.greet("ada".into(), None).await.expect("greet"),
        "hello, ada"
    );
    unary.nothing().await.expect("nothing");

    let client = kit.client().await.expect("untyped client");
    assert_eq!(
        client
            .call("conf_unary", "add", json!([40, 2]))
            .await
            .expect("positional"),
        json!(42)
    );
    assert_eq!(
        client
            .call(
                "conf_unary",
                "greet",
                json!({"name": "bob", "greeting": "hi"})
            )
            .await
            .expect("by name"),
        json!("hi, bob")
    );
    let err = client
        .call("conf_unary", "add", json!(["one", 2]))
        .await
        .expect_err("bad arguments");
    assert_eq!(err.remote_kind(), Some("bad_arguments"), "{err}");
    assert!(err.to_string().contains("argument `a`"), "{err}");

    // Concurrent calls each get their own answer.
    let calls = (0..100i64).map(|i| {
        let unary = unary.clone();
        async move { unary.add(i, i).await.expect("concurrent add") }
    });
    let sums = futures::future::join_all(calls).await;
    assert_eq!(sums, (0..100i64).map(|i| 2 * i).collect::<Vec<_>>());

    kit.stop().await.expect("clean stop");
    env.clean(&queues, &["conf_unary"]).await;
}

// ---------------------------------------------------------------- RPC, streaming

#[derive(Debug, Serialize, Deserialize, PartialEq)]
pub enum ConfError {
    DivisionByZero { numerator: i64 },
}

impl std::fmt::Display for ConfError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ConfError::DivisionByZero { numerator } => {
                write!(f, "cannot divide {numerator} by zero")
            }
        }
    }
}

#[derive(Default)]
struct Streaming;

#[farine::service(name = "conf_stream")]
impl Streaming {
    #[rpc::method]
    fn count(&self, n: u32) -> impl Stream<Item = u32> + Send + 'static {
        futures::stream::iter(0..n)
    }

    #[rpc::method]
    fn broken(&self) -> impl Stream<Item = Result<u32, ConfError>> + Send + 'static {
        futures::stream::iter(vec![
            Ok(1),
            Ok(2),
            Err(ConfError::DivisionByZero { numerator: 3 }),
            Ok(4),
        ])
    }
}

async fn rpc_streaming(env: Env) {
    let queues = rpc_queues("conf_stream", &["count", "broken"]);
    env.clean(&queues, &["conf_stream"]).await;
    let kit = env
        .kit()
        .service("conf_stream")
        .set("conf_stream", "rpc_timeout", "5s")
        .start()
        .await
        .expect("conf_stream starts");
    let streaming = StreamingClient::connect(kit.config())
        .await
        .expect("typed client");
    let items: Vec<u32> = streaming
        .count(500)
        .await
        .expect("stream starts")
        .map(|item| item.expect("item"))
        .collect()
        .await;
    assert_eq!(items, (0..500).collect::<Vec<_>>(), "every item, in order");
    let empty: Vec<farine::Result<u32>> = streaming.count(0).await.expect("empty").collect().await;
    assert!(empty.is_empty(), "{empty:?}");

    // Two streams at once do not mix.
    let (a, b) = tokio::join!(
        async {
            streaming
                .count(50)
                .await
                .expect("a")
                .map(|i| i.expect("a item"))
                .collect::<Vec<_>>()
                .await
        },
        async {
            streaming
                .count(70)
                .await
                .expect("b")
                .map(|i| i.expect("b item"))
                .collect::<Vec<_>>()
                .await
        }
    );
    assert_eq!(a, (0..50).collect::<Vec<_>>());
    assert_eq!(b, (0..70).collect::<Vec<_>>());

    // An error item comes typed and ends the stream.
    let broken: Vec<farine::Result<u32>> =
        streaming.broken().await.expect("broken").collect().await;
    assert_eq!(broken.len(), 3, "{broken:?}");
    assert_eq!(broken[0].as_ref().expect("first"), &1);
    assert_eq!(broken[1].as_ref().expect("second"), &2);
    let err = broken[2].as_ref().expect_err("the error item");
    assert_eq!(
        err.service_error::<ConfError>(),
        Some(ConfError::DivisionByZero { numerator: 3 })
    );

    // The untyped client sees the same items.
    let client = kit.client().await.expect("untyped client");
    let items: Vec<Value> = client
        .call_stream("conf_stream", "count", json!([3]))
        .await
        .expect("untyped stream")
        .map(|item| item.expect("item"))
        .collect()
        .await;
    assert_eq!(items, [json!(0), json!(1), json!(2)]);

    kit.stop().await.expect("clean stop");
    env.clean(&queues, &["conf_stream"]).await;
}

// ---------------------------------------------------------------- RPC errors

static ERRORS_PANICS: AtomicUsize = AtomicUsize::new(0);

#[derive(Default)]
struct Errors;

#[farine::service(name = "conf_errors")]
impl Errors {
    #[rpc::method]
    async fn div(&self, a: i64, b: i64) -> Result<i64, ConfError> {
        if b == 0 {
            return Err(ConfError::DivisionByZero { numerator: a });
        }
        Ok(a / b)
    }

    #[rpc::method]
    async fn explode(&self) -> farine::Result<i64> {
        ERRORS_PANICS.fetch_add(1, Ordering::SeqCst);
        panic!("kaboom")
    }

    #[rpc::method]
    async fn fails(&self) -> farine::Result<i64> {
        Err(farine::Error::Runtime("the abacus is broken".into()))
    }
}

async fn rpc_errors(env: Env) {
    let queues = rpc_queues("conf_errors", &["div", "explode", "fails"]);
    env.clean(&queues, &["conf_errors"]).await;
    ERRORS_PANICS.store(0, Ordering::SeqCst);
    let kit = env
        .kit()
        .service("conf_errors")
        .set("conf_errors", "rpc_timeout", "5s")
        .start()
        .await
        .expect("conf_errors starts");
    let errors = ErrorsClient::connect(kit.config())
        .await
        .expect("typed client");
    assert_eq!(errors.div(7, 2).await.expect("div"), 3);

    // The service's own error comes back as its type, with its data.
    let err = errors.div(1, 0).await.expect_err("division by zero");
    assert_eq!(err.remote_kind(), Some("service"), "{err}");
    assert_eq!(
        err.service_error::<ConfError>(),
        Some(ConfError::DivisionByZero { numerator: 1 })
    );
    let text = err.to_string();
    assert!(
        text.contains("conf_errors.div") && text.contains("cannot divide 1 by zero"),
        "{text}"
    );

    // A panic is answered as an error (not a timeout), and the service keeps serving.
    for _ in 0..3 {
        let started = Instant::now();
        let err = errors.explode().await.expect_err("panics");
        assert_eq!(err.remote_kind(), Some("internal"), "{err}");
        assert!(err.to_string().contains("kaboom"), "{err}");
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "answered at once"
        );
    }
    assert_eq!(ERRORS_PANICS.load(Ordering::SeqCst), 3);
    let err = errors.fails().await.expect_err("fails");
    assert!(err.to_string().contains("the abacus is broken"), "{err}");
    assert_eq!(errors.div(9, 3).await.expect("still serving"), 3);

    kit.stop().await.expect("clean stop");
    env.clean(&queues, &["conf_errors"]).await;
}

// ---------------------------------------------------------------- deadlines

#[derive(Default)]
struct Deadline;

#[farine::service(name = "conf_deadline")]
impl Deadline {
    #[rpc::method]
    async fn sleep(&self, millis: u64) -> u64 {
        tokio::time::sleep(Duration::from_millis(millis)).await;
        millis
    }

    /// One item at once, the next after `millis`.
    #[rpc::method]
    fn slow_stream(&self, millis: u64) -> impl Stream<Item = u32> + Send + 'static {
        futures::stream::unfold(0u32, move |n| async move {
            match n {
                0 => Some((0, 1)),
                1 => {
                    tokio::time::sleep(Duration::from_millis(millis)).await;
                    Some((1, 2))
                }
                _ => None,
            }
        })
    }
}

async fn deadlines(env: Env) {
    let queues = rpc_queues("conf_deadline", &["sleep", "slow_stream"]);
    env.clean(&queues, &["conf_deadline"]).await;
    let timeout = Duration::from_millis(300);
    let kit = env
        .kit()
        .service("conf_deadline")
        .set("conf_deadline", "rpc_timeout", "300ms")
        .start()
        .await
        .expect("conf_deadline starts");
    let deadline = DeadlineClient::connect(kit.config())
        .await
        .expect("typed client");
    assert_eq!(deadline.sleep(10).await.expect("in time"), 10);

    let started = Instant::now();
    let err = deadline.sleep(1_000).await.expect_err("too slow");
    let elapsed = started.elapsed();
    assert!(
        matches!(&err, farine::Error::Timeout { call, after } if call.contains("conf_deadline.sleep") && *after == timeout),
        "{err:?}"
    );
    assert!(err.to_string().contains("conf_deadline.sleep"), "{err}");
    assert!(
        elapsed >= timeout && elapsed < Duration::from_millis(900),
        "timed out after {elapsed:?}"
    );

    // A stream's next item has the same deadline.
    let mut slow = deadline.slow_stream(1_000).await.expect("stream starts");
    assert_eq!(slow.next().await.expect("first").expect("first item"), 0);
    let started = Instant::now();
    let err = slow
        .next()
        .await
        .expect("an error, not the end")
        .expect_err("the second item is late");
    assert!(matches!(err, farine::Error::Timeout { .. }), "{err:?}");
    assert!(
        started.elapsed() < Duration::from_millis(900),
        "{:?}",
        started.elapsed()
    );
    drop(slow);
    // The late replies do not confuse the next call.
    assert_eq!(deadline.sleep(5).await.expect("in time"), 5);

    kit.stop().await.expect("clean stop");
    env.clean(&queues, &["conf_deadline"]).await;
}

// ---------------------------------------------------------------- unknown service, method

#[derive(Default)]
struct Known;

#[farine::service(name = "conf_known")]
impl Known {
    #[rpc::method]
    async fn ping(&self) -> String {
        "pong".into()
    }
}

async fn unknown_service_and_method_fail_at_once(env: Env) {
    let queues = rpc_queues("conf_known", &["ping"]);
    env.clean(&queues, &["conf_known", "conf_nobody"]).await;
    let kit = env
        .kit()
        .service("conf_known")
        .set("DEFAULT", "rpc_timeout", "5s")
        .start()
        .await
        .expect("conf_known starts");
    let client = kit.client().await.expect("untyped client");
    let at_once = Duration::from_secs(1);

    let started = Instant::now();
    let err = client
        .call("conf_nobody", "ping", json!([]))
        .await
        .expect_err("no such service");
    assert!(
        matches!(&err, farine::Error::UnknownService { service } if service == "conf_nobody"),
        "{err:?}"
    );
    assert!(started.elapsed() < at_once, "{:?}", started.elapsed());

    let started = Instant::now();
    let err = client
        .call("conf_known", "nope", json!([]))
        .await
        .expect_err("no such method");
    assert!(
        matches!(&err, farine::Error::UnknownMethod { service, method } if service == "conf_known" && method == "nope"),
        "{err:?}"
    );
    assert!(err.to_string().contains("conf_known.nope"), "{err}");
    assert!(started.elapsed() < at_once, "{:?}", started.elapsed());

    let started = Instant::now();
    let err = client
        .call_stream("conf_known", "nope_stream", json!([]))
        .await
        .err()
        .expect("no such streaming method");
    assert!(
        matches!(err, farine::Error::UnknownMethod { .. }),
        "{err:?}"
    );
    assert!(started.elapsed() < at_once, "{:?}", started.elapsed());

    // The known method answers.
    assert_eq!(
        client
            .call("conf_known", "ping", json!([]))
            .await
            .expect("ping"),
        json!("pong")
    );
    kit.stop().await.expect("clean stop");
    env.clean(&queues, &["conf_known"]).await;
}

// ---------------------------------------------------------------- cancelling a stream

static CANCEL_PRODUCED: AtomicUsize = AtomicUsize::new(0);

#[derive(Default)]
struct Cancel;

#[farine::service(name = "conf_cancel")]
impl Cancel {
    #[rpc::method]
    fn endless(&self) -> impl Stream<Item = u64> + Send + 'static {
        futures::stream::unfold(0u64, |n| async move {
            tokio::time::sleep(Duration::from_millis(5)).await;
            CANCEL_PRODUCED.fetch_add(1, Ordering::SeqCst);
            Some((n, n + 1))
        })
    }
}

async fn dropped_stream_is_cancelled(env: Env) {
    let queues = rpc_queues("conf_cancel", &["endless"]);
    env.clean(&queues, &["conf_cancel"]).await;
    CANCEL_PRODUCED.store(0, Ordering::SeqCst);
    let kit = env
        .kit()
        .service("conf_cancel")
        .set("conf_cancel", "rpc_timeout", "5s")
        .set("conf_cancel", "shutdown_grace", "10s")
        .start()
        .await
        .expect("conf_cancel starts");
    let cancel = CancelClient::connect(kit.config())
        .await
        .expect("typed client");
    let mut endless = cancel.endless().await.expect("stream starts");
    for expected in 0..3u64 {
        assert_eq!(
            endless.next().await.expect("an item").expect("a number"),
            expected
        );
    }
    drop(endless);
    tokio::time::sleep(QUIET).await;
    let after_drop = CANCEL_PRODUCED.load(Ordering::SeqCst);
    tokio::time::sleep(QUIET).await;
    assert_eq!(
        CANCEL_PRODUCED.load(Ordering::SeqCst),
        after_drop,
        "the server stopped producing"
    );
    // The service serves the next stream.
    let mut again = cancel.endless().await.expect("stream starts again");
    assert_eq!(again.next().await.expect("an item").expect("a number"), 0);
    // Dropped as the service stops: the cancel arrives during the drain and still stops the
    // stream, which does not hold the shutdown for its grace (10 s).
    drop(again);
    let stopping = Instant::now();
    kit.stop().await.expect("clean stop");
    assert!(
        stopping.elapsed() < Duration::from_secs(5),
        "the dropped stream held the shutdown for {:?}",
        stopping.elapsed()
    );
    env.clean(&queues, &["conf_cancel"]).await;
}

// ---------------------------------------------------------------- a reader that pauses

static SLOW_PRODUCED: AtomicUsize = AtomicUsize::new(0);

#[derive(Default)]
struct Slow;

#[farine::service(name = "conf_slow")]
impl Slow {
    #[rpc::method]
    fn numbers(&self, n: u64) -> impl Stream<Item = u64> + Send + 'static {
        futures::stream::iter(0..n).inspect(|_| {
            SLOW_PRODUCED.fetch_add(1, Ordering::SeqCst);
        })
    }
}

/// The server produces no further ahead of the reader than the caller's credit (1,024 items):
/// a reader that pauses holds the stream back, and then gets every item in order.
async fn slow_reader_holds_the_stream_back(env: Env) {
    let queues = rpc_queues("conf_slow", &["numbers"]);
    env.clean(&queues, &["conf_slow"]).await;
    SLOW_PRODUCED.store(0, Ordering::SeqCst);
    let kit = env
        .kit()
        .service("conf_slow")
        .start()
        .await
        .expect("conf_slow starts");
    let slow = SlowClient::connect(kit.config())
        .await
        .expect("typed client");
    let total = 5_000u64; // several windows
    let mut numbers = slow.numbers(total).await.expect("stream starts");
    assert_eq!(numbers.next().await.expect("an item").expect("a number"), 0);
    tokio::time::sleep(QUIET).await;
    let ahead = SLOW_PRODUCED.load(Ordering::SeqCst);
    assert!(
        (1..=1024).contains(&ahead),
        "the server ran {ahead} items ahead of a reader that read 1"
    );
    let mut expected = 1;
    while let Some(item) = numbers.next().await {
        assert_eq!(item.expect("a number"), expected);
        expected += 1;
    }
    assert_eq!(expected, total, "every item arrived");
    assert_eq!(SLOW_PRODUCED.load(Ordering::SeqCst) as u64, total);
    kit.stop().await.expect("clean stop");
    env.clean(&queues, &["conf_slow"]).await;
}

// ---------------------------------------------------------------- retries, then parked

static RETRY_CALLS: AtomicUsize = AtomicUsize::new(0);

#[derive(Default)]
struct Retry;

#[farine::service(name = "conf_retry")]
impl Retry {
    #[amqp::consume(
        exchange = "conf_retry.ex",
        routing_key = "jobs",
        queue = "conf_retry.jobs"
    )]
    async fn on_job(&self, job: Value) -> Result<(), String> {
        RETRY_CALLS.fetch_add(1, Ordering::SeqCst);
        Err(format!("job {job} refused"))
    }
}

async fn retries_then_dead_letter(env: Env) {
    let queue = "conf_retry.jobs";
    let queues = consumer_queues(queue, &["20ms", "40ms"]);
    env.clean(&queues, &["conf_retry.ex"]).await;
    RETRY_CALLS.store(0, Ordering::SeqCst);
    let kit = env
        .kit()
        .service("conf_retry")
        .set("conf_retry", "retry_attempts", "2")
        .set("conf_retry", "retry_delay", "20ms")
        .set("conf_retry", "retry_max_delay", "40ms")
        .start()
        .await
        .expect("conf_retry starts");
    let probe = probe(&kit).await;
    let handled = kit.handled("conf_retry.on_job");
    let started = Instant::now();
    kit.publish("conf_retry.ex", "jobs", &json!({"n": 1}))
        .await
        .expect("routed");
    for attempt in 1..=3 {
        let outcome = handled.wait(WAIT).await.expect("handled");
        assert!(
            matches!(&outcome, Handling::Failed(reason) if reason.contains("refused")),
            "attempt {attempt}: {outcome:?}"
        );
    }
    let parked = wait_dead_letters(&kit, queue, 1).await;
    // Two retries, 20 ms then 40 ms later.
    assert!(
        started.elapsed() >= Duration::from_millis(60),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(parked.len(), 1, "{parked:?}");
    let dead = &parked[0];
    assert_eq!(
        serde_json::from_slice::<Value>(&dead.body).expect("JSON body"),
        json!({"n": 1})
    );
    assert_eq!(dead.attempts, 3, "first attempt + 2 retries");
    assert_eq!(dead.error.as_deref(), Some(r#"job {"n":1} refused"#));
    assert_eq!(dead.original_exchange.as_deref(), Some("conf_retry.ex"));
    assert_eq!(dead.original_routing_key.as_deref(), Some("jobs"));
    assert!(dead.failed_at.is_some());
    tokio::time::sleep(QUIET).await;
    assert_eq!(RETRY_CALLS.load(Ordering::SeqCst), 3, "no more attempts");
    assert_eq!(
        kit.dead_letters(queue).await.expect("dead letters").len(),
        1
    );
    kit.stop().await.expect("clean stop");
    assert_eq!(wait_count(&probe, queue, 0).await, Some(0));
    for delay in ["20ms", "40ms"] {
        let delay_queue = format!("{queue}.retry.{delay}");
        assert_eq!(
            probe.message_count(&delay_queue).await.expect("count"),
            Some(0),
            "{delay_queue}"
        );
    }
    probe.close().await;
    env.clean(&queues, &["conf_retry.ex"]).await;
}

// ---------------------------------------------------------------- poison

static POISON_CALLS: AtomicUsize = AtomicUsize::new(0);

#[derive(Default)]
struct Poison;

#[farine::service(name = "conf_poison")]
impl Poison {
    #[amqp::consume(
        exchange = "conf_poison.ex",
        routing_key = "points",
        queue = "conf_poison.points"
    )]
    async fn on_point(&self, _point: Point) -> farine::Result<()> {
        POISON_CALLS.fetch_add(1, Ordering::SeqCst);
        Ok(())
    }
}

async fn poison_is_parked_without_retries(env: Env) {
    let queue = "conf_poison.points";
    let queues = consumer_queues(queue, &["20ms"]);
    env.clean(&queues, &["conf_poison.ex"]).await;
    POISON_CALLS.store(0, Ordering::SeqCst);
    let kit = env
        .kit()
        .service("conf_poison")
        .set("conf_poison", "retry_attempts", "3")
        .set("conf_poison", "retry_delay", "20ms")
        .set("conf_poison", "retry_max_delay", "20ms")
        .start()
        .await
        .expect("conf_poison starts");
    let probe = probe(&kit).await;
    let handled = kit.handled("conf_poison.on_point");
    probe
        .publish(
            "conf_poison.ex",
            "points",
            b"this is not json",
            Properties::json(),
            true,
        )
        .await
        .expect("routed");
    let outcome = handled.wait(WAIT).await.expect("handled");
    assert!(matches!(outcome, Handling::Poison(_)), "{outcome:?}");
    kit.publish("conf_poison.ex", "points", &json!({"x": "one"}))
        .await
        .expect("routed");
    let outcome = handled.wait(WAIT).await.expect("handled");
    assert!(matches!(outcome, Handling::Poison(_)), "{outcome:?}");
    let parked = wait_dead_letters(&kit, queue, 2).await;
    assert_eq!(parked.len(), 2, "{parked:?}");
    assert_eq!(parked[0].body, b"this is not json");
    assert_eq!(parked[1].body, br#"{"x":"one"}"#);
    for dead in &parked {
        assert_eq!(dead.attempts, 1, "parked at once: {dead:?}");
        let reason = dead.error.as_deref().unwrap_or_default();
        assert!(reason.contains("does not decode"), "{reason}");
        assert_eq!(dead.original_exchange.as_deref(), Some("conf_poison.ex"));
    }
    // Never through a delay queue: the broker wrote no x-death.
    let raw = probe.peek(&format!("{queue}.dlq"), 10).await.expect("peek");
    for message in &raw {
        assert!(
            !message.properties.headers.contains_key("x-death"),
            "{message:?}"
        );
    }
    // The good message behind them is handled: poison blocks nothing.
    kit.publish("conf_poison.ex", "points", &Point { x: 1, y: 2 })
        .await
        .expect("routed");
    assert_eq!(handled.wait(WAIT).await.expect("handled"), Handling::Done);
    assert_eq!(POISON_CALLS.load(Ordering::SeqCst), 1);
    kit.stop().await.expect("clean stop");
    assert_eq!(wait_count(&probe, queue, 0).await, Some(0));
    assert_eq!(
        probe
            .message_count(&format!("{queue}.retry.20ms"))
            .await
            .expect("count"),
        Some(0)
    );
    probe.close().await;
    env.clean(&queues, &["conf_poison.ex"]).await;
}

// ---------------------------------------------------------------- concurrency

static CONC_IN_FLIGHT: AtomicUsize = AtomicUsize::new(0);
static CONC_PEAK: AtomicUsize = AtomicUsize::new(0);

#[derive(Default)]
struct Concurrency;

#[farine::service(name = "conf_conc")]
impl Concurrency {
    #[amqp::consume(
        exchange = "conf_conc.ex",
        routing_key = "work",
        queue = "conf_conc.work",
        concurrency = 3
    )]
    async fn on_work(&self, _n: u32) -> farine::Result<()> {
        let now = CONC_IN_FLIGHT.fetch_add(1, Ordering::SeqCst) + 1;
        CONC_PEAK.fetch_max(now, Ordering::SeqCst);
        tokio::time::sleep(Duration::from_millis(100)).await;
        CONC_IN_FLIGHT.fetch_sub(1, Ordering::SeqCst);
        Ok(())
    }
}

async fn concurrency_limit(env: Env) {
    let queue = "conf_conc.work";
    let queues = consumer_queues(queue, &[]);
    env.clean(&queues, &["conf_conc.ex"]).await;
    CONC_IN_FLIGHT.store(0, Ordering::SeqCst);
    CONC_PEAK.store(0, Ordering::SeqCst);
    let kit = env
        .kit()
        .service("conf_conc")
        .start()
        .await
        .expect("conf_conc starts");
    let handled = kit.handled("conf_conc.on_work");
    for n in 0..12u32 {
        kit.publish("conf_conc.ex", "work", &n)
            .await
            .expect("routed");
    }
    for _ in 0..12 {
        assert_eq!(handled.wait(WAIT).await.expect("handled"), Handling::Done);
    }
    assert_eq!(CONC_PEAK.load(Ordering::SeqCst), 3, "peak in flight");
    kit.stop().await.expect("clean stop");
    env.clean(&queues, &["conf_conc.ex"]).await;
}

// ---------------------------------------------------------------- shutdown drains

static DRAIN_STARTED: AtomicUsize = AtomicUsize::new(0);
static DRAIN_FINISHED: AtomicUsize = AtomicUsize::new(0);

#[derive(Default)]
struct Drain;

#[farine::service(name = "conf_drain")]
impl Drain {
    #[amqp::consume(
        exchange = "conf_drain.ex",
        routing_key = "work",
        queue = "conf_drain.work",
        concurrency = 2
    )]
    async fn on_work(&self, _n: u32) -> farine::Result<()> {
        DRAIN_STARTED.fetch_add(1, Ordering::SeqCst);
        tokio::time::sleep(Duration::from_millis(400)).await;
        DRAIN_FINISHED.fetch_add(1, Ordering::SeqCst);
        Ok(())
    }
}

async fn shutdown_drains_in_flight(env: Env) {
    let queue = "conf_drain.work";
    let queues = consumer_queues(queue, &[]);
    env.clean(&queues, &["conf_drain.ex"]).await;
    DRAIN_STARTED.store(0, Ordering::SeqCst);
    DRAIN_FINISHED.store(0, Ordering::SeqCst);
    let kit = env
        .kit()
        .service("conf_drain")
        .set("conf_drain", "shutdown_grace", "5s")
        .start()
        .await
        .expect("conf_drain starts");
    let probe = probe(&kit).await;
    let sent = 6;
    for n in 0..sent {
        kit.publish("conf_drain.ex", "work", &n)
            .await
            .expect("routed");
    }
    assert!(eventually(|| DRAIN_STARTED.load(Ordering::SeqCst) == 2).await);
    kit.stop().await.expect("clean stop");
    let started = DRAIN_STARTED.load(Ordering::SeqCst);
    let finished = DRAIN_FINISHED.load(Ordering::SeqCst);
    assert!(finished >= 2, "the in-flight handlers finished: {finished}");
    assert_eq!(started, finished, "every handler that started finished");
    // Exactly the handled messages were acked; the others are back in the queue.
    let left = sent as usize - finished;
    assert_eq!(wait_count(&probe, queue, left).await, Some(left));
    probe.close().await;
    env.clean(&queues, &["conf_drain.ex"]).await;
}

// ---------------------------------------------------------------- broadcast after commit

#[derive(Default)]
struct Bcast;

#[farine::service(name = "conf_bcast")]
impl Bcast {
    #[rpc::method(broadcast = "conf_bcast.events")]
    async fn add(
        &self,
        tx: &mut Tx,
        events: Broadcast,
        name: String,
        fail: bool,
    ) -> farine::Result<i64> {
        let (id,): (i32,) =
            sqlx::query_as("insert into conf_bcast_items (name) values ($1) returning id")
                .bind(&name)
                .fetch_one(tx.conn())
                .await?;
        events.send(&json!({ "added": name }))?;
        if fail {
            return Err(farine::Error::Runtime("refused".into()));
        }
        Ok(i64::from(id))
    }

    /// Succeeds, but its commit fails (the deferred unique constraint).
    #[rpc::method(broadcast = "conf_bcast.events")]
    async fn add_twice(
        &self,
        tx: &mut Tx,
        events: Broadcast,
        name: String,
    ) -> farine::Result<bool> {
        for _ in 0..2 {
            sqlx::query("insert into conf_bcast_unique (name) values ($1)")
                .bind(&name)
                .execute(tx.conn())
                .await?;
        }
        events.send(&json!({ "twice": name }))?;
        Ok(true)
    }
}

async fn count_rows(pool: &sqlx::PgPool, table: &str) -> i64 {
    let (n,): (i64,) = sqlx::query_as(sqlx::AssertSqlSafe(format!("select count(*) from {table}")))
        .fetch_one(pool)
        .await
        .expect("count rows");
    n
}

async fn execute(pool: &sqlx::PgPool, statements: &[&str]) {
    for statement in statements {
        sqlx::query(sqlx::AssertSqlSafe(statement.to_string()))
            .execute(pool)
            .await
            .unwrap_or_else(|err| panic!("{statement}: {err}"));
    }
}

async fn broadcast_after_commit(env: Env) {
    let pool = pg().await;
    execute(
        &pool,
        &[
            "drop table if exists conf_bcast_items",
            "drop table if exists conf_bcast_unique",
            "create table conf_bcast_items (id serial primary key, name text not null)",
            "create table conf_bcast_unique (name text, constraint conf_bcast_unique_u unique (name) deferrable initially deferred)",
        ],
    )
    .await;
    let queues = rpc_queues("conf_bcast", &["add", "add_twice"]);
    let exchanges = ["conf_bcast", "conf_bcast.events"];
    env.clean(&queues, &exchanges).await;
    let kit = env
        .kit()
        .service("conf_bcast")
        .set("conf_bcast", "db_connector", "postgres")
        .set("conf_bcast", "db_url", PG_URL)
        .set("conf_bcast", "rpc_timeout", "10s")
        .start()
        .await
        .expect("conf_bcast starts with its pool");
    let events = kit.capture("conf_bcast.events", "").await.expect("capture");
    let bcast = BcastClient::connect(kit.config())
        .await
        .expect("typed client");

    bcast.add("eggs".into(), false).await.expect("committed");
    assert_eq!(events.next(WAIT).await, Some(json!({"added": "eggs"})));

    // A failed call (rolled back) and a failed commit broadcast nothing.
    let err = bcast.add("milk".into(), true).await.expect_err("refused");
    assert!(err.to_string().contains("refused"), "{err}");
    let err = bcast
        .add_twice("salt".into())
        .await
        .expect_err("the commit fails");
    assert!(err.to_string().contains("did not commit"), "{err}");
    bcast.add("bread".into(), false).await.expect("committed");
    assert_eq!(
        events.next(WAIT).await,
        Some(json!({"added": "bread"})),
        "the next event is the next committed call's"
    );
    assert_eq!(events.next(QUIET).await, None);
    assert_eq!(count_rows(&pool, "conf_bcast_items").await, 2);
    assert_eq!(count_rows(&pool, "conf_bcast_unique").await, 0);

    kit.stop().await.expect("clean stop");
    env.clean(&queues, &exchanges).await;
    execute(
        &pool,
        &[
            "drop table conf_bcast_items",
            "drop table conf_bcast_unique",
        ],
    )
    .await;
}

// ---------------------------------------------------------------- ack after commit

#[derive(Deserialize)]
struct Entry {
    id: i64,
    copies: u32,
}

#[derive(Default)]
struct AckCommit;

#[farine::service(name = "conf_ackc")]
impl AckCommit {
    /// Inserts `copies` rows of `id`: two violate the deferred key, at commit.
    #[amqp::consume(
        exchange = "conf_ackc.ex",
        routing_key = "entries",
        queue = "conf_ackc.entries"
    )]
    async fn on_entry(&self, tx: &mut Tx, entry: Entry) -> farine::Result<()> {
        for _ in 0..entry.copies {
            sqlx::query("insert into conf_ackc_rows (id) values ($1)")
                .bind(entry.id)
                .execute(tx.conn())
                .await?;
        }
        Ok(())
    }
}

async fn ack_after_commit(env: Env) {
    let pool = pg().await;
    execute(
        &pool,
        &[
            "drop table if exists conf_ackc_rows",
            "create table conf_ackc_rows (id bigint, constraint conf_ackc_rows_u unique (id) deferrable initially deferred)",
        ],
    )
    .await;
    let queue = "conf_ackc.entries";
    let queues = consumer_queues(queue, &["20ms"]);
    env.clean(&queues, &["conf_ackc.ex"]).await;
    let kit = env
        .kit()
        .service("conf_ackc")
        .set("conf_ackc", "db_connector", "postgres")
        .set("conf_ackc", "db_url", PG_URL)
        .set("conf_ackc", "retry_attempts", "1")
        .set("conf_ackc", "retry_delay", "20ms")
        .set("conf_ackc", "retry_max_delay", "20ms")
        .start()
        .await
        .expect("conf_ackc starts with its pool");
    let probe = probe(&kit).await;
    let handled = kit.handled("conf_ackc.on_entry");

    kit.publish("conf_ackc.ex", "entries", &json!({"id": 1, "copies": 1}))
        .await
        .expect("routed");
    assert_eq!(handled.wait(WAIT).await.expect("handled"), Handling::Done);
    // The handler returned Ok but the commit failed: not a success, retried, then parked.
    kit.publish("conf_ackc.ex", "entries", &json!({"id": 2, "copies": 2}))
        .await
        .expect("routed");
    for attempt in 1..=2 {
        let outcome = handled.wait(WAIT).await.expect("handled");
        assert!(
            matches!(&outcome, Handling::Failed(reason) if reason.contains("did not commit")),
            "attempt {attempt}: {outcome:?}"
        );
    }
    let parked = wait_dead_letters(&kit, queue, 1).await;
    assert_eq!(parked.len(), 1, "{parked:?}");
    assert_eq!(parked[0].attempts, 2);
    assert_eq!(
        serde_json::from_slice::<Value>(&parked[0].body).expect("JSON"),
        json!({"id": 2, "copies": 2})
    );
    assert!(
        parked[0]
            .error
            .as_deref()
            .is_some_and(|e| e.contains("did not commit")),
        "{parked:?}"
    );
    let ids: Vec<(i64,)> = sqlx::query_as("select id from conf_ackc_rows order by id")
        .fetch_all(&pool)
        .await
        .expect("rows");
    assert_eq!(ids, vec![(1,)], "only the committed entry");

    kit.stop().await.expect("clean stop");
    assert_eq!(wait_count(&probe, queue, 0).await, Some(0));
    probe.close().await;
    env.clean(&queues, &["conf_ackc.ex"]).await;
    execute(&pool, &["drop table conf_ackc_rows"]).await;
}
