//! Publish and consume entry points: `#[amqp::publish]` gives a method a [`Publisher`];
//! `#[amqp::consume]` runs a method for every message of a queue.

pub(crate) mod consumer;
mod publisher;

pub use farine_macros::{amqp_consume as consume, amqp_publish as publish};
pub(crate) use publisher::destination as publish_destination;
pub use publisher::Publisher;
