use farine::prelude::*;

#[derive(Default)]
pub struct Shop;

#[farine::service]
impl Shop {
    #[amqp::consume]
    async fn on_order<T: serde::de::DeserializeOwned>(&self, order: T) {}
}

fn main() {}
