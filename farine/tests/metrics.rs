//! Metrics and the HTTP endpoint (`http_listen`): the built-in metrics middleware's counts on
//! the in-process broker, then `/metrics`, `/health/live` and `/health/ready` of a process
//! running against a real RabbitMQ.

mod support;

use farine::metrics::Metrics;
use farine::prelude::*;
use farine::testing::TestKit;
use serde_json::{json, Value};
use std::net::SocketAddr;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const WAIT: Duration = Duration::from_secs(10);

#[derive(Default)]
pub struct Metered;

#[farine::service(name = "t_metrics")]
impl Metered {
    #[rpc::method]
    async fn add(&self, a: i64, b: i64) -> i64 {
        a + b
    }

    #[rpc::method]
    async fn fail(&self) -> Result<i64, String> {
        Err("no".into())
    }

    /// Calls `add` and `fail` through the service's own injected client.
    #[rpc::method]
    async fn relay(&self, me: MeteredClient, a: i64) -> farine::Result<i64> {
        let _ = me.fail().await;
        me.add(a, a).await
    }

    /// Fails every time: retried once, then parked.
    #[amqp::consume(routing_key = "jobs", queue = "t_metrics.jobs")]
    async fn on_job(&self, _job: Value) -> Result<(), String> {
        Err("no".into())
    }

    #[amqp::consume(routing_key = "ok", queue = "t_metrics.ok")]
    async fn on_ok(&self, _job: Value) {}
}

/// The value of the sample `name{labels}` in `text`, if present.
fn sample(text: &str, name: &str, labels: &str) -> Option<f64> {
    let prefix = format!("{name}{{{labels}");
    text.lines()
        .find(|line| line.starts_with(&prefix))
        .and_then(|line| line.rsplit(' ').next())
        .and_then(|value| value.parse().ok())
}

fn labels(entry_point: &str, kind: &str) -> String {
    format!("service=\"t_metrics\",entry_point=\"t_metrics.{entry_point}\",kind=\"{kind}\"")
}

/// Polls `metrics` until every `name{labels}` sample is present (at least 1).
async fn wait_for(metrics: impl Fn() -> String, samples: &[(&str, String)]) -> String {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let text = metrics();
        let all = samples
            .iter()
            .all(|(name, labels)| sample(&text, name, labels) >= Some(1.0));
        if all || tokio::time::Instant::now() >= deadline {
            return text;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn the_middleware_counts_retried_and_dead_lettered_deliveries() {
    let metrics = Metrics::new();
    let kit = TestKit::memory()
        .service("t_metrics")
        .set("t_metrics", "retry_attempts", "1")
        .set("t_metrics", "retry_delay", "10ms")
        .middleware(metrics.clone())
        .start()
        .await
        .expect("t_metrics starts");
    let client = MeteredClient::connect(kit.config()).await.expect("client");
    assert_eq!(client.add(2, 3).await.expect("add"), 5);
    assert!(client.fail().await.is_err());
    kit.publish("t_metrics", "jobs", &json!({}))
        .await
        .expect("publish");
    kit.publish("t_metrics", "ok", &json!({}))
        .await
        .expect("publish");

    let job = labels("on_job", "consume");
    let text = wait_for(
        || metrics.encode(),
        &[
            ("farine_deliveries_dead_lettered_total", job.clone()),
            (
                "farine_deliveries_handled_total",
                labels("on_ok", "consume"),
            ),
            ("farine_deliveries_handled_total", labels("add", "rpc")),
            ("farine_deliveries_handled_total", labels("fail", "rpc")),
        ],
    )
    .await;
    // The job: tried, retried once, then dead-lettered: two deliveries, both failed.
    assert_eq!(
        sample(&text, "farine_deliveries_handled_total", &job),
        Some(2.0),
        "{text}"
    );
    assert_eq!(
        sample(&text, "farine_deliveries_failed_total", &job),
        Some(2.0)
    );
    assert_eq!(
        sample(&text, "farine_deliveries_retried_total", &job),
        Some(1.0)
    );
    assert_eq!(
        sample(&text, "farine_deliveries_dead_lettered_total", &job),
        Some(1.0)
    );
    assert_eq!(
        sample(&text, "farine_handling_duration_seconds_count", &job),
        Some(2.0)
    );
    assert_eq!(
        sample(&text, "farine_deliveries_in_flight", &job),
        Some(0.0)
    );
    // The calls: answered (acked), one with an error; neither retried nor parked.
    let add = labels("add", "rpc");
    let fail = labels("fail", "rpc");
    assert_eq!(
        sample(&text, "farine_deliveries_handled_total", &add),
        Some(1.0)
    );
    assert_eq!(sample(&text, "farine_deliveries_failed_total", &add), None);
    assert_eq!(
        sample(&text, "farine_deliveries_failed_total", &fail),
        Some(1.0)
    );
    assert_eq!(
        sample(&text, "farine_deliveries_retried_total", &fail),
        None
    );
    let ok = labels("on_ok", "consume");
    assert_eq!(
        sample(&text, "farine_deliveries_handled_total", &ok),
        Some(1.0)
    );
    assert_eq!(sample(&text, "farine_deliveries_failed_total", &ok), None);
    assert!(text.contains("# TYPE farine_handling_duration_seconds histogram"));
    assert!(text.contains("# TYPE farine_deliveries_handled counter"));
    kit.stop().await.expect("stop");
}

/// `GET path` over HTTP/1.0: the status and the body.
async fn get(addr: SocketAddr, path: &str) -> (u16, String, String) {
    let mut stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
    stream
        .write_all(format!("GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").as_bytes())
        .await
        .expect("request");
    let mut response = String::new();
    tokio::time::timeout(WAIT, stream.read_to_string(&mut response))
        .await
        .expect("answered in time")
        .expect("response");
    let (head, body) = response.split_once("\r\n\r\n").expect("a head and a body");
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .expect("a status");
    (status, head.to_ascii_lowercase(), body.to_string())
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .expect("a free port")
        .port()
}

#[tokio::test]
async fn the_endpoint_serves_metrics_and_health_against_rabbitmq() {
    support::require_rabbitmq();
    let port = free_port();
    let config = support::config(&format!(
        "http_listen = 127.0.0.1:{port}\n[t_metrics]\nretry_attempts = 1\nretry_delay = 10ms\n"
    ));
    let running = farine::Runtime::new(config.clone())
        .only(["t_metrics"])
        .start()
        .await
        .expect("t_metrics starts");
    let addr = running.http_addr().expect("the endpoint is on");
    assert_eq!(addr.port(), port);

    let (status, _, body) = get(addr, "/health/live").await;
    assert_eq!(status, 200, "{body}");
    let (status, head, body) = get(addr, "/health/ready").await;
    assert_eq!(status, 200, "{body}");
    assert!(head.contains("content-type: application/json"), "{head}");
    let ready: Value = serde_json::from_str(&body).expect("JSON");
    assert_eq!(ready["ready"], true, "{ready}");
    assert_eq!(ready["services"][0]["service"], "t_metrics", "{ready}");
    assert_eq!(ready["services"][0]["connected"], true, "{ready}");

    let client = MeteredClient::connect(&config).await.expect("client");
    for _ in 0..3 {
        assert_eq!(client.add(2, 3).await.expect("add"), 5);
    }
    assert_eq!(client.relay(4).await.expect("relay"), 8);
    let raw = support::Raw::connect().await;
    raw.publish("t_metrics", "jobs", b"{}").await;
    raw.publish("t_metrics", "ok", b"{}").await;

    let job = labels("on_job", "consume");
    let deadline = tokio::time::Instant::now() + WAIT;
    let text = loop {
        let (status, head, text) = get(addr, "/metrics").await;
        assert_eq!(status, 200);
        assert!(
            head.contains("content-type: application/openmetrics-text"),
            "{head}"
        );
        let done = sample(&text, "farine_deliveries_dead_lettered_total", &job) == Some(1.0)
            && sample(
                &text,
                "farine_deliveries_handled_total",
                &labels("on_ok", "consume"),
            ) == Some(1.0)
            && sample(
                &text,
                "farine_deliveries_handled_total",
                &labels("add", "rpc"),
            ) == Some(4.0);
        if done || tokio::time::Instant::now() >= deadline {
            break text;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    // Three calls from the test, one from `relay`.
    let add = labels("add", "rpc");
    assert_eq!(
        sample(&text, "farine_deliveries_handled_total", &add),
        Some(4.0),
        "{text}"
    );
    assert_eq!(
        sample(&text, "farine_handling_duration_seconds_count", &add),
        Some(4.0)
    );
    assert_eq!(
        sample(
            &text,
            "farine_handling_duration_seconds_bucket",
            &format!("le=\"+Inf\",{add}")
        ),
        Some(4.0),
        "{text}"
    );
    assert_eq!(
        sample(&text, "farine_deliveries_in_flight", &add),
        Some(0.0)
    );
    assert_eq!(
        sample(&text, "farine_deliveries_handled_total", &job),
        Some(2.0),
        "{text}"
    );
    assert_eq!(
        sample(&text, "farine_deliveries_failed_total", &job),
        Some(2.0)
    );
    assert_eq!(
        sample(&text, "farine_deliveries_retried_total", &job),
        Some(1.0)
    );
    assert_eq!(
        sample(&text, "farine_deliveries_dead_lettered_total", &job),
        Some(1.0)
    );

    // The service's own client: its calls, by caller and target.
    let made = |call: &str| format!("service=\"t_metrics\",call=\"t_metrics.{call}\"");
    assert_eq!(
        sample(&text, "farine_rpc_client_calls_total", &made("add")),
        Some(1.0),
        "{text}"
    );
    assert_eq!(
        sample(&text, "farine_rpc_client_calls_total", &made("fail")),
        Some(1.0)
    );
    assert_eq!(
        sample(&text, "farine_rpc_client_errors_total", &made("fail")),
        Some(1.0)
    );
    assert_eq!(
        sample(&text, "farine_rpc_client_errors_total", &made("add")),
        None
    );
    assert_eq!(
        sample(&text, "farine_rpc_client_timeouts_total", &made("fail")),
        None
    );
    assert_eq!(
        sample(
            &text,
            "farine_rpc_client_duration_seconds_count",
            &made("add")
        ),
        Some(1.0)
    );

    assert_eq!(
        sample(&text, "farine_broker_connected", "service=\"t_metrics\""),
        Some(1.0)
    );

    let (status, _, _) = get(addr, "/nothing").await;
    assert_eq!(status, 404);
    running.shutdown().await.expect("stop");
    raw.delete_queues(&["t_metrics.jobs.dlq"]).await;
}

#[tokio::test]
async fn a_bad_or_taken_address_stops_the_start_naming_the_key() {
    let config = farine::Config::from_str(
        "[DEFAULT]\namqp_uri = memory://t_metrics_bad\nhttp_listen = nowhere\n",
        "bad.ini",
    )
    .unwrap();
    let err = farine::Runtime::new(config)
        .only(["t_metrics"])
        .start()
        .await
        .err()
        .expect("refused");
    assert_eq!(
        err.to_string(),
        "bad.ini [DEFAULT] http_listen: expected an IP address and port such as \
         127.0.0.1:9464, got \"nowhere\""
    );

    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    let config = farine::Config::from_str(
        &format!(
            "[DEFAULT]\namqp_uri = memory://t_metrics_taken\nhttp_listen = 127.0.0.1:{port}\n"
        ),
        "taken.ini",
    )
    .unwrap();
    let err = farine::Runtime::new(config)
        .only(["t_metrics"])
        .start()
        .await
        .err()
        .expect("refused");
    let message = err.to_string();
    assert!(
        message.starts_with(&format!(
            "taken.ini [DEFAULT] http_listen: cannot listen on 127.0.0.1:{port}:"
        )),
        "{message}"
    );

    let config = farine::Config::from_str(
        "[DEFAULT]\namqp_uri = memory://x\n[t_metrics]\nhttp_listen = 127.0.0.1:0\n",
        "section.ini",
    )
    .unwrap();
    assert!(config
        .http_listen()
        .unwrap_err()
        .to_string()
        .starts_with("section.ini [t_metrics] http_listen: one endpoint per process"));
}
