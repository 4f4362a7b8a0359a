//! `examples/grafana/hermes.json`, the Grafana dashboard of the runtime's
//! metrics: it parses, covers what users watch (in-flight requests and
//! utilisation per worker, eligibility, placement and offload rates, the
//! kernel's fallbacks, refused connections), and every metric it names is
//! one the `prometheus` example (built by cargo, on a port of its own)
//! exports on `/metrics`.

use std::{
    collections::BTreeSet,
    net::SocketAddr,
    path::Path,
    process::{Command, Stdio},
    time::Duration,
};

use hermes_test_support::{cargo, http::get, process::Process, wait::poll_every, workload::signal};
use serde_json::Value;

/// Every `hermes_*` name in the strings of `value` (queries, legends, the
/// template's `label_values(..)`).
fn metric_names(value: &Value, names: &mut BTreeSet<String>) {
    match value {
        Value::String(s) => {
            let mut rest = s.as_str();
            while let Some(at) = rest.find("hermes_") {
                let name: String =
                    rest[at..].chars().take_while(|c| c.is_ascii_alphanumeric() || *c == '_').collect();
                rest = &rest[at + name.len()..];
                names.insert(name);
            }
        }
        Value::Array(items) => items.iter().for_each(|v| metric_names(v, names)),
        Value::Object(fields) => fields.values().for_each(|v| metric_names(v, names)),
        _ => {}
    }
}

/// The metric names of a Prometheus text exposition.
fn exported(body: &str) -> BTreeSet<String> {
    body.lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .filter_map(|l| l.split(['{', ' ']).next().map(str::to_owned))
        .collect()
}

#[test]
fn the_dashboard_names_only_metrics_the_prometheus_example_exports() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/grafana/hermes.json");
    let text = std::fs::read_to_string(&path).expect("read the dashboard");
    let dashboard: Value = serde_json::from_str(&text).expect("the dashboard is JSON");
    assert!(dashboard["title"].is_string() && dashboard["uid"].is_string(), "a title and a uid");
    let panels = dashboard["panels"].as_array().expect("panels");
    let queries = panels.iter().filter_map(|p| p["targets"].as_array()).flatten().count();
    assert!(queries > 10, "{queries} queries");
    let mut names = BTreeSet::new();
    metric_names(&dashboard, &mut names);
    for wanted in [
        "hermes_in_flight",
        "hermes_busy_seconds_total",
        "hermes_eligible",
        "hermes_placed_in_total",
        "hermes_placed_out_total",
        "hermes_offloaded_total",
        "hermes_fallbacks_total",
        "hermes_refused_total",
    ] {
        assert!(names.contains(wanted), "the dashboard does not show {wanted}: {names:?}");
    }

    let mut example =
        Process::spawn(Command::new(cargo::example("prometheus")).arg("127.0.0.1:0").stderr(Stdio::piped()));
    let addr: SocketAddr = example
        .line_after("metrics: http://", Duration::from_secs(20))
        .trim_end_matches("/metrics")
        .parse()
        .expect("the address the example prints");
    assert_eq!(get(addr, "/").expect("GET /").status, 200);
    // The workers export every 100 ms.
    let mut body = String::new();
    let complete = poll_every(Duration::from_secs(10), Duration::from_millis(100), || {
        body = get(addr, "/metrics").expect("GET /metrics").body;
        let have = exported(&body);
        let missing: Vec<&String> = names.iter().filter(|n| !have.contains(*n)).collect();
        missing.is_empty().then_some(())
    });
    let have = exported(&body);
    let missing: Vec<&String> = names.iter().filter(|n| !have.contains(*n)).collect();
    assert!(complete.is_some(), "the dashboard names {missing:?}, not exported:\n{body}");
    signal(example.pid(), libc::SIGINT);
    let status = example.wait_exit(Duration::from_secs(10)).expect("the example exits on SIGINT");
    assert!(status.success(), "{status}");
}
