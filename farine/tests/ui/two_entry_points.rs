use farine::prelude::*;

#[derive(Default)]
pub struct Shop;

#[farine::service]
impl Shop {
    #[amqp::consume(routing_key = "created")]
    #[rpc::method]
    async fn on_order(&self, order: String) {}
}

fn main() {}
