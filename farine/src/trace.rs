//! Tracing of deliveries, and W3C trace context across services.
//!
//! The runtime runs every delivery an entry point handles inside a `tracing` span named
//! `farine.handle` (fields `service`, `entry_point`, `kind`, `queue`, `routing_key`,
//! `correlation_id`, `attempt`, `trace_id`, `span_id`, `parent_id`): a method's own
//! `tracing::info!` lines carry them. When it is done, with level `debug` on, the span gets
//! `outcome` and `duration_ms` and logs a `handled` line (at `info`, nothing would show them,
//! and recording them would cost each delivery; the metrics and the OpenTelemetry spans have
//! them always).
//!
//! Each delivery also has a trace context ([`TraceContext`]): the `traceparent` header it came
//! with (W3C Trace Context, checked strictly: version `00`, a 32-hex trace id and a 16-hex
//! parent id, neither all zeros, 2-hex flags, lowercase; anything else is ignored and the
//! delivery starts a new trace), and a new span id of its own. The RPC requests and the
//! messages sent while it is handled carry `traceparent: 00-<trace id>-<its span id>-<flags>`
//! (and its `tracestate`, if it came with a valid one), so a chain of calls and publishes
//! across services is one trace.
//!
//! An RPC call or a publish made while a delivery is handled has a span of its own, a child
//! of the delivery's: a `farine.call` span (field `call`, `service.method`) or a
//! `farine.publish` span (fields `exchange`, `routing_key`), each with `trace_id`, `span_id`
//! and `parent_id`, and the `traceparent` the message carries names that span. So the chain
//! handle(A) -> call -> handle(B) -> publish -> handle(C) is one trace, each span the parent
//! of the next. A call or publish made outside any handling (and outside
//! [`TraceContext::scope`]) has none and sends no `traceparent`: the service starts a trace.
//!
//! With the `otel` feature every one of these spans is also exported through OpenTelemetry
//! (see [`crate::otel`]), with the same ids.
//!
//! ```
//! use farine::trace::TraceContext;
//!
//! let parent = TraceContext::parse("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01", None)
//!     .expect("a valid traceparent");
//! let child = parent.child();
//! assert_eq!(child.trace_id(), parent.trace_id());
//! assert_eq!(child.parent_id(), Some(parent.span_id()));
//! assert!(TraceContext::parse("00-00000000000000000000000000000000-00f067aa0ba902b7-01", None).is_none());
//! ```

use crate::middleware::{Call, EntryKind, Handled, Middleware, Next};
use crate::observe::Handling;
use crate::transport::{HeaderValue, Headers};
use futures::future::BoxFuture;
use std::fmt;
use std::time::Instant;
use tracing::Instrument;

mod export;

/// The header that carries the trace id and the sender's span id.
pub const TRACEPARENT: &str = "traceparent";
/// The header that carries vendors' trace state, passed on unchanged with a valid traceparent.
pub const TRACESTATE: &str = "tracestate";

/// The longest `tracestate` passed on (the W3C limit is 32 members; 512 characters is what
/// propagators must at least keep): a longer one is dropped.
const MAX_TRACESTATE: usize = 512;

/// A 16-byte trace id, never all zeros; shown as 32 lowercase hex digits.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct TraceId(u128);

/// An 8-byte span id, never all zeros; shown as 16 lowercase hex digits.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct SpanId(u64);

impl fmt::Display for TraceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:032x}", self.0)
    }
}

impl fmt::Display for SpanId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:016x}", self.0)
    }
}

impl TraceId {
    fn random() -> TraceId {
        loop {
            let id: u128 = rand::random();
            if id != 0 {
                return TraceId(id);
            }
        }
    }
}

impl SpanId {
    fn random() -> SpanId {
        loop {
            let id: u64 = rand::random();
            if id != 0 {
                return SpanId(id);
            }
        }
    }
}

/// Where a delivery's handling stands in a trace: the trace, its own span, the span that sent
/// it (when it came with a valid `traceparent`), the flags and the vendors' state.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TraceContext {
    trace_id: TraceId,
    span_id: SpanId,
    parent_id: Option<SpanId>,
    flags: u8,
    state: Option<Box<str>>,
}

impl TraceContext {
    /// A new trace (sampled), with a new span.
    pub fn root() -> TraceContext {
        TraceContext {
            trace_id: TraceId::random(),
            span_id: SpanId::random(),
            parent_id: None,
            flags: 1,
            state: None,
        }
    }

    /// The context a `traceparent` (and `tracestate`) header describes: its trace, with the
    /// sender's span as `span_id`. `None` when the traceparent is not exactly
    /// `00-<32 hex>-<16 hex>-<2 hex>` (lowercase, ids not all zeros). A `tracestate` that is
    /// too long or not printable ASCII is dropped.
    pub fn parse(traceparent: &str, tracestate: Option<&str>) -> Option<TraceContext> {
        let bytes = traceparent.as_bytes();
        if bytes.len() != 55 || bytes[2] != b'-' || bytes[35] != b'-' || bytes[52] != b'-' {
            return None;
        }
        let hex = |range: std::ops::Range<usize>| -> Option<u128> {
            let part = &traceparent[range];
            if !part
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
            {
                return None;
            }
            u128::from_str_radix(part, 16).ok()
        };
        if &traceparent[..2] != "00" {
            return None;
        }
        let trace_id = hex(3..35).filter(|&id| id != 0)?;
        let span_id = hex(36..52).filter(|&id| id != 0)? as u64;
        let flags = hex(53..55)? as u8;
        let state = tracestate
            .map(str::trim)
            .filter(|s| {
                !s.is_empty()
                    && s.len() <= MAX_TRACESTATE
                    && s.bytes().all(|b| (b' '..=b'~').contains(&b))
            })
            .map(Box::from);
        Some(TraceContext {
            trace_id: TraceId(trace_id),
            span_id: SpanId(span_id),
            parent_id: None,
            flags,
            state,
        })
    }

    /// The context of a delivery with these headers: a child of its valid `traceparent`,
    /// else a new trace.
    pub fn from_headers(headers: &Headers) -> TraceContext {
        let text = |name: &str| headers.get(name).and_then(HeaderValue::as_text);
        match text(TRACEPARENT).and_then(|parent| TraceContext::parse(parent, text(TRACESTATE))) {
            Some(parent) => parent.child(),
            None => TraceContext::root(),
        }
    }

    /// A new span of the same trace, whose parent is this one.
    pub fn child(&self) -> TraceContext {
        TraceContext {
            trace_id: self.trace_id,
            span_id: SpanId::random(),
            parent_id: Some(self.span_id),
            flags: self.flags,
            state: self.state.clone(),
        }
    }

    pub fn trace_id(&self) -> TraceId {
        self.trace_id
    }

    pub fn span_id(&self) -> SpanId {
        self.span_id
    }

    /// The span that sent the delivery, when it came with a valid `traceparent`.
    pub fn parent_id(&self) -> Option<SpanId> {
        self.parent_id
    }

    pub fn flags(&self) -> u8 {
        self.flags
    }

    pub fn tracestate(&self) -> Option<&str> {
        self.state.as_deref()
    }

    /// The `traceparent` what is sent from this span carries.
    pub fn traceparent(&self) -> String {
        format!("00-{}-{}-{:02x}", self.trace_id, self.span_id, self.flags)
    }

    /// Adds `traceparent` (and `tracestate`) to outgoing headers.
    pub fn inject(&self, headers: &mut Headers) {
        headers.insert(TRACEPARENT.into(), HeaderValue::Text(self.traceparent()));
        if let Some(state) = &self.state {
            headers.insert(TRACESTATE.into(), HeaderValue::Text(state.to_string()));
        } else {
            headers.remove(TRACESTATE);
        }
    }

    /// The context of the delivery being handled in this task, if any.
    pub fn current() -> Option<TraceContext> {
        CURRENT.try_with(Clone::clone).ok()
    }

    /// Runs `future` in this context: the requests and publishes it makes carry it (what the
    /// runtime does around each handled delivery; a gateway can do it around its calls).
    pub fn scope<F: std::future::Future>(
        self,
        future: F,
    ) -> impl std::future::Future<Output = F::Output> {
        CURRENT.scope(self, future)
    }
}

tokio::task_local! {
    static CURRENT: TraceContext;
}

/// The built-in middleware: the `farine.handle` span and the trace context of each delivery.
pub(crate) struct Tracing;

fn kind_name(kind: EntryKind) -> &'static str {
    match kind {
        EntryKind::Consume => "consume",
        EntryKind::Rpc => "rpc",
    }
}

fn outcome_name(outcome: &Handling) -> &'static str {
    match outcome {
        Handling::Done => "done",
        Handling::Failed(_) => "failed",
        Handling::Poison(_) => "poison",
    }
}

impl Middleware for Tracing {
    fn around<'a>(&'a self, call: &'a Call<'a>, next: Next<'a>) -> BoxFuture<'a, Handled> {
        let text = |name: &str| call.headers.get(name).and_then(HeaderValue::as_text);
        let parent =
            text(TRACEPARENT).and_then(|parent| TraceContext::parse(parent, text(TRACESTATE)));
        let mut context = match &parent {
            Some(parent) => parent.child(),
            None => TraceContext::root(),
        };
        // With the `otel` feature and a provider: the exported span, whose ids `context` takes.
        let exported = export::Exported::handle(call, parent.as_ref(), &mut context);
        // The service's own names as they are (Display: cheaper than Debug's escaping); what
        // the sender chose (routing key, correlation id) escaped (Debug), so that no control
        // character of theirs reaches a text log line.
        let span = tracing::info_span!(
            "farine.handle",
            service = %call.service,
            entry_point = %call.entry_point,
            kind = %kind_name(call.kind),
            queue = %call.queue,
            routing_key = call.routing_key,
            correlation_id = call.correlation_id,
            attempt = call.attempt,
            trace_id = %context.trace_id,
            span_id = %context.span_id,
            parent_id = tracing::field::Empty,
            outcome = tracing::field::Empty,
            duration_ms = tracing::field::Empty,
        );
        if let Some(parent) = context.parent_id {
            span.record("parent_id", tracing::field::display(parent));
        }
        Box::pin(async move {
            let start = Instant::now();
            let handled = exported
                .attach(CURRENT.scope(context, next.run()))
                .instrument(span.clone())
                .await;
            exported.end(&handled);
            // The outcome and duration are for the `handled` line (level debug): recording
            // them costs each delivery a formatting when nothing logs them.
            if !span.is_disabled() && tracing::enabled!(tracing::Level::DEBUG) {
                let elapsed = start.elapsed();
                span.record("outcome", outcome_name(&handled.outcome));
                span.record("duration_ms", elapsed.as_secs_f64() * 1000.0);
                let _inside = span.enter();
                tracing::debug!(disposition = ?handled.disposition, "handled");
            }
            handled
        })
    }
}

/// The span of a message sent while a delivery is handled (an RPC request, a publish): a
/// child of the delivery's span, whose `traceparent` the message carries. Ended when dropped.
pub(crate) struct Outgoing {
    context: TraceContext,
    span: tracing::Span,
    exported: export::Exported,
}

impl Outgoing {
    /// The span of a call of `service.method`, if a trace is current.
    pub(crate) fn call(service: &str, method: &str, correlation_id: &str) -> Option<Outgoing> {
        let parent = export::current_parent(TraceContext::current())?;
        let mut context = parent.child();
        let exported =
            export::Exported::call(service, method, correlation_id, &parent, &mut context);
        let span = tracing::info_span!(
            "farine.call",
            call = %format_args!("{service}.{method}"),
            correlation_id,
            trace_id = %context.trace_id,
            span_id = %context.span_id,
            parent_id = %parent.span_id,
            error = tracing::field::Empty,
        );
        Some(Outgoing {
            context,
            span,
            exported,
        })
    }

    /// The span of a publish to `exchange` with `routing_key` by `service`, if a trace is
    /// current.
    pub(crate) fn publish(service: &str, exchange: &str, routing_key: &str) -> Option<Outgoing> {
        let parent = export::current_parent(TraceContext::current())?;
        let mut context = parent.child();
        let exported =
            export::Exported::publish(service, exchange, routing_key, &parent, &mut context);
        let span = tracing::info_span!(
            "farine.publish",
            exchange,
            routing_key,
            trace_id = %context.trace_id,
            span_id = %context.span_id,
            parent_id = %parent.span_id,
            error = tracing::field::Empty,
        );
        Some(Outgoing {
            context,
            span,
            exported,
        })
    }

    /// Adds this span's `traceparent` (and `tracestate`) to the message's headers.
    pub(crate) fn inject(&self, headers: &mut Headers) {
        self.context.inject(headers);
    }

    /// The `tracing` span to run the sending in (none without an outgoing span).
    pub(crate) fn span(outgoing: Option<&Outgoing>) -> tracing::Span {
        outgoing.map_or_else(tracing::Span::none, |outgoing| outgoing.span.clone())
    }

    /// Records that the call or publish failed.
    pub(crate) fn fail(&self, error: &dyn fmt::Display) {
        let message = error.to_string();
        self.span
            .record("error", crate::clip::clip(&message).as_ref());
        self.exported.fail(&message);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const VALID: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    #[test]
    fn a_valid_traceparent_is_read_and_written_back() {
        let context = TraceContext::parse(VALID, Some("rojo=00f067aa0ba902b7")).unwrap();
        assert_eq!(context.traceparent(), VALID);
        assert_eq!(context.tracestate(), Some("rojo=00f067aa0ba902b7"));
        let child = context.child();
        assert_eq!(child.trace_id(), context.trace_id());
        assert_ne!(child.span_id(), context.span_id());
        assert_eq!(child.parent_id(), Some(context.span_id()));
        assert!(child
            .traceparent()
            .starts_with("00-4bf92f3577b34da6a3ce929d0e0e4736-"));
        assert!(child.traceparent().ends_with("-01"));
    }

    #[test]
    fn malformed_traceparents_are_ignored() {
        for bad in [
            "",
            "garbage",
            // Other versions, uppercase, zero ids, wrong lengths and separators.
            "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "00-4bf92f3577b34da6a3ce929d0e0e473-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-1",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-",
            "00_4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-0g",
            "00-+bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-+0f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-+1",
            "00-4bf92f3577b34da6a3ce929d0e0é736-00f067aa0ba902b7-01",
        ] {
            assert_eq!(TraceContext::parse(bad, None), None, "{bad:?}");
        }
    }

    #[test]
    fn a_delivery_without_a_valid_traceparent_starts_a_trace() {
        let mut headers = Headers::new();
        headers.insert(TRACEPARENT.into(), HeaderValue::Text("00-zz".into()));
        headers.insert(TRACESTATE.into(), HeaderValue::Text("forged=1".into()));
        let context = TraceContext::from_headers(&headers);
        assert_eq!(context.parent_id(), None);
        // The state of an invalid traceparent is not trusted either.
        assert_eq!(context.tracestate(), None);
        headers.insert(TRACEPARENT.into(), HeaderValue::Int(1));
        assert_eq!(TraceContext::from_headers(&headers).parent_id(), None);
        let bad_state = TraceContext::parse(VALID, Some("a=1\tb=2")).unwrap();
        assert_eq!(bad_state.tracestate(), None);
        let long = "a=".to_string() + &"b".repeat(MAX_TRACESTATE);
        assert_eq!(
            TraceContext::parse(VALID, Some(&long))
                .unwrap()
                .tracestate(),
            None
        );
    }

    #[tokio::test]
    async fn a_message_sent_in_a_trace_has_a_span_of_its_own() {
        assert!(Outgoing::publish("calc", "calc", "results").is_none());
        let context = TraceContext::parse(VALID, Some("vendor=1"))
            .unwrap()
            .child();
        let (call, publish) = context
            .clone()
            .scope(async {
                (
                    Outgoing::call("calc", "add", "c-1").unwrap(),
                    Outgoing::publish("calc", "calc", "results").unwrap(),
                )
            })
            .await;
        for outgoing in [&call, &publish] {
            let mut headers = Headers::new();
            outgoing.inject(&mut headers);
            let Some(HeaderValue::Text(traceparent)) = headers.get(TRACEPARENT) else {
                panic!("{headers:?}");
            };
            let sent = TraceContext::parse(traceparent, None).unwrap();
            assert_eq!(sent.trace_id(), context.trace_id());
            assert_ne!(sent.span_id(), context.span_id());
            assert_eq!(outgoing.context.parent_id(), Some(context.span_id()));
            assert_eq!(
                headers.get(TRACESTATE),
                Some(&HeaderValue::Text("vendor=1".into()))
            );
        }
        assert_ne!(call.context.span_id(), publish.context.span_id());
    }
}
