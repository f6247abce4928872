use farine::prelude::*;

#[derive(Default)]
pub struct Shop;

#[farine::service]
impl Shop {
    #[amqp::consume(routing_key = "created", routing_key = "updated")]
    async fn on_order(&self, order: String) {}
}

fn main() {}
