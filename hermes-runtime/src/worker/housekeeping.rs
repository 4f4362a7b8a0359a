//! The worker's housekeeping task: its tick (see `server::tick`) and
//! metrics export; and, once it drains, the wait for its connections.

use std::{sync::Arc, time::Duration};

use crate::{
    state::{DrainWait, ServerState, WorkerTick},
    stats::WorkerMetrics,
};

/// Worker `id`'s housekeeping: a tick every `Builder::tick`, the metrics
/// every 100 ms, and once draining, the wait for its connections to finish.
/// Returns when the worker may exit.
pub(super) async fn housekeeping(server: Arc<ServerState>, id: usize) {
    let control = server.workers.control(id).clone();
    let metrics = WorkerMetrics::new(&server, id);
    let export_every = (Duration::from_millis(100).as_nanos() / server.config.tick.as_nanos()).max(1) as u64;
    let mut ticks = 0u64;
    let mut tick = WorkerTick::on_this_thread();
    let mut drain = DrainWait::default();
    loop {
        // On the worker's grid of ticks (see `until_next_tick`): one
        // wake-up for this and the listener's look at hung workers.
        tokio::time::sleep(server.until_next_tick(id)).await;
        ticks += 1;
        tick.run(&server, id);
        if ticks.is_multiple_of(export_every) {
            metrics.export(&server);
        }
        if control.is_draining() && drain.done(&server, id) {
            return;
        }
    }
}
