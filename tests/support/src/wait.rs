//! Waiting until a condition holds: the servers under test update their
//! tables and snapshots asynchronously, child processes start and exit in
//! their own time. A test waits on the state it needs, never for a fixed
//! time; a state that does not come within the timeout fails the test.
//!
//! - Blocking: [`poll_until`], [`poll_every`], [`eventually_snapshot_blocking`].
//! - Async, without blocking the runtime: [`eventually`], [`eventually_some`],
//!   [`eventually_snapshot`], and [`poll_async`] for probes that await.

use std::time::{Duration, Instant};

use hermes_runtime::{ServerHandle, Snapshot};

/// How long [`eventually`], [`eventually_some`] and [`eventually_snapshot`]
/// wait; the default of the other helpers' callers too.
pub const TIMEOUT: Duration = Duration::from_secs(5);

/// How often the helpers without an interval of their own poll.
const EVERY: Duration = Duration::from_millis(1);

/// Polls `f` every millisecond until it returns `Some` or `timeout` passes,
/// blocking the thread.
pub fn poll_until<T>(timeout: Duration, f: impl FnMut() -> Option<T>) -> Option<T> {
    poll_every(timeout, EVERY, f)
}

/// Polls `f` every `every` until it returns `Some` or `timeout` passes,
/// blocking the thread: for probes that cost a request or a connection.
pub fn poll_every<T>(timeout: Duration, every: Duration, mut f: impl FnMut() -> Option<T>) -> Option<T> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return Some(v);
        }
        if Instant::now() >= deadline {
            return None;
        }
        std::thread::sleep(every);
    }
}

/// Waits (up to `timeout`, blocking the thread) until `cond` holds on the
/// server's snapshot, and returns that snapshot.
///
/// # Panics
/// On the timeout, naming `what` and showing the last snapshot.
pub fn eventually_snapshot_blocking(
    handle: &ServerHandle,
    timeout: Duration,
    what: &str,
    cond: impl Fn(&Snapshot) -> bool,
) -> Snapshot {
    let mut last = None;
    poll_until(timeout, || {
        let snapshot = handle.snapshot();
        let holds = cond(&snapshot);
        last = Some(snapshot);
        holds.then(|| last.take().expect("just stored"))
    })
    .unwrap_or_else(|| panic!("timed out after {timeout:?} waiting for {what}: {last:#?}"))
}

/// Waits (up to [`TIMEOUT`]) until `cond` holds, polling every millisecond
/// without blocking the runtime.
///
/// # Panics
/// On the timeout, naming `what`.
pub async fn eventually(what: &str, mut cond: impl FnMut() -> bool) {
    eventually_some(what, || cond().then_some(())).await;
}

/// Waits (up to [`TIMEOUT`]) until `probe` returns `Some`, polling every
/// millisecond without blocking the runtime, and returns the value.
///
/// # Panics
/// On the timeout, naming `what`.
pub async fn eventually_some<T>(what: &str, mut probe: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + TIMEOUT;
    loop {
        if let Some(v) = probe() {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out after {TIMEOUT:?} waiting for {what}");
        tokio::time::sleep(EVERY).await;
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
    let deadline = Instant::now() + TIMEOUT;
    loop {
        let snapshot = handle.snapshot();
        if cond(&snapshot) {
            return snapshot;
        }
        assert!(Instant::now() < deadline, "timed out after {TIMEOUT:?} waiting for {what}: {snapshot:#?}");
        tokio::time::sleep(EVERY).await;
    }
}

/// Awaits `probe` every `every` until it returns `Some` or `timeout` passes,
/// without blocking the runtime: for probes that connect or send a request.
/// `None` on the timeout, for the caller to say what it lacked.
pub async fn poll_async<T>(
    timeout: Duration,
    every: Duration,
    mut probe: impl AsyncFnMut() -> Option<T>,
) -> Option<T> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = probe().await {
            return Some(v);
        }
        if Instant::now() >= deadline {
            return None;
        }
        tokio::time::sleep(every).await;
    }
}
