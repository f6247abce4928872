//! The farine side of the events workload: service `bench_events`, whose consumer counts
//! each message it receives (farine acks it when the handler returns `Ok`), and the
//! publisher the bench process sends through.

use crate::counter;
use farine::prelude::*;
use serde::{Deserialize, Serialize};

/// Exchange of the service (its name) and the routing key = queue of its consumer.
pub const EXCHANGE: &str = "bench_events";
pub const QUEUE: &str = "bench_events_farine";

/// `{"n": i}`.
#[derive(Debug, Deserialize, Serialize)]
pub struct Event {
    pub n: u64,
}

#[derive(Default)]
pub struct BenchEvents;

#[farine::service(name = "bench_events")]
impl BenchEvents {
    /// Counts every event; farine acks it after this returns.
    #[amqp::consume(exchange = "bench_events", routing_key = "bench_events_farine")]
    async fn on_event(&self, event: Event) -> farine::Result<()> {
        std::hint::black_box(event.n);
        counter::hit();
        Ok(())
    }
}

/// What the bench process publishes with: a farine `Publisher` of service `bench_events`
/// (confirmed and mandatory, as farine publishes by default).
pub fn publisher() -> farine::Publisher {
    farine::Publisher::new("bench_events", EXCHANGE, QUEUE)
}
