//! `#[stream::http]`: a Server-Sent-Events listener.
//!
//! A method marked `#[stream::http]` is called for every event of an HTTP
//! [`text/event-stream`](https://html.spec.whatwg.org/multipage/server-sent-events.html),
//! one event at a time and in the order the server sent them (so a method that republishes
//! them to RabbitMQ republishes in order).
//!
//! ```no_run
//! use farine::prelude::*;
//! use farine::stream::Event;
//! use serde::Deserialize;
//!
//! #[derive(Deserialize)]
//! pub struct Price {
//!     pub symbol: String,
//!     pub cents: i64,
//! }
//!
//! #[derive(Default)]
//! pub struct Ticker;
//!
//! #[farine::service] // [ticker] endpoint = https://prices.example/v1/stream
//! impl Ticker {
//!     #[stream::http]
//!     async fn on_price(&self, event: Event<Price>) -> farine::Result<()> {
//!         farine::tracing::info!(symbol = %event.data.symbol, cents = event.data.cents, id = ?event.id);
//!         Ok(())
//!     }
//! }
//! ```
//!
//! # The event's data
//!
//! [`Event<T>`](Event)'s `data` is what the server sent in the event's `data:` lines (joined
//! with `\n`), delivered as `T`:
//!
//! - `Event` (that is `Event<String>`): the text exactly as sent, not decoded;
//! - `Event<serde_json::Value>`, `Event<MyStruct>` or any other `T: Deserialize`: the text
//!   decoded as JSON.
//!
//! The rule is "`String` is raw, everything else is JSON"; it is decided by the type itself
//! (a `TypeId` comparison), so no wrapper type or extra trait is needed. Data that does not
//! decode as `T` is logged ("undecodable event data", with the event id) and skipped: the
//! method is not called. For a stream whose events differ in shape, take `Event` and decode
//! per event name with [`Event::json`].
//!
//! # Configuration
//!
//! In the service's section (see [`ListenerSpec::from_settings`]):
//!
//! ```ini
//! [ticker]
//! ; Or in the attribute: #[stream::http(endpoint = "...")].
//! endpoint = https://prices.example/v1/stream
//! ; Any number of request headers, one key each.
//! header.Authorization = Bearer ${PRICES_TOKEN}
//! ; No byte (keep-alives count) for this long: reconnect. 0 disables it. Default 60s.
//! idle_timeout = 60s
//! ; The reconnection delay after a failure, doubling up to retry_max_delay.
//! retry_delay = 1s
//! retry_max_delay = 60s
//! ; Larger events are skipped.
//! max_message_bytes = 16MiB
//! ```
//!
//! # Resilience
//!
//! The listener only ends when the service shuts down. When the stream ends, the connection
//! breaks, the server answers with an error status or a wrong content type, or no byte
//! arrives for `idle_timeout`, it logs a warning with the reason and reconnects, sending
//! `Last-Event-ID` with the id of the last event received, so the server can resume after
//! it (the id is kept in memory only: a restarted service starts where the server starts new
//! clients). A failure to connect at start-up is retried the same way. Header values are never
//! logged, and the endpoint is logged with any password hidden.
//!
//! The wait before reconnecting:
//!
//! - after a connection that had delivered data, the server's `retry:` value, else
//!   `retry_delay`;
//! - after attempts that delivered nothing (refused, error status, closed at once), a
//!   backoff: the larger of `retry:` and `retry_delay` (at least 100ms), doubling with each
//!   failure in a row up to `retry_max_delay`;
//! - plus up to 25% of random jitter, so that the clients of a restarted server do not all
//!   come back at the same instant.
//!
//! One HTTP client (HTTP/1.1, rustls with the system's root certificates) serves every
//! connection of the listener. Each request is a `GET` with `Accept: text/event-stream`,
//! `Cache-Control: no-cache` and the configured headers.
//!
//! # Shutdown
//!
//! Reading stops at once; the event being handled gets `shutdown_grace` to finish and is
//! then cancelled.
//!
//! # What a failing method does
//!
//! SSE has no acknowledgement and no redelivery: an event whose method returns `Err` or
//! panics is logged (with its id) and the stream carries on with the next event.

pub use crate::entry::sse::{
    event_handler, Event, EventHandler, ListenerSpec, DEFAULT_IDLE_TIMEOUT,
};
pub use farine_macros::stream_http as http;
