use farine::prelude::*;

#[derive(Default)]
pub struct Shop;

const ROUTE: &str = "created";

#[farine::service]
impl Shop {
    #[amqp::consume(routing_key = ROUTE)]
    async fn on_order(&self, order: String) {}
}

fn main() {}
