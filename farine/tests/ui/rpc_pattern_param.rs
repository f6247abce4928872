use farine::prelude::*;

#[derive(Default)]
pub struct Shop;

#[farine::service]
impl Shop {
    #[rpc::method]
    async fn add(&self, (a, b): (i64, i64)) -> i64 {
        a + b
    }
}

fn main() {}
