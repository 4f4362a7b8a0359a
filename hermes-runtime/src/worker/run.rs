//! The worker's main loop: open (or reopen) its listener, run the
//! application's serve future on it, and restart it in its slot when it
//! fails, until the worker drains.

use std::{
    future::Future,
    io,
    os::fd::{AsRawFd, OwnedFd},
    sync::{Arc, atomic::Ordering},
    time::{Duration, Instant},
};

use hermes_bpf::layout::WorkerPhase;
use tokio::io::unix::AsyncFd;

use super::housekeeping::housekeeping;
use crate::{
    context::WorkerRef,
    control::Stop,
    net::{HermesListener, Source},
    shared::Shared,
    sys,
};

fn new_source(shared: &Shared, id: usize, initial: &mut Option<std::net::TcpListener>) -> io::Result<Source> {
    let control = &shared.workers[id];
    if let Some(shared_listener) = &shared.shared_listener {
        let epoll = sys::ExclusiveEpoll::new(shared_listener.as_raw_fd())?;
        control.install(Stop::Wake(epoll.waker()?));
        // SAFETY: `ExclusiveEpoll` owns its epoll descriptor, which stays open
        // and unchanged until the `AsyncFd` drops it.
        let epoll = unsafe { AsyncFd::register_with_interest(epoll, tokio::io::Interest::READABLE) }
            .map_err(io::Error::from)?;
        return Ok(Source::Shared { epoll, listener: shared_listener.clone() });
    }
    let std_listener = match initial.take() {
        Some(l) => l,
        None => open_listener(shared, id)?,
    };
    control.install(Stop::Listener(OwnedFd::from(std_listener.try_clone()?)));
    Ok(Source::Own(tokio::net::TcpListener::from_std(std_listener)?))
}

/// Binds a new listener for worker `id` into the group and places it in the
/// worker's slot of the kernel's socket array.
pub(super) fn open_listener(shared: &Shared, id: usize) -> io::Result<std::net::TcpListener> {
    let l = sys::listener(shared.addr, true, shared.config.backlog)?;
    if let Some(d) = &shared.dispatcher {
        let mut d = d.lock().unwrap_or_else(|e| e.into_inner());
        if let Err(e) = d.insert(id, &l) {
            tracing::error!(worker = id, error = %e, "could not place the restarted worker's listener");
        }
    }
    Ok(l)
}

pub(super) async fn worker_loop<F, Fut>(
    shared: Arc<Shared>,
    worker: WorkerRef,
    serve: Arc<F>,
    initial: &mut Option<std::net::TcpListener>,
) where
    F: Fn(HermesListener) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = ()> + 'static,
{
    let id = worker.id();
    let control = shared.workers[id].clone();
    let mut housekeeping = tokio::task::spawn_local(housekeeping(shared.clone(), worker.clone()));
    loop {
        if control.is_draining() {
            break;
        }
        let source = match new_source(&shared, id, initial) {
            Ok(s) => s,
            Err(e) => {
                tracing::error!(worker = id, error = %e, "could not open the worker's listener; retrying");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let own = matches!(source, Source::Own(_));
        let mut listener = HermesListener::new(worker.clone(), control.clone(), shared.addr, source)
            .tcp_nodelay(shared.config.tcp_nodelay)
            .limits(
                shared.config.max_connections,
                shared.config.header_read_timeout,
                shared.config.idle_timeout,
            )
            .connection_age(shared.config.max_connection_age);
        if own && shared.config.rescue_hung && shared.config.workers > 1 {
            listener = listener.rescue_hung(shared.clone());
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
        if control.first_start() {
            shared.count_started();
        }
        let main = tokio::task::spawn_local((*serve)(listener));
        tokio::select! {
            result = main => match result {
                Ok(()) if control.is_draining() => break,
                Ok(()) => {
                    tracing::warn!(worker = id, "the serve future returned; the worker drains and stops");
                    shared.begin_drain(id);
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
                    shared.schedule(id);
                    // The replacement joins the group before the old listener
                    // leaves it: a group whose every member closes is freed
                    // by the kernel with its program (one worker, or every
                    // worker restarting at once), and listeners bound after
                    // that form a new group without one.
                    if shared.shared_listener.is_none() && initial.is_none() {
                        match open_listener(&shared, id) {
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
