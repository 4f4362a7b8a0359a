//! The gate of the kernel-path tests: without the privileges to load the
//! dispatch program, a test fails when `HERMES_REQUIRE_BPF=1` (as in CI) and
//! otherwise says loudly that it is skipped.

use std::io::{self, Write};

use hermes_bpf::Dispatcher;

/// Whether `HERMES_REQUIRE_BPF=1` is set: eBPF tests must run, not skip.
pub fn required() -> bool {
    std::env::var_os("HERMES_REQUIRE_BPF").is_some_and(|v| v == "1")
}

/// Loads the dispatch program for `test`; `None` (after a loud message on
/// stderr) when it cannot be loaded.
///
/// # Panics
/// When the program does not load and [`required`] holds.
pub fn dispatcher_or_skip(test: &str) -> Option<Dispatcher> {
    match Dispatcher::load() {
        Ok(d) => Some(d),
        Err(e) => {
            assert!(!required(), "{test}: eBPF is required (HERMES_REQUIRE_BPF=1) but unavailable: {e}");
            skipped(test, &e.to_string());
            None
        }
    }
}

/// Whether `test` can run its eBPF part; see [`dispatcher_or_skip`].
pub fn require_bpf(test: &str) -> bool {
    dispatcher_or_skip(test).is_some()
}

/// Says on stderr, past the test harness's output capture, that `test` is
/// skipped and why.
pub fn skipped(test: &str, why: &str) {
    let _ = writeln!(
        io::stderr(),
        "\n!!!!! SKIPPED {test}: eBPF unavailable ({why}); set HERMES_REQUIRE_BPF=1 to fail instead !!!!!\n"
    );
}
