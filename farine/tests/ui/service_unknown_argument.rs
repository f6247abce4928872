use farine::prelude::*;

#[derive(Default)]
pub struct Shop;

#[farine::service(nmae = "shop")]
impl Shop {
    #[amqp::consume]
    async fn on_order(&self, order: String) {}
}

fn main() {}
