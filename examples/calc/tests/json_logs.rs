//! The calc binary with `log_format = json`: every line it writes to stdout is a JSON object,
//! and the line its `on_result` handler logs carries the fields of the delivery's
//! `farine.handle` span (service, entry point, trace and span ids), in the trace of the
//! `on_operation` delivery whose publish it came from.

use farine_test_support::{ini_defaults, require_rabbitmq, wait_exit, Killed, Raw};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use serde_json::Value;
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

const WAIT: Duration = Duration::from_secs(30);

/// The next stdout line of calc that `wanted` accepts, parsed; every line must be JSON.
fn line_where(
    lines: &mpsc::Receiver<String>,
    seen: &mut Vec<Value>,
    wanted: impl Fn(&Value) -> bool,
) -> Value {
    let deadline = Instant::now() + WAIT;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let line = match lines.recv_timeout(left) {
            Ok(line) => line,
            Err(_) => panic!("no such line within {WAIT:?}; saw {seen:#?}"),
        };
        let value: Value = serde_json::from_str(&line)
            .unwrap_or_else(|err| panic!("a stdout line that is not JSON ({err}): {line}"));
        assert!(value.is_object(), "{line}");
        seen.push(value.clone());
        if wanted(&value) {
            return value;
        }
    }
}

fn is_hex(value: &Value, digits: usize) -> bool {
    value
        .as_str()
        .is_some_and(|text| text.len() == digits && text.bytes().all(|b| b.is_ascii_hexdigit()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_log_lines_carry_the_handle_span() {
    require_rabbitmq();
    let ini = std::env::temp_dir().join(format!("farine-json-logs-{}.ini", std::process::id()));
    std::fs::write(
        &ini,
        format!(
            "{}log_format = json\nlog_level = farine=debug,info\n",
            ini_defaults()
        ),
    )
    .expect("write the ini");
    let mut calc = Killed(
        Command::new(env!("CARGO_BIN_EXE_calc"))
            .env("FARINE_INI", &ini)
            .env_remove("RUST_LOG")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("the calc binary starts"),
    );
    let stdout = calc.0.stdout.take().expect("piped stdout");
    let (sender, lines) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if sender.send(line).is_err() {
                break;
            }
        }
    });
    let mut seen = Vec::new();
    let message = |value: &Value| value["fields"]["message"].as_str().map(str::to_owned);
    line_where(&lines, &mut seen, |v| {
        message(v).as_deref() == Some("service ready")
    });

    // An operation whose sum is this test's own: on_operation publishes it, on_result logs it.
    let raw = Raw::connect().await;
    raw.publish("calc", "operations", br#"{"a": 20260, "b": 17}"#)
        .await;
    let result = line_where(&lines, &mut seen, |v| {
        message(v).as_deref() == Some("result") && v["fields"]["sum"] == 20277
    });
    assert_eq!(result["level"], "INFO");
    let span = &result["span"];
    assert_eq!(span["name"], "farine.handle", "{result}");
    assert_eq!(span["service"], "calc");
    assert_eq!(span["entry_point"], "calc.on_result");
    assert_eq!(span["kind"], "consume");
    assert_eq!(span["queue"], "results");
    assert_eq!(span["attempt"], 1);
    assert!(is_hex(&span["trace_id"], 32), "{result}");
    assert!(is_hex(&span["span_id"], 16), "{result}");
    // It came from a publish made while on_operation was handled: that delivery's trace.
    assert!(is_hex(&span["parent_id"], 16), "{result}");
    let same_trace = |v: &Value| {
        v["span"]["entry_point"] == "calc.on_operation" && v["span"]["trace_id"] == span["trace_id"]
    };
    let operation = match seen.iter().find(|v| same_trace(v)).cloned() {
        Some(operation) => operation,
        None => line_where(&lines, &mut seen, same_trace),
    };
    assert_eq!(operation["span"]["service"], "calc");
    // Between the two: the publish's own span.
    assert_ne!(operation["span"]["span_id"], span["parent_id"]);

    kill(Pid::from_raw(calc.0.id() as i32), Signal::SIGTERM).expect("SIGTERM");
    let status = wait_exit(&mut calc.0, WAIT).expect("calc stops");
    assert!(status.success(), "{status:?}");
    // The lines written until the end are JSON too.
    while let Ok(line) = lines.recv_timeout(Duration::from_secs(5)) {
        let value: Value = serde_json::from_str(&line)
            .unwrap_or_else(|err| panic!("a stdout line that is not JSON ({err}): {line}"));
        assert!(value.is_object(), "{line}");
    }
    let _ = std::fs::remove_file(ini);
}
