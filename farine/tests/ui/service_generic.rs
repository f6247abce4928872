use farine::prelude::*;

#[derive(Default)]
pub struct Shop<T>(T);

#[farine::service]
impl<T: Default + Send + Sync + 'static> Shop<T> {
    #[amqp::consume]
    async fn on_order(&self, order: String) {}
}

fn main() {}
