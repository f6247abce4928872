//! The one error type of farine: every variant names what it concerns (file, section, key,
//! queue, exchange, service, method) so the message alone says what went wrong and where.

use std::path::PathBuf;

/// `Result` with [`Error`] as its error type.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong in farine's own machinery.
///
/// ```
/// let err = farine::Error::Config {
///     file: "/etc/farine.ini".into(),
///     section: "calc".into(),
///     key: "concurrency".into(),
///     message: "expected a whole number from 1 to 65535, got \"lots\"".into(),
/// };
/// assert_eq!(
///     err.to_string(),
///     "/etc/farine.ini [calc] concurrency: expected a whole number from 1 to 65535, got \"lots\""
/// );
/// ```
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A configuration value is missing or has the wrong type.
    #[error("{} [{section}] {key}: {message}", file.display())]
    Config {
        file: PathBuf,
        section: String,
        key: String,
        message: String,
    },
    /// The configuration file could not be read or parsed.
    #[error("{}: {message}", file.display())]
    ConfigFile { file: PathBuf, message: String },
    /// The broker could not be reached or refused an operation (the transport's own error
    /// is the source).
    #[error("AMQP {context}: {source}")]
    Amqp {
        context: String,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// The broker negatively acknowledged a published message.
    #[error("the broker refused (nack) the message published to exchange {exchange:?} with routing key {routing_key:?}")]
    Nacked {
        exchange: String,
        routing_key: String,
    },
    /// A mandatory message had no queue bound for it.
    #[error("no queue is bound to exchange {exchange:?} for routing key {routing_key:?}: the message was returned unroutable")]
    Unroutable {
        exchange: String,
        routing_key: String,
    },
    /// A value could not be turned into JSON or back.
    #[error("JSON {context}: {source}")]
    Json {
        context: String,
        #[source]
        source: serde_json::Error,
    },
    /// No service of that name is running: its exchange does not exist.
    #[error(
        "no service {service:?}: its exchange {service:?} does not exist (is the service started?)"
    )]
    UnknownService { service: String },
    /// The service exchange exists but nothing consumes the method's queue binding.
    #[error("{service}.{method}: no such method (no queue is bound to exchange {service:?} for routing key \"{service}__{method}\")")]
    UnknownMethod { service: String, method: String },
    /// The call got no reply (or, for a stream, no next item) in time.
    #[error("{call}: no reply within {}", humantime::format_duration(*after))]
    Timeout {
        call: String,
        after: std::time::Duration,
    },
    /// The connection to the broker was lost while the call was waiting for its reply.
    #[error("{call}: the connection to the broker was lost while waiting for the reply")]
    Disconnected { call: String },
    /// The remote method failed; `kind` is one of [`crate::rpc::frame::kind`], `data` the
    /// service's own error value when it is serializable.
    #[error("{call} failed ({kind}): {message}")]
    Remote {
        call: String,
        kind: String,
        message: String,
        data: Option<serde_json::Value>,
    },
    /// A service's database could not be reached or used.
    #[error("service {service}: {message}")]
    Database { service: String, message: String },
    /// A query failed.
    #[error("database: {0}")]
    Sql(#[from] sqlx::Error),
    /// The runtime is not in a state to do what was asked.
    #[error("{0}")]
    Runtime(String),
}

impl Error {
    /// The remote service's own error, rebuilt as `E` (the type its method returned), when
    /// this is a service error that carried its value.
    ///
    /// ```
    /// #[derive(serde::Deserialize, Debug, PartialEq)]
    /// enum TodoError { NotFound(i64) }
    ///
    /// let err = farine::Error::Remote {
    ///     call: "todo.done".into(),
    ///     kind: "service".into(),
    ///     message: "no todo 3".into(),
    ///     data: Some(serde_json::json!({"NotFound": 3})),
    /// };
    /// assert_eq!(err.service_error::<TodoError>(), Some(TodoError::NotFound(3)));
    /// ```
    pub fn service_error<E: serde::de::DeserializeOwned>(&self) -> Option<E> {
        match self {
            Error::Remote {
                kind,
                data: Some(data),
                ..
            } if kind == crate::rpc::frame::kind::SERVICE => {
                serde_json::from_value(data.clone()).ok()
            }
            _ => None,
        }
    }

    /// The error kind of a remote failure (`"bad_arguments"`, `"service"`, ...).
    pub fn remote_kind(&self) -> Option<&str> {
        match self {
            Error::Remote { kind, .. } => Some(kind),
            _ => None,
        }
    }

    pub(crate) fn amqp<E: std::error::Error + Send + Sync + 'static>(
        context: impl Into<String>,
    ) -> impl FnOnce(E) -> Error {
        let context = context.into();
        move |source| Error::Amqp {
            context,
            source: Box::new(source),
        }
    }

    pub(crate) fn json(context: impl Into<String>) -> impl FnOnce(serde_json::Error) -> Error {
        let context = context.into();
        move |source| Error::Json { context, source }
    }
}
