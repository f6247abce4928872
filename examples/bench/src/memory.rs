//! The in-process broker's workloads (`amqp_uri = memory://`, what `farine::testing` runs
//! on): calc and `bench_events` run in this process, no RabbitMQ involved. The test kit must
//! never be the slow part of a user's test suite.
//!
//! - `memory_rpc_seq`: sequential `calc.add` calls through the typed client (each awaited).
//! - `memory_events`: events published through farine `Publisher`s (confirmed, 64 at a time)
//!   until the consumer handled them all.
//!
//! `--observe=on`: with metrics (`http_listen = 127.0.0.1:0`) and a logger at level `info`
//! writing nowhere (each delivery's `farine.handle` span is made, as in a deployed service);
//! `--observe=off`: without the tracing middleware, metrics or logger. The cost of tracing
//! and metrics shows most here: nothing else is slow.

use crate::{counter, events, Res};
use calc::CalcClient;
use std::time::{Duration, Instant};
use tokio::task::JoinSet;

/// What the issue asks of this 2-core machine.
const TARGET_CALLS: f64 = 50_000.0;
const TARGET_EVENTS: f64 = 100_000.0;

pub async fn run(rpc: bool, events_too: bool, scale: f64) -> Res<()> {
    let uri = format!("memory://farine-bench-{}", std::process::id());
    let mut ini = format!("[DEFAULT]\namqp_uri = {uri}\n[bench_events]\nconcurrency = 256\n");
    if crate::observe() == Some(true) {
        ini = crate::with_default_key(&ini, "http_listen", "127.0.0.1:0");
        // As a deployed service logs (not to a terminal: no colors); RUST_LOG to compare.
        let level = std::env::var("RUST_LOG").unwrap_or_else(|_| "info".into());
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::new(level))
            .with_ansi(false)
            .with_writer(std::io::sink)
            .try_init();
    }
    let config = farine::Config::from_str(&ini, "memory-bench.ini")?;
    let mut runtime = farine::Runtime::new(config.clone()).only(["calc", "bench_events"]);
    if crate::observe() == Some(false) {
        runtime = runtime.without_tracing();
    }
    let running = runtime.start().await?;
    if rpc {
        let calc = CalcClient::connect(&config).await?;
        for _ in 0..1_000 {
            calc.add(1, 2).await?;
        }
        let turn = Duration::from_secs_f64(3.0 * scale);
        let cpu = crate::cpu_seconds(std::process::id());
        let start = Instant::now();
        let mut calls = 0u64;
        while start.elapsed() < turn {
            calc.add(1, 2).await?;
            calls += 1;
        }
        report(
            "memory_rpc_seq",
            "calls",
            calls,
            start.elapsed(),
            crate::cpu_seconds(std::process::id()) - cpu,
            TARGET_CALLS,
        );
    }
    if events_too {
        let total = ((100_000.0 * scale) as u64).max(1_000);
        let senders = 64u64;
        counter::arm(total);
        let reached = tokio::spawn(counter::reached());
        let cpu = crate::cpu_seconds(std::process::id());
        let start = Instant::now();
        let mut tasks = JoinSet::new();
        for sender in 0..senders {
            tasks.spawn(async move {
                let publisher = events::publisher();
                let mut n = sender;
                while n < total {
                    publisher.send(&events::Event { n }).await?;
                    n += senders;
                }
                Ok::<(), farine::Error>(())
            });
        }
        while let Some(sent) = tasks.join_next().await {
            sent??;
        }
        reached.await?;
        report(
            "memory_events",
            "events",
            total,
            start.elapsed(),
            crate::cpu_seconds(std::process::id()) - cpu,
            TARGET_EVENTS,
        );
    }
    running.shutdown().await?;
    Ok(())
}

/// Prints the rate, and the CPU time (user and system, of this process: client, services and
/// broker alike) per operation.
fn report(workload: &str, what: &str, count: u64, elapsed: Duration, cpu: f64, target: f64) {
    let rate = count as f64 / elapsed.as_secs_f64();
    let verdict = if rate >= target { "ok" } else { "BELOW" };
    let cpu_us = cpu * 1e6 / count.max(1) as f64;
    println!(
        "{workload:<14} {what}={rate:.0}/s  cpu={cpu_us:.1}us/op  target>={target:.0}/s {verdict}"
    );
}
