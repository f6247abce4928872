//! `farine call` against a service started in this test, over the real RabbitMQ.

use farine::prelude::*;
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

    #[rpc::method]
    async fn slow(&self) -> u8 {
        tokio::time::sleep(Duration::from_secs(5)).await;
        1
    }
}

fn require_rabbitmq() {
    let address = std::net::SocketAddr::from(([127, 0, 0, 1], 5672));
    if std::net::TcpStream::connect_timeout(&address, Duration::from_secs(2)).is_err() {
        panic!("RabbitMQ is not reachable on 127.0.0.1:5672: start it with `rabbitmq-server -detached`");
    }
}

const INI: &str = "[DEFAULT]\namqp_uri = amqp://guest:guest@127.0.0.1:5672/%2f\n";

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
    let dir = tempfile::tempdir().unwrap();
    let ini = dir.path().join("farine.ini");
    std::fs::write(&ini, INI).unwrap();
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

    running.shutdown().await.unwrap();
    cleanup().await;
}

/// Deletes what the service declared.
async fn cleanup() {
    use lapin::options::{ExchangeDeleteOptions, QueueDeleteOptions};
    let connection = lapin::Connection::connect(
        "amqp://guest:guest@127.0.0.1:5672/%2f",
        lapin::ConnectionProperties::default(),
    )
    .await
    .unwrap();
    let channel = connection.create_channel().await.unwrap();
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
