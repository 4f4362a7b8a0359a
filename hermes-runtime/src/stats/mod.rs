//! Observability, read from the server's state: [`Snapshot`]
//! (serializable: the JSON of `hermes_tower`'s `/_hermes/stats`) and the
//! `metrics` export.

mod metrics;
mod snapshot;

pub(crate) use metrics::WorkerMetrics;
pub(crate) use snapshot::snapshot;
pub use snapshot::{Fallbacks, PlacementSnapshot, Snapshot, WorkerSnapshot, WorkerStatus};

use crate::context;

/// The snapshot of the server the current thread works for, or `None`
/// outside a Hermes worker thread.
pub fn current_snapshot() -> Option<Snapshot> {
    context::with_current(|worker| worker.and_then(|w| w.server()).map(|s| snapshot(s)))
}
