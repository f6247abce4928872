//! `farine publish EXCHANGE ROUTING_KEY JSON` against a real RabbitMQ: a consumer gets the
//! message; an unroutable message and a body that is not JSON are errors.

use farine::prelude::*;
use farine_test_support::{config, eventually, ini_defaults, Raw};
use std::sync::Mutex;
use std::time::Duration;

static GOT: Mutex<Vec<serde_json::Value>> = Mutex::new(Vec::new());

#[derive(Default)]
struct Listener;

#[farine::service(name = "t_cli_publish")]
impl Listener {
    #[amqp::consume(routing_key = "notes", queue = "t_cli_publish.notes")]
    async fn on_note(&self, note: serde_json::Value) -> farine::Result<()> {
        GOT.lock().unwrap().push(note);
        Ok(())
    }
}

fn farine_publish(ini: &std::path::Path, args: &[&str]) -> std::process::Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_farine"))
        .arg("publish")
        .args(args)
        .env("FARINE_INI", ini)
        .env("RUST_LOG", "warn")
        .output()
        .expect("farine runs")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn farine_publish_reaches_a_consumer_and_reports_what_went_wrong() {
    let raw = Raw::connect().await;
    let running = farine::Runtime::new(config(""))
        .only(["t_cli_publish"])
        .start()
        .await
        .expect("service starts");
    let dir = std::env::temp_dir().join(format!("farine-cli-publish-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let ini = dir.join("farine.ini");
    std::fs::write(&ini, ini_defaults()).unwrap();

    let sent = farine_publish(&ini, &["t_cli_publish", "notes", r#"{"text": "hi"}"#]);
    assert!(sent.status.success(), "{sent:?}");
    assert!(
        eventually(Duration::from_secs(10), || GOT.lock().unwrap().len() == 1).await,
        "the consumer got nothing"
    );
    assert_eq!(GOT.lock().unwrap()[0], serde_json::json!({"text": "hi"}));

    let unroutable = farine_publish(&ini, &["t_cli_publish", "nobody", "1"]);
    assert_eq!(unroutable.status.code(), Some(1), "{unroutable:?}");
    let err = String::from_utf8_lossy(&unroutable.stderr);
    assert!(err.contains("no queue is bound"), "{err}");

    let not_json = farine_publish(&ini, &["t_cli_publish", "notes", "{oops"]);
    assert_eq!(not_json.status.code(), Some(2), "{not_json:?}");
    assert!(String::from_utf8_lossy(&not_json.stderr).contains("not JSON"));

    running.shutdown().await.unwrap();
    raw.delete_queues(&["t_cli_publish.notes", "t_cli_publish.notes.dlq"])
        .await;
    for ms in [1000, 2000, 4000] {
        raw.delete_queues(&[&format!("t_cli_publish.notes.retry.{ms}ms")])
            .await;
    }
    raw.delete_exchanges(&["t_cli_publish"]).await;
    let _ = std::fs::remove_dir_all(&dir);
}
