//! The workload server's `/_hermes/stats` snapshot and the spread figures derived from it.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

use serde_json::Value;

use crate::load;

/// Path of the snapshot endpoint.
pub const STATS_PATH: &str = "/_hermes/stats";

/// The per-worker counters the report uses; every field is optional because not every peer
/// reports every one.
#[derive(Debug, Clone, Default)]
pub struct WorkerCounters {
    pub accepted: Option<u64>,
    pub busy_ns: Option<u64>,
}

/// A parsed snapshot.
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    /// The `mode` field as the server reports it (e.g. a fallback to kernel hashing).
    pub mode: Option<String>,
    /// Why the server runs in another mode than asked (`mode_reason`), when it says.
    pub mode_reason: Option<String>,
    /// Counters by worker id.
    pub workers: BTreeMap<String, WorkerCounters>,
}

/// Fetches the snapshot; `None` when the peer does not serve one or it cannot be parsed.
///
/// The connection that asks for the snapshot is itself counted as accepted by the worker that
/// serves it; that count is taken back so the snapshot shows only the load's connections.
pub async fn fetch(addr: SocketAddr) -> Option<Snapshot> {
    let (body, worker) = load::get_once(addr, STATS_PATH, Duration::from_secs(5)).await.ok()?;
    let mut snapshot = parse(&body)?;
    if let Some(accepted) =
        worker.and_then(|w| snapshot.workers.get_mut(&w)).and_then(|w| w.accepted.as_mut())
    {
        *accepted = accepted.saturating_sub(1);
    }
    Some(snapshot)
}

/// Parses a snapshot body; tolerant of absent fields.
pub fn parse(body: &str) -> Option<Snapshot> {
    let v: Value = serde_json::from_str(body).ok()?;
    let mode = v.get("mode").map(|m| match m {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    });
    let mode_reason = v.get("mode_reason").and_then(Value::as_str).map(str::to_owned);
    let mut workers = BTreeMap::new();
    for (i, w) in v.get("workers")?.as_array()?.iter().enumerate() {
        let id = match w.get("id") {
            Some(Value::String(s)) => s.clone(),
            Some(Value::Number(n)) => n.to_string(),
            _ => i.to_string(),
        };
        let num = |k: &str| w.get(k).and_then(Value::as_u64);
        workers.insert(id, WorkerCounters { accepted: num("accepted"), busy_ns: num("busy_ns") });
    }
    Some(Snapshot { mode, mode_reason, workers })
}

/// Per-worker increase of a counter between two snapshots; `None` unless every worker of the
/// second snapshot reports it.
pub fn delta(
    before: Option<&Snapshot>,
    after: &Snapshot,
    field: impl Fn(&WorkerCounters) -> Option<u64>,
) -> Option<Vec<f64>> {
    after
        .workers
        .iter()
        .map(|(id, w)| {
            let now = field(w)?;
            let then = before.and_then(|b| b.workers.get(id)).and_then(&field).unwrap_or(0);
            Some(now.saturating_sub(then) as f64)
        })
        .collect()
}

/// Standard deviation (population) and max/mean of per-worker values.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Spread {
    pub sd: f64,
    pub max_over_mean: f64,
}

/// The spread of `values`, one per worker; `None` for an empty set or a zero mean.
pub fn spread(values: &[f64]) -> Option<Spread> {
    if values.is_empty() {
        return None;
    }
    let n = values.len() as f64;
    let mean = values.iter().sum::<f64>() / n;
    if mean <= 0.0 {
        return None;
    }
    let var = values.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / n;
    let max = values.iter().copied().fold(f64::MIN, f64::max);
    Some(Spread { sd: var.sqrt(), max_over_mean: max / mean })
}

/// Per-worker counts from response headers, padded with zeros for the workers that served
/// nothing when ids are the numbers `0..workers`.
pub fn from_headers(counts: &BTreeMap<String, u64>, workers: usize) -> Vec<f64> {
    let mut all: BTreeMap<String, u64> = counts.clone();
    if counts.keys().all(|k| k.parse::<usize>().is_ok_and(|i| i < workers)) {
        for i in 0..workers {
            all.entry(i.to_string()).or_default();
        }
    }
    all.values().map(|&v| v as f64).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_a_snapshot_with_missing_fields() {
        let s = parse(
            r#"{"mode":"hermes","workers":[{"id":0,"accepted":10,"busy_ns":5},{"id":1,"accepted":30}]}"#,
        )
        .unwrap();
        assert_eq!(s.mode.as_deref(), Some("hermes"));
        assert_eq!(s.workers["1"].accepted, Some(30));
        assert_eq!(s.workers["1"].busy_ns, None);
        assert!(delta(None, &s, |w| w.busy_ns).is_none());
        assert_eq!(delta(None, &s, |w| w.accepted).unwrap(), vec![10.0, 30.0]);
    }

    #[test]
    fn spread_of_even_and_skewed_sets() {
        assert_eq!(spread(&[5.0, 5.0]).unwrap(), Spread { sd: 0.0, max_over_mean: 1.0 });
        let s = spread(&[0.0, 10.0]).unwrap();
        assert_eq!(s.sd, 5.0);
        assert_eq!(s.max_over_mean, 2.0);
        assert!(spread(&[]).is_none());
    }

    #[test]
    fn header_counts_include_idle_workers() {
        let counts = BTreeMap::from([("1".to_owned(), 4)]);
        assert_eq!(from_headers(&counts, 2), vec![0.0, 4.0]);
    }
}
