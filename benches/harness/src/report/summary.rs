//! `summary.json`, for scripts: per scenario and peer the medians of the figures and every run's
//! value, and where the labelled streams landed.
//!
//! The types below are the file's shape: every key is a field (or, for a labelled stream, the
//! field's name after the stream's label, e.g. `heavy_p99_ms`).

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use serde::ser::{Serialize, SerializeMap, Serializer};

use super::ScenarioReport;
use super::figures::{Figure, PeerRow, Placement, fig};
use crate::peer::Peer;
use crate::stats;

/// A figure of every run, `null` for a run that did not serve.
type Runs = Vec<Option<f64>>;

/// The whole file: the command that produced it, and each scenario's entry by name.
#[derive(Debug, serde::Serialize)]
pub struct Summary {
    /// `hermes-bench` and its arguments.
    command: String,
    scenarios: BTreeMap<String, ScenarioSummary>,
}

impl Summary {
    /// A summary of no scenario yet, for `hermes-bench` run with `args`.
    pub fn new(args: &[String]) -> Self {
        Self { command: format!("hermes-bench {}", args.join(" ")), scenarios: BTreeMap::new() }
    }

    /// Adds a scenario's entry; `workers` is the workers per server.
    pub fn add(&mut self, report: &ScenarioReport<'_>, workers: usize) {
        self.scenarios.insert(report.name.to_owned(), ScenarioSummary::new(report, workers));
    }

    /// Writes the file, pretty-printed.
    pub fn write(&self, path: &Path) -> Result<(), String> {
        let text =
            serde_json::to_string_pretty(self).map_err(|e| format!("encoding {}: {e}", path.display()))?;
        std::fs::write(path, text + "\n").map_err(|e| format!("writing {}: {e}", path.display()))
    }
}

/// One scenario's entry.
#[derive(Debug, serde::Serialize)]
struct ScenarioSummary {
    description: String,
    /// Workers per server.
    workers: usize,
    /// The most runs any peer made.
    repeat: usize,
    peers: BTreeMap<String, PeerSummary>,
}

impl ScenarioSummary {
    fn new(report: &ScenarioReport<'_>, workers: usize) -> Self {
        Self {
            description: report.description.to_owned(),
            workers,
            repeat: report.rows.iter().map(|r| r.runs.len()).max().unwrap_or(0),
            peers: report.rows.iter().map(|r| (r.peer.to_string(), PeerSummary::new(r))).collect(),
        }
    }
}

/// Microseconds are the histograms' resolution: three decimals of a millisecond.
fn round(v: Option<f64>) -> Option<f64> {
    v.map(|v| (v * 1000.0).round() / 1000.0)
}

/// One peer's figures: each the median over the runs that served (`null` when none did), and its
/// value in every run (`..._runs`).
#[derive(Debug, serde::Serialize)]
struct PeerSummary {
    p99_ms: Option<f64>,
    p50_ms: Option<f64>,
    rps: Option<f64>,
    /// Requests slower than a second.
    over_1s: Option<f64>,
    errors: Option<f64>,
    p99_ms_runs: Runs,
    p50_ms_runs: Runs,
    rps_runs: Runs,
    over_1s_runs: Runs,
    errors_runs: Runs,
    p999_ms: Option<f64>,
    offered_rps: Option<f64>,
    generator_wake_p99_ms: Option<f64>,
    server_cpu: Option<f64>,
    generator_cpu: Option<f64>,
    p999_ms_runs: Runs,
    offered_rps_runs: Runs,
    generator_wake_p99_ms_runs: Runs,
    server_cpu_runs: Runs,
    generator_cpu_runs: Runs,
    /// The server's CPU time per successful request, in microseconds.
    cpu_us_per_req: Option<f64>,
    /// The share of the offered rate completed in the window (`null` for a closed loop).
    delivered: Option<f64>,
    cpu_us_per_req_runs: Runs,
    delivered_runs: Runs,
    /// The modes the runs reported, e.g. `hermes`, or `hermes/kernel-hash` when they differ.
    mode: String,
    runs: usize,
    runs_failed: usize,
    /// Why runs failed, when some did.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    failures: Vec<String>,
    #[serde(flatten)]
    streams: LabelledStreams,
}

impl PeerSummary {
    fn new(r: &PeerRow) -> Self {
        let median = |f: Figure| round(r.median(f));
        let runs = |f: Figure| r.per_run(f).into_iter().map(round).collect();
        Self {
            p99_ms: median(fig::p99),
            p50_ms: median(fig::p50),
            rps: median(fig::rps),
            over_1s: median(fig::slow),
            errors: median(fig::errors),
            p99_ms_runs: runs(fig::p99),
            p50_ms_runs: runs(fig::p50),
            rps_runs: runs(fig::rps),
            over_1s_runs: runs(fig::slow),
            errors_runs: runs(fig::errors),
            p999_ms: median(fig::p999),
            offered_rps: median(fig::offered),
            generator_wake_p99_ms: median(fig::wake_p99),
            server_cpu: median(fig::server_cpu),
            generator_cpu: median(fig::generator_cpu),
            p999_ms_runs: runs(fig::p999),
            offered_rps_runs: runs(fig::offered),
            generator_wake_p99_ms_runs: runs(fig::wake_p99),
            server_cpu_runs: runs(fig::server_cpu),
            generator_cpu_runs: runs(fig::generator_cpu),
            cpu_us_per_req: median(fig::cpu_us_per_req),
            delivered: median(fig::delivered),
            cpu_us_per_req_runs: runs(fig::cpu_us_per_req),
            delivered_runs: runs(fig::delivered),
            mode: r.mode(),
            runs: r.runs.len(),
            runs_failed: r.runs.iter().filter(|x| !x.served()).count(),
            failures: r.runs.iter().filter_map(|x| x.failure.clone()).collect(),
            streams: LabelledStreams::new(r),
        }
    }
}

/// Where one labelled stream landed in every run (`null` for a run that did not serve), and its
/// p99s.
#[derive(Debug)]
struct StreamSummary {
    conns_per_worker_runs: Vec<Option<Vec<u64>>>,
    requests_per_worker_runs: Vec<Option<Vec<u64>>>,
    /// The stream's own p99, and that of every other stream together: medians and every run's.
    p99_ms: Option<f64>,
    p99_ms_runs: Runs,
    others_p99_ms: Option<f64>,
    others_p99_ms_runs: Runs,
}

impl StreamSummary {
    fn new(r: &PeerRow, label: &str) -> Self {
        let placed: Vec<Option<&Placement>> = r
            .runs
            .iter()
            .map(|run| run.placements.iter().find(|p| p.label == label).filter(|_| run.served()))
            .collect();
        let own: Runs = placed.iter().map(|p| p.and_then(|p| p.p99_ms)).collect();
        let others: Runs = placed.iter().map(|p| p.and_then(|p| p.others_p99_ms)).collect();
        let median = |runs: &Runs| round(stats::median(&runs.iter().flatten().copied().collect::<Vec<_>>()));
        let rounded = |runs: Runs| runs.into_iter().map(round).collect();
        Self {
            conns_per_worker_runs: placed.iter().map(|p| p.map(|p| p.conns.clone())).collect(),
            requests_per_worker_runs: placed.iter().map(|p| p.map(|p| p.requests.clone())).collect(),
            p99_ms: median(&own),
            p99_ms_runs: rounded(own),
            others_p99_ms: median(&others),
            others_p99_ms_runs: rounded(others),
        }
    }
}

/// A peer's labelled streams, by label; each field of a [`StreamSummary`] becomes a key of the
/// peer's entry named after the label (`heavy_conns_per_worker_runs`, `heavy_p99_ms`, ...).
#[derive(Debug)]
struct LabelledStreams(BTreeMap<String, StreamSummary>);

impl LabelledStreams {
    fn new(r: &PeerRow) -> Self {
        let labels: BTreeSet<&str> =
            r.runs.iter().flat_map(|run| run.placements.iter().map(|p| p.label.as_str())).collect();
        Self(labels.into_iter().map(|label| (label.to_owned(), StreamSummary::new(r, label))).collect())
    }
}

impl Serialize for LabelledStreams {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut map = serializer.serialize_map(Some(self.0.len() * 6))?;
        for (label, s) in &self.0 {
            map.serialize_entry(&format!("{label}_conns_per_worker_runs"), &s.conns_per_worker_runs)?;
            map.serialize_entry(&format!("{label}_requests_per_worker_runs"), &s.requests_per_worker_runs)?;
            map.serialize_entry(&format!("{label}_p99_ms"), &s.p99_ms)?;
            map.serialize_entry(&format!("{label}_p99_ms_runs"), &s.p99_ms_runs)?;
            map.serialize_entry(&format!("{label}_others_p99_ms"), &s.others_p99_ms)?;
            map.serialize_entry(&format!("{label}_others_p99_ms_runs"), &s.others_p99_ms_runs)?;
        }
        map.end()
    }
}

/// The figures every entry has a number for, for every peer that served.
const EVERY_FIGURE: [&str; 7] = ["p99_ms", "p50_ms", "rps", "over_1s", "errors", "p999_ms", "cpu_us_per_req"];

/// The smoke run's check of the file it wrote: it reads back with a number for each documented
/// figure of every report (a scenario's, or a phase's) and peer.
pub fn has_every_figure(path: &Path, scenarios: &[String], peers: &[Peer]) -> bool {
    let doc: Option<serde_json::Value> =
        std::fs::read_to_string(path).ok().and_then(|t| serde_json::from_str(&t).ok());
    let Some(doc) = doc else {
        eprintln!("smoke: {} is missing or not JSON", path.display());
        return false;
    };
    let mut ok = true;
    for s in scenarios {
        for p in peers {
            for key in EVERY_FIGURE {
                if !doc["scenarios"][s]["peers"][p.to_string()][key].is_number() {
                    eprintln!("smoke: summary.json has no number at scenarios.{s}.peers.{p}.{key}");
                    ok = false;
                }
            }
        }
    }
    ok
}

#[cfg(test)]
mod tests {
    use serde_json::{Value, json};

    use super::super::fixtures::{placed, repeated, report, row, skewed};
    use super::*;

    /// The entry of `rows` as a script reads it.
    fn entry(rows: &[PeerRow]) -> Value {
        serde_json::to_value(ScenarioSummary::new(&report("mixed", rows), 2)).unwrap()
    }

    #[test]
    fn medians_and_every_run_of_each_peer() {
        let v = entry(&repeated());
        assert_eq!(v["workers"], 2);
        assert_eq!(v["repeat"], 3);
        assert_eq!(v["peers"]["hermes"]["p99_ms"], 3.0);
        assert_eq!(v["peers"]["hermes"]["p99_ms_runs"], json!([2.0, 8.0, 3.0]));
        assert_eq!(v["peers"]["tokio"]["p99_ms"], 5.0);
        assert_eq!(v["peers"]["tokio"]["p99_ms_runs"], json!([4.0, null, 6.0]));
        assert_eq!(v["peers"]["tokio"]["runs_failed"], 1);
        assert_eq!(v["peers"]["tokio"]["failures"], json!(["did not start"]));
        assert!(v["peers"]["hermes"].get("failures").is_none(), "{v}");
        for key in EVERY_FIGURE {
            assert!(v["peers"]["tokio"][key].is_number(), "{key}: {v}");
        }
        assert_eq!(v["peers"]["tokio"]["cpu_us_per_req_runs"], json!([25.0, null, 25.0]));
    }

    #[test]
    fn placements_of_every_run() {
        let v = entry(&[skewed()]);
        assert_eq!(v["peers"]["hermes"]["heavy_conns_per_worker_runs"], json!([[2, 0], [1, 1], [0, 2]]));
        assert_eq!(v["peers"]["hermes"]["heavy_requests_per_worker_runs"][1], json!([210, 190]));
        assert_eq!(v["peers"]["hermes"]["heavy_p99_ms_runs"], json!([155.0, 26.0, 165.0]));
        assert_eq!(v["peers"]["hermes"]["heavy_p99_ms"], 155.0);
        assert_eq!(v["peers"]["hermes"]["heavy_others_p99_ms"], 15.0);
    }

    #[test]
    fn stream_medians_of_an_even_count_are_the_mean_of_the_middle_two() {
        let v =
            entry(&[row(vec![placed(vec![1, 1], vec![5, 5], 10.0), placed(vec![2, 0], vec![10, 0], 20.0)])]);
        assert_eq!(v["peers"]["hermes"]["heavy_p99_ms"], 20.0);
        assert_eq!(v["peers"]["hermes"]["p99_ms"], 15.0);
    }

    #[test]
    fn written_file_has_every_figure() {
        let path = std::env::temp_dir().join(format!("hermes-bench-summary-{}.json", std::process::id()));
        let rows = repeated();
        let mut summary = Summary::new(&["--smoke".to_owned()]);
        summary.add(&report("light", &rows), 2);
        summary.write(&path).unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        let doc: Value = serde_json::from_str(&text).unwrap();
        assert_eq!(doc["command"], "hermes-bench --smoke");
        let light = ["light".to_owned()];
        assert!(has_every_figure(&path, &light, &[Peer::Hermes, Peer::Tokio]), "{text}");
        assert!(!has_every_figure(&path, &light, &[Peer::Ntex]));
        assert!(!has_every_figure(&path, &["capacity".to_owned()], &[Peer::Hermes]));
        assert_eq!(doc["scenarios"]["light"]["peers"]["hermes"]["cpu_us_per_req"], 25.0);
        assert_eq!(doc["scenarios"]["light"]["peers"]["hermes"]["delivered"], Value::Null);
        let _ = std::fs::remove_file(path);
    }
}
