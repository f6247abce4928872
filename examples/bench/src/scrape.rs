//! `--metrics`: the services' `/metrics` (farine's `http_listen` endpoint, on a port the
//! system chose), read before and after a workload; the moves of farine's delivery and RPC
//! client series are printed.

use crate::Res;
use std::collections::BTreeMap;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// The series printed, by name (a histogram by its `_count`, and its `_sum`).
const SERIES: &[&str] = &[
    "farine_deliveries_handled_total",
    "farine_deliveries_failed_total",
    "farine_deliveries_dead_lettered_total",
    "farine_handling_duration_seconds_count",
    "farine_handling_duration_seconds_sum",
    "farine_deliveries_in_flight",
    "farine_rpc_client_calls_total",
    "farine_rpc_client_errors_total",
    "farine_rpc_client_duration_seconds_count",
    "farine_rpc_client_duration_seconds_sum",
];

/// The value of every series of `/metrics` at `addr`, by series (name and labels).
pub async fn scrape(addr: &str) -> Res<BTreeMap<String, f64>> {
    let mut stream = tokio::net::TcpStream::connect(addr).await?;
    stream
        .write_all(
            // HTTP/1.0: the whole body, never chunked, then the end of the connection.
            format!("GET /metrics HTTP/1.0\r\nHost: {addr}\r\n\r\n").as_bytes(),
        )
        .await?;
    let mut response = Vec::new();
    // A few KiB; bounded all the same.
    stream.take(16 << 20).read_to_end(&mut response).await?;
    let response = String::from_utf8(response)?;
    let (head, body) = response
        .split_once("\r\n\r\n")
        .ok_or("no HTTP header from /metrics")?;
    if head.split(' ').nth(1) != Some("200") {
        return Err(format!(
            "/metrics at {addr} answered {}",
            head.lines().next().unwrap_or("")
        )
        .into());
    }
    Ok(body
        .lines()
        .filter(|line| !line.starts_with('#'))
        .filter_map(|line| {
            let (series, value) = line.rsplit_once(' ')?;
            Some((series.to_string(), value.parse().ok()?))
        })
        .collect())
}

/// Prints, for `what`, how each series of [`SERIES`] moved between the two scrapes.
pub fn print_moves(what: &str, before: &BTreeMap<String, f64>, after: &BTreeMap<String, f64>) {
    println!("metrics {what}:");
    let mut printed = 0;
    for (series, value) in after {
        let name = series.split('{').next().unwrap_or(series);
        if !SERIES.contains(&name) {
            continue;
        }
        let was = before.get(series).copied().unwrap_or(0.0);
        let moved = value - was;
        if moved == 0.0 && !name.ends_with("_in_flight") {
            continue;
        }
        if name.ends_with("_sum") {
            println!("  {series} {was:.3} -> {value:.3} (+{moved:.3}s)");
        } else {
            println!("  {series} {was} -> {value} ({moved:+})");
        }
        printed += 1;
    }
    if printed == 0 {
        println!("  (nothing moved)");
    }
}
