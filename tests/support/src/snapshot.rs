//! Sums over a server's [`Snapshot`].

use std::time::Duration;

use hermes_runtime::{ServerHandle, Snapshot, WorkerStatus};

use crate::wait::poll_until;

/// Requests in flight on all workers.
pub fn in_flight(s: &Snapshot) -> u32 {
    s.workers.iter().map(|w| w.in_flight).sum()
}

/// Requests finished on all workers.
pub fn requests(s: &Snapshot) -> u64 {
    s.workers.iter().map(|w| w.requests).sum()
}

/// Open connections on all workers.
pub fn open_total(s: &Snapshot) -> u64 {
    s.workers.iter().map(|w| u64::from(w.open_connections)).sum()
}

/// Connections accepted by all workers.
pub fn accepted(s: &Snapshot) -> u64 {
    s.workers.iter().map(|w| w.accepted).sum()
}

/// No request in flight, and no learned thread time of one outstanding, on
/// any worker: the placement counts have settled.
pub fn settled(s: &Snapshot) -> bool {
    s.workers.iter().all(|w| w.in_flight == 0 && w.expected_us == 0)
}

/// Waits (up to 5 s, blocking) until every worker is serving and eligible.
///
/// # Panics
/// On the timeout, showing the snapshot.
pub fn wait_all_eligible(h: &ServerHandle) -> Snapshot {
    poll_until(Duration::from_secs(5), || {
        let s = h.snapshot();
        s.workers.iter().all(|w| w.eligible && w.state == WorkerStatus::Serving).then_some(s)
    })
    .unwrap_or_else(|| panic!("workers never all eligible: {:?}", h.snapshot()))
}
