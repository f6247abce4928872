//! relay tested in process with `farine::testing`, on an in-process broker (no RabbitMQ
//! needed): a local SSE server in the test, relay's endpoint pointed at it with `.set(...)`,
//! and what relay republishes on exchange `relay` captured.
//!
//! The heartbeat's 5-second period is written in the service, not configurable: its test runs
//! on tokio's paused clock instead of waiting.

use axum::body::Body;
use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::IntoResponse;
use axum::routing::get;
use farine::testing::{Captured, TestKit};
use serde_json::{json, Value};
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;

#[allow(unused_imports)]
use relay as _; // links the service in

const WAIT: Duration = Duration::from_secs(5);

/// A local SSE server (see [`server`]) and the gate that holds its events back.
struct Server {
    endpoint: String,
    gate: watch::Sender<bool>,
}

#[derive(Clone)]
struct Feed {
    events: Arc<Vec<String>>,
    per_connection: usize,
    gate: watch::Receiver<bool>,
}

/// Resumes after `Last-Event-ID`, sends at most `per_connection` events, then ends the
/// response. The headers go out at once, the events only once the gate is open.
async fn events(State(feed): State<Feed>, headers: HeaderMap) -> impl IntoResponse {
    let last: usize = headers
        .get("last-event-id")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let mut body = String::from(": hello\nretry: 100\n\n");
    for (n, event) in feed
        .events
        .iter()
        .enumerate()
        .skip(last)
        .take(feed.per_connection)
    {
        body.push_str(&format!("id: {}\n{event}\n\n", n + 1));
    }
    let mut gate = feed.gate.clone();
    let chunk = async move {
        let _ = gate.wait_for(|open| *open).await;
        Ok::<_, Infallible>(body)
    };
    (
        [("content-type", "text/event-stream")],
        Body::from_stream(futures::stream::once(chunk)),
    )
}

/// An SSE server on a free port sending `feed` (the text of each event; the server numbers
/// them from 1 with `id:`). Nothing is sent before the gate opens, so the test binds its
/// capture before relay has anything to publish.
async fn server(feed: Vec<String>, per_connection: usize) -> Server {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let (gate, gate_rx) = watch::channel(false);
    let feed = Feed {
        events: Arc::new(feed),
        per_connection,
        gate: gate_rx,
    };
    tokio::spawn(async move {
        let app = axum::Router::new()
            .route("/events", get(events))
            .with_state(feed);
        axum::serve(listener, app).await.unwrap();
    });
    Server {
        endpoint: format!("http://127.0.0.1:{port}/events"),
        gate,
    }
}

/// relay on a memory broker of its own, listening to `server`, and a capture of
/// `relay`/`event` bound before the server sends anything.
async fn relay_on(server: &Server) -> (TestKit, Captured) {
    let kit = TestKit::memory()
        .service("relay")
        .set("relay", "endpoint", &server.endpoint)
        .set("relay", "retry_delay", "100ms")
        .set("relay", "retry_max_delay", "200ms")
        .start()
        .await
        .expect("relay starts on the memory broker");
    let captured = kit.capture("relay", "event").await.unwrap();
    server.gate.send(true).unwrap();
    (kit, captured)
}

#[tokio::test]
async fn every_event_is_republished_once_in_order_across_reconnects() {
    const TOTAL: usize = 12;
    let feed = (1..=TOTAL)
        .map(|n| format!("event: tick\ndata: {{\"n\": {n}}}"))
        .collect();
    // Four events per response: relay reconnects with Last-Event-ID to get them all.
    let server = server(feed, 4).await;
    let (kit, captured) = relay_on(&server).await;

    let mut seen = Vec::new();
    for _ in 0..TOTAL {
        match captured.next(WAIT).await {
            Some(value) => seen.push(value),
            None => panic!("only {} events republished: {seen:?}", seen.len()),
        }
    }
    let expected: Vec<Value> = (1..=TOTAL).map(|n| json!({ "n": n })).collect();
    assert_eq!(seen, expected);
    // relay keeps reconnecting (the server has nothing more): nothing is republished twice.
    assert_eq!(captured.next(Duration::from_millis(600)).await, None);
    kit.stop().await.unwrap();
}

#[tokio::test]
async fn json_data_is_republished_as_json_and_other_text_as_a_string() {
    let feed = vec![
        "data: {\"price\": 12.5, \"tags\": [\"a\"]}".to_string(),
        "data: plain text".to_string(),
        // Two data lines are one event, joined by a newline.
        "event: multi\ndata: first line\ndata: second line".to_string(),
        "data: \"already a JSON string\"".to_string(),
        "data: 42".to_string(),
        "data: {not json".to_string(),
    ];
    let server = server(feed, 100).await;
    let (kit, captured) = relay_on(&server).await;

    let expected = [
        json!({"price": 12.5, "tags": ["a"]}),
        json!("plain text"),
        json!("first line\nsecond line"),
        json!("already a JSON string"),
        json!(42),
        json!("{not json"),
    ];
    for want in expected {
        assert_eq!(captured.next(WAIT).await, Some(want));
    }
    assert_eq!(captured.next(Duration::from_millis(300)).await, None);
    kit.stop().await.unwrap();
}

/// On tokio's paused clock (it jumps ahead whenever every task waits), so the 5-second period,
/// written in the service, takes no real time.
#[tokio::test(start_paused = true)]
async fn a_heartbeat_is_published_every_five_seconds() {
    // The server never opens its gate: relay holds one quiet connection, no reconnect loop.
    let server = server(Vec::new(), 0).await;
    let kit = TestKit::memory()
        .service("relay")
        .set("relay", "endpoint", &server.endpoint)
        .set("relay", "idle_timeout", "0")
        .start()
        .await
        .expect("relay starts on the memory broker");
    let beats = kit.capture("relay", "heartbeat").await.unwrap();
    let events = kit.capture("relay", "event").await.unwrap();

    let first = beats
        .next(Duration::from_secs(6))
        .await
        .expect("a heartbeat");
    let at_first = tokio::time::Instant::now();
    let second = beats.next(Duration::from_secs(6)).await.expect("another");
    let period = at_first.elapsed();
    for beat in [&first, &second] {
        assert!(
            beat["alive"].as_u64().is_some_and(|t| t > 1_700_000_000),
            "{beat}"
        );
    }
    assert!(
        period >= Duration::from_millis(4900) && period <= Duration::from_millis(5100),
        "{period:?}"
    );
    assert_eq!(events.next(Duration::ZERO).await, None, "no event was sent");
    kit.stop().await.unwrap();
}
