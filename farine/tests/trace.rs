//! W3C trace context across services (on the in-process broker): a call to A, which calls B,
//! which publishes to C's consumer, is one trace: handle(A) -> call span -> handle(B) ->
//! publish span -> handle(C), each span the parent of the next; a malformed `traceparent` is
//! ignored.

use farine::middleware::{Call, Handled, Middleware, Next};
use farine::prelude::*;
use farine::testing::TestKit;
use farine::trace::{TraceContext, TRACEPARENT, TRACESTATE};
use farine::transport::{HeaderValue, Headers, Properties};
use futures::future::BoxFuture;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tracing_subscriber::layer::{Context, SubscriberExt};
use tracing_subscriber::Layer;

const WAIT: Duration = Duration::from_secs(10);
const CALLER: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

#[derive(Default)]
pub struct TraceA;

#[farine::service(name = "t_tr_a")]
impl TraceA {
    #[rpc::method]
    async fn start(&self, b: TraceBClient, n: i64) -> farine::Result<i64> {
        b.relay(n).await
    }
}

#[derive(Default)]
pub struct TraceB;

#[farine::service(name = "t_tr_b")]
impl TraceB {
    #[rpc::method]
    async fn relay(&self, n: i64) -> farine::Result<i64> {
        self.announce(n).await?;
        Ok(n + 1)
    }

    #[amqp::publish(routing_key = "relayed")]
    async fn announce(&self, publish: Publisher, n: i64) -> farine::Result<()> {
        publish.send(&n).await
    }
}

#[derive(Default)]
pub struct TraceC;

#[farine::service(name = "t_tr_c")]
impl TraceC {
    #[amqp::consume(exchange = "t_tr_b", routing_key = "relayed", queue = "t_tr_c.relayed")]
    async fn on_relayed(&self, _n: i64) {}
}

/// One delivery: the headers it came with, and its trace context while it was handled.
#[derive(Clone, Debug)]
struct Seen {
    entry_point: String,
    traceparent: Option<String>,
    tracestate: Option<String>,
    context: TraceContext,
}

impl Seen {
    /// The context its `traceparent` header describes.
    fn sender(&self) -> TraceContext {
        TraceContext::parse(self.traceparent.as_deref().expect("a traceparent"), None)
            .expect("a valid traceparent")
    }
}

#[derive(Clone, Default)]
struct Recorder(Arc<Mutex<Vec<Seen>>>);

impl Middleware for Recorder {
    fn around<'a>(&'a self, call: &'a Call<'a>, next: Next<'a>) -> BoxFuture<'a, Handled> {
        Box::pin(async move {
            let text = |name: &str| {
                call.headers
                    .get(name)
                    .and_then(HeaderValue::as_text)
                    .map(str::to_string)
            };
            // Inside the built-in tracing middleware: the delivery's context is current.
            let context = TraceContext::current().expect("a current trace context");
            self.0.lock().unwrap().push(Seen {
                entry_point: call.entry_point.to_string(),
                traceparent: text(TRACEPARENT),
                tracestate: text(TRACESTATE),
                context,
            });
            next.run().await
        })
    }
}

impl Recorder {
    async fn one(&self, entry_point: &str) -> Seen {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let seen = self
                .0
                .lock()
                .unwrap()
                .iter()
                .find(|s| s.entry_point == entry_point)
                .cloned();
            if let Some(seen) = seen {
                return seen;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "{entry_point} never handled"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    fn clear(&self) {
        self.0.lock().unwrap().clear();
    }
}

async fn kit(recorder: &Recorder) -> TestKit {
    TestKit::memory()
        .service("t_tr_a")
        .service("t_tr_b")
        .service("t_tr_c")
        .middleware(recorder.clone())
        .start()
        .await
        .expect("services start")
}

/// The fields of the `farine.call` and `farine.publish` spans made meanwhile.
#[derive(Clone, Default)]
struct Outgoing(Arc<Mutex<Vec<HashMap<String, String>>>>);

struct Fields<'a>(&'a mut HashMap<String, String>);

impl tracing::field::Visit for Fields<'_> {
    fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
        self.0
            .insert(field.name().to_string(), format!("{value:?}"));
    }

    fn record_str(&mut self, field: &tracing::field::Field, value: &str) {
        self.0.insert(field.name().to_string(), value.to_string());
    }
}

impl<S: tracing::Subscriber> Layer<S> for Outgoing {
    fn on_new_span(
        &self,
        attrs: &tracing::span::Attributes<'_>,
        _: &tracing::span::Id,
        _: Context<'_, S>,
    ) {
        let name = attrs.metadata().name();
        if name == "farine.call" || name == "farine.publish" {
            let mut fields = HashMap::from([("name".to_string(), name.to_string())]);
            attrs.record(&mut Fields(&mut fields));
            self.0.lock().unwrap().push(fields);
        }
    }
}

impl Outgoing {
    /// The span named `name` whose `key` field is `value`.
    fn one(&self, name: &str, key: &str, value: &str) -> HashMap<String, String> {
        let spans = self.0.lock().unwrap();
        let found: Vec<_> = spans
            .iter()
            .filter(|span| span["name"] == name && span.get(key).map(String::as_str) == Some(value))
            .collect();
        assert_eq!(found.len(), 1, "{name} {key}={value} in {spans:?}");
        found[0].clone()
    }

    fn clear(&self) {
        self.0.lock().unwrap().clear();
    }
}

/// Checks that `child` was sent from the span `sender` (a call or publish span) made while
/// `parent` was handled: parent -> sender -> child, in one trace.
fn sent_from(child: &Seen, sender: &HashMap<String, String>, parent: &TraceContext) {
    let trace_id = parent.trace_id().to_string();
    assert_eq!(sender["trace_id"], trace_id, "{sender:?}");
    assert_eq!(sender["parent_id"], parent.span_id().to_string());
    assert_ne!(sender["span_id"], parent.span_id().to_string());
    let sent = child.sender();
    assert_eq!(sent.trace_id().to_string(), trace_id, "{child:?}");
    assert_eq!(sent.span_id().to_string(), sender["span_id"], "{child:?}");
    assert_eq!(child.context.trace_id(), parent.trace_id());
    assert_eq!(
        child.context.parent_id().map(|id| id.to_string()).as_ref(),
        Some(&sender["span_id"])
    );
    assert_ne!(child.context.span_id().to_string(), sender["span_id"]);
}

/// Checks the chain handle(A) -> call -> handle(B) -> publish -> handle(C).
fn one_chain(outgoing: &Outgoing, a: &Seen, b: &Seen, c: &Seen) {
    let call = outgoing.one("farine.call", "parent_id", &a.context.span_id().to_string());
    assert_eq!(call["call"], "t_tr_b.relay");
    sent_from(b, &call, &a.context);
    let publish = outgoing.one(
        "farine.publish",
        "parent_id",
        &b.context.span_id().to_string(),
    );
    assert_eq!(publish["exchange"], "t_tr_b");
    assert_eq!(publish["routing_key"], "relayed");
    sent_from(c, &publish, &b.context);
}

#[tokio::test]
async fn a_call_chain_across_services_is_one_trace() {
    // The outgoing spans, on this test's thread (the kit's tasks run on it).
    let outgoing = Outgoing::default();
    let _spans =
        tracing::subscriber::set_default(tracing_subscriber::registry().with(outgoing.clone()));
    let recorder = Recorder::default();
    let kit = kit(&recorder).await;
    let client = TraceAClient::connect(kit.config()).await.expect("client");

    // Called from within a trace (a gateway's, say): A's span is its child.
    let caller = TraceContext::parse(CALLER, Some("vendor=1")).unwrap();
    let answer = caller.clone().scope(client.start(41)).await;
    assert_eq!(answer.expect("start"), 42);
    let a = recorder.one("t_tr_a.start").await;
    let b = recorder.one("t_tr_b.relay").await;
    let c = recorder.one("t_tr_c.on_relayed").await;
    // The client's call has a span of its own, the caller's child.
    let call = outgoing.one("farine.call", "call", "t_tr_a.start");
    sent_from(&a, &call, &caller);
    one_chain(&outgoing, &a, &b, &c);
    // The trace state goes along unchanged.
    for seen in [&a, &b, &c] {
        assert_eq!(seen.tracestate.as_deref(), Some("vendor=1"), "{seen:?}");
    }

    // Called from outside any trace: A starts one, and the chain is still one trace.
    recorder.clear();
    outgoing.clear();
    assert_eq!(client.start(1).await.expect("start"), 2);
    assert!(
        outgoing
            .0
            .lock()
            .unwrap()
            .iter()
            .all(|span| span.get("call").map(String::as_str) != Some("t_tr_a.start")),
        "a call outside any trace has no span"
    );
    let a = recorder.one("t_tr_a.start").await;
    let b = recorder.one("t_tr_b.relay").await;
    let c = recorder.one("t_tr_c.on_relayed").await;
    assert_eq!(a.traceparent, None);
    assert_eq!(a.context.parent_id(), None);
    assert_ne!(a.context.trace_id(), caller.trace_id());
    one_chain(&outgoing, &a, &b, &c);
    assert_eq!(c.tracestate, None);
    kit.stop().await.expect("stop");
}

#[tokio::test]
async fn a_malformed_traceparent_is_ignored() {
    let recorder = Recorder::default();
    let kit = kit(&recorder).await;
    let broker = farine::broker::Broker::for_service(&kit.config().service("probe").unwrap())
        .await
        .expect("probe");
    // All-zero trace id: not valid, so neither it nor the trace state is trusted.
    let forged = "00-00000000000000000000000000000000-00f067aa0ba902b7-01";
    let mut headers = Headers::new();
    headers.insert(TRACEPARENT.into(), HeaderValue::Text(forged.into()));
    headers.insert(TRACESTATE.into(), HeaderValue::Text("forged=1".into()));
    broker
        .publish(
            "t_tr_b",
            "relayed",
            b"7",
            Properties::json().with_headers(headers),
            true,
        )
        .await
        .expect("publish");
    let c = recorder.one("t_tr_c.on_relayed").await;
    assert_eq!(c.traceparent.as_deref(), Some(forged));
    assert_eq!(c.context.parent_id(), None);
    assert_eq!(c.context.tracestate(), None);
    assert_ne!(
        c.context.trace_id().to_string(),
        "00000000000000000000000000000000"
    );
    kit.stop().await.expect("stop");
}
