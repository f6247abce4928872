//! The `ledger` service: the idempotent-consumer pattern. Entries `{"id", "amount"}` arrive
//! on exchange `ledger`, routing key `entry`, at least once (a crash before the ack means the
//! broker delivers the entry again); inserting with `on conflict (id) do nothing` in the
//! same transaction that the ack waits for makes a redelivery change nothing, so every id is
//! in `ledger_entries` exactly once.
//!
//! ```sh
//! farine migrate --start ledger && farine --start ledger
//! farine call ledger.count && farine call ledger.total
//! ```

use farine::prelude::*;
use serde::Deserialize;

/// One ledger entry.
#[derive(Debug, Deserialize)]
pub struct Entry {
    pub id: i64,
    pub amount: i64,
}

#[derive(Default)]
pub struct Ledger;

#[farine::service]
impl Ledger {
    /// Records an entry once, however many times it is delivered.
    #[amqp::consume(exchange = "ledger", routing_key = "entry", queue = "ledger.entries")]
    async fn on_entry(&self, tx: &mut Tx, entry: Entry) -> farine::Result<()> {
        sqlx::query(
            "insert into ledger_entries (id, amount) values ($1, $2) on conflict (id) do nothing",
        )
        .bind(entry.id)
        .bind(entry.amount)
        .execute(tx.conn())
        .await?;
        Ok(())
    }

    /// How many entries are recorded.
    #[rpc::method]
    async fn count(&self, mut db: Db) -> farine::Result<i64> {
        let (count,): (i64,) = sqlx::query_as("select count(*) from ledger_entries")
            .fetch_one(db.conn())
            .await?;
        Ok(count)
    }

    /// The sum of all recorded amounts.
    #[rpc::method]
    async fn total(&self, mut db: Db) -> farine::Result<i64> {
        let (total,): (i64,) =
            sqlx::query_as("select coalesce(sum(amount), 0)::bigint from ledger_entries")
                .fetch_one(db.conn())
                .await?;
        Ok(total)
    }
}
