//! OTLP/HTTP export (feature `otel`) to a collector that is an HTTP server of this test:
//! `otlp_endpoint` in [DEFAULT], then `OTEL_EXPORTER_OTLP_ENDPOINT` (which wins over it), each
//! sends the spans of a call, as protobuf, to `<endpoint>/v1/traces` when the export is shut
//! down. A test binary of its own: the `OTEL_*` variables are the process's.

use farine::config::Config;
use farine::otel::Export;
use farine::prelude::*;
use farine::testing::TestKit;
use farine::trace::TraceContext;
use std::sync::{Arc, Mutex};

#[derive(Default)]
pub struct OtelHttp;

#[farine::service(name = "t_oh_a")]
impl OtelHttp {
    #[rpc::method]
    async fn add(&self, a: i64, b: i64) -> i64 {
        a + b
    }
}

/// A request the collector received: path, content type, body.
type Received = Arc<Mutex<Vec<(String, String, Vec<u8>)>>>;

/// Starts the collector; returns its base URL.
fn collector(runtime: &tokio::runtime::Runtime, received: Received) -> String {
    let listener = runtime
        .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
        .expect("bind");
    let addr = listener.local_addr().expect("address");
    let app =
        axum::Router::new().fallback(move |request: axum::http::Request<axum::body::Body>| {
            let received = received.clone();
            async move {
                let path = request.uri().path().to_string();
                let content_type = request
                    .headers()
                    .get("content-type")
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or_default()
                    .to_string();
                let body = axum::body::to_bytes(request.into_body(), 16 << 20)
                    .await
                    .unwrap_or_default();
                received
                    .lock()
                    .unwrap()
                    .push((path, content_type, body.to_vec()));
                // An empty ExportTraceServiceResponse.
                (
                    [("content-type", "application/x-protobuf")],
                    Vec::<u8>::new(),
                )
            }
        });
    runtime.spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    format!("http://{addr}")
}

/// One call of `t_oh_a.add` in the trace `traceparent` (a client span, then the handling's).
fn one_call(runtime: &tokio::runtime::Runtime, traceparent: &str) {
    let caller = TraceContext::parse(traceparent, None).expect("traceparent");
    runtime.block_on(async {
        let kit = TestKit::memory()
            .service("t_oh_a")
            .start()
            .await
            .expect("start");
        let client = OtelHttpClient::connect(kit.config()).await.expect("client");
        let sum = caller.scope(client.add(2, 3)).await.expect("add");
        assert_eq!(sum, 5);
        kit.stop().await.expect("stop");
    });
}

/// The 16 bytes of the trace id of `traceparent`, as OTLP's protobuf carries them.
fn trace_id_bytes(traceparent: &str) -> Vec<u8> {
    let hex = &traceparent[3..35];
    (0..16)
        .map(|i| u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).expect("hex"))
        .collect()
}

fn contains(body: &[u8], part: &[u8]) -> bool {
    body.windows(part.len()).any(|window| window == part)
}

#[test]
fn spans_reach_an_otlp_http_collector() {
    for name in [
        "OTEL_EXPORTER_OTLP_ENDPOINT",
        "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
        "OTEL_EXPORTER_OTLP_PROTOCOL",
        "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL",
        "OTEL_SDK_DISABLED",
        "OTEL_TRACES_EXPORTER",
    ] {
        std::env::remove_var(name);
    }
    std::env::set_var("OTEL_SERVICE_NAME", "farine-otel-http-test");
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let received = Received::default();
    let base = collector(&runtime, received.clone());
    let ini = format!("[DEFAULT]\namqp_uri = memory://\notlp_endpoint = {base}/ini/\n");
    let config = Config::from_str(&ini, "otel.ini").expect("config");

    // Without any variable, no export.
    let plain = Config::from_str("[DEFAULT]\namqp_uri = memory://\n", "plain.ini").unwrap();
    assert!(Export::from_config(&plain).expect("no export").is_none());

    // `otlp_endpoint`: spans go to <it>/v1/traces.
    let first = "00-11111111111111111111111111111111-00f067aa0ba902b7-01";
    let export = Export::from_config(&config)
        .expect("export")
        .expect("on with otlp_endpoint");
    assert_eq!(export.endpoint(), format!("{base}/ini/v1/traces"));
    one_call(&runtime, first);
    export.shutdown();

    // OTEL_EXPORTER_OTLP_ENDPOINT wins over otlp_endpoint.
    std::env::set_var("OTEL_EXPORTER_OTLP_ENDPOINT", format!("{base}/env"));
    let second = "00-22222222222222222222222222222222-00f067aa0ba902b7-01";
    let export = Export::from_config(&config)
        .expect("export")
        .expect("on with OTEL_EXPORTER_OTLP_ENDPOINT");
    one_call(&runtime, second);
    export.shutdown();

    // A protocol farine does not speak is refused, naming the variable.
    std::env::set_var("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc");
    let err = Export::from_config(&config).err().expect("grpc refused");
    assert!(
        err.to_string()
            .starts_with("OTEL_EXPORTER_OTLP_PROTOCOL=\"grpc\""),
        "{err}"
    );
    std::env::remove_var("OTEL_EXPORTER_OTLP_PROTOCOL");

    let received = received.lock().unwrap();
    let paths: Vec<&str> = received.iter().map(|(path, _, _)| path.as_str()).collect();
    for (path, content_type, _) in received.iter() {
        assert!(
            path == "/ini/v1/traces" || path == "/env/v1/traces",
            "{paths:?}"
        );
        assert_eq!(content_type, "application/x-protobuf");
    }
    let bodies = |path: &str, traceparent: &str| {
        received
            .iter()
            .filter(|(p, _, body)| p == path && contains(body, &trace_id_bytes(traceparent)))
            .count()
    };
    assert!(bodies("/ini/v1/traces", first) > 0, "{paths:?}");
    assert!(bodies("/env/v1/traces", second) > 0, "{paths:?}");
    assert_eq!(bodies("/ini/v1/traces", second), 0);
    assert_eq!(bodies("/env/v1/traces", first), 0);
    for (_, _, body) in received.iter() {
        assert!(contains(body, b"farine-otel-http-test"));
        assert!(contains(body, b"handle t_oh_a.add"));
        assert!(contains(body, b"call t_oh_a.add"));
    }
}
