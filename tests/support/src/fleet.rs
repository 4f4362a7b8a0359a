//! A fleet of `hermes-workload` hosts behind a balancer users already run
//! (gRPC's own, HAProxy): the consumers' tools (skipped with a message when
//! missing, a failure when `CI` is set), and the open-loop load generator
//! of the fleet benchmarks, `benches/balancers/loadgen.py`, whose JSON
//! result says how many requests each host answered.

use std::{
    collections::HashMap,
    net::TcpListener,
    process::{Command, Stdio},
};

/// The load generator the tests and the fleet benchmarks share.
pub const LOADGEN: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../benches/balancers/loadgen.py");

/// Whether `probe` runs and succeeds; when it does not, says the test is
/// skipped and how to install what is missing.
///
/// # Panics
/// When the tool is missing and `CI` is set: CI installs it (`.ci/run`).
pub fn tool_or_skip(test: &str, probe: &mut Command, install: &str) -> bool {
    let ok = probe.stdout(Stdio::null()).stderr(Stdio::null()).status().is_ok_and(|s| s.success());
    if !ok {
        assert!(std::env::var_os("CI").is_none(), "{test}: {probe:?} failed and CI is set: {install}");
        eprintln!("SKIPPED {test}: {probe:?} failed ({install})");
    }
    ok
}

/// A loopback port free now (bound, read, released), for a program that
/// cannot be told to pick one and say which.
///
/// # Panics
/// When no port can be bound.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).expect("a free loopback port").port()
}

/// What one run of the load generator measured.
#[derive(Debug, Clone, serde::Deserialize)]
pub struct LoadResult {
    /// Requests counted (after the warm-up).
    pub requests: u64,
    /// Requests that failed.
    pub errors: u64,
    /// Median latency, ms.
    pub p50_ms: Option<f64>,
    /// 99th percentile, ms.
    pub p99_ms: Option<f64>,
    /// Requests answered per host, by process id.
    pub hosts: HashMap<String, u64>,
}

impl LoadResult {
    /// The requests answered by the process `pid`.
    pub fn answered_by(&self, pid: u32) -> u64 {
        self.hosts.get(&pid.to_string()).copied().unwrap_or(0)
    }
}

/// Runs `python3 loadgen.py ARGS` and returns its result.
///
/// # Panics
/// When it fails or prints no result.
pub fn loadgen(args: &[&str]) -> LoadResult {
    let output = Command::new("python3").arg(LOADGEN).args(args).output().expect("run python3 loadgen.py");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "loadgen.py {args:?} failed: {}\n{stdout}",
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_str(stdout.trim()).unwrap_or_else(|e| panic!("loadgen.py printed {stdout:?}: {e}"))
}
