use farine::prelude::*;

#[derive(Default)]
pub struct Todo;

#[farine::service]
impl Todo {
    #[rpc::method]
    async fn add(&self, events: Broadcast, title: String) -> farine::Result<()> {
        events.send(&title)
    }
}

fn main() {}
