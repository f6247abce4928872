use farine::prelude::*;

#[derive(Default)]
pub struct Shop;

#[farine::service]
impl Shop {
    #[amqp::consume(exchange, routing_key = "created")]
    async fn on_order(&self, order: String) {}
}

fn main() {}
