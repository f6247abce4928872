//! The promise, under every fault at once: 3,000 ledger entries are published while the ledger
//! service is SIGKILLed and restarted and the broker is restarted; every id ends up in
//! `ledger_entries` exactly once with the right total, with no manual step; and the calc
//! service answers again within seconds of the broker's return, from the same process.
//!
//! It restarts the shared broker, so it is `#[ignore]`d in the parallel run and run alone by
//! `.ci/test`; it starts the broker again even when it fails.

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use std::time::{Duration, Instant};

const CALC: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../target/debug/calc");

mod common;

use common::{count, example_ini, spawn, ENTRIES};
use farine_test_support::BrokerStopped;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "restarts the broker: run alone by .ci/test"]
async fn entries_survive_a_killed_service_and_a_restarted_broker() {
    let pool = common::fresh_database().await;

    // calc runs from the `calc` dev-dependency's binary, built by `cargo test --workspace`.
    assert!(
        std::path::Path::new(CALC).exists(),
        "build calc first: cargo build -p calc"
    );
    let mut calc = spawn(CALC);
    let mut ledger = spawn(env!("CARGO_BIN_EXE_ledger"));
    let config = farine::Config::load(example_ini()).unwrap();
    let client = farine::Client::connect(&config).await.unwrap();
    let calc_client = calc::CalcClient::connect(&config).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while client
        .call("ledger", "count", serde_json::json!([]))
        .await
        .is_err()
        || calc_client
            .clone()
            .timeout(Duration::from_secs(1))
            .add(1, 1)
            .await
            .is_err()
    {
        assert!(Instant::now() < deadline, "services did not start");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // The publisher is farine's: it waits for the broker through the outage. A publish whose
    // confirm was lost is sent again (at least once); the idempotent insert absorbs repeats.
    std::env::set_var("FARINE_INI", example_ini());
    let publisher = farine::Publisher::new("ledger", "ledger", "entry");
    let mut restarted_at = None;
    for id in 1..=ENTRIES {
        if id == 1000 {
            kill(Pid::from_raw(ledger.id() as i32), Signal::SIGKILL).unwrap();
            let _ = ledger.wait();
            ledger = spawn(env!("CARGO_BIN_EXE_ledger"));
        }
        if id == 2000 {
            let stopped = BrokerStopped::now();
            tokio::time::sleep(Duration::from_secs(2)).await;
            drop(stopped); // start_app, then await_startup
            restarted_at = Some(Instant::now());
        }
        let entry = serde_json::json!({ "id": id, "amount": id });
        let deadline = Instant::now() + Duration::from_secs(60);
        while let Err(err) = publisher.send(&entry).await {
            assert!(
                Instant::now() < deadline,
                "entry {id} could not be published: {err}"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    // calc, never restarted, answers again.
    let restarted_at = restarted_at.unwrap();
    loop {
        if calc_client
            .clone()
            .timeout(Duration::from_secs(1))
            .add(20, 22)
            .await
            .ok()
            == Some(42)
        {
            break;
        }
        assert!(
            restarted_at.elapsed() < Duration::from_secs(30),
            "calc did not answer after the broker came back"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    eprintln!(
        "calc answered {:?} after the broker came back",
        restarted_at.elapsed()
    );
    assert!(calc.try_wait().unwrap().is_none(), "the same calc process");

    let deadline = Instant::now() + Duration::from_secs(120);
    while count(&pool).await < ENTRIES {
        assert!(
            Instant::now() < deadline,
            "only {} of {ENTRIES} entries arrived",
            count(&pool).await
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let (rows, distinct, total): (i64, i64, i64) = sqlx::query_as(
        "select count(*), count(distinct id), sum(amount)::bigint from ledger_entries",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(
        (rows, distinct, total),
        (ENTRIES, ENTRIES, ENTRIES * (ENTRIES + 1) / 2)
    );

    for child in [&mut ledger, &mut calc] {
        kill(Pid::from_raw(child.id() as i32), Signal::SIGTERM).unwrap();
        let status = child.wait().unwrap();
        assert!(status.success(), "{status:?}");
    }
    for statement in [
        "drop table ledger_entries",
        "drop table _farine_migrations_ledger",
    ] {
        sqlx::query(statement).execute(&pool).await.unwrap();
    }
    let raw = farine_test_support::Raw::connect().await;
    let mut queues = vec![
        "ledger.entries".to_string(),
        "ledger__count".into(),
        "ledger__total".into(),
    ];
    queues.extend(["calc__add", "calc__count", "operations", "results"].map(String::from));
    for queue in queues.clone() {
        queues.push(format!("{queue}.dlq"));
        for ms in [1000, 2000, 4000] {
            queues.push(format!("{queue}.retry.{ms}ms"));
        }
    }
    let queues: Vec<&str> = queues.iter().map(String::as_str).collect();
    raw.delete_queues(&queues).await;
    raw.delete_exchanges(&["ledger", "calc"]).await;
}
