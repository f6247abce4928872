use farine::prelude::*;

#[derive(Default)]
pub struct Todo;

#[farine::service]
impl Todo {
    #[amqp::consume]
    async fn on_todo(&self, shutdown: Shutdown, title: String) {
        let _ = (shutdown, title);
    }
}

fn main() {}
