use farine::prelude::*;

#[derive(Default)]
pub struct Shop;

#[farine::service]
impl Shop {
    #[rpc::method]
    fn total(&self, order_id: i64) -> i64 {
        order_id
    }
}

fn main() {}
