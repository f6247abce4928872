//! `farine call SERVICE.METHOD [JSON-ARGS]`: calls any service, Rust or Python, and prints
//! each result item as one line of JSON as it arrives.

use crate::Failure;
use farine::rpc::CallOptions;
use farine::{Client, Config};
use futures::StreamExt;
use serde_json::{Map, Value};
use std::io::Write;
use std::process::ExitCode;
use std::time::Duration;

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
            humantime::parse_duration(text)
                .or_else(|_| {
                    text.parse::<f64>()
                        .map(Duration::from_secs_f64)
                        .map_err(|_| ())
                })
                .map_err(|_| {
                    Failure::with_code(
                        2,
                        format!("--timeout: expected a duration such as 5s or 500ms, got {text:?}"),
                    )
                })
        })
        .transpose()?;
    let config = Config::from_env().map_err(|err| Failure::new(err.to_string()))?;
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
            let _ = writeln!(stdout, "{value}");
            let _ = stdout.flush();
        }
        Ok(ExitCode::SUCCESS)
    })
}

/// A JSON array is the positional arguments, an object the arguments by name, any other
/// value the single argument.
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
    Ok(match value {
        Value::Array(items) => (items, Map::new()),
        Value::Object(map) => (Vec::new(), map),
        other => (vec![other], Map::new()),
    })
}
