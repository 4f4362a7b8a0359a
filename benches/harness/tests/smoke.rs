//! End to end: the harness's smoke mode against the real `hermes-workload` binary, every
//! in-workspace peer (`hermes`, `reuseport`, `shared`, `tokio`), over loopback sockets.
//!
//! The harness builds the workload server itself, as it does for users (so the package that holds
//! it is named in one place, `peer.rs`). The ntex peer is left out: it builds outside the
//! workspace and takes minutes; `hermes-bench --smoke` (run by `.ci/run`) covers it.

use std::process::Command;

use serde_json::Value;

const PEERS: [&str; 4] = ["hermes", "reuseport", "shared", "tokio"];

#[test]
fn smoke_mode_serves_every_in_workspace_peer_over_loopback() {
    let out = std::env::temp_dir().join(format!("hermes-bench-smoke-{}", std::process::id()));
    let output = Command::new(env!("CARGO_BIN_EXE_hermes-bench"))
        .args(["--smoke", "--peers", &PEERS.join(",")])
        .arg("--out")
        .arg(&out)
        .output()
        .expect("running hermes-bench");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "smoke failed\nstdout:\n{stdout}\nstderr:\n{stderr}");
    let report = std::fs::read_to_string(out.join("light.md")).expect("the light report");
    for peer in PEERS {
        assert!(report.contains(&format!("| {peer} |")), "{peer} missing from the report:\n{report}");
    }
    assert!(out.join("light.svg").exists());

    // summary.json: {"scenarios": {NAME: {"peers": {PEER: {"p99_ms", "p50_ms", "rps", "over_1s",
    // "errors"}}}}}, with figures that say the peer served.
    let text = std::fs::read_to_string(out.join("summary.json")).expect("summary.json");
    let doc: Value = serde_json::from_str(&text).expect("summary.json is JSON");
    let scenarios = doc["scenarios"].as_object().expect("a scenarios object");
    assert_eq!(scenarios.keys().collect::<Vec<_>>(), ["light"], "{text}");
    let peers = scenarios["light"]["peers"].as_object().expect("a peers object");
    assert_eq!(peers.len(), PEERS.len(), "{text}");
    for peer in PEERS {
        let p = &peers[peer];
        for key in ["p99_ms", "p50_ms", "rps", "over_1s", "errors"] {
            assert!(p[key].is_number(), "{peer}.{key} is not a number in\n{text}");
        }
        let (p50, p99) = (p["p50_ms"].as_f64().unwrap(), p["p99_ms"].as_f64().unwrap());
        assert!(p50 > 0.0 && p50 <= p99, "{peer}: p50 {p50} ms, p99 {p99} ms");
        assert!(p["rps"].as_f64().unwrap() > 0.0, "{peer} completed nothing in the window:\n{text}");
        assert_eq!(p["p99_ms_runs"].as_array().map(Vec::len), Some(1), "{peer}: one run\n{text}");
    }
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
