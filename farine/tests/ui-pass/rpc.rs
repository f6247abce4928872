//! RPC methods: an async one and a streaming one.
use farine::prelude::*;

#[derive(Default)]
pub struct Calc;

#[farine::service]
impl Calc {
    #[rpc::method]
    pub async fn add(&self, a: i64, b: i64) -> Result<i64, String> {
        a.checked_add(b).ok_or_else(|| "overflow".to_string())
    }

    #[rpc::method(concurrency = 4)]
    pub fn countdown(&self, from: u32) -> impl Stream<Item = u32> + Send + 'static {
        futures::stream::iter((0..=from).rev())
    }
}

fn main() {
    let _ = (Calc::add, Calc::countdown);
}
