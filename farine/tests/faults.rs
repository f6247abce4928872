//! Faults injected for real: the broker stops and starts again under a running service.
//! These disturb the shared broker, so they are `#[ignore]`d in the parallel run and run alone,
//! one at a time, by `.ci/test` (`cargo test -p farine --test faults -- --ignored
//! --test-threads=1`). Each restores the broker before it ends, even when it fails.

mod support;

use farine::prelude::*;
use serde_json::{json, Value};
use std::process::Command;
use std::sync::Mutex;
use std::time::{Duration, Instant};
use support::{config, eventually, Raw};

fn rabbitmqctl(args: &[&str]) {
    let status = Command::new("rabbitmqctl")
        .args(args)
        .status()
        .expect("rabbitmqctl runs (it ships with rabbitmq-server)");
    assert!(status.success(), "rabbitmqctl {args:?} failed");
}

/// Starts the broker's application again when dropped, so a failing test leaves it running.
struct BrokerStopped;

impl BrokerStopped {
    fn stop() -> BrokerStopped {
        rabbitmqctl(&["stop_app"]);
        BrokerStopped
    }
}

impl Drop for BrokerStopped {
    fn drop(&mut self) {
        let _ = Command::new("rabbitmqctl").arg("start_app").status();
        let _ = Command::new("rabbitmqctl").args(["await_startup"]).status();
    }
}

static HEARD: Mutex<Vec<i64>> = Mutex::new(Vec::new());

#[derive(Default)]
struct Sturdy;

#[farine::service(name = "t_fault")]
impl Sturdy {
    #[rpc::method]
    async fn echo(&self, value: Value) -> Value {
        value
    }

    #[rpc::method]
    async fn slow(&self) -> u8 {
        tokio::time::sleep(Duration::from_secs(10)).await;
        1
    }

    #[amqp::consume(exchange = "t_fault.ex", routing_key = "in", queue = "t_fault.in")]
    async fn on_message(&self, body: Value) -> farine::Result<()> {
        HEARD.lock().unwrap().push(body["n"].as_i64().unwrap_or(-1));
        Ok(())
    }

    #[amqp::publish(exchange = "t_fault.ex", routing_key = "in")]
    async fn send(&self, publish: Publisher, n: i64) -> farine::Result<()> {
        publish.send(&json!({ "n": n })).await
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "restarts the broker: run alone by .ci/test"]
async fn the_same_process_heals_after_a_broker_restart() {
    support::require_rabbitmq();
    farine::runtime::init_logging();
    let running = farine::Runtime::new(config("[t_fault]\nheartbeat = 5\n"))
        .only(["t_fault"])
        .start()
        .await
        .expect("service starts");
    let client = farine::Client::connect(&config("[t_fault]\nrpc_timeout = 30s\n"))
        .await
        .unwrap();
    assert_eq!(
        client.call("t_fault", "echo", json!([1])).await.unwrap(),
        json!(1)
    );
    Sturdy.send(1).await.unwrap();
    assert!(
        eventually(Duration::from_secs(10), || HEARD
            .lock()
            .unwrap()
            .contains(&1))
        .await
    );

    // A call in flight when the broker goes away fails at once, not at its 30 s deadline.
    let in_flight = tokio::spawn({
        let client = client.clone();
        async move {
            let started = Instant::now();
            (
                client.call("t_fault", "slow", json!([])).await,
                started.elapsed(),
            )
        }
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(running.is_ready());
    let stopped = BrokerStopped::stop();
    let (result, waited) = in_flight.await.unwrap();
    let err = result.expect_err("the connection was lost");
    assert!(matches!(err, farine::Error::Disconnected { .. }), "{err}");
    assert!(err.to_string().contains("t_fault.slow"), "{err}");
    assert!(
        waited < Duration::from_secs(25),
        "failed after {waited:?}, before its deadline"
    );

    drop(stopped); // start_app, and wait for the broker to be up
    let back = Instant::now();

    // The same service process answers again within seconds.
    let mut answered = None;
    while back.elapsed() < Duration::from_secs(60) {
        match client.call("t_fault", "echo", json!(["again"])).await {
            Ok(value) => {
                answered = Some(value);
                break;
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(250)).await,
        }
    }
    assert_eq!(
        answered,
        Some(json!("again")),
        "no answer within 60 s of the broker's return"
    );
    eprintln!(
        "answered again {:?} after the broker came back",
        back.elapsed()
    );

    // Its consumer is attached again and its publisher publishes again.
    Sturdy
        .send(2)
        .await
        .expect("publishing works after recovery");
    let raw = Raw::connect().await;
    raw.publish("t_fault.ex", "in", br#"{"n": 3}"#).await;
    assert!(
        eventually(Duration::from_secs(20), || {
            let heard = HEARD.lock().unwrap();
            heard.contains(&2) && heard.contains(&3)
        })
        .await
    );

    running.shutdown().await.unwrap();
    let queues = [
        "t_fault__echo",
        "t_fault__echo.dlq",
        "t_fault__slow",
        "t_fault__slow.dlq",
        "t_fault.in",
        "t_fault.in.dlq",
        "t_fault.in.retry.1000ms",
        "t_fault.in.retry.2000ms",
        "t_fault.in.retry.4000ms",
    ];
    raw.delete_queues(&queues).await;
    raw.delete_exchanges(&["t_fault", "t_fault.ex"]).await;
}
