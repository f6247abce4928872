//! The service processes: this binary run again as `farine-bench __serve <kind>`.
//!
//! Line protocol on the child's stdin/stdout: the child prints `http ADDR` when its HTTP
//! endpoint listens (`--metrics`, `--observe=on`), then `ready` once it consumes (the
//! gateway: `ready <address it listens on>`);
//! `expect N` arms its message counter and is answered `armed`; it prints `done` when N
//! messages were handled; end of stdin stops it gracefully. Every other line the child
//! prints (farine logs to stdout) is passed on to stderr as it comes, so that a chatty
//! service never blocks on a full pipe.

use crate::Res;
use std::process::Stdio;
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::process::{ChildStdin, Command};
use tokio::sync::mpsc;

/// The lines of the protocol; anything else is a log line.
const PROTOCOL: &[&str] = &["http", "ready", "armed", "done"];

pub struct Child {
    kind: &'static str,
    process: tokio::process::Child,
    stdin: Option<ChildStdin>,
    /// Protocol lines, read from the child's stdout by a task of their own.
    lines: mpsc::UnboundedReceiver<String>,
    pid: u32,
    /// Where its `/metrics` is served, when it has an HTTP endpoint.
    http: Option<String>,
    /// What followed `ready` on its line (the gateway's address), if anything.
    ready: String,
}

impl Child {
    /// Starts `__serve kind` and waits until it is ready.
    pub async fn spawn(kind: &'static str) -> Res<Child> {
        let exe = std::env::current_exe()?;
        let mut command = Command::new(exe);
        command
            .arg("__serve")
            .arg(kind)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true);
        if std::env::var_os("RUST_LOG").is_none() {
            command.env("RUST_LOG", "warn");
        }
        let mut process = command.spawn()?;
        let pid = process.id().ok_or("the service process exited at once")?;
        let stdin = process.stdin.take();
        let mut stdout = BufReader::new(process.stdout.take().ok_or("no stdout")?).lines();
        let (sender, lines) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            while let Ok(Some(line)) = stdout.next_line().await {
                let word = line.split_whitespace().next().unwrap_or("");
                if PROTOCOL.contains(&word) {
                    let _ = sender.send(line.trim().to_string());
                } else {
                    eprintln!("[{kind}] {line}");
                }
            }
        });
        let mut child = Child {
            kind,
            process,
            stdin,
            lines,
            pid,
            http: None,
            ready: String::new(),
        };
        let within = Duration::from_secs(60);
        let (word, rest) = child.expect_one_of(&["http", "ready"], within).await?;
        child.ready = if word == "http" {
            child.http = Some(rest);
            child.expect("ready", within).await?
        } else {
            rest
        };
        if crate::verbose() {
            eprintln!("service process {kind}: pid {}", child.pid());
        }
        Ok(child)
    }

    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// What the child said after `ready` (the gateway: the address it listens on).
    pub fn ready_with(&self) -> &str {
        &self.ready
    }

    /// The address of its HTTP endpoint (`/metrics`), if it has one.
    pub fn http(&self) -> Option<&str> {
        self.http.as_deref()
    }

    /// Waits for the protocol line `want` from the child; returns what followed the word.
    pub async fn expect(&mut self, want: &str, within: Duration) -> Res<String> {
        Ok(self.expect_one_of(&[want], within).await?.1)
    }

    /// Waits for a protocol line starting with one of `wants`: that word, and what followed.
    async fn expect_one_of(&mut self, wants: &[&str], within: Duration) -> Res<(String, String)> {
        let kind = self.kind;
        let line = tokio::time::timeout(within, self.lines.recv())
            .await
            .map_err(|_| format!("service process {kind}: no {wants:?} within {within:?}"))?;
        match line {
            Some(line) => {
                let (word, rest) = line.split_once(' ').unwrap_or((&line, ""));
                if wants.contains(&word) {
                    Ok((word.to_string(), rest.trim().to_string()))
                } else {
                    Err(format!("service process {kind}: expected {wants:?}, got {line:?}").into())
                }
            }
            None => Err(format!("service process {kind} exited (expected {wants:?})").into()),
        }
    }

    /// Arms the child's counter for `n` messages.
    pub async fn arm(&mut self, n: u64) -> Res<()> {
        let stdin = self.stdin.as_mut().ok_or("stdin closed")?;
        stdin.write_all(format!("expect {n}\n").as_bytes()).await?;
        stdin.flush().await?;
        self.expect("armed", Duration::from_secs(10)).await?;
        Ok(())
    }

    /// Resident memory of the child, in MiB.
    pub fn rss_mib(&self) -> Option<f64> {
        status_mib(self.pid, "VmRSS:")
    }

    /// Peak resident memory of the child (`VmHWM`), in MiB.
    pub fn hwm_mib(&self) -> Option<f64> {
        status_mib(self.pid, "VmHWM:")
    }

    /// Closes its stdin (a graceful stop) and waits for it to exit.
    pub async fn stop(mut self) {
        drop(self.stdin.take());
        if tokio::time::timeout(Duration::from_secs(15), self.process.wait())
            .await
            .is_err()
        {
            eprintln!("service process {} did not stop: killing it", self.kind);
            let _ = self.process.kill().await;
        }
    }
}

/// A line of `/proc/<pid>/status` given in kB (`VmRSS:`, `VmHWM:`), in MiB.
pub fn status_mib(pid: u32, key: &str) -> Option<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with(key))?;
    let kib: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib / 1024.0)
}
