//! What a run measured, as the load generator hands it to the reports.

use std::collections::BTreeMap;
use std::time::Duration;

use hdrhistogram::Histogram;

/// What a run measured.
#[derive(Debug)]
pub struct Outcome {
    /// Latency from scheduled send time to complete response, in microseconds.
    pub hist: Histogram<u64>,
    /// Successful (2xx) responses.
    pub ok: u64,
    /// Successful responses completed within the measurement window.
    pub in_window: u64,
    /// Length of the measurement window.
    pub window: Duration,
    /// Failures by kind.
    pub errors: BTreeMap<String, u64>,
    /// Successful requests slower than [`SLOW`](super::SLOW).
    pub slow: u64,
    /// Successful requests per worker, from the response header.
    pub requests_by_worker: BTreeMap<String, u64>,
    /// Connections per worker, from the header of each connection's first response.
    pub conns_by_worker: BTreeMap<String, u64>,
    /// The worker the hang connection landed on, when the plan has a hang.
    pub hung_worker: Option<String>,
    /// Number of blocks the hang connection issued.
    pub hangs: u64,
    /// Arrivals scheduled within the window (sent or not), all streams together.
    pub offered: u64,
    /// How late the generator woke up for the arrivals it was waiting for, in microseconds: its
    /// own lag (a starved client), not the server's.
    pub wake: Histogram<u64>,
    /// Per-stream placement, in the plan's stream order.
    pub streams: Vec<StreamCounts>,
}

impl Outcome {
    /// Successful responses completed within the window, per second of the window. A server
    /// that falls behind its arrivals, or stalls at the end, shows it here; the stragglers still
    /// count in the latency figures.
    pub fn throughput(&self) -> f64 {
        self.in_window as f64 / self.window.as_secs_f64().max(1e-9)
    }

    /// Total failures.
    pub fn error_count(&self) -> u64 {
        self.errors.values().sum()
    }

    /// Arrivals scheduled per second of the window.
    pub fn offered_rate(&self) -> f64 {
        self.offered as f64 / self.window.as_secs_f64().max(1e-9)
    }
}

/// Where one stream's traffic landed, from the response header.
#[derive(Debug, Clone, Default)]
pub struct StreamCounts {
    /// Successful requests per worker.
    pub requests_by_worker: BTreeMap<String, u64>,
    /// Connections per worker, from each connection's first response.
    pub conns_by_worker: BTreeMap<String, u64>,
    /// The stream's own latencies (as [`Outcome::hist`]); `None` before its first success.
    pub hist: Option<Histogram<u64>>,
}

impl StreamCounts {
    /// The stream's latency at quantile `q`, in milliseconds; `None` without a success.
    pub fn quantile_ms(&self, q: f64) -> Option<f64> {
        self.hist.as_ref().map(|h| h.value_at_quantile(q) as f64 / 1000.0)
    }
}

/// The latency at quantile `q` (milliseconds) of every stream of `streams` but the one at `except`
/// together; `None` when they had no success.
pub fn others_quantile_ms(streams: &[StreamCounts], except: usize, q: f64) -> Option<f64> {
    let mut merged: Option<Histogram<u64>> = None;
    for h in streams.iter().enumerate().filter(|(i, _)| *i != except).filter_map(|(_, s)| s.hist.as_ref()) {
        match merged.as_mut() {
            Some(m) => m.add(h).expect("histograms of the same bounds"),
            None => merged = Some(h.clone()),
        }
    }
    merged.map(|h| h.value_at_quantile(q) as f64 / 1000.0)
}
