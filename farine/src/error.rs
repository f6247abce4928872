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
    /// The broker could not be reached or refused an operation.
    #[error("AMQP {context}: {source}")]
    Amqp {
        context: String,
        #[source]
        source: lapin::Error,
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
    /// The runtime is not in a state to do what was asked.
    #[error("{0}")]
    Runtime(String),
}

impl Error {
    pub(crate) fn amqp(context: impl Into<String>) -> impl FnOnce(lapin::Error) -> Error {
        let context = context.into();
        move |source| Error::Amqp { context, source }
    }

    pub(crate) fn json(context: impl Into<String>) -> impl FnOnce(serde_json::Error) -> Error {
        let context = context.into();
        move |source| Error::Json { context, source }
    }
}
