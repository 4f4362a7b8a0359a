//! The gate of the tests that make network namespaces (`ip netns`) and
//! load kernel programs in them: without root or the `ip` command, a test
//! fails when `HERMES_REQUIRE_BPF=1` (as in CI) and otherwise says loudly
//! that it is skipped.

use std::process::Command;

use crate::ebpf;

/// Whether `test` can make its network namespaces: root, and the `ip`
/// command of iproute2.
///
/// # Panics
/// When it cannot and [`ebpf::required`] holds.
pub fn privileged_or_skip(test: &str) -> bool {
    // SAFETY: geteuid has no preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    let ip = Command::new("ip").arg("-V").output().is_ok_and(|o| o.status.success());
    let why = match (root, ip) {
        (true, true) => return true,
        (false, _) => "needs root (CAP_SYS_ADMIN for network namespaces, CAP_BPF, CAP_NET_ADMIN)",
        (true, false) => "needs the `ip` command (iproute2)",
    };
    assert!(!ebpf::required(), "{test}: HERMES_REQUIRE_BPF=1 but the testbed cannot run: {why}");
    eprintln!("\n*** SKIPPED {test}: {why} ***\n");
    false
}
