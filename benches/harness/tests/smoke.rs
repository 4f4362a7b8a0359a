//! End to end: the harness's smoke mode over loopback sockets, against the real servers it builds
//! itself, as it does for users (so the packages that hold them are named in one place,
//! `peer.rs`): every in-workspace peer (`hermes`, `hermes-userspace`, `hermes-pinned`,
//! `hermes-unpinned`, `reuseport`, `shared`, `tokio`) on every scenario, both phases of the capacity scenarios
//! included; the peers outside the workspace (`actix`, `ntex`, which take minutes to build the
//! first time) on the scenarios that reach their every mode (HTTP/1.1 and HTTP/2, open and closed
//! loop, the heavy routes); and the generator and the servers on CPUs of their own.

use std::path::PathBuf;
use std::process::Command;
use std::sync::Mutex;

use nix::sched::{CpuSet, sched_getaffinity};
use nix::unistd::Pid;
use serde_json::Value;

const PEERS: [&str; 7] =
    ["hermes", "hermes-userspace", "hermes-pinned", "hermes-unpinned", "reuseport", "shared", "tokio"];

/// Every scenario, by the name of its reports: the capacity scenarios have a second, fixed-rate
/// phase.
const REPORTS: [&str; 11] = [
    "light",
    "mixed",
    "mixed-spin",
    "skew",
    "churn",
    "hang",
    "h2",
    "capacity",
    "capacity-fixed",
    "capacity-h2",
    "capacity-h2-fixed",
];

/// The saturation phases: closed loop, so no share of an offered rate delivered.
const CLOSED: [&str; 2] = ["capacity", "capacity-h2"];

/// The smoke runs take the machine one at a time, as the harness's runs do.
static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

/// Runs `hermes-bench --smoke` with `args`; asserts that it succeeded and checked every peer's
/// endpoints, and returns its reports' folder, the summary and stderr.
fn smoke(name: &str, args: &[&str]) -> (PathBuf, Value, String) {
    let out = std::env::temp_dir().join(format!("hermes-bench-{name}-{}", std::process::id()));
    let _turn = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let output = Command::new(env!("CARGO_BIN_EXE_hermes-bench"))
        .arg("--smoke")
        .args(args)
        .arg("--out")
        .arg(&out)
        .output()
        .expect("running hermes-bench");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    assert!(output.status.success(), "smoke failed\nstdout:\n{stdout}\nstderr:\n{stderr}");
    assert!(stderr.contains("smoke: every peer serves /, /block and /work"), "{stderr}");
    let text = std::fs::read_to_string(out.join("summary.json")).expect("summary.json");
    let doc = serde_json::from_str(&text).expect("summary.json is JSON");
    (out, doc, stderr)
}

/// Every report of `reports` has a row, both charts (the percentiles' with a line per peer) and
/// in summary.json a number for each documented figure, for each of `peers`; the fixed rate of
/// each capacity scenario present is 80% of its slowest peer's capacity (a tenth of that in a
/// smoke run).
fn check_reports(out: &std::path::Path, doc: &Value, reports: &[&str], peers: &[&str]) {
    let scenarios = doc["scenarios"].as_object().expect("a scenarios object");
    let mut names: Vec<&str> = reports.to_vec();
    names.sort_unstable();
    assert_eq!(scenarios.keys().collect::<Vec<_>>(), names, "{doc}");
    for &name in reports {
        let report = std::fs::read_to_string(out.join(format!("{name}.md"))).expect("the report");
        assert!(out.join(format!("{name}.svg")).exists(), "{name}.svg");
        let chart = std::fs::read_to_string(out.join(format!("{name}-percentiles.svg"))).expect("the chart");
        assert!(chart.starts_with("<svg") && chart.contains("90%"), "{name}-percentiles.svg:\n{chart}");
        let entry = scenarios[name]["peers"].as_object().expect("a peers object");
        assert_eq!(entry.len(), peers.len(), "{name}: {doc}");
        for &peer in peers {
            assert!(report.contains(&format!("| {peer} |")), "{peer} missing from {name}:\n{report}");
            // The legend's text, on a line of its own.
            assert!(chart.contains(&format!("\n{peer}\n")), "{peer} has no line in {name}-percentiles.svg");
            // summary.json: {"scenarios": {NAME: {"peers": {PEER: {"p99_ms", "p50_ms", "rps",
            // "over_1s", "errors", "p999_ms", "cpu_us_per_req", ...}}}}}, with figures that say the
            // peer served.
            let p = &entry[peer];
            for key in ["p99_ms", "p50_ms", "rps", "over_1s", "errors", "p999_ms", "cpu_us_per_req"] {
                assert!(p[key].is_number(), "{name}: {peer}.{key} is not a number in\n{p}");
            }
            let figure = |key: &str| p[key].as_f64().unwrap();
            let (p50, p99, p999) = (figure("p50_ms"), figure("p99_ms"), figure("p999_ms"));
            assert!(
                p50 > 0.0 && p50 <= p99 && p99 <= p999,
                "{name}: {peer}: p50 {p50}, p99 {p99}, p99.9 {p999} ms"
            );
            assert!(figure("rps") > 0.0, "{name}: {peer} completed nothing:\n{p}");
            assert!(figure("cpu_us_per_req") > 0.0, "{name}: {peer} took no CPU:\n{p}");
            assert_eq!(p["p99_ms_runs"].as_array().map(Vec::len), Some(1), "{name}: {peer}: one run\n{p}");
            // The workers' stall: servers on the Hermes runtime (hermes*, and `reuseport` and
            // `shared`, its modes without the kernel program) report their run-queue delay, a
            // share of the run; Tokio's, actix-web's and ntex's do not.
            let stall = p["stall"].as_f64();
            if peer.starts_with("hermes") {
                assert!(stall.is_some(), "{name}: {peer}: no stall\n{p}");
            }
            if ["tokio", "actix", "ntex"].iter().any(|other| peer.starts_with(other)) {
                assert!(p["stall"].is_null(), "{name}: {peer}\n{p}");
            }
            assert!(stall.is_none_or(|s| (0.0..=1.0).contains(&s)), "{name}: {peer}: stall {stall:?}");
            // The share delivered is an open loop's figure: none at saturation.
            assert_eq!(p["delivered"].is_number(), !CLOSED.contains(&name), "{name}: {peer}\n{p}");
        }
    }
    for closed in CLOSED.iter().filter(|c| reports.contains(c)) {
        let rps = |peer: &&str| scenarios[*closed]["peers"][*peer]["rps"].as_f64().unwrap();
        let slowest = peers.iter().map(rps).fold(f64::MAX, f64::min);
        let fixed = &scenarios[format!("{closed}-fixed").as_str()]["peers"][peers[0]];
        let offered = fixed["offered_rps"].as_f64().unwrap();
        assert!(
            (offered / (0.08 * slowest) - 1.0).abs() < 0.25,
            "{closed}: offered {offered}, slowest {slowest}"
        );
    }
}

#[test]
fn smoke_mode_serves_every_in_workspace_peer_on_every_scenario() {
    let (out, doc, _) = smoke("smoke", &["--scenario", "all", "--peers", &PEERS.join(",")]);
    check_reports(&out, &doc, &REPORTS, &PEERS);
    // The peers' modes as their servers announced them.
    let capacity = &doc["scenarios"]["capacity"]["peers"];
    assert_eq!(capacity["hermes-pinned"]["mode"], "hermes-pinned");
    assert_eq!(capacity["hermes-unpinned"]["mode"], "hermes-unpinned");
    assert_eq!(capacity["hermes-userspace"]["mode"], "hermes-userspace");
    let _ = std::fs::remove_dir_all(out);
}

#[test]
fn smoke_mode_serves_actix_and_ntex_in_their_modes() {
    let reports = ["mixed", "h2", "capacity", "capacity-fixed"];
    let (out, doc, _) = smoke("outside", &["--scenario", "mixed,h2,capacity", "--peers", "actix,ntex"]);
    check_reports(&out, &doc, &reports, &["actix", "ntex"]);
    let peers = |name: &str| doc["scenarios"][name]["peers"].clone();
    assert_eq!(peers("mixed")["actix"]["mode"], "actix");
    // ntex in the balancing mode its probe chose, on its HTTP/2-only listener for h2.
    let mode = |name: &str| peers(name)["ntex"]["mode"].as_str().unwrap_or_default().to_owned();
    let balancing = ["incoming-cpu", "least-loaded", "round-robin"];
    assert!(balancing.iter().any(|b| mode("mixed") == format!("ntex-{b}")), "{}", mode("mixed"));
    assert!(balancing.iter().any(|b| mode("h2") == format!("ntex-h2-{b}")), "{}", mode("h2"));
    let _ = std::fs::remove_dir_all(out);
}

#[test]
fn smoke_mode_runs_the_generator_and_the_servers_on_cpus_of_their_own() {
    let set = sched_getaffinity(Pid::from_raw(0)).expect("this process's CPUs");
    let cpus: Vec<usize> = (0..CpuSet::count()).filter(|&c| set.is_set(c).unwrap_or(false)).collect();
    // The first CPU for the generator and the last for the servers: one CPU each on a machine of
    // two, shared on a machine of one.
    let (client, server) = (cpus[0].to_string(), cpus[cpus.len() - 1].to_string());
    let args = ["--scenario", "capacity", "--peers", "hermes,hermes-unpinned"];
    let (out, doc, _) =
        smoke("cpus", &[&args[..], &["--client-cpus", &client, "--server-cpus", &server]].concat());
    check_reports(&out, &doc, &["capacity", "capacity-fixed"], &["hermes", "hermes-unpinned"]);
    let report = std::fs::read_to_string(out.join("capacity.md")).unwrap();
    // One worker: the server's CPUs, one.
    assert!(report.contains("; 1 workers per server;"), "{report}");
    assert!(
        report
            .contains(&format!("load generator: 1 thread(s) on CPUs {client}, the servers on CPUs {server}")),
        "{report}"
    );
    let _ = std::fs::remove_dir_all(out);
}

#[test]
fn help_lists_the_documented_flags() {
    let output = Command::new(env!("CARGO_BIN_EXE_hermes-bench")).arg("--help").output().expect("--help");
    assert!(output.status.success());
    let help = String::from_utf8_lossy(&output.stdout);
    for flag in [
        "--scenario",
        "--repeat",
        "--quick",
        "--peers",
        "--workers",
        "--out",
        "--smoke",
        "--validate",
        "--rate-scale",
        "--workload-bin",
        "--ntex-bin",
        "--actix-bin",
        "--ntex-balancing",
        "--server-cpus",
        "--client-cpus",
    ] {
        assert!(help.contains(flag), "{flag} missing from --help:\n{help}");
    }
}

#[test]
fn bad_arguments_are_refused_with_a_reason() {
    for (args, expect) in [
        (&["--scenario", "light,nope"][..], "invalid value 'nope' for '--scenario"),
        (&["--repeat", "0"][..], "--repeat"),
        (&["--peers", "hermes,apache"][..], "invalid value 'apache' for '--peers"),
        (&["--ntex-balancing", "random"][..], "invalid value 'random' for '--ntex-balancing"),
        (&["--server-cpus", "3-1"][..], "the range runs backwards"),
        (&["--client-cpus", "x"][..], "is not a CPU"),
    ] {
        let output = Command::new(env!("CARGO_BIN_EXE_hermes-bench"))
            .args(args)
            .arg("--workload-bin")
            .arg("/nonexistent/hermes-workload")
            .arg("--out")
            .arg(std::env::temp_dir().join(format!("hermes-bench-bad-{}", std::process::id())))
            .output()
            .expect("running hermes-bench");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(!output.status.success(), "{args:?} was accepted");
        assert!(stderr.contains(expect), "{args:?}: {stderr}");
    }
}
