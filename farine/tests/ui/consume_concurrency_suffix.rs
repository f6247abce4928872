use farine::prelude::*;

#[derive(Default)]
pub struct Shop;

#[farine::service]
impl Shop {
    #[amqp::consume(concurrency = 10u8)]
    async fn on_order(&self, order: String) {}
}

fn main() {}
