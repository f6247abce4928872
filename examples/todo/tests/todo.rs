//! The todo example end to end: `farine migrate --start todo`, then the service with the
//! repository's farine.ini.example, called over RabbitMQ, its rows in PostgreSQL, its
//! broadcasts on `todo.events`.

use farine_test_support::{amqp_uri, example_ini, pg, require_rabbitmq, wait_exit};
use futures::StreamExt;
use lapin::options::*;
use lapin::types::FieldTable;
use lapin::{Connection, ConnectionProperties};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use serde_json::{json, Value};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};
use todo::{Todo, TodoServiceClient};

/// What `farine migrate --start todo` runs once it has built the crate: the todo binary in
/// migration mode, pointed at the crate's `migrations/` folder. (The CLI's part, finding and
/// building the crate and passing the folder, is tested in farine-cli.)
fn farine_migrate() -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_todo"))
        .env(
            farine::runtime::MIGRATIONS_ENV,
            concat!(env!("CARGO_MANIFEST_DIR"), "/migrations"),
        )
        .env("FARINE_INI", example_ini())
        .output()
        .expect("todo runs")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn todo_migrates_serves_stores_and_broadcasts() {
    require_rabbitmq();
    let pool = pg().await;
    for statement in [
        "drop table if exists todos",
        "drop table if exists _farine_migrations_todo",
    ] {
        sqlx::query(statement).execute(&pool).await.unwrap();
    }

    let migrated = farine_migrate();
    assert!(
        migrated.status.success(),
        "{}",
        String::from_utf8_lossy(&migrated.stderr)
    );
    let again = farine_migrate();
    assert!(
        again.status.success(),
        "migrations are idempotent: {}",
        String::from_utf8_lossy(&again.stderr)
    );

    let mut child = Command::new(env!("CARGO_BIN_EXE_todo"))
        .env("FARINE_INI", example_ini())
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let config = farine::Config::load(example_ini()).unwrap();
    let client = TodoServiceClient::connect(&config).await.unwrap();

    // A queue on the fanout exchange hears every change; it exists once todo declared it.
    let connection = Connection::connect(&amqp_uri(), ConnectionProperties::default())
        .await
        .unwrap();
    let channel = connection.create_channel().await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    let events = loop {
        let probe = connection.create_channel().await.unwrap();
        let declared = probe
            .exchange_declare(
                "todo.events".into(),
                lapin::ExchangeKind::Fanout,
                ExchangeDeclareOptions {
                    passive: true,
                    ..Default::default()
                },
                FieldTable::default(),
            )
            .await;
        if declared.is_ok()
            && client
                .clone()
                .timeout(Duration::from_secs(1))
                .done(-1)
                .await
                .is_ok()
        {
            let queue = channel
                .queue_declare(
                    "".into(),
                    QueueDeclareOptions {
                        exclusive: true,
                        ..Default::default()
                    },
                    FieldTable::default(),
                )
                .await
                .unwrap();
            let name = queue.name().as_str().to_string();
            channel
                .queue_bind(
                    name.as_str().into(),
                    "todo.events".into(),
                    "".into(),
                    QueueBindOptions::default(),
                    FieldTable::default(),
                )
                .await
                .unwrap();
            break name;
        }
        assert!(Instant::now() < deadline, "todo did not become ready");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let next_event = || async {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(message) = channel
                .basic_get(events.as_str().into(), BasicGetOptions { no_ack: true })
                .await
                .unwrap()
            {
                return serde_json::from_slice::<Value>(&message.delivery.data).unwrap();
            }
            assert!(Instant::now() < deadline, "no event");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    };

    let id = client.add("buy flour".into()).await.unwrap();
    let (title, done): (String, bool) =
        sqlx::query_as("select title, done from todos where id = $1")
            .bind(id)
            .fetch_one(&pool)
            .await
            .unwrap();
    assert_eq!((title.as_str(), done), ("buy flour", false));
    assert_eq!(
        next_event().await,
        json!({"op": "add", "todo": {"id": id, "title": "buy flour", "done": false}})
    );

    let second = client.add("bake bread".into()).await.unwrap();
    next_event().await;
    assert!(client.done(id).await.unwrap());
    assert_eq!(
        next_event().await,
        json!({"op": "done", "todo": {"id": id, "title": "buy flour", "done": true}})
    );
    assert!(!client.done(id + 1_000_000).await.unwrap(), "no such todo");

    let listed: Vec<Todo> = client
        .list()
        .await
        .unwrap()
        .map(|t| t.unwrap())
        .collect()
        .await;
    assert_eq!(
        listed,
        vec![
            Todo {
                id,
                title: "buy flour".into(),
                done: true
            },
            Todo {
                id: second,
                title: "bake bread".into(),
                done: false
            },
        ]
    );
    assert!(
        channel
            .basic_get(events.as_str().into(), BasicGetOptions { no_ack: true })
            .await
            .unwrap()
            .is_none(),
        "the call on a missing todo broadcast nothing"
    );

    kill(Pid::from_raw(child.id() as i32), Signal::SIGTERM).unwrap();
    let status = wait_exit(&mut child, Duration::from_secs(15)).expect("todo stops");
    assert!(status.success(), "{status:?}");

    for method in ["add", "done", "list"] {
        for queue in [format!("todo__{method}"), format!("todo__{method}.dlq")] {
            let _ = channel
                .queue_delete(queue.as_str().into(), QueueDeleteOptions::default())
                .await;
        }
    }
    for exchange in ["todo", "todo.events"] {
        let _ = channel
            .exchange_delete(exchange.into(), ExchangeDeleteOptions::default())
            .await;
    }
    let _ = connection.close(200, "OK".into()).await;
    for statement in ["drop table todos", "drop table _farine_migrations_todo"] {
        sqlx::query(statement).execute(&pool).await.unwrap();
    }
}
