use farine::prelude::*;

#[derive(Default)]
pub struct Shop;

use std::rc::Rc;

#[farine::service]
impl Shop {
    #[amqp::consume]
    async fn on_order(&self, order: String) {
        let shared = Rc::new(order);
        tokio::task::yield_now().await;
        drop(shared);
    }
}

fn main() {}
