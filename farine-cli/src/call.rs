//! `farine call SERVICE.METHOD [JSON-ARGS]`: calls any service, Rust or Python, and prints
//! each result item as one line of JSON as it arrives.
//!
//! When the reader of its output goes away (`farine call calc.count '[1000000]' | head -5`), it
//! stops at once, cancelling the stream on the server, and exits with status 141 without a
//! message, as a program killed by SIGPIPE would. Any other write error (a full disk,
//! `> /dev/full`) is reported on stderr with exit status 1.

use crate::Failure;
use farine::config::parse_duration;
use farine::rpc::{split_args, CallOptions};
use farine::{Client, Config};
use futures::StreamExt;
use serde_json::{Map, Value};
use std::io::Write;
use std::process::ExitCode;
use std::time::{Duration, Instant};

/// The exit status when stdout was closed by its reader: 128 + SIGPIPE, what a shell reports
/// for a program that SIGPIPE killed.
const BROKEN_PIPE: u8 = 141;

/// How long a stream cancelled because stdout closed may take to tell the server.
const CANCEL_WAIT: Duration = Duration::from_secs(2);

pub fn run(target: &str, args: Option<&str>, timeout: Option<&str>) -> Result<ExitCode, Failure> {
    let (service, method) = target
        .split_once('.')
        .filter(|(s, m)| !s.is_empty() && !m.is_empty())
        .ok_or_else(|| {
            Failure::with_code(
                2,
                format!("expected SERVICE.METHOD (e.g. calc.add), got {target:?}"),
            )
        })?;
    let (args, kwargs) = parse_args(args)?;
    let timeout = timeout
        .map(|text| {
            // The configuration's grammar: "-1" or "inf" made from_secs_f64 panic here.
            parse_duration(text).ok_or_else(|| {
                Failure::with_code(
                    2,
                    format!(
                        "--timeout: expected {}, got {text:?}",
                        farine::config::DURATION_EXPECTED
                    ),
                )
            })
        })
        .transpose()?;
    let config = Config::from_env().map_err(|err| Failure::new(err.to_string()))?;
    // The client's settings: [DEFAULT] (its own section name is never a service's).
    crate::network_broker(&config.service("farine-client")?)?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|err| Failure::new(format!("cannot start the async runtime: {err}")))?;
    runtime.block_on(async {
        let client = Client::connect(&config)
            .await
            .map_err(|err| Failure::new(err.to_string()))?;
        let options = CallOptions {
            timeout,
            idle_timeout: timeout,
        };
        let mut replies = client
            .request(service, method, args, kwargs, options)
            .await
            .map_err(|err| Failure::new(err.to_string()))?;
        let mut stdout = std::io::stdout().lock();
        while let Some(item) = replies.next().await {
            let value = item.map_err(|err| Failure::new(err.to_string()))?;
            let written = writeln!(stdout, "{value}").and_then(|()| stdout.flush());
            let Err(err) = written else { continue };
            // No one reads the rest: cancel the stream on the server.
            cancel(replies).await;
            return match err.kind() {
                std::io::ErrorKind::BrokenPipe => Ok(ExitCode::from(BROKEN_PIPE)),
                _ => Err(Failure::new(format!(
                    "cannot write the results of {target} to stdout: {err}"
                ))),
            };
        }
        Ok(ExitCode::SUCCESS)
    })
}

/// Drops the stream, which cancels it on the server from a task it spawns, and lets that task
/// publish before the runtime (and the process) ends: waits, up to [`CANCEL_WAIT`], for the
/// runtime's tasks to be back to those alive before the drop.
async fn cancel(replies: farine::rpc::Replies) {
    let metrics = tokio::runtime::Handle::current().metrics();
    let before = metrics.num_alive_tasks();
    drop(replies);
    let deadline = Instant::now() + CANCEL_WAIT;
    while metrics.num_alive_tasks() > before && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// A JSON array is the positional arguments, an object the arguments by name, `null` no
/// arguments, any other value the single argument (as every farine client splits them).
fn parse_args(text: Option<&str>) -> Result<(Vec<Value>, Map<String, Value>), Failure> {
    let Some(text) = text else {
        return Ok((Vec::new(), Map::new()));
    };
    let value: Value = serde_json::from_str(text).map_err(|err| {
        Failure::with_code(
            2,
            format!("JSON-ARGS: expected JSON (an array of arguments, an object of named arguments, or one value): {err}"),
        )
    })?;
    Ok(split_args(value))
}
