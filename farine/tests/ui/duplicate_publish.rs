use farine::prelude::*;

#[derive(Default)]
pub struct Shop;

#[farine::service]
impl Shop {
    #[amqp::publish(routing_key = "created")]
    #[amqp::publish(routing_key = "updated")]
    async fn create(&self, publish: Publisher, order: String) {}
}

fn main() {}
