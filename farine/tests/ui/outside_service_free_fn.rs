use farine::prelude::*;

#[amqp::consume(routing_key = "created")]
async fn on_order(order: String) {}

#[amqp::publish(routing_key = "created")]
async fn create(publish: Publisher, order: String) {}

#[rpc::method]
async fn total(order_id: i64) -> i64 {
    order_id
}

#[stream::http]
async fn on_event(event: String) {}

#[execute::method]
async fn reconcile() {}

fn main() {}
