//! The gateway's routes: `POST /rpc/{service}/{method}`, `GET /events/{exchange}`, `GET /ws`,
//! and the static files; with the origin check, CORS, body limit and authentication.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;

use axum::body::{Body, Bytes};
use axum::extract::{ConnectInfo, Path, Query, State as Shared};
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use futures::Stream;
use serde::Deserialize;
use serde_json::{json, Value};
use tokio::sync::broadcast::error::RecvError;

use super::call::{self, Frame};
use super::reply::PublicError;
use super::State;

/// The most a streamed result collected into one JSON answer may take (ask for
/// `application/x-ndjson` or `text/event-stream` to read a longer one).
const MAX_COLLECTED_BYTES: usize = 16 << 20;

pub(crate) fn router(state: Arc<State>) -> Router {
    let mut router = Router::new()
        .route("/rpc/{service}/{method}", post(rpc))
        .route("/events/{exchange}", get(events))
        .route("/ws", get(super::ws::upgrade));
    if let Some(dir) = &state.settings.static_dir {
        router = router.fallback_service(tower_http::services::ServeDir::new(dir));
    }
    let cors = cors(&state.settings.allowed_origins);
    router
        .layer(axum::extract::DefaultBodyLimit::max(
            state.settings.max_body_bytes,
        ))
        .layer(cors)
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            check_origin,
        ))
        .with_state(state)
}

/// Cross-origin requests from the pages of `allowed_origins` (the gateway's own pages need
/// none).
fn cors(allowed: &[String]) -> tower_http::cors::CorsLayer {
    use tower_http::cors::{AllowOrigin, CorsLayer};
    let origins = if allowed.iter().any(|origin| origin == "*") {
        AllowOrigin::any()
    } else {
        AllowOrigin::list(
            allowed
                .iter()
                .filter_map(|origin| HeaderValue::from_str(origin).ok()),
        )
    };
    CorsLayer::new()
        .allow_origin(origins)
        .allow_methods([Method::GET, Method::POST])
        .allow_headers([
            header::AUTHORIZATION,
            header::CONTENT_TYPE,
            header::ACCEPT,
            header::HeaderName::from_static("last-event-id"),
        ])
}

/// 403 for a page of an origin that is neither the gateway's nor allowed.
async fn check_origin(
    Shared(state): Shared<Arc<State>>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    if super::origin::allowed(&state.settings.allowed_origins, request.headers()) {
        next.run(request).await
    } else {
        PublicError::new(
            StatusCode::FORBIDDEN,
            "origin_not_allowed",
            "pages of this origin may not use this gateway (see allowed_origins)",
        )
        .into_response()
    }
}

/// `?access_token=` (browsers cannot set headers on WebSockets and EventSources) and
/// `?last_event_id=`.
#[derive(Deserialize, Default)]
pub(crate) struct Params {
    pub access_token: Option<String>,
    pub last_event_id: Option<String>,
}

/// How the caller wants a result: one JSON value, or items as they come.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Format {
    Json,
    Ndjson,
    EventStream,
}

fn format(headers: &HeaderMap) -> Format {
    let accept = headers
        .get(header::ACCEPT)
        .and_then(|value| value.to_str().ok())
        .unwrap_or("");
    if accept.contains("text/event-stream") {
        Format::EventStream
    } else if accept.contains("application/x-ndjson") {
        Format::Ndjson
    } else {
        Format::Json
    }
}

async fn rpc(
    Shared(state): Shared<Arc<State>>,
    Path((service, method)): Path<(String, String)>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Query(params): Query<Params>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    match rpc_call(&state, &service, &method, peer, &params, &headers, &body).await {
        Ok(response) => response,
        Err(err) => err.into_response(),
    }
}

async fn rpc_call(
    state: &Arc<State>,
    service: &str,
    method: &str,
    peer: SocketAddr,
    params: &Params,
    headers: &HeaderMap,
    body: &[u8],
) -> Result<Response, PublicError> {
    state.auth.check(headers, params.access_token.as_deref())?;
    if state.http_rate.check_key(&peer.ip()).is_err() {
        return Err(PublicError::rate_limited());
    }
    call::exposed(state, service, method)?;
    let args: Value = if body.iter().all(u8::is_ascii_whitespace) {
        Value::Null
    } else {
        serde_json::from_slice(body)
            .map_err(|err| PublicError::bad_request(format!("the body is not JSON: {err}")))?
    };
    let permit =
        state.http_calls.clone().try_acquire_owned().map_err(|_| {
            PublicError::busy("the gateway has too many calls in flight: try again")
        })?;
    let format = format(headers);
    // A page (or a proxy) that traces its requests: the call continues its trace.
    let text = |name: &str| headers.get(name).and_then(|value| value.to_str().ok());
    let trace = text(crate::trace::TRACEPARENT)
        .and_then(|parent| {
            crate::trace::TraceContext::parse(parent, text(crate::trace::TRACESTATE))
        })
        .map_or_else(crate::trace::TraceContext::root, |parent| parent.child());
    let mut replies = trace
        .scope(call::start(state, service, method, args))
        .await?;
    // The first frame decides the status: an error before any item is an error status.
    let first = replies.next().await;
    match (format, first) {
        (_, Frame::Error(err)) => Err(err),
        (Format::Json, Frame::Result(value)) => Ok(axum::Json(value).into_response()),
        (Format::Json, Frame::End) => Ok(axum::Json(json!([])).into_response()),
        (Format::Json, Frame::Item(first)) => {
            let mut items = vec![first];
            let mut size = 0;
            loop {
                match replies.next().await {
                    Frame::Item(value) | Frame::Result(value) => {
                        size += value.to_string().len();
                        if size > MAX_COLLECTED_BYTES {
                            return Err(PublicError::new(
                                StatusCode::NOT_ACCEPTABLE,
                                "too_large",
                                format!(
                                    "the stream of {service}.{method} is over {MAX_COLLECTED_BYTES} \
                                     bytes: ask for it with Accept: application/x-ndjson or \
                                     text/event-stream"
                                ),
                            ));
                        }
                        items.push(value);
                    }
                    Frame::End => return Ok(axum::Json(Value::Array(items)).into_response()),
                    Frame::Error(err) => return Err(err),
                }
            }
        }
        (format, first) => {
            // Items as they come; dropping the body (the browser went away) drops the replies,
            // which cancels the stream on the server.
            let stream = futures::stream::unfold(
                (Some(first), replies, permit, false),
                move |(first, mut replies, permit, over)| async move {
                    if over {
                        return None;
                    }
                    let frame = match first {
                        Some(frame) => frame,
                        None => replies.next().await,
                    };
                    let (text, over) = match (format, frame) {
                        (_, Frame::End) if format == Format::Ndjson => return None,
                        (_, Frame::End) => ("event: end\ndata: {}\n\n".to_owned(), true),
                        (Format::Ndjson, Frame::Item(v) | Frame::Result(v)) => {
                            (format!("{v}\n"), false)
                        }
                        (_, Frame::Item(v) | Frame::Result(v)) => (format!("data: {v}\n\n"), false),
                        (Format::Ndjson, Frame::Error(err)) => {
                            (format!("{}\n", json!({ "error": err.body() })), true)
                        }
                        (_, Frame::Error(err)) => {
                            (format!("event: error\ndata: {}\n\n", err.body()), true)
                        }
                    };
                    Some((
                        Ok::<_, Infallible>(Bytes::from(text)),
                        (None, replies, permit, over),
                    ))
                },
            );
            let content_type = match format {
                Format::Ndjson => "application/x-ndjson",
                _ => "text/event-stream",
            };
            Ok((
                [
                    (header::CONTENT_TYPE, content_type),
                    (header::CACHE_CONTROL, "no-cache"),
                ],
                Body::from_stream(stream),
            )
                .into_response())
        }
    }
}

/// `GET /events/{exchange}`: the exchange's events as Server-Sent Events, resumed after
/// `Last-Event-ID` (the header, or `?last_event_id=`) when that event is still kept.
async fn events(
    Shared(state): Shared<Arc<State>>,
    Path(exchange): Path<String>,
    Query(params): Query<Params>,
    headers: HeaderMap,
) -> Result<Sse<impl Stream<Item = Result<SseEvent, Infallible>>>, PublicError> {
    state.auth.check(&headers, params.access_token.as_deref())?;
    let feed = state.hub.feed(&exchange).ok_or_else(|| {
        PublicError::new(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("no events of {}", crate::clip::clip(&exchange)),
        )
    })?;
    let last_id = headers
        .get("last-event-id")
        .and_then(|value| value.to_str().ok())
        .map(str::to_owned)
        .or(params.last_event_id);
    let (missed, mut live) = feed.follow(last_id.as_deref());
    let shutdown = state.shutdown.clone();
    let stream = async_stream::stream! {
        for event in missed {
            yield Ok(SseEvent::default().id(event.id.clone()).data(event.data.clone()));
        }
        loop {
            let received = tokio::select! {
                received = live.recv() => received,
                () = shutdown.cancelled() => break,
            };
            match received {
                Ok(event) => yield Ok(SseEvent::default().id(event.id.clone()).data(event.data.clone())),
                // Too slow a reader: the stream ends, and the browser resumes from its
                // Last-Event-ID while those events are kept.
                Err(RecvError::Lagged(_)) | Err(RecvError::Closed) => break,
            }
        }
    };
    Ok(Sse::new(stream).keep_alive(KeepAlive::default()))
}
