//! One worker: its OS thread (pinning, restart after a panic), its
//! current-thread Tokio runtime ([`runtime`]), the loop that opens its
//! listener and runs the application ([`run`]), and its per-tick
//! [`housekeeping`]. [`shutdown_signal`] is how the application hears of a
//! drain.

mod housekeeping;
mod run;
mod runtime;

use std::{future::Future, io, panic::AssertUnwindSafe, sync::Arc, thread, time::Duration};

use hermes_bpf::layout::WorkerPhase;

use crate::{
    context::WorkerRef,
    net::HermesListener,
    shared::{self, Shared},
    sys,
};

/// Starts worker `id` on its own thread, serving with `serve`.
pub(crate) fn spawn<F, Fut>(
    shared: Arc<Shared>,
    id: usize,
    serve: Arc<F>,
    listener: Option<std::net::TcpListener>,
) -> io::Result<thread::JoinHandle<()>>
where
    F: Fn(HermesListener) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = ()> + 'static,
{
    let mut thread = thread::Builder::new().name(format!("hermes-worker-{id}"));
    if let Some(bytes) = shared.config.stack_size {
        thread = thread.stack_size(bytes);
    }
    thread.spawn(move || worker_thread(shared, id, serve, listener))
}

fn worker_thread<F, Fut>(
    shared: Arc<Shared>,
    id: usize,
    serve: Arc<F>,
    listener: Option<std::net::TcpListener>,
) where
    F: Fn(HermesListener) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = ()> + 'static,
{
    if !shared.cpus.is_empty() {
        let cpu = shared.cpus[id % shared.cpus.len()];
        if let Err(e) = sys::pin_to(cpu) {
            tracing::debug!(worker = id, cpu, error = %e, "could not pin the worker");
        }
    }
    // Everything the worker runs, handlers included, is inside this span.
    let _span = tracing::info_span!("hermes_worker", worker = id).entered();
    let worker = WorkerRef::with_placement(id, shared.table.clone(), shared.placement.clone());
    let _enter = worker.enter();
    shared::set_current(Some((shared.clone(), id)));
    let mut listener = listener;
    loop {
        let run = std::panic::catch_unwind(AssertUnwindSafe(|| {
            runtime::run(&shared, &worker, &serve, &mut listener)
        }));
        match run {
            Ok(()) => break,
            Err(_) if shared.workers[id].is_draining() => break,
            Err(_) => {
                tracing::error!(worker = id, "the worker's runtime panicked; restarting it");
                // Nobody accepts from the old listener until the restart: a
                // replacement joins the group now (so the group and its
                // program outlive the old one), then the old one leaves it.
                if shared.shared_listener.is_none() && listener.is_none() {
                    match run::open_listener(&shared, id) {
                        Ok(l) => listener = Some(l),
                        Err(e) => {
                            tracing::error!(worker = id, error = %e, "could not bind the restarted worker's listener; retrying")
                        }
                    }
                }
                shared.workers[id].stop_listener();
                thread::sleep(Duration::from_millis(100));
            }
        }
    }
    shared.placement.set_handle(id, None);
    worker.state().set_phase(WorkerPhase::Empty);
    // Whatever ended the worker, its listener leaves the group now (its queued
    // connections migrate): an open listener nobody accepts from would keep
    // receiving the kernel hash's share of new connections.
    shared.workers[id].stop_listener();
    shared.schedule(id);
    shared::set_current(None);
}

/// Resolves when the current worker starts draining; never resolves when
/// called outside a Hermes worker thread. Pass it to axum's
/// `with_graceful_shutdown` or tonic's `serve_with_incoming_shutdown`.
///
/// ```no_run
/// use axum::{Router, routing::get};
/// use hermes_runtime::{Builder, HermesListener, shutdown_signal};
///
/// let app = Router::new().route("/", get(|| async { "hello" }));
/// let server = Builder::new().bind("127.0.0.1:0".parse().unwrap()).build()?;
/// let handle = server.serve(move |listener: HermesListener| {
///     let app = app.clone();
///     async move {
///         axum::serve(listener, app).with_graceful_shutdown(shutdown_signal()).await.ok();
///     }
/// })?;
/// handle.join();
/// # Ok::<(), std::io::Error>(())
/// ```
pub fn shutdown_signal() -> impl Future<Output = ()> + Send + 'static {
    let control = shared::current().map(|(s, id)| s.workers[id].clone());
    if control.is_none() {
        tracing::debug!("shutdown_signal() called outside a Hermes worker; it never resolves");
    }
    async move {
        match control {
            Some(c) => c.draining().await,
            None => std::future::pending().await,
        }
    }
}
