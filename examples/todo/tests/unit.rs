//! todo tested in process with `farine::testing`: messaging on an in-process broker (no
//! RabbitMQ needed), the rows in the test PostgreSQL. Every method needs the database, so
//! each test creates a schema of its own with the crate's migration in it and points
//! `db_url` at it (`search_path`), so tests run in parallel and leave no table behind.

use farine::prelude::*;
use farine::testing::{Captured, Handling, TestKit};
use farine_test_support::{sql, Schema};
use serde_json::json;
use std::time::Duration;
use todo::{Todo, TodoServiceClient};

const WAIT: Duration = Duration::from_secs(5);

/// A schema of its own holding the tables the crate's migration creates.
async fn schema(test: &str) -> Schema {
    let name = format!("t_unit_todo_{test}_{}", std::process::id());
    Schema::new(name, include_str!("../migrations/20261122000001_todos.sql")).await
}

async fn rows(schema: &Schema) -> Vec<(i64, String, bool)> {
    sqlx::query_as(sql(format!(
        "select id, title, done from {}.todos order by id",
        schema.name
    )))
    .fetch_all(&schema.pool)
    .await
    .unwrap()
}

/// todo on a memory broker of its own, its database in `schema`, and a capture of its
/// broadcasts (`todo.events` is a fanout exchange: the routing key does not matter).
async fn todo_on(schema: &Schema) -> (TestKit, TodoServiceClient, Captured) {
    let kit = TestKit::memory()
        .service("todo")
        .set("todo", "db_connector", "postgres")
        .set("todo", "db_url", &schema.db_url())
        .set("todo", "db_max_conn", "2")
        .start()
        .await
        .expect("todo starts on the memory broker");
    let client = TodoServiceClient::connect(kit.config()).await.unwrap();
    let events = kit.capture("todo.events", "").await.unwrap();
    (kit, client, events)
}

#[tokio::test]
async fn add_done_and_list_store_rows_and_broadcast_each_change() {
    let schema = schema("add_done_list").await;
    let (kit, client, events) = todo_on(&schema).await;

    let flour = client.add("buy flour".into()).await.unwrap();
    assert_eq!(flour, 1, "the first id of a fresh table");
    assert_eq!(rows(&schema).await, [(1, "buy flour".to_string(), false)]);
    assert_eq!(
        events.next(WAIT).await,
        Some(json!({"op": "add", "todo": {"id": 1, "title": "buy flour", "done": false}}))
    );

    let bread = client.add("bake bread".into()).await.unwrap();
    assert_eq!(bread, 2);
    assert_eq!(
        events.next(WAIT).await,
        Some(json!({"op": "add", "todo": {"id": 2, "title": "bake bread", "done": false}}))
    );

    assert!(client.done(flour).await.unwrap());
    assert_eq!(
        events.next(WAIT).await,
        Some(json!({"op": "done", "todo": {"id": 1, "title": "buy flour", "done": true}}))
    );
    assert!(!client.done(99).await.unwrap(), "no such todo");

    let listed: Vec<Todo> = client
        .list()
        .await
        .unwrap()
        .map(|todo| todo.unwrap())
        .collect()
        .await;
    assert_eq!(
        listed,
        [
            Todo {
                id: 1,
                title: "buy flour".into(),
                done: true
            },
            Todo {
                id: 2,
                title: "bake bread".into(),
                done: false
            },
        ]
    );
    assert_eq!(
        rows(&schema).await,
        [
            (1, "buy flour".to_string(), true),
            (2, "bake bread".to_string(), false)
        ]
    );
    // done(99) found nothing and list changes nothing: neither broadcast.
    assert_eq!(events.next(Duration::from_millis(300)).await, None);

    kit.stop().await.unwrap();
    schema.drop().await;
}

#[tokio::test]
async fn a_call_whose_commit_fails_broadcasts_nothing() {
    let schema = schema("commit_fails").await;
    // Checked at commit, after add has inserted its row and sent its broadcast.
    schema
        .execute(
            "alter table todos add constraint one_per_title unique (title) \
             deferrable initially deferred",
        )
        .await;
    let (kit, client, events) = todo_on(&schema).await;
    let calls = kit.handled("todo.add");

    assert_eq!(client.add("buy flour".into()).await.unwrap(), 1);
    assert_eq!(calls.wait(WAIT).await.unwrap(), Handling::Done);
    assert_eq!(events.next(WAIT).await.unwrap()["todo"]["id"], json!(1));

    let err = client.add("buy flour".into()).await.unwrap_err();
    let outcome = calls.wait(WAIT).await.unwrap();
    assert!(
        matches!(&outcome, Handling::Failed(reason) if reason.contains("one_per_title")),
        "{outcome:?} ({err})"
    );
    // The failed call's row was rolled back and its broadcast dropped: the next event is the
    // next successful add's.
    assert_eq!(client.add("bake bread".into()).await.unwrap(), 3);
    assert_eq!(
        events.next(WAIT).await,
        Some(json!({"op": "add", "todo": {"id": 3, "title": "bake bread", "done": false}}))
    );
    assert_eq!(events.next(Duration::from_millis(300)).await, None);
    assert_eq!(
        rows(&schema).await,
        [
            (1, "buy flour".to_string(), false),
            (3, "bake bread".to_string(), false)
        ]
    );

    kit.stop().await.unwrap();
    schema.drop().await;
}
