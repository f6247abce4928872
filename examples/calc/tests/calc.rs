//! The calc example end to end, as a user runs it: the `calc` binary with the repository's
//! `farine.ini.example` (its broker set to the tests' virtual host, where no other `calc`
//! runs), called over RabbitMQ, then stopped with signals.

use calc::CalcClient;
use farine_test_support::{
    amqp_uri, example_ini, ini_defaults, require_rabbitmq, wait_exit, Killed,
};
use futures::StreamExt;
use lapin::options::*;
use lapin::types::FieldTable;
use lapin::{BasicProperties, Connection, ConnectionProperties};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// The tests that run calc share its queues: one at a time, so each talks to its own process.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// The calc binary with the test copy of farine.ini.example, killed if the test fails.
/// The calc binary, and word of its "service ready" line: every entry point attached, so a
/// signal is no longer one that came "while starting" (which stops at once).
fn start_calc() -> (Killed, tokio::sync::oneshot::Receiver<()>) {
    require_rabbitmq();
    let mut child = Command::new(env!("CARGO_BIN_EXE_calc"))
        .env("FARINE_INI", example_ini())
        .env("RUST_LOG", "warn,farine::runtime=info")
        .stdout(Stdio::piped())
        .spawn()
        .expect("the calc binary starts");
    let stdout = child.stdout.take().expect("piped stdout");
    let (started, ready) = tokio::sync::oneshot::channel();
    // Reads to the end, so calc never blocks on a full pipe.
    std::thread::spawn(move || {
        let mut started = Some(started);
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if line.contains("service ready") {
                if let Some(started) = started.take() {
                    let _ = started.send(());
                }
            }
        }
    });
    (Killed(child), ready)
}

/// Waits until calc said it is ready and answers.
async fn ready(client: &CalcClient, started: tokio::sync::oneshot::Receiver<()>) {
    tokio::time::timeout(Duration::from_secs(20), started)
        .await
        .expect("calc logs \"service ready\" within 20 s")
        .expect("calc logs \"service ready\" before it exits");
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        match client
            .clone()
            .timeout(Duration::from_secs(1))
            .add(0, 0)
            .await
        {
            Ok(0) => return,
            _ if Instant::now() < deadline => tokio::time::sleep(Duration::from_millis(100)).await,
            other => panic!("calc did not become ready: {other:?}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calc_serves_rpc_and_events_then_stops_on_sigterm() {
    let _serial = SERIAL.lock().await;
    let (mut child, started) = start_calc();
    let config = farine::Config::load(example_ini()).expect("farine.ini.example loads");
    let client = CalcClient::connect(&config).await.expect("client connects");
    ready(&client, started).await;

    assert_eq!(client.add(2, 3).await.unwrap(), 5);
    let items: Vec<u32> = client
        .count(5)
        .await
        .unwrap()
        .map(|i| i.unwrap())
        .collect()
        .await;
    assert_eq!(items, vec![0, 1, 2, 3, 4]);

    // The event path: an operation on calc/operations comes back as a sum on calc/results.
    let connection = Connection::connect(&amqp_uri(), ConnectionProperties::default())
        .await
        .unwrap();
    let channel = connection.create_channel().await.unwrap();
    let queue = "t_calc_example.results";
    channel
        .queue_declare(
            queue.into(),
            QueueDeclareOptions {
                exclusive: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .unwrap();
    channel
        .queue_bind(
            queue.into(),
            "calc".into(),
            "results".into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();
    channel
        .basic_publish(
            "calc".into(),
            "operations".into(),
            BasicPublishOptions::default(),
            br#"{"a": 20, "b": 22}"#,
            BasicProperties::default(),
        )
        .await
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    let sum = loop {
        let got = channel
            .basic_get(queue.into(), BasicGetOptions { no_ack: true })
            .await
            .unwrap();
        if let Some(message) = got {
            break serde_json::from_slice::<serde_json::Value>(&message.delivery.data).unwrap();
        }
        assert!(Instant::now() < deadline, "no result published");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(sum, serde_json::json!({"sum": 42}));
    let _ = connection.close(200, "OK".into()).await;

    kill(Pid::from_raw(child.id() as i32), Signal::SIGTERM).unwrap();
    let status = wait_exit(&mut child, Duration::from_secs(15)).expect("calc exits after SIGTERM");
    assert!(status.success(), "graceful stop exits 0, got {status:?}");
    cleanup().await;
}

/// Deletes what calc declared, so the tests leave nothing behind.
async fn cleanup() {
    let connection = Connection::connect(&amqp_uri(), ConnectionProperties::default())
        .await
        .unwrap();
    let channel = connection.create_channel().await.unwrap();
    let mut queues = vec!["calc__add".to_string(), "calc__count".to_string()];
    for queue in ["operations", "results"] {
        queues.push(queue.to_string());
        for ms in [1000, 2000, 4000] {
            queues.push(format!("{queue}.retry.{ms}ms"));
        }
    }
    let dead: Vec<String> = queues.iter().map(|q| format!("{q}.dlq")).collect();
    for queue in queues.iter().chain(&dead) {
        let _ = channel
            .queue_delete(queue.as_str().into(), QueueDeleteOptions::default())
            .await;
    }
    let _ = channel
        .exchange_delete("calc".into(), ExchangeDeleteOptions::default())
        .await;
    let _ = connection.close(200, "OK".into()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_signal_exits_at_once() {
    let _serial = SERIAL.lock().await;
    let (mut child, started) = start_calc();
    let config = farine::Config::load(example_ini()).unwrap();
    let client = CalcClient::connect(&config).await.unwrap();
    ready(&client, started).await;
    // A call in flight keeps the graceful stop waiting; the second signal cuts it short. The
    // stream is held open, unread, to the end: dropped, it would be cancelled, and the
    // graceful stop could end before the second signal came.
    let mut held = client.count(2_000_000).await.expect("count starts");
    held.next().await.expect("a first item").expect("an item");
    let pid = Pid::from_raw(child.id() as i32);
    kill(pid, Signal::SIGINT).unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    kill(pid, Signal::SIGINT).unwrap();
    let status = wait_exit(&mut child, Duration::from_secs(5))
        .expect("calc exits at once on the second signal");
    assert_eq!(
        status.code(),
        Some(130),
        "the second signal exits at once: {status:?}"
    );
    drop(held);
}

#[test]
fn an_unknown_key_value_stops_the_start_with_where_and_what() {
    let dir = std::env::temp_dir().join(format!("farine-calc-badini-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let ini = dir.join("farine.ini");
    std::fs::write(&ini, "[DEFAULT]\namqp_uri = amqp://guest:secret@127.0.0.1:5672/%2f\n[calc]\nconcurrency = many\n").unwrap();
    let output = Command::new(env!("CARGO_BIN_EXE_calc"))
        .env("FARINE_INI", &ini)
        .output()
        .unwrap();
    let _ = std::fs::remove_dir_all(&dir);
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("[calc] concurrency") && stderr.contains("many"),
        "{stderr}"
    );
    assert!(
        !stderr.contains("secret"),
        "the password never appears: {stderr}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn add_refuses_an_overflow_with_a_typed_error() {
    let _serial = SERIAL.lock().await;
    let (mut child, started) = start_calc();
    let config = farine::Config::load(example_ini()).expect("farine.ini.example loads");
    let client = CalcClient::connect(&config).await.expect("client connects");
    ready(&client, started).await;

    // It used to wrap around to i64::MIN, while on_operation refused the same sum.
    let err = client.add(i64::MAX, 1).await.unwrap_err();
    assert_eq!(
        err.service_error::<calc::CalcError>(),
        Some(calc::CalcError::Overflow { a: i64::MAX, b: 1 }),
        "{err:?}"
    );
    assert!(
        err.to_string()
            .contains("9223372036854775807 + 1 overflows a 64-bit integer"),
        "{err}"
    );
    assert_eq!(client.add(i64::MAX, -1).await.unwrap(), i64::MAX - 1);

    kill(Pid::from_raw(child.id() as i32), Signal::SIGTERM).unwrap();
    wait_exit(&mut child, Duration::from_secs(15)).expect("calc exits after SIGTERM");
    cleanup().await;
}

#[test]
fn a_misspelt_key_stops_the_start_once_with_a_suggestion() {
    let dir = std::env::temp_dir().join(format!("farine-calc-typo-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let ini = dir.join("farine.ini");
    std::fs::write(&ini, format!("{}[calc]\nconcurency = 3\n", ini_defaults())).unwrap();
    let output = Command::new(env!("CARGO_BIN_EXE_calc"))
        .env("FARINE_INI", &ini)
        .output()
        .unwrap();
    let _ = std::fs::remove_dir_all(&dir);
    assert!(!output.status.success());
    let all = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    // It was a mere warning, and errors were printed twice (logged, then on stderr).
    assert_eq!(
        all.matches("[calc] concurency: unknown configuration key (did you mean concurrency?)")
            .count(),
        1,
        "{all}"
    );
}

#[test]
fn an_unreachable_broker_fails_the_start_at_once_without_a_panic() {
    let dir = std::env::temp_dir().join(format!("farine-calc-nobroker-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let ini = dir.join("farine.ini");
    // Nothing listens on port 1: the connection is refused.
    std::fs::write(
        &ini,
        "[DEFAULT]\namqp_uri = amqp://guest:secret@127.0.0.1:1/%2f\n",
    )
    .unwrap();
    let started = Instant::now();
    let output = Command::new(env!("CARGO_BIN_EXE_calc"))
        .env("FARINE_INI", &ini)
        .output()
        .unwrap();
    let took = started.elapsed();
    let _ = std::fs::remove_dir_all(&dir);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "{stderr}");
    // It took 15 s, then lapin's IO thread panicked as the runtime shut down.
    assert!(took < Duration::from_secs(5), "took {took:?}: {stderr}");
    assert!(
        stderr.contains("cannot connect to the broker at amqp://guest:***@127.0.0.1:1/%2f"),
        "{stderr}"
    );
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert!(!stderr.contains("secret"), "{stderr}");
}
