//! The rpc_db workload's service: `bench_db.select_one` runs `SELECT 1` on its per-call
//! database connection (a `Db` from the service's pool).

use farine::prelude::*;

#[derive(Default)]
pub struct BenchDb;

#[farine::service(name = "bench_db")]
impl BenchDb {
    #[rpc::method]
    async fn select_one(&self, mut db: Db) -> farine::Result<i32> {
        let (one,): (i32,) = sqlx::query_as("select 1").fetch_one(db.conn()).await?;
        Ok(one)
    }
}
