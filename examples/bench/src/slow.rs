//! `stream_slow`, the slow reader of BENCH.md: a caller of `calc.count(1_000_000)` that stops
//! reading for 10 s after the first item, then reads the rest. The caller is a process of its
//! own (`farine-bench __slow_reader <n> <pause_ms> <cap_s>`), the service a fresh
//! `__serve farine-calc`, so that the resident memory of each side is its own: the bench
//! samples both `VmRSS` (and RabbitMQ's, when its `beam.smp` runs on this machine) every
//! 100 ms, and reads each side's `VmHWM` at the end. BENCH.md's target: each side under
//! 32 MiB, every item arriving (in order).

use crate::child::Child;
use crate::report::{verdict, Report};
use crate::{verbose, Res};
use calc::CalcClient;
use futures::StreamExt;
use std::process::{ExitCode, Stdio};
use std::time::{Duration, Instant};
use tokio::io::{AsyncBufReadExt, BufReader};

const ITEMS: u32 = 1_000_000;
const PAUSE: Duration = Duration::from_secs(10);
/// The reader gives up after this long and reports what it got.
const CAP: Duration = Duration::from_secs(120);
const TARGET_MIB: f64 = 32.0;

/// `__slow_reader <n> <pause_ms> <cap_s>`: prints one line
/// `result items=<k> in_order=<bool> first_after_ms=<t> secs=<s> hwm_kib=<m> error=<text>`.
pub fn reader_main(args: &[String]) -> ExitCode {
    let arg = |i: usize, default: u64| {
        args.get(i)
            .and_then(|a| a.parse::<u64>().ok())
            .unwrap_or(default)
    };
    let (n, pause, cap) = (
        arg(0, u64::from(ITEMS)) as u32,
        Duration::from_millis(arg(1, PAUSE.as_millis() as u64)),
        Duration::from_secs(arg(2, CAP.as_secs())),
    );
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("farine-bench __slow_reader: {err}");
            return ExitCode::FAILURE;
        }
    };
    let start = Instant::now();
    let mut got = Got::default();
    let outcome = runtime.block_on(read(n, pause, cap, &mut got));
    println!(
        "result items={} in_order={} secs={:.1} hwm_kib={} error={}",
        got.items,
        got.in_order,
        start.elapsed().as_secs_f64(),
        status_kib(std::process::id(), "VmHWM:").unwrap_or(0),
        match outcome {
            Ok(()) => "none".to_string(),
            Err(err) => err.to_string().replace('\n', " "),
        }
    );
    ExitCode::SUCCESS
}

struct Got {
    items: u64,
    in_order: bool,
}

impl Default for Got {
    fn default() -> Self {
        Got {
            items: 0,
            in_order: true,
        }
    }
}

async fn read(n: u32, pause: Duration, cap: Duration, got: &mut Got) -> Res<()> {
    let config = farine::Config::from_env()?;
    let calc = CalcClient::connect(&config).await?;
    let start = Instant::now();
    let mut stream = calc.count(n).await?;
    while let Some(item) = stream.next().await {
        let item = item?;
        if u64::from(item) != got.items {
            got.in_order = false;
        }
        got.items += 1;
        if got.items == 1 {
            tokio::time::sleep(pause).await;
        }
        if start.elapsed() > cap {
            return Err(format!("gave up after {cap:?}").into());
        }
    }
    Ok(())
}

/// A `kB` field of `/proc/<pid>/status` (`VmRSS:`, `VmHWM:`).
fn status_kib(pid: u32, field: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with(field))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// RabbitMQ's Erlang VM, if it runs on this machine and we may look at it.
pub fn rabbit_pid() -> Option<u32> {
    std::fs::read_dir("/proc")
        .ok()?
        .flatten()
        .find_map(|entry| {
            let pid: u32 = entry.file_name().to_str()?.parse().ok()?;
            let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).ok()?;
            (comm.trim() == "beam.smp").then_some(pid)
        })
}

fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

pub async fn run(report: &mut Report, scale: f64) -> Res<()> {
    let items = ((f64::from(ITEMS) * scale) as u32).max(1_000);
    let service = Child::spawn("farine-calc").await?;
    let rabbit = rabbit_pid();
    let rabbit_before = rabbit.and_then(|pid| status_kib(pid, "VmRSS:"));
    let mut command = tokio::process::Command::new(std::env::current_exe()?);
    command
        .arg("__slow_reader")
        .arg(items.to_string())
        .arg(PAUSE.as_millis().to_string())
        .arg(CAP.as_secs().to_string())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true);
    if std::env::var_os("RUST_LOG").is_none() {
        command.env("RUST_LOG", "warn");
    }
    let start = Instant::now();
    let mut reader = command.spawn()?;
    let caller_pid = reader.id().ok_or("the slow reader exited at once")?;
    if verbose() {
        eprintln!(
            "stream_slow: caller pid {caller_pid}, service pid {}",
            service.pid()
        );
    }
    let mut stdout = BufReader::new(reader.stdout.take().ok_or("no stdout")?).lines();
    let (mut caller_peak, mut service_peak, mut rabbit_peak) = (0u64, 0u64, 0u64);
    let mut result = None;
    let mut tick = tokio::time::interval(Duration::from_millis(100));
    let deadline = tokio::time::sleep(CAP + Duration::from_secs(30));
    tokio::pin!(deadline);
    let mut next_report = Duration::from_secs(10);
    loop {
        tokio::select! {
            _ = tick.tick() => {
                caller_peak = caller_peak.max(status_kib(caller_pid, "VmRSS:").unwrap_or(0));
                service_peak = service_peak.max(status_kib(service.pid(), "VmRSS:").unwrap_or(0));
                if let Some(pid) = rabbit {
                    rabbit_peak = rabbit_peak.max(status_kib(pid, "VmRSS:").unwrap_or(0));
                }
                if verbose() && start.elapsed() >= next_report {
                    next_report += Duration::from_secs(10);
                    eprintln!(
                        "  stream_slow {:.0?}: caller {:.1}MiB, service {:.1}MiB, rabbitmq {:.1}MiB",
                        start.elapsed(),
                        mib(status_kib(caller_pid, "VmRSS:").unwrap_or(0)),
                        mib(status_kib(service.pid(), "VmRSS:").unwrap_or(0)),
                        mib(rabbit.and_then(|pid| status_kib(pid, "VmRSS:")).unwrap_or(0)),
                    );
                }
            }
            line = stdout.next_line() => match line {
                Ok(Some(line)) if line.starts_with("result ") => result = Some(line),
                Ok(Some(line)) => eprintln!("[slow-reader] {line}"),
                _ => break,
            },
            _ = &mut deadline => {
                eprintln!("stream_slow: the caller did not finish: killing it");
                let _ = reader.kill().await;
                break;
            }
        }
    }
    let _ = reader.wait().await;
    let took = start.elapsed();
    let service_hwm = status_kib(service.pid(), "VmHWM:").unwrap_or(0);
    service.stop().await;

    let field = |name: &str| {
        result.as_deref().and_then(|line| {
            let at = line.find(&format!(" {name}="))? + name.len() + 2;
            let rest = &line[at..];
            Some(if name == "error" {
                rest.to_string()
            } else {
                rest.split_whitespace().next().unwrap_or("").to_string()
            })
        })
    };
    let got: u64 = field("items").and_then(|v| v.parse().ok()).unwrap_or(0);
    let in_order = field("in_order").as_deref() == Some("true");
    let caller_hwm: u64 = field("hwm_kib").and_then(|v| v.parse().ok()).unwrap_or(0);
    let error = field("error").unwrap_or_else(|| "no result from the caller".into());
    let caller_mib = mib(caller_hwm.max(caller_peak));
    let service_mib = mib(service_hwm.max(service_peak));
    let complete = got == u64::from(items) && in_order;
    let ok = complete && caller_mib < TARGET_MIB && service_mib < TARGET_MIB;
    let rabbit_text = match (rabbit_before, rabbit_peak) {
        (Some(before), peak) if peak > 0 => format!(
            "{:.0}MiB (peak, +{:.0}MiB over its start)",
            mib(peak),
            mib(peak.saturating_sub(before))
        ),
        _ => "not sampled".into(),
    };
    let error_text = if error == "none" {
        String::new()
    } else {
        format!("  error: {error}")
    };
    let line = format!(
        "{:<17}items={got}/{items} in_order={}  caller_peak={caller_mib:.1}MiB  service_peak={service_mib:.1}MiB  rabbitmq={rabbit_text}  time={:.1}s (reader paused {}s after the first item)  targets: <{TARGET_MIB:.0}MiB each side, every item  {}{error_text}",
        "stream_slow",
        if in_order { "yes" } else { "no" },
        took.as_secs_f64(),
        PAUSE.as_secs(),
        verdict(ok)
    );
    report.other(
        line,
        "stream_slow (1M items, reader paused 10 s)",
        format!(
            "caller {caller_mib:.1} MiB, service {service_mib:.1} MiB peak; {got}/{items} items{}; {:.0} s",
            if in_order { " in order" } else { ", out of order" },
            took.as_secs_f64()
        ),
        format!("<{TARGET_MIB:.0} MiB each side, every item: {}", verdict(ok)),
    );
    Ok(())
}
