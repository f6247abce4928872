//! The gateway workloads (issue 15): `farine gateway` in a process of its own (this binary
//! again as `farine-bench __serve gateway`, `farine::gateway::Gateway` of the `[gateway]`
//! section the bench writes), its browsers played by the bench process.
//!
//! - `gateway_ws_broadcast`: [`CLIENTS`] WebSockets subscribe to the fanout exchange
//!   [`EXCHANGE`] while a farine `Publisher` broadcasts [`RATE`] events/s on it for
//!   [`BROADCAST_SECONDS`], each `{"n": i, "t": <microseconds since the epoch at publish>}`.
//!   Every client must get every event; the figures are the delivery latency (publish to
//!   receipt in the client), the gateway process's CPU (user + system over wall time) and its
//!   resident memory.
//! - `gateway_rpc`: `calc.add` through the gateway, on WebSockets ([`WS_SOCKETS`] sockets,
//!   [`WS_DEPTH`] calls in flight on each) and on HTTP/1.1 keep-alive connections
//!   ([`HTTP_CONNECTIONS`], one call in flight on each: HTTP/1.1 has no more), against the
//!   same calls made directly with a `farine::Client` ([`DIRECT_DEPTH`] in flight), in
//!   interleaved turns of one run.

use crate::child::{self, Child};
use crate::report::{verdict, Report};
use crate::{cpu_seconds, verbose, Res};
use futures::{SinkExt, StreamExt};
use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use serde::Deserialize;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tokio::net::TcpStream;
use tokio::sync::{watch, Notify};
use tokio::task::JoinSet;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

/// The broadcast exchange (fanout, as `#[rpc::method(broadcast = ...)]` declares) and the
/// config section of its publisher.
pub const EXCHANGE: &str = "bench_gw_broadcast";
/// The bearer token the bench's gateway accepts (authentication on, as deployed).
const TOKEN: &str = "bench-gateway-token";

/// The `[gateway]` section and the broadcast publisher's, added to the run's configuration:
/// calls per second raised from the default 100 (all the bench's connections come from one
/// address), the rest at the defaults.
pub fn ini_sections() -> String {
    format!(
        "[gateway]\nlisten = 127.0.0.1:0\nexpose = calc.add\nsubscribe = {EXCHANGE}\n\
         auth_tokens = {TOKEN}\nmax_calls_per_second = 1000000\n\
         [{EXCHANGE}]\ntype = fanout\n"
    )
}

/// Clients of `gateway_ws_broadcast` (`FARINE_BENCH_CLIENTS` overrides it).
const CLIENTS: usize = 1_000;

fn clients() -> usize {
    std::env::var("FARINE_BENCH_CLIENTS")
        .ok()
        .and_then(|n| n.parse().ok())
        .filter(|n| *n > 0)
        .unwrap_or(CLIENTS)
}
/// Broadcasts per second.
const RATE: u64 = 100;
const BROADCAST_SECONDS: f64 = 10.0;
/// Handshakes in progress at once while the clients connect.
const CONNECTING: usize = 64;
/// How long the last events may take to reach every client after the last publish.
const GRACE: Duration = Duration::from_secs(10);

const WS_SOCKETS: usize = 4;
const WS_DEPTH: usize = 16;
const HTTP_CONNECTIONS: usize = 64;
const DIRECT_DEPTH: usize = WS_SOCKETS * WS_DEPTH;
const TARGET_RPC_VS_DIRECT: f64 = 0.7;

type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

fn now_micros() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as u64)
}

/// A WebSocket to the gateway's `/ws`, authenticated, with `TCP_NODELAY` (as browsers set).
async fn connect(addr: SocketAddr) -> Res<Ws> {
    let tcp = TcpStream::connect(addr).await?;
    tcp.set_nodelay(true)?;
    let mut request = format!("ws://{addr}/ws").into_client_request()?;
    request
        .headers_mut()
        .insert("authorization", format!("Bearer {TOKEN}").parse()?);
    // A small read buffer, as the gateway's: tungstenite zeroes the whole buffer (128 KiB by
    // default) before every read, which would make a thousand clients the slow part.
    let config = WebSocketConfig::default().read_buffer_size(4 << 10);
    let (ws, _) = tokio_tungstenite::client_async_with_config(
        request,
        MaybeTlsStream::Plain(tcp),
        Some(config),
    )
    .await?;
    Ok(ws)
}

pub async fn run(broadcast: bool, rpc: bool, report: &mut Report, scale: f64) -> Res<()> {
    // The exchange exists before the gateway starts (it looks for a missing one every 2 s).
    let publisher = farine::Publisher::new(EXCHANGE, EXCHANGE, "").mandatory(false);
    publisher.send(&serde_json::json!({ "warm": true })).await?;
    let gateway = Child::spawn("gateway").await?;
    let addr: SocketAddr = gateway
        .ready_with()
        .parse()
        .map_err(|err| format!("gateway address {:?}: {err}", gateway.ready_with()))?;
    if verbose() {
        eprintln!("gateway listening on {addr}");
    }
    if broadcast {
        ws_broadcast(&gateway, addr, &publisher, report, scale).await?;
    }
    if rpc {
        let calc = Child::spawn("farine-calc").await?;
        rpc_ratio(&gateway, &calc, addr, report, scale).await?;
        calc.stop().await;
    }
    gateway.stop().await;
    Ok(())
}

// ------------------------------------------------------------------ broadcast

/// `{"event": ..., "id": ..., "data": {...}}`, as far as a client looks; `{"subscribed": ...}`.
#[derive(Deserialize)]
struct Incoming {
    data: Option<Data>,
    subscribed: Option<serde::de::IgnoredAny>,
}

#[derive(Deserialize)]
struct Data {
    n: Option<u64>,
    t: Option<u64>,
    warm: Option<bool>,
}

/// What one client saw of the measured events.
struct Seen {
    /// Latency in microseconds per event `n`; `u32::MAX` when it did not arrive.
    latency: Vec<u32>,
    duplicates: u64,
}

/// What the clients share.
struct Shared {
    /// Clients subscribed; clients that got a warm-up event; clients that got every event.
    subscribed: AtomicUsize,
    warm: AtomicUsize,
    complete: AtomicUsize,
    changed: Notify,
}

impl Shared {
    fn bump(&self, counter: &AtomicUsize) {
        counter.fetch_add(1, Ordering::Relaxed);
        self.changed.notify_waiters();
    }

    /// Waits until `counter` reaches `want`, at most `within`; returns its value.
    async fn reach(&self, counter: &AtomicUsize, want: usize, within: Duration) -> usize {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let notified = self.changed.notified();
            let now = counter.load(Ordering::Relaxed);
            if now >= want {
                return now;
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return counter.load(Ordering::Relaxed);
            }
        }
    }
}

/// One browser: subscribes, then records each event's latency until told to stop.
async fn listener(
    mut ws: Ws,
    events: usize,
    shared: Arc<Shared>,
    mut stop: watch::Receiver<bool>,
) -> Res<Seen> {
    ws.send(Message::text(format!("{{\"subscribe\":\"{EXCHANGE}\"}}")))
        .await?;
    let mut seen = Seen {
        latency: vec![u32::MAX; events],
        duplicates: 0,
    };
    let (mut warm, mut got) = (false, 0usize);
    loop {
        let message = tokio::select! {
            message = ws.next() => message,
            _ = stop.changed() => break,
        };
        let text = match message {
            Some(Ok(Message::Text(text))) => text,
            Some(Ok(Message::Close(frame))) => {
                return Err(format!("the gateway closed a client's socket: {frame:?}").into())
            }
            Some(Ok(_)) => continue,
            Some(Err(err)) => return Err(err.into()),
            None => return Err("the gateway closed a client's socket".into()),
        };
        let now = now_micros();
        let incoming: Incoming =
            serde_json::from_str(&text).map_err(|err| format!("a client got {text:?}: {err}"))?;
        if incoming.subscribed.is_some() {
            shared.bump(&shared.subscribed);
            continue;
        }
        let Some(data) = incoming.data else {
            return Err(format!("a client got {text:?}").into());
        };
        match (data.n, data.t, data.warm) {
            (_, _, Some(true)) => {
                if !warm {
                    warm = true;
                    shared.bump(&shared.warm);
                }
            }
            (Some(n), Some(t), _) if (n as usize) < events => {
                let slot = &mut seen.latency[n as usize];
                if *slot != u32::MAX {
                    seen.duplicates += 1;
                    continue;
                }
                *slot = now.saturating_sub(t).min(u64::from(u32::MAX - 1)) as u32;
                got += 1;
                if got == events {
                    shared.bump(&shared.complete);
                }
            }
            _ => return Err(format!("a client got {text:?}").into()),
        }
    }
    let _ = ws.close(None).await;
    Ok(seen)
}

async fn ws_broadcast(
    gateway: &Child,
    addr: SocketAddr,
    publisher: &farine::Publisher,
    report: &mut Report,
    scale: f64,
) -> Res<()> {
    let clients = clients();
    let events = ((RATE as f64 * BROADCAST_SECONDS * scale) as usize).max(10);
    let idle_mib = gateway.rss_mib();
    let shared = Arc::new(Shared {
        subscribed: AtomicUsize::new(0),
        warm: AtomicUsize::new(0),
        complete: AtomicUsize::new(0),
        changed: Notify::new(),
    });
    let (stop, stopped) = watch::channel(false);

    // Connect and subscribe every client, CONNECTING handshakes at a time.
    let connecting = Instant::now();
    let mut sockets = futures::stream::iter(0..clients)
        .map(|_| connect(addr))
        .buffer_unordered(CONNECTING);
    let mut listeners = JoinSet::new();
    while let Some(ws) = sockets.next().await {
        listeners.spawn(listener(ws?, events, shared.clone(), stopped.clone()));
    }
    let subscribed = shared
        .reach(&shared.subscribed, clients, Duration::from_secs(30))
        .await;
    if subscribed < clients {
        return Err(
            format!("only {subscribed} of {clients} clients subscribed within 30 s").into(),
        );
    }
    let connect_time = connecting.elapsed();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let connected_mib = gateway.rss_mib();

    // Warm-up: until every client got an event (the gateway's queue is bound), then 1 s more.
    let mut tick = tokio::time::interval(Duration::from_micros(1_000_000 / RATE));
    let warm_deadline = Instant::now() + Duration::from_secs(30);
    let mut warm_after: Option<Instant> = None;
    loop {
        tick.tick().await;
        publisher.send(&serde_json::json!({ "warm": true })).await?;
        if warm_after.is_none() && shared.warm.load(Ordering::Relaxed) == clients {
            warm_after = Some(Instant::now() + Duration::from_secs(1));
        }
        if warm_after.is_some_and(|t| Instant::now() >= t) {
            break;
        }
        if Instant::now() > warm_deadline {
            let warm = shared.warm.load(Ordering::Relaxed);
            return Err(
                format!("only {warm} of {clients} clients got an event within 30 s").into(),
            );
        }
    }

    // Measured: `events` broadcasts at RATE/s, each sent on its own task so that a slow
    // confirm does not shift the next ones; then until every client has them all.
    let me = std::process::id();
    let (gateway_cpu, clients_cpu) = (cpu_seconds(gateway.pid()), cpu_seconds(me));
    let start = Instant::now();
    let mut sends = JoinSet::new();
    tick.reset();
    for n in 0..events as u64 {
        tick.tick().await;
        let publisher = publisher.clone();
        sends.spawn(async move {
            publisher
                .send(&serde_json::json!({ "n": n, "t": now_micros() }))
                .await
        });
    }
    let published = start.elapsed();
    while let Some(sent) = sends.join_next().await {
        sent??;
    }
    let complete = shared.reach(&shared.complete, clients, GRACE).await;
    let wall = start.elapsed();
    let gateway_cpu = cpu_seconds(gateway.pid()) - gateway_cpu;
    let clients_cpu = cpu_seconds(me) - clients_cpu;
    let (rss, hwm) = (gateway.rss_mib(), gateway.hwm_mib());
    let _ = stop.send(true);

    let mut latencies = Vec::with_capacity(clients * events);
    let mut by_event: Vec<Vec<u32>> = vec![Vec::new(); events];
    let (mut lost, mut duplicates, mut short_clients) = (0u64, 0u64, 0usize);
    while let Some(seen) = listeners.join_next().await {
        let seen = seen??;
        for (n, latency) in seen.latency.iter().enumerate() {
            if *latency != u32::MAX && verbose() {
                by_event[n].push(*latency);
            }
        }
        let before = latencies.len();
        latencies.extend(seen.latency.iter().copied().filter(|l| *l != u32::MAX));
        let missing = events - (latencies.len() - before);
        lost += missing as u64;
        short_clients += usize::from(missing > 0);
        duplicates += seen.duplicates;
    }
    if verbose() {
        // The median latency of each tenth of the events, in order: a latency that grows
        // from tenth to tenth is a gateway (or machine) that does not keep up.
        let tenths: Vec<String> = (0..10)
            .map(|k| {
                let mut part: Vec<u32> = by_event
                    .iter()
                    .skip(k * events / 10)
                    .take(events / 10)
                    .flatten()
                    .copied()
                    .collect();
                part.sort_unstable();
                part.get(part.len() / 2)
                    .map_or("-".into(), |us| format!("{:.1}", f64::from(*us) / 1000.0))
            })
            .collect();
        eprintln!(
            "  median latency (ms) per tenth of the events: {}",
            tenths.join(" ")
        );
    }
    latencies.sort_unstable();
    let at = |q: f64| {
        latencies
            .get(((latencies.len().max(1) - 1) as f64 * q) as usize)
            .map_or(f64::NAN, |us| f64::from(*us) / 1000.0)
    };
    let (p50, p99, max) = (at(0.5), at(0.99), at(1.0));
    let expected = (clients * events) as u64;
    let mib = |m: Option<f64>| m.map_or("?".to_string(), |m| format!("{m:.1}MiB"));
    let ok = lost == 0 && duplicates == 0;
    if verbose() {
        eprintln!(
            "  gateway_ws_broadcast: {clients} clients connected and subscribed in {connect_time:.2?}; \
             {events} events published in {published:.2?}; {complete} clients complete; \
             window {wall:.2?}; clients' CPU {clients_cpu:.2}s"
        );
    }
    report.other(
        format!(
            "{}  clients={clients}  events={events} ({RATE}/s)  delivered={}/{expected}  lost={lost} \
             (clients short: {short_clients})  duplicates={duplicates}  latency p50={p50:.1}ms \
             p99={p99:.1}ms max={max:.1}ms  gateway_cpu={:.2} ({gateway_cpu:.2}s in {:.1}s)  \
             gateway_rss={} (idle {}, {clients} subscribed {})  gateway_hwm={}  clients_cpu={:.2}  \
             targets: every event to every client  {}",
            "gateway_ws_broadcast",
            latencies.len(),
            gateway_cpu / wall.as_secs_f64(),
            wall.as_secs_f64(),
            mib(rss),
            mib(idle_mib),
            mib(connected_mib),
            mib(hwm),
            clients_cpu / wall.as_secs_f64(),
            verdict(ok)
        ),
        &format!("gateway_ws_broadcast ({clients} WebSockets, {RATE} events/s)"),
        format!(
            "{}/{expected} delivered, latency p50 {p50:.1} ms, p99 {p99:.1} ms, max {max:.1} ms; \
             gateway CPU {:.2} of a core, RSS {} ({} idle), peak {}",
            latencies.len(),
            gateway_cpu / wall.as_secs_f64(),
            mib(rss),
            mib(idle_mib),
            mib(hwm)
        ),
        format!("every event to every client: {}", verdict(ok)),
    );
    // The gateway's resident memory is not expected to fall back, but say it.
    if verbose() {
        tokio::time::sleep(Duration::from_millis(500)).await;
        eprintln!(
            "  gateway RSS after the clients left: {}",
            mib(child::status_mib(gateway.pid(), "VmRSS:"))
        );
    }
    Ok(())
}

// ------------------------------------------------------------------ rpc

#[derive(Clone, Copy, Debug, PartialEq)]
enum Side {
    Direct,
    Ws,
    Http,
}

/// Twelve turns, each side four times and in every position of a round of three alike.
const TURNS: [Side; 12] = [
    Side::Direct,
    Side::Ws,
    Side::Http,
    Side::Http,
    Side::Ws,
    Side::Direct,
    Side::Ws,
    Side::Http,
    Side::Direct,
    Side::Direct,
    Side::Http,
    Side::Ws,
];

/// `{"id": n, "result": n + 1}` (or an error).
#[derive(Deserialize)]
struct Reply {
    id: i64,
    result: Option<i64>,
    error: Option<serde_json::Value>,
}

fn check(id: i64, result: Option<i64>, error: Option<serde_json::Value>) -> Res<()> {
    match (result, error) {
        (Some(sum), _) => crate::expect_sum(sum, id),
        (_, error) => Err(format!("calc.add({id}, 1) through the gateway: {error:?}").into()),
    }
}

/// `depth` calls in flight on one socket until `deadline`, then the last replies; the calls
/// completed.
async fn ws_calls(ws: &mut Ws, base: i64, depth: usize, deadline: Instant) -> Res<u64> {
    let call = |i: i64| {
        Message::text(format!(
            "{{\"id\":{i},\"call\":\"calc.add\",\"args\":[{i},1]}}"
        ))
    };
    let (mut next, mut in_flight, mut done) = (base, 0usize, 0u64);
    for _ in 0..depth {
        ws.feed(call(next)).await?;
        next += 1;
        in_flight += 1;
    }
    ws.flush().await?;
    while in_flight > 0 {
        let text = match ws.next().await {
            Some(Ok(Message::Text(text))) => text,
            Some(Ok(_)) => continue,
            Some(Err(err)) => return Err(err.into()),
            None => return Err("the gateway closed an RPC socket".into()),
        };
        let reply: Reply = serde_json::from_str(&text)
            .map_err(|err| format!("an RPC socket got {text:?}: {err}"))?;
        check(reply.id, reply.result, reply.error)?;
        in_flight -= 1;
        done += 1;
        if Instant::now() < deadline {
            ws.send(call(next)).await?;
            next += 1;
            in_flight += 1;
        }
    }
    Ok(done)
}

/// One HTTP/1.1 keep-alive connection to the gateway.
struct Http {
    sender: hyper::client::conn::http1::SendRequest<Full<Bytes>>,
    host: String,
}

impl Http {
    async fn connect(addr: SocketAddr) -> Res<Http> {
        let tcp = TcpStream::connect(addr).await?;
        tcp.set_nodelay(true)?;
        let (sender, connection) =
            hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tcp)).await?;
        tokio::spawn(connection);
        Ok(Http {
            sender,
            host: addr.to_string(),
        })
    }

    async fn add(&mut self, i: i64) -> Res<()> {
        let request = hyper::Request::post("/rpc/calc/add")
            .header("host", &self.host)
            .header("content-type", "application/json")
            .header("authorization", format!("Bearer {TOKEN}"))
            .body(Full::new(Bytes::from(format!("[{i},1]"))))?;
        self.sender.ready().await?;
        let response = self.sender.send_request(request).await?;
        let status = response.status();
        let body = response.into_body().collect().await?.to_bytes();
        if !status.is_success() {
            return Err(format!(
                "POST /rpc/calc/add: {status} {}",
                String::from_utf8_lossy(&body)
            )
            .into());
        }
        let sum: i64 = serde_json::from_slice(&body)?;
        crate::expect_sum(sum, i)
    }
}

struct Rpc {
    client: farine::Client,
    sockets: Vec<Ws>,
    connections: Vec<Http>,
    next: i64,
}

impl Rpc {
    /// One side's calls for `duration`; the calls completed and the time until the last did.
    async fn turn(&mut self, side: Side, duration: Duration) -> Res<(u64, Duration)> {
        let start = Instant::now();
        let deadline = start + duration;
        let base = self.next;
        self.next += 1_000_000_000;
        let done = match side {
            Side::Direct => {
                let mut tasks = JoinSet::new();
                for worker in 0..DIRECT_DEPTH as i64 {
                    let client = self.client.clone();
                    tasks.spawn(async move {
                        let mut i = base + worker * 1_000_000;
                        let mut done = 0u64;
                        while Instant::now() < deadline {
                            let sum = client
                                .call("calc", "add", serde_json::json!([i, 1]))
                                .await?;
                            crate::expect_sum(sum.as_i64().unwrap_or(i64::MIN), i)?;
                            i += 1;
                            done += 1;
                        }
                        Ok::<u64, crate::BoxError>(done)
                    });
                }
                let mut total = 0;
                while let Some(done) = tasks.join_next().await {
                    total += done??;
                }
                total
            }
            Side::Ws => {
                let calls =
                    self.sockets.iter_mut().enumerate().map(|(k, ws)| {
                        ws_calls(ws, base + k as i64 * 10_000_000, WS_DEPTH, deadline)
                    });
                futures::future::try_join_all(calls).await?.iter().sum()
            }
            Side::Http => {
                let calls = self
                    .connections
                    .iter_mut()
                    .enumerate()
                    .map(|(k, http)| async move {
                        let mut i = base + k as i64 * 1_000_000;
                        let mut done = 0u64;
                        while Instant::now() < deadline {
                            http.add(i).await?;
                            i += 1;
                            done += 1;
                        }
                        Ok::<u64, crate::BoxError>(done)
                    });
                futures::future::try_join_all(calls).await?.iter().sum()
            }
        };
        Ok((done, start.elapsed()))
    }
}

/// Calls, time, and the CPU of the gateway and of calc meanwhile, summed over turns.
#[derive(Default, Clone, Copy)]
struct Tally {
    count: u64,
    time: Duration,
    gateway_cpu: f64,
    calc_cpu: f64,
    /// The bench process's: the farine `Client`, or the WebSocket and HTTP clients.
    bench_cpu: f64,
    /// RabbitMQ's, when its `beam.smp` runs on this machine.
    broker_cpu: f64,
}

impl Tally {
    fn rate(&self) -> f64 {
        self.count as f64 / self.time.as_secs_f64().max(1e-9)
    }

    fn per_call_us(&self, cpu: f64) -> f64 {
        cpu * 1e6 / self.count.max(1) as f64
    }
}

async fn rpc_ratio(
    gateway: &Child,
    calc: &Child,
    addr: SocketAddr,
    report: &mut Report,
    scale: f64,
) -> Res<()> {
    let config = farine::Config::from_env()?;
    let mut rpc = Rpc {
        client: farine::Client::connect(&config).await?,
        sockets: Vec::new(),
        connections: Vec::new(),
        next: 0,
    };
    for _ in 0..WS_SOCKETS {
        rpc.sockets.push(connect(addr).await?);
    }
    for _ in 0..HTTP_CONNECTIONS {
        rpc.connections.push(Http::connect(addr).await?);
    }
    let warm = crate::WARM_UP.mul_f64(scale);
    for side in [Side::Direct, Side::Ws, Side::Http] {
        rpc.turn(side, warm).await?;
    }
    let turn = crate::RPC_TURN.mul_f64(scale);
    let mut tallies = [Tally::default(); 3];
    let (me, broker) = (std::process::id(), crate::slow::rabbit_pid());
    for side in TURNS {
        let (gateway_cpu, calc_cpu, bench_cpu, broker_cpu) = (
            cpu_seconds(gateway.pid()),
            cpu_seconds(calc.pid()),
            cpu_seconds(me),
            broker.map_or(0.0, cpu_seconds),
        );
        let (count, time) = rpc.turn(side, turn).await?;
        let tally = &mut tallies[side as usize];
        tally.count += count;
        tally.time += time;
        tally.gateway_cpu += cpu_seconds(gateway.pid()) - gateway_cpu;
        tally.calc_cpu += cpu_seconds(calc.pid()) - calc_cpu;
        tally.bench_cpu += cpu_seconds(me) - bench_cpu;
        tally.broker_cpu += broker.map_or(0.0, cpu_seconds) - broker_cpu;
        if verbose() {
            eprintln!(
                "  turn {side:?}: {count} in {time:.2?} = {:.0}/s",
                count as f64 / time.as_secs_f64()
            );
        }
    }
    for ws in &mut rpc.sockets {
        let _ = ws.close(None).await;
    }
    let [direct, ws, http] = tallies;
    if verbose() {
        for (side, tally) in [("direct", direct), ("ws", ws), ("http", http)] {
            eprintln!(
                "  gateway_rpc {side}: {} calls, {:.0}/s, CPU per call: bench (callers) {:.0}us, gateway {:.0}us, calc {:.0}us, broker {:.0}us",
                tally.count,
                tally.rate(),
                tally.per_call_us(tally.bench_cpu),
                tally.per_call_us(tally.gateway_cpu),
                tally.per_call_us(tally.calc_cpu),
                tally.per_call_us(tally.broker_cpu)
            );
        }
    }
    let (ws_ratio, http_ratio) = (
        ws.rate() / direct.rate().max(1e-9),
        http.rate() / direct.rate().max(1e-9),
    );
    let ok = ws_ratio >= TARGET_RPC_VS_DIRECT && http_ratio >= TARGET_RPC_VS_DIRECT;
    report.other(
        format!(
            "{:<17}direct={:.0}/s  ws={:.0}/s  http={:.0}/s  ws_vs_direct={ws_ratio:.2}  \
             http_vs_direct={http_ratio:.2}  gateway_cpu_per_call: ws={:.0}us http={:.0}us  \
             ({DIRECT_DEPTH} in flight each: {WS_SOCKETS} sockets x {WS_DEPTH}, \
             {HTTP_CONNECTIONS} keep-alive connections)  targets: >={TARGET_RPC_VS_DIRECT:.2} direct  {}",
            "gateway_rpc",
            direct.rate(),
            ws.rate(),
            http.rate(),
            ws.per_call_us(ws.gateway_cpu),
            http.per_call_us(http.gateway_cpu),
            verdict(ok)
        ),
        "gateway_rpc (calc.add, 64 in flight)",
        format!(
            "WebSocket {:.0}/s ({ws_ratio:.2}), HTTP {:.0}/s ({http_ratio:.2}), direct farine \
             Client {:.0}/s",
            ws.rate(),
            http.rate(),
            direct.rate()
        ),
        format!(">={TARGET_RPC_VS_DIRECT:.2} x direct: {}", verdict(ok)),
    );
    report.ratios(format!(
        "{ws_ratio:.2} WebSocket, {http_ratio:.2} HTTP over direct"
    ));
    Ok(())
}
