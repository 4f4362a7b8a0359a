//! Cross-checks against real clients: wrk on `light`, h2load on `h2`.

use std::process::Command;
use std::time::Duration;

use crate::bench::Bench;
use crate::load::{self, Plan, Stream, Transport};
use crate::peer::{self, Server};
use crate::stats;

/// Connections used by both generators in the validation, as in the `light` scenario.
const CONNS: usize = 32;
/// Length of each validation run.
const SECS: u64 = 2;

fn number_after(text: &str, key: &str) -> Option<f64> {
    let rest = &text[text.find(key)? + key.len()..];
    rest.split_whitespace().next()?.trim_end_matches(',').parse().ok()
}

/// Alternating rounds of each generator, so drift in the machine's other load hits both alike.
const ROUNDS: usize = 5;

/// Runs wrk and this generator the same closed-loop way (each connection sends its next request
/// when the previous answer arrives) against the same `hermes` server, in alternating rounds, and
/// says whether they agree within 10% (median of the per-round ratios).
///
/// With the server on fewer workers than the machine has cores, the server and not the client is
/// the bottleneck, so the comparison shows whether this generator measures the server's capacity
/// as a real client does. The server runs on `workers` workers.
pub fn wrk_vs_ours(bench: &Bench, workers: usize) -> Result<String, String> {
    let bin = bench.workload_bin().ok_or("--validate needs the workload binary")?;
    let threads = bench.client_threads;
    let log = bench.out.join("logs");
    std::fs::create_dir_all(&log).map_err(|e| e.to_string())?;
    let (log, cpus) = (log.join("validate.log"), bench.server_cpus.as_ref());
    let server = Server::start(bin, peer::BASELINE, workers, &log, &[], cpus).map_err(|e| e.to_string())?;
    let url = format!("http://{}/", server.addr);
    let plan = Plan {
        streams: vec![Stream {
            transport: Transport::KeepAlive { conns: CONNS },
            rate: None,
            mix: vec![(1.0, "/".to_owned())],
            label: None,
        }],
        hang: None,
        duration: Duration::from_secs(SECS),
        drain: Duration::from_secs(2),
        max_in_flight: CONNS,
        request_timeout: Duration::from_secs(5),
    };
    let (mut wrks, mut ours, mut errors) = (Vec::new(), Vec::new(), 0);
    for round in 0..ROUNDS {
        let output = Command::new("wrk")
            .args([&format!("-t{threads}"), &format!("-c{CONNS}"), &format!("-d{SECS}s"), &url])
            .output()
            .map_err(|e| format!("running wrk: {e} (Debian: apt-get install -y wrk)"))?;
        let text = String::from_utf8_lossy(&output.stdout).into_owned();
        wrks.push(
            number_after(&text, "Requests/sec:")
                .ok_or_else(|| format!("could not read wrk's throughput from: {text}"))?,
        );
        let o = bench.rt.block_on(load::run(server.addr, &plan, round as u64)).map_err(|e| e.to_string())?;
        errors += o.error_count();
        ours.push(o.throughput());
    }
    let list = |v: &[f64]| v.iter().map(|x| format!("{x:.0}")).collect::<Vec<_>>().join(", ");
    // Every round gave a figure, so the medians exist.
    let median = |v: &[f64]| stats::median(v).unwrap_or(0.0);
    let (wrk, mine) = (median(&wrks), median(&ours));
    // Each round's pair ran back to back, so its ratio is the least disturbed by drift.
    let ratio = median(&ours.iter().zip(&wrks).map(|(o, w)| o / w).collect::<Vec<_>>());
    let agree = (ratio - 1.0).abs() <= 0.10;
    Ok(format!(
        "## Validation: this generator vs wrk on `light`\n\n\
         Both closed loop, {CONNS} keep-alive connections, {threads} client thread(s) each, {ROUNDS} \
         alternating rounds of {SECS} s, against `hermes` with {workers} worker(s).\n\n\
         | generator | median req/s | rounds |\n|---|---:|---|\n| wrk | {wrk:.0} | {} |\n\
         | hermes-bench | {mine:.0} | {} |\n\n\
         Median of the per-round ratios (ours / wrk): {ratio:.3}; agree: {} (within 10%). Errors in ours: {errors}.",
        list(&wrks),
        list(&ours),
        if agree { "yes" } else { "no" },
    ))
}

/// Runs h2load (closed loop, 8 connections × 16 streams) against the baseline peer, when both are
/// available; returns a note for the h2 report.
pub fn h2load_note(bench: &Bench) -> Option<String> {
    if !bench.peers.contains(&peer::BASELINE) {
        return None;
    }
    let bin = bench.workload_bin()?;
    let log = bench.out.join("logs/h2load.log");
    let server =
        Server::start(bin, peer::BASELINE, bench.workers, &log, &[], bench.server_cpus.as_ref()).ok()?;
    let output = match Command::new("h2load")
        .args(["-c", "8", "-m", "16", "-D", "3", &format!("http://{}/", server.addr)])
        .output()
    {
        Ok(o) => o,
        Err(_) => return Some("h2load not installed (Debian: apt-get install -y nghttp2-client)".to_owned()),
    };
    let text = String::from_utf8_lossy(&output.stdout);
    let rps = h2load_rps(&text);
    let requests = text.lines().find(|l| l.starts_with("requests:")).map(|l| l.trim().to_owned());
    Some(format!(
        "h2load cross-check (closed loop, 8 connections × 16 streams, 3 s): {} req/s; {}",
        rps.map(|r| format!("{r:.0}")).unwrap_or_else(|| "unreadable".to_owned()),
        requests.unwrap_or_else(|| "no request summary".to_owned())
    ))
}

/// The req/s figure of h2load's `finished in 3.00s, 41234.50 req/s, ...` line.
fn h2load_rps(text: &str) -> Option<f64> {
    let line = text.lines().find(|l| l.starts_with("finished in"))?;
    line.split(", ").nth(1)?.strip_suffix(" req/s")?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_wrk_and_h2load_figures() {
        assert_eq!(number_after("Requests/sec:  12345.67\nTransfer/sec", "Requests/sec:"), Some(12345.67));
        let h2 = "finished in 3.00s, 41234.50 req/s, 1.2MB/s\nrequests: 123 total, 123 started, 123 done, 123 succeeded, 0 failed";
        assert_eq!(h2load_rps(h2), Some(41234.5));
    }
}
