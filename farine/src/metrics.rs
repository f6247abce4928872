//! Metrics in the Prometheus (OpenMetrics) text format, recorded by a built-in
//! [middleware](crate::middleware) around every delivery an entry point handles.
//!
//! The runtime installs it, outermost, on every service when `http_listen` is set in
//! `[DEFAULT]`, and serves [`Metrics::encode`] at `GET /metrics`. Every series carries the
//! labels `service`, `entry_point` (`service.method`) and `kind` (`consume` or `rpc`):
//!
//! | name | type | what |
//! |---|---|---|
//! | `farine_deliveries_handled_total` | counter | deliveries that went through the handler, however they ended |
//! | `farine_deliveries_failed_total` | counter | those whose method failed (retried, dead-lettered, an RPC error answered, or requeued) |
//! | `farine_deliveries_retried_total` | counter | failed and sent to a delay queue to be tried again |
//! | `farine_deliveries_dead_lettered_total` | counter | parked in `<queue>.dlq` |
//! | `farine_deliveries_requeued_total` | counter | given back to the broker unhandled (shutdown, a middleware) |
//! | `farine_handling_duration_seconds` | histogram | time from delivery to ack, reply or retry |
//! | `farine_deliveries_in_flight` | gauge | deliveries being handled now |
//!
//! The state of each service, read when `/metrics` is scraped (label `service`):
//! `farine_broker_connected` (1 while its broker connection is up, else 0), and with a
//! database `farine_db_pool_connections` and `farine_db_pool_idle_connections`.
//!
//! And the unary calls a service's injected RPC client makes (labels `service`, the caller,
//! and `call`, `target.method`): `farine_rpc_client_calls_total`,
//! `farine_rpc_client_errors_total` (every call that did not return a value, timeouts
//! included), `farine_rpc_client_timeouts_total` and the histogram
//! `farine_rpc_client_duration_seconds`.
//!
//! ```
//! # async fn demo(config: farine::Config) -> farine::Result<()> {
//! // Without the endpoint (a test, or an application serving metrics itself):
//! let metrics = farine::metrics::Metrics::new();
//! let running = farine::Runtime::new(config).middleware(metrics.clone()).start().await?;
//! println!("{}", metrics.encode());
//! # Ok(()) }
//! ```

use crate::middleware::{Call, Disposition, EntryKind, Handled, Middleware, Next};
use futures::future::BoxFuture;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::Instant;

/// The content type of [`Metrics::encode`]'s text.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Seconds: Prometheus's usual buckets, from 5 ms to 10 s.
const DURATION_BUCKETS: [f64; 11] = [
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// The labels of every entry point series.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct EntryLabels {
    service: String,
    entry_point: String,
    kind: &'static str,
}

impl EntryLabels {
    fn of(call: &Call<'_>) -> EntryLabels {
        EntryLabels {
            service: call.service.to_owned(),
            entry_point: call.entry_point.to_owned(),
            kind: match call.kind {
                EntryKind::Consume => "consume",
                EntryKind::Rpc => "rpc",
            },
        }
    }
}

/// The label of a service's state.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ServiceLabels {
    service: String,
}

/// The labels of the RPC client's series.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CallLabels {
    service: String,
    call: String,
}

fn duration_histogram() -> Histogram {
    Histogram::new(DURATION_BUCKETS)
}

/// The series of one entry point that every delivery touches, looked up once (they share
/// their values with the families'): a delivery then costs no label strings and no family
/// lookups. The failure counters are looked up when they count, so that an entry point that
/// never failed has none.
struct EntrySeries {
    labels: EntryLabels,
    handled: Counter,
    duration: Histogram,
    in_flight: Gauge,
}

struct Inner {
    registry: Registry,
    handled: Family<EntryLabels, Counter>,
    failed: Family<EntryLabels, Counter>,
    retried: Family<EntryLabels, Counter>,
    dead_lettered: Family<EntryLabels, Counter>,
    requeued: Family<EntryLabels, Counter>,
    duration: Family<EntryLabels, Histogram, fn() -> Histogram>,
    in_flight: Family<EntryLabels, Gauge>,
    client_calls: Family<CallLabels, Counter>,
    client_errors: Family<CallLabels, Counter>,
    client_timeouts: Family<CallLabels, Counter>,
    client_duration: Family<CallLabels, Histogram, fn() -> Histogram>,
    broker_connected: Family<ServiceLabels, Gauge>,
    db_connections: Family<ServiceLabels, Gauge>,
    db_idle: Family<ServiceLabels, Gauge>,
    /// By entry point (`service.method`).
    entries: RwLock<HashMap<Box<str>, Arc<EntrySeries>>>,
}

/// The metrics of one runtime (its own registry: two runtimes in one process do not mix
/// their counts). Cheap to clone; a [`Middleware`] that records every delivery.
#[derive(Clone)]
pub struct Metrics(Arc<Inner>);

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

impl Metrics {
    pub fn new() -> Metrics {
        let mut registry = Registry::with_prefix("farine");
        let handled = Family::<EntryLabels, Counter>::default();
        let failed = Family::<EntryLabels, Counter>::default();
        let retried = Family::<EntryLabels, Counter>::default();
        let dead_lettered = Family::<EntryLabels, Counter>::default();
        let requeued = Family::<EntryLabels, Counter>::default();
        let duration = Family::<EntryLabels, Histogram, fn() -> Histogram>::new_with_constructor(
            duration_histogram,
        );
        let in_flight = Family::<EntryLabels, Gauge>::default();
        // Counters get their `_total` suffix from the encoder.
        registry.register(
            "deliveries_handled",
            "Deliveries an entry point handled, however they ended",
            handled.clone(),
        );
        registry.register(
            "deliveries_failed",
            "Deliveries whose method failed (retried, dead-lettered, answered with an error, or requeued)",
            failed.clone(),
        );
        registry.register(
            "deliveries_retried",
            "Failed deliveries sent to a delay queue to be tried again",
            retried.clone(),
        );
        registry.register(
            "deliveries_dead_lettered",
            "Failed deliveries parked in the queue's .dlq",
            dead_lettered.clone(),
        );
        registry.register(
            "deliveries_requeued",
            "Deliveries given back to the broker unhandled",
            requeued.clone(),
        );
        registry.register(
            "handling_duration_seconds",
            "Time from a delivery to its ack, reply or retry",
            duration.clone(),
        );
        registry.register(
            "deliveries_in_flight",
            "Deliveries being handled now",
            in_flight.clone(),
        );
        let client_calls = Family::<CallLabels, Counter>::default();
        let client_errors = Family::<CallLabels, Counter>::default();
        let client_timeouts = Family::<CallLabels, Counter>::default();
        let client_duration =
            Family::<CallLabels, Histogram, fn() -> Histogram>::new_with_constructor(
                duration_histogram,
            );
        registry.register(
            "rpc_client_calls",
            "Unary RPC calls a service made",
            client_calls.clone(),
        );
        registry.register(
            "rpc_client_errors",
            "Unary RPC calls that returned no value (an error answered, a timeout, a lost connection)",
            client_errors.clone(),
        );
        registry.register(
            "rpc_client_timeouts",
            "Unary RPC calls that got no reply in time",
            client_timeouts.clone(),
        );
        registry.register(
            "rpc_client_duration_seconds",
            "Time from a unary RPC request to its result",
            client_duration.clone(),
        );
        let broker_connected = Family::<ServiceLabels, Gauge>::default();
        let db_connections = Family::<ServiceLabels, Gauge>::default();
        let db_idle = Family::<ServiceLabels, Gauge>::default();
        registry.register(
            "broker_connected",
            "1 while the service's broker connection is up, else 0",
            broker_connected.clone(),
        );
        registry.register(
            "db_pool_connections",
            "Connections open in the service's database pool",
            db_connections.clone(),
        );
        registry.register(
            "db_pool_idle_connections",
            "Idle connections in the service's database pool",
            db_idle.clone(),
        );
        Metrics(Arc::new(Inner {
            entries: RwLock::default(),
            broker_connected,
            db_connections,
            db_idle,
            client_calls,
            client_errors,
            client_timeouts,
            client_duration,
            registry,
            handled,
            failed,
            retried,
            dead_lettered,
            requeued,
            duration,
            in_flight,
        }))
    }

    /// Every metric, in the OpenMetrics text format Prometheus scrapes ([`CONTENT_TYPE`]).
    pub fn encode(&self) -> String {
        let mut text = String::new();
        // Writing to a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut text, &self.0.registry);
        text
    }

    /// The state of `service` now: its connection, and its pool (open, idle connections).
    pub(crate) fn state(&self, service: &str, connected: bool, pool: Option<(u32, usize)>) {
        let inner = &self.0;
        let labels = ServiceLabels {
            service: service.to_owned(),
        };
        inner
            .broker_connected
            .get_or_create(&labels)
            .set(i64::from(connected));
        if let Some((open, idle)) = pool {
            inner
                .db_connections
                .get_or_create(&labels)
                .set(i64::from(open));
            inner
                .db_idle
                .get_or_create(&labels)
                .set(i64::try_from(idle).unwrap_or(i64::MAX));
        }
    }

    /// One unary call `call` (`target.method`) that `service` made, and how it ended.
    pub(crate) fn rpc_call<T>(
        &self,
        service: &str,
        call: &str,
        result: &crate::Result<T>,
        seconds: f64,
    ) {
        let inner = &self.0;
        let labels = CallLabels {
            service: service.to_owned(),
            call: call.to_owned(),
        };
        inner.client_calls.get_or_create(&labels).inc();
        if let Err(err) = result {
            inner.client_errors.get_or_create(&labels).inc();
            if matches!(err, crate::Error::Timeout { .. }) {
                inner.client_timeouts.get_or_create(&labels).inc();
            }
        }
        inner
            .client_duration
            .get_or_create(&labels)
            .observe(seconds);
    }

    /// The series of `call`'s entry point.
    fn entry(&self, call: &Call<'_>) -> Arc<EntrySeries> {
        let inner = &self.0;
        let known = inner
            .entries
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(call.entry_point)
            .cloned();
        if let Some(series) = known {
            return series;
        }
        let labels = EntryLabels::of(call);
        let series = Arc::new(EntrySeries {
            handled: inner.handled.get_or_create_owned(&labels),
            duration: inner.duration.get_or_create_owned(&labels),
            in_flight: inner.in_flight.get_or_create_owned(&labels),
            labels,
        });
        inner
            .entries
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .entry(call.entry_point.into())
            .or_insert(series)
            .clone()
    }

    fn record(&self, series: &EntrySeries, handled: &Handled, seconds: f64) {
        let inner = &self.0;
        let labels = &series.labels;
        series.handled.inc();
        if !handled.is_done() {
            inner.failed.get_or_create(labels).inc();
        }
        match handled.disposition {
            Disposition::Retried => {
                inner.retried.get_or_create(labels).inc();
            }
            Disposition::DeadLettered => {
                inner.dead_lettered.get_or_create(labels).inc();
            }
            Disposition::Requeued => {
                inner.requeued.get_or_create(labels).inc();
            }
            Disposition::Acked => {}
        }
        series.duration.observe(seconds);
    }
}

/// Takes one off the in-flight gauge when the handling ends, even if it is dropped (a
/// shutdown that stops waiting).
struct InFlight(Gauge);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.dec();
    }
}

impl Middleware for Metrics {
    fn around<'a>(&'a self, call: &'a Call<'a>, next: Next<'a>) -> BoxFuture<'a, Handled> {
        Box::pin(async move {
            let series = self.entry(call);
            series.in_flight.inc();
            let _in_flight = InFlight(series.in_flight.clone());
            let started = Instant::now();
            let handled = next.run().await;
            self.record(&series, &handled, started.elapsed().as_secs_f64());
            handled
        })
    }
}
