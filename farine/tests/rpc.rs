//! RPC against a real RabbitMQ: unary and streaming calls, argument binding, errors,
//! deadlines, cancellation, injected clients, the blocking client.

mod support;

use farine::prelude::*;
use farine::rpc::CallOptions;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;
use support::{config, eventually, Raw};

#[derive(Debug, Serialize, Deserialize, PartialEq)]
pub enum MathError {
    DivisionByZero { numerator: i64 },
}

impl std::fmt::Display for MathError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            MathError::DivisionByZero { numerator } => {
                write!(f, "cannot divide {numerator} by zero")
            }
        }
    }
}

static PRODUCED: AtomicUsize = AtomicUsize::new(0);

#[derive(Default)]
pub struct Maths;

#[farine::service(name = "t_maths")]
impl Maths {
    #[rpc::method]
    async fn add(&self, a: i64, b: i64) -> i64 {
        a + b
    }

    #[rpc::method]
    async fn div(&self, a: i64, b: i64) -> Result<i64, MathError> {
        if b == 0 {
            return Err(MathError::DivisionByZero { numerator: a });
        }
        Ok(a / b)
    }

    #[rpc::method]
    async fn greet(&self, name: String, greeting: Option<String>) -> String {
        format!("{}, {name}", greeting.unwrap_or_else(|| "hello".into()))
    }

    #[rpc::method]
    async fn nothing(&self) {}

    #[rpc::method]
    async fn explode(&self) -> farine::Result<i64> {
        panic!("kaboom")
    }

    #[rpc::method]
    async fn fails(&self) -> farine::Result<i64> {
        Err(farine::Error::Runtime("the abacus is broken".into()))
    }

    #[rpc::method]
    fn count(&self, n: u32) -> impl Stream<Item = u32> + Send + 'static {
        futures::stream::iter(0..n)
    }

    #[rpc::method]
    fn falsy(&self) -> impl Stream<Item = Value> + Send + 'static {
        futures::stream::iter(vec![
            json!(0),
            json!(""),
            json!(false),
            json!([]),
            json!(null),
            json!({}),
        ])
    }

    #[rpc::method]
    fn broken_stream(&self) -> impl Stream<Item = Result<u32, MathError>> + Send + 'static {
        futures::stream::iter(vec![
            Ok(1),
            Ok(2),
            Err(MathError::DivisionByZero { numerator: 3 }),
            Ok(4),
        ])
    }

    #[rpc::method]
    fn endless(&self) -> impl Stream<Item = u64> + Send + 'static {
        futures::stream::unfold(0u64, |n| async move {
            tokio::time::sleep(Duration::from_millis(5)).await;
            PRODUCED.fetch_add(1, Ordering::SeqCst);
            Some((n, n + 1))
        })
    }

    #[rpc::method]
    async fn sleep(&self, millis: u64) -> u64 {
        tokio::time::sleep(Duration::from_millis(millis)).await;
        millis
    }

    /// Calls another service through an injected client.
    #[rpc::method]
    async fn add_via_proxy(
        &self,
        proxy: t_proxy::ProxyClient,
        a: i64,
        b: i64,
    ) -> farine::Result<i64> {
        proxy.double_add(a, b).await
    }
}

mod t_proxy {
    use super::*;

    #[derive(Default)]
    pub struct Proxy;

    #[farine::service(name = "t_proxy")]
    impl Proxy {
        /// (a + b) * 2, asking t_maths for the sum.
        #[rpc::method]
        async fn double_add(
            &self,
            maths: super::MathsClient,
            a: i64,
            b: i64,
        ) -> farine::Result<i64> {
            Ok(maths.add(a, b).await? * 2)
        }
    }
}

const QUEUES: &[&str] = &[
    "t_maths__add",
    "t_maths__div",
    "t_maths__greet",
    "t_maths__nothing",
    "t_maths__explode",
    "t_maths__fails",
    "t_maths__count",
    "t_maths__falsy",
    "t_maths__broken_stream",
    "t_maths__endless",
    "t_maths__sleep",
    "t_maths__add_via_proxy",
    "t_proxy__double_add",
];

/// One service process for all the tests of this file: started once, per test runtime.
async fn start() -> (farine::Running, MathsClient) {
    support::require_rabbitmq();
    let running = farine::Runtime::new(config("[t_maths]\nrpc_timeout = 5s\n"))
        .only(["t_maths", "t_proxy"])
        .start()
        .await
        .expect("services start");
    let client = MathsClient::connect(&config("[t_maths]\nrpc_timeout = 5s\n"))
        .await
        .expect("client connects");
    (running, client)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rpc_end_to_end() {
    let (running, maths) = start().await;

    // Typed unary calls.
    assert_eq!(maths.add(2, 3).await.unwrap(), 5);
    assert_eq!(maths.div(7, 2).await.unwrap(), 3);
    assert_eq!(maths.greet("ada".into(), None).await.unwrap(), "hello, ada");
    maths.nothing().await.unwrap();

    // The service's own error comes back as its type.
    let err = maths.div(1, 0).await.unwrap_err();
    assert_eq!(err.remote_kind(), Some("service"));
    assert_eq!(
        err.service_error::<MathError>(),
        Some(MathError::DivisionByZero { numerator: 1 })
    );
    assert!(
        err.to_string().contains("t_maths.div")
            && err.to_string().contains("cannot divide 1 by zero"),
        "{err}"
    );

    // Errors and panics are answered, and the service keeps serving.
    let err = maths.explode().await.unwrap_err();
    assert_eq!(err.remote_kind(), Some("internal"));
    assert!(err.to_string().contains("kaboom"), "{err}");
    let err = maths.fails().await.unwrap_err();
    assert!(err.to_string().contains("the abacus is broken"), "{err}");
    assert_eq!(maths.add(1, 1).await.unwrap(), 2);

    // Untyped calls: positional, by name, bad arguments.
    let client = farine::Client::connect(&config("")).await.unwrap();
    assert_eq!(
        client.call("t_maths", "add", json!([40, 2])).await.unwrap(),
        json!(42)
    );
    assert_eq!(
        client
            .call("t_maths", "add", json!({"b": 1, "a": 2}))
            .await
            .unwrap(),
        json!(3)
    );
    assert_eq!(
        client
            .call("t_maths", "greet", json!({"name": "bob", "greeting": "hi"}))
            .await
            .unwrap(),
        json!("hi, bob")
    );
    for (args, expected) in [
        (json!([1]), "missing argument `b`"),
        (json!([1, 2, 3]), "takes 2 arguments, got 3"),
        (json!(["one", 2]), "argument `a` expects i64"),
        (json!({"a": 1, "b": 2, "c": 3}), "no parameter named `c`"),
    ] {
        let err = client.call("t_maths", "add", args).await.unwrap_err();
        assert_eq!(err.remote_kind(), Some("bad_arguments"), "{err}");
        assert!(
            err.to_string().contains(expected),
            "{err} should say {expected}"
        );
    }

    // Unknown method and service fail at once, naming what is missing.
    let err = client.call("t_maths", "nope", json!([])).await.unwrap_err();
    assert!(matches!(err, farine::Error::UnknownMethod { .. }), "{err}");
    assert!(err.to_string().contains("t_maths.nope"), "{err}");
    let err = client
        .call("t_no_such_service", "add", json!([]))
        .await
        .unwrap_err();
    assert!(matches!(err, farine::Error::UnknownService { .. }), "{err}");

    // Streams: every item in order, falsy ones included; an error item ends the stream.
    let items: Vec<u32> = maths
        .count(5)
        .await
        .unwrap()
        .map(|i| i.unwrap())
        .collect()
        .await;
    assert_eq!(items, vec![0, 1, 2, 3, 4]);
    let empty: Vec<u32> = maths
        .count(0)
        .await
        .unwrap()
        .map(|i| i.unwrap())
        .collect()
        .await;
    assert!(empty.is_empty());
    let falsy: Vec<Value> = maths
        .falsy()
        .await
        .unwrap()
        .map(|i| i.unwrap())
        .collect()
        .await;
    assert_eq!(
        falsy,
        vec![
            json!(0),
            json!(""),
            json!(false),
            json!([]),
            json!(null),
            json!({})
        ]
    );
    let broken: Vec<farine::Result<u32>> = maths.broken_stream().await.unwrap().collect().await;
    assert_eq!(broken.len(), 3);
    assert_eq!(broken[0].as_ref().unwrap(), &1);
    assert_eq!(broken[1].as_ref().unwrap(), &2);
    let err = broken[2].as_ref().unwrap_err();
    assert_eq!(
        err.service_error::<MathError>(),
        Some(MathError::DivisionByZero { numerator: 3 })
    );

    // Deadlines: a slow call times out naming the call.
    let err = maths
        .clone()
        .timeout(Duration::from_millis(300))
        .sleep(2_000)
        .await
        .unwrap_err();
    assert!(matches!(err, farine::Error::Timeout { .. }), "{err}");
    assert!(err.to_string().contains("t_maths.sleep"), "{err}");
    let options = CallOptions {
        timeout: Some(Duration::from_secs(5)),
        idle_timeout: None,
    };
    let slow = client
        .request(
            "t_maths",
            "sleep",
            vec![json!(50)],
            Default::default(),
            options,
        )
        .await
        .unwrap()
        .unary()
        .await
        .unwrap();
    assert_eq!(slow, json!(50));

    // Dropping a stream stops the server producing.
    let mut endless = maths.endless().await.unwrap();
    for expected in 0..3u64 {
        assert_eq!(endless.next().await.unwrap().unwrap(), expected);
    }
    drop(endless);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let after_drop = PRODUCED.load(Ordering::SeqCst);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        PRODUCED.load(Ordering::SeqCst),
        after_drop,
        "the server stopped producing"
    );

    // An injected client calls another service, which calls back through its own.
    assert_eq!(maths.add_via_proxy(3, 4).await.unwrap(), 14);

    // Many concurrent calls share one reply queue.
    let calls = (0..200i64).map(|i| {
        let maths = maths.clone();
        async move { maths.add(i, i).await.unwrap() }
    });
    let sums = futures::future::join_all(calls).await;
    assert_eq!(sums, (0..200i64).map(|i| 2 * i).collect::<Vec<_>>());

    running.shutdown().await.unwrap();
    let raw = Raw::connect().await;
    let dead: Vec<String> = QUEUES.iter().map(|q| format!("{q}.dlq")).collect();
    raw.delete_queues(QUEUES).await;
    raw.delete_queues(&dead.iter().map(String::as_str).collect::<Vec<_>>())
        .await;
    raw.delete_exchanges(&["t_maths", "t_proxy"]).await;
}

#[test]
fn blocking_client_calls_and_iterates() {
    let server = tokio::runtime::Runtime::new().unwrap();
    let running = server.block_on(async {
        support::require_rabbitmq();
        farine::Runtime::new(config(""))
            .only(["t_blocking"])
            .start()
            .await
            .expect("service starts")
    });
    let client = farine::rpc::blocking::Client::connect(&config("")).unwrap();
    let sum: i64 = client
        .call_typed("t_blocking", "mul", json!([6, 7]))
        .unwrap();
    assert_eq!(sum, 42);
    let items: Vec<u32> = client
        .call_stream_typed::<u32>("t_blocking", "upto", json!([4]))
        .unwrap()
        .map(|i| i.unwrap())
        .collect();
    assert_eq!(items, vec![0, 1, 2, 3]);
    // Leaving an iterator early is fine.
    let mut partial = client
        .call_stream("t_blocking", "upto", json!([100]))
        .unwrap();
    assert_eq!(partial.next().unwrap().unwrap(), json!(0));
    drop(partial);
    drop(client);
    server.block_on(async {
        running.shutdown().await.unwrap();
        let raw = Raw::connect().await;
        raw.delete_queues(&["t_blocking__mul", "t_blocking__upto"])
            .await;
        raw.delete_exchanges(&["t_blocking"]).await;
    });
}

#[derive(Default)]
struct Blocking;

#[farine::service(name = "t_blocking")]
impl Blocking {
    #[rpc::method]
    async fn mul(&self, a: i64, b: i64) -> i64 {
        a * b
    }

    #[rpc::method]
    fn upto(&self, n: u32) -> impl Stream<Item = u32> + Send + 'static {
        futures::stream::iter(0..n)
    }
}

#[tokio::test]
async fn requests_without_reply_to_are_dead_lettered_not_fatal() {
    let raw = Raw::connect().await;
    let running = farine::Runtime::new(config(""))
        .only(["t_noreply"])
        .start()
        .await
        .expect("service starts");
    raw.publish(
        "t_noreply",
        "t_noreply__ping",
        br#"{"args": [], "kwargs": {}}"#,
    )
    .await;
    let dead = raw
        .get("t_noreply__ping.dlq", Duration::from_secs(10))
        .await
        .expect("dead-lettered");
    let reason = support::header(&dead.delivery.properties, "x-farine-error").unwrap();
    assert!(reason.contains("without reply_to"), "{reason}");
    let client = farine::Client::connect(&config("")).await.unwrap();
    assert_eq!(
        client.call("t_noreply", "ping", json!([])).await.unwrap(),
        json!("pong")
    );
    assert!(eventually(Duration::from_secs(1), || true).await);
    running.shutdown().await.unwrap();
    raw.delete_queues(&["t_noreply__ping", "t_noreply__ping.dlq"])
        .await;
    raw.delete_exchanges(&["t_noreply"]).await;
}

#[derive(Default)]
struct NoReply;

#[farine::service(name = "t_noreply")]
impl NoReply {
    #[rpc::method]
    async fn ping(&self) -> &'static str {
        "pong"
    }
}

#[derive(Default)]
struct Direct;

#[farine::service(name = "t_direct")]
impl Direct {
    #[rpc::method]
    fn upto(&self, n: u32) -> impl Stream<Item = u32> + Send + 'static {
        futures::stream::iter(0..n)
    }
}

/// A bare-lapin caller on RabbitMQ's direct reply-to gets every frame of a long stream (the
/// broker returns mandatory replies to it as unroutable although it delivers them).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn callers_on_direct_reply_to_get_whole_streams() {
    use lapin::options::{BasicConsumeOptions, BasicPublishOptions};
    let raw = Raw::connect().await;
    let running = farine::Runtime::new(config(""))
        .only(["t_direct"])
        .start()
        .await
        .unwrap();
    let channel = raw.connection.create_channel().await.unwrap();
    let mut replies = channel
        .basic_consume(
            "amq.rabbitmq.reply-to".into(),
            "".into(),
            BasicConsumeOptions {
                no_ack: true,
                ..Default::default()
            },
            lapin::types::FieldTable::default(),
        )
        .await
        .unwrap();
    channel
        .basic_publish(
            "t_direct".into(),
            "t_direct__upto".into(),
            BasicPublishOptions::default(),
            br#"{"args": [600], "kwargs": {}}"#,
            lapin::BasicProperties::default()
                .with_correlation_id("c1".into())
                .with_reply_to("amq.rabbitmq.reply-to".into()),
        )
        .await
        .unwrap();
    let mut items = 0;
    loop {
        let next = tokio::time::timeout(Duration::from_secs(10), replies.next())
            .await
            .expect("the stream goes on to its end frame")
            .unwrap()
            .unwrap();
        let frame: Value = serde_json::from_slice(&next.data).unwrap();
        if frame["__end__"] == json!(true) {
            break;
        }
        assert_eq!(frame["body"], json!(items));
        items += 1;
    }
    assert_eq!(items, 600);
    running.shutdown().await.unwrap();
    raw.delete_queues(&["t_direct__upto", "t_direct__upto.dlq"])
        .await;
    raw.delete_exchanges(&["t_direct"]).await;
}

#[derive(Default)]
struct DirectSeam;

#[farine::service(name = "t_direct_seam")]
impl DirectSeam {
    #[rpc::method]
    fn upto(&self, n: u32) -> impl Stream<Item = u32> + Send + 'static {
        futures::stream::iter(0..n)
    }
}

/// The same caller through farine's transport seam (as on `memory://`): a subscription to
/// `amq.rabbitmq.reply-to` receives the replies to what its broker publishes with that
/// `reply_to`, the transport pairing the two on one channel as RabbitMQ requires.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn callers_on_direct_reply_to_through_the_transport_get_whole_streams() {
    use farine::transport::{Next, Properties, Subscribe, DIRECT_REPLY_TO};
    let raw = Raw::connect().await;
    let config = config("");
    let running = farine::Runtime::new(config.clone())
        .only(["t_direct_seam"])
        .start()
        .await
        .unwrap();
    let settings = config.service("t_direct_caller").unwrap();
    let caller = farine::broker::Broker::for_service(&settings)
        .await
        .unwrap();
    let asking = Properties::json()
        .with_correlation_id("c2")
        .with_reply_to(DIRECT_REPLY_TO);
    let body = br#"{"args": [300], "kwargs": {}}"#;
    let refused = caller
        .publish(
            "t_direct_seam",
            "t_direct_seam__upto",
            body,
            asking.clone(),
            true,
        )
        .await;
    assert!(refused.is_err(), "no direct reply-to consumer yet");
    let mut replies = caller
        .subscribe(Subscribe {
            label: "raw caller".into(),
            queue: DIRECT_REPLY_TO.into(),
            prefetch: 0,
            no_ack: true,
            topology: Vec::new(),
        })
        .await
        .unwrap();
    caller
        .publish("t_direct_seam", "t_direct_seam__upto", body, asking, true)
        .await
        .unwrap();
    let mut items = 0;
    loop {
        let next = tokio::time::timeout(Duration::from_secs(10), replies.next())
            .await
            .expect("the stream goes on to its end frame");
        let Next::Delivery(delivery) = next else {
            panic!("the reply consumer ended");
        };
        let frame: Value = serde_json::from_slice(&delivery.message.body).unwrap();
        if frame["__end__"] == json!(true) {
            break;
        }
        assert_eq!(frame["body"], json!(items));
        items += 1;
    }
    assert_eq!(items, 300);
    replies.close().await;
    caller.close().await;
    running.shutdown().await.unwrap();
    raw.delete_queues(&["t_direct_seam__upto", "t_direct_seam__upto.dlq"])
        .await;
    raw.delete_exchanges(&["t_direct_seam"]).await;
}
