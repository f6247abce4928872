//! Per-call PostgreSQL against the real database and broker: commit on Ok, rollback on Err and
//! panic, no success for a failed commit, connections held by streams, pool exhaustion,
//! broadcasts only on success.

mod support;

use farine::prelude::*;
use serde_json::{json, Value};
use std::time::Duration;
use support::{config, pg, Raw, PG_URL};

fn db_config(service: &str, extra: &str) -> farine::Config {
    config(&format!(
        "[{service}]\ndb_connector = postgres\ndb_url = {PG_URL}\nrpc_timeout = 10s\n{extra}\n"
    ))
}

async fn count(pool: &sqlx::PgPool, table: &str) -> i64 {
    let (n,): (i64,) = sqlx::query_as(sqlx::AssertSqlSafe(format!("select count(*) from {table}")))
        .fetch_one(pool)
        .await
        .unwrap();
    n
}

// ---------------------------------------------------------------- transactions in RPC

#[derive(Default)]
struct Ledger;

#[farine::service(name = "t_db_tx")]
impl Ledger {
    #[rpc::method]
    async fn insert(&self, tx: &mut Tx, name: String) -> farine::Result<i64> {
        let (id,): (i32,) =
            sqlx::query_as("insert into t_db_tx_items (name) values ($1) returning id")
                .bind(name)
                .fetch_one(tx.conn())
                .await?;
        Ok(i64::from(id))
    }

    #[rpc::method]
    async fn insert_then_fail(&self, tx: &mut Tx, name: String) -> farine::Result<i64> {
        sqlx::query("insert into t_db_tx_items (name) values ($1)")
            .bind(name)
            .execute(tx.conn())
            .await?;
        Err(farine::Error::Runtime("changed my mind".into()))
    }

    #[rpc::method]
    async fn insert_then_panic(&self, tx: &mut Tx, name: String) -> farine::Result<i64> {
        sqlx::query("insert into t_db_tx_items (name) values ($1)")
            .bind(name)
            .execute(tx.conn())
            .await?;
        panic!("crash after the insert")
    }

    /// The deferred unique constraint only fails at commit.
    #[rpc::method]
    async fn insert_failing_commit(&self, tx: &mut Tx, name: String) -> farine::Result<bool> {
        for _ in 0..2 {
            sqlx::query("insert into t_db_tx_deferred (name) values ($1)")
                .bind(&name)
                .execute(tx.conn())
                .await?;
        }
        Ok(true)
    }

    #[rpc::method]
    async fn names(&self, mut db: Db) -> farine::Result<Vec<String>> {
        let rows: Vec<(String,)> = sqlx::query_as("select name from t_db_tx_items order by id")
            .fetch_all(db.conn())
            .await?;
        Ok(rows.into_iter().map(|(n,)| n).collect())
    }

    #[rpc::method]
    fn stream_names(
        &self,
        mut db: Db,
    ) -> impl Stream<Item = farine::Result<String>> + Send + 'static {
        async_stream::stream! {
            let mut rows = sqlx::query_as::<_, (String,)>("select name from t_db_tx_items order by id").fetch(db.conn());
            while let Some(row) = rows.next().await {
                yield row.map(|(name,)| name).map_err(farine::Error::from);
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    }

    #[rpc::method(broadcast = "t_db_tx.events")]
    async fn announce(
        &self,
        tx: &mut Tx,
        events: Broadcast,
        name: String,
        fail: bool,
    ) -> farine::Result<i64> {
        let (id,): (i32,) =
            sqlx::query_as("insert into t_db_tx_items (name) values ($1) returning id")
                .bind(&name)
                .fetch_one(tx.conn())
                .await?;
        events.send(&json!({ "op": "add", "name": name }))?;
        if fail {
            return Err(farine::Error::Runtime("refused".into()));
        }
        Ok(i64::from(id))
    }

    #[rpc::method(broadcast = "t_db_tx.events")]
    async fn echo(&self, value: Value) -> Value {
        value
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transactions_commit_on_ok_and_roll_back_on_err_panic_and_failed_commit() {
    let pool = pg().await;
    for statement in [
        "drop table if exists t_db_tx_items",
        "drop table if exists t_db_tx_deferred",
        "create table t_db_tx_items (id serial primary key, name text not null)",
        "create table t_db_tx_deferred (name text, constraint t_db_tx_deferred_u unique (name) deferrable initially deferred)",
    ] {
        sqlx::query(statement).execute(&pool).await.unwrap();
    }
    let raw = Raw::connect().await;
    let running = farine::Runtime::new(db_config("t_db_tx", "db_max_conn = 1\ndb_timeout = 300ms"))
        .only(["t_db_tx"])
        .start()
        .await
        .expect("service starts with its pool");
    raw.bound_queue("t_db_tx.events.test", "t_db_tx.events", "")
        .await;
    let client = LedgerClient::connect(&config("[t_db_tx]\nrpc_timeout = 10s\n"))
        .await
        .unwrap();

    assert_eq!(client.insert("flour".into()).await.unwrap(), 1);
    assert_eq!(count(&pool, "t_db_tx_items").await, 1);

    let err = client.insert_then_fail("sugar".into()).await.unwrap_err();
    assert!(err.to_string().contains("changed my mind"), "{err}");
    let err = client.insert_then_panic("salt".into()).await.unwrap_err();
    assert!(err.to_string().contains("crash after the insert"), "{err}");
    let err = client
        .insert_failing_commit("yeast".into())
        .await
        .unwrap_err();
    assert!(err.to_string().contains("did not commit"), "{err}");
    assert_eq!(count(&pool, "t_db_tx_deferred").await, 0);
    // Only the committed row exists; the pool's one connection is still usable (no leak).
    assert_eq!(client.names().await.unwrap(), vec!["flour".to_string()]);

    // A stream holds its connection until it ends: with db_max_conn = 1, another call waits
    // db_timeout and fails naming the pool; once the stream is dropped, calls work again.
    client.insert("water".into()).await.unwrap();
    let mut names = client.stream_names().await.unwrap();
    assert_eq!(names.next().await.unwrap().unwrap(), "flour");
    let err = client.names().await.unwrap_err();
    let text = err.to_string();
    assert!(
        text.contains("no free connection in the pool") && text.contains("db_max_conn = 1"),
        "{text}"
    );
    assert_eq!(names.next().await.unwrap().unwrap(), "water");
    drop(names);
    let mut free = false;
    for _ in 0..50 {
        if client.names().await.is_ok() {
            free = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(free, "the stream's connection went back to the pool");

    // Broadcast: only a successful call publishes, after its commit; a method without a
    // Broadcast parameter publishes its result.
    client.announce("eggs".into(), false).await.unwrap();
    let event = raw
        .get("t_db_tx.events.test", Duration::from_secs(10))
        .await
        .expect("event");
    assert_eq!(
        serde_json::from_slice::<Value>(&event.delivery.data).unwrap(),
        json!({"op": "add", "name": "eggs"})
    );
    client.announce("milk".into(), true).await.unwrap_err();
    client.echo(json!({"hello": 1})).await.unwrap();
    let event = raw
        .get("t_db_tx.events.test", Duration::from_secs(10))
        .await
        .expect("event");
    assert_eq!(
        serde_json::from_slice::<Value>(&event.delivery.data).unwrap(),
        json!({"hello": 1})
    );
    assert_eq!(
        raw.ready("t_db_tx.events.test").await,
        0,
        "the failed call broadcast nothing"
    );
    let (milk,): (i64,) = sqlx::query_as("select count(*) from t_db_tx_items where name = 'milk'")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(milk, 0);

    running.shutdown().await.unwrap();
    let methods = [
        "insert",
        "insert_then_fail",
        "insert_then_panic",
        "insert_failing_commit",
        "names",
        "stream_names",
        "announce",
        "echo",
    ];
    let queues: Vec<String> = methods
        .iter()
        .flat_map(|m| [format!("t_db_tx__{m}"), format!("t_db_tx__{m}.dlq")])
        .chain(["t_db_tx.events.test".to_string()])
        .collect();
    raw.delete_queues(&queues.iter().map(String::as_str).collect::<Vec<_>>())
        .await;
    raw.delete_exchanges(&["t_db_tx", "t_db_tx.events"]).await;
    sqlx::query("drop table t_db_tx_items")
        .execute(&pool)
        .await
        .unwrap();
    sqlx::query("drop table t_db_tx_deferred")
        .execute(&pool)
        .await
        .unwrap();
}

// ---------------------------------------------------------------- consumers with a transaction

#[derive(Default)]
struct Deposits;

#[derive(serde::Deserialize)]
struct Deposit {
    id: i64,
    fail: bool,
}

#[farine::service(name = "t_db_consume")]
impl Deposits {
    #[amqp::consume(
        exchange = "t_db_consume.ex",
        routing_key = "deposit",
        queue = "t_db_consume.deposit"
    )]
    async fn on_deposit(&self, tx: &mut Tx, deposit: Deposit) -> farine::Result<()> {
        sqlx::query("insert into t_db_consume_rows (id) values ($1)")
            .bind(deposit.id)
            .execute(tx.conn())
            .await?;
        if deposit.fail {
            return Err(farine::Error::Runtime("rejected".into()));
        }
        Ok(())
    }
}

#[tokio::test]
async fn a_consumer_commits_before_the_ack_and_rolls_back_failures() {
    let pool = pg().await;
    sqlx::query("drop table if exists t_db_consume_rows")
        .execute(&pool)
        .await
        .unwrap();
    sqlx::query("create table t_db_consume_rows (id bigint primary key)")
        .execute(&pool)
        .await
        .unwrap();
    let raw = Raw::connect().await;
    let queue = "t_db_consume.deposit";
    let all = [
        queue,
        "t_db_consume.deposit.dlq",
        "t_db_consume.deposit.retry.50ms",
    ];
    raw.delete_queues(&all).await;
    let running = farine::Runtime::new(db_config(
        "t_db_consume",
        "retry_attempts = 1\nretry_delay = 50ms\nretry_max_delay = 50ms",
    ))
    .only(["t_db_consume"])
    .start()
    .await
    .unwrap();
    raw.publish("t_db_consume.ex", "deposit", br#"{"id": 1, "fail": false}"#)
        .await;
    raw.publish("t_db_consume.ex", "deposit", br#"{"id": 2, "fail": true}"#)
        .await;
    // The same id twice: the second insert violates the key, rolls back, and is dead-lettered.
    raw.publish("t_db_consume.ex", "deposit", br#"{"id": 1, "fail": false}"#)
        .await;
    let first = raw
        .get("t_db_consume.deposit.dlq", Duration::from_secs(10))
        .await
        .expect("dead letter");
    let second = raw
        .get("t_db_consume.deposit.dlq", Duration::from_secs(10))
        .await
        .expect("dead letter");
    let mut reasons: Vec<String> = [first, second]
        .iter()
        .map(|m| support::header(&m.delivery.properties, "x-farine-error").unwrap())
        .collect();
    reasons.sort();
    assert!(
        reasons.iter().any(|r| r.contains("rejected")),
        "{reasons:?}"
    );
    assert!(
        reasons.iter().any(|r| r.contains("duplicate key")),
        "{reasons:?}"
    );
    let ids: Vec<(i64,)> = sqlx::query_as("select id from t_db_consume_rows order by id")
        .fetch_all(&pool)
        .await
        .unwrap();
    assert_eq!(ids, vec![(1,)]);
    running.shutdown().await.unwrap();
    assert_eq!(raw.ready(queue).await, 0);
    raw.delete_queues(&all).await;
    raw.delete_exchanges(&["t_db_consume.ex"]).await;
    sqlx::query("drop table t_db_consume_rows")
        .execute(&pool)
        .await
        .unwrap();
}

// ---------------------------------------------------------------- configuration errors

#[derive(Default)]
struct NoDb;

#[farine::service(name = "t_db_missing")]
impl NoDb {
    #[rpc::method]
    async fn rows(&self, _db: Db) -> i64 {
        0
    }
}

#[tokio::test]
async fn a_method_that_needs_a_database_without_db_connector_stops_the_start() {
    support::require_rabbitmq();
    let err = farine::Runtime::new(config(""))
        .only(["t_db_missing"])
        .start()
        .await
        .err()
        .expect("start fails");
    let text = err.to_string();
    assert!(
        text.contains("[t_db_missing] db_connector") && text.contains("t_db_missing.rows"),
        "{text}"
    );
    let err = farine::Runtime::new(config(
        "[t_db_missing]\ndb_connector = postgres\ndb_host = 127.0.0.1\n",
    ))
    .only(["t_db_missing"])
    .start()
    .await
    .err()
    .expect("start fails");
    assert!(err.to_string().contains("db_user"), "{err}");
    let err = farine::Runtime::new(config(
        "[t_db_missing]\ndb_connector = postgres\ndb_url = postgres://nobody:secret@127.0.0.1:5432/test\ndb_timeout = 1s\n",
    ))
    .only(["t_db_missing"])
    .start()
    .await
    .err()
    .expect("an unknown role cannot connect");
    let text = err.to_string();
    assert!(text.contains("cannot reach the database"), "{text}");
    assert!(!text.contains("secret"), "no password in errors: {text}");
    let raw = Raw::connect().await;
    raw.delete_queues(&["t_db_missing__rows", "t_db_missing__rows.dlq"])
        .await;
    raw.delete_exchanges(&["t_db_missing"]).await;
}

// ---------------------------------------------------------------- streams and the pool

#[derive(Default)]
struct Ticker;

#[farine::service(name = "t_db_share")]
impl Ticker {
    /// Holds its connection for as long as it runs: `count` items, 100 ms apart.
    #[rpc::method]
    fn ticks(
        &self,
        mut db: Db,
        count: u32,
    ) -> impl Stream<Item = farine::Result<i32>> + Send + 'static {
        async_stream::stream! {
            for _ in 0..count {
                let row: Result<(i32,), _> = sqlx::query_as("select 1").fetch_one(db.conn()).await;
                yield row.map(|(n,)| n).map_err(farine::Error::from);
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }

    #[rpc::method]
    async fn one(&self, mut db: Db) -> farine::Result<i32> {
        let (n,): (i32,) = sqlx::query_as("select 1").fetch_one(db.conn()).await?;
        Ok(n)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_leave_part_of_the_pool_to_short_calls() {
    let raw = Raw::connect().await;
    let queues = [
        "t_db_share__ticks",
        "t_db_share__ticks.dlq",
        "t_db_share__one",
        "t_db_share__one.dlq",
    ];
    // Requests a failed earlier run left would start streams that hold the share.
    raw.delete_queues(&queues).await;
    // With db_max_conn = 2, streams get half the pool: one connection.
    let running = farine::Runtime::new(db_config(
        "t_db_share",
        "db_max_conn = 2\ndb_timeout = 1s\nshutdown_grace = 5s",
    ))
    .only(["t_db_share"])
    .start()
    .await
    .expect("service starts with its pool");
    let client = TickerClient::connect(&config("[t_db_share]\nrpc_timeout = 10s\n"))
        .await
        .unwrap();

    let mut first = client.ticks(1000).await.unwrap();
    assert_eq!(first.next().await.unwrap().unwrap(), 1);
    // The second stream waits for the first one's share; meanwhile short calls are served
    // (before db_stream_share, the second stream took the last connection and they failed).
    let mut second = client.ticks(1000).await.unwrap();
    // (The task keeps the stream: dropping it would cancel the call and free its connection.)
    let waiting = tokio::spawn(async move { (second.next().await, second) });
    // Time for the second stream to take a connection if it could.
    tokio::time::sleep(Duration::from_millis(300)).await;
    for _ in 0..3 {
        assert_eq!(client.one().await.unwrap(), 1);
    }
    let err = waiting
        .await
        .unwrap()
        .0
        .expect("an item or an error")
        .unwrap_err();
    let text = err.to_string();
    assert!(
        text.contains("db_stream_share = 1 of db_max_conn = 2") && text.contains("db_timeout"),
        "{text}"
    );
    assert_eq!(first.next().await.unwrap().unwrap(), 1);
    assert_eq!(client.one().await.unwrap(), 1);

    // Once the first stream is dropped, its share goes to the next stream.
    drop(first);
    let mut resumed = false;
    for _ in 0..50 {
        let items: Vec<_> = client.ticks(2).await.unwrap().collect().await;
        if items.iter().all(Result::is_ok) {
            assert_eq!(items.len(), 2);
            resumed = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(resumed, "the dropped stream's share was released");

    running.shutdown().await.unwrap();
    raw.delete_queues(&queues).await;
    raw.delete_exchanges(&["t_db_share"]).await;
}
