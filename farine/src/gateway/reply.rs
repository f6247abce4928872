//! What a browser is told when something fails: a status, a stable `kind`, a message that
//! gives nothing of the inside away, the service's own error value where it has one, and for
//! infrastructure errors a request id that is in the gateway's log with the detail.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::{json, Value};

use crate::rpc::frame::kind;
use crate::Error;

/// An error as a browser sees it.
#[derive(Debug)]
pub(crate) struct PublicError {
    pub status: StatusCode,
    pub kind: &'static str,
    pub message: String,
    pub data: Option<Value>,
    pub request_id: Option<String>,
}

impl PublicError {
    pub fn new(status: StatusCode, kind: &'static str, message: impl Into<String>) -> Self {
        PublicError {
            status,
            kind,
            message: message.into(),
            data: None,
            request_id: None,
        }
    }

    /// 404 for a method that is not exposed, and the same for one that does not exist: a
    /// browser cannot tell them apart, so it cannot probe what the gateway hides.
    pub fn not_found(service: &str, method: &str) -> Self {
        let name = |s: &str| crate::clip::clip(s).to_string();
        PublicError::new(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("no method {}.{}", name(service), name(method)),
        )
    }

    pub fn bad_request(message: impl Into<String>) -> Self {
        PublicError::new(StatusCode::BAD_REQUEST, "bad_request", message)
    }

    pub fn unauthenticated(message: impl Into<String>) -> Self {
        PublicError::new(StatusCode::UNAUTHORIZED, "unauthenticated", message)
    }

    pub fn rate_limited() -> Self {
        PublicError::new(
            StatusCode::TOO_MANY_REQUESTS,
            "rate_limited",
            "too many calls: slow down",
        )
    }

    pub fn busy(message: impl Into<String>) -> Self {
        PublicError::new(StatusCode::TOO_MANY_REQUESTS, "busy", message)
    }

    /// An error of the gateway or the broker: logged in full with a new request id; the
    /// browser gets the id and `message`.
    pub fn internal(
        status: StatusCode,
        kind: &'static str,
        message: &str,
        detail: &dyn std::fmt::Display,
    ) -> Self {
        let request_id = uuid::Uuid::new_v4().simple().to_string()[..16].to_owned();
        tracing::warn!(request_id, "gateway: {message}: {detail}");
        PublicError {
            status,
            kind,
            message: format!("{message} (request id {request_id})"),
            data: None,
            request_id: Some(request_id),
        }
    }

    /// The error of a call to `service.method`, as a browser may see it.
    pub fn from_call(err: Error, service: &str, method: &str) -> Self {
        match err {
            Error::UnknownService { .. } | Error::UnknownMethod { .. } => {
                PublicError::not_found(service, method)
            }
            Error::Timeout { after, .. } => PublicError::new(
                StatusCode::GATEWAY_TIMEOUT,
                "timeout",
                format!("no reply within {}", humantime::format_duration(after)),
            ),
            Error::Remote {
                kind: remote,
                message,
                data,
                ..
            } => match remote.as_str() {
                kind::UNKNOWN_METHOD => PublicError::not_found(service, method),
                kind::BAD_ARGUMENTS => {
                    PublicError::new(StatusCode::BAD_REQUEST, "bad_arguments", message)
                }
                kind::TIMEOUT => PublicError::new(StatusCode::GATEWAY_TIMEOUT, "timeout", message),
                // The method's own error: its serialized value is what it chose to say.
                kind::SERVICE => PublicError {
                    status: StatusCode::UNPROCESSABLE_ENTITY,
                    kind: "service",
                    message,
                    data,
                    request_id: None,
                },
                // A panic, or a Python exception's text (which may hold a traceback).
                _ => PublicError::internal(
                    StatusCode::BAD_GATEWAY,
                    "internal",
                    "the service failed",
                    &format_args!("{service}.{method} failed ({remote}): {message}"),
                ),
            },
            err => PublicError::internal(
                StatusCode::SERVICE_UNAVAILABLE,
                "unavailable",
                "the service could not be reached",
                &format_args!("{service}.{method}: {err}"),
            ),
        }
    }

    /// `{"kind", "message", "data"?, "request_id"?}`.
    pub fn body(&self) -> Value {
        let mut body = json!({ "kind": self.kind, "message": self.message });
        if let Some(data) = &self.data {
            body["data"] = data.clone();
        }
        if let Some(id) = &self.request_id {
            body["request_id"] = json!(id);
        }
        body
    }
}

impl IntoResponse for PublicError {
    fn into_response(self) -> Response {
        let mut response =
            (self.status, axum::Json(json!({ "error": self.body() }))).into_response();
        if self.status == StatusCode::UNAUTHORIZED {
            response.headers_mut().insert(
                axum::http::header::WWW_AUTHENTICATE,
                axum::http::HeaderValue::from_static("Bearer"),
            );
        }
        response
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn infrastructure_errors_give_nothing_of_the_inside_away() {
        let err = Error::Amqp {
            context: "connecting to amqp://guest:***@10.1.2.3:5672/prod".into(),
            source: "connection refused".into(),
        };
        let public = PublicError::from_call(err, "calc", "add");
        assert_eq!(public.status, StatusCode::SERVICE_UNAVAILABLE);
        let body = public.body().to_string();
        assert!(
            !body.contains("10.1.2.3") && !body.contains("amqp") && !body.contains("guest"),
            "{body}"
        );
        let id = public.request_id.as_deref().expect("a request id");
        assert!(body.contains(id), "{body}");

        let python = Error::Remote {
            call: "calc.add".into(),
            kind: kind::REMOTE.into(),
            message: "Traceback (most recent call last):\n  File \"/srv/calc.py\"".into(),
            data: None,
        };
        let body = PublicError::from_call(python, "calc", "add")
            .body()
            .to_string();
        assert!(
            !body.contains("Traceback") && !body.contains("/srv"),
            "{body}"
        );
    }
}
