//! `farine-bench __calls <seconds>`: sequential `calc.add` calls, farine only, against a
//! running `calc` (for example `farine-bench __serve farine-calc`), so that a profiler
//! attached to either process sees farine's per-call path and nothing else:
//!
//! ```sh
//! FARINE_INI=bench.ini farine-bench __serve farine-calc &   # the service
//! FARINE_INI=bench.ini farine-bench __calls 20              # the caller
//! perf record -g --call-graph dwarf -p <pid> -- sleep 10    # either side
//! ```

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
        .and_then(|runtime| runtime.block_on(calls(Duration::from_secs_f64(seconds))));
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("farine-bench __calls: {err}");
            ExitCode::FAILURE
        }
    }
}

async fn calls(duration: Duration) -> Res<()> {
    let calc = CalcClient::connect(&farine::Config::from_env()?).await?;
    let start = Instant::now();
    let mut i = 0i64;
    while start.elapsed() < duration {
        crate::expect_sum(calc.add(i, 1).await?, i)?;
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
