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
use support::{config, eventually, BrokerStopped, Raw};

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
    let stopped = BrokerStopped::now();
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

/// Starts PostgreSQL again when dropped, so a failing test leaves it running.
struct PostgresStopped;

fn pg_ctl(action: &str) {
    let version = std::fs::read_dir("/etc/postgresql")
        .expect("PostgreSQL is installed under /etc/postgresql")
        .filter_map(|entry| entry.ok())
        .map(|entry| entry.file_name().to_string_lossy().into_owned())
        .next()
        .expect("a PostgreSQL cluster");
    let status = Command::new("pg_ctlcluster")
        .args(["--skip-systemctl-redirect", &version, "main", action])
        .status()
        .expect("pg_ctlcluster runs");
    assert!(status.success(), "pg_ctlcluster {action} failed");
}

impl Drop for PostgresStopped {
    fn drop(&mut self) {
        let address = std::net::SocketAddr::from(([127, 0, 0, 1], 5432));
        if std::net::TcpStream::connect_timeout(&address, Duration::from_secs(1)).is_err() {
            pg_ctl("start");
        }
    }
}

#[derive(Default)]
struct Counter;

#[farine::service(name = "t_fault_db")]
impl Counter {
    #[rpc::method]
    async fn one(&self, mut db: Db) -> farine::Result<i32> {
        let (one,): (i32,) = sqlx::query_as("select 1").fetch_one(db.conn()).await?;
        Ok(one)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "stops PostgreSQL: run alone by .ci/test"]
async fn the_service_survives_a_database_restart() {
    support::require_postgres();
    let settings = format!(
        "[t_fault_db]\ndb_connector = postgres\ndb_url = {}\ndb_timeout = 2s\nrpc_timeout = 20s\n",
        support::PG_URL
    );
    let running = farine::Runtime::new(config(&settings))
        .only(["t_fault_db"])
        .start()
        .await
        .expect("service starts");
    let client = farine::Client::connect(&config(&settings)).await.unwrap();
    assert_eq!(
        client.call("t_fault_db", "one", json!([])).await.unwrap(),
        json!(1)
    );

    let guard = PostgresStopped;
    pg_ctl("stop");
    // Calls fail with an error that names the service's database, quickly, and the service
    // stays up.
    let started = Instant::now();
    let err = client
        .call("t_fault_db", "one", json!([]))
        .await
        .unwrap_err();
    assert!(
        started.elapsed() < Duration::from_secs(15),
        "failed after {:?}",
        started.elapsed()
    );
    let text = err.to_string();
    assert!(
        text.contains("t_fault_db") && text.contains("database"),
        "{text}"
    );

    pg_ctl("start");
    drop(guard);
    let back = Instant::now();
    let mut answered = false;
    while back.elapsed() < Duration::from_secs(30) {
        if client.call("t_fault_db", "one", json!([])).await.ok() == Some(json!(1)) {
            answered = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    assert!(
        answered,
        "the pool recovered by itself once PostgreSQL was back"
    );
    eprintln!(
        "database calls work again {:?} after PostgreSQL came back",
        back.elapsed()
    );

    running.shutdown().await.unwrap();
    let raw = Raw::connect().await;
    raw.delete_queues(&["t_fault_db__one", "t_fault_db__one.dlq"])
        .await;
    raw.delete_exchanges(&["t_fault_db"]).await;
}

/// `GET path` over HTTP/1.0: the status, or `None` when nothing answers within a second.
async fn status_of(addr: std::net::SocketAddr, path: &str) -> Option<u16> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let exchange = async {
        let mut stream = tokio::net::TcpStream::connect(addr).await.ok()?;
        let request = format!("GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n");
        stream.write_all(request.as_bytes()).await.ok()?;
        let mut response = String::new();
        stream.read_to_string(&mut response).await.ok()?;
        response.split(' ').nth(1)?.parse().ok()
    };
    tokio::time::timeout(Duration::from_secs(1), exchange)
        .await
        .ok()
        .flatten()
}

/// Polls `/health/ready` every 50 ms until it answers `status`; how long that took.
async fn ready_turns(addr: std::net::SocketAddr, status: u16, within: Duration) -> Duration {
    let started = Instant::now();
    while started.elapsed() < within {
        if status_of(addr, "/health/ready").await == Some(status) {
            return started.elapsed();
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("/health/ready did not answer {status} within {within:?}");
}

/// Readiness follows the broker: 503 within 2 s of `stop_app`, 200 again within 5 s of
/// `start_app` (once the entry points are attached again), liveness 200 throughout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "restarts the broker: run alone by .ci/test"]
async fn readiness_turns_503_while_the_broker_is_down_and_200_once_back() {
    support::require_rabbitmq();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .expect("a free port")
        .port();
    let running = farine::Runtime::new(config(&format!(
        "http_listen = 127.0.0.1:{port}\n[t_fault]\nheartbeat = 5\n"
    )))
    .only(["t_fault"])
    .start()
    .await
    .expect("service starts");
    let addr = running.http_addr().expect("the endpoint is on");
    ready_turns(addr, 200, Duration::from_secs(5)).await;

    let stopped = BrokerStopped::now();
    let down = ready_turns(addr, 503, Duration::from_secs(10)).await;
    assert_eq!(status_of(addr, "/health/live").await, Some(200));
    // From the moment start_app is called (drop runs start_app, then await_startup).
    let restarting = Instant::now();
    drop(stopped);
    ready_turns(addr, 200, Duration::from_secs(30)).await;
    let back = restarting.elapsed();
    eprintln!("readiness: 503 after {down:?} of stop_app, 200 after {back:?} of start_app");
    running.shutdown().await.expect("clean stop");
    assert!(down <= Duration::from_secs(2), "503 only after {down:?}");
    assert!(back <= Duration::from_secs(5), "200 only after {back:?}");
}

/// SIGTERM while the broker is down: the service still stops, within its grace period and
/// the bounded close of its connections, rather than waiting for the broker to come back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "restarts the broker: run alone by .ci/test"]
async fn a_service_stops_while_the_broker_is_down() {
    support::require_rabbitmq();
    let running = farine::Runtime::new(config("[t_fault]\nshutdown_grace = 1s\nheartbeat = 5\n"))
        .only(["t_fault"])
        .start()
        .await
        .expect("service starts");
    let stopped = BrokerStopped::now();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let stopping = Instant::now();
    let stop = tokio::time::timeout(Duration::from_secs(30), running.shutdown()).await;
    let took = stopping.elapsed();
    drop(stopped);
    eprintln!("shutdown with the broker down took {took:?}");
    assert!(stop.is_ok(), "shutdown still waiting after {took:?}");
    assert!(took <= Duration::from_secs(10), "shutdown took {took:?}");
}
