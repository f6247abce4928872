use farine::prelude::*;

#[derive(Default)]
pub struct Shop;

#[farine::service]
impl Shop {
    #[amqp::publish(routing_key = "created")]
    async fn create(&self, publish: Publisher, audit: Publisher, order: String) {}
}

fn main() {}
