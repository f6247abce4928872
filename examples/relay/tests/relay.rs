//! The relay example end to end: a local SSE server that drops the connection every few
//! events; `relay` must republish every event exactly once, in order, to exchange `relay`.

use axum::http::HeaderMap;
use axum::response::IntoResponse;
use axum::routing::get;
use farine_test_support::{amqp_uri, ini_defaults, require_rabbitmq, wait_exit};
use lapin::options::*;
use lapin::types::FieldTable;
use lapin::{Connection, ConnectionProperties};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const TOTAL: u64 = 12;
const PER_CONNECTION: u64 = 4;

/// Resumes after `Last-Event-ID`, sends a few events, then ends the response.
async fn events(headers: HeaderMap) -> impl IntoResponse {
    let last: u64 = headers
        .get("last-event-id")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let mut body = String::from(": hello\nretry: 100\n\n");
    for n in (last + 1..=TOTAL).take(PER_CONNECTION as usize) {
        body.push_str(&format!("id: {n}\nevent: tick\ndata: {{\"n\": {n}}}\n\n"));
    }
    ([("content-type", "text/event-stream")], body)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relay_republishes_every_event_once_in_order_across_reconnects() {
    require_rabbitmq();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        let app = axum::Router::new().route("/events", get(events));
        axum::serve(listener, app).await.unwrap();
    });

    // The exchange and our queue exist before relay starts, so no event is unroutable.
    let connection = Connection::connect(&amqp_uri(), ConnectionProperties::default())
        .await
        .unwrap();
    let channel = connection.create_channel().await.unwrap();
    channel
        .exchange_declare(
            "relay".into(),
            lapin::ExchangeKind::Direct,
            ExchangeDeclareOptions {
                durable: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .unwrap();
    let queue = "t_relay_example.events";
    channel
        .queue_declare(
            queue.into(),
            QueueDeclareOptions {
                exclusive: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .unwrap();
    channel
        .queue_bind(
            queue.into(),
            "relay".into(),
            "event".into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();

    let dir = std::env::temp_dir().join(format!("farine-relay-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let ini = dir.join("farine.ini");
    std::fs::write(
        &ini,
        format!(
            "{}[relay]\nendpoint = http://127.0.0.1:{port}/events\nretry_delay = 100ms\nretry_max_delay = 1s\n",
            ini_defaults()
        ),
    )
    .unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_relay"))
        .env("FARINE_INI", &ini)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .spawn()
        .unwrap();

    let mut seen = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    while (seen.len() as u64) < TOTAL && Instant::now() < deadline {
        match channel
            .basic_get(queue.into(), BasicGetOptions { no_ack: true })
            .await
            .unwrap()
        {
            Some(message) => {
                let value: serde_json::Value =
                    serde_json::from_slice(&message.delivery.data).unwrap();
                seen.push(value["n"].as_u64().unwrap());
            }
            None => tokio::time::sleep(Duration::from_millis(20)).await,
        }
    }
    // Nothing more arrives: no event was repeated.
    tokio::time::sleep(Duration::from_millis(700)).await;
    while let Some(message) = channel
        .basic_get(queue.into(), BasicGetOptions { no_ack: true })
        .await
        .unwrap()
    {
        let value: serde_json::Value = serde_json::from_slice(&message.delivery.data).unwrap();
        seen.push(value["n"].as_u64().unwrap());
    }
    assert_eq!(seen, (1..=TOTAL).collect::<Vec<_>>());

    kill(Pid::from_raw(child.id() as i32), Signal::SIGTERM).unwrap();
    let status = wait_exit(&mut child, Duration::from_secs(15)).expect("relay stops");
    assert!(status.success(), "{status:?}");
    let _ = channel
        .exchange_delete("relay".into(), ExchangeDeleteOptions::default())
        .await;
    let _ = connection.close(200, "OK".into()).await;
    let _ = std::fs::remove_dir_all(&dir);
}
