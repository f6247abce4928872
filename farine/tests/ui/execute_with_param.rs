use farine::prelude::*;

#[derive(Default)]
pub struct Shop;

#[farine::service]
impl Shop {
    #[execute::method]
    async fn reconcile(&self, batch: u32) {}
}

fn main() {}
