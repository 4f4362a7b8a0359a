//! The workload server's `/_hermes/stats` snapshot and the spread figures derived from it, the
//! process CPU time, and the one median of every report.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

use nix::time::{ClockId, clock_getcpuclockid, clock_gettime};
use nix::unistd::Pid;
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
    /// Connections taken from a hung worker's listener (Hermes' `rescued`).
    pub rescued: Option<u64>,
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
        workers.insert(
            id,
            WorkerCounters { accepted: num("accepted"), busy_ns: num("busy_ns"), rescued: num("rescued") },
        );
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
/// nothing when ids are the numbers `0..workers`, and then in worker order.
pub fn from_headers(counts: &BTreeMap<String, u64>, workers: usize) -> Vec<f64> {
    if counts.keys().all(|k| k.parse::<usize>().is_ok_and(|i| i < workers)) {
        let mut all = vec![0.0; workers];
        for (k, &v) in counts {
            if let Ok(i) = k.parse::<usize>() {
                all[i] = v as f64;
            }
        }
        return all;
    }
    counts.values().map(|&v| v as f64).collect()
}

/// The median of `values`, the one median of every report; `None` for no values.
///
/// For an even count it is the mean of the two middle values: the conventional definition, and
/// the one the README states for the tables. With the odd repeat counts of the published figures
/// (3 and 5) it is the middle value either way.
pub fn median(values: &[f64]) -> Option<f64> {
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    let n = v.len();
    match n {
        0 => None,
        _ if n % 2 == 1 => Some(v[n / 2]),
        _ => Some((v[n / 2 - 1] + v[n / 2]) / 2.0),
    }
}

/// CPU time (user and system, of all its threads, those that ended included) a process has used
/// so far, in seconds, from its CPU-time clock: nanoseconds, where `/proc/PID/stat` counts 10 ms
/// ticks, too coarse for the CPU per request of a one-second run. `pid` `None` is this process.
/// `None` when it cannot be read (the process is gone).
pub fn cpu_seconds(pid: Option<u32>) -> Option<f64> {
    let clock = match pid {
        Some(pid) => clock_getcpuclockid(Pid::from_raw(i32::try_from(pid).ok()?)).ok()?,
        None => ClockId::CLOCK_PROCESS_CPUTIME_ID,
    };
    let t = clock_gettime(clock).ok()?;
    Some(t.tv_sec() as f64 + t.tv_nsec() as f64 * 1e-9)
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
        // Numeric order, not the strings' order.
        let counts = BTreeMap::from([("10".to_owned(), 1), ("2".to_owned(), 3)]);
        assert_eq!(from_headers(&counts, 11)[2..], [3.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 1.0]);
    }

    #[test]
    fn medians_of_odd_and_even_counts() {
        assert_eq!(median(&[3.0, 1.0, 2.0]), Some(2.0));
        assert_eq!(median(&[4.0, 1.0, 2.0, 3.0]), Some(2.5));
        assert_eq!(median(&[]), None);
    }

    #[test]
    fn reads_this_process_cpu_time() {
        let before = cpu_seconds(None).expect("this process's CPU clock");
        // Spins until the clock moves, or gives up after 10 s.
        let give_up = std::time::Instant::now() + Duration::from_secs(10);
        let mut now = before;
        while now <= before && std::time::Instant::now() < give_up {
            std::hint::spin_loop();
            now = cpu_seconds(None).unwrap();
        }
        assert!(now > before && now - before < 10.0, "CPU time went from {before} to {now} s");
    }

    #[test]
    fn reads_another_process_cpu_time_until_it_is_gone() {
        let mut child =
            std::process::Command::new("yes").stdout(std::process::Stdio::null()).spawn().unwrap();
        let pid = Some(child.id());
        // `yes` spins: waits until a millisecond of its CPU time shows, or gives up after 10 s.
        let give_up = std::time::Instant::now() + Duration::from_secs(10);
        let mut used = 0.0;
        while used < 0.001 && std::time::Instant::now() < give_up {
            used = cpu_seconds(pid).expect("the child's CPU clock");
        }
        child.kill().unwrap();
        child.wait().unwrap();
        assert!(used >= 0.001, "the child used {used} s");
        assert_eq!(cpu_seconds(pid), None, "a reaped process has no clock");
    }
}
