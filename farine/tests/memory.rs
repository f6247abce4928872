//! Services, clients and the dead-letter tools on the in-process broker (`memory://`), with
//! no RabbitMQ: RPC (unary and streaming), consuming, retries through the delay queues,
//! poison messages, and replaying a parked message. Each test has a broker of its own.

use farine::broker::Broker;
use farine::prelude::*;
use farine::transport::{HeaderValue, Message, Properties};
use serde::Deserialize;
use serde_json::{json, Value};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::Duration;

const WAIT: Duration = Duration::from_secs(10);

/// `[DEFAULT] amqp_uri = memory://t_mem_<broker>`, then `extra`.
fn config(broker: &str, extra: &str) -> farine::Config {
    let text = format!("[DEFAULT]\namqp_uri = memory://t_mem_{broker}\n{extra}");
    farine::Config::from_str(&text, "memory-test.ini").expect("valid config")
}

/// Another connection to the test's broker, to publish and look at queues.
async fn broker(config: &farine::Config) -> Broker {
    let settings = config.service("t_mem_probe").expect("settings");
    Broker::for_service(&settings).await.expect("memory broker")
}

async fn eventually(mut done: impl FnMut() -> bool) -> bool {
    let deadline = tokio::time::Instant::now() + WAIT;
    while tokio::time::Instant::now() < deadline {
        if done() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    done()
}

/// The messages of `queue` once it holds `count`.
async fn wait_for(broker: &Broker, queue: &str, count: usize) -> Vec<Message> {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let messages = broker.peek(queue, usize::MAX).await.expect("peek");
        if messages.len() >= count || tokio::time::Instant::now() >= deadline {
            return messages;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn header(message: &Message, key: &str) -> Option<HeaderValue> {
    message.properties.headers.get(key).cloned()
}

fn text(message: &Message, key: &str) -> Option<String> {
    message.properties.header_text(key).map(str::to_string)
}

#[derive(Debug, Deserialize, PartialEq)]
struct Point {
    x: i64,
    y: i64,
}

// ---------------------------------------------------------------- RPC

#[derive(Default)]
struct Calc;

#[farine::service(name = "t_mem_calc")]
impl Calc {
    #[rpc::method]
    async fn add(&self, a: i64, b: i64) -> i64 {
        a + b
    }

    #[rpc::method]
    fn count(&self, n: u32) -> impl Stream<Item = u32> + Send + 'static {
        futures::stream::iter(0..n)
    }
}

#[tokio::test]
async fn rpc_unary_and_streaming_calls_work_in_memory() {
    let config = config("rpc", "");
    let running = farine::Runtime::new(config.clone())
        .only(["t_mem_calc"])
        .start()
        .await
        .expect("service starts");
    assert!(running.is_ready());
    let client = farine::Client::connect(&config)
        .await
        .expect("client connects");
    let sum = client
        .call("t_mem_calc", "add", json!([2, 3]))
        .await
        .unwrap();
    assert_eq!(sum, json!(5));
    let sum = client
        .call("t_mem_calc", "add", json!({"a": 40, "b": 2}))
        .await
        .unwrap();
    assert_eq!(sum, json!(42));
    let items: Vec<Value> = client
        .call_stream("t_mem_calc", "count", json!([4]))
        .await
        .unwrap()
        .map(|item| item.expect("item"))
        .collect()
        .await;
    assert_eq!(items, [json!(0), json!(1), json!(2), json!(3)]);
    let err = client
        .call("t_mem_calc", "nope", json!([]))
        .await
        .unwrap_err();
    assert!(
        matches!(err, farine::Error::UnknownMethod { .. }),
        "{err:?}"
    );
    let err = client
        .call("t_mem_nobody", "add", json!([]))
        .await
        .unwrap_err();
    assert!(
        matches!(err, farine::Error::UnknownService { .. }),
        "{err:?}"
    );
    running.shutdown().await.expect("clean shutdown");
}

/// The next reply frame a raw caller receives, which answers the call `id`.
async fn frame(replies: &mut Box<dyn farine::transport::Subscription>, id: &str) -> Value {
    use farine::transport::Next;
    let next = tokio::time::timeout(WAIT, replies.next()).await;
    let Ok(Next::Delivery(delivery)) = next else {
        panic!("no reply frame for {id}");
    };
    let message = delivery.message;
    assert_eq!(message.properties.correlation_id.as_deref(), Some(id));
    serde_json::from_slice(&message.body).expect("a JSON frame")
}

/// A raw caller on direct reply-to (`amq.rabbitmq.reply-to`, as on RabbitMQ) gets a unary
/// reply and every frame of a long stream from a farine server, through the transport alone.
#[tokio::test]
async fn callers_on_direct_reply_to_get_replies_and_whole_streams() {
    use farine::transport::Subscribe;
    let config = config("direct", "");
    let running = farine::Runtime::new(config.clone())
        .only(["t_mem_calc"])
        .start()
        .await
        .expect("service starts");
    let caller = broker(&config).await;
    let mut replies = caller
        .subscribe(Subscribe {
            label: "raw caller".into(),
            queue: "amq.rabbitmq.reply-to".into(),
            prefetch: 0,
            no_ack: true,
            topology: Vec::new(),
        })
        .await
        .expect("consumes direct reply-to");
    let call = |method: &str, args: &str, id: &str| {
        let properties = Properties::json()
            .with_correlation_id(id)
            .with_reply_to("amq.rabbitmq.reply-to");
        let key = format!("t_mem_calc__{method}");
        let body = args.as_bytes().to_vec();
        let caller = &caller;
        async move {
            caller
                .publish("t_mem_calc", &key, &body, properties, true)
                .await
                .expect("request published")
        }
    };

    call("add", r#"{"args": [2, 3], "kwargs": {}}"#, "unary").await;
    assert_eq!(frame(&mut replies, "unary").await["body"], json!(5));
    assert_eq!(frame(&mut replies, "unary").await["__end__"], json!(true));

    call("count", r#"{"args": [600], "kwargs": {}}"#, "stream").await;
    for item in 0..600 {
        assert_eq!(frame(&mut replies, "stream").await["body"], json!(item));
    }
    assert_eq!(frame(&mut replies, "stream").await["__end__"], json!(true));
    running.shutdown().await.expect("clean shutdown");
}

// ---------------------------------------------------------------- consume

static POINTS: Mutex<Vec<(i64, i64)>> = Mutex::new(Vec::new());

#[derive(Default)]
struct Sink;

#[farine::service(name = "t_mem_sink")]
impl Sink {
    #[amqp::consume(
        exchange = "t_mem_sink.ex",
        routing_key = "points",
        queue = "t_mem_sink.points"
    )]
    async fn on_point(&self, point: Point) -> farine::Result<()> {
        POINTS.lock().unwrap().push((point.x, point.y));
        Ok(())
    }
}

#[tokio::test]
async fn a_consumer_receives_published_messages_and_acks_them() {
    let config = config("sink", "");
    let running = farine::Runtime::new(config.clone())
        .only(["t_mem_sink"])
        .start()
        .await
        .expect("service starts");
    let broker = broker(&config).await;
    for i in 0..5 {
        broker
            .publish(
                "t_mem_sink.ex",
                "points",
                json!({"x": i, "y": -i}).to_string().as_bytes(),
                Properties::json(),
                true,
            )
            .await
            .expect("routed to the consumer's queue");
    }
    assert!(eventually(|| POINTS.lock().unwrap().len() == 5).await);
    let mut seen = POINTS.lock().unwrap().clone();
    seen.sort();
    assert_eq!(seen, (0..5).map(|i| (i, -i)).collect::<Vec<_>>());
    running.shutdown().await.expect("clean shutdown");
    let queue = "t_mem_sink.points";
    assert_eq!(broker.message_count(queue).await.unwrap(), Some(0));
    assert_eq!(
        broker.message_count(&format!("{queue}.dlq")).await.unwrap(),
        Some(0)
    );
}

// ---------------------------------------------------------------- retries, then parked

static FAILS: AtomicUsize = AtomicUsize::new(0);

#[derive(Default)]
struct Failing;

#[farine::service(name = "t_mem_failing")]
impl Failing {
    #[amqp::consume(
        exchange = "t_mem_failing.ex",
        routing_key = "fail",
        queue = "t_mem_failing.fail"
    )]
    async fn always_fails(&self, _body: Value) -> Result<(), String> {
        FAILS.fetch_add(1, Ordering::SeqCst);
        Err("the ledger is closed".into())
    }
}

#[tokio::test]
async fn a_failing_consumer_is_retried_through_the_delay_queues_then_parked() {
    let settings =
        "[t_mem_failing]\nretry_attempts = 2\nretry_delay = 50ms\nretry_max_delay = 80ms\n";
    let config = config("failing", settings);
    let running = farine::Runtime::new(config.clone())
        .only(["t_mem_failing"])
        .start()
        .await
        .expect("service starts");
    let broker = broker(&config).await;
    let queue = "t_mem_failing.fail";
    // The delay queues were declared, one per step.
    for step in ["50ms", "80ms"] {
        let delay = format!("{queue}.retry.{step}");
        assert_eq!(
            broker.message_count(&delay).await.unwrap(),
            Some(0),
            "{delay}"
        );
    }
    broker
        .publish(
            "t_mem_failing.ex",
            "fail",
            br#"{"n": 1}"#,
            Properties::json(),
            true,
        )
        .await
        .unwrap();
    let parked = wait_for(&broker, &format!("{queue}.dlq"), 1).await;
    assert_eq!(parked.len(), 1, "dead-lettered after its retries");
    assert_eq!(FAILS.load(Ordering::SeqCst), 3, "first attempt + 2 retries");
    let dead = &parked[0];
    assert_eq!(dead.body, br#"{"n": 1}"#);
    assert_eq!(header(dead, "x-farine-attempts"), Some(HeaderValue::Int(3)));
    assert_eq!(
        text(dead, "x-farine-error").as_deref(),
        Some("the ledger is closed")
    );
    assert_eq!(
        text(dead, "x-farine-original-exchange").as_deref(),
        Some("t_mem_failing.ex")
    );
    assert_eq!(
        text(dead, "x-farine-original-routing-key").as_deref(),
        Some("fail")
    );
    // It went through the delay queues: the broker's x-death says so, newest first.
    let Some(HeaderValue::List(deaths)) = header(dead, "x-death") else {
        panic!("no x-death on {dead:?}");
    };
    let queues: Vec<String> = deaths
        .iter()
        .filter_map(|death| match death {
            HeaderValue::Table(t) => t.get("queue").and_then(|q| q.as_text()).map(Into::into),
            _ => None,
        })
        .collect();
    assert_eq!(
        queues,
        [format!("{queue}.retry.80ms"), format!("{queue}.retry.50ms")]
    );
    running.shutdown().await.expect("clean shutdown");
    assert_eq!(broker.message_count(queue).await.unwrap(), Some(0));
}

// ---------------------------------------------------------------- poison

static POISON_CALLS: AtomicUsize = AtomicUsize::new(0);

#[derive(Default)]
struct Poison;

#[farine::service(name = "t_mem_poison")]
impl Poison {
    #[amqp::consume(
        exchange = "t_mem_poison.ex",
        routing_key = "in",
        queue = "t_mem_poison.in"
    )]
    async fn on_point(&self, _point: Point) -> farine::Result<()> {
        POISON_CALLS.fetch_add(1, Ordering::SeqCst);
        Ok(())
    }
}

#[tokio::test]
async fn a_poison_message_is_parked_at_once() {
    let config = config("poison", "[t_mem_poison]\nretry_delay = 50ms\n");
    let running = farine::Runtime::new(config.clone())
        .only(["t_mem_poison"])
        .start()
        .await
        .expect("service starts");
    let broker = broker(&config).await;
    for body in [&b"this is not json"[..], br#"{"x": 1, "y": 2}"#] {
        broker
            .publish("t_mem_poison.ex", "in", body, Properties::json(), true)
            .await
            .unwrap();
    }
    let parked = wait_for(&broker, "t_mem_poison.in.dlq", 1).await;
    assert_eq!(parked.len(), 1);
    let dead = &parked[0];
    assert_eq!(dead.body, b"this is not json");
    assert_eq!(header(dead, "x-farine-attempts"), Some(HeaderValue::Int(1)));
    let reason = text(dead, "x-farine-error").unwrap_or_default();
    assert!(reason.contains("does not decode"), "{reason}");
    assert_eq!(
        text(dead, "x-farine-queue").as_deref(),
        Some("t_mem_poison.in")
    );
    // Parked without a retry: it never went through a delay queue.
    assert_eq!(header(dead, "x-death"), None);
    // The good message behind it was handled: poison blocks nothing.
    assert!(eventually(|| POISON_CALLS.load(Ordering::SeqCst) == 1).await);
    running.shutdown().await.expect("clean shutdown");
}

// ---------------------------------------------------------------- replay

static BROKEN: AtomicBool = AtomicBool::new(true);
static HANDLED: AtomicUsize = AtomicUsize::new(0);

#[derive(Default)]
struct Ledger;

#[farine::service(name = "t_mem_ledger")]
impl Ledger {
    #[amqp::consume(
        exchange = "t_mem_ledger.ex",
        routing_key = "entries",
        queue = "t_mem_ledger.entries"
    )]
    async fn on_entry(&self, _point: Point) -> Result<(), String> {
        if BROKEN.load(Ordering::SeqCst) {
            return Err("the ledger is broken".into());
        }
        HANDLED.fetch_add(1, Ordering::SeqCst);
        Ok(())
    }
}

#[tokio::test]
async fn dlq_replay_moves_a_parked_message_back_to_its_queue() {
    let config = config("ledger", "[t_mem_ledger]\nretry_attempts = 0\n");
    let running = farine::Runtime::new(config.clone())
        .only(["t_mem_ledger"])
        .start()
        .await
        .expect("service starts");
    let broker = broker(&config).await;
    broker
        .publish(
            "t_mem_ledger.ex",
            "entries",
            br#"{"x": 1, "y": 2}"#,
            Properties::json(),
            true,
        )
        .await
        .unwrap();
    assert_eq!(
        wait_for(&broker, "t_mem_ledger.entries.dlq", 1).await.len(),
        1
    );
    let letters = farine::dlq::peek(&broker, "t_mem_ledger.entries", 10)
        .await
        .unwrap();
    assert_eq!(letters.len(), 1);
    assert_eq!(letters[0].error.as_deref(), Some("the ledger is broken"));
    assert_eq!(
        letters[0].original_exchange.as_deref(),
        Some("t_mem_ledger.ex")
    );

    // Fixed, then replayed: handled once, nothing left parked.
    BROKEN.store(false, Ordering::SeqCst);
    let replayed = farine::dlq::replay(&broker, "t_mem_ledger.entries", 10)
        .await
        .expect("replay works");
    assert_eq!(
        (replayed.moved, replayed.left, replayed.came_back),
        (1, 0, 0),
        "{replayed:?}"
    );
    assert!(eventually(|| HANDLED.load(Ordering::SeqCst) == 1).await);
    assert_eq!(
        broker
            .message_count("t_mem_ledger.entries.dlq")
            .await
            .unwrap(),
        Some(0)
    );
    // Replaying into a queue that does not exist is refused.
    assert!(farine::dlq::replay(&broker, "t_mem_nowhere", 10)
        .await
        .is_err());
    running.shutdown().await.expect("clean shutdown");
}

// ---------------------------------------------------------------- config

#[test]
fn memory_uris_are_accepted_by_the_config() {
    let settings = config("cfg", "").service("anything").expect("accepted");
    assert_eq!(settings.amqp_uri.expose(), "memory://t_mem_cfg");
    let bare = farine::Config::from_str("[DEFAULT]\namqp_uri = memory://\n", "m.ini")
        .unwrap()
        .service("x");
    assert!(bare.is_ok());
}

/// Publishes each item it streams: the items are produced after the method returned, and
/// must still publish through the broker of the runtime that serves the call.
#[derive(Default)]
pub struct ScopedItems;

#[farine::service(name = "t_mem_scoped")]
impl ScopedItems {
    #[rpc::method]
    fn numbers(&self, n: u32) -> impl Stream<Item = farine::Result<u32>> + Send + 'static {
        futures::stream::iter(0..n)
            .then(|i| async move { ScopedItems.announce(i).await.map(|()| i) })
    }

    #[amqp::publish(routing_key = "announced")]
    async fn announce(&self, publish: Publisher, i: u32) -> farine::Result<()> {
        publish.send(&i).await
    }
}

/// Two runtimes of one service in one process (tests in parallel): a stream's items publish on
/// the broker of the runtime serving the call, and each kit hears only its own calls.
#[tokio::test]
async fn stream_items_publish_through_their_own_runtime_and_kits_observe_their_own_calls() {
    use farine::testing::{Handling, TestKit};
    let one = TestKit::memory()
        .service("t_mem_scoped")
        .start()
        .await
        .expect("kit one");
    let two = TestKit::memory()
        .service("t_mem_scoped")
        .start()
        .await
        .expect("kit two");
    for (caller, other) in [(&one, &two), (&two, &one)] {
        let mine = caller
            .capture("t_mem_scoped", "announced")
            .await
            .expect("capture");
        let theirs = other
            .capture("t_mem_scoped", "announced")
            .await
            .expect("capture");
        let handled = caller.handled("t_mem_scoped.numbers");
        let not_mine = other.handled("t_mem_scoped.numbers");
        let client = ScopedItemsClient::connect(caller.config())
            .await
            .expect("client");
        let items: Vec<u32> = client
            .numbers(3)
            .await
            .expect("call")
            .map(|item| item.expect("item"))
            .collect()
            .await;
        assert_eq!(items, [0, 1, 2]);
        for i in 0..3 {
            assert_eq!(mine.next(WAIT).await, Some(json!(i)));
        }
        assert_eq!(theirs.next(Duration::from_millis(200)).await, None);
        assert_eq!(handled.wait(WAIT).await.expect("observed"), Handling::Done);
        assert!(not_mine.wait(Duration::from_millis(200)).await.is_err());

        // Arguments that do not fit: answered "bad arguments", observed as poison.
        let untyped = caller.client().await.expect("client");
        let bad = untyped
            .call("t_mem_scoped", "numbers", json!(["three"]))
            .await;
        assert!(bad.is_err());
        assert!(matches!(
            handled.wait(WAIT).await.expect("observed"),
            Handling::Poison(reason) if reason.contains("numbers")
        ));
    }
    one.stop().await.expect("stop one");
    two.stop().await.expect("stop two");
}
