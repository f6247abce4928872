//! The printed lines (one per workload, as they are measured) and, with `--markdown`, a
//! Markdown table of the same figures after them, for the README's performance section.

use crate::{
    TARGET_DB_VS_SEQ, TARGET_EVENTS_TRANSIENT_VS_MINIMAL, TARGET_EVENTS_VS_SAME, TARGET_IDLE_MIB,
    TARGET_RPC_VS_MINIMAL, TARGET_RPC_VS_SAME, TARGET_STREAM_VS_MINIMAL_EVENTS,
};

/// The rates of one workload's three sides.
#[derive(Clone, Copy, Debug)]
pub struct Rates {
    pub farine: f64,
    pub same: f64,
    pub minimal: f64,
}

impl Rates {
    pub fn vs_same(&self) -> f64 {
        self.farine / self.same.max(1e-9)
    }

    pub fn vs_minimal(&self) -> f64 {
        self.farine / self.minimal.max(1e-9)
    }
}

/// One row of the Markdown table.
struct Row {
    workload: String,
    farine: String,
    same: String,
    minimal: String,
    ratios: String,
    target: String,
}

pub struct Report {
    markdown: bool,
    rows: Vec<Row>,
}

pub fn verdict(ok: bool) -> &'static str {
    if ok {
        "ok"
    } else {
        "BELOW"
    }
}

fn rate(r: f64) -> String {
    format!("{r:.0}/s")
}

impl Report {
    pub fn new(markdown: bool) -> Report {
        Report {
            markdown,
            rows: Vec::new(),
        }
    }

    /// Prints a workload's line now (a long run shows its figures as they come).
    fn line(&self, text: String) {
        println!("{text}");
    }

    fn row(&mut self, workload: &str, farine: String, same: String, minimal: String) -> &mut Row {
        self.rows.push(Row {
            workload: workload.to_string(),
            farine,
            same,
            minimal,
            ratios: String::new(),
            target: String::new(),
        });
        self.rows.last_mut().expect("just pushed")
    }

    fn three(&self, id: &str, r: Rates) -> String {
        format!(
            "{id:<17}farine={:.0}/s  same={:.0}/s  minimal={:.0}/s  vs_same={:.2}  vs_minimal={:.2}",
            r.farine,
            r.same,
            r.minimal,
            r.vs_same(),
            r.vs_minimal()
        )
    }

    /// `rpc_seq`, `rpc_pipelined`: >= 0.95 x same and >= 0.80 x minimal.
    pub fn rpc(&mut self, id: &str, r: Rates) {
        let ok = r.vs_same() >= TARGET_RPC_VS_SAME && r.vs_minimal() >= TARGET_RPC_VS_MINIMAL;
        let target =
            format!(">={TARGET_RPC_VS_SAME:.2} same, >={TARGET_RPC_VS_MINIMAL:.2} minimal");
        self.line(format!(
            "{}  targets: {target}  {}",
            self.three(id, r),
            verdict(ok)
        ));
        let row = self.row(id, rate(r.farine), rate(r.same), rate(r.minimal));
        row.ratios = format!("{:.2} same, {:.2} minimal", r.vs_same(), r.vs_minimal());
        row.target = format!("{target}: {}", verdict(ok));
    }

    /// `events` (farine persistent, its target against same) or `events_transient` (farine
    /// with `delivery_mode = 1`, its target against minimal).
    pub fn events(&mut self, id: &str, r: Rates, transient: bool) {
        let (ok, target) = if transient {
            (
                r.vs_minimal() >= TARGET_EVENTS_TRANSIENT_VS_MINIMAL,
                format!(">={TARGET_EVENTS_TRANSIENT_VS_MINIMAL:.2} minimal"),
            )
        } else {
            (
                r.vs_same() >= TARGET_EVENTS_VS_SAME,
                format!(">={TARGET_EVENTS_VS_SAME:.2} same"),
            )
        };
        self.line(format!(
            "{}  targets: {target}  {}",
            self.three(id, r),
            verdict(ok)
        ));
        let name = if transient {
            format!("{id} (`delivery_mode = 1`)")
        } else {
            format!("{id} (persistent, the default)")
        };
        let row = self.row(&name, rate(r.farine), rate(r.same), rate(r.minimal));
        row.ratios = format!("{:.2} same, {:.2} minimal", r.vs_same(), r.vs_minimal());
        row.target = format!("{target}: {}", verdict(ok));
    }

    /// `rpc_stream`: items/s, each side streaming `count(n)`; the target is farine's items/s
    /// over the minimal events figure of the run.
    pub fn stream(&mut self, r: Rates, minimal_events: f64) {
        let vs_events = r.farine / minimal_events.max(1e-9);
        let ok = vs_events >= TARGET_STREAM_VS_MINIMAL_EVENTS;
        let target = format!(">={TARGET_STREAM_VS_MINIMAL_EVENTS:.2} minimal_events");
        self.line(format!(
            "{}  minimal_events={minimal_events:.0}/s  vs_minimal_events={vs_events:.2}  targets: {target}  {}",
            self.three("rpc_stream", r),
            verdict(ok)
        ));
        let row = self.row(
            "rpc_stream (items)",
            rate(r.farine),
            rate(r.same),
            rate(r.minimal),
        );
        row.ratios = format!(
            "{:.2} same, {:.2} minimal, {vs_events:.2} minimal events ({minimal_events:.0}/s)",
            r.vs_same(),
            r.vs_minimal()
        );
        row.target = format!(
            ">={TARGET_STREAM_VS_MINIMAL_EVENTS:.2} x minimal events: {}",
            verdict(ok)
        );
    }

    /// `rpc_db`: against farine's own `rpc_seq` of the run.
    pub fn db(&mut self, rate_db: f64, seq: f64) {
        let ratio = rate_db / seq;
        let ok = ratio >= TARGET_DB_VS_SEQ;
        self.line(format!(
            "{:<17}farine={rate_db:.0}/s  farine_rpc_seq={seq:.0}/s  vs_rpc_seq={ratio:.2}  targets: >={TARGET_DB_VS_SEQ:.2} rpc_seq  {}",
            "rpc_db",
            verdict(ok)
        ));
        let row = self.row("rpc_db", rate(rate_db), "-".into(), "-".into());
        row.ratios = format!("{ratio:.2} farine rpc_seq");
        row.target = format!(">={TARGET_DB_VS_SEQ:.2} x rpc_seq: {}", verdict(ok));
    }

    pub fn idle(&mut self, idle: Option<f64>, after: Option<f64>) {
        let show = |mib: Option<f64>| mib.map_or("?".to_string(), |m| format!("{m:.1}MiB"));
        let ok = idle.is_some_and(|m| m <= TARGET_IDLE_MIB);
        self.line(format!(
            "{:<17}idle={}  after_pipelined={}  targets: <={TARGET_IDLE_MIB:.0}MiB idle  {}",
            "idle_rss",
            show(idle),
            show(after),
            verdict(ok)
        ));
        let row = self.row(
            "idle_rss (calc process)",
            format!("{} idle, {} after rpc_pipelined", show(idle), show(after)),
            "-".into(),
            "-".into(),
        );
        row.target = format!("<={TARGET_IDLE_MIB:.0} MiB idle: {}", verdict(ok));
    }

    /// A free-form line and row (`stream_slow`).
    pub fn other(&mut self, line: String, workload: &str, farine: String, target: String) {
        self.line(line);
        let row = self.row(workload, farine, "-".into(), "-".into());
        row.target = target;
    }

    /// The ratios cell of the last row (`gateway_rpc`'s, after `other`).
    pub fn ratios(&mut self, ratios: String) {
        if let Some(row) = self.rows.last_mut() {
            row.ratios = ratios;
        }
    }

    /// With `--markdown`: the table, headed by the command that produced it.
    pub fn finish(&self, args: &[String]) {
        if !self.markdown || self.rows.is_empty() {
            return;
        }
        let mut command = String::from("cargo run --release -p farine-bench --");
        for arg in args {
            command.push(' ');
            command.push_str(arg);
        }
        let load = std::fs::read_to_string("/proc/loadavg")
            .ok()
            .and_then(|l| l.split_whitespace().next().map(str::to_string))
            .unwrap_or_else(|| "?".into());
        let prefix = std::env::var("FARINE_BENCH_SCALE")
            .map(|scale| format!("FARINE_BENCH_SCALE={scale} "))
            .unwrap_or_default();
        println!();
        println!("`{prefix}{command}` (load average {load} at the end of the run)");
        println!();
        println!("| workload | farine | same-guarantee lapin | minimal lapin | ratios (farine over) | target |");
        println!("| --- | --- | --- | --- | --- | --- |");
        for row in &self.rows {
            println!(
                "| {} | {} | {} | {} | {} | {} |",
                row.workload, row.farine, row.same, row.minimal, row.ratios, row.target
            );
        }
        println!();
        println!(
            "Python nameko: {}. Python farine: {}.",
            python_module("nameko"),
            python_module("farine")
        );
    }
}

/// Whether a Python module is importable (the Python peers are not benchmarked here either
/// way: only said).
fn python_module(module: &str) -> &'static str {
    let found = std::process::Command::new("python3")
        .args(["-I", "-c", &format!("import {module}")])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if found {
        "installed, not measured by farine-bench"
    } else {
        "not installed"
    }
}
