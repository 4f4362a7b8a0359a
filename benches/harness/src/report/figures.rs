//! What a peer achieved: one [`PeerResult`] per run, gathered in the peer's [`PeerRow`], and
//! the [`fig`]ures every report reads from them.

use crate::peer::Peer;
use crate::stats;

/// Where one labelled stream's traffic landed in one run (e.g. the heavy tenant of `skew`).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Placement {
    /// The stream's label.
    pub label: String,
    /// Connections per worker, in worker order.
    pub conns: Vec<u64>,
    /// Successful requests per worker, in worker order.
    pub requests: Vec<u64>,
    /// The stream's own p99 (ms), and that of every other stream of the run together: in
    /// `skew`, the heavy tenant's own tail and the light tenant's.
    pub p99_ms: Option<f64>,
    pub others_p99_ms: Option<f64>,
}

/// The percentiles of the percentile chart.
pub const PERCENTILES: [f64; 10] = [50.0, 75.0, 90.0, 95.0, 99.0, 99.5, 99.9, 99.95, 99.99, 99.999];

/// What one peer achieved in one run of a scenario.
#[derive(Debug, Clone, Default)]
pub struct PeerResult {
    /// The mode the server reported (first line, or the snapshot when it differs, e.g. a fallback).
    pub mode: String,
    /// Why the peer produced no figures, when it did not.
    pub failure: Option<String>,
    pub ok: u64,
    pub throughput: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub p999_ms: f64,
    pub max_ms: f64,
    /// Per-worker connection counts: SD and max/mean, and where they came from.
    pub conn_sd: Option<f64>,
    pub conn_max_mean: Option<f64>,
    pub conn_source: &'static str,
    /// Per-worker busy time over the run: SD in milliseconds.
    pub busy_sd_ms: Option<f64>,
    pub slow: u64,
    pub errors: u64,
    /// Failures by kind, for the notes under the table.
    pub error_kinds: String,
    /// Arrivals scheduled per second of the window.
    pub offered_rps: f64,
    /// The generator's wake-up lateness: p99 and max, in milliseconds.
    pub wake_p99_ms: f64,
    pub wake_max_ms: f64,
    /// CPU the server used during the run, as a share of its workers (1.0: every worker busy).
    pub server_cpu: Option<f64>,
    /// CPU the generator used during the run, as a share of one core.
    pub generator_cpu: Option<f64>,
    /// The server process's CPU time (user and system) over the run per successful request, in
    /// microseconds.
    pub cpu_us_per_req: Option<f64>,
    /// The share of the offered rate completed in the window; `None` for a closed loop, which
    /// offers what the server takes.
    pub delivered: Option<f64>,
    /// Latency by percentile: `(percentile, ms)` at [`PERCENTILES`], for the percentile chart.
    pub percentiles: Vec<(f64, f64)>,
    /// Where the labelled streams landed.
    pub placements: Vec<Placement>,
    /// Free-form remarks (hung worker, cross-checks).
    pub notes: Vec<String>,
}

impl PeerResult {
    /// True when the peer answered at least one request.
    pub fn served(&self) -> bool {
        self.failure.is_none() && self.ok > 0
    }
}

/// One peer's runs of one scenario, in run order.
#[derive(Debug, Clone)]
pub struct PeerRow {
    pub peer: Peer,
    pub runs: Vec<PeerResult>,
    /// Remarks about the peer as a whole (e.g. a cross-check run once).
    pub notes: Vec<String>,
}

/// A figure of one run, `None` when the run has none.
pub type Figure = fn(&PeerResult) -> Option<f64>;

impl PeerRow {
    /// A row without runs yet.
    pub fn new(peer: Peer) -> Self {
        Self { peer, runs: Vec::new(), notes: Vec::new() }
    }

    /// The runs that served.
    pub fn served_runs(&self) -> impl Iterator<Item = &PeerResult> {
        self.runs.iter().filter(|r| r.served())
    }

    /// True when at least one run served.
    pub fn served(&self) -> bool {
        self.served_runs().next().is_some()
    }

    /// True when every run served.
    pub fn served_every_run(&self) -> bool {
        !self.runs.is_empty() && self.runs.iter().all(PeerResult::served)
    }

    /// Why no run produced figures, when none did.
    pub fn failure(&self) -> Option<String> {
        if self.served() {
            return None;
        }
        let mut why: Vec<String> = self.runs.iter().filter_map(|r| r.failure.clone()).collect();
        why.dedup();
        Some(if why.is_empty() { "no run".to_owned() } else { why.join("; ") })
    }

    /// The modes the runs reported, e.g. `hermes`, or `hermes/kernel-hash` when they differ.
    pub fn mode(&self) -> String {
        let mut modes: Vec<&str> = Vec::new();
        for r in &self.runs {
            if !modes.contains(&r.mode.as_str()) {
                modes.push(&r.mode);
            }
        }
        if modes.is_empty() { self.peer.to_string() } else { modes.join("/") }
    }

    /// A figure of every run that served, in run order.
    pub fn values(&self, f: Figure) -> Vec<f64> {
        self.served_runs().filter_map(f).collect()
    }

    /// A figure of every run, `None` for the runs that did not serve.
    pub fn per_run(&self, f: Figure) -> Vec<Option<f64>> {
        self.runs.iter().map(|r| if r.served() { f(r) } else { None }).collect()
    }

    /// The median of a figure over the runs that served.
    pub fn median(&self, f: Figure) -> Option<f64> {
        stats::median(&self.values(f))
    }

    /// Latency by percentile, `(percentile, ms)`: at each percentile the median over the runs
    /// that served.
    pub fn percentiles(&self) -> Vec<(f64, f64)> {
        PERCENTILES
            .iter()
            .filter_map(|&p| {
                let at: Vec<f64> = self
                    .served_runs()
                    .filter_map(|r| r.percentiles.iter().find(|(q, _)| *q == p).map(|(_, ms)| *ms))
                    .collect();
                stats::median(&at).map(|ms| (p, ms))
            })
            .collect()
    }
}

/// The figures of the table and the summary.
pub mod fig {
    use super::PeerResult;

    pub fn rps(r: &PeerResult) -> Option<f64> {
        Some(r.throughput)
    }
    pub fn p50(r: &PeerResult) -> Option<f64> {
        Some(r.p50_ms)
    }
    pub fn p99(r: &PeerResult) -> Option<f64> {
        Some(r.p99_ms)
    }
    pub fn p999(r: &PeerResult) -> Option<f64> {
        Some(r.p999_ms)
    }
    pub fn max(r: &PeerResult) -> Option<f64> {
        Some(r.max_ms)
    }
    pub fn conn_sd(r: &PeerResult) -> Option<f64> {
        r.conn_sd
    }
    pub fn conn_max_mean(r: &PeerResult) -> Option<f64> {
        r.conn_max_mean
    }
    pub fn busy_sd(r: &PeerResult) -> Option<f64> {
        r.busy_sd_ms
    }
    pub fn slow(r: &PeerResult) -> Option<f64> {
        Some(r.slow as f64)
    }
    pub fn errors(r: &PeerResult) -> Option<f64> {
        Some(r.errors as f64)
    }
    pub fn offered(r: &PeerResult) -> Option<f64> {
        Some(r.offered_rps)
    }
    pub fn wake_p99(r: &PeerResult) -> Option<f64> {
        Some(r.wake_p99_ms)
    }
    pub fn wake_max(r: &PeerResult) -> Option<f64> {
        Some(r.wake_max_ms)
    }
    pub fn server_cpu(r: &PeerResult) -> Option<f64> {
        r.server_cpu
    }
    pub fn generator_cpu(r: &PeerResult) -> Option<f64> {
        r.generator_cpu
    }
    pub fn cpu_us_per_req(r: &PeerResult) -> Option<f64> {
        r.cpu_us_per_req
    }
    pub fn delivered(r: &PeerResult) -> Option<f64> {
        r.delivered
    }
}
