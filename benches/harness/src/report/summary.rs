//! `summary.json`, for scripts: per scenario and peer the medians of the figures and every run's.

use std::collections::BTreeMap;

use serde_json::{Value, json};

use super::figures::{Figure, PeerRow, fig};
use crate::stats;

/// One scenario's entry of `summary.json`: per peer the medians of `p99_ms`, `p50_ms`, `rps`,
/// `over_1s` and `errors` (`null` when no run served), each also per run (`..._runs`, `null` for a
/// run that failed), and the labelled streams' placement per run.
pub fn summary_json(description: &str, workers: usize, rows: &[PeerRow]) -> Value {
    let mut peers = serde_json::Map::new();
    for r in rows {
        let mut p = serde_json::Map::new();
        let figures: [(&str, Figure); 10] = [
            ("p99_ms", fig::p99),
            ("p50_ms", fig::p50),
            ("rps", fig::rps),
            ("over_1s", fig::slow),
            ("errors", fig::errors),
            ("p999_ms", fig::p999),
            ("offered_rps", fig::offered),
            ("generator_wake_p99_ms", fig::wake_p99),
            ("server_cpu", fig::server_cpu),
            ("generator_cpu", fig::generator_cpu),
        ];
        // Microseconds are the histograms' resolution: three decimals of a millisecond.
        let round = |v: Option<f64>| v.map(|v| (v * 1000.0).round() / 1000.0);
        for (name, f) in figures {
            p.insert(name.to_owned(), json!(round(r.median(f))));
            p.insert(format!("{name}_runs"), json!(r.per_run(f).into_iter().map(round).collect::<Vec<_>>()));
        }
        p.insert("mode".to_owned(), json!(r.mode()));
        p.insert("runs".to_owned(), json!(r.runs.len()));
        p.insert("runs_failed".to_owned(), json!(r.runs.iter().filter(|x| !x.served()).count()));
        let failures: Vec<String> = r.runs.iter().filter_map(|x| x.failure.clone()).collect();
        if !failures.is_empty() {
            p.insert("failures".to_owned(), json!(failures));
        }
        #[allow(clippy::type_complexity)]
        let mut by_label: BTreeMap<
            &str,
            (Vec<Value>, Vec<Value>, Vec<Option<f64>>, Vec<Option<f64>>),
        > = BTreeMap::new();
        for run in &r.runs {
            for pl in &run.placements {
                by_label.entry(&pl.label).or_default();
            }
        }
        for (label, (conns, requests, own, others)) in by_label.iter_mut() {
            for run in &r.runs {
                let pl = run.placements.iter().find(|p| p.label == *label).filter(|_| run.served());
                conns.push(json!(pl.map(|p| &p.conns)));
                requests.push(json!(pl.map(|p| &p.requests)));
                own.push(pl.and_then(|p| p.p99_ms));
                others.push(pl.and_then(|p| p.others_p99_ms));
            }
        }
        let median = |v: &[Option<f64>]| stats::median(&v.iter().flatten().copied().collect::<Vec<_>>());
        for (label, (conns, requests, own, others)) in by_label {
            p.insert(format!("{label}_conns_per_worker_runs"), Value::Array(conns));
            p.insert(format!("{label}_requests_per_worker_runs"), Value::Array(requests));
            p.insert(format!("{label}_p99_ms"), json!(round(median(&own))));
            p.insert(format!("{label}_p99_ms_runs"), json!(own.into_iter().map(round).collect::<Vec<_>>()));
            p.insert(format!("{label}_others_p99_ms"), json!(round(median(&others))));
            p.insert(
                format!("{label}_others_p99_ms_runs"),
                json!(others.into_iter().map(round).collect::<Vec<_>>()),
            );
        }
        peers.insert(r.peer.to_string(), Value::Object(p));
    }
    json!({
        "description": description,
        "workers": workers,
        "repeat": rows.iter().map(|r| r.runs.len()).max().unwrap_or(0),
        "peers": peers,
    })
}

#[cfg(test)]
mod tests {
    use super::super::fixtures::{placed, repeated, row, skewed};
    use super::*;

    #[test]
    fn medians_and_every_run_of_each_peer() {
        let v = summary_json("d", 2, &repeated());
        assert_eq!(v["workers"], 2);
        assert_eq!(v["peers"]["hermes"]["p99_ms"], 3.0);
        assert_eq!(v["peers"]["hermes"]["p99_ms_runs"], json!([2.0, 8.0, 3.0]));
        assert_eq!(v["peers"]["tokio"]["p99_ms"], 5.0);
        assert_eq!(v["peers"]["tokio"]["p99_ms_runs"], json!([4.0, null, 6.0]));
        assert_eq!(v["peers"]["tokio"]["runs_failed"], 1);
        for key in ["p99_ms", "p50_ms", "rps", "over_1s", "errors"] {
            assert!(v["peers"]["tokio"][key].is_number(), "{key}: {v}");
        }
    }

    #[test]
    fn placements_of_every_run() {
        let v = summary_json("d", 2, &[skewed()]);
        assert_eq!(v["peers"]["hermes"]["heavy_conns_per_worker_runs"], json!([[2, 0], [1, 1], [0, 2]]));
        assert_eq!(v["peers"]["hermes"]["heavy_requests_per_worker_runs"][1], json!([210, 190]));
        assert_eq!(v["peers"]["hermes"]["heavy_p99_ms_runs"], json!([155.0, 26.0, 165.0]));
        assert_eq!(v["peers"]["hermes"]["heavy_p99_ms"], 155.0);
        assert_eq!(v["peers"]["hermes"]["heavy_others_p99_ms"], 15.0);
    }

    #[test]
    fn stream_medians_of_an_even_count_are_the_mean_of_the_middle_two() {
        let v = summary_json(
            "d",
            2,
            &[row(vec![placed(vec![1, 1], vec![5, 5], 10.0), placed(vec![2, 0], vec![10, 0], 20.0)])],
        );
        assert_eq!(v["peers"]["hermes"]["heavy_p99_ms"], 20.0);
        assert_eq!(v["peers"]["hermes"]["p99_ms"], 15.0);
    }
}
