//! `farine-bench __calls <seconds> [farine|same|minimal]`: sequential `add` calls of one side
//! only (default farine, against a running `calc`, for example `farine-bench __serve
//! farine-calc`; `same`/`minimal` against `__serve lapin-rpc`/`minimal-rpc`), so that a
//! profiler attached to either process sees that side's per-call path and nothing else:
//!
//! ```sh
//! FARINE_INI=bench.ini farine-bench __serve farine-calc &   # the service
//! FARINE_INI=bench.ini farine-bench __calls 20              # the caller
//! perf record -g --call-graph dwarf -p <pid> -- sleep 10    # either side
//! ```

use crate::baseline::{Flavor, RpcClient, Settings};
use crate::Res;
use calc::CalcClient;
use std::process::ExitCode;
use std::time::{Duration, Instant};

pub fn main(args: &[String]) -> ExitCode {
    let seconds = args
        .first()
        .and_then(|a| a.parse::<f64>().ok())
        .unwrap_or(10.0);
    let outcome = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(Into::into)
        .and_then(|runtime| {
            runtime.block_on(calls(
                Duration::from_secs_f64(seconds),
                args.get(1).map_or("farine", String::as_str),
            ))
        });
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("farine-bench __calls: {err}");
            ExitCode::FAILURE
        }
    }
}

async fn calls(duration: Duration, side: &str) -> Res<()> {
    let config = farine::Config::from_env()?;
    let settings = Settings::of(&config, "calc")?;
    let (calc, lapin) = match side {
        "farine" => (Some(CalcClient::connect(&config).await?), None),
        "same" => (
            None,
            Some(RpcClient::connect(&settings, Flavor::Same).await?),
        ),
        "minimal" => (
            None,
            Some(RpcClient::connect(&settings, Flavor::Minimal).await?),
        ),
        other => return Err(format!("unknown side {other:?} (farine, same, minimal)").into()),
    };
    let start = Instant::now();
    let mut i = 0i64;
    while start.elapsed() < duration {
        let sum = match (&calc, &lapin) {
            (Some(calc), _) => calc.add(i, 1).await?,
            (_, Some(lapin)) => lapin.add(i, 1).await?,
            _ => unreachable!("one client"),
        };
        crate::expect_sum(sum, i)?;
        i += 1;
    }
    println!(
        "{i} calls in {:.1?}: {:.0}/s (pid {})",
        start.elapsed(),
        i as f64 / start.elapsed().as_secs_f64(),
        std::process::id()
    );
    Ok(())
}
