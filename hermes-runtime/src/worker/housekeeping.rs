//! The worker's tick: heartbeat, utilisation, accept-queue sample,
//! scheduler pass, placement target and metrics export; and, once it drains, the wait for its connections.

use std::{
    sync::{Arc, atomic::Ordering},
    time::{Duration, Instant},
};

use hermes_bpf::monotonic_ns;

use crate::{context::WorkerRef, placement::UtilMeter, shared::Shared, stats::WorkerMetrics};

/// The worker's tick: heartbeat, accept-queue sample, scheduler pass,
/// metrics; and, once draining, the wait for the connections to finish.
/// Returns when the worker may exit.
pub(super) async fn housekeeping(shared: Arc<Shared>, worker: WorkerRef) {
    let id = worker.id();
    let control = shared.workers[id].clone();
    let slot = worker.state();
    let mut interval = tokio::time::interval(shared.config.tick);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let metrics = WorkerMetrics::new(&shared, id);
    let export_every = (Duration::from_millis(100).as_nanos() / shared.config.tick.as_nanos()).max(1) as u64;
    let mut ticks = 0u64;
    let mut drain_started: Option<Instant> = None;
    let mut util = UtilMeter::default();
    loop {
        interval.tick().await;
        ticks += 1;
        let now = monotonic_ns();
        // Relaxed: lone timestamp (see `WorkerState`).
        slot.heartbeat_ns.store(now, Ordering::Relaxed);
        util.sample(slot, now);
        shared.sample_accept_queues();
        let bitmap = shared.schedule(id);
        shared.placement.refresh_target(now);
        if ticks.is_multiple_of(export_every) {
            metrics.export(&shared, bitmap);
        }
        if control.is_draining() {
            let started = *drain_started.get_or_insert_with(Instant::now);
            let open = slot.open_conns.load(Ordering::Relaxed);
            if open == 0 {
                return;
            }
            if started.elapsed() >= shared.config.drain_timeout {
                tracing::warn!(worker = id, open, "drain timeout; closing the remaining connections");
                return;
            }
        }
    }
}
