use farine::prelude::*;

#[derive(Default)]
pub struct Shop;

#[farine::service]
impl Shop {
    #[amqp::consume("orders")]
    async fn on_order(&self, order: String) {}
}

fn main() {}
