//! `farine gateway` against RabbitMQ (the test virtual host): RPC over HTTP (JSON, NDJSON,
//! SSE) and WebSocket, broadcasts as Server-Sent Events and WebSocket events, and each
//! refusal: methods not exposed, missing or bad tokens, foreign origins, sizes, rates, calls
//! and subscriptions per connection, and a browser that does not read.

mod support;

use farine::gateway::Gateway;
use farine::prelude::*;
use farine::testing::TestKit;
use futures::{SinkExt, StreamExt};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;
use support::Raw;
use tokio_tungstenite::tungstenite::{self, Message};

const WAIT: Duration = Duration::from_secs(10);
const JWT_SECRET: &str = "a-test-secret-of-at-least-32-bytes!!";

static PRODUCED: AtomicUsize = AtomicUsize::new(0);

#[derive(Debug, Serialize, Deserialize)]
pub enum Refusal {
    TooBig { limit: i64 },
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "too big")
    }
}

#[derive(Default)]
pub struct GwCalc;

#[farine::service(name = "t_gw_calc")]
impl GwCalc {
    #[rpc::method]
    async fn add(&self, a: i64, b: i64) -> i64 {
        a + b
    }

    #[rpc::method]
    fn count(&self, n: u64) -> impl Stream<Item = u64> + Send + 'static {
        futures::stream::iter(0..n)
    }

    /// Endless, slowly: for cancels.
    #[rpc::method]
    fn ticks(&self) -> impl Stream<Item = u64> + Send + 'static {
        futures::stream::unfold(0u64, |n| async move {
            tokio::time::sleep(Duration::from_millis(5)).await;
            PRODUCED.fetch_add(1, Ordering::SeqCst);
            Some((n, n + 1))
        })
    }

    #[rpc::method]
    async fn limited(&self, n: i64) -> Result<i64, Refusal> {
        if n > 10 {
            return Err(Refusal::TooBig { limit: 10 });
        }
        Ok(n)
    }

    #[rpc::method]
    async fn slow(&self, millis: u64) -> u64 {
        tokio::time::sleep(Duration::from_millis(millis)).await;
        millis
    }

    #[rpc::method]
    async fn boom(&self) -> farine::Result<i64> {
        panic!("secret internals at /srv/app/src/lib.rs:42")
    }

    /// Not exposed.
    #[rpc::method]
    async fn secret(&self) -> i64 {
        42
    }

    /// Broadcasts `{"title": ...}` on `t_gw.news`.
    #[rpc::method(broadcast = "t_gw.news")]
    async fn post(&self, events: Broadcast, title: String) -> farine::Result<()> {
        events.send(&json!({ "title": title }))
    }
}

static FOLLOWED: std::sync::Mutex<Vec<(Option<String>, Value)>> = std::sync::Mutex::new(Vec::new());

/// Its deadline is short at the gateway ([t_gw_slow] rpc_timeout = 1s); t_gw_calc's is the
/// default, so a slow machine does not make its calls time out.
#[derive(Default)]
pub struct GwSlow;

#[farine::service(name = "t_gw_slow")]
impl GwSlow {
    #[rpc::method]
    async fn sleep(&self, millis: u64) -> u64 {
        tokio::time::sleep(Duration::from_millis(millis)).await;
        millis
    }
}

/// Another farine service following `t_gw.news` through the gateway's event stream.
#[derive(Default)]
pub struct GwFollow;

#[farine::service(name = "t_gw_follow")]
impl GwFollow {
    #[stream::http]
    async fn on_news(&self, event: Event<Value>) {
        FOLLOWED
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push((event.id, event.data));
    }
}

/// The services, and gateways over them with various settings.
struct World {
    kit: TestKit,
    gateways: Vec<Gateway>,
}

impl World {
    async fn start() -> World {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let kit = TestKit::broker(support::amqp_uri())
            .service("t_gw_calc")
            .service("t_gw_slow")
            .set("t_gw_calc", "concurrency", "32")
            .start()
            .await
            .expect("t_gw_calc starts");
        World {
            kit,
            gateways: Vec::new(),
        }
    }

    /// A gateway with `[gateway]` keys `extra` (besides listen and expose).
    async fn gateway(&mut self, extra: &str) -> SocketAddr {
        let config = support::config(&format!(
            "[t_gw_slow]\nrpc_timeout = 1s\n\
             [gateway]\nlisten = 127.0.0.1:0\n\
             expose = t_gw_calc.add, t_gw_calc.count, t_gw_calc.ticks, t_gw_calc.limited, \
             t_gw_calc.slow, t_gw_calc.boom, t_gw_calc.post, t_gw_calc.missing, t_gw_slow.sleep\n\
             subscribe = t_gw.news\n{extra}"
        ));
        let gateway = Gateway::start(&config).await.expect("the gateway starts");
        let addr = gateway.local_addr();
        self.gateways.push(gateway);
        addr
    }

    async fn stop(self) {
        for gateway in self.gateways {
            gateway.stop().await;
        }
        self.kit.stop().await.expect("the kit stops");
        let raw = Raw::connect().await;
        // Each method's queue, and its dead-letter queue.
        let queues: Vec<String> = [
            "t_gw_calc__add",
            "t_gw_calc__count",
            "t_gw_calc__ticks",
            "t_gw_calc__limited",
            "t_gw_calc__slow",
            "t_gw_calc__boom",
            "t_gw_calc__secret",
            "t_gw_calc__post",
            "t_gw_slow__sleep",
        ]
        .iter()
        .flat_map(|queue| [queue.to_string(), format!("{queue}.dlq")])
        .collect();
        let queues: Vec<&str> = queues.iter().map(String::as_str).collect();
        raw.delete_queues(&queues).await;
        raw.delete_exchanges(&["t_gw_calc", "t_gw_slow", "t_gw.news", "t_gw_follow"])
            .await;
    }
}

fn http() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(WAIT)
        .build()
        .expect("an HTTP client")
}

/// POSTs `body` to `/rpc/{path}`: the status, and the body.
async fn post(addr: SocketAddr, path: &str, body: &str, headers: &[(&str, &str)]) -> (u16, String) {
    let mut request = http()
        .post(format!("http://{addr}/rpc/{path}"))
        .body(body.to_owned());
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let response = request.send().await.expect("the gateway answers");
    let status = response.status().as_u16();
    (status, response.text().await.expect("a body"))
}

fn json_of(text: &str) -> Value {
    serde_json::from_str(text).unwrap_or_else(|err| panic!("not JSON ({err}): {text}"))
}

type Socket =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

async fn socket(addr: SocketAddr, query: &str) -> Socket {
    let (socket, _) = tokio_tungstenite::connect_async(format!("ws://{addr}/ws{query}"))
        .await
        .expect("the WebSocket opens");
    socket
}

async fn send(socket: &mut Socket, message: Value) {
    socket
        .send(Message::Text(message.to_string().into()))
        .await
        .expect("send on the WebSocket");
}

/// The next JSON message, or `None` once the socket is closed.
async fn receive(socket: &mut Socket) -> Option<Value> {
    loop {
        let message = tokio::time::timeout(WAIT, socket.next())
            .await
            .expect("a message within the wait")?;
        match message {
            Ok(Message::Text(text)) => return Some(json_of(&text)),
            Ok(Message::Close(_)) | Err(_) => return None,
            Ok(_) => continue,
        }
    }
}

/// Messages until one matches `done`.
async fn receive_until(socket: &mut Socket, done: impl Fn(&Value) -> bool) -> Vec<Value> {
    let mut seen = Vec::new();
    loop {
        let message = receive(socket)
            .await
            .unwrap_or_else(|| panic!("the socket closed; seen: {seen:?}"));
        let last = done(&message);
        seen.push(message);
        if last {
            return seen;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_gateway_serves_browsers_and_refuses_what_it_must() {
    let mut world = World::start().await;
    let open = world.gateway("max_calls_per_connection = 3\nmax_subscriptions_per_connection = 1\nmax_body_bytes = 1KiB\nmax_ws_message_bytes = 1KiB\n").await;
    http_calls(open).await;
    http_errors(open).await;
    websocket_calls(open).await;
    websocket_limits(open).await;
    broadcasts(open).await;
    a_farine_listener_follows_through_the_gateway(&world, open).await;

    let tokens = world.gateway("auth_tokens = alpha, bravo\n").await;
    bearer_tokens(tokens).await;
    let jwt = world
        .gateway(&format!("auth_jwt_secret = {JWT_SECRET}\n"))
        .await;
    json_web_tokens(jwt).await;
    let origins = world
        .gateway("allowed_origins = https://app.example.com\n")
        .await;
    origin_checks(origins).await;
    let rated = world.gateway("max_calls_per_second = 2\n").await;
    rate_limits(rated).await;
    let tiny = world
        .gateway("send_queue = 2\nmax_calls_per_second = 1000000\n")
        .await;
    slow_browsers_are_disconnected(&world, tiny).await;
    world.stop().await;
}

async fn http_calls(addr: SocketAddr) {
    assert_eq!(
        post(addr, "t_gw_calc/add", "[2, 3]", &[]).await,
        (200, "5".into())
    );
    assert_eq!(
        post(addr, "t_gw_calc/add", r#"{"a": 20, "b": 22}"#, &[]).await,
        (200, "42".into())
    );
    // A stream, collected.
    assert_eq!(
        post(addr, "t_gw_calc/count", "[3]", &[]).await,
        (200, "[0,1,2]".into())
    );
    assert_eq!(
        post(addr, "t_gw_calc/count", "[0]", &[]).await,
        (200, "[]".into())
    );
    // A stream, line by line.
    let (status, body) = post(
        addr,
        "t_gw_calc/count",
        "[3]",
        &[("accept", "application/x-ndjson")],
    )
    .await;
    assert_eq!((status, body.as_str()), (200, "0\n1\n2\n"));
    // A stream as Server-Sent Events, with its end.
    let (status, body) = post(
        addr,
        "t_gw_calc/count",
        "[2]",
        &[("accept", "text/event-stream")],
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(body, "data: 0\n\ndata: 1\n\nevent: end\ndata: {}\n\n");
}

async fn http_errors(addr: SocketAddr) {
    // Not exposed, and exposed but not existing: the same 404.
    let (status, body) = post(addr, "t_gw_calc/secret", "[]", &[]).await;
    assert_eq!(status, 404, "{body}");
    assert_eq!(
        json_of(&body)["error"]["message"],
        "no method t_gw_calc.secret"
    );
    let (status, body) = post(addr, "t_gw_calc/missing", "[]", &[]).await;
    assert_eq!(status, 404, "{body}");
    assert_eq!(json_of(&body)["error"]["kind"], "not_found");
    let (status, _) = post(addr, "nothing_here/add", "[]", &[]).await;
    assert_eq!(status, 404);
    // Bad arguments: the service says which.
    let (status, body) = post(addr, "t_gw_calc/add", r#"["two", 3]"#, &[]).await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(json_of(&body)["error"]["kind"], "bad_arguments");
    let (status, body) = post(addr, "t_gw_calc/add", "not json", &[]).await;
    assert_eq!(
        (status, json_of(&body)["error"]["kind"].clone()),
        (400, json!("bad_request"))
    );
    let (status, _) = post(addr, "t_gw_calc/add", "7", &[]).await;
    assert_eq!(status, 400);
    // The service's own error: its value.
    let (status, body) = post(addr, "t_gw_calc/limited", "[11]", &[]).await;
    assert_eq!(status, 422, "{body}");
    let error = &json_of(&body)["error"];
    assert_eq!(error["kind"], "service");
    assert_eq!(error["data"], json!({"TooBig": {"limit": 10}}));
    // The deadline ([t_gw_slow] rpc_timeout = 1s).
    let (status, body) = post(addr, "t_gw_slow/sleep", "[3000]", &[]).await;
    assert_eq!(status, 504, "{body}");
    // A panic: a request id, nothing of the inside.
    let (status, body) = post(addr, "t_gw_calc/boom", "[]", &[]).await;
    assert_eq!(status, 502, "{body}");
    assert!(
        !body.contains("secret internals") && !body.contains("/srv"),
        "{body}"
    );
    let request_id = json_of(&body)["error"]["request_id"]
        .as_str()
        .expect("a request id")
        .to_owned();
    assert!(body.contains(&request_id));
    // max_body_bytes = 1KiB.
    let big = format!("[\"{}\", 1]", "x".repeat(2000));
    let (status, _) = post(addr, "t_gw_calc/add", &big, &[]).await;
    assert_eq!(status, 413);
}

async fn websocket_calls(addr: SocketAddr) {
    let mut ws = socket(addr, "").await;
    // Several calls in flight on one socket; answers come as each finishes.
    send(
        &mut ws,
        json!({"id": 1, "call": "t_gw_calc.slow", "args": [300]}),
    )
    .await;
    send(
        &mut ws,
        json!({"id": "two", "call": "t_gw_calc.add", "args": [2, 3]}),
    )
    .await;
    send(
        &mut ws,
        json!({"id": 3, "call": "t_gw_calc.count", "args": [3]}),
    )
    .await;
    let mut seen = Vec::new();
    while seen.len() < 6 {
        seen.push(receive(&mut ws).await.expect("a reply"));
    }
    assert!(seen.contains(&json!({"id": 1, "result": 300})), "{seen:?}");
    assert!(
        seen.contains(&json!({"id": "two", "result": 5})),
        "{seen:?}"
    );
    let stream: Vec<&Value> = seen.iter().filter(|m| m["id"] == 3).collect();
    assert_eq!(
        stream,
        [
            &json!({"id": 3, "item": 0}),
            &json!({"id": 3, "item": 1}),
            &json!({"id": 3, "item": 2}),
            &json!({"id": 3, "end": true})
        ]
    );
    // Errors, by id.
    send(&mut ws, json!({"id": 4, "call": "t_gw_calc.secret"})).await;
    let reply = receive(&mut ws).await.expect("a reply");
    assert_eq!(
        (reply["id"].clone(), reply["error"]["kind"].clone()),
        (json!(4), json!("not_found"))
    );
    send(
        &mut ws,
        json!({"id": 5, "call": "t_gw_calc.limited", "args": [99]}),
    )
    .await;
    let reply = receive(&mut ws).await.expect("a reply");
    assert_eq!(
        reply["error"]["data"],
        json!({"TooBig": {"limit": 10}}),
        "{reply}"
    );
    send(&mut ws, json!({"call": "t_gw_calc.add", "args": [1, 2]})).await;
    let reply = receive(&mut ws).await.expect("a reply");
    assert_eq!(reply["error"]["kind"], "bad_request", "{reply}");
    // A cancelled stream stops on the server.
    PRODUCED.store(0, Ordering::SeqCst);
    send(&mut ws, json!({"id": 6, "call": "t_gw_calc.ticks"})).await;
    receive_until(&mut ws, |m| m["id"] == 6 && m["item"] == 3).await;
    send(&mut ws, json!({"cancel": 6})).await;
    receive_until(&mut ws, |m| m == &json!({"id": 6, "cancelled": true})).await;
    let stopped = support::eventually(WAIT, || {
        let before = PRODUCED.load(Ordering::SeqCst);
        std::thread::sleep(Duration::from_millis(100));
        PRODUCED.load(Ordering::SeqCst) == before
    })
    .await;
    assert!(stopped, "the server's stream went on after the cancel");
}

async fn websocket_limits(addr: SocketAddr) {
    let mut ws = socket(addr, "").await;
    // max_calls_per_connection = 3: the fourth is refused while three run.
    for id in 1..=3 {
        send(
            &mut ws,
            json!({"id": id, "call": "t_gw_calc.slow", "args": [2000]}),
        )
        .await;
    }
    send(
        &mut ws,
        json!({"id": 4, "call": "t_gw_calc.add", "args": [1, 1]}),
    )
    .await;
    let refused = receive(&mut ws).await.expect("a reply");
    assert_eq!(
        (refused["id"].clone(), refused["error"]["kind"].clone()),
        (json!(4), json!("busy")),
        "{refused}"
    );
    receive_until(&mut ws, |m| m["id"] == 3 && m["result"] == 2000).await;
    // The same id twice in flight.
    send(
        &mut ws,
        json!({"id": 9, "call": "t_gw_calc.slow", "args": [2000]}),
    )
    .await;
    send(
        &mut ws,
        json!({"id": 9, "call": "t_gw_calc.add", "args": [1, 1]}),
    )
    .await;
    let refused = receive_until(&mut ws, |m| m["id"] == 9 && m.get("error").is_some()).await;
    assert_eq!(
        refused.last().map(|m| m["error"]["kind"].clone()),
        Some(json!("bad_request"))
    );
    // max_subscriptions_per_connection = 1; an exchange not subscribable is 404.
    send(&mut ws, json!({"subscribe": "t_gw.other"})).await;
    let refused = receive_until(&mut ws, |m| m.get("subscribe").is_some()).await;
    assert_eq!(
        refused.last().map(|m| m["error"]["kind"].clone()),
        Some(json!("not_found"))
    );
    send(&mut ws, json!({"subscribe": "t_gw.news"})).await;
    receive_until(&mut ws, |m| m == &json!({"subscribed": "t_gw.news"})).await;
    // Over max_ws_message_bytes = 1KiB: the socket is closed.
    let big = json!({"id": 10, "call": "t_gw_calc.add", "args": ["x".repeat(4096), 1]});
    let _ = ws.send(Message::Text(big.to_string().into())).await;
    let closed = async {
        loop {
            match ws.next().await {
                None | Some(Err(_)) | Some(Ok(Message::Close(_))) => return,
                Some(Ok(_)) => continue,
            }
        }
    };
    tokio::time::timeout(WAIT, closed)
        .await
        .expect("an oversized message closes the socket");
}

async fn broadcasts(addr: SocketAddr) {
    // A WebSocket follower, and an SSE one.
    let mut ws = socket(addr, "").await;
    send(&mut ws, json!({"subscribe": "t_gw.news"})).await;
    receive_until(&mut ws, |m| m == &json!({"subscribed": "t_gw.news"})).await;
    let mut sse = http()
        .get(format!("http://{addr}/events/t_gw.news"))
        .send()
        .await
        .expect("the event stream opens");
    assert_eq!(sse.status().as_u16(), 200);
    // The gateway follows the exchange once the service declared it: post until one arrives.
    let mut first = None;
    for attempt in 0..50 {
        let (status, body) = post(
            addr,
            "t_gw_calc/post",
            &format!("[\"warm {attempt}\"]"),
            &[],
        )
        .await;
        assert_eq!(status, 200, "{body}");
        if let Ok(Some(message)) =
            tokio::time::timeout(Duration::from_millis(200), receive(&mut ws)).await
        {
            first = Some(message);
            break;
        }
    }
    assert!(first.is_some(), "no broadcast reached the WebSocket");
    for title in ["one", "two", "three"] {
        post(addr, "t_gw_calc/post", &format!("[\"{title}\"]"), &[]).await;
    }
    let events = receive_until(&mut ws, |m| m["data"]["title"] == "three").await;
    let titles: Vec<&Value> = events.iter().map(|m| &m["data"]["title"]).collect();
    assert_eq!(
        titles[titles.len() - 3..],
        [&json!("one"), &json!("two"), &json!("three")]
    );
    assert!(events
        .iter()
        .all(|m| m["event"] == "t_gw.news" && m["id"].is_string()));

    // The SSE follower got them too, with ids.
    let mut text = String::new();
    let mut ids = Vec::new();
    while !text.contains("\"three\"") {
        let chunk = tokio::time::timeout(WAIT, sse.chunk())
            .await
            .expect("events within the wait")
            .expect("the stream reads")
            .expect("the stream goes on");
        text.push_str(&String::from_utf8_lossy(&chunk));
    }
    for line in text.lines() {
        if let Some(id) = line.strip_prefix("id: ") {
            ids.push(id.to_owned());
        }
    }
    assert!(text.contains("data: {\"title\":\"two\"}"), "{text}");
    // Resume after "one": "two" and "three" again, and nothing before.
    let one = text
        .split("\n\n")
        .find(|event| event.contains("\"one\""))
        .and_then(|event| event.lines().find_map(|l| l.strip_prefix("id: ")))
        .expect("the id of \"one\"")
        .to_owned();
    let mut resumed = http()
        .get(format!("http://{addr}/events/t_gw.news"))
        .header("last-event-id", &one)
        .send()
        .await
        .expect("the event stream opens again");
    let mut again = String::new();
    while !again.contains("\"three\"") {
        let chunk = tokio::time::timeout(WAIT, resumed.chunk())
            .await
            .expect("replayed events")
            .expect("reads")
            .expect("goes on");
        again.push_str(&String::from_utf8_lossy(&chunk));
    }
    assert!(
        again.contains("\"two\"") && !again.contains("\"one\""),
        "{again}"
    );
    // Not subscribable: 404.
    let status = http()
        .get(format!("http://{addr}/events/t_gw.other"))
        .send()
        .await
        .expect("answers")
        .status();
    assert_eq!(status.as_u16(), 404);
}

async fn a_farine_listener_follows_through_the_gateway(world: &World, addr: SocketAddr) {
    let follower = TestKit::broker(support::amqp_uri())
        .service("t_gw_follow")
        .set(
            "t_gw_follow",
            "endpoint",
            &format!("http://{addr}/events/t_gw.news"),
        )
        .start()
        .await
        .expect("t_gw_follow starts");
    let client = world.kit.client().await.expect("a client");
    // Posted until the listener is connected and sees one.
    let mut seen = false;
    for attempt in 0..50 {
        client
            .call("t_gw_calc", "post", json!([format!("follow {attempt}")]))
            .await
            .expect("post");
        if support::eventually(Duration::from_millis(200), || {
            !FOLLOWED
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .is_empty()
        })
        .await
        {
            seen = true;
            break;
        }
    }
    assert!(
        seen,
        "the #[stream::http] listener got no event through the gateway"
    );
    client
        .call("t_gw_calc", "post", json!(["followed"]))
        .await
        .expect("post");
    let followed = support::eventually(WAIT, || {
        FOLLOWED
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .any(|(id, data)| id.is_some() && data == &json!({"title": "followed"}))
    })
    .await;
    assert!(
        followed,
        "{:?}",
        FOLLOWED.lock().unwrap_or_else(|p| p.into_inner())
    );
    follower.stop().await.expect("t_gw_follow stops");
}

async fn bearer_tokens(addr: SocketAddr) {
    let (status, _) = post(addr, "t_gw_calc/add", "[1, 2]", &[]).await;
    assert_eq!(status, 401);
    let response = http()
        .post(format!("http://{addr}/rpc/t_gw_calc/add"))
        .body("[1, 2]")
        .send()
        .await
        .expect("answers");
    assert_eq!(
        response
            .headers()
            .get("www-authenticate")
            .map(|v| v.to_str().ok()),
        Some(Some("Bearer"))
    );
    let (status, _) = post(
        addr,
        "t_gw_calc/add",
        "[1, 2]",
        &[("authorization", "Bearer charlie")],
    )
    .await;
    assert_eq!(status, 401);
    let (status, _) = post(
        addr,
        "t_gw_calc/add",
        "[1, 2]",
        &[("authorization", "Basic YWxwaGE6")],
    )
    .await;
    assert_eq!(status, 401);
    assert_eq!(
        post(
            addr,
            "t_gw_calc/add",
            "[1, 2]",
            &[("authorization", "Bearer bravo")]
        )
        .await,
        (200, "3".into())
    );
    // WebSocket: refused at the handshake without a token, served with one in the query.
    match tokio_tungstenite::connect_async(format!("ws://{addr}/ws")).await {
        Err(tungstenite::Error::Http(response)) => assert_eq!(response.status().as_u16(), 401),
        other => panic!("expected 401, got {:?}", other.map(|_| ())),
    }
    let mut ws = socket(addr, "?access_token=alpha").await;
    send(
        &mut ws,
        json!({"id": 1, "call": "t_gw_calc.add", "args": [1, 2]}),
    )
    .await;
    assert_eq!(receive(&mut ws).await, Some(json!({"id": 1, "result": 3})));
    let status = http()
        .get(format!("http://{addr}/events/t_gw.news"))
        .send()
        .await
        .expect("answers")
        .status();
    assert_eq!(status.as_u16(), 401);
}

fn jwt(secret: &str, expires_in: i64) -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("after 1970")
        .as_secs() as i64;
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &json!({"sub": "browser", "exp": now + expires_in}),
        &jsonwebtoken::EncodingKey::from_secret(secret.as_bytes()),
    )
    .expect("a token")
}

async fn json_web_tokens(addr: SocketAddr) {
    let bearer = |token: String| format!("Bearer {token}");
    let good = bearer(jwt(JWT_SECRET, 300));
    assert_eq!(
        post(addr, "t_gw_calc/add", "[1, 2]", &[("authorization", &good)]).await,
        (200, "3".into())
    );
    let expired = bearer(jwt(JWT_SECRET, -300));
    let (status, body) = post(
        addr,
        "t_gw_calc/add",
        "[1, 2]",
        &[("authorization", &expired)],
    )
    .await;
    assert_eq!(status, 401);
    assert!(body.contains("expired"), "{body}");
    let forged = bearer(jwt("another-secret-of-at-least-32-bytes!", 300));
    assert_eq!(
        post(
            addr,
            "t_gw_calc/add",
            "[1, 2]",
            &[("authorization", &forged)]
        )
        .await
        .0,
        401
    );
    let (status, _) = post(addr, "t_gw_calc/add", "[1, 2]", &[]).await;
    assert_eq!(status, 401);
}

async fn origin_checks(addr: SocketAddr) {
    let (status, body) = post(
        addr,
        "t_gw_calc/add",
        "[1, 2]",
        &[("origin", "https://evil.example")],
    )
    .await;
    assert_eq!(status, 403, "{body}");
    assert_eq!(json_of(&body)["error"]["kind"], "origin_not_allowed");
    let response = http()
        .post(format!("http://{addr}/rpc/t_gw_calc/add"))
        .header("origin", "https://app.example.com")
        .body("[1, 2]")
        .send()
        .await
        .expect("answers");
    assert_eq!(response.status().as_u16(), 200);
    assert_eq!(
        response
            .headers()
            .get("access-control-allow-origin")
            .and_then(|v| v.to_str().ok()),
        Some("https://app.example.com")
    );
    // Its own pages: same origin.
    let own = format!("http://{addr}");
    assert_eq!(
        post(addr, "t_gw_calc/add", "[1, 2]", &[("origin", &own)]).await,
        (200, "3".into())
    );
    // A WebSocket handshake from a foreign page.
    let mut request =
        tungstenite::client::IntoClientRequest::into_client_request(format!("ws://{addr}/ws"))
            .expect("a request");
    request
        .headers_mut()
        .insert("origin", "https://evil.example".parse().expect("a header"));
    match tokio_tungstenite::connect_async(request).await {
        Err(tungstenite::Error::Http(response)) => assert_eq!(response.status().as_u16(), 403),
        other => panic!("expected 403, got {:?}", other.map(|_| ())),
    }
}

async fn rate_limits(addr: SocketAddr) {
    // max_calls_per_second = 2: a burst of ten is mostly refused, over HTTP and WebSocket.
    // At once: however slow the machine, ten calls do not spread over five seconds.
    let burst = (0..10).map(|_| post(addr, "t_gw_calc/add", "[1, 2]", &[]));
    let statuses: Vec<u16> = futures::future::join_all(burst)
        .await
        .into_iter()
        .map(|(status, _)| status)
        .collect();
    assert!(statuses.contains(&429), "{statuses:?}");
    let mut ws = socket(addr, "").await;
    for id in 0..10 {
        send(
            &mut ws,
            json!({"id": id, "call": "t_gw_calc.add", "args": [1, 1]}),
        )
        .await;
    }
    let mut kinds = Vec::new();
    for _ in 0..10 {
        let reply = receive(&mut ws).await.expect("a reply");
        kinds.push(reply["error"]["kind"].clone());
    }
    assert!(kinds.contains(&json!("rate_limited")), "{kinds:?}");
}

async fn slow_browsers_are_disconnected(world: &World, addr: SocketAddr) {
    // send_queue = 2: a follower that reads nothing while events flow is cut off, instead of
    // the gateway holding its events.
    // A small receive buffer: what the kernel holds for a reader that reads nothing is small,
    // so the gateway's own queue is what fills.
    let tcp = tokio::net::TcpSocket::new_v4().expect("a socket");
    tcp.set_recv_buffer_size(8192).expect("SO_RCVBUF");
    let tcp = tcp.connect(addr).await.expect("connect to the gateway");
    let tcp = tokio_tungstenite::MaybeTlsStream::Plain(tcp);
    let (mut ws, _) = tokio_tungstenite::client_async(format!("ws://{addr}/ws"), tcp)
        .await
        .expect("the WebSocket opens");
    send(&mut ws, json!({"subscribe": "t_gw.news"})).await;
    receive_until(&mut ws, |m| m == &json!({"subscribed": "t_gw.news"})).await;
    let client = world.kit.client().await.expect("a client");
    let title = "y".repeat(60_000);
    for _ in 0..150 {
        client
            .call("t_gw_calc", "post", json!([title]))
            .await
            .expect("post");
    }
    // Now read: what the socket buffers held, then the end (a close frame saying why, if
    // there was room for it).
    let drained = async {
        let mut ids = Vec::new();
        while let Some(message) = ws.next().await {
            match message {
                Ok(Message::Close(Some(frame))) => {
                    assert_eq!(u16::from(frame.code), 1008);
                    break;
                }
                Ok(Message::Close(None)) | Err(_) => break,
                Ok(Message::Text(text)) => {
                    let id = json_of(&text)["id"].as_str().map(str::to_owned);
                    ids.push(id.expect("an event id"));
                }
                Ok(_) => {}
            }
        }
        ids
    };
    let ids = tokio::time::timeout(WAIT, drained)
        .await
        .expect("a follower that read nothing was not disconnected");
    assert!(
        ids.len() < 150,
        "all {} events were kept for a follower that read nothing",
        ids.len()
    );
    // Every event up to the cut, none skipped: a browser is disconnected (and resumes from its
    // last id) rather than silently missing events.
    let seqs: Vec<u64> = ids
        .iter()
        .map(|id| {
            id.rsplit('-')
                .next()
                .and_then(|n| n.parse().ok())
                .expect("<epoch>-<n>")
        })
        .collect();
    assert!(
        seqs.windows(2).all(|w| w[1] == w[0] + 1),
        "events were skipped: {seqs:?}"
    );
}
