//! OpenTelemetry export (feature `otel`), on the in-process broker with an in-memory
//! exporter installed as the global tracer provider: a call to A, which calls B, which
//! publishes to C's consumer, is exported as one trace, handle(A) -> call -> handle(B) ->
//! publish -> handle(C), each span the parent of the next, with the ids farine put on the
//! wire; a failure marks the spans it went through.

use farine::middleware::{Call, Handled, Middleware, Next};
use farine::opentelemetry::trace::{SpanId, SpanKind, Status, TraceId};
use farine::opentelemetry::{global, Value};
use farine::opentelemetry_sdk::trace::{InMemorySpanExporter, SdkTracerProvider, SpanData};
use farine::prelude::*;
use farine::testing::TestKit;
use farine::trace::TraceContext;
use futures::future::BoxFuture;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

const WAIT: Duration = Duration::from_secs(10);
const CALLER: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

#[derive(Default)]
pub struct OtelA;

#[farine::service(name = "t_ot_a")]
impl OtelA {
    #[rpc::method]
    async fn start(&self, b: OtelBClient, n: i64) -> farine::Result<i64> {
        b.relay(n).await
    }

    #[rpc::method]
    async fn broken(&self, b: OtelBClient) -> farine::Result<i64> {
        b.fail().await
    }
}

#[derive(Default)]
pub struct OtelB;

#[farine::service(name = "t_ot_b")]
impl OtelB {
    #[rpc::method]
    async fn relay(&self, n: i64) -> farine::Result<i64> {
        self.announce(n).await?;
        Ok(n + 1)
    }

    #[rpc::method]
    async fn fail(&self) -> farine::Result<i64> {
        Err(farine::Error::Runtime("out of flour".into()))
    }

    #[amqp::publish(routing_key = "relayed")]
    async fn announce(&self, publish: Publisher, n: i64) -> farine::Result<()> {
        publish.send(&n).await
    }
}

#[derive(Default)]
pub struct OtelC;

#[farine::service(name = "t_ot_c")]
impl OtelC {
    #[amqp::consume(exchange = "t_ot_b", routing_key = "relayed", queue = "t_ot_c.relayed")]
    async fn on_relayed(&self, _n: i64) {}
}

/// The exporter every span of this test binary goes to (installed once, globally).
fn exporter() -> &'static InMemorySpanExporter {
    static EXPORTER: OnceLock<InMemorySpanExporter> = OnceLock::new();
    EXPORTER.get_or_init(|| {
        let exporter = InMemorySpanExporter::default();
        let provider = SdkTracerProvider::builder()
            .with_simple_exporter(exporter.clone())
            .build();
        global::set_tracer_provider(provider);
        exporter
    })
}

/// The exported span named `name` in `trace`, once it ended.
async fn span(trace: TraceId, name: &str) -> SpanData {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let spans = exporter().get_finished_spans().expect("spans");
        let found: Vec<&SpanData> = spans
            .iter()
            .filter(|s| s.span_context.trace_id() == trace && s.name == name)
            .collect();
        assert!(found.len() <= 1, "{name}: {found:#?}");
        if let Some(span) = found.first() {
            return (*span).clone();
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{name} never exported in trace {trace}: {:#?}",
            spans.iter().map(|s| &s.name).collect::<Vec<_>>()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn attribute(span: &SpanData, key: &str) -> Option<Value> {
    span.attributes
        .iter()
        .find(|kv| kv.key.as_str() == key)
        .map(|kv| kv.value.clone())
}

fn text(span: &SpanData, key: &str) -> String {
    match attribute(span, key) {
        Some(Value::String(value)) => value.to_string(),
        other => panic!("{} {key}: {other:?}", span.name),
    }
}

/// Checks that `child` is `parent`'s child, of `kind`.
fn child_of(child: &SpanData, parent: &SpanData, kind: SpanKind) {
    assert_eq!(child.span_kind, kind, "{}", child.name);
    assert_eq!(
        child.parent_span_id,
        parent.span_context.span_id(),
        "{} is not the child of {}",
        child.name,
        parent.name
    );
    assert_eq!(
        child.span_context.trace_id(),
        parent.span_context.trace_id()
    );
}

/// Records the trace context farine gave each delivery, as its handler saw it.
#[derive(Clone, Default)]
struct Recorder(Arc<Mutex<Vec<(String, TraceContext)>>>);

impl Middleware for Recorder {
    fn around<'a>(&'a self, call: &'a Call<'a>, next: Next<'a>) -> BoxFuture<'a, Handled> {
        Box::pin(async move {
            let context = TraceContext::current().expect("a current trace context");
            self.0
                .lock()
                .unwrap()
                .push((call.entry_point.to_string(), context));
            next.run().await
        })
    }
}

impl Recorder {
    /// The context of the last delivery of `entry_point`.
    fn last(&self, entry_point: &str) -> TraceContext {
        let seen = self.0.lock().unwrap();
        let found = seen.iter().rev().find(|(e, _)| e == entry_point);
        found.map(|(_, c)| c.clone()).expect(entry_point)
    }
}

/// The ids farine used for a delivery are those of its exported span.
fn same_ids(span: &SpanData, context: &TraceContext) {
    assert_eq!(
        span.span_context.trace_id().to_string(),
        context.trace_id().to_string()
    );
    assert_eq!(
        span.span_context.span_id().to_string(),
        context.span_id().to_string(),
        "{}",
        span.name
    );
}

async fn kit(recorder: &Recorder) -> TestKit {
    exporter();
    TestKit::memory()
        .service("t_ot_a")
        .service("t_ot_b")
        .service("t_ot_c")
        .middleware(recorder.clone())
        .start()
        .await
        .expect("services start")
}

/// Checks A -> call -> B -> publish -> C in `trace`, from A's handle span on; returns it.
async fn chain(trace: TraceId, recorder: &Recorder) -> SpanData {
    let a = span(trace, "handle t_ot_a.start").await;
    let call = span(trace, "call t_ot_b.relay").await;
    let b = span(trace, "handle t_ot_b.relay").await;
    let publish = span(trace, "publish t_ot_b").await;
    let c = span(trace, "handle t_ot_c.on_relayed").await;
    child_of(&call, &a, SpanKind::Client);
    child_of(&b, &call, SpanKind::Server);
    child_of(&publish, &b, SpanKind::Producer);
    child_of(&c, &publish, SpanKind::Consumer);
    // A delivery's parent came over the wire; a sent message's is in the process.
    assert!(b.parent_span_is_remote && c.parent_span_is_remote);
    assert!(!call.parent_span_is_remote && !publish.parent_span_is_remote);
    same_ids(&a, &recorder.last("t_ot_a.start"));
    same_ids(&b, &recorder.last("t_ot_b.relay"));
    same_ids(&c, &recorder.last("t_ot_c.on_relayed"));
    for span in [&a, &call, &b, &publish, &c] {
        assert_eq!(span.status, Status::Unset, "{}", span.name);
        assert_eq!(text(span, "messaging.system"), "rabbitmq", "{}", span.name);
        assert_eq!(span.instrumentation_scope.name(), "farine");
    }
    assert_eq!(text(&b, "farine.service"), "t_ot_b");
    assert_eq!(text(&b, "farine.entry_point"), "t_ot_b.relay");
    assert_eq!(text(&b, "farine.kind"), "rpc");
    assert_eq!(text(&b, "farine.queue"), "t_ot_b__relay");
    assert_eq!(
        text(&b, "messaging.rabbitmq.destination.routing_key"),
        "t_ot_b__relay"
    );
    assert_eq!(text(&b, "rpc.method"), "relay");
    assert_eq!(attribute(&b, "farine.attempt"), Some(Value::I64(1)));
    assert_eq!(text(&b, "farine.outcome"), "done");
    assert_eq!(text(&b, "farine.disposition"), "acked");
    // The call's correlation id is the request's.
    assert_eq!(
        text(&call, "messaging.message.conversation_id"),
        text(&b, "messaging.message.conversation_id")
    );
    assert_eq!(text(&publish, "messaging.destination.name"), "t_ot_b");
    assert_eq!(
        text(&publish, "messaging.rabbitmq.destination.routing_key"),
        "relayed"
    );
    assert_eq!(text(&c, "farine.kind"), "consume");
    assert_eq!(text(&c, "farine.queue"), "t_ot_c.relayed");
    assert_eq!(
        text(&c, "messaging.rabbitmq.destination.routing_key"),
        "relayed"
    );
    a
}

#[tokio::test]
async fn a_call_chain_is_one_exported_trace() {
    let recorder = Recorder::default();
    let kit = kit(&recorder).await;
    let client = OtelAClient::connect(kit.config()).await.expect("client");

    // Called from within a trace (a gateway's): the client's call span is its child, and
    // the parent of A's.
    let caller = TraceContext::parse(CALLER, None).unwrap();
    let answer = caller.clone().scope(client.start(41)).await;
    assert_eq!(answer.expect("start"), 42);
    let trace = TraceId::from_hex(&caller.trace_id().to_string()).unwrap();
    let outer = span(trace, "call t_ot_a.start").await;
    assert_eq!(outer.span_kind, SpanKind::Client);
    assert_eq!(
        outer.parent_span_id,
        SpanId::from_hex(&caller.span_id().to_string()).unwrap()
    );
    let a = chain(trace, &recorder).await;
    child_of(&a, &outer, SpanKind::Server);

    // Called from outside any trace: A's span starts one.
    assert_eq!(client.start(1).await.expect("start"), 2);
    let context = recorder.last("t_ot_a.start");
    let trace = TraceId::from_hex(&context.trace_id().to_string()).unwrap();
    let a = chain(trace, &recorder).await;
    assert_eq!(a.parent_span_id, SpanId::INVALID);
    kit.stop().await.expect("stop");
}

#[tokio::test]
async fn a_failure_marks_its_spans() {
    let recorder = Recorder::default();
    let kit = kit(&recorder).await;
    let client = OtelAClient::connect(kit.config()).await.expect("client");
    let err = client.broken().await.expect_err("broken fails");
    assert!(err.to_string().contains("out of flour"), "{err}");
    let context = recorder.last("t_ot_a.broken");
    let trace = TraceId::from_hex(&context.trace_id().to_string()).unwrap();
    let a = span(trace, "handle t_ot_a.broken").await;
    let call = span(trace, "call t_ot_b.fail").await;
    let b = span(trace, "handle t_ot_b.fail").await;
    child_of(&call, &a, SpanKind::Client);
    child_of(&b, &call, SpanKind::Server);
    for span in [&a, &call, &b] {
        match &span.status {
            Status::Error { description } => {
                assert!(description.contains("out of flour"), "{description}")
            }
            other => panic!("{}: {other:?}", span.name),
        }
    }
    assert_eq!(text(&b, "farine.outcome"), "failed");
    kit.stop().await.expect("stop");
}
