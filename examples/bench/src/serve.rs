//! `farine-bench __serve <kind>`: the service processes the bench talks to.
//!
//! - `farine-calc`: the `calc` service as `farine --start calc` runs it (`farine::Runtime`).
//! - `farine-events`: the `bench_events` service.
//! - `farine-db`: the `bench_db` service (PostgreSQL).
//! - `lapin-rpc`: the bare-lapin RPC server.
//! - `lapin-events`: the bare-lapin events consumer.

use crate::{baseline, counter, Res};
use std::process::ExitCode;
use tokio::io::{AsyncBufReadExt, BufReader};

pub const KINDS: &[&str] = &[
    "farine-calc",
    "farine-events",
    "farine-db",
    "lapin-rpc",
    "lapin-events",
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
            let running = farine::Runtime::new(config).only([service]).start().await?;
            println!("ready");
            control().await;
            running.shutdown().await?;
        }
        "lapin-rpc" => {
            let connection =
                baseline::rpc_server(&baseline::Settings::of(&config, "calc")?).await?;
            println!("ready");
            control().await;
            connection.close(200, "OK".into()).await?;
        }
        "lapin-events" => {
            let settings = baseline::Settings::of(&config, "bench_events")?;
            let connection = baseline::events_consumer(&settings).await?;
            println!("ready");
            control().await;
            connection.close(200, "OK".into()).await?;
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
