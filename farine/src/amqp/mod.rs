//! Publish and consume entry points: `#[amqp::publish]` gives a method a [`Publisher`];
//! `#[amqp::consume]` runs a method for every message of a queue.

mod publisher;

pub use farine_macros::{amqp_consume as consume, amqp_publish as publish};
pub use publisher::{PublishAttr, PublishSpec, Publisher};
