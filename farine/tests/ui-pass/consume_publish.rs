//! Consume and publish entry points, including `#[amqp::publish]` on a consume handler.
use farine::prelude::*;
use serde::{Deserialize, Serialize};

#[derive(Debug, Deserialize, Serialize)]
pub struct Order {
    pub id: i64,
}

#[derive(Default)]
pub struct Shop;

#[farine::service]
impl Shop {
    #[amqp::consume(
        exchange = "orders",
        routing_key = "created",
        exchange_type = "topic",
        queue = "shop-orders",
        concurrency = 10
    )]
    async fn on_created(&self, order: Order) -> farine::Result<()> {
        farine::tracing::info!(order = order.id, "new order");
        Ok(())
    }

    /// Defaults: exchange and routing key are the service name; any `Result` or `()` is fine.
    #[amqp::consume]
    async fn on_anything(&self, body: serde_json::Value) {
        let _ = body;
    }

    #[amqp::publish(exchange = "orders", routing_key = "created")]
    pub async fn create(&self, publish: Publisher, order: Order) -> farine::Result<()> {
        publish.send(&order).await
    }

    /// A consume handler that republishes what it hears.
    #[amqp::consume(exchange = "orders", routing_key = "imported")]
    #[amqp::publish(exchange = "orders", routing_key = "created")]
    async fn on_imported(&self, publish: Publisher, order: Order) -> Result<(), String> {
        publish.send(&order).await.map_err(|err| err.to_string())
    }
}

async fn caller() -> farine::Result<()> {
    // The publisher is supplied by farine: callers pass only the message.
    Shop.create(Order { id: 7 }).await
}

fn main() {
    let _ = caller;
}
