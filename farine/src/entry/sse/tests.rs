//! The listener against a local SSE server (axum on 127.0.0.1) that plays a script per
//! connection: bytes as given (so every shape of the format can be sent), pauses, a stall
//! (connection open, nothing sent), an abrupt abort, error statuses.

use super::listen::{listen, Dispatch};
use super::*;
use crate::config::Config;
use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::Response;
use futures::StreamExt;
use serde::Deserialize;
use std::sync::Mutex;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// Every test finishes within this, or fails.
const TEST_LIMIT: Duration = Duration::from_secs(30);

#[derive(Clone, Debug)]
enum Part {
    Bytes(Vec<u8>),
    Wait(Duration),
    /// Keep the connection open and send nothing more.
    Stall,
    /// Break the connection (the chunked body is never terminated). Put a `Wait` before it:
    /// hyper drops what it has buffered but not yet written when the body fails.
    Abort,
}

fn bytes(text: impl AsRef<[u8]>) -> Part {
    Part::Bytes(text.as_ref().to_vec())
}

struct Reply {
    status: u16,
    content_type: &'static str,
    parts: Vec<Part>,
}

fn ok(parts: Vec<Part>) -> Reply {
    Reply {
        status: 200,
        content_type: "text/event-stream; charset=utf-8",
        parts,
    }
}

/// What the server answers to its `n`-th request (from 0), given the request's headers.
type Script = Box<dyn Fn(usize, &HeaderMap) -> Reply + Send + Sync>;

struct ServerState {
    script: Script,
    requests: Mutex<Vec<HeaderMap>>,
}

struct Server {
    url: String,
    state: Arc<ServerState>,
    task: JoinHandle<()>,
}

impl Drop for Server {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Server {
    async fn start(script: impl Fn(usize, &HeaderMap) -> Reply + Send + Sync + 'static) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        Server::start_on(listener, script)
    }

    fn start_on(
        listener: tokio::net::TcpListener,
        script: impl Fn(usize, &HeaderMap) -> Reply + Send + Sync + 'static,
    ) -> Self {
        let url = format!("http://{}/events", listener.local_addr().unwrap());
        let state = Arc::new(ServerState {
            script: Box::new(script),
            requests: Mutex::new(Vec::new()),
        });
        let app = axum::Router::new()
            .route("/events", axum::routing::get(events))
            .with_state(state.clone());
        let task = tokio::spawn(async move {
            axum::serve(listener, app).await.unwrap();
        });
        Server { url, state, task }
    }

    fn requests(&self) -> Vec<HeaderMap> {
        self.state.requests.lock().unwrap().clone()
    }

    /// The `Last-Event-ID` of each request so far.
    fn last_event_ids(&self) -> Vec<Option<String>> {
        self.requests()
            .iter()
            .map(|headers| last_event_id(headers).map(str::to_owned))
            .collect()
    }
}

fn last_event_id(headers: &HeaderMap) -> Option<&str> {
    headers
        .get("last-event-id")
        .map(|value| value.to_str().unwrap())
}

async fn events(State(state): State<Arc<ServerState>>, headers: HeaderMap) -> Response {
    let n = {
        let mut requests = state.requests.lock().unwrap();
        requests.push(headers.clone());
        requests.len() - 1
    };
    let reply = (state.script)(n, &headers);
    let body = futures::stream::iter(reply.parts)
        .then(|part| async move {
            match part {
                Part::Bytes(bytes) => Some(Ok(Bytes::from(bytes))),
                Part::Wait(time) => {
                    tokio::time::sleep(time).await;
                    None
                }
                Part::Stall => std::future::pending().await,
                Part::Abort => Some(Err(std::io::Error::other("connection aborted by the test"))),
            }
        })
        .filter_map(futures::future::ready);
    Response::builder()
        .status(reply.status)
        .header("content-type", reply.content_type)
        .body(Body::from_stream(body))
        .unwrap()
}

fn spec(url: &str) -> ListenerSpec {
    ListenerSpec {
        label: "feed.on_event".into(),
        endpoint: url.into(),
        headers: Vec::new(),
        idle_timeout: Duration::from_secs(10),
        retry_min: Duration::from_millis(20),
        retry_max: Duration::from_millis(200),
        max_event_bytes: 1 << 20,
        shutdown_grace: Duration::from_secs(1),
    }
}

/// A dispatch that forwards every event to a channel.
fn collect() -> (Dispatch, mpsc::UnboundedReceiver<Event>) {
    let (tx, rx) = mpsc::unbounded_channel();
    let dispatch: Dispatch = Arc::new(move |event| {
        let _ = tx.send(event);
        futures::future::ready(Outcome::Done).boxed()
    });
    (dispatch, rx)
}

/// A running listener; `stop` shuts it down and checks it ends promptly.
struct Running {
    shutdown: CancellationToken,
    task: JoinHandle<()>,
}

fn start(spec: ListenerSpec, dispatch: Dispatch) -> Running {
    let shutdown = CancellationToken::new();
    let task = tokio::spawn(listen(spec, dispatch, shutdown.clone()));
    Running { shutdown, task }
}

impl Running {
    async fn stop(self) {
        self.shutdown.cancel();
        tokio::time::timeout(Duration::from_secs(5), self.task)
            .await
            .expect("the listener stops on shutdown")
            .unwrap();
    }
}

async fn next(rx: &mut mpsc::UnboundedReceiver<Event>) -> Event {
    tokio::time::timeout(Duration::from_secs(10), rx.recv())
        .await
        .expect("an event within 10s")
        .expect("the listener is running")
}

/// The next `n` events as `(id, event, data)`.
async fn take(
    rx: &mut mpsc::UnboundedReceiver<Event>,
    n: usize,
) -> Vec<(Option<String>, String, String)> {
    let mut out = Vec::new();
    for _ in 0..n {
        let event = next(rx).await;
        out.push((event.id, event.event, event.data));
    }
    out
}

fn ev(id: Option<&str>, event: &str, data: &str) -> (Option<String>, String, String) {
    (id.map(str::to_owned), event.to_owned(), data.to_owned())
}

/// Bounds a test's time.
async fn bounded(test: impl std::future::Future<Output = ()>) {
    tokio::time::timeout(TEST_LIMIT, test)
        .await
        .expect("the test finishes in time");
}

#[tokio::test]
async fn every_shape_of_the_format() {
    bounded(async {
        let server = Server::start(|n, _| {
            assert_eq!(n, 0, "no reconnection");
            ok(vec![
                bytes(b"\xEF\xBB\xBF: a comment right after the BOM\n\n"),
                bytes("retry: 15000\r\nid: 1\r\nevent: price\r\ndata: {\"cents\":1}\r\n\r\n"),
                bytes("data: line one\rdata: line two\r\r"),
                bytes(":keep-alive\n\n: another\n\n"),
                bytes("data:no space\n\ndata:  two spaces\n\n"),
                bytes("id: 2\ndata: first half"),
                Part::Wait(Duration::from_millis(50)),
                bytes(" second half\ndata\ndata: after an empty line\n\n"),
                bytes("event: nothing\n\n"),
                bytes("data: the id persists\n\n"),
                bytes("id: 3\0\ndata: an id with NUL is ignored\n\n"),
                bytes("id\ndata: an empty id resets it\n\n"),
                bytes("data\n\n"),
                bytes("field-without-colon\nunknown: field\ndata: x\n\n"),
                bytes(b"data: \xC3"),
                Part::Wait(Duration::from_millis(20)),
                bytes(b"\xA9t\xC3\xA9 \xFF\r"),
                Part::Wait(Duration::from_millis(20)),
                bytes("\n\r\n"),
                Part::Stall,
            ])
        })
        .await;
        let (dispatch, mut rx) = collect();
        let listener = start(spec(&server.url), dispatch);
        let got = take(&mut rx, 11).await;
        assert_eq!(
            got,
            [
                ev(Some("1"), "price", "{\"cents\":1}"),
                ev(Some("1"), "message", "line one\nline two"),
                ev(Some("1"), "message", "no space"),
                ev(Some("1"), "message", " two spaces"),
                ev(
                    Some("2"),
                    "message",
                    "first half second half\n\nafter an empty line"
                ),
                ev(Some("2"), "message", "the id persists"),
                ev(Some("2"), "message", "an id with NUL is ignored"),
                ev(None, "message", "an empty id resets it"),
                ev(None, "message", ""),
                ev(None, "message", "x"),
                ev(None, "message", "\u{e9}t\u{e9} \u{FFFD}"),
            ]
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
        listener.stop().await;
        assert_eq!(server.requests().len(), 1);
        assert!(rx.try_recv().is_err(), "nothing else was dispatched");
    })
    .await;
}

/// Events `from..=to`, each with its id.
fn numbered(from: u32, to: u32) -> Part {
    let mut text = String::new();
    for n in from..=to {
        text.push_str(&format!("id: {n}\ndata: event {n}\n\n"));
    }
    bytes(text)
}

fn resume_point(headers: &HeaderMap) -> u32 {
    last_event_id(headers).map_or(0, |id| id.parse().unwrap())
}

#[tokio::test]
async fn resumes_with_last_event_id_after_a_broken_and_a_closed_connection() {
    bounded(async {
        let server = Server::start(|n, headers| {
            let from = resume_point(headers) + 1;
            match n {
                // Four events, half of a fifth, then the connection breaks.
                0 => ok(vec![
                    numbered(from, 4),
                    bytes("id: 5\ndata: event 5 (incomplete"),
                    Part::Wait(Duration::from_millis(20)),
                    Part::Abort,
                ]),
                // Up to 7, then a clean end of the stream.
                1 => ok(vec![numbered(from, 7)]),
                _ => ok(vec![numbered(from, 10), Part::Stall]),
            }
        })
        .await;
        let (dispatch, mut rx) = collect();
        let listener = start(spec(&server.url), dispatch);
        let got = take(&mut rx, 10).await;
        let expected: Vec<_> = (1..=10)
            .map(|n| {
                (
                    Some(n.to_string()),
                    "message".to_owned(),
                    format!("event {n}"),
                )
            })
            .collect();
        assert_eq!(got, expected, "every event once, in order");
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert!(rx.try_recv().is_err(), "no event repeated");
        listener.stop().await;
        assert_eq!(
            server.last_event_ids(),
            [None, Some("4".to_owned()), Some("7".to_owned())]
        );
    })
    .await;
}

#[tokio::test]
async fn error_status_and_wrong_content_type_are_retried() {
    bounded(async {
        let server = Server::start(|n, _| match n {
            0 => Reply {
                status: 500,
                content_type: "text/plain",
                parts: vec![bytes("oops")],
            },
            1 => Reply {
                status: 200,
                content_type: "text/html",
                parts: vec![bytes("<html>data: not an event</html>\n\n")],
            },
            2 => Reply {
                status: 204,
                content_type: "text/event-stream",
                parts: vec![],
            },
            _ => ok(vec![bytes("id: 1\ndata: finally\n\n"), Part::Stall]),
        })
        .await;
        let (dispatch, mut rx) = collect();
        let listener = start(spec(&server.url), dispatch);
        assert_eq!(
            take(&mut rx, 1).await,
            [ev(Some("1"), "message", "finally")]
        );
        listener.stop().await;
        assert_eq!(server.requests().len(), 4);
    })
    .await;
}

#[tokio::test]
async fn a_stalled_connection_is_dropped_after_idle_timeout() {
    bounded(async {
        let server = Server::start(|_, headers| match resume_point(headers) {
            0 => ok(vec![numbered(1, 1), Part::Stall]),
            _ => ok(vec![numbered(2, 2), Part::Stall]),
        })
        .await;
        let (dispatch, mut rx) = collect();
        let idle_timeout = Duration::from_millis(300);
        let listener = start(
            ListenerSpec {
                idle_timeout,
                ..spec(&server.url)
            },
            dispatch,
        );
        assert_eq!(
            take(&mut rx, 1).await,
            [ev(Some("1"), "message", "event 1")]
        );
        let stalled = std::time::Instant::now();
        assert_eq!(
            take(&mut rx, 1).await,
            [ev(Some("2"), "message", "event 2")]
        );
        // The idle timer started just before `stalled` was taken: allow for scheduling.
        assert!(
            stalled.elapsed() >= idle_timeout / 2,
            "{:?}",
            stalled.elapsed()
        );
        listener.stop().await;
        assert_eq!(server.last_event_ids(), [None, Some("1".to_owned())]);
    })
    .await;
}

#[tokio::test]
async fn a_request_without_response_is_dropped_after_idle_timeout() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    bounded(async {
        // A bare TCP server: the first connection never gets an answer, the second one does.
        let socket = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/events", socket.local_addr().unwrap());
        let server = tokio::spawn(async move {
            let (silent, _) = socket.accept().await.unwrap();
            let (mut answered, _) = socket.accept().await.unwrap();
            let mut request = Vec::new();
            while !request.ends_with(b"\r\n\r\n") {
                let mut byte = [0u8; 1];
                answered.read_exact(&mut byte).await.unwrap();
                request.push(byte[0]);
            }
            answered
                .write_all(
                    b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n\r\n\
                      id: 1\ndata: at last\n\n",
                )
                .await
                .unwrap();
            // Hold both connections open.
            std::future::pending::<()>().await;
            drop((silent, answered));
        });
        let (dispatch, mut rx) = collect();
        let listener = start(
            ListenerSpec {
                idle_timeout: Duration::from_millis(300),
                ..spec(&url)
            },
            dispatch,
        );
        assert_eq!(
            take(&mut rx, 1).await,
            [ev(Some("1"), "message", "at last")]
        );
        listener.stop().await;
        server.abort();
    })
    .await;
}

#[tokio::test]
async fn keep_alive_comments_keep_a_quiet_stream_open() {
    bounded(async {
        let server = Server::start(|_, _| {
            let mut parts = vec![numbered(1, 1)];
            for _ in 0..8 {
                parts.push(Part::Wait(Duration::from_millis(200)));
                parts.push(bytes(":\n"));
            }
            parts.push(numbered(2, 2));
            parts.push(Part::Stall);
            ok(parts)
        })
        .await;
        let (dispatch, mut rx) = collect();
        let listener = start(
            ListenerSpec {
                idle_timeout: Duration::from_secs(1),
                ..spec(&server.url)
            },
            dispatch,
        );
        assert_eq!(
            take(&mut rx, 2).await.len(),
            2,
            "1.6s of keep-alives in between"
        );
        listener.stop().await;
        assert_eq!(server.requests().len(), 1, "never reconnected");
    })
    .await;
}

#[tokio::test]
async fn the_server_retry_sets_the_reconnection_delay() {
    bounded(async {
        let server = Server::start(|n, _| match n {
            0 => ok(vec![bytes("retry: 50\nid: 1\ndata: a\n\n")]),
            _ => ok(vec![bytes("data: b\n\n"), Part::Stall]),
        })
        .await;
        let (dispatch, mut rx) = collect();
        // Without the server's retry the listener would wait a minute.
        let listener = start(
            ListenerSpec {
                retry_min: Duration::from_secs(60),
                retry_max: Duration::from_secs(60),
                ..spec(&server.url)
            },
            dispatch,
        );
        let started = std::time::Instant::now();
        assert_eq!(
            take(&mut rx, 2).await,
            [ev(Some("1"), "message", "a"), ev(Some("1"), "message", "b")]
        );
        assert!(started.elapsed() < Duration::from_secs(5));
        listener.stop().await;
    })
    .await;
}

#[tokio::test]
async fn a_server_that_closes_after_each_event_is_backed_off() {
    bounded(async {
        // `retry: 0` and the end of the stream after every event: 2,931 connections in 10 s.
        let server =
            Server::start(|n, _| ok(vec![bytes(format!("retry: 0\nid: {n}\ndata: x\n\n"))])).await;
        let (dispatch, mut rx) = collect();
        let listener = start(
            ListenerSpec {
                retry_max: Duration::from_secs(10),
                ..spec(&server.url)
            },
            dispatch,
        );
        tokio::time::sleep(Duration::from_millis(1500)).await;
        listener.stop().await;
        // 100ms, 200ms, 400ms, 800ms (each plus up to 25%) after the first: at most 5 in 1.5s.
        let requests = server.requests().len();
        assert!((2..=5).contains(&requests), "{requests} connections");
        // Every event still arrived.
        let mut received = 0;
        while rx.try_recv().is_ok() {
            received += 1;
        }
        assert_eq!(received, requests);
    })
    .await;
}

#[tokio::test]
async fn an_id_over_1_kib_is_not_sent_back() {
    bounded(async {
        // (Under the test's max_event_bytes of 1 MiB, so the event itself is kept.)
        let long = "x".repeat(100 * 1024);
        let server = Server::start(move |n, _| match n {
            0 => ok(vec![bytes(format!(
                "id: 1\ndata: a\n\nid: {long}\ndata: b\n\n"
            ))]),
            _ => ok(vec![bytes("data: c\n\n"), Part::Stall]),
        })
        .await;
        let (dispatch, mut rx) = collect();
        let listener = start(spec(&server.url), dispatch);
        assert_eq!(
            take(&mut rx, 3).await,
            [
                ev(Some("1"), "message", "a"),
                ev(Some("1"), "message", "b"),
                ev(Some("1"), "message", "c")
            ]
        );
        listener.stop().await;
        assert_eq!(server.last_event_ids(), [None, Some("1".to_owned())]);
    })
    .await;
}

#[tokio::test]
async fn an_id_the_server_refuses_is_forgotten() {
    bounded(async {
        let server = Server::start(|n, headers| match (n, last_event_id(headers)) {
            (0, _) => ok(vec![bytes("id: 7\ndata: a\n\n")]),
            // As a server answers a Last-Event-ID it cannot take: the listener was stuck.
            (_, Some(_)) => Reply {
                status: 431,
                content_type: "text/plain",
                parts: vec![bytes("request header fields too large")],
            },
            (_, None) => ok(vec![bytes("id: 1\ndata: fresh\n\n"), Part::Stall]),
        })
        .await;
        let (dispatch, mut rx) = collect();
        let listener = start(spec(&server.url), dispatch);
        assert_eq!(
            take(&mut rx, 2).await,
            [
                ev(Some("7"), "message", "a"),
                ev(Some("1"), "message", "fresh")
            ]
        );
        listener.stop().await;
        assert_eq!(server.last_event_ids(), [None, Some("7".to_owned()), None]);
    })
    .await;
}

#[tokio::test]
async fn a_server_that_is_down_at_start_up_is_waited_for() {
    bounded(async {
        // A port with nothing listening (yet).
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let url = format!("http://127.0.0.1:{port}/events");
        let (dispatch, mut rx) = collect();
        let listener = start(spec(&url), dispatch);
        tokio::time::sleep(Duration::from_millis(400)).await;
        let socket = tokio::net::TcpListener::bind(("127.0.0.1", port))
            .await
            .unwrap();
        let server = Server::start_on(socket, |_, _| ok(vec![numbered(1, 1), Part::Stall]));
        assert_eq!(
            take(&mut rx, 1).await,
            [ev(Some("1"), "message", "event 1")]
        );
        listener.stop().await;
        assert_eq!(server.requests().len(), 1);
    })
    .await;
}

#[tokio::test]
async fn configured_headers_reach_the_server() {
    bounded(async {
        let server = Server::start(|_, _| ok(vec![numbered(1, 1), Part::Stall])).await;
        let (dispatch, mut rx) = collect();
        let listener = start(
            ListenerSpec {
                headers: vec![
                    ("authorization".into(), "Bearer t0ken".into()),
                    ("x-feed".into(), "prices".into()),
                ],
                ..spec(&server.url)
            },
            dispatch,
        );
        take(&mut rx, 1).await;
        listener.stop().await;
        let headers = &server.requests()[0];
        assert_eq!(headers["accept"], "text/event-stream");
        assert_eq!(headers["cache-control"], "no-cache");
        assert_eq!(headers["authorization"], "Bearer t0ken");
        assert_eq!(headers["x-feed"], "prices");
        assert!(headers["user-agent"]
            .to_str()
            .unwrap()
            .starts_with("farine/"));
        assert!(headers.get("last-event-id").is_none());
    })
    .await;
}

#[tokio::test]
async fn oversized_events_are_skipped() {
    bounded(async {
        let big = format!("id: 1\ndata: {}\n\n", "x".repeat(200));
        let server =
            Server::start(move |_, _| ok(vec![bytes(&big), numbered(2, 2), Part::Stall])).await;
        let (dispatch, mut rx) = collect();
        let listener = start(
            ListenerSpec {
                max_event_bytes: 64,
                ..spec(&server.url)
            },
            dispatch,
        );
        assert_eq!(
            take(&mut rx, 1).await,
            [ev(Some("2"), "message", "event 2")]
        );
        listener.stop().await;
    })
    .await;
}

#[tokio::test]
async fn shutdown_lets_the_current_event_finish_within_grace() {
    bounded(async {
        let server = Server::start(|_, _| ok(vec![numbered(1, 2), Part::Stall])).await;
        // The first event takes 300ms, the second forever.
        let (finished_tx, mut finished) = mpsc::unbounded_channel();
        let (started_tx, mut started) = mpsc::unbounded_channel();
        let dispatch: Dispatch = Arc::new(move |event: Event| {
            let finished_tx = finished_tx.clone();
            let _ = started_tx.send(event.id.clone());
            async move {
                let time = if event.id.as_deref() == Some("1") {
                    300
                } else {
                    1_000_000
                };
                tokio::time::sleep(Duration::from_millis(time)).await;
                let _ = finished_tx.send(event.id);
                Outcome::Done
            }
            .boxed()
        });
        let run = start(
            ListenerSpec {
                shutdown_grace: Duration::from_secs(2),
                ..spec(&server.url)
            },
            dispatch.clone(),
        );
        assert_eq!(started.recv().await, Some(Some("1".into())));
        let asked = std::time::Instant::now();
        run.stop().await;
        assert!(asked.elapsed() < Duration::from_secs(2));
        assert_eq!(
            finished.try_recv(),
            Ok(Some("1".into())),
            "the event in hand finished"
        );
        assert!(
            started.try_recv().is_err(),
            "no event started after shutdown"
        );

        // An event that outlasts the grace is cancelled.
        let run = start(
            ListenerSpec {
                shutdown_grace: Duration::from_millis(200),
                ..spec(&server.url)
            },
            dispatch,
        );
        assert_eq!(started.recv().await, Some(Some("1".into())));
        assert_eq!(started.recv().await, Some(Some("2".into())));
        let asked = std::time::Instant::now();
        run.stop().await;
        let took = asked.elapsed();
        assert!(
            took >= Duration::from_millis(200) && took < Duration::from_secs(2),
            "{took:?}"
        );
    })
    .await;
}

/// Log lines written while the current-thread test runs.
#[derive(Clone, Default)]
struct Logs(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for Logs {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Logs {
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }
}

#[tokio::test]
async fn reconnections_are_logged_without_secrets() {
    let logs = Logs::default();
    let writer = logs.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::TRACE)
        .with_ansi(false)
        .with_writer(move || writer.clone())
        .finish();
    let _guard = tracing::subscriber::set_default(subscriber);
    let listened = std::panic::AssertUnwindSafe(bounded(async {
        let server = Server::start(|n, _| match n {
            0 => Reply {
                status: 503,
                content_type: "text/plain",
                parts: vec![],
            },
            _ => ok(vec![
                numbered(1, 1),
                Part::Wait(Duration::from_millis(20)),
                Part::Abort,
            ]),
        })
        .await;
        let url = server.url.replace("http://", "http://feed:hunter2@");
        let (dispatch, mut rx) = collect();
        let listener = start(
            ListenerSpec {
                headers: vec![("authorization".into(), "Bearer t0ken".into())],
                ..spec(&url)
            },
            dispatch,
        );
        take(&mut rx, 1).await;
        tokio::time::sleep(Duration::from_millis(100)).await;
        listener.stop().await;
        let basic = server.requests()[0]["authorization"].clone();
        assert_eq!(
            basic, "Bearer t0ken",
            "configured headers win over the URL's user"
        );
    }))
    .catch_unwind()
    .await;
    let text = logs.text();
    if std::env::var_os("FARINE_TEST_SHOW_LOGS").is_some() {
        eprintln!("{text}");
    }
    if let Err(panic) = listened {
        eprintln!("{text}");
        std::panic::resume_unwind(panic);
    }
    assert!(
        text.contains("got HTTP status 503 Service Unavailable: reconnecting"),
        "{text}"
    );
    assert!(text.contains("SSE stream broke"), "{text}");
    assert!(text.contains("http://feed:***@127.0.0.1"), "{text}");
    assert!(!text.contains("hunter2"), "{text}");
    assert!(!text.contains("t0ken"), "{text}");
}

#[test]
fn decoding_event_data() {
    #[derive(Debug, Deserialize, PartialEq)]
    struct Price {
        cents: i64,
    }
    assert_eq!(decode::<String>("not json".into()).unwrap(), "not json");
    assert_eq!(decode::<String>("\"quoted\"".into()).unwrap(), "\"quoted\"");
    assert_eq!(
        decode::<serde_json::Value>("{\"a\": [1]}".into()).unwrap(),
        serde_json::json!({"a": [1]})
    );
    assert_eq!(
        decode::<Price>("{\"cents\": 5}".into()).unwrap(),
        Price { cents: 5 }
    );
    assert_eq!(decode::<i64>("42".into()).unwrap(), 42);
    let err = decode::<Price>("{\"cents\": \"five\"}".into()).unwrap_err();
    assert!(
        err.starts_with("event data does not decode as JSON "),
        "{err}"
    );
    assert!(err.contains("Price"), "{err}");
    assert!(decode::<serde_json::Value>("not json".into()).is_err());
    assert!(decode::<serde_json::Value>(String::new()).is_err());
}

fn settings(ini: &str) -> ServiceConfig {
    let text = format!("[DEFAULT]\namqp_uri = amqp://localhost\n{ini}");
    Config::from_str(&text, "farine.ini")
        .unwrap()
        .service("feed")
        .unwrap()
}

#[test]
fn spec_from_settings() {
    let feed = settings(
        "[feed]\nendpoint = https://u:pw@feed.example/v1?x=1\nheader.Authorization = Bearer a\n\
         header.X-Empty = ${FARINE_TEST_UNSET_HEADER:}\nidle_timeout = 2.5\nretry_delay = 50ms\n\
         retry_max_delay = 5s\nmax_message_bytes = 1KiB\nshutdown_grace = 3s\n",
    );
    let spec = ListenerSpec::from_settings("feed.on_event", None, &feed).unwrap();
    assert_eq!(spec.label, "feed.on_event");
    assert_eq!(spec.endpoint, "https://u:pw@feed.example/v1?x=1");
    assert_eq!(
        spec.headers,
        [("authorization".to_owned(), "Bearer a".to_owned())]
    );
    assert_eq!(spec.idle_timeout, Duration::from_millis(2500));
    assert_eq!(spec.retry_min, Duration::from_millis(50));
    assert_eq!(spec.retry_max, Duration::from_secs(5));
    assert_eq!(spec.max_event_bytes, 1024);
    assert_eq!(spec.shutdown_grace, Duration::from_secs(3));
    let debug = format!("{spec:?}");
    assert!(
        !debug.contains("pw@") && !debug.contains("Bearer"),
        "{debug}"
    );

    // The attribute's endpoint wins over the section's.
    let spec =
        ListenerSpec::from_settings("feed.on_event", Some("http://127.0.0.1:9/e"), &feed).unwrap();
    assert_eq!(spec.endpoint, "http://127.0.0.1:9/e");

    // Defaults.
    let spec = ListenerSpec::from_settings(
        "feed.on_event",
        None,
        &settings("[feed]\nendpoint = http://h/\n"),
    )
    .unwrap();
    assert!(spec.headers.is_empty());
    assert_eq!(spec.idle_timeout, DEFAULT_IDLE_TIMEOUT);
    assert_eq!(spec.retry_min, Duration::from_secs(1));
    assert_eq!(spec.retry_max, Duration::from_secs(60));
    let spec = ListenerSpec::from_settings(
        "feed.on_event",
        None,
        &settings("[feed]\nendpoint = http://h/\nidle_timeout = 0\n"),
    )
    .unwrap();
    assert_eq!(spec.idle_timeout, Duration::ZERO);
}

#[test]
fn spec_from_settings_errors() {
    let err = |ini: &str, attribute: Option<&str>| {
        ListenerSpec::from_settings("feed.on_event", attribute, &settings(ini))
            .unwrap_err()
            .to_string()
    };
    assert_eq!(
        err("[feed]\n", None),
        "farine.ini [feed] endpoint: required by #[stream::http] feed.on_event: expected the \
         event stream's http:// or https:// URL, in the service's section or as \
         #[stream::http(endpoint = \"...\")]"
    );
    // A section-less service names the section it would have.
    assert!(err("", None).starts_with("farine.ini [feed] endpoint: required"));
    assert!(err("[feed]\nendpoint = http://\n", None)
        .starts_with("farine.ini [feed] endpoint: expected an http:// or https:// URL"));
    let bad_attribute = err("[feed]\n", Some("ftp://u:secret@h/x"));
    assert!(
        bad_attribute.starts_with("#[stream::http] feed.on_event: endpoint \"ftp://u:***@h/x\""),
        "{bad_attribute}"
    );
    assert_eq!(
        err("[feed]\nendpoint = http://h/\nidle_timeout = soon\n", None),
        "farine.ini [feed] idle_timeout: expected a duration of at most 7 days such as 60s, \
         500ms or 2m, or a number of seconds (0 disables it), got \"soon\""
    );
    assert_eq!(
        err("[feed]\nendpoint = http://h/\nheader.Bad Name = x\n", None),
        "farine.ini [feed] header.bad name: expected an HTTP header name after \"header.\", got \
         \"bad name\""
    );
    let bad_value = err(
        "[feed]\nendpoint = http://h/\nheader.Authorization = secret\x01value\n",
        None,
    );
    assert!(
        bad_value.starts_with("farine.ini [feed] header.authorization: expected a header value")
    );
    assert!(!bad_value.contains("secret"), "{bad_value}");
}

/// The listener through [`run`] and [`event_handler`], with a real service context (so with
/// RabbitMQ on 127.0.0.1:5672): typed data, undecodable data skipped, failures and panics
/// logged and survived.
#[tokio::test]
async fn typed_handler_through_run() {
    #[derive(Debug, Deserialize)]
    struct Price {
        cents: i64,
    }
    struct Feed {
        seen: mpsc::UnboundedSender<(Option<String>, i64)>,
    }
    bounded(async {
        let server = Server::start(|_, _| {
            ok(vec![
                bytes("id: 1\ndata: {\"cents\": 1}\n\n"),
                bytes("id: 2\ndata: not json\n\n"),
                bytes("id: 3\ndata: {\"cents\": 3}\n\n"),
                bytes("id: 4\ndata: {\"cents\": 4}\n\n"),
                bytes("id: 5\nevent: price\ndata: {\"cents\":\ndata: 5}\n\n"),
                Part::Stall,
            ])
        })
        .await;
        let (seen, mut rx) = mpsc::unbounded_channel();
        let handler = event_handler(
            Arc::new(Feed { seen }),
            |feed: Arc<Feed>, _context, event: Event<Price>| async move {
                feed.seen.send((event.id, event.data.cents)).unwrap();
                match event.data.cents {
                    3 => Err("cannot store price 3".to_owned()),
                    4 => panic!("price 4 is cursed"),
                    _ => Ok(()),
                }
            },
        );
        let context = test_context("feed").await;
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(run(spec(&server.url), handler, context, shutdown.clone()));
        let mut got = Vec::new();
        for _ in 0..4 {
            got.push(
                tokio::time::timeout(Duration::from_secs(10), rx.recv())
                    .await
                    .unwrap()
                    .unwrap(),
            );
        }
        let id = |n: &str| Some(n.to_owned());
        assert_eq!(
            got,
            [(id("1"), 1), (id("3"), 3), (id("4"), 4), (id("5"), 5)]
        );
        shutdown.cancel();
        tokio::time::timeout(Duration::from_secs(5), task)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(
            server.requests().len(),
            1,
            "failures do not break the stream"
        );
    })
    .await;
}

#[tokio::test]
async fn handler_outcomes() {
    let context = test_context("feed").await;
    let raw = |data: &str| Event {
        id: Some("7".into()),
        event: "message".into(),
        data: data.to_owned(),
    };
    let echo = event_handler(
        Arc::new(()),
        |_: Arc<()>, _context, event: Event| async move {
            if event.data == "boom" {
                panic!("boom");
            }
            Ok::<_, String>(())
        },
    );
    assert!(matches!(
        echo(context.clone(), raw("{not json")).await,
        Outcome::Done
    ));
    match echo(context.clone(), raw("boom")).await {
        Outcome::Failed(reason) => assert_eq!(reason, "handler panicked: boom"),
        other => panic!("{other:?}"),
    }
    let typed = event_handler(
        Arc::new(()),
        |_: Arc<()>, _context, _event: Event<Vec<u32>>| async {},
    );
    assert!(matches!(
        typed(context.clone(), raw("[1, 2]")).await,
        Outcome::Done
    ));
    match typed(context, raw("[1, \"two\"]")).await {
        Outcome::Poison(reason) => assert!(reason.contains("Vec<u32>"), "{reason}"),
        other => panic!("{other:?}"),
    }
}

/// A service context on the local RabbitMQ.
pub(crate) async fn test_context(service: &str) -> Arc<ServiceContext> {
    let config = Config::from_str(
        "[DEFAULT]\namqp_uri = amqp://guest:guest@127.0.0.1:5672/%2f\n",
        "test.ini",
    )
    .unwrap();
    let settings = Arc::new(config.service(service).unwrap());
    let broker = crate::broker::Broker::connect(&settings.amqp_uri, 30)
        .await
        .expect("RabbitMQ on 127.0.0.1:5672 (guest/guest)");
    Arc::new(ServiceContext::new(
        Arc::new(broker),
        settings,
        Arc::new(config),
        None,
        Default::default(),
    ))
}
