use farine::prelude::*;

#[derive(Default)]
pub struct Shop;

#[farine::service]
impl Shop {
    #[amqp::consume(exchange = "orders", exchange_type = "broadcast")]
    async fn on_order(&self, order: String) {}
}

fn main() {}
