//! Wire compatibility with Python farine 0.19, in both directions, against a real RabbitMQ.
//!
//! The Python peer is emulated with raw lapin, message for message, as
//! `reference/farine-0.19-behaviour.md` section 2 and PROTOCOL.md ("How replies travel")
//! describe it:
//!
//! - a Python *client* (`farine.rpc.Client`, one per call with the `@rpc.client` decorator)
//!   declares the durable direct exchange `<service>` and a reply queue named `uuid4().hex`,
//!   durable, non-exclusive, non-auto-delete, bound to that exchange with its own name; it
//!   publishes `{"args": [...], "kwargs": {...}}` (Python `json.dumps` spelling: `", "`,
//!   `": "`, non-ASCII as `\uXXXX`) to `<service>` with routing key `<service>__<method>`
//!   and kombu's properties, then reads its queue with prefetch 1, acking each frame;
//! - a Python *server* consumes `<service>__<method>` (durable, bound to `<service>`) with
//!   prefetch 1, acks the request first, then publishes each frame to the EXCHANGE
//!   `<service>` (not the default exchange) with routing key = `reply_to` and the request's
//!   `correlation_id`; an exception sends only `{"__except__": "<traceback>"}`.
//!
//! Each test names its own service (`t_py_*`), is bounded in time, and deletes every queue
//! and exchange it declared, including the durable reply queues the Python client leaks.

mod support;

use farine::prelude::*;
use futures::FutureExt;
use lapin::options::*;
use lapin::types::FieldTable;
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties, ExchangeKind};
use serde::Serialize;
use serde_json::{json, Map, Value};
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use support::{amqp_uri, config};

/// Longest a whole test may take.
const TEST_LIMIT: Duration = Duration::from_secs(60);
/// Longest wait for one reply frame.
const FRAME_WAIT: Duration = Duration::from_secs(10);
/// How long a reply queue must stay silent after a terminal frame.
const QUIET: Duration = Duration::from_millis(500);

/// Values Python holds false (`0`, `""`, `False`, `[]`, `None`, `{}`) mixed with true ones.
fn falsy_and_truthy() -> Vec<Value> {
    vec![
        json!(0),
        json!(""),
        json!(false),
        json!([]),
        json!(null),
        json!({}),
        json!(1),
        json!("two"),
        json!([0]),
        json!(0.0),
    ]
}

// ---------------------------------------------------------------------------------------
// Python's JSON spelling and kombu's message properties.

/// `json.dumps` of Python 2.7 (kombu's json serializer): `", "` and `": "` separators and
/// `ensure_ascii=True` (every non-ASCII character as a lower-case `\uXXXX` escape).
struct PythonJson;

impl serde_json::ser::Formatter for PythonJson {
    fn begin_array_value<W: ?Sized + std::io::Write>(
        &mut self,
        writer: &mut W,
        first: bool,
    ) -> std::io::Result<()> {
        if first {
            Ok(())
        } else {
            writer.write_all(b", ")
        }
    }

    fn begin_object_key<W: ?Sized + std::io::Write>(
        &mut self,
        writer: &mut W,
        first: bool,
    ) -> std::io::Result<()> {
        if first {
            Ok(())
        } else {
            writer.write_all(b", ")
        }
    }

    fn begin_object_value<W: ?Sized + std::io::Write>(
        &mut self,
        writer: &mut W,
    ) -> std::io::Result<()> {
        writer.write_all(b": ")
    }

    fn write_string_fragment<W: ?Sized + std::io::Write>(
        &mut self,
        writer: &mut W,
        fragment: &str,
    ) -> std::io::Result<()> {
        for c in fragment.chars() {
            if c.is_ascii() {
                writer.write_all(&[c as u8])?;
            } else {
                let mut units = [0u16; 2];
                for unit in c.encode_utf16(&mut units) {
                    write!(writer, "\\u{unit:04x}")?;
                }
            }
        }
        Ok(())
    }
}

fn python_json(value: &Value) -> Vec<u8> {
    let mut out = Vec::new();
    let mut serializer = serde_json::Serializer::with_formatter(&mut out, PythonJson);
    value.serialize(&mut serializer).expect("JSON encodes");
    out
}

/// The properties kombu 4.0.2 puts on every farine message (`Producer.publish` with the
/// json serializer and `delivery_mode=2`, through py-amqp's `prepare_message`).
fn kombu_properties(correlation_id: &str) -> BasicProperties {
    BasicProperties::default()
        .with_content_type("application/json".into())
        .with_content_encoding("utf-8".into())
        .with_delivery_mode(2)
        .with_priority(0)
        .with_headers(FieldTable::default())
        .with_correlation_id(correlation_id.into())
}

fn text(value: &Option<lapin::types::ShortString>) -> Option<String> {
    value.as_ref().map(|s| s.as_str().to_string())
}

// ---------------------------------------------------------------------------------------
// Bounding and cleaning up.

/// Runs `body` within [`TEST_LIMIT`], then `cleanup` whatever happened, then re-raises the
/// body's failure; `cleanup` returns what it could not remove, which fails the test.
async fn bounded<B, C>(what: &str, body: B, cleanup: C)
where
    B: Future<Output = ()>,
    C: Future<Output = Vec<String>>,
{
    let outcome = AssertUnwindSafe(tokio::time::timeout(TEST_LIMIT, body))
        .catch_unwind()
        .await;
    let leftovers = tokio::time::timeout(Duration::from_secs(30), cleanup)
        .await
        .unwrap_or_else(|_| vec!["(cleanup did not finish within 30 s)".to_string()]);
    match outcome {
        Ok(Ok(())) => {}
        Ok(Err(_)) => panic!("{what} did not finish within {TEST_LIMIT:?}"),
        Err(panic) => std::panic::resume_unwind(panic),
    }
    assert!(
        leftovers.is_empty(),
        "{what}: could not delete {leftovers:?}"
    );
}

async fn connect() -> Connection {
    support::require_rabbitmq();
    Connection::connect(&amqp_uri(), ConnectionProperties::default())
        .await
        .expect("connect to RabbitMQ on 127.0.0.1:5672 (guest/guest)")
}

/// Deletes queues and exchanges, each on a channel of its own (a failed delete closes its
/// channel), and returns those that still exist.
async fn remove(queues: &[String], exchanges: &[String]) -> Vec<String> {
    let connection = connect().await;
    for queue in queues {
        if let Ok(channel) = connection.create_channel().await {
            let _ = channel
                .queue_delete(queue.as_str().into(), QueueDeleteOptions::default())
                .await;
            let _ = channel.close(200, "OK".into()).await;
        }
    }
    for exchange in exchanges {
        if let Ok(channel) = connection.create_channel().await {
            let _ = channel
                .exchange_delete(exchange.as_str().into(), ExchangeDeleteOptions::default())
                .await;
            let _ = channel.close(200, "OK".into()).await;
        }
    }
    let mut left = Vec::new();
    for queue in queues {
        if queue_exists(&connection, queue).await {
            left.push(format!("queue {queue}"));
        }
    }
    for exchange in exchanges {
        if exchange_exists(&connection, exchange).await {
            left.push(format!("exchange {exchange}"));
        }
    }
    let _ = connection.close(200, "OK".into()).await;
    left
}

/// Whether `queue` exists: a passive declare fails with NOT_FOUND when it does not (and
/// with RESOURCE_LOCKED when it is another connection's exclusive queue).
async fn queue_exists(connection: &Connection, queue: &str) -> bool {
    match support::passive_queue(connection, queue).await {
        Ok(_) => true,
        Err(err) => !err.to_string().contains("NOT_FOUND"),
    }
}

async fn exchange_exists(connection: &Connection, exchange: &str) -> bool {
    let channel = connection.create_channel().await.expect("channel");
    let exists = channel
        .exchange_declare(
            exchange.into(),
            ExchangeKind::Direct,
            ExchangeDeclareOptions {
                passive: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .is_ok();
    let _ = channel.close(200, "OK".into()).await;
    exists
}

/// A queue's state, for failure messages.
async fn describe(connection: &Connection, queue: &str) -> String {
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
    match declared {
        Ok(q) => format!(
            "{queue}: {} messages ready, {} consumers",
            q.message_count(),
            q.consumer_count()
        ),
        Err(err) => format!("{queue}: {err}"),
    }
}

/// Messages ready in `queue`.
async fn ready(connection: &Connection, queue: &str) -> u32 {
    support::passive_queue(connection, queue)
        .await
        .unwrap_or_else(|err| panic!("queue {queue} should exist: {err}"))
        .message_count()
}

// ---------------------------------------------------------------------------------------
// What a Python caller makes of the frames (client.py:69-82).

fn truthy(value: &Value) -> bool {
    match value {
        Value::Null => false,
        Value::Bool(b) => *b,
        Value::Number(n) => n.as_f64() != Some(0.0),
        Value::String(s) => !s.is_empty(),
        Value::Array(a) => !a.is_empty(),
        Value::Object(o) => !o.is_empty(),
    }
}

/// The items a Python 0.19 generator yields for these frames, and the `RPCError` text it
/// raises: `__except__` raises, `__end__` stops, and only truthy bodies are yielded.
fn python_caller_sees(frames: &[Value]) -> (Vec<Value>, Option<String>) {
    let mut yielded = Vec::new();
    for frame in frames {
        if let Some(except) = frame.get("__except__").filter(|e| truthy(e)) {
            return (
                yielded,
                Some(except.as_str().unwrap_or_default().to_string()),
            );
        }
        if frame.get("__end__") == Some(&json!(true)) {
            break;
        }
        if let Some(body) = frame.get("body").filter(|b| truthy(b)) {
            yielded.push(body.clone());
        }
    }
    (yielded, None)
}

// ---------------------------------------------------------------------------------------
// The emulated Python client.

/// One reply message as the Python client's queue delivers it.
#[derive(Debug)]
struct Reply {
    correlation_id: Option<String>,
    content_type: Option<String>,
    frame: Value,
    raw: String,
}

/// `farine.rpc.Client(service)` of Python farine 0.19, one per call as the `@rpc.client`
/// decorator makes them. Its durable reply queue is recorded in `leaks` so that the test
/// deletes it even when it fails.
struct PythonClient {
    connection: Connection,
    channel: Channel,
    service: String,
    queue: String,
    consumer: Option<lapin::Consumer>,
    /// The call under way and its request queue, for failure messages.
    current: String,
    request_queue: String,
}

type Leaks = Arc<Mutex<Vec<String>>>;

impl PythonClient {
    async fn new(service: &str, leaks: &Leaks) -> PythonClient {
        let connection = connect().await;
        let channel = connection.create_channel().await.expect("channel");
        let queue = uuid::Uuid::new_v4().simple().to_string();
        leaks.lock().unwrap().push(queue.clone());
        // kombu declares the exchange (Publisher and Queue both do), the queue, the binding.
        channel
            .exchange_declare(
                service.into(),
                ExchangeKind::Direct,
                ExchangeDeclareOptions {
                    durable: true,
                    ..Default::default()
                },
                FieldTable::default(),
            )
            .await
            .unwrap_or_else(|err| {
                panic!(
                    "the Python client declares exchange {service:?} as direct, durable, \
                     not auto-delete: the Rust service's declaration must be equivalent: {err}"
                )
            });
        channel
            .queue_declare(
                queue.as_str().into(),
                QueueDeclareOptions {
                    durable: true,
                    exclusive: false,
                    auto_delete: false,
                    ..Default::default()
                },
                FieldTable::default(),
            )
            .await
            .expect("declare the Python reply queue");
        channel
            .queue_bind(
                queue.as_str().into(),
                service.into(),
                queue.as_str().into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await
            .expect("bind the Python reply queue");
        channel
            .basic_qos(1, BasicQosOptions::default())
            .await
            .expect("prefetch 1");
        PythonClient {
            connection,
            channel,
            service: service.to_string(),
            queue,
            consumer: None,
            current: String::new(),
            request_queue: String::new(),
        }
    }

    /// Publishes the request; returns its correlation id.
    async fn send(&mut self, method: &str, args: Value, kwargs: Value) -> String {
        let correlation_id = uuid::Uuid::new_v4().simple().to_string();
        self.current = format!("{}.{method}(*{args}, **{kwargs})", self.service);
        self.request_queue = format!("{}__{method}", self.service);
        let body = python_json(&json!({"args": args, "kwargs": kwargs}));
        self.channel
            .basic_publish(
                self.service.as_str().into(),
                format!("{}__{method}", self.service).as_str().into(),
                BasicPublishOptions::default(),
                &body,
                kombu_properties(&correlation_id).with_reply_to(self.queue.as_str().into()),
            )
            .await
            .expect("publish the request")
            .await
            .expect("request published");
        // Nothing is read before the request is out (`start()` runs after `send`).
        if self.consumer.is_none() {
            let consumer = self
                .channel
                .basic_consume(
                    self.queue.as_str().into(),
                    "".into(),
                    BasicConsumeOptions::default(),
                    FieldTable::default(),
                )
                .await
                .expect("consume the Python reply queue");
            self.consumer = Some(consumer);
        }
        correlation_id
    }

    async fn next_reply(&mut self) -> Reply {
        let consumer = self.consumer.as_mut().expect("a request was sent");
        let delivery = match tokio::time::timeout(FRAME_WAIT, consumer.next()).await {
            Ok(delivery) => delivery
                .expect("the reply consumer is open")
                .expect("a delivery"),
            Err(_) => {
                let connection = connect().await;
                let request_queue = describe(&connection, &self.request_queue).await;
                let reply_queue = describe(&connection, &self.queue).await;
                panic!(
                    "{}: no reply frame within {FRAME_WAIT:?}; request queue {request_queue}; \
                     reply queue {reply_queue}",
                    self.current
                )
            }
        };
        delivery
            .ack(BasicAckOptions::default())
            .await
            .expect("ack the reply");
        let raw = String::from_utf8(delivery.data.clone()).expect("reply is UTF-8");
        let frame = serde_json::from_str(&raw)
            .unwrap_or_else(|err| panic!("reply {raw:?} is not JSON: {err}"));
        Reply {
            correlation_id: text(delivery.properties.correlation_id()),
            content_type: text(delivery.properties.content_type()),
            frame,
            raw,
        }
    }

    /// Nothing more arrives in the reply queue for a while.
    async fn assert_quiet(&mut self) {
        let consumer = self.consumer.as_mut().expect("a request was sent");
        if let Ok(Some(Ok(delivery))) = tokio::time::timeout(QUIET, consumer.next()).await {
            panic!(
                "unexpected frame after the terminal one: {}",
                String::from_utf8_lossy(&delivery.data)
            );
        }
    }

    /// Sends one request and reads its frames up to the terminal one (end or error), checking
    /// that each carries the call's correlation id and a JSON content type, and that nothing
    /// follows the terminal frame.
    async fn call(&mut self, method: &str, args: Value, kwargs: Value) -> Vec<Value> {
        let correlation_id = self.send(method, args, kwargs).await;
        let mut frames = Vec::new();
        loop {
            let reply = self.next_reply().await;
            assert_eq!(
                reply.correlation_id.as_deref(),
                Some(correlation_id.as_str()),
                "frame {} carries the request's correlation_id",
                reply.raw
            );
            assert_eq!(
                reply.content_type.as_deref(),
                Some("application/json"),
                "kombu decodes a reply by its content_type: {}",
                reply.raw
            );
            let terminal =
                reply.frame.get("__except__").is_some() || reply.frame == json!({"__end__": true});
            frames.push(reply.frame);
            if terminal {
                break;
            }
        }
        self.assert_quiet().await;
        frames
    }

    /// Deletes the durable reply queue that Python farine would leak.
    async fn delete(self) {
        drop(self.consumer);
        self.channel
            .queue_delete(self.queue.as_str().into(), QueueDeleteOptions::default())
            .await
            .expect("delete the Python reply queue");
        let _ = self.connection.close(200, "OK".into()).await;
    }
}

/// One call by a fresh Python client, as `@rpc.client` makes it.
async fn python_call(
    service: &str,
    leaks: &Leaks,
    method: &str,
    args: Value,
    kwargs: Value,
) -> Vec<Value> {
    let mut client = PythonClient::new(service, leaks).await;
    let frames = client.call(method, args, kwargs).await;
    client.delete().await;
    frames
}

fn item(value: Value) -> Value {
    json!({"body": value, "__end__": false})
}

fn end() -> Value {
    json!({"__end__": true})
}

/// The text of an error frame, after checking it is one: a non-empty `__except__` string
/// (plus, at most, our `__error__` extension), with no `__end__` or `body`.
fn except_text(frame: &Value) -> String {
    let object = frame.as_object().expect("frame is an object");
    assert!(
        object.keys().all(|k| k == "__except__" || k == "__error__"),
        "an error frame has only __except__ (and the __error__ extension): {frame}"
    );
    let text = object
        .get("__except__")
        .and_then(Value::as_str)
        .unwrap_or_else(|| panic!("__except__ is a string: {frame}"));
    assert!(
        !text.is_empty(),
        "a Python client raises only on a non-empty __except__"
    );
    text.to_string()
}

// ---------------------------------------------------------------------------------------
// 1. Python client -> Rust server.

#[derive(Default)]
pub struct PyCalc;

#[farine::service(name = "t_py_calc")]
impl PyCalc {
    #[rpc::method]
    async fn add(&self, a: i64, b: i64) -> i64 {
        a + b
    }

    #[rpc::method]
    async fn echo(&self, value: Value) -> Value {
        value
    }

    #[rpc::method]
    fn falsy(&self) -> impl Stream<Item = Value> + Send + 'static {
        futures::stream::iter(falsy_and_truthy())
    }

    #[rpc::method]
    fn upto(&self, n: u32) -> impl Stream<Item = u32> + Send + 'static {
        futures::stream::iter(0..n)
    }

    #[rpc::method]
    async fn fails(&self, why: String) -> Result<i64, String> {
        Err(format!("refused: {why}"))
    }

    #[rpc::method]
    async fn explode(&self) -> farine::Result<i64> {
        panic!("kaboom")
    }

    #[rpc::method]
    fn broken(&self) -> impl Stream<Item = Result<i64, String>> + Send + 'static {
        futures::stream::iter(vec![
            Ok(0),
            Ok(1),
            Err("the stream broke after 2 items".to_string()),
            Ok(3),
        ])
    }
}

const CALC: &str = "t_py_calc";
const CALC_METHODS: &[&str] = &["add", "echo", "falsy", "upto", "fails", "explode", "broken"];

/// The Rust service's queues (with their dead-letter companions) and exchange.
fn calc_topology() -> (Vec<String>, Vec<String>) {
    let mut queues = Vec::new();
    for method in CALC_METHODS {
        queues.push(format!("{CALC}__{method}"));
        queues.push(format!("{CALC}__{method}.dlq"));
    }
    (queues, vec![CALC.to_string()])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_client_calls_rust_server() {
    support::require_rabbitmq();
    let (queues, exchanges) = calc_topology();
    let running = tokio::time::timeout(
        Duration::from_secs(30),
        farine::Runtime::new(config("")).only([CALC]).start(),
    )
    .await
    .expect("the Rust service starts within 30 s")
    .expect("the Rust service starts");
    let leaks: Leaks = Arc::default();

    let body = {
        let leaks = leaks.clone();
        async move {
            let leaks = &leaks;
            // Unary: exactly one item, then the end frame, then nothing.
            let frames = python_call(CALC, leaks, "add", json!([2, 3]), json!({})).await;
            assert_eq!(frames, vec![item(json!(5)), end()]);
            assert_eq!(python_caller_sees(&frames), (vec![json!(5)], None));
            // By name, and mixed, as `rpc.add(40, b=2)`.
            let frames = python_call(CALC, leaks, "add", json!([]), json!({"a": 40, "b": 2})).await;
            assert_eq!(frames, vec![item(json!(42)), end()]);
            let frames = python_call(CALC, leaks, "add", json!([40]), json!({"b": 2})).await;
            assert_eq!(frames, vec![item(json!(42)), end()]);
            // Python's ensure_ascii escapes arrive decoded and go back as UTF-8 JSON.
            let frames = python_call(
                CALC,
                leaks,
                "echo",
                json!(["h\u{e9}llo \u{2603} \u{1f35e}"]),
                json!({}),
            )
            .await;
            assert_eq!(
                frames,
                vec![item(json!("h\u{e9}llo \u{2603} \u{1f35e}")), end()]
            );
            // A falsy result is an item like any other on our side (a Python caller drops it:
            // its own bug, not a wire difference).
            for value in falsy_and_truthy().into_iter().filter(|v| !truthy(v)) {
                let frames = python_call(CALC, leaks, "echo", json!([value]), json!({})).await;
                assert_eq!(frames, vec![item(value.clone()), end()], "echo({value})");
                assert_eq!(python_caller_sees(&frames), (vec![], None));
            }

            // Stream: one item frame per value, falsy ones included, in order, then the end.
            let frames = python_call(CALC, leaks, "falsy", json!([]), json!({})).await;
            let mut expected: Vec<Value> = falsy_and_truthy().into_iter().map(item).collect();
            expected.push(end());
            assert_eq!(frames, expected);
            assert_eq!(
                python_caller_sees(&frames),
                (vec![json!(1), json!("two"), json!([0])], None),
                "a Python caller keeps only the truthy items"
            );
            let frames = python_call(CALC, leaks, "upto", json!([3]), json!({})).await;
            assert_eq!(
                frames,
                vec![item(json!(0)), item(json!(1)), item(json!(2)), end()]
            );
            // An empty stream is the end frame alone.
            let frames = python_call(CALC, leaks, "upto", json!([0]), json!({})).await;
            assert_eq!(frames, vec![end()]);

            // Errors: one `__except__` frame, no end frame after it.
            let frames = python_call(CALC, leaks, "fails", json!(["no"]), json!({})).await;
            assert_eq!(frames.len(), 1, "{frames:?}");
            assert_eq!(except_text(&frames[0]), "refused: no");
            assert_eq!(
                python_caller_sees(&frames),
                (vec![], Some("refused: no".to_string()))
            );
            let frames = python_call(CALC, leaks, "explode", json!([]), json!({})).await;
            assert_eq!(frames.len(), 1, "{frames:?}");
            let text = except_text(&frames[0]);
            assert!(text.contains("kaboom"), "{text}");
            // Bad arguments are an error frame too, naming the parameter.
            let frames = python_call(CALC, leaks, "add", json!(["two", 3]), json!({})).await;
            assert_eq!(frames.len(), 1, "{frames:?}");
            let text = except_text(&frames[0]);
            assert!(text.contains("`a`"), "{text}");
            // An error mid-stream comes after the items already sent, and ends the call.
            let frames = python_call(CALC, leaks, "broken", json!([]), json!({})).await;
            assert_eq!(frames.len(), 3, "{frames:?}");
            assert_eq!(frames[..2], [item(json!(0)), item(json!(1))]);
            assert_eq!(except_text(&frames[2]), "the stream broke after 2 items");

            // A Python caller grants no stream credit: once its reply queue holds 4,096
            // unread frames the service holds the stream back (checking every 256 items),
            // and finishes it as the caller reads.
            let mut client = PythonClient::new(CALC, leaks).await;
            let total = 6_000u32;
            client.send("upto", json!([total]), json!({})).await;
            tokio::time::sleep(Duration::from_secs(2)).await;
            let probe = connect().await;
            let unread = ready(&probe, &client.queue).await;
            let _ = probe.close(200, "OK".into()).await;
            assert!(
                (4_000..=4_096 + 2 * 256).contains(&unread),
                "{unread} frames unread in a Python caller's reply queue"
            );
            for expected in 0..total {
                assert_eq!(client.next_reply().await.frame, item(json!(expected)));
            }
            assert_eq!(client.next_reply().await.frame, end());
            client.delete().await;

            // No request is left waiting in the Rust service's queues.
            let connection = connect().await;
            for method in CALC_METHODS {
                assert_eq!(ready(&connection, &format!("{CALC}__{method}")).await, 0);
            }
            let _ = connection.close(200, "OK".into()).await;
        }
    };
    let cleanup = async move {
        let stopped = running.shutdown().await;
        let mut all_queues = queues;
        all_queues.extend(leaks.lock().unwrap().iter().cloned());
        let mut left = remove(&all_queues, &exchanges).await;
        if let Err(err) = stopped {
            left.push(format!("(the service did not stop cleanly: {err})"));
        }
        left
    };
    bounded("python_client_calls_rust_server", body, cleanup).await;
}

// ---------------------------------------------------------------------------------------
// 2. Rust client -> Python server.

/// What a Python method does.
#[derive(Clone, Debug)]
enum PyOutcome {
    /// `return value` (not a generator).
    Return(Value),
    /// A generator yielding these values.
    Yield(Vec<Value>),
    /// Raises before returning: the last line of the traceback.
    Raise(String),
    /// A generator that yields these values and then raises.
    YieldThenRaise(Vec<Value>, String),
}

type PyMethod = Arc<dyn Fn(&[Value], &Map<String, Value>) -> PyOutcome + Send + Sync>;

/// A request as the Python server received it.
#[derive(Clone, Debug)]
struct SeenRequest {
    method: String,
    exchange: String,
    routing_key: String,
    redelivered: bool,
    properties: BasicProperties,
    body: Option<Value>,
}

/// What `traceback.format_exc()` gives in `main_callback` when the method raises.
fn traceback_of_call(method: &str, exception: &str) -> String {
    format!(
        "Traceback (most recent call last):\n  \
         File \"/usr/lib/python2.7/site-packages/farine/rpc/server.py\", line 28, in main_callback\n    \
         result = self.callback(*result['args'], **result['kwargs'])\n  \
         File \"/srv/legacy/service.py\", line 17, in {method}\n    \
         return undefined_name\n{exception}\n"
    )
}

/// ... and when the generator raises while being iterated.
fn traceback_of_iteration(method: &str, exception: &str) -> String {
    format!(
        "Traceback (most recent call last):\n  \
         File \"/usr/lib/python2.7/site-packages/farine/rpc/server.py\", line 40, in main_callback\n    \
         for res in result:\n  \
         File \"/srv/legacy/service.py\", line 23, in {method}\n    \
         yield 1 / n\n{exception}\n"
    )
}

const NAME_ERROR: &str = "NameError: global name 'undefined_name' is not defined";
const ZERO_DIVISION: &str = "ZeroDivisionError: integer division or modulo by zero";

/// The frames `main_callback` publishes for one request body (already decoded by kombu).
fn python_frames(method: &str, body: Option<&Value>, behaviour: &PyMethod) -> Vec<Value> {
    // `self.callback(*result['args'], **result['kwargs'])`, inside the try.
    let (args, kwargs) = match body {
        None => {
            // kombu hands over the undecoded string: `result['args']` raises.
            return vec![json!({"__except__": traceback_of_call(
                method,
                "TypeError: string indices must be integers, not str"
            )})];
        }
        Some(body) => match (body.get("args"), body.get("kwargs")) {
            (Some(Value::Array(args)), Some(Value::Object(kwargs))) => (args, kwargs),
            (None, _) => {
                return vec![json!({"__except__": traceback_of_call(method, "KeyError: 'args'")})]
            }
            _ => {
                return vec![json!({"__except__": traceback_of_call(
                    method,
                    "TypeError: argument after ** must be a mapping"
                )})]
            }
        },
    };
    match behaviour(args, kwargs) {
        PyOutcome::Return(value) => vec![item(value), end()],
        PyOutcome::Yield(values) => values.into_iter().map(item).chain([end()]).collect(),
        PyOutcome::Raise(exception) => {
            vec![json!({"__except__": traceback_of_call(method, &exception)})]
        }
        PyOutcome::YieldThenRaise(values, exception) => values
            .into_iter()
            .map(item)
            .chain([json!({"__except__": traceback_of_iteration(method, &exception)})])
            .collect(),
    }
}

/// A Python farine 0.19 service: one queue, consumer and prefetch of 1 per method.
struct PythonServer {
    connection: Connection,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    seen: Arc<Mutex<Vec<SeenRequest>>>,
}

impl PythonServer {
    /// With `strays`, stray frames for other calls are published to the caller's reply
    /// path before every real frame.
    async fn start(service: &str, methods: Vec<(&str, PyMethod)>, strays: bool) -> PythonServer {
        let connection = connect().await;
        let setup = connection.create_channel().await.expect("channel");
        setup
            .exchange_declare(
                service.into(),
                ExchangeKind::Direct,
                ExchangeDeclareOptions {
                    durable: true,
                    ..Default::default()
                },
                FieldTable::default(),
            )
            .await
            .expect("declare the service exchange");
        let seen: Arc<Mutex<Vec<SeenRequest>>> = Arc::default();
        let mut tasks = Vec::new();
        for (method, behaviour) in methods {
            let queue = format!("{service}__{method}");
            let consume = connection.create_channel().await.expect("channel");
            consume
                .queue_declare(
                    queue.as_str().into(),
                    QueueDeclareOptions {
                        durable: true,
                        ..Default::default()
                    },
                    FieldTable::default(),
                )
                .await
                .expect("declare the method queue");
            consume
                .queue_bind(
                    queue.as_str().into(),
                    service.into(),
                    queue.as_str().into(),
                    QueueBindOptions::default(),
                    FieldTable::default(),
                )
                .await
                .expect("bind the method queue");
            consume
                .basic_qos(1, BasicQosOptions::default())
                .await
                .expect("prefetch 1");
            let consumer = consume
                .basic_consume(
                    queue.as_str().into(),
                    "".into(),
                    BasicConsumeOptions::default(),
                    FieldTable::default(),
                )
                .await
                .expect("consume the method queue");
            // Replies go through kombu's producer pool: another channel, no confirms.
            let publish = connection.create_channel().await.expect("channel");
            tasks.push(tokio::spawn(serve_python_method(
                service.to_string(),
                method.to_string(),
                consume,
                consumer,
                publish,
                behaviour,
                seen.clone(),
                strays,
            )));
        }
        let _ = setup.close(200, "OK".into()).await;
        PythonServer {
            connection,
            tasks,
            seen,
        }
    }

    fn seen(&self) -> Vec<SeenRequest> {
        self.seen.lock().unwrap().clone()
    }

    /// Closes the connection first (the consumers end with it), then ends the tasks:
    /// aborting tasks that own channels and consumers first can leave `close` waiting.
    async fn stop(self) {
        let _ = tokio::time::timeout(
            Duration::from_secs(10),
            self.connection.close(200, "OK".into()),
        )
        .await;
        for task in self.tasks {
            task.abort();
            let _ = task.await;
        }
    }
}

/// `Publisher.send(frame, routing_key=reply_to, correlation_id=...)` on the service exchange.
async fn publish_reply(
    channel: &Channel,
    service: &str,
    reply_to: &str,
    correlation_id: Option<&str>,
    frame: &Value,
) {
    let mut properties = kombu_properties(correlation_id.unwrap_or_default());
    if correlation_id.is_none() {
        properties = BasicProperties::default()
            .with_content_type("application/json".into())
            .with_content_encoding("utf-8".into())
            .with_delivery_mode(2);
    }
    let published = channel
        .basic_publish(
            service.into(),
            reply_to.into(),
            BasicPublishOptions::default(),
            &python_json(frame),
            properties,
        )
        .await;
    match published {
        Ok(confirm) => {
            let _ = confirm.await;
        }
        Err(err) => eprintln!("python server: could not publish a reply: {err}"),
    }
}

#[allow(clippy::too_many_arguments)]
async fn serve_python_method(
    service: String,
    method: String,
    _consume: Channel,
    mut consumer: lapin::Consumer,
    publish: Channel,
    behaviour: PyMethod,
    seen: Arc<Mutex<Vec<SeenRequest>>>,
    strays: bool,
) {
    let mut previous: Option<String> = None;
    while let Some(Ok(delivery)) = consumer.next().await {
        // 1. `message.ack()` first: at-most-once.
        if let Err(err) = delivery.ack(BasicAckOptions::default()).await {
            eprintln!("python server: could not ack: {err}");
        }
        let json_content = delivery
            .properties
            .content_type()
            .as_ref()
            .map(|c| c.as_str())
            == Some("application/json");
        let body: Option<Value> = if json_content {
            serde_json::from_slice(&delivery.data).ok()
        } else {
            None
        };
        seen.lock().unwrap().push(SeenRequest {
            method: method.clone(),
            exchange: delivery.exchange.as_str().to_string(),
            routing_key: delivery.routing_key.as_str().to_string(),
            redelivered: delivery.redelivered,
            properties: delivery.properties.clone(),
            body: body.clone(),
        });
        // `message.properties['reply_to']` outside the try: a KeyError kills the thread.
        let (Some(reply_to), Some(correlation_id)) = (
            text(delivery.properties.reply_to()),
            text(delivery.properties.correlation_id()),
        ) else {
            eprintln!("python server: request without reply_to or correlation_id: thread dies");
            return;
        };
        for frame in python_frames(&method, body.as_ref(), &behaviour) {
            if strays {
                let other = || Some(uuid::Uuid::new_v4().simple().to_string());
                let mut others = vec![
                    (other(), json!({"__except__": "stray: not your call"})),
                    (other(), item(json!("stray"))),
                    (other(), end()),
                    (None, json!({"__except__": "stray without correlation_id"})),
                ];
                if previous.is_some() {
                    others.push((previous.clone(), item(json!("stray of the previous call"))));
                    others.push((
                        previous.clone(),
                        json!({"__except__": "stray of the previous call"}),
                    ));
                }
                for (id, stray) in others {
                    publish_reply(&publish, &service, &reply_to, id.as_deref(), &stray).await;
                }
            }
            publish_reply(&publish, &service, &reply_to, Some(&correlation_id), &frame).await;
        }
        previous = Some(correlation_id);
    }
}

fn int_arg(args: &[Value], kwargs: &Map<String, Value>, index: usize, name: &str) -> Option<i64> {
    args.get(index).or_else(|| kwargs.get(name))?.as_i64()
}

/// The methods of the emulated Python service.
fn legacy_methods() -> Vec<(&'static str, PyMethod)> {
    vec![
        (
            "add",
            Arc::new(|args: &[Value], kwargs: &Map<String, Value>| {
                match (int_arg(args, kwargs, 0, "a"), int_arg(args, kwargs, 1, "b")) {
                    (Some(a), Some(b)) => PyOutcome::Return(json!(a + b)),
                    _ => PyOutcome::Raise(
                        "TypeError: add() takes exactly 3 arguments (2 given)".into(),
                    ),
                }
            }) as PyMethod,
        ),
        (
            "echo",
            Arc::new(|args: &[Value], kwargs: &Map<String, Value>| {
                PyOutcome::Return(
                    args.first()
                        .or_else(|| kwargs.get("value"))
                        .cloned()
                        .unwrap_or(Value::Null),
                )
            }),
        ),
        (
            "nothing",
            Arc::new(|_: &[Value], _: &Map<String, Value>| PyOutcome::Return(Value::Null)),
        ),
        (
            "falsy",
            Arc::new(|_: &[Value], _: &Map<String, Value>| PyOutcome::Yield(falsy_and_truthy())),
        ),
        (
            "upto",
            Arc::new(|args: &[Value], kwargs: &Map<String, Value>| {
                let n = int_arg(args, kwargs, 0, "n").unwrap_or(0);
                PyOutcome::Yield((0..n).map(|i| json!(i)).collect())
            }),
        ),
        (
            "fails",
            Arc::new(|_: &[Value], _: &Map<String, Value>| PyOutcome::Raise(NAME_ERROR.into())),
        ),
        (
            "broken",
            Arc::new(|_: &[Value], _: &Map<String, Value>| {
                PyOutcome::YieldThenRaise(vec![json!(1), json!(0)], ZERO_DIVISION.into())
            }),
        ),
    ]
}

fn legacy_topology(service: &str) -> (Vec<String>, Vec<String>) {
    let queues = legacy_methods()
        .iter()
        .map(|(method, _)| format!("{service}__{method}"))
        .collect();
    (queues, vec![service.to_string()])
}

async fn collect_stream(
    client: &farine::Client,
    service: &str,
    method: &str,
    args: Value,
) -> Vec<farine::Result<Value>> {
    client
        .call_stream(service, method, args)
        .await
        .unwrap_or_else(|err| panic!("{service}.{method} starts: {err}"))
        .collect()
        .await
}

fn assert_python_error(err: &farine::Error, call: &str, traceback: &str) {
    match err {
        farine::Error::Remote {
            call: got_call,
            kind,
            message,
            data,
        } => {
            assert_eq!(got_call, call);
            assert_eq!(
                kind, "remote",
                "a Python error has no __error__: kind remote"
            );
            assert_eq!(message, traceback, "the traceback text, unchanged");
            assert_eq!(data, &None);
        }
        other => panic!("expected farine::Error::Remote, got {other:?}"),
    }
    assert_eq!(err.remote_kind(), Some("remote"));
    let shown = err.to_string();
    assert!(shown.contains(call), "{shown}");
}

/// The calls of test 2 and 3, against an emulated Python service named `service`.
async fn call_python_service(service: &str) -> farine::Client {
    let client = farine::Client::connect(&config(&format!("[{service}]\nrpc_timeout = 10s\n")))
        .await
        .expect("the Rust client connects");

    // Unary, by position and by name.
    assert_eq!(
        client.call(service, "add", json!([2, 3])).await.unwrap(),
        json!(5)
    );
    assert_eq!(
        client
            .call(service, "add", json!({"a": 40, "b": 2}))
            .await
            .unwrap(),
        json!(42)
    );
    // Falsy results are results (a Python caller would get StopIteration).
    for value in falsy_and_truthy() {
        assert_eq!(
            client
                .call(service, "echo", json!([value.clone()]))
                .await
                .unwrap(),
            value,
            "echo({value})"
        );
    }
    assert_eq!(
        client.call(service, "nothing", json!([])).await.unwrap(),
        Value::Null
    );
    // Python's `\uXXXX` escapes, surrogate pairs included, decode.
    assert_eq!(
        client
            .call(service, "echo", json!(["h\u{e9}llo \u{2603} \u{1f35e}"]))
            .await
            .unwrap(),
        json!("h\u{e9}llo \u{2603} \u{1f35e}")
    );

    // Streams: every item, falsy ones included, in order.
    let items: Vec<Value> = collect_stream(&client, service, "falsy", json!([]))
        .await
        .into_iter()
        .map(|item| item.expect("an item"))
        .collect();
    assert_eq!(items, falsy_and_truthy());
    let items: Vec<u32> = client
        .call_stream(service, "upto", json!([4]))
        .await
        .unwrap()
        .map(|item| serde_json::from_value::<u32>(item.unwrap()).unwrap())
        .collect()
        .await;
    assert_eq!(items, vec![0, 1, 2, 3]);
    assert!(collect_stream(&client, service, "upto", json!([0]))
        .await
        .is_empty());

    // A traceback alone (no end frame) is the call's error.
    let err = client.call(service, "fails", json!([])).await.unwrap_err();
    assert_python_error(
        &err,
        &format!("{service}.fails"),
        &traceback_of_call("fails", NAME_ERROR),
    );
    let err = client.call(service, "add", json!([1])).await.unwrap_err();
    assert_eq!(err.remote_kind(), Some("remote"));
    assert!(
        err.to_string()
            .contains("TypeError: add() takes exactly 3 arguments"),
        "{err}"
    );
    // ... and in a stream, after the items already sent.
    let results = collect_stream(&client, service, "broken", json!([])).await;
    assert_eq!(results.len(), 3, "{results:?}");
    assert_eq!(results[0].as_ref().unwrap(), &json!(1));
    assert_eq!(results[1].as_ref().unwrap(), &json!(0));
    assert_python_error(
        results[2].as_ref().unwrap_err(),
        &format!("{service}.broken"),
        &traceback_of_iteration("broken", ZERO_DIVISION),
    );

    // Concurrent calls share the client's reply queue; each gets its own answer.
    let calls = (0..20i64).map(|i| {
        let client = client.clone();
        async move { client.call(service, "add", json!([i, i])).await.unwrap() }
    });
    let sums = futures::future::join_all(calls).await;
    assert_eq!(sums, (0..20i64).map(|i| json!(2 * i)).collect::<Vec<_>>());
    client
}

/// What the Python server received from the Rust client: what kombu and `main_callback` need.
fn check_requests_as_python_sees_them(service: &str, seen: &[SeenRequest]) {
    assert!(!seen.is_empty());
    let mut reply_queues: Vec<String> = Vec::new();
    let mut ids = std::collections::HashSet::new();
    for request in seen {
        let props = &request.properties;
        assert_eq!(request.exchange, service, "{request:?}");
        assert_eq!(
            request.routing_key,
            format!("{service}__{}", request.method)
        );
        assert!(!request.redelivered, "{request:?}");
        assert_eq!(
            text(props.content_type()).as_deref(),
            Some("application/json"),
            "kombu decodes the request by its content_type"
        );
        // Transient (Python sends 2; kombu accepts either): the request expires with the
        // caller's deadline, so persisting it would protect nothing.
        assert_eq!(*props.delivery_mode(), Some(1), "transient");
        assert!(
            props.expiration().is_some(),
            "expires at the caller's deadline"
        );
        let id = text(props.correlation_id()).expect("correlation_id");
        assert!(!id.is_empty());
        assert!(ids.insert(id), "correlation ids are unique per call");
        let reply_to = text(props.reply_to()).expect("reply_to");
        if !reply_queues.contains(&reply_to) {
            reply_queues.push(reply_to);
        }
        let body = request.body.as_ref().expect("the request body is JSON");
        assert!(body["args"].is_array(), "{body}");
        assert!(body["kwargs"].is_object(), "{body}");
        assert_eq!(
            body.as_object().unwrap().len(),
            2,
            "only args and kwargs: {body}"
        );
    }
    assert_eq!(
        reply_queues.len(),
        1,
        "one reply queue per client: {reply_queues:?}"
    );
}

/// Runs the calls of [`call_python_service`] against an emulated Python service named
/// `<prefix>_<random>`, so that concurrent runs of this file never share it.
async fn rust_client_against_python_server(prefix: &str, strays: bool) {
    support::require_rabbitmq();
    let service = format!(
        "{prefix}_{}",
        &uuid::Uuid::new_v4().simple().to_string()[..8]
    );
    let (queues, exchanges) = legacy_topology(&service);
    let server = Arc::new(Mutex::new(Some(
        PythonServer::start(&service, legacy_methods(), strays).await,
    )));
    let body = {
        let server = server.clone();
        let queues = queues.clone();
        let service = service.clone();
        async move {
            let client = call_python_service(&service).await;
            let seen = server.lock().unwrap().as_ref().unwrap().seen();
            check_requests_as_python_sees_them(&service, &seen);
            let connection = connect().await;
            for queue in &queues {
                assert_eq!(ready(&connection, queue).await, 0, "{queue} was consumed");
            }
            // The client's reply queue goes with the client.
            let reply_queue = text(seen[0].properties.reply_to()).unwrap();
            assert!(queue_exists(&connection, &reply_queue).await);
            drop(client);
            let mut gone = false;
            for _ in 0..100 {
                if !queue_exists(&connection, &reply_queue).await {
                    gone = true;
                    break;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            assert!(
                gone,
                "the Rust client's reply queue {reply_queue} outlives the client"
            );
            let _ = connection.close(200, "OK".into()).await;
        }
    };
    let cleanup = async move {
        let server = server.lock().unwrap().take();
        if let Some(server) = server {
            server.stop().await;
        }
        remove(&queues, &exchanges).await
    };
    bounded(&service, body, cleanup).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rust_client_calls_python_server() {
    rust_client_against_python_server("t_py_legacy", false).await;
}

// ---------------------------------------------------------------------------------------
// 3. Frames for other calls on the reply path are ignored.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rust_client_ignores_frames_of_other_calls() {
    rust_client_against_python_server("t_py_stray", true).await;
}

// ---------------------------------------------------------------------------------------

#[test]
fn python_json_spelling() {
    assert_eq!(
        String::from_utf8(python_json(&json!({
            "args": [1, "h\u{e9} \u{1f35e}", [], {}],
            "kwargs": {"a": null, "b": 0.5}
        })))
        .unwrap(),
        r#"{"args": [1, "h\u00e9 \ud83c\udf5e", [], {}], "kwargs": {"a": null, "b": 0.5}}"#
    );
    assert_eq!(
        python_caller_sees(&[item(json!(0)), item(json!(2)), end()]),
        (vec![json!(2)], None)
    );
}
