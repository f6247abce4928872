use farine::prelude::*;

#[derive(Default)]
pub struct Todo;

#[farine::service]
impl Todo {
    #[rpc::method]
    async fn add(&self, tx: Tx, title: String) -> farine::Result<i64> {
        let _ = (tx, title);
        Ok(1)
    }
}

fn main() {}
