use farine::prelude::*;

#[derive(Default)]
pub struct Shop;

pub trait Handler {
    async fn on_order(&self, order: String);
}

#[farine::service]
impl Handler for Shop {
    #[amqp::consume]
    async fn on_order(&self, order: String) {}
}

fn main() {}
