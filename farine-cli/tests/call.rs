//! `farine call` against a service started in this test, over the real RabbitMQ.

use farine::prelude::*;
use farine_test_support::{amqp_uri, ini_defaults, require_rabbitmq};
use std::process::Command;
use std::time::Duration;

#[derive(Default)]
struct CliCalc;

#[farine::service(name = "t_cli_calc")]
impl CliCalc {
    #[rpc::method]
    async fn add(&self, a: i64, b: i64) -> i64 {
        a + b
    }

    #[rpc::method]
    fn count(&self, n: u32) -> impl Stream<Item = u32> + Send + 'static {
        futures::stream::iter(0..n)
    }

    /// Fails until `HEAL` is set, so its messages are parked, then replayed.
    #[amqp::consume(
        exchange = "t_cli_calc",
        routing_key = "jobs",
        queue = "t_cli_calc.jobs"
    )]
    async fn job(&self, body: serde_json::Value) -> Result<(), String> {
        if HEAL.load(std::sync::atomic::Ordering::SeqCst) {
            DONE.lock().unwrap().push(body);
            Ok(())
        } else {
            Err(format!("job {} refused", body["n"]))
        }
    }

    #[rpc::method]
    async fn slow(&self) -> u8 {
        tokio::time::sleep(Duration::from_secs(5)).await;
        1
    }
}

static HEAL: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
static DONE: std::sync::Mutex<Vec<serde_json::Value>> = std::sync::Mutex::new(Vec::new());

fn ini_text() -> String {
    format!("{}[t_cli_calc]\nretry_attempts = 0\n", ini_defaults())
}

fn farine_call(ini: &std::path::Path, args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_farine"))
        .arg("call")
        .args(args)
        .env("FARINE_INI", ini)
        .output()
        .expect("farine runs")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn farine_call_prints_results_streams_and_errors() {
    require_rabbitmq();
    cleanup().await; // what a failed earlier run may have left
    let dir = tempfile::tempdir().unwrap();
    let ini = dir.path().join("farine.ini");
    std::fs::write(&ini, ini_text()).unwrap();
    let config = farine::Config::load(&ini).unwrap();
    let running = farine::Runtime::new(config)
        .only(["t_cli_calc"])
        .start()
        .await
        .unwrap();

    let ini2 = ini.clone();
    let outputs = tokio::task::spawn_blocking(move || {
        let ini = ini2.as_path();
        (
            farine_call(ini, &["t_cli_calc.add", "[2, 3]"]),
            farine_call(ini, &["t_cli_calc.add", r#"{"a": 1, "b": 1}"#]),
            farine_call(ini, &["t_cli_calc.count", "[4]"]),
            farine_call(ini, &["t_cli_calc.add", r#"["x", 1]"#]),
            farine_call(ini, &["t_cli_calc.missing"]),
            farine_call(ini, &["t_cli_calc.slow", "--timeout", "300ms"]),
            farine_call(ini, &["t_cli_calc.add", "[2,"]),
        )
    })
    .await
    .unwrap();
    let (add, by_name, count, bad, missing, slow, not_json) = outputs;
    let text = |o: &std::process::Output| String::from_utf8_lossy(&o.stdout).into_owned();
    let err = |o: &std::process::Output| String::from_utf8_lossy(&o.stderr).into_owned();

    assert!(add.status.success(), "{}", err(&add));
    assert_eq!(text(&add), "5\n");
    assert_eq!(text(&by_name), "2\n");
    assert_eq!(text(&count), "0\n1\n2\n3\n");
    assert!(!bad.status.success());
    assert!(
        err(&bad).contains("argument `a` expects i64"),
        "{}",
        err(&bad)
    );
    assert!(!missing.status.success());
    assert!(
        err(&missing).contains("t_cli_calc.missing: no such method"),
        "{}",
        err(&missing)
    );
    assert!(!slow.status.success());
    assert!(
        err(&slow).contains("t_cli_calc.slow: no reply within 300ms"),
        "{}",
        err(&slow)
    );
    assert_eq!(not_json.status.code(), Some(2));
    assert!(err(&not_json).contains("JSON-ARGS"), "{}", err(&not_json));

    // Dead letters: two failing jobs are parked, listed with their reason, then replayed.
    let publish = |ini: std::path::PathBuf| async move {
        let _ = ini;
        let connection =
            lapin::Connection::connect(&amqp_uri(), lapin::ConnectionProperties::default())
                .await
                .unwrap();
        let channel = connection.create_channel().await.unwrap();
        for n in [1, 2] {
            channel
                .basic_publish(
                    "t_cli_calc".into(),
                    "jobs".into(),
                    lapin::options::BasicPublishOptions::default(),
                    format!(r#"{{"n": {n}}}"#).as_bytes(),
                    lapin::BasicProperties::default(),
                )
                .await
                .unwrap();
        }
        let _ = connection.close(200, "OK".into()).await;
    };
    publish(ini.clone()).await;
    let ini3 = ini.clone();
    let dlq = |args: &'static [&'static str]| {
        let ini = ini3.clone();
        async move {
            tokio::task::spawn_blocking(move || {
                Command::new(env!("CARGO_BIN_EXE_farine"))
                    .arg("dlq")
                    .args(args)
                    .env("FARINE_INI", &ini)
                    .output()
                    .expect("farine runs")
            })
            .await
            .unwrap()
        }
    };
    let mut listed = String::new();
    for _ in 0..100 {
        let list = dlq(&["list", "t_cli_calc.jobs"]).await;
        listed = text(&list);
        if listed.lines().count() == 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        listed.contains("#1") && listed.contains("job 1 refused"),
        "{listed}"
    );
    assert!(
        listed.contains("t_cli_calc/jobs") && listed.contains("attempts=1"),
        "{listed}"
    );
    let show = dlq(&["show", "t_cli_calc.jobs.dlq"]).await;
    // Jobs are handled concurrently, so they may be parked in either order.
    let mut shown: Vec<serde_json::Value> = text(&show)
        .lines()
        .map(|line| serde_json::from_str(line).unwrap())
        .collect();
    shown.sort_by_key(|letter| letter["body"]["n"].as_i64());
    assert_eq!(shown.len(), 2, "{shown:?}");
    for (letter, n) in shown.iter().zip([1, 2]) {
        assert_eq!(letter["body"], serde_json::json!({ "n": n }));
        assert_eq!(
            letter["error"],
            serde_json::json!(format!("job {n} refused"))
        );
    }
    HEAL.store(true, std::sync::atomic::Ordering::SeqCst);
    let replay = dlq(&["replay", "t_cli_calc.jobs"]).await;
    assert!(
        text(&replay).contains("moved 2 message(s)"),
        "{} {}",
        text(&replay),
        err(&replay)
    );
    for _ in 0..100 {
        if DONE.lock().unwrap().len() == 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(DONE.lock().unwrap().len(), 2, "replayed jobs were handled");
    assert!(text(&dlq(&["list", "t_cli_calc.jobs"]).await).contains("is empty"));

    running.shutdown().await.unwrap();
    cleanup().await;
}

/// Deletes what the service declared.
async fn cleanup() {
    use lapin::options::{ExchangeDeleteOptions, QueueDeleteOptions};
    let connection =
        lapin::Connection::connect(&amqp_uri(), lapin::ConnectionProperties::default())
            .await
            .unwrap();
    let channel = connection.create_channel().await.unwrap();
    for queue in ["t_cli_calc.jobs", "t_cli_calc.jobs.dlq"] {
        let _ = channel
            .queue_delete(queue.into(), QueueDeleteOptions::default())
            .await;
    }
    for method in ["add", "count", "slow"] {
        for queue in [
            format!("t_cli_calc__{method}"),
            format!("t_cli_calc__{method}.dlq"),
        ] {
            let _ = channel
                .queue_delete(queue.as_str().into(), QueueDeleteOptions::default())
                .await;
        }
    }
    let _ = channel
        .exchange_delete("t_cli_calc".into(), ExchangeDeleteOptions::default())
        .await;
    let _ = connection.close(200, "OK".into()).await;
}

// ---------------------------------------------------------------- a closed output

/// Items produced by `t_cli_pipe.numbers`, to see that a cancelled stream stops.
static PRODUCED: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

#[derive(Default)]
struct CliPipe;

#[farine::service(name = "t_cli_pipe")]
impl CliPipe {
    /// `0..n`, one item a millisecond: a million take a quarter of an hour.
    #[rpc::method]
    fn numbers(&self, n: u64) -> impl Stream<Item = u64> + Send + 'static {
        futures::stream::iter(0..n).then(|i| async move {
            PRODUCED.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            tokio::time::sleep(Duration::from_millis(1)).await;
            i
        })
    }
}

async fn cleanup_pipe() {
    use lapin::options::{ExchangeDeleteOptions, QueueDeleteOptions};
    let connection =
        lapin::Connection::connect(&amqp_uri(), lapin::ConnectionProperties::default())
            .await
            .unwrap();
    let channel = connection.create_channel().await.unwrap();
    for queue in ["t_cli_pipe__numbers", "t_cli_pipe__numbers.dlq"] {
        let _ = channel
            .queue_delete(queue.into(), QueueDeleteOptions::default())
            .await;
    }
    let _ = channel
        .exchange_delete("t_cli_pipe".into(), ExchangeDeleteOptions::default())
        .await;
    let _ = connection.close(200, "OK".into()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn farine_call_stops_when_its_output_is_closed_or_fails() {
    use std::io::BufRead;
    use std::process::Stdio;

    require_rabbitmq();
    cleanup_pipe().await;
    let dir = tempfile::tempdir().unwrap();
    let ini = dir.path().join("farine.ini");
    std::fs::write(&ini, ini_defaults()).unwrap();
    let running = farine::Runtime::new(farine::Config::load(&ini).unwrap())
        .only(["t_cli_pipe"])
        .start()
        .await
        .unwrap();

    // `farine call t_cli_pipe.numbers '[1000000]' | head -5`: it ran to the end and exited 0.
    let ini2 = ini.clone();
    let (status, lines, stderr, took) = tokio::task::spawn_blocking(move || {
        let started = std::time::Instant::now();
        let mut child = Command::new(env!("CARGO_BIN_EXE_farine"))
            .args(["call", "t_cli_pipe.numbers", "[1000000]"])
            .env("FARINE_INI", &ini2)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("farine runs");
        let stdout = child.stdout.take().unwrap();
        let lines: Vec<String> = std::io::BufReader::new(stdout)
            .lines()
            .take(5)
            .map(Result::unwrap)
            .collect(); // the reader is dropped here, as `head` exits
        let output = child.wait_with_output().unwrap();
        (
            output.status,
            lines,
            String::from_utf8_lossy(&output.stderr).into_owned(),
            started.elapsed(),
        )
    })
    .await
    .unwrap();
    assert_eq!(lines, ["0", "1", "2", "3", "4"]);
    assert_eq!(status.code(), Some(141), "{stderr}");
    assert!(stderr.is_empty(), "a broken pipe exits quietly: {stderr}");
    assert!(took < Duration::from_secs(10), "took {took:?}");
    // The stream was cancelled on the server: production stops.
    let mut settled = false;
    for _ in 0..50 {
        let before = PRODUCED.load(std::sync::atomic::Ordering::SeqCst);
        tokio::time::sleep(Duration::from_millis(200)).await;
        if PRODUCED.load(std::sync::atomic::Ordering::SeqCst) == before {
            settled = true;
            break;
        }
    }
    assert!(settled, "the server kept producing the stream");
    assert!(PRODUCED.load(std::sync::atomic::Ordering::SeqCst) < 100_000);

    // `> /dev/full`: every write fails; it exited 0.
    let ini3 = ini.clone();
    let full = tokio::task::spawn_blocking(move || {
        Command::new(env!("CARGO_BIN_EXE_farine"))
            .args(["call", "t_cli_pipe.numbers", "[1000000]"])
            .env("FARINE_INI", &ini3)
            .stdout(
                std::fs::OpenOptions::new()
                    .write(true)
                    .open("/dev/full")
                    .unwrap(),
            )
            .output()
            .expect("farine runs")
    })
    .await
    .unwrap();
    let stderr = String::from_utf8_lossy(&full.stderr);
    assert_eq!(full.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("cannot write the results of t_cli_pipe.numbers to stdout")
            && stderr.contains("No space left on device"),
        "{stderr}"
    );

    running.shutdown().await.unwrap();
    cleanup_pipe().await;
}

// ---------------------------------------------------------------- an unreachable broker

#[test]
fn farine_call_fails_fast_and_cleanly_when_the_broker_refuses() {
    let dir = tempfile::tempdir().unwrap();
    let ini = dir.path().join("farine.ini");
    // Nothing listens on port 1: the connection is refused.
    std::fs::write(
        &ini,
        "[DEFAULT]\namqp_uri = amqp://guest:secret@127.0.0.1:1/%2f\n",
    )
    .unwrap();
    let started = std::time::Instant::now();
    let output = farine_call(&ini, &["t_cli_nobroker.add", "[1, 2]"]);
    let took = started.elapsed();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    // It took 15 s, then lapin's IO thread panicked as the runtime shut down.
    assert!(took < Duration::from_secs(5), "took {took:?}: {stderr}");
    assert!(
        stderr.contains("cannot connect to the broker at amqp://guest:***@127.0.0.1:1/%2f")
            && stderr.contains("Connection refused"),
        "{stderr}"
    );
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert!(!stderr.contains("secret"), "{stderr}");
}
