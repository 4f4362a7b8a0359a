//! The worker's main loop: open (or reopen) its listener, run the
//! application's serve future on it, and restart it in its slot when it
//! fails, until the worker drains.

use std::{
    future::Future,
    io,
    os::fd::{AsFd, OwnedFd},
    sync::{Arc, atomic::Ordering},
    time::{Duration, Instant},
};

use hermes_bpf::layout::WorkerPhase;
use tokio::io::unix::AsyncFd;

use super::housekeeping::housekeeping;
use crate::{
    context::WorkerRef,
    net::{HermesListener, Source},
    state::{ServerState, Stop},
    sys,
};

fn new_source(
    server: &ServerState,
    id: usize,
    initial: &mut Option<std::net::TcpListener>,
) -> io::Result<Source> {
    let control = server.workers.control(id);
    if let Some(shared_listener) = server.dispatch.shared_listener() {
        let epoll = sys::ExclusiveEpoll::new(shared_listener.as_fd())?;
        control.install(Stop::Wake(epoll.waker()?));
        // SAFETY: `ExclusiveEpoll` owns its epoll descriptor, which stays open
        // and unchanged until the `AsyncFd` drops it.
        let epoll = unsafe { AsyncFd::register_with_interest(epoll, tokio::io::Interest::READABLE) }
            .map_err(io::Error::from)?;
        return Ok(Source::Shared { epoll, listener: shared_listener.clone() });
    }
    let std_listener = match initial.take() {
        Some(l) => l,
        None => open_listener(server, id)?,
    };
    control.install(Stop::Listener(OwnedFd::from(std_listener.try_clone()?)));
    Ok(Source::Own(tokio::net::TcpListener::from_std(std_listener)?))
}

/// Binds a new listener for worker `id` into the group and places it in the
/// worker's slot of the kernel's socket array.
pub(super) fn open_listener(server: &ServerState, id: usize) -> io::Result<std::net::TcpListener> {
    let l = sys::listener(server.dispatch.addr, true, server.config.backlog)?;
    if let Err(e) = server.dispatch.insert(id, &l) {
        tracing::error!(worker = id, error = %e, "could not place the restarted worker's listener");
    }
    Ok(l)
}

pub(super) async fn worker_loop<F, Fut>(
    server: Arc<ServerState>,
    worker: WorkerRef,
    serve: Arc<F>,
    initial: &mut Option<std::net::TcpListener>,
) where
    F: Fn(HermesListener) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = ()> + 'static,
{
    let id = worker.id();
    let control = server.workers.control(id).clone();
    let mut housekeeping = tokio::task::spawn_local(housekeeping(server.clone(), id));
    loop {
        if control.is_draining() {
            break;
        }
        let source = match new_source(&server, id, initial) {
            Ok(s) => s,
            Err(e) => {
                tracing::error!(worker = id, error = %e, "could not open the worker's listener; retrying");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let own = matches!(source, Source::Own(_));
        let mut listener = HermesListener::new(worker.clone(), control.clone(), server.dispatch.addr, source)
            .tcp_nodelay(server.config.tcp_nodelay)
            .max_connections(server.config.max_connections);
        if own && server.config.rescue_hung && server.config.workers > 1 {
            listener = listener.rescue_hung(server.config.tick);
        }
        // Starting -> Serving, unless a drain began meanwhile (Relaxed: the
        // state is a lone value; the compare-exchange only keeps a drain's
        // store from being overwritten).
        let _ = worker.state().state.compare_exchange(
            WorkerPhase::Starting as u32,
            WorkerPhase::Serving as u32,
            Ordering::Relaxed,
            Ordering::Relaxed,
        );
        let started = Instant::now();
        server.workers.count_started(id);
        let main = tokio::task::spawn_local((*serve)(listener));
        tokio::select! {
            result = main => match result {
                Ok(()) if control.is_draining() => break,
                Ok(()) => {
                    tracing::warn!(worker = id, "the serve future returned; the worker drains and stops");
                    server.begin_drain(id);
                    break;
                }
                Err(e) => {
                    if control.is_draining() {
                        break;
                    }
                    tracing::error!(worker = id, error = %e, "the worker's serve future failed; restarting the worker in its slot");
                    let _ = worker.state().state.compare_exchange(
                        WorkerPhase::Serving as u32,
                        WorkerPhase::Starting as u32,
                        Ordering::Relaxed,
                        Ordering::Relaxed,
                    );
                    server.schedule(id);
                    // The replacement joins the group before the old listener
                    // leaves it: a group whose every member closes is freed
                    // by the kernel with its program (one worker, or every
                    // worker restarting at once), and listeners bound after
                    // that form a new group without one.
                    if server.dispatch.shared_listener().is_none() && initial.is_none() {
                        match open_listener(&server, id) {
                            Ok(l) => *initial = Some(l),
                            Err(e) => tracing::error!(worker = id, error = %e, "could not bind the restarted worker's listener; retrying"),
                        }
                    }
                    control.stop_listener();
                    if started.elapsed() < Duration::from_secs(1) {
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                }
            },
            done = &mut housekeeping => {
                // A panic in housekeeping (a user `Policy`, a metrics
                // recorder) would leave the worker without heartbeat or
                // drain: the worker restarts instead, like a runtime panic.
                if let Err(e) = done
                    && e.is_panic()
                    && !control.is_draining()
                {
                    tracing::error!(worker = id, "the worker's housekeeping panicked; restarting the worker");
                    std::panic::resume_unwind(e.into_panic());
                }
                return;
            }
        }
    }
    let _ = housekeeping.await;
}
