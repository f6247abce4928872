//! `--metrics`: service `bench_relay`, run beside `calc` in its process: `add` calls
//! `calc.add` through the injected client, so the RPC client series of `/metrics` move too.

use calc::CalcClient;
use farine::prelude::*;

pub const SERVICE: &str = "bench_relay";

#[derive(Default)]
pub struct BenchRelay;

#[farine::service(name = "bench_relay")]
impl BenchRelay {
    #[rpc::method]
    async fn add(&self, calc: CalcClient, a: i64, b: i64) -> farine::Result<i64> {
        calc.add(a, b).await
    }
}
