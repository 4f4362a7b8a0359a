//! End to end: the harness's smoke mode against the real `hermes-workload` binary, every
//! in-workspace peer (`hermes`, `reuseport`, `shared`, `tokio`), over loopback sockets.
//!
//! The ntex peer is left out: it builds outside the workspace and takes minutes;
//! `hermes-bench --smoke` (run by `.ci/run`) covers it.

use std::path::{Path, PathBuf};
use std::process::Command;

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn cargo() -> Command {
    Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()))
}

/// Builds the workload server in release mode, as the harness does by default.
fn build_workload() -> PathBuf {
    let status = cargo()
        .args(["build", "--release", "-p", "hermes-runtime", "--bin", "hermes-workload"])
        .current_dir(workspace_root())
        .status()
        .expect("running cargo");
    assert!(status.success(), "building hermes-workload failed: {status}");
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_root().join("target"));
    target.join("release/hermes-workload")
}

#[test]
fn smoke_mode_serves_every_in_workspace_peer_over_loopback() {
    let bin = build_workload();
    let out = std::env::temp_dir().join(format!("hermes-bench-smoke-{}", std::process::id()));
    let output = Command::new(env!("CARGO_BIN_EXE_hermes-bench"))
        .args(["--smoke", "--peers", "hermes,reuseport,shared,tokio", "--workload-bin"])
        .arg(&bin)
        .arg("--out")
        .arg(&out)
        .output()
        .expect("running hermes-bench");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "smoke failed\nstdout:\n{stdout}\nstderr:\n{stderr}");
    let report = std::fs::read_to_string(out.join("light.md")).expect("the light report");
    for peer in ["hermes", "reuseport", "shared", "tokio"] {
        assert!(report.contains(&format!("| {peer} |")), "{peer} missing from the report:\n{report}");
    }
    assert!(out.join("light.svg").exists());
    let _ = std::fs::remove_dir_all(out);
}
