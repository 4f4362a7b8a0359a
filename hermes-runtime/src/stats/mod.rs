//! Observability, read from the shared state: [`Snapshot`] (serializable),
//! the `metrics` export, and the ready axum handler.

#[cfg(feature = "axum")]
mod http;
mod metrics;
mod snapshot;

#[cfg(feature = "axum")]
pub use http::{stats_handler, stats_router};
pub(crate) use metrics::WorkerMetrics;
pub(crate) use snapshot::snapshot;
pub use snapshot::{Fallbacks, PlacementSnapshot, Snapshot, WorkerSnapshot, WorkerStatus};

use crate::shared;

/// The snapshot of the server the current thread works for, or `None`
/// outside a Hermes worker thread.
pub fn current_snapshot() -> Option<Snapshot> {
    shared::current().map(|(s, _)| snapshot(&s))
}
