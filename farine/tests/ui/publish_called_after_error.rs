//! A service that calls its own publisher and has an attribute error elsewhere: only that
//! error, not a second one about the `Publisher` the caller does not pass.
use farine::prelude::*;

#[derive(Default)]
pub struct Calc;

#[farine::service]
impl Calc {
    #[amqp::consume(routing_key = "operations", concurrency = 0)]
    async fn on_operation(&self, sum: i64) -> farine::Result<()> {
        self.publish_sum(sum).await
    }

    #[amqp::publish(routing_key = "results")]
    pub async fn publish_sum(&self, publish: Publisher, sum: i64) -> farine::Result<()> {
        publish.send(&sum).await
    }
}

fn main() {}
