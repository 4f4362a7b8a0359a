//! Waiting until a condition holds: the servers under test update their
//! tables and snapshots asynchronously.

use std::time::{Duration, Instant};

use hermes_runtime::{ServerHandle, Snapshot};

/// How long [`eventually`] and [`eventually_snapshot`] wait.
pub const TIMEOUT: Duration = Duration::from_secs(5);

/// Polls `f` every millisecond until it returns `Some` or `timeout` passes,
/// blocking the thread.
pub fn poll_until<T>(timeout: Duration, mut f: impl FnMut() -> Option<T>) -> Option<T> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return Some(v);
        }
        if Instant::now() >= deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// Waits (up to [`TIMEOUT`]) until `cond` holds, polling every millisecond
/// without blocking the runtime.
///
/// # Panics
/// On the timeout, naming `what`.
pub async fn eventually(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + TIMEOUT;
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

/// Waits (up to [`TIMEOUT`]) until `cond` holds on the server's snapshot,
/// and returns that snapshot.
///
/// # Panics
/// On the timeout, naming `what` and showing the last snapshot.
pub async fn eventually_snapshot(
    handle: &ServerHandle,
    what: &str,
    cond: impl Fn(&Snapshot) -> bool,
) -> Snapshot {
    let mut last = None;
    eventually(what, || {
        let snapshot = handle.snapshot();
        let holds = cond(&snapshot);
        last = Some(snapshot);
        holds
    })
    .await;
    last.expect("at least one snapshot was taken")
}
