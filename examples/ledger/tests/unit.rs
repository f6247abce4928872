//! ledger tested in process with `farine::testing`: messaging on an in-process broker (no
//! RabbitMQ needed), the rows in the test PostgreSQL. Each test creates a schema of its own
//! with the crate's migration in it and points `db_url` at it (`search_path`), so tests run
//! in parallel and leave no table behind.

use farine::broker::Broker;
use farine::testing::{Handling, TestKit};
use farine::transport::Properties;
use farine_test_support::{sql, Schema};
use ledger::LedgerClient;
use serde_json::json;
use std::time::Duration;

const WAIT: Duration = Duration::from_secs(5);

/// A schema of its own holding the tables the crate's migration creates.
async fn schema(test: &str) -> Schema {
    let name = format!("t_unit_ledger_{test}_{}", std::process::id());
    Schema::new(
        name,
        include_str!("../migrations/20261122000001_ledger_entries.sql"),
    )
    .await
}

async fn rows(schema: &Schema) -> Vec<(i64, i64)> {
    sqlx::query_as(sql(format!(
        "select id, amount from {}.ledger_entries order by id",
        schema.name
    )))
    .fetch_all(&schema.pool)
    .await
    .unwrap()
}

/// ledger on a memory broker of its own, its database in `schema`, one retry 10ms after a
/// failure.
async fn ledger_on(schema: &Schema) -> TestKit {
    TestKit::memory()
        .service("ledger")
        .set("ledger", "db_connector", "postgres")
        .set("ledger", "db_url", &schema.db_url())
        .set("ledger", "db_max_conn", "4")
        .set("ledger", "retry_attempts", "1")
        .set("ledger", "retry_delay", "10ms")
        .start()
        .await
        .expect("ledger starts on the memory broker")
}

#[tokio::test]
async fn a_redelivered_entry_changes_nothing() {
    let schema = schema("redelivered").await;
    let kit = ledger_on(&schema).await;
    let client = LedgerClient::connect(kit.config()).await.unwrap();
    let handled = kit.handled("ledger.on_entry");

    // One at a time, so each outcome is that entry's.
    for entry in [
        json!({"id": 1, "amount": 10}),
        json!({"id": 1, "amount": 10}),  // delivered again
        json!({"id": 1, "amount": 999}), // same id, other amount: the first one stays
        json!({"id": 2, "amount": 5}),
    ] {
        kit.publish("ledger", "entry", &entry).await.unwrap();
        assert_eq!(handled.wait(WAIT).await.unwrap(), Handling::Done, "{entry}");
    }
    assert_eq!(rows(&schema).await, [(1, 10), (2, 5)]);
    assert_eq!(client.count().await.unwrap(), 2);
    assert_eq!(client.total().await.unwrap(), 15);
    assert!(kit.dead_letters("ledger.entries").await.unwrap().is_empty());

    kit.stop().await.unwrap();
    schema.drop().await;
}

#[tokio::test]
async fn the_same_entry_delivered_many_times_at_once_is_recorded_once() {
    let schema = schema("at_once").await;
    let kit = ledger_on(&schema).await;
    let handled = kit.handled("ledger.on_entry");

    // Concurrent deliveries (concurrency 10 by default) of three ids, ten times each.
    for _ in 0..10 {
        for id in 1..=3 {
            kit.publish("ledger", "entry", &json!({"id": id, "amount": id * 100}))
                .await
                .unwrap();
        }
    }
    for n in 0..30 {
        assert_eq!(handled.wait(WAIT).await.unwrap(), Handling::Done, "#{n}");
    }
    assert_eq!(rows(&schema).await, [(1, 100), (2, 200), (3, 300)]);

    kit.stop().await.unwrap();
    schema.drop().await;
}

#[tokio::test]
async fn poison_entries_are_dead_lettered_at_once_and_record_nothing() {
    let schema = schema("poison").await;
    let kit = ledger_on(&schema).await;
    let handled = kit.handled("ledger.on_entry");

    // Not JSON at all, published raw on the kit's broker.
    let broker = Broker::shared(&kit.config().service("ledger").unwrap())
        .await
        .unwrap();
    broker
        .publish(
            "ledger",
            "entry",
            b"{\"id\": 1, \"amount\": ",
            Properties::json(),
            true,
        )
        .await
        .unwrap();
    let first = handled.wait(WAIT).await.unwrap();
    assert!(matches!(first, Handling::Poison(_)), "{first:?}");
    // JSON, but not an entry.
    kit.publish("ledger", "entry", &json!({"id": "seven", "amount": 7}))
        .await
        .unwrap();
    let second = handled.wait(WAIT).await.unwrap();
    assert!(matches!(second, Handling::Poison(_)), "{second:?}");

    let parked = kit.dead_letters("ledger.entries").await.unwrap();
    assert_eq!(parked.len(), 2, "{parked:?}");
    assert_eq!(parked[0].body, b"{\"id\": 1, \"amount\": ");
    assert_eq!(
        serde_json::from_slice::<serde_json::Value>(&parked[1].body).unwrap(),
        json!({"id": "seven", "amount": 7})
    );
    for letter in &parked {
        assert_eq!(letter.attempts, 1, "not retried: {letter:?}");
        assert_eq!(letter.original_routing_key.as_deref(), Some("entry"));
    }
    assert!(rows(&schema).await.is_empty());

    kit.stop().await.unwrap();
    schema.drop().await;
}

#[tokio::test]
async fn a_failing_insert_is_retried_then_dead_lettered() {
    let schema = schema("failing").await;
    schema
        .execute("alter table ledger_entries add constraint no_debit check (amount >= 0)")
        .await;
    let kit = ledger_on(&schema).await;
    let handled = kit.handled("ledger.on_entry");

    kit.publish("ledger", "entry", &json!({"id": 1, "amount": -5}))
        .await
        .unwrap();
    for attempt in 1..=2 {
        let outcome = handled.wait(WAIT).await.unwrap();
        assert!(
            matches!(&outcome, Handling::Failed(reason) if reason.contains("no_debit")),
            "attempt {attempt}: {outcome:?}"
        );
    }
    kit.publish("ledger", "entry", &json!({"id": 2, "amount": 5}))
        .await
        .unwrap();
    assert_eq!(handled.wait(WAIT).await.unwrap(), Handling::Done);

    let parked = kit.dead_letters("ledger.entries").await.unwrap();
    assert_eq!(parked.len(), 1, "{parked:?}");
    assert_eq!(parked[0].attempts, 2);
    assert!(
        parked[0]
            .error
            .as_deref()
            .unwrap_or("")
            .contains("no_debit"),
        "{:?}",
        parked[0].error
    );
    assert_eq!(rows(&schema).await, [(2, 5)]);

    kit.stop().await.unwrap();
    schema.drop().await;
}
