use farine::prelude::*;

#[derive(Default)]
pub struct Shop;

#[farine::service]
impl Shop {
    #[amqp::consume]
    async fn on_order(&self, order: String) -> usize {
        order.len()
    }
}

fn main() {}
