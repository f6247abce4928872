//! A returned type that is `Serialize` but not `Deserialize`: the typed client cannot decode
//! it. One error, on the return type.
use farine::prelude::*;
use serde::Serialize;

#[derive(Default)]
pub struct Shop;

#[derive(Serialize)]
pub struct Total {
    pub cents: i64,
}

#[farine::service]
impl Shop {
    #[rpc::method]
    async fn total(&self, order: i64) -> farine::Result<Total> {
        Ok(Total { cents: order })
    }
}

fn main() {}
