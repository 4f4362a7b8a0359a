//! The worker's current-thread Tokio runtime and its `LocalSet` (so the
//! application's futures need not be `Send`), whose park and unpark hooks
//! keep the worker's heartbeat and busy time in its slot.
//!
//! Not Tokio's `LocalRuntime`, which does the same in one type: on it, the
//! tasks a worker spawns locally (its housekeeping, the application's serve
//! future) share the run queue with the connections' tasks, and a worker
//! coming back from a handler that held its thread parks (and refreshes its
//! heartbeat) before it reads the requests that waited behind that handler.
//! Those requests then see a worker that looks idle and stay on it, where
//! request placement should move them (the test
//! `a_blocked_workers_next_costly_request_runs_on_another_worker` shows it).

use std::{
    future::Future,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    thread,
    time::Duration,
};

use hermes_bpf::monotonic_ns;
use tokio::{runtime::Runtime, task::LocalSet};

use super::run::worker_loop;
use crate::{context::WorkerRef, net::HermesListener, state::ServerState, sys};

/// Builds the worker's runtime and runs the worker on it until it exits.
pub(super) fn run<F, Fut>(
    server: &Arc<ServerState>,
    worker: &WorkerRef,
    serve: &Arc<F>,
    listener: &mut Option<std::net::TcpListener>,
) where
    F: Fn(HermesListener) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = ()> + 'static,
{
    let mut builder = tokio::runtime::Builder::new_current_thread();
    builder.enable_all();
    if let Some(cpus) = server.workers.process_cpus() {
        // The blocking pool's threads are started by the worker thread and
        // would inherit its one CPU: an offloaded handler would then compete
        // with its own worker while other cores idle. They get every CPU the
        // process had. Set before the application's hook, which may replace it.
        let (cpus, id) = (cpus.to_vec(), worker.id());
        builder.on_thread_start(move || {
            if let Err(e) = sys::run_on(&cpus) {
                tracing::warn!(worker = id, error = %e, "could not unpin a blocking-pool thread");
            }
        });
    }
    if let Some(hook) = &server.config.on_runtime {
        (hook.0)(worker.id(), &mut builder);
    }
    // When the worker's thread last left its park. Only that thread writes
    // and reads it (the hooks run on the thread that parks), so Relaxed is
    // enough: it is an atomic only because the hooks must be `Sync`.
    let unparked_at = Arc::new(AtomicU64::new(monotonic_ns()));
    let (on_park, on_unpark) = (worker.clone(), worker.clone());
    let (park_since, unpark_at) = (unparked_at.clone(), unparked_at);
    let long_stretch_ns = 2 * server.config.tick.as_nanos() as u64;
    // Set after the application's hook: the park hooks are the heartbeat.
    let rt = builder
        .on_thread_park(move || {
            let now = monotonic_ns();
            let slot = on_park.state();
            let since = park_since.load(Ordering::Relaxed);
            // Relaxed: readers take each counter as an independent value. A
            // read-modify-write, as the pool threads of offloaded requests
            // add their time too (see `placement::Learner`).
            if since != 0 {
                slot.busy_ns.fetch_add(now - since, Ordering::Relaxed);
                // Back from a stretch longer than two ticks (a handler that
                // held the thread): until the next tick samples the busy
                // time, the utilisation gauge would show the worker as it
                // was before, and placement would keep the requests that
                // waited behind the block here. It shows it fully busy.
                if now - since > long_stretch_ns {
                    slot.util_permille.store(1_000, Ordering::Relaxed);
                }
            }
            slot.heartbeat_ns.store(now, Ordering::Relaxed);
        })
        .on_thread_unpark(move || {
            let now = monotonic_ns();
            unpark_at.store(now, Ordering::Relaxed);
            on_unpark.state().heartbeat_ns.store(now, Ordering::Relaxed);
        })
        .build();
    let rt = match rt {
        Ok(rt) => Bounded(Some(rt)),
        Err(e) => {
            tracing::error!(worker = worker.id(), error = %e, "could not build the worker's runtime");
            thread::sleep(Duration::from_secs(1));
            panic!("runtime build failed");
        }
    };
    let handle = rt.0.as_ref().expect("just built").handle().clone();
    // Moved requests reach this worker through its runtime's handle.
    server.placement.set_handle(worker.id(), Some(handle));
    let local = LocalSet::new();
    let on_start = server.config.on_start.clone();
    local.block_on(rt.0.as_ref().expect("just built"), async {
        if let Some(hook) = on_start {
            (hook.0)(worker.id());
        }
        worker_loop(server.clone(), worker.clone(), serve.clone(), listener).await;
    });
    // Read before the `LocalSet` drops its tasks, which closes the
    // connections and ends the requests they hold.
    let cut = Cut::read(worker);
    drop(local);
    cut.log(worker.id(), rt.0.as_ref().map_or(0, |rt| rt.metrics().num_alive_tasks()));
    // Dropping the runtime would wait for every `spawn_blocking` task without
    // bound; the drain is over already, so `Bounded` gives them a moment
    // as it drops here.
    drop(rt);
}

/// The worker's runtime, shut down with a bound when it drops, also while
/// unwinding from a panic of the worker's runtime: a plain drop would wait
/// for every blocking task (an offloaded handler that holds its thread for
/// minutes), and the worker would not restart meanwhile.
struct Bounded(Option<Runtime>);

impl Drop for Bounded {
    fn drop(&mut self) {
        if let Some(rt) = self.0.take() {
            rt.shutdown_timeout(RUNTIME_GRACE);
        }
    }
}

/// What stopping a worker's runtime cuts: the requests still in flight on it
/// and the connections still open. Both are zero after a drain that
/// finished (an idle stop); they are not after a drain timeout, or with a
/// request moved here from a worker that still serves. The tasks left on the
/// runtime say nothing by themselves: on an idle stop they are helpers
/// waiting on the drain (axum's shutdown watcher) or the application's own.
#[derive(Debug, Clone, Copy)]
struct Cut {
    requests: u32,
    connections: u32,
}

impl Cut {
    fn read(worker: &WorkerRef) -> Self {
        let slot = worker.state();
        // Relaxed: lone gauges (see `WorkerState`), read once the worker's
        // loop has returned.
        Self {
            requests: slot.in_flight.load(Ordering::Relaxed),
            connections: slot.open_conns.load(Ordering::Relaxed),
        }
    }

    /// Logs the stop: at WARN when it cuts work in flight, saying how much,
    /// otherwise at INFO.
    fn log(self, worker: usize, tasks: usize) {
        let Self { requests, connections } = self;
        if requests > 0 || connections > 0 {
            tracing::warn!(
                worker,
                requests,
                connections,
                tasks,
                "the worker stops with work in flight; cutting it (blocking tasks get {RUNTIME_GRACE:?} more)"
            );
        } else {
            tracing::debug!(worker, tasks, "dropping the tasks left on the stopped worker's runtime");
            tracing::info!(worker, "worker stopped");
        }
    }
}

/// How long a stopping worker's runtime waits for its blocking tasks.
const RUNTIME_GRACE: Duration = Duration::from_secs(1);
