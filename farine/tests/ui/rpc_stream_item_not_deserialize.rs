//! A streaming method whose items are `Serialize` but not `Deserialize`: one error, on the
//! return type.
use farine::prelude::*;
use serde::Serialize;

#[derive(Default)]
pub struct Shop;

#[derive(Serialize)]
pub struct Line {
    pub item: String,
}

#[farine::service]
impl Shop {
    #[rpc::method]
    fn lines(&self, order: i64) -> impl Stream<Item = Line> + Send + 'static {
        farine::futures::stream::iter((0..order).map(|n| Line { item: n.to_string() }))
    }
}

fn main() {}
