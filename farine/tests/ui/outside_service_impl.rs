use farine::prelude::*;

#[derive(Default)]
pub struct Shop;

impl Shop {
    #[amqp::consume(routing_key = "created")]
    async fn on_order(&self, order: String) {}

    #[amqp::publish(routing_key = "created")]
    async fn create(&self, publish: Publisher, order: String) {}

    #[rpc::method]
    async fn total(&self, order_id: i64) -> i64 {
        order_id
    }

    #[stream::http]
    async fn on_event(&self, event: String) {}

    #[execute::method]
    async fn reconcile(&self) {}
}

fn main() {}
