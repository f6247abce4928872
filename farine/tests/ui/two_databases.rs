use farine::prelude::*;

#[derive(Default)]
pub struct Todo;

#[farine::service]
impl Todo {
    #[rpc::method]
    async fn add(&self, db: Db, tx: &mut Tx) -> farine::Result<()> {
        let _ = (db, tx);
        Ok(())
    }
}

fn main() {}
