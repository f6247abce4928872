use farine::prelude::*;

#[derive(Default)]
pub struct Shop;

pub struct Order {
    pub id: i64,
}

#[farine::service]
impl Shop {
    #[amqp::consume]
    async fn on_order(&self, order: Order) {
        let _ = order.id;
    }
}

fn main() {}
