//! The process's HTTP endpoint (`http_listen` in `[DEFAULT]`): `GET /metrics`,
//! `GET /health/live` and `GET /health/ready`.

use crate::broker::Broker;
use crate::metrics::{Metrics, CONTENT_TYPE};
use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use serde_json::json;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};
use tokio::net::TcpListener;

/// A service started: its broker connection and its database pool, if any.
pub(crate) struct Started {
    pub(crate) service: String,
    pub(crate) broker: Arc<Broker>,
    pub(crate) db: Option<Arc<crate::db::Database>>,
}

/// What `/health/ready` looks at: the services once started, each with its connection.
#[derive(Default)]
pub(crate) struct Readiness {
    services: RwLock<Option<Vec<Started>>>,
    stopping: AtomicBool,
}

impl Readiness {
    /// Every entry point of these services is attached.
    pub(crate) fn started(&self, services: Vec<Started>) {
        *self.services.write().unwrap_or_else(|e| e.into_inner()) = Some(services);
    }

    /// Shutting down: no longer ready.
    pub(crate) fn stopping(&self) {
        self.stopping.store(true, Ordering::Relaxed);
    }

    /// Whether the process is ready, and the JSON detail.
    fn report(&self) -> (bool, serde_json::Value) {
        if self.stopping.load(Ordering::Relaxed) {
            return (
                false,
                json!({"ready": false, "not_ready": ["shutting down"]}),
            );
        }
        let services = self.services.read().unwrap_or_else(|e| e.into_inner());
        let Some(services) = services.as_ref() else {
            return (
                false,
                json!({"ready": false, "not_ready": ["starting: entry points not attached yet"]}),
            );
        };
        let mut not_ready = Vec::new();
        let detail: Vec<serde_json::Value> = services
            .iter()
            .map(
                |Started {
                     service, broker, ..
                 }| {
                    let connected = broker.is_connected();
                    let detached = broker.detached();
                    if !connected {
                        not_ready.push(format!(
                            "service {service}: broker {} not connected",
                            broker.uri()
                        ));
                    }
                    if detached > 0 {
                        not_ready.push(format!(
                            "service {service}: {detached} entry point(s) waiting to re-attach"
                        ));
                    }
                    json!({
                        "service": service,
                        "broker": broker.uri().to_string(),
                        "connected": connected,
                        "entry_points_attached": connected && detached == 0,
                    })
                },
            )
            .collect();
        let ready = not_ready.is_empty();
        let mut body = json!({"ready": ready, "services": detail});
        if !ready {
            body["not_ready"] = json!(not_ready);
        }
        (ready, body)
    }
}

#[derive(Clone)]
struct Shared {
    metrics: Metrics,
    readiness: Arc<Readiness>,
}

/// The endpoint, serving until dropped.
pub(crate) struct Endpoint {
    pub(crate) addr: SocketAddr,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Endpoint {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Serves the endpoint on a bound listener.
pub(crate) fn serve(
    listener: TcpListener,
    metrics: Metrics,
    readiness: Arc<Readiness>,
) -> Endpoint {
    let addr = listener
        .local_addr()
        .unwrap_or_else(|_| SocketAddr::from(([0, 0, 0, 0], 0)));
    let router = Router::new()
        .route("/metrics", get(metrics_text))
        .route("/health/live", get(live))
        .route("/health/ready", get(ready))
        .with_state(Shared { metrics, readiness });
    let task = tokio::spawn(async move {
        if let Err(err) = axum::serve(listener, router).await {
            tracing::error!(%addr, "http endpoint stopped: {err}");
        }
    });
    tracing::info!(%addr, "http endpoint listening: /metrics, /health/live, /health/ready");
    Endpoint { addr, task }
}

async fn metrics_text(State(shared): State<Shared>) -> Response {
    // The gauges of the process's state are read when scraped.
    if let Some(services) = shared
        .readiness
        .services
        .read()
        .unwrap_or_else(|e| e.into_inner())
        .as_ref()
    {
        for started in services {
            shared.metrics.state(
                &started.service,
                started.broker.is_connected(),
                started
                    .db
                    .as_ref()
                    .map(|db| (db.pool().size(), db.pool().num_idle())),
            );
        }
    }
    (
        [(header::CONTENT_TYPE, CONTENT_TYPE)],
        shared.metrics.encode(),
    )
        .into_response()
}

async fn live() -> Response {
    json_response(StatusCode::OK, &json!({"live": true}))
}

async fn ready(State(shared): State<Shared>) -> Response {
    let (ready, body) = shared.readiness.report();
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    json_response(status, &body)
}

fn json_response(status: StatusCode, body: &serde_json::Value) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "application/json")],
        body.to_string(),
    )
        .into_response()
}
