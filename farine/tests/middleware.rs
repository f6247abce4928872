//! Middleware around consumers and RPC methods (on the in-process broker): what it sees of
//! each delivery, how each ended, and a delivery a middleware holds back is not lost.

use farine::middleware::{Call, Disposition, EntryKind, Handled, Middleware, Next};
use farine::prelude::*;
use farine::testing::{Handling, TestKit};
use futures::future::BoxFuture;
use serde_json::{json, Value};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

const WAIT: Duration = Duration::from_secs(10);

#[derive(Default)]
pub struct Watched;

#[farine::service(name = "t_mw")]
impl Watched {
    #[rpc::method]
    async fn add(&self, a: i64, b: i64) -> i64 {
        a + b
    }

    /// Fails every time: retried once, then parked.
    #[amqp::consume(routing_key = "jobs", queue = "t_mw.jobs")]
    async fn on_job(&self, _job: Value) -> Result<(), String> {
        Err("no".into())
    }

    #[amqp::consume(routing_key = "ok", queue = "t_mw.ok")]
    async fn on_ok(&self, _job: Value) {}
}

/// One delivery as the middleware saw it.
#[derive(Clone, Debug, PartialEq)]
struct Seen {
    entry_point: String,
    kind: EntryKind,
    queue: String,
    exchange: String,
    routing_key: String,
    correlation_id: bool,
    attempt: u32,
    trace_header: Option<String>,
    outcome: Handling,
    disposition: Disposition,
}

#[derive(Clone, Default)]
struct Recorder(Arc<Mutex<Vec<Seen>>>);

impl Middleware for Recorder {
    fn around<'a>(&'a self, call: &'a Call<'a>, next: Next<'a>) -> BoxFuture<'a, Handled> {
        Box::pin(async move {
            let handled = next.run().await;
            let trace_header = call
                .headers
                .get("x-trace")
                .and_then(|v| v.as_text())
                .map(str::to_string);
            self.0.lock().unwrap().push(Seen {
                entry_point: call.entry_point.to_string(),
                kind: call.kind,
                queue: call.queue.to_string(),
                exchange: call.exchange.to_string(),
                routing_key: call.routing_key.to_string(),
                correlation_id: call.correlation_id.is_some(),
                attempt: call.attempt,
                trace_header,
                outcome: handled.outcome.clone(),
                disposition: handled.disposition,
            });
            handled
        })
    }
}

/// Holds back the first `skip` deliveries of `t_mw.ok` without handling them.
struct Gate {
    skip: AtomicUsize,
}

impl Middleware for Gate {
    fn around<'a>(&'a self, call: &'a Call<'a>, next: Next<'a>) -> BoxFuture<'a, Handled> {
        Box::pin(async move {
            let held = call.entry_point == "t_mw.on_ok"
                && self
                    .skip
                    .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
                    .is_ok();
            if held {
                return Handled::requeued();
            }
            next.run().await
        })
    }
}

async fn seen_for(recorder: &Recorder, entry_point: &str, count: usize) -> Vec<Seen> {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let seen: Vec<Seen> = recorder
            .0
            .lock()
            .unwrap()
            .iter()
            .filter(|s| s.entry_point == entry_point)
            .cloned()
            .collect();
        if seen.len() >= count || tokio::time::Instant::now() >= deadline {
            return seen;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test]
async fn middleware_sees_each_delivery_and_how_it_ended() {
    let recorder = Recorder::default();
    let kit = TestKit::memory()
        .service("t_mw")
        .set("t_mw", "retry_attempts", "1")
        .set("t_mw", "retry_delay", "10ms")
        .middleware(recorder.clone())
        .middleware(Gate {
            skip: AtomicUsize::new(2),
        })
        .start()
        .await
        .expect("t_mw starts");

    let client = WatchedClient::connect(kit.config()).await.expect("client");
    assert_eq!(client.add(2, 3).await.expect("add"), 5);
    let calls = seen_for(&recorder, "t_mw.add", 1).await;
    assert_eq!(
        calls,
        [Seen {
            entry_point: "t_mw.add".into(),
            kind: EntryKind::Rpc,
            queue: "t_mw__add".into(),
            exchange: "t_mw".into(),
            routing_key: "t_mw__add".into(),
            correlation_id: true,
            attempt: 1,
            trace_header: None,
            outcome: Handling::Done,
            disposition: Disposition::Acked,
        }]
    );

    // A failing consumer: tried, retried (attempt 2), then parked.
    let broker = farine::broker::Broker::for_service(&kit.config().service("probe").unwrap())
        .await
        .expect("probe");
    let mut headers = farine::transport::Headers::new();
    headers.insert(
        "x-trace".into(),
        farine::transport::HeaderValue::Text("abc".into()),
    );
    broker
        .publish(
            "t_mw",
            "jobs",
            b"{}",
            farine::transport::Properties::json().with_headers(headers),
            true,
        )
        .await
        .expect("publish a job");
    let jobs = seen_for(&recorder, "t_mw.on_job", 2).await;
    assert_eq!(jobs.len(), 2, "{jobs:?}");
    assert_eq!(
        (jobs[0].attempt, jobs[0].disposition),
        (1, Disposition::Retried)
    );
    assert_eq!(
        (jobs[1].attempt, jobs[1].disposition),
        (2, Disposition::DeadLettered)
    );
    assert!(matches!(&jobs[1].outcome, Handling::Failed(reason) if reason == "no"));
    assert_eq!(jobs[0].trace_header.as_deref(), Some("abc"));
    assert_eq!(
        (
            jobs[0].kind,
            jobs[0].exchange.as_str(),
            jobs[0].routing_key.as_str()
        ),
        (EntryKind::Consume, "t_mw", "jobs")
    );

    // Held back twice by the inner middleware: requeued, delivered again, then handled once.
    kit.publish("t_mw", "ok", &json!({}))
        .await
        .expect("publish");
    let oks = seen_for(&recorder, "t_mw.on_ok", 3).await;
    let dispositions: Vec<Disposition> = oks.iter().map(|s| s.disposition).collect();
    assert_eq!(
        dispositions,
        [
            Disposition::Requeued,
            Disposition::Requeued,
            Disposition::Acked
        ]
    );
    kit.stop().await.expect("stop");
}
