//! Drain and shutdown: a worker leaves the list, stops its listener (its
//! queued connections migrate to the others in Hermes mode) and finishes
//! its connections within the drain timeout; the server's threads are
//! waited for, at most that long plus [`SHUTDOWN_GRACE`].

use std::{
    sync::atomic::Ordering,
    thread,
    time::{Duration, Instant},
};

use hermes_bpf::{layout::WorkerPhase, monotonic_ns};

use super::server::ServerState;

/// How long [`ServerHandle::shutdown`](crate::ServerHandle::shutdown) waits
/// past the drain timeout for the workers to exit (their runtimes give
/// blocking tasks 1 s of it).
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(2);

impl ServerState {
    /// Graceful drain of worker `id`, from any thread (even while the worker
    /// is blocked): out of the list first, then the listener stops (its
    /// queued connections migrate to the others), then the signal.
    pub(crate) fn begin_drain(&self, id: usize) {
        let control = self.workers.control(id);
        if !control.mark_draining() {
            return;
        }
        self.table[id].set_phase(WorkerPhase::Draining);
        self.schedule(id);
        control.stop_listener();
        control.notify_draining();
        tracing::info!(worker = id, "worker draining");
    }

    /// Begins the drain of every worker.
    pub(crate) fn drain_all(&self) {
        for id in 0..self.worker_count() {
            self.begin_drain(id);
        }
    }

    /// Waits until every worker thread has finished, or every one still
    /// running has drained for longer than the drain timeout plus
    /// [`SHUTDOWN_GRACE`]; joins the finished ones and logs the others,
    /// which are abandoned to end with the process.
    pub(crate) fn wait_for(&self, threads: Vec<thread::JoinHandle<()>>) {
        let bound = (self.config.drain_timeout + SHUTDOWN_GRACE).as_nanos() as u64;
        loop {
            let now = monotonic_ns();
            let waiting = threads.iter().enumerate().filter(|(_, t)| !t.is_finished()).all(|(id, _)| {
                self.workers.control(id).drain_started_ns().is_some_and(|t| now.saturating_sub(t) >= bound)
            });
            // `all` over no unfinished worker is true: every one exited.
            if waiting {
                break;
            }
            thread::sleep(Duration::from_millis(5));
        }
        for (id, t) in threads.into_iter().enumerate() {
            if t.is_finished() {
                let _ = t.join();
            } else {
                let slot = &self.table[id];
                // Relaxed: lone gauges (see `WorkerState`).
                tracing::error!(
                    worker = id,
                    open_connections = slot.open_conns.load(Ordering::Relaxed),
                    in_flight = slot.in_flight.load(Ordering::Relaxed),
                    "the worker did not stop within the drain timeout; abandoning it"
                );
            }
        }
    }
}

/// A draining worker's wait for its open connections: over once they are
/// closed, or the drain timeout passed.
#[derive(Debug, Default)]
pub(crate) struct DrainWait {
    started: Option<Instant>,
}

impl DrainWait {
    /// Whether worker `id` may exit now, checked on each of its ticks once
    /// it drains. The worker's runtime says what its stop cuts (at WARN);
    /// this says why.
    pub(crate) fn done(&mut self, server: &ServerState, id: usize) -> bool {
        let started = *self.started.get_or_insert_with(Instant::now);
        // Relaxed: a lone gauge (see `WorkerState`).
        let open = server.table[id].open_conns.load(Ordering::Relaxed);
        if open == 0 {
            return true;
        }
        if started.elapsed() >= server.config.drain_timeout {
            tracing::info!(worker = id, open, "drain timeout; stopping the worker with connections open");
            return true;
        }
        false
    }
}
