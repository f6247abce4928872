use farine::prelude::*;

#[derive(Default)]
pub struct Shop;

#[farine::service]
impl Shop {
    #[execute::method(restart_delay = "5 parsecs")]
    async fn reconcile(&self) {}
}

fn main() {}
