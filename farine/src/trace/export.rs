//! The OpenTelemetry side of farine's spans (feature `otel`): each handled delivery, RPC call
//! and publish is also a span of the global tracer provider, and farine's [`TraceContext`]
//! takes that span's ids, so the `traceparent` farine sends names the exported span. Without
//! the feature (or with no provider installed: the no-op one) nothing is exported and
//! farine's own ids are used.

use super::TraceContext;

#[cfg(feature = "otel")]
pub(crate) use on::{current_parent, Exported};

#[cfg(not(feature = "otel"))]
pub(crate) use off::{current_parent, Exported};

#[cfg(not(feature = "otel"))]
mod off {
    use super::TraceContext;
    use crate::middleware::{Call, Handled};

    /// Nothing: built without the `otel` feature.
    pub(crate) struct Exported;

    impl Exported {
        pub(crate) fn handle(_: &Call<'_>, _: Option<&TraceContext>, _: &mut TraceContext) -> Self {
            Exported
        }

        pub(crate) fn call(
            _: &str,
            _: &str,
            _: &str,
            _: &TraceContext,
            _: &mut TraceContext,
        ) -> Self {
            Exported
        }

        pub(crate) fn publish(
            _: &str,
            _: &str,
            _: &str,
            _: &TraceContext,
            _: &mut TraceContext,
        ) -> Self {
            Exported
        }

        pub(crate) fn attach<F>(&self, future: F) -> F {
            future
        }

        pub(crate) fn end(self, _: &Handled) {}

        pub(crate) fn fail(&self, _: &str) {}
    }

    /// The parent of an outgoing message's span: the delivery being handled, if any.
    pub(crate) fn current_parent(farine: Option<TraceContext>) -> Option<TraceContext> {
        farine
    }
}

#[cfg(feature = "otel")]
mod on {
    use super::super::{SpanId, TraceId};
    use super::TraceContext;
    use crate::middleware::{Call, Disposition, EntryKind, Handled};
    use crate::observe::Handling;
    use futures::future::Either;
    use opentelemetry::context::FutureExt as _;
    use opentelemetry::trace::{
        Span as _, SpanBuilder, SpanContext, SpanKind, Status, TraceContextExt, TraceFlags,
        TraceState, Tracer as _,
    };
    use opentelemetry::{global, Context, InstrumentationScope, KeyValue};
    use std::future::Future;
    use std::sync::OnceLock;

    /// The global provider's tracer (looked up each time: a test or an application may
    /// install its provider after farine started).
    fn tracer() -> global::BoxedTracer {
        static SCOPE: OnceLock<InstrumentationScope> = OnceLock::new();
        let scope = SCOPE.get_or_init(|| {
            InstrumentationScope::builder("farine")
                .with_version(env!("CARGO_PKG_VERSION"))
                .build()
        });
        global::tracer_with_scope(scope.clone())
    }

    fn otel_trace_id(id: TraceId) -> opentelemetry::TraceId {
        opentelemetry::TraceId::from(id.0)
    }

    fn otel_span_id(id: SpanId) -> opentelemetry::SpanId {
        opentelemetry::SpanId::from(id.0)
    }

    /// `context` as the parent of an OpenTelemetry span.
    fn parent_context(context: &TraceContext, remote: bool) -> Context {
        let state = context
            .tracestate()
            .and_then(|state| state.parse::<TraceState>().ok())
            .unwrap_or_default();
        Context::new().with_remote_span_context(SpanContext::new(
            otel_trace_id(context.trace_id),
            otel_span_id(context.span_id),
            TraceFlags::new(context.flags),
            remote,
            state,
        ))
    }

    /// An exported span, in the OpenTelemetry context where code run inside it sees it as
    /// the current span; `None` when the provider is the no-op one. Ended when dropped.
    pub(crate) struct Exported(Option<Context>);

    impl Drop for Exported {
        fn drop(&mut self) {
            if let Some(context) = &self.0 {
                context.span().end();
            }
        }
    }

    impl Exported {
        /// Starts a span as the child of `parent` (none: a new trace), and gives `context`
        /// (farine's, for that span) its ids and sampling decision.
        fn start(
            builder: SpanBuilder,
            parent: Option<&TraceContext>,
            remote: bool,
            context: &mut TraceContext,
        ) -> (Exported, bool) {
            let parent_cx = parent.map_or_else(Context::new, |p| parent_context(p, remote));
            let span = tracer().build_with_context(builder, &parent_cx);
            let span_context = span.span_context();
            // A span of an SDK has an id of its own; the no-op tracer's has none (or its
            // parent's, which farine must not take as its own).
            let own = span_context.is_valid()
                && parent.is_none_or(|p| span_context.span_id() != otel_span_id(p.span_id));
            if !own {
                return (Exported(None), false);
            }
            context.trace_id = TraceId(u128::from_be_bytes(span_context.trace_id().to_bytes()));
            context.span_id = SpanId(u64::from_be_bytes(span_context.span_id().to_bytes()));
            context.flags = span_context.trace_flags().to_u8();
            let recording = span.is_recording();
            (Exported(Some(Context::new().with_span(span))), recording)
        }

        fn set(&self, attributes: impl IntoIterator<Item = KeyValue>) {
            if let Some(context) = &self.0 {
                context.span().set_attributes(attributes);
            }
        }

        /// The span of a handled delivery: `handle <service.method>`, a server span for an
        /// RPC request, a consumer span for a message; `parent` is what its `traceparent`
        /// said.
        pub(crate) fn handle(
            call: &Call<'_>,
            parent: Option<&TraceContext>,
            context: &mut TraceContext,
        ) -> Exported {
            let kind = match call.kind {
                EntryKind::Rpc => SpanKind::Server,
                EntryKind::Consume => SpanKind::Consumer,
            };
            let builder =
                SpanBuilder::from_name(format!("handle {}", call.entry_point)).with_kind(kind);
            let (exported, recording) = Exported::start(builder, parent, true, context);
            // The attributes only for a span that records (none are built for the no-op
            // provider or a span not sampled).
            if recording {
                let mut attributes = vec![
                    KeyValue::new("messaging.system", "rabbitmq"),
                    KeyValue::new("messaging.operation.type", "process"),
                    KeyValue::new("messaging.destination.name", call.exchange.to_owned()),
                    KeyValue::new(
                        "messaging.rabbitmq.destination.routing_key",
                        call.routing_key.to_owned(),
                    ),
                    KeyValue::new("farine.service", call.service.to_owned()),
                    KeyValue::new("farine.entry_point", call.entry_point.to_owned()),
                    KeyValue::new("farine.kind", super::super::kind_name(call.kind)),
                    KeyValue::new("farine.queue", call.queue.to_owned()),
                    KeyValue::new("farine.attempt", i64::from(call.attempt)),
                ];
                if let Some(id) = call.correlation_id {
                    attributes.push(KeyValue::new(
                        "messaging.message.conversation_id",
                        id.to_owned(),
                    ));
                }
                if call.kind == EntryKind::Rpc {
                    attributes.push(KeyValue::new("rpc.system", "farine"));
                    attributes.push(KeyValue::new("rpc.service", call.service.to_owned()));
                    if let Some((_, method)) = call.entry_point.split_once('.') {
                        attributes.push(KeyValue::new("rpc.method", method.to_owned()));
                    }
                }
                exported.set(attributes);
            }
            exported
        }

        /// The span of an RPC call: `call <service.method>`, a client span.
        pub(crate) fn call(
            service: &str,
            method: &str,
            correlation_id: &str,
            parent: &TraceContext,
            context: &mut TraceContext,
        ) -> Exported {
            let builder = SpanBuilder::from_name(format!("call {service}.{method}"))
                .with_kind(SpanKind::Client);
            let (exported, recording) = Exported::start(builder, Some(parent), false, context);
            if recording {
                exported.set([
                    KeyValue::new("messaging.system", "rabbitmq"),
                    KeyValue::new("messaging.operation.type", "send"),
                    KeyValue::new("messaging.destination.name", service.to_owned()),
                    KeyValue::new(
                        "messaging.rabbitmq.destination.routing_key",
                        crate::rpc::names::queue_name(service, method),
                    ),
                    KeyValue::new(
                        "messaging.message.conversation_id",
                        correlation_id.to_owned(),
                    ),
                    KeyValue::new("rpc.system", "farine"),
                    KeyValue::new("rpc.service", service.to_owned()),
                    KeyValue::new("rpc.method", method.to_owned()),
                ]);
            }
            exported
        }

        /// The span of a publish: `publish <exchange>`, a producer span.
        pub(crate) fn publish(
            service: &str,
            exchange: &str,
            routing_key: &str,
            parent: &TraceContext,
            context: &mut TraceContext,
        ) -> Exported {
            let builder =
                SpanBuilder::from_name(format!("publish {exchange}")).with_kind(SpanKind::Producer);
            let (exported, recording) = Exported::start(builder, Some(parent), false, context);
            if recording {
                exported.set([
                    KeyValue::new("messaging.system", "rabbitmq"),
                    KeyValue::new("messaging.operation.type", "send"),
                    KeyValue::new("messaging.destination.name", exchange.to_owned()),
                    KeyValue::new(
                        "messaging.rabbitmq.destination.routing_key",
                        routing_key.to_owned(),
                    ),
                    KeyValue::new("farine.service", service.to_owned()),
                ]);
            }
            exported
        }

        /// Runs `future` with this span as OpenTelemetry's current one.
        pub(crate) fn attach<F: Future>(&self, future: F) -> impl Future<Output = F::Output> {
            match &self.0 {
                Some(context) => Either::Left(future.with_context(context.clone())),
                None => Either::Right(future),
            }
        }

        /// Ends a delivery's span with its outcome.
        pub(crate) fn end(self, handled: &Handled) {
            let Some(context) = &self.0 else {
                return;
            };
            let span = context.span();
            span.set_attributes([
                KeyValue::new(
                    "farine.outcome",
                    super::super::outcome_name(&handled.outcome),
                ),
                KeyValue::new(
                    "farine.disposition",
                    match handled.disposition {
                        Disposition::Acked => "acked",
                        Disposition::Retried => "retried",
                        Disposition::DeadLettered => "dead_lettered",
                        Disposition::Requeued => "requeued",
                    },
                ),
            ]);
            match &handled.outcome {
                Handling::Done => {}
                Handling::Failed(message) | Handling::Poison(message) => self.fail(message),
            }
        }

        /// Marks the span failed, with `message` (clipped) as its status.
        pub(crate) fn fail(&self, message: &str) {
            if let Some(context) = &self.0 {
                let message = crate::clip::clip(message);
                context
                    .span()
                    .set_status(Status::error(message.into_owned()));
            }
        }
    }

    /// The parent of an outgoing message's span: the application's current OpenTelemetry
    /// span when it is in the trace of the delivery being handled (a span it opened inside
    /// the handler) or when no delivery is being handled (a client of its own), else the
    /// delivery's span.
    pub(crate) fn current_parent(farine: Option<TraceContext>) -> Option<TraceContext> {
        let current = Context::current();
        let span = current.span();
        let otel = span.span_context();
        if !otel.is_valid() {
            return farine;
        }
        let trace_id = TraceId(u128::from_be_bytes(otel.trace_id().to_bytes()));
        let span_id = SpanId(u64::from_be_bytes(otel.span_id().to_bytes()));
        match farine {
            Some(mut farine) if farine.trace_id == trace_id => {
                farine.span_id = span_id;
                Some(farine)
            }
            Some(farine) => Some(farine),
            None => {
                let state = otel.trace_state().header();
                Some(TraceContext {
                    trace_id,
                    span_id,
                    parent_id: None,
                    flags: otel.trace_flags().to_u8(),
                    state: (!state.is_empty()).then(|| state.into_boxed_str()),
                })
            }
        }
    }
}
