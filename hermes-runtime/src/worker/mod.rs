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
    context::{self, WorkerRef},
    net::HermesListener,
    state::ServerState,
    sys,
};

/// Starts worker `id` on its own thread, serving with `serve`.
pub(crate) fn spawn<F, Fut>(
    server: Arc<ServerState>,
    id: usize,
    serve: Arc<F>,
    listener: Option<std::net::TcpListener>,
) -> io::Result<thread::JoinHandle<()>>
where
    F: Fn(HermesListener) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = ()> + 'static,
{
    let mut thread = thread::Builder::new().name(format!("hermes-worker-{id}"));
    if let Some(bytes) = server.config.stack_size {
        thread = thread.stack_size(bytes);
    }
    thread.spawn(move || worker_thread(server, id, serve, listener))
}

fn worker_thread<F, Fut>(
    server: Arc<ServerState>,
    id: usize,
    serve: Arc<F>,
    listener: Option<std::net::TcpListener>,
) where
    F: Fn(HermesListener) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = ()> + 'static,
{
    if let Some(cpu) = server.workers.cpu(id)
        && let Err(e) = sys::pin_to(cpu)
    {
        tracing::debug!(worker = id, cpu, error = %e, "could not pin the worker");
    }
    if let Some(slice) = server.config.worker_slice
        && let Err(e) = sys::request_slice(slice)
    {
        tracing::debug!(worker = id, ?slice, error = %e, "the kernel did not take the worker's time slice");
    }
    // Everything the worker runs, handlers included, is inside this span.
    let _span = tracing::info_span!("hermes_worker", worker = id).entered();
    let worker = WorkerRef::of(&server, id);
    let _enter = worker.enter();
    let control = server.workers.control(id).clone();
    let mut listener = listener;
    loop {
        let run = std::panic::catch_unwind(AssertUnwindSafe(|| {
            runtime::run(&server, &worker, &serve, &mut listener)
        }));
        match run {
            Ok(()) => break,
            Err(_) if control.is_draining() => break,
            Err(_) => {
                tracing::error!(worker = id, "the worker's runtime panicked; restarting it");
                // Its runtime is gone: no request may be moved to it until
                // the new one is up.
                server.placement.set_handle(id, None);
                // Nobody accepts from the old listener until the restart: a
                // replacement joins the group now (so the group and its
                // program outlive the old one), then the old one leaves it.
                if server.dispatch.shared_listener().is_none() && listener.is_none() {
                    match run::open_listener(&server, id) {
                        Ok(l) => listener = Some(l),
                        Err(e) => {
                            tracing::error!(worker = id, error = %e, "could not bind the restarted worker's listener; retrying")
                        }
                    }
                }
                control.stop_listener();
                thread::sleep(Duration::from_millis(100));
            }
        }
    }
    server.placement.set_handle(id, None);
    worker.state().set_phase(WorkerPhase::Empty);
    // Whatever ended the worker, its listener leaves the group now (its queued
    // connections migrate): an open listener nobody accepts from would keep
    // receiving the kernel hash's share of new connections.
    control.stop_listener();
    server.schedule(id);
}

/// Resolves when the current worker starts draining; never resolves when
/// called outside a Hermes worker thread. Pass it to axum's
/// `with_graceful_shutdown`, tonic's `serve_with_incoming_shutdown`, or a
/// `select!` of your own accept loop.
///
/// ```no_run
/// use hermes_runtime::{Builder, HermesListener, shutdown_signal};
///
/// let server = Builder::new().bind("127.0.0.1:0".parse().unwrap()).build()?;
/// let handle = server.serve(|mut listener: HermesListener| async move {
///     let accept = async {
///         while let Some((_stream, _peer)) = listener.accept_connection().await {
///             // Serve the connection (spawn a task for it).
///         }
///     };
///     tokio::select! {
///         () = accept => {}
///         () = shutdown_signal() => {} // the worker drains
///     }
/// })?;
/// handle.join();
/// # Ok::<(), std::io::Error>(())
/// ```
pub fn shutdown_signal() -> impl Future<Output = ()> + Send + 'static {
    let control = context::with_current(|worker| {
        let worker = worker?;
        Some(worker.server()?.workers.control(worker.id()).clone())
    });
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
