//! The worker's current-thread Tokio runtime, whose park and unpark hooks
//! keep the worker's heartbeat and busy time in its slot.

use std::{future::Future, sync::Arc, sync::atomic::Ordering, thread, time::Duration};

use hermes_bpf::monotonic_ns;
use tokio::task::LocalSet;

use super::run::worker_loop;
use crate::{context::WorkerRef, net::HermesListener, shared::Shared};

thread_local! {
    static UNPARKED_AT: std::cell::Cell<u64> = const { std::cell::Cell::new(0) };
}

/// Builds the worker's runtime and runs the worker on it until it exits.
pub(super) fn run<F, Fut>(
    shared: &Arc<Shared>,
    worker: &WorkerRef,
    serve: &Arc<F>,
    listener: &mut Option<std::net::TcpListener>,
) where
    F: Fn(HermesListener) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = ()> + 'static,
{
    let (on_park, on_unpark) = (worker.clone(), worker.clone());
    let mut builder = tokio::runtime::Builder::new_current_thread();
    builder.enable_all();
    if let Some(hook) = &shared.config.on_runtime {
        (hook.0)(worker.id(), &mut builder);
    }
    // Set after the application's hook: the park hooks are the heartbeat.
    let rt = builder
        .on_thread_park(move || {
            let now = monotonic_ns();
            let slot = on_park.state();
            let since = UNPARKED_AT.with(|t| t.get());
            // Relaxed: single writer (this thread); readers take each
            // counter as an independent value.
            if since != 0 {
                slot.busy_ns.store(slot.busy_ns.load(Ordering::Relaxed) + (now - since), Ordering::Relaxed);
            }
            slot.heartbeat_ns.store(now, Ordering::Relaxed);
        })
        .on_thread_unpark(move || {
            let now = monotonic_ns();
            UNPARKED_AT.with(|t| t.set(now));
            on_unpark.state().heartbeat_ns.store(now, Ordering::Relaxed);
        })
        .build();
    let rt = match rt {
        Ok(rt) => rt,
        Err(e) => {
            tracing::error!(worker = worker.id(), error = %e, "could not build the worker's runtime");
            thread::sleep(Duration::from_secs(1));
            panic!("runtime build failed");
        }
    };
    UNPARKED_AT.with(|t| t.set(monotonic_ns()));
    // Moved requests reach this worker through its runtime's handle.
    shared.placement.set_handle(worker.id(), Some(rt.handle().clone()));
    let local = LocalSet::new();
    let on_start = shared.config.on_start.clone();
    local.block_on(&rt, async {
        if let Some(hook) = on_start {
            (hook.0)(worker.id());
        }
        worker_loop(shared.clone(), worker.clone(), serve.clone(), listener).await;
    });
    drop(local);
    // Dropping the runtime would wait for every `spawn_blocking` task without
    // bound; the drain timeout has passed already, so give them a moment.
    let left = rt.metrics().num_alive_tasks();
    if left > 0 {
        tracing::warn!(
            worker = worker.id(),
            tasks = left,
            "abandoning the tasks left on the worker's runtime (blocking tasks get {RUNTIME_GRACE:?} more)"
        );
    }
    rt.shutdown_timeout(RUNTIME_GRACE);
}

/// How long a stopping worker's runtime waits for its blocking tasks.
const RUNTIME_GRACE: Duration = Duration::from_secs(1);
