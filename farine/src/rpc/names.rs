//! The names of the RPC protocol (docs/PROTOCOL.md): a method's queue, the reply queues a
//! service answers into, and the cancel of a stream.

/// The queue of `service.method`.
pub fn queue_name(service: &str, method: &str) -> String {
    format!("{service}__{method}")
}

/// A caller's request to stop a stream: both the call's correlation id and its `reply_to`
/// must match (a direct reply-to name cannot be guessed, so neither can such a cancel).
#[derive(serde::Serialize, serde::Deserialize)]
pub(crate) struct Cancel {
    pub correlation_id: String,
    #[serde(default)]
    pub reply_to: String,
}

/// A caller's grant of `items` more items of a stream (both ids must match, as for a cancel).
#[derive(serde::Serialize, serde::Deserialize)]
pub(crate) struct Credit {
    pub correlation_id: String,
    pub reply_to: String,
    pub items: u64,
}

/// The request header carrying a stream's first credit, in items: a server that sees it sends
/// no more items than the caller granted (an extension; without it, as Python callers do,
/// the server's own bound applies).
pub(crate) const CREDIT_HEADER: &str = "x-farine-credit";

/// Whether `name` is a reply queue a service may answer into: RabbitMQ's direct reply-to,
/// a farine client's `farine.reply.<32 hex>`, or Python farine's `uuid4().hex`. Anything else
/// (an entry point's queue, any other queue) is refused: a caller does not choose where a
/// service publishes.
pub(crate) fn is_reply_queue(name: &str) -> bool {
    let hex32 = |s: &str| s.len() == 32 && s.bytes().all(|b| b.is_ascii_hexdigit());
    name == "amq.rabbitmq.reply-to"
        || name.starts_with("amq.rabbitmq.reply-to.")
        || hex32(name.strip_prefix(REPLY_QUEUE_PREFIX).unwrap_or(name))
}

/// The prefix of a farine client's reply queue, followed by 32 hex digits.
pub(crate) const REPLY_QUEUE_PREFIX: &str = "farine.reply.";

/// Routing key on the service exchange where callers ask to stop a stream (an extension:
/// Python farine servers never bind it, so the request is simply dropped).
pub(crate) fn cancel_key(service: &str) -> String {
    format!("{service}.__cancel__")
}

/// Routing key on the service exchange where callers grant stream credit (its own key, so a
/// server that does not know credits never takes one for a cancel).
pub(crate) fn credit_key(service: &str) -> String {
    format!("{service}.__credit__")
}
