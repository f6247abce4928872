use farine::prelude::*;

#[derive(Default)]
pub struct Todo;

#[farine::service]
impl Todo {
    #[rpc::method]
    fn list(&self, tx: &mut Tx) -> impl Stream<Item = i64> + Send + 'static {
        let _ = tx;
        futures::stream::iter(0..3)
    }
}

fn main() {}
