//! One test re-run in a child process without CAP_BPF, or with CAP_BPF
//! alone: the parent test runs [`run_child`], the child test (marked
//! `#[ignore]`, so only the parent runs it) starts with
//! [`child_without_caps`] or [`child_with_cap_bpf_only`] and prints a marker
//! the parent looks for.

use std::process::Command;

use caps::{CapSet, Capability};

/// The variable that tells the child test it was started by its parent.
pub const CHILD_ENV: &str = "HERMES_TEST_CHILD";

/// Runs the ignored test `child` of this test binary in a child process and
/// returns its stdout.
///
/// # Panics
/// When the child fails, or its stdout lacks `marker` (so a child that did
/// not run its checks fails the parent).
pub fn run_child(child: &str, marker: &str) -> String {
    let exe = std::env::current_exe().expect("the test binary's path");
    let out = Command::new(exe)
        .args(["--ignored", "--exact", child, "--nocapture", "--test-threads=1"])
        .env(CHILD_ENV, child)
        .output()
        .expect("run the child test");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "child {child} failed:\n{stdout}\n{stderr}");
    assert!(stdout.contains(marker), "child {child} did not print {marker:?}:\n{stdout}\n{stderr}");
    stdout
}

/// In the child test `child`: drops every capability of this thread (those
/// it starts later inherit none) and returns true; returns false when the
/// test was not started by [`run_child`] (it then has nothing to do).
///
/// # Panics
/// When the capabilities cannot be dropped.
pub fn child_without_caps(child: &str) -> bool {
    if std::env::var(CHILD_ENV).as_deref() != Ok(child) {
        return false;
    }
    for set in [CapSet::Effective, CapSet::Permitted, CapSet::Inheritable] {
        caps::clear(None, set).expect("drop the capabilities");
    }
    assert!(!caps::has_cap(None, CapSet::Effective, Capability::CAP_BPF).expect("read the capabilities"));
    true
}

/// In the child test `child`: keeps CAP_BPF alone on this thread (what a
/// server granted `setcap cap_bpf+ep` has) and returns true; returns false
/// when the test was not started by [`run_child`].
///
/// # Panics
/// When the capabilities cannot be set, or CAP_BPF is not permitted.
pub fn child_with_cap_bpf_only(child: &str) -> bool {
    if std::env::var(CHILD_ENV).as_deref() != Ok(child) {
        return false;
    }
    let only: caps::CapsHashSet = [Capability::CAP_BPF].into_iter().collect();
    for set in [CapSet::Effective, CapSet::Permitted] {
        caps::set(None, set, &only).expect("keep CAP_BPF alone");
    }
    caps::clear(None, CapSet::Inheritable).expect("drop the inheritable capabilities");
    assert!(
        !caps::has_cap(None, CapSet::Effective, Capability::CAP_SYS_ADMIN).expect("read the capabilities")
    );
    assert!(!caps::has_cap(None, CapSet::Effective, Capability::CAP_PERFMON).expect("read the capabilities"));
    true
}
