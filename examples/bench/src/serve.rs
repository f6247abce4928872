//! `farine-bench __serve <kind>`: the service processes the bench talks to.
//!
//! - `farine-calc`: the `calc` service as `farine --start calc` runs it (`farine::Runtime`).
//! - `farine-events`: the `bench_events` service.
//! - `farine-db`: the `bench_db` service (PostgreSQL).
//! - `lapin-rpc`: the same-guarantee bare-lapin RPC server.
//! - `lapin-events`: the same-guarantee bare-lapin events consumer.
//! - `minimal-rpc`, `minimal-events`: the minimal bare-lapin twins (see `baseline`).
//! - `gateway`: `farine::gateway::Gateway` of the `[gateway]` section, as `farine gateway` runs
//!   it; prints `ready <address>` (it listens on a free port).

use crate::{baseline, counter, Res};
use std::process::ExitCode;
use tokio::io::{AsyncBufReadExt, BufReader};

pub const KINDS: &[&str] = &[
    "farine-calc",
    "farine-events",
    "farine-db",
    "lapin-rpc",
    "lapin-events",
    "minimal-rpc",
    "minimal-events",
    "gateway",
];

pub fn main(kind: &str) -> ExitCode {
    // The runtime `farine::run` builds: multi-threaded, one worker per core.
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("farine-bench __serve {kind}: {err}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(serve(kind)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("farine-bench __serve {kind}: {err}");
            ExitCode::FAILURE
        }
    }
}

async fn serve(kind: &str) -> Res<()> {
    let config = farine::Config::from_env()?;
    match kind {
        "farine-calc" | "farine-events" | "farine-db" => {
            farine::runtime::init_logging();
            let service = match kind {
                "farine-calc" => "calc",
                "farine-db" => "bench_db",
                _ => "bench_events",
            };
            // `--metrics`: bench_relay beside calc, to move the RPC client series too.
            let mut services = vec![service];
            if kind == "farine-calc" && std::env::var_os(crate::METRICS_ENV).is_some() {
                services.push(crate::relay::SERVICE);
            }
            let mut runtime = farine::Runtime::new(config).only(services);
            if crate::observe() == Some(false) {
                // `--observe=off`: what tracing costs is measured against this.
                runtime = runtime.without_tracing();
            }
            let running = runtime.start().await?;
            if let Some(addr) = running.http_addr() {
                println!("http {addr}");
            }
            println!("ready");
            control().await;
            running.shutdown().await?;
        }
        "lapin-rpc" | "minimal-rpc" => {
            let settings = baseline::Settings::of(&config, "calc")?;
            let connection = if kind == "lapin-rpc" {
                baseline::rpc_server(&settings).await?
            } else {
                baseline::minimal_rpc_server(&settings).await?
            };
            println!("ready");
            control().await;
            connection.close(200, "OK".into()).await?;
        }
        "lapin-events" | "minimal-events" => {
            let settings = baseline::Settings::of(&config, "bench_events")?;
            let flavor = if kind == "lapin-events" {
                baseline::Flavor::Same
            } else {
                baseline::Flavor::Minimal
            };
            let connection = baseline::events_consumer(&settings, flavor).await?;
            println!("ready");
            control().await;
            connection.close(200, "OK".into()).await?;
        }
        "gateway" => {
            farine::runtime::init_logging();
            let gateway = farine::gateway::Gateway::start(&config).await?;
            println!("ready {}", gateway.local_addr());
            control().await;
            gateway.stop().await;
        }
        other => return Err(format!("unknown service kind {other:?} (known: {KINDS:?})").into()),
    }
    Ok(())
}

/// Obeys the bench on stdin until it closes it.
async fn control() {
    let mut lines = BufReader::new(tokio::io::stdin()).lines();
    loop {
        tokio::select! {
            line = lines.next_line() => match line {
                Ok(Some(line)) => {
                    if let Some(n) = line.trim().strip_prefix("expect ").and_then(|n| n.parse().ok()) {
                        counter::arm(n);
                        println!("armed");
                    }
                }
                _ => return,
            },
            _ = counter::reached() => println!("done"),
        }
    }
}
