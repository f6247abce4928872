//! Crash safety: the ledger service is SIGKILLed in the middle of a batch and started again;
//! every entry ends up in `ledger_entries` exactly once (at-least-once delivery plus an
//! idempotent insert), with no manual step.

use lapin::options::*;
use lapin::{BasicProperties, Connection, ConnectionProperties};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use std::time::{Duration, Instant};

mod common;

use common::{count, example_ini, spawn, ENTRIES};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_mid_batch_loses_nothing_and_duplicates_nothing() {
    farine_test_support::require_rabbitmq();
    let pool = common::fresh_database().await;

    let connection = Connection::connect(
        &farine_test_support::amqp_uri(),
        ConnectionProperties::default(),
    )
    .await
    .unwrap();
    let channel = connection.create_channel().await.unwrap();
    let queues = [
        "ledger.entries",
        "ledger.entries.dlq",
        "ledger.entries.retry.1000ms",
        "ledger.entries.retry.2000ms",
        "ledger.entries.retry.4000ms",
    ];
    for queue in queues {
        let _ = channel
            .queue_delete(queue.into(), QueueDeleteOptions::default())
            .await;
    }

    let mut first = spawn(env!("CARGO_BIN_EXE_ledger"));
    let config = farine::Config::load(example_ini()).unwrap();
    let client = farine::Client::connect(&config).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while client
        .call("ledger", "count", serde_json::json!([]))
        .await
        .is_err()
    {
        assert!(Instant::now() < deadline, "ledger did not start");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // Publish the whole batch with confirms pipelined: the broker holds every entry.
    channel
        .confirm_select(ConfirmSelectOptions::default())
        .await
        .unwrap();
    let mut confirms = Vec::new();
    for id in 1..=ENTRIES {
        let body = format!(r#"{{"id": {id}, "amount": {id}}}"#);
        confirms.push(
            channel
                .basic_publish(
                    "ledger".into(),
                    "entry".into(),
                    BasicPublishOptions {
                        mandatory: true,
                        ..Default::default()
                    },
                    body.as_bytes(),
                    BasicProperties::default().with_delivery_mode(2),
                )
                .await
                .unwrap(),
        );
    }
    for confirm in confirms {
        assert!(confirm.await.unwrap().is_ack());
    }

    // Kill it mid-batch: some entries done, others in flight or still queued.
    let deadline = Instant::now() + Duration::from_secs(60);
    while count(&pool).await < 200 {
        assert!(Instant::now() < deadline, "ledger made no progress");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    kill(Pid::from_raw(first.id() as i32), Signal::SIGKILL).unwrap();
    let _ = first.wait();
    let at_kill = count(&pool).await;
    eprintln!("killed with {at_kill} of {ENTRIES} entries recorded");
    assert!(at_kill < ENTRIES, "the kill came too late to test anything");

    let mut second = spawn(env!("CARGO_BIN_EXE_ledger"));
    let deadline = Instant::now() + Duration::from_secs(120);
    while count(&pool).await < ENTRIES {
        assert!(
            Instant::now() < deadline,
            "not every entry arrived: {} of {ENTRIES}",
            count(&pool).await
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (rows, distinct, total): (i64, i64, i64) = sqlx::query_as(
        "select count(*), count(distinct id), sum(amount)::bigint from ledger_entries",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!((rows, distinct), (ENTRIES, ENTRIES));
    assert_eq!(total, ENTRIES * (ENTRIES + 1) / 2);
    assert_eq!(
        client
            .call("ledger", "count", serde_json::json!([]))
            .await
            .unwrap(),
        serde_json::json!(ENTRIES)
    );
    assert_eq!(
        client
            .call("ledger", "total", serde_json::json!([]))
            .await
            .unwrap(),
        serde_json::json!(total)
    );

    kill(Pid::from_raw(second.id() as i32), Signal::SIGTERM).unwrap();
    let status = second.wait().unwrap();
    assert!(status.success(), "{status:?}");
    for queue in queues.iter().copied().chain([
        "ledger__count",
        "ledger__count.dlq",
        "ledger__total",
        "ledger__total.dlq",
    ]) {
        let _ = channel
            .queue_delete(queue.into(), QueueDeleteOptions::default())
            .await;
    }
    let _ = channel
        .exchange_delete("ledger".into(), ExchangeDeleteOptions::default())
        .await;
    let _ = connection.close(200, "OK".into()).await;
    for statement in [
        "drop table ledger_entries",
        "drop table _farine_migrations_ledger",
    ] {
        sqlx::query(statement).execute(&pool).await.unwrap();
    }
}
