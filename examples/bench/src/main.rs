//! `farine-bench`: the workloads of BENCH.md, each measured with farine and with two bare
//! lapin baselines in the same run (the **same-guarantee** one, farine's guarantees written
//! by hand, and the **minimal** one, what RabbitMQ does with nothing extra), printed one line
//! per workload:
//!
//! ```text
//! rpc_seq        farine=1700/s  same=1750/s  minimal=3300/s  vs_same=0.97  vs_minimal=0.52  targets: >=0.95 same, >=0.80 minimal  BELOW
//! ```
//!
//! Usage: `cargo run --release -p farine-bench -- [--markdown] [--metrics]
//! [--observe=on|off] [workload]...` (no workload: all but those of `ON_REQUEST`; see
//! `WORKLOADS`). `--observe=on`: the farine services run as deployed with tracing and metrics
//! on (level `info`, so their `farine.handle` spans are made, and `http_listen =
//! 127.0.0.1:0`); `--observe=off`: without the tracing middleware and without metrics (level
//! `warn`), to measure what they cost; neither: tracing on at level `warn`, no metrics.
//! `--metrics` (implies `--observe=on`): each farine service's `/metrics` is read before and
//! after `rpc_seq` and `events`, and around 1000 calls of `bench_relay.add` (which calls
//! `calc.add` from within `calc`'s process), and the moves of the delivery and RPC client
//! series are printed. The services run in their own processes, as deployed: this binary
//! started again as `farine-bench __serve <kind>` (see `serve`), the gateway of the
//! `gateway_*` workloads too (see `gateway`).
//! Each side is warmed up first. `rpc_seq` rotates the three sides call by call; the other
//! workloads give them short turns (see `TURNS`): either way a drift of a shared machine
//! weighs on all alike.

mod baseline;
mod child;
mod counter;
mod db;
mod events;
mod gateway;
mod memory;
mod profile;
mod relay;
mod report;
mod scrape;
mod serve;
mod slow;

use baseline::{Flavor, RpcClient, Settings};
use calc::CalcClient;
use child::Child;
use futures::{StreamExt, TryStreamExt};
use report::Report;
use std::future::Future;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::task::JoinSet;

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;
pub type Res<T> = Result<T, BoxError>;

const WORKLOADS: &[&str] = &[
    "memory_rpc_seq",
    "memory_events",
    "rpc_seq",
    "rpc_pipelined",
    "events",
    "events_transient",
    "rpc_stream",
    "rpc_db",
    "idle_rss",
    "gateway_rpc",
    "gateway_ws_broadcast",
    "stream_slow",
];
/// Not part of a run without arguments: `stream_slow` takes a minute and grows memory on
/// purpose, `gateway_ws_broadcast` opens a thousand sockets for half a minute.
const ON_REQUEST: &[&str] = &["gateway_ws_broadcast", "stream_slow"];
const DEFAULT_INI: &str = "[DEFAULT]\namqp_uri = amqp://guest:guest@127.0.0.1:5672/%2f\n\
    [bench_db]\ndb_connector = postgres\ndb_url = postgres://postgres@127.0.0.1:5432/test\n";
/// Set for the service processes by `--metrics`: `calc`'s process runs `bench_relay` too.
pub const METRICS_ENV: &str = "FARINE_BENCH_METRICS";
/// Set for the service processes by `--observe=on|off`.
pub const OBSERVE_ENV: &str = "FARINE_BENCH_OBSERVE";

/// `--observe=on` (`Some(true)`), `--observe=off` (`Some(false)`), or neither.
pub fn observe() -> Option<bool> {
    match std::env::var(OBSERVE_ENV).ok()?.as_str() {
        "on" => Some(true),
        "off" => Some(false),
        _ => None,
    }
}

/// `ini` with `key = value` in its `[DEFAULT]` section (added at the top if it has none).
fn with_default_key(ini: &str, key: &str, value: &str) -> String {
    let mut out = String::new();
    let mut added = false;
    for line in ini.lines() {
        out.push_str(line);
        out.push('\n');
        if !added && line.trim().eq_ignore_ascii_case("[default]") {
            out.push_str(&format!("{key} = {value}\n"));
            added = true;
        }
    }
    if added {
        out
    } else {
        format!("[DEFAULT]\n{key} = {value}\n{out}")
    }
}

/// The section of the farine publisher of `events_transient`, added to whatever
/// configuration the run uses: farine's defaults but `delivery_mode = 1`.
const TRANSIENT_SECTION: &str = "bench_events_transient";

/// Time per turn of the timed RPC workloads (twelve turns: four per side).
const RPC_TURN: Duration = Duration::from_millis(750);
const WARM_UP: Duration = Duration::from_millis(400);
const PIPELINE_DEPTH: usize = 64;
/// Messages per turn of the events workloads.
const EVENTS_TURN: u64 = 5_000;
const EVENTS_WARM_UP: u64 = 2_000;
/// Messages a publisher has in flight (published, not yet confirmed).
const PUBLISH_WINDOW: usize = 256;
/// Items of `count(n)`, as BENCH.md says.
const STREAM_ITEMS: u32 = 10_000;

// The targets of BENCH.md.
const TARGET_RPC_VS_SAME: f64 = 0.95;
const TARGET_RPC_VS_MINIMAL: f64 = 0.80;
const TARGET_EVENTS_VS_SAME: f64 = 0.95;
const TARGET_EVENTS_TRANSIENT_VS_MINIMAL: f64 = 0.90;
const TARGET_STREAM_VS_MINIMAL_EVENTS: f64 = 1.0;
const TARGET_DB_VS_SEQ: f64 = 0.80;
const TARGET_IDLE_MIB: f64 = 10.0;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(String::as_str) == Some("__serve") {
        return serve::main(args.get(1).map(String::as_str).unwrap_or(""));
    }
    if args.first().map(String::as_str) == Some("__calls") {
        return profile::main(&args[1..]);
    }
    if args.first().map(String::as_str) == Some("__slow_reader") {
        return slow::reader_main(&args[1..]);
    }
    if args.iter().any(|a| a == "-h" || a == "--help") {
        println!(
            "usage: farine-bench [--markdown] [--metrics] [--observe=on|off] [{}]...\n\
             (no workload: all but {}; --markdown: a Markdown table after the lines;\n\
             --observe=on|off: tracing and metrics on, or tracing off and no metrics;\n\
             --metrics: the services' /metrics moves around rpc_seq, events and relayed calls)\n\
             RabbitMQ from FARINE_INI, else amqp://guest:guest@127.0.0.1:5672/%2f;\n\
             FARINE_BENCH_SCALE=0.5 halves every duration and message count.",
            WORKLOADS.join("|"),
            ON_REQUEST.join(", ")
        );
        return ExitCode::SUCCESS;
    }
    let mut markdown = false;
    let mut metrics = false;
    let mut observe = None;
    let mut selected: Vec<&'static str> = Vec::new();
    for arg in &args {
        match arg.as_str() {
            "--markdown" => {
                markdown = true;
                continue;
            }
            "--metrics" => {
                metrics = true;
                continue;
            }
            "--observe=on" => {
                observe = Some(true);
                continue;
            }
            "--observe=off" => {
                observe = Some(false);
                continue;
            }
            _ => {}
        }
        match WORKLOADS.iter().find(|w| **w == arg.as_str()) {
            Some(w) => selected.push(w),
            None => {
                eprintln!(
                    "farine-bench: unknown workload {arg:?} (known: {})",
                    WORKLOADS.join(", ")
                );
                return ExitCode::FAILURE;
            }
        }
    }
    if selected.is_empty() {
        selected = WORKLOADS
            .iter()
            .filter(|w| !ON_REQUEST.contains(w))
            .copied()
            .collect();
    }

    // One configuration for this process and the service processes: FARINE_INI's (or the
    // default) with the section of the transient publisher added, written to a file that
    // FARINE_INI then names (a `Publisher` outside a running service, and the service
    // processes, read their settings from FARINE_INI).
    let base = match std::env::var(farine::config::ENV_VAR) {
        Ok(path) if !path.is_empty() => match std::fs::read_to_string(&path) {
            Ok(text) => text,
            Err(err) => {
                eprintln!("farine-bench: cannot read {path}: {err}");
                return ExitCode::FAILURE;
            }
        },
        _ => DEFAULT_INI.to_string(),
    };
    if metrics && observe == Some(false) {
        eprintln!("farine-bench: --metrics needs the metrics: not with --observe=off");
        return ExitCode::FAILURE;
    }
    if metrics {
        observe = Some(true);
    }
    // Read by the service processes (their environment is this one's).
    match observe {
        Some(on) => std::env::set_var(OBSERVE_ENV, if on { "on" } else { "off" }),
        None => std::env::remove_var(OBSERVE_ENV),
    }
    if metrics {
        std::env::set_var(METRICS_ENV, "1");
    } else {
        std::env::remove_var(METRICS_ENV);
    }
    let mut ini = format!(
        "{base}\n[{TRANSIENT_SECTION}]\ndelivery_mode = 1\n{}",
        gateway::ini_sections()
    );
    if observe == Some(true) {
        // Each service process serves /metrics on a port of its own.
        ini = with_default_key(&ini, "http_listen", "127.0.0.1:0");
    }
    let path = std::env::temp_dir().join(format!("farine-bench-{}.ini", std::process::id()));
    if let Err(err) = std::fs::write(&path, &ini) {
        eprintln!("farine-bench: cannot write {}: {err}", path.display());
        return ExitCode::FAILURE;
    }
    std::env::set_var(farine::config::ENV_VAR, &path);
    let config = farine::Config::from_str(&ini, path.display().to_string());
    let mut report = Report::new(markdown);
    let outcome = match config {
        Ok(config) => match tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
        {
            Ok(runtime) => runtime.block_on(run(config, &selected, &mut report, metrics)),
            Err(err) => Err(err.into()),
        },
        Err(err) => Err(err.into()),
    };
    let _ = std::fs::remove_file(path);
    report.finish(&args);
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("farine-bench: {err}");
            ExitCode::FAILURE
        }
    }
}

fn scale() -> f64 {
    std::env::var("FARINE_BENCH_SCALE")
        .ok()
        .and_then(|s| s.parse::<f64>().ok())
        .filter(|s| *s > 0.0)
        .unwrap_or(1.0)
}

/// `FARINE_BENCH_VERBOSE=1`: service process ids and every turn's figure on stderr.
fn verbose() -> bool {
    std::env::var_os("FARINE_BENCH_VERBOSE").is_some()
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Side {
    /// The same-guarantee lapin baseline.
    Same,
    /// The minimal lapin baseline.
    Minimal,
    Farine,
}

/// Turns of the three sides, short and interleaved, each side four times and in every
/// position of a round of three alike, so that the drift of a shared, noisy machine weighs
/// on all alike.
const TURNS: [Side; 12] = [
    Side::Same,
    Side::Farine,
    Side::Minimal,
    Side::Minimal,
    Side::Farine,
    Side::Same,
    Side::Farine,
    Side::Minimal,
    Side::Same,
    Side::Same,
    Side::Minimal,
    Side::Farine,
];

/// The orders in which `rpc_seq` calls the three sides, one after the other.
const ORDERS: [[Side; 3]; 6] = [
    [Side::Same, Side::Minimal, Side::Farine],
    [Side::Farine, Side::Same, Side::Minimal],
    [Side::Minimal, Side::Farine, Side::Same],
    [Side::Farine, Side::Minimal, Side::Same],
    [Side::Same, Side::Farine, Side::Minimal],
    [Side::Minimal, Side::Same, Side::Farine],
];

/// Operations, the time they took, and the CPU time the bench process (the client side)
/// and the service process spent meanwhile, summed over turns.
#[derive(Clone, Copy, Debug, Default)]
struct Tally {
    count: u64,
    time: Duration,
    client_cpu: f64,
    service_cpu: f64,
    /// RabbitMQ's, when its `beam.smp` runs on this machine (0 otherwise).
    broker_cpu: f64,
}

impl Tally {
    fn add(&mut self, turn: Tally) {
        if verbose() {
            eprintln!("  turn: {}", turn.describe());
        }
        self.count += turn.count;
        self.time += turn.time;
        self.client_cpu += turn.client_cpu;
        self.service_cpu += turn.service_cpu;
        self.broker_cpu += turn.broker_cpu;
    }

    fn rate(&self) -> f64 {
        self.count as f64 / self.time.as_secs_f64().max(1e-9)
    }

    fn describe(&self) -> String {
        let per_op = |cpu: f64| cpu * 1e6 / (self.count.max(1) as f64);
        format!(
            "{} in {:.2?} = {:.0}/s, CPU per operation: client {:.0}us, service {:.0}us, broker {:.0}us",
            self.count,
            self.time,
            self.rate(),
            per_op(self.client_cpu),
            per_op(self.service_cpu),
            per_op(self.broker_cpu)
        )
    }
}

/// CPU seconds (user + system) process `pid` has used so far.
fn cpu_seconds(pid: u32) -> f64 {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return 0.0;
    };
    // After the command name in parentheses: state is field 3, utime 14, stime 15.
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map_or("", |(_, rest)| rest)
        .split_whitespace()
        .collect();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|f| f.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    // Linux reports clock ticks of 1/100 s (USER_HZ).
    (ticks(11) + ticks(12)) / 100.0
}

/// Runs one turn against the service process `service`, with its CPU accounting.
async fn measured(service: u32, turn: impl Future<Output = Res<(u64, Duration)>>) -> Res<Tally> {
    static BROKER: std::sync::OnceLock<Option<u32>> = std::sync::OnceLock::new();
    let broker = *BROKER.get_or_init(slow::rabbit_pid);
    let broker_cpu = || broker.map_or(0.0, cpu_seconds);
    let me = std::process::id();
    let (client, server, rabbit) = (cpu_seconds(me), cpu_seconds(service), broker_cpu());
    let (count, time) = turn.await?;
    Ok(Tally {
        count,
        time,
        client_cpu: cpu_seconds(me) - client,
        service_cpu: cpu_seconds(service) - server,
        broker_cpu: broker_cpu() - rabbit,
    })
}

/// The tallies of the three sides of one workload.
#[derive(Default)]
struct Trio {
    same: Tally,
    minimal: Tally,
    farine: Tally,
}

impl Trio {
    fn side(&mut self, side: Side) -> &mut Tally {
        match side {
            Side::Same => &mut self.same,
            Side::Minimal => &mut self.minimal,
            Side::Farine => &mut self.farine,
        }
    }

    fn rates(&self) -> report::Rates {
        report::Rates {
            farine: self.farine.rate(),
            same: self.same.rate(),
            minimal: self.minimal.rate(),
        }
    }

    fn explain(&self, id: &str) {
        if verbose() {
            eprintln!("  {id} same:    {}", self.same.describe());
            eprintln!("  {id} minimal: {}", self.minimal.describe());
            eprintln!("  {id} farine:  {}", self.farine.describe());
        }
    }
}

/// `/metrics` of `child` now, when `--metrics` asked for it.
async fn scrape_if(
    metrics: bool,
    child: &Child,
) -> Res<Option<std::collections::BTreeMap<String, f64>>> {
    match (metrics, child.http()) {
        (true, Some(addr)) => Ok(Some(scrape::scrape(addr).await?)),
        (true, None) => Err("--metrics: a service process has no HTTP endpoint".into()),
        (false, _) => Ok(None),
    }
}

/// Prints how `child`'s `/metrics` moved since `before`, for `what`.
async fn print_moves(
    what: &str,
    child: &Child,
    before: Option<std::collections::BTreeMap<String, f64>>,
) -> Res<()> {
    if let (Some(before), Some(addr)) = (before, child.http()) {
        let after = scrape::scrape(addr).await?;
        scrape::print_moves(what, &before, &after);
    }
    Ok(())
}

async fn run(
    config: farine::Config,
    selected: &[&str],
    report: &mut Report,
    metrics: bool,
) -> Res<()> {
    let wants = |w: &str| selected.contains(&w);
    let scale = scale();
    let rpc_turn = RPC_TURN.mul_f64(scale);
    let events_turn = ((EVENTS_TURN as f64 * scale) as u64).max(100);

    if wants("memory_rpc_seq") || wants("memory_events") {
        memory::run(wants("memory_rpc_seq"), wants("memory_events"), scale).await?;
        if selected.iter().all(|w| w.starts_with("memory_")) {
            return Ok(());
        }
    }

    let rpc_settings = Settings::of(&config, "calc")?;
    let events_settings = Settings::of(&config, "bench_events")?;
    let admin = Admin::connect(&rpc_settings.uri).await?;
    let calc_existed = admin.exchange_exists("calc").await;
    admin.delete(&bench_topology(&config)?).await;

    let mut farine_seq_rate = None;
    let need_rpc = [
        "rpc_seq",
        "rpc_pipelined",
        "rpc_stream",
        "rpc_db",
        "idle_rss",
    ]
    .iter()
    .any(|w| wants(w));
    let mut rpc = None;
    let mut idle_mib = None;
    let mut after_pipelined_mib = None;
    if need_rpc {
        let farine_calc = Child::spawn("farine-calc").await?;
        let lapin_rpc = Child::spawn("lapin-rpc").await?;
        let minimal_rpc = Child::spawn("minimal-rpc").await?;
        tokio::time::sleep(Duration::from_millis(500)).await;
        idle_mib = farine_calc.rss_mib();
        let bench = Rpc {
            calc: CalcClient::connect(&config).await?,
            same: Arc::new(RpcClient::connect(&rpc_settings, Flavor::Same).await?),
            minimal: Arc::new(RpcClient::connect(&rpc_settings, Flavor::Minimal).await?),
            children: [farine_calc, lapin_rpc, minimal_rpc],
        };
        for side in [Side::Same, Side::Minimal, Side::Farine] {
            bench.calls(side, WARM_UP, 1).await?;
            bench.calls(side, WARM_UP, PIPELINE_DEPTH).await?;
        }

        if wants("rpc_seq") || wants("rpc_db") {
            let before = scrape_if(metrics, &bench.children[0]).await?;
            let trio = bench.sequential(rpc_turn * TURNS.len() as u32).await?;
            print_moves(
                &format!(
                    "of calc's process over rpc_seq ({} calls of calc.add from the bench)",
                    trio.farine.count
                ),
                &bench.children[0],
                before,
            )
            .await?;
            farine_seq_rate = Some(trio.farine.rate());
            if wants("rpc_seq") {
                report.rpc("rpc_seq", trio.rates());
            }
        }
        if wants("rpc_pipelined") || wants("idle_rss") {
            let mut trio = Trio::default();
            for side in TURNS {
                let turn = bench.calls(side, rpc_turn, PIPELINE_DEPTH);
                trio.side(side)
                    .add(measured(bench.service_pid(side), turn).await?);
            }
            after_pipelined_mib = bench.children[0].rss_mib();
            trio.explain("rpc_pipelined");
            if wants("rpc_pipelined") {
                report.rpc("rpc_pipelined", trio.rates());
            }
        }
        if metrics {
            // Calls made by a service: bench_relay.add calls calc.add in calc's process.
            let before = scrape_if(metrics, &bench.children[0]).await?;
            let client = farine::Client::connect(&config).await?;
            const RELAYED: i64 = 1000;
            for i in 0..RELAYED {
                let sum = client
                    .call(relay::SERVICE, "add", serde_json::json!([i, 1]))
                    .await?;
                expect_sum(sum.as_i64().unwrap_or(-1), i)?;
            }
            print_moves(
                &format!("of calc's process over {RELAYED} calls of bench_relay.add (each calls calc.add)"),
                &bench.children[0],
                before,
            )
            .await?;
        }
        rpc = Some(bench);
    }

    // The minimal events figure of this run (rpc_stream's target): of its turns in
    // `events_transient` (run for rpc_stream's sake if not asked for), where no persistent
    // turn of another side leaves the broker writing to disk meanwhile.
    let mut minimal_events = Tally::default();
    if wants("events") || wants("events_transient") || wants("rpc_stream") {
        let mut bench = Events {
            farine: Child::spawn("farine-events").await?,
            same: Child::spawn("lapin-events").await?,
            minimal: Child::spawn("minimal-events").await?,
            publisher: events::publisher(),
            transient_publisher: farine::Publisher::new(
                TRANSIENT_SECTION,
                events::EXCHANGE,
                events::QUEUE,
            ),
            same_publisher: baseline::EventsPublisher::connect(&events_settings, Flavor::Same)
                .await?,
            minimal_publisher: baseline::EventsPublisher::connect(
                &events_settings,
                Flavor::Minimal,
            )
            .await?,
            persistent_mode: events_settings.delivery_mode,
            next: 0,
        };
        let run_transient = wants("events_transient") || wants("rpc_stream");
        for (id, transient) in [("events", false), ("events_transient", true)] {
            if (transient && !run_transient) || (!transient && !wants("events")) {
                continue;
            }
            for side in [Side::Same, Side::Minimal, Side::Farine] {
                bench.turn(side, transient, EVENTS_WARM_UP).await?;
            }
            let before = scrape_if(metrics && !transient, &bench.farine).await?;
            let mut trio = Trio::default();
            for side in TURNS {
                let service = bench.service_pid(side);
                trio.side(side)
                    .add(measured(service, bench.turn(side, transient, events_turn)).await?);
            }
            print_moves(
                &format!(
                    "of bench_events' process over events ({} messages to its consumer)",
                    trio.farine.count
                ),
                &bench.farine,
                before,
            )
            .await?;
            trio.explain(id);
            if transient {
                minimal_events = trio.minimal;
            }
            if wants(id) {
                report.events(id, trio.rates(), transient);
            }
        }
        bench.same_publisher.close().await;
        bench.minimal_publisher.close().await;
        bench.farine.stop().await;
        bench.same.stop().await;
        bench.minimal.stop().await;
    }

    if let Some(bench) = &rpc {
        if wants("rpc_stream") {
            for side in [Side::Same, Side::Minimal, Side::Farine] {
                bench.stream(side, STREAM_ITEMS / 10).await?;
            }
            let mut trio = Trio::default();
            for side in TURNS {
                let turn = bench.stream(side, STREAM_ITEMS);
                trio.side(side)
                    .add(measured(bench.service_pid(side), turn).await?);
            }
            trio.explain("rpc_stream");
            report.stream(trio.rates(), minimal_events.rate());
        }
    }

    if wants("rpc_db") {
        // Sequential calls of bench_db.select_one, against farine's own rpc_seq of this run.
        let service = Child::spawn("farine-db").await?;
        let client = farine::Client::connect(&config).await?;
        let call = || client.call("bench_db", "select_one", serde_json::json!([]));
        let warm_until = Instant::now() + WARM_UP;
        while Instant::now() < warm_until {
            call().await?;
        }
        let (mut calls, start) = (0u64, Instant::now());
        while start.elapsed() < rpc_turn * (TURNS.len() as u32 / 3) {
            if call().await? != serde_json::json!(1) {
                return Err("select_one did not return 1".into());
            }
            calls += 1;
        }
        let rate = calls as f64 / start.elapsed().as_secs_f64();
        report.db(rate, farine_seq_rate.unwrap_or(f64::NAN));
        service.stop().await;
    }

    if wants("idle_rss") {
        report.idle(idle_mib, after_pipelined_mib);
    }

    if let Some(bench) = rpc {
        bench.same.close().await;
        bench.minimal.close().await;
        for child in bench.children {
            child.stop().await;
        }
    }

    if wants("gateway_ws_broadcast") || wants("gateway_rpc") {
        gateway::run(
            wants("gateway_ws_broadcast"),
            wants("gateway_rpc"),
            report,
            scale,
        )
        .await?;
    }

    if wants("stream_slow") {
        slow::run(report, scale).await?;
    }

    let mut topology = bench_topology(&config)?;
    if !calc_existed {
        topology.extend(&calc_topology(&config)?);
    }
    admin.delete(&topology).await;
    admin.close().await;
    Ok(())
}

/// The three RPC clients, and the three service processes they call.
struct Rpc {
    calc: CalcClient,
    same: Arc<RpcClient>,
    minimal: Arc<RpcClient>,
    /// The farine `calc` process, the same-guarantee lapin server, the minimal one.
    children: [Child; 3],
}

impl Rpc {
    fn service_pid(&self, side: Side) -> u32 {
        match side {
            Side::Farine => self.children[0].pid(),
            Side::Same => self.children[1].pid(),
            Side::Minimal => self.children[2].pid(),
        }
    }

    fn lapin(&self, side: Side) -> &Arc<RpcClient> {
        match side {
            Side::Minimal => &self.minimal,
            _ => &self.same,
        }
    }

    /// `add` calls for `duration`, `workers` of them in flight at any time.
    async fn calls(&self, side: Side, duration: Duration, workers: usize) -> Res<(u64, Duration)> {
        match side {
            Side::Same | Side::Minimal => {
                let lapin = self.lapin(side).clone();
                for_duration(duration, workers, move |i| {
                    let lapin = lapin.clone();
                    async move { expect_sum(lapin.add(i, 1).await?, i) }
                })
                .await
            }
            Side::Farine => {
                let calc = self.calc.clone();
                for_duration(duration, workers, move |i| {
                    let calc = calc.clone();
                    async move { expect_sum(calc.add(i, 1).await?, i) }
                })
                .await
            }
        }
    }

    /// One caller for `duration`, rotating call by call between the sides (in all six
    /// orders), each call awaited before the next: all see the same moments of a noisy
    /// machine. A side's figure is its calls over the time its own calls took.
    async fn sequential(&self, duration: Duration) -> Res<Trio> {
        let mut trio = Trio::default();
        let mut latencies: [Vec<Duration>; 3] = [Vec::new(), Vec::new(), Vec::new()];
        let deadline = Instant::now() + duration;
        let mut i = 0i64;
        while Instant::now() < deadline {
            for side in ORDERS[i as usize % ORDERS.len()] {
                let start = Instant::now();
                let sum = match side {
                    Side::Same | Side::Minimal => self.lapin(side).add(i, 1).await?,
                    Side::Farine => self.calc.add(i, 1).await?,
                };
                let took = start.elapsed();
                expect_sum(sum, i)?;
                let tally = trio.side(side);
                tally.count += 1;
                tally.time += took;
                latencies[side as usize].push(took);
            }
            i += 1;
        }
        if verbose() {
            for side in [Side::Same, Side::Minimal, Side::Farine] {
                let tally = *trio.side(side);
                let sorted = &mut latencies[side as usize];
                sorted.sort();
                let at = |q: f64| sorted[((sorted.len() - 1) as f64 * q) as usize];
                eprintln!(
                    "  rpc_seq {side:?}: {} calls, {:.0}/s, latency p10 {:.2?} p50 {:.2?} p90 {:.2?} p99 {:.2?}",
                    tally.count,
                    tally.rate(),
                    at(0.1),
                    at(0.5),
                    at(0.9),
                    at(0.99)
                );
            }
        }
        Ok(trio)
    }

    /// One `count(n)`, read fully.
    async fn stream(&self, side: Side, n: u32) -> Res<(u64, Duration)> {
        let start = Instant::now();
        let items = match side {
            Side::Same | Side::Minimal => self.lapin(side).count(n).await?,
            Side::Farine => {
                let mut items = 0u64;
                let mut stream = self.calc.count(n).await?;
                while let Some(item) = stream.next().await {
                    if u64::from(item?) != items {
                        return Err("calc.count: items out of order".into());
                    }
                    items += 1;
                }
                items
            }
        };
        if items != u64::from(n) {
            return Err(format!("count({n}) gave {items} items ({side:?})").into());
        }
        Ok((items, start.elapsed()))
    }
}

/// The three events consumers (service processes) and the publishers.
struct Events {
    farine: Child,
    same: Child,
    minimal: Child,
    /// farine's publisher at its defaults (persistent), and with `delivery_mode = 1`.
    publisher: farine::Publisher,
    transient_publisher: farine::Publisher,
    same_publisher: baseline::EventsPublisher,
    minimal_publisher: baseline::EventsPublisher,
    /// The configured (farine default: persistent) delivery mode.
    persistent_mode: u8,
    /// The next `n` to publish.
    next: u64,
}

impl Events {
    fn service_pid(&self, side: Side) -> u32 {
        match side {
            Side::Farine => self.farine.pid(),
            Side::Same => self.same.pid(),
            Side::Minimal => self.minimal.pid(),
        }
    }

    /// Publishes `n` events from one side (`transient`: with delivery mode 1, the minimal
    /// side always); the time from the first publish until the consumer handled the last.
    async fn turn(&mut self, side: Side, transient: bool, n: u64) -> Res<(u64, Duration)> {
        let range = self.next..self.next + n;
        self.next += n;
        let child = match side {
            Side::Same => &mut self.same,
            Side::Minimal => &mut self.minimal,
            Side::Farine => &mut self.farine,
        };
        child.arm(n).await?;
        let start = Instant::now();
        let mode = if transient { 1 } else { self.persistent_mode };
        match side {
            Side::Same => {
                self.same_publisher
                    .publish(range, PUBLISH_WINDOW, mode)
                    .await?
            }
            Side::Minimal => {
                self.minimal_publisher
                    .publish(range, PUBLISH_WINDOW, 1)
                    .await?
            }
            Side::Farine => {
                let publisher = if transient {
                    &self.transient_publisher
                } else {
                    &self.publisher
                };
                farine_publish(publisher, range, PUBLISH_WINDOW).await?
            }
        }
        child.expect("done", Duration::from_secs(120)).await?;
        Ok((n, start.elapsed()))
    }
}

fn expect_sum(sum: i64, i: i64) -> Res<()> {
    if sum == i + 1 {
        Ok(())
    } else {
        Err(format!("add({i}, 1) answered {sum}").into())
    }
}

/// Runs `call` until `duration` is over with `workers` calls in flight; returns how many
/// completed and the time until the last one did.
async fn for_duration<F, Fut>(duration: Duration, workers: usize, call: F) -> Res<(u64, Duration)>
where
    F: Fn(i64) -> Fut + Clone + Send + 'static,
    Fut: Future<Output = Res<()>> + Send + 'static,
{
    let start = Instant::now();
    let deadline = start + duration;
    let mut tasks = JoinSet::new();
    for worker in 0..workers as i64 {
        let call = call.clone();
        tasks.spawn(async move {
            let mut done = 0i64;
            while Instant::now() < deadline {
                call(worker * 1_000_000_000 + done).await?;
                done += 1;
            }
            Ok::<u64, BoxError>(done as u64)
        });
    }
    let mut total = 0;
    while let Some(done) = tasks.join_next().await {
        total += done??;
    }
    Ok((total, start.elapsed()))
}

/// Publishes `{"n": i}` for each i through a farine `Publisher`, `window` sends in flight.
async fn farine_publish(
    publisher: &farine::Publisher,
    range: std::ops::Range<u64>,
    window: usize,
) -> Res<()> {
    futures::stream::iter(range)
        .map(|n| async move { publisher.send(&events::Event { n }).await })
        .buffer_unordered(window)
        .try_collect::<()>()
        .await?;
    Ok(())
}

// ------------------------------------------------------------------ topology

#[derive(Default)]
struct Topology {
    queues: Vec<String>,
    exchanges: Vec<String>,
}

impl Topology {
    fn extend(&mut self, other: &Topology) {
        self.queues.extend(other.queues.iter().cloned());
        self.exchanges.extend(other.exchanges.iter().cloned());
    }
}

/// Every queue and exchange the bench names itself (all `bench_...`).
fn bench_topology(config: &farine::Config) -> Res<Topology> {
    let mut queues: Vec<String> = [
        baseline::ADD_QUEUE,
        baseline::COUNT_QUEUE,
        baseline::EVENTS_QUEUE,
        baseline::MIN_ADD_QUEUE,
        baseline::MIN_COUNT_QUEUE,
        baseline::MIN_EVENTS_QUEUE,
    ]
    .map(String::from)
    .to_vec();
    queues.extend(consumer_queues(config, "bench_events", events::QUEUE)?);
    queues.extend(["bench_db__select_one", "bench_db__select_one.dlq"].map(String::from));
    queues.extend(["bench_relay__add", "bench_relay__add.dlq"].map(String::from));
    Ok(Topology {
        queues,
        exchanges: [
            baseline::RPC_EXCHANGE,
            baseline::EVENTS_EXCHANGE,
            baseline::MIN_RPC_EXCHANGE,
            baseline::MIN_EVENTS_EXCHANGE,
            events::EXCHANGE,
            "bench_db",
            relay::SERVICE,
            gateway::EXCHANGE,
        ]
        .map(String::from)
        .to_vec(),
    })
}

/// What farine declares for service `calc`: removed at the end only when this run created it.
fn calc_topology(config: &farine::Config) -> Res<Topology> {
    let mut queues = Vec::new();
    for method in ["add", "count"] {
        let queue = format!("calc__{method}");
        queues.push(format!("{queue}.dlq"));
        queues.push(queue);
    }
    for queue in ["operations", "results"] {
        queues.extend(consumer_queues(config, "calc", queue)?);
    }
    Ok(Topology {
        queues,
        exchanges: vec!["calc".into()],
    })
}

/// A consumer queue with farine's dead-letter and delay queues (see farine's `retry`).
fn consumer_queues(config: &farine::Config, service: &str, queue: &str) -> Res<Vec<String>> {
    let settings = config.service(service)?;
    let base = (settings.retry_delay.as_millis() as u64).max(1);
    let max = (settings.retry_max_delay.as_millis() as u64).max(1);
    let mut steps: Vec<u64> = (0..settings.retry_attempts)
        .map(|retry| base.saturating_mul(1u64 << retry.min(32)).min(max))
        .collect();
    steps.dedup();
    let mut queues = vec![queue.to_string(), format!("{queue}.dlq")];
    queues.extend(steps.iter().map(|ms| format!("{queue}.retry.{ms}ms")));
    Ok(queues)
}

/// A plain lapin connection to look at and clean the broker.
struct Admin {
    connection: lapin::Connection,
}

impl Admin {
    async fn connect(uri: &str) -> Res<Admin> {
        let properties = lapin::ConnectionProperties::default()
            .with_connection_name("farine-bench admin".into());
        Ok(Admin {
            connection: lapin::Connection::connect(uri, properties).await?,
        })
    }

    async fn exchange_exists(&self, exchange: &str) -> bool {
        let Ok(channel) = self.connection.create_channel().await else {
            return false;
        };
        let exists = channel
            .exchange_declare(
                exchange.into(),
                lapin::ExchangeKind::Direct,
                lapin::options::ExchangeDeclareOptions {
                    passive: true,
                    ..Default::default()
                },
                lapin::types::FieldTable::default(),
            )
            .await
            .is_ok();
        if exists {
            let _ = channel.close(200, "OK".into()).await;
        }
        exists
    }

    async fn delete(&self, topology: &Topology) {
        let Ok(channel) = self.connection.create_channel().await else {
            return;
        };
        for queue in &topology.queues {
            let _ = channel
                .queue_delete(queue.as_str().into(), Default::default())
                .await;
        }
        for exchange in &topology.exchanges {
            let _ = channel
                .exchange_delete(exchange.as_str().into(), Default::default())
                .await;
        }
        let _ = channel.close(200, "OK".into()).await;
    }

    async fn close(&self) {
        let _ = self.connection.close(200, "OK".into()).await;
    }
}
