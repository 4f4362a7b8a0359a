//! [`HermesListener`], each worker's listener, and [`Source`], where its
//! connections come from.

use std::{
    fmt,
    future::Future,
    io,
    net::SocketAddr,
    os::fd::AsFd,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll, ready},
    time::Duration,
};

use futures_core::Stream;
use tokio::{
    io::unix::AsyncFd,
    net::{TcpListener, TcpStream},
    time::{Instant, Sleep},
};

use super::stream::HermesStream;
use crate::{context::WorkerRef, state::WorkerControl, sys};

/// Where a worker's connections come from.
pub(crate) enum Source {
    /// The worker's own `SO_REUSEPORT` listener.
    Own(TcpListener),
    /// The shared listener, through this worker's `EPOLLEXCLUSIVE` epoll set.
    Shared { epoll: AsyncFd<sys::ExclusiveEpoll>, listener: Arc<std::net::TcpListener> },
}

/// The listener of one worker.
///
/// Accept in a loop with [`HermesListener::accept_connection`] and serve
/// each stream with the protocol of your choice (hyper-util's
/// `TokioIo::new(stream)`, a codec), or use it as a
/// `Stream<Item = io::Result<HermesStream>>`. For axum and tonic,
/// `hermes_tower::serve::WorkerListener` wraps it.
///
/// Accepting never fails: connection errors are retried at once and other
/// errors (such as `EMFILE`) are logged and retried after a back-off. When
/// the worker starts draining the listener closes: the stream ends and
/// [`HermesListener::accept_connection`] returns `None`.
///
/// ```no_run
/// use hermes_runtime::{Builder, HermesListener};
///
/// let server = Builder::new().bind("127.0.0.1:0".parse().unwrap()).build()?;
/// let handle = server.serve(|mut listener: HermesListener| async move {
///     while let Some((stream, peer)) = listener.accept_connection().await {
///         // Serve `stream`, e.g. with hyper-util's `TokioIo::new(stream)`.
///         drop((stream, peer));
///     }
/// })?;
/// handle.shutdown();
/// # Ok::<(), std::io::Error>(())
/// ```
///
pub struct HermesListener {
    worker: WorkerRef,
    control: Arc<WorkerControl>,
    local_addr: SocketAddr,
    source: Option<Source>,
    backoff: Pin<Box<Sleep>>,
    backing_off: bool,
    /// Set `TCP_NODELAY` on each accepted stream ([`crate::Builder::tcp_nodelay`]).
    nodelay: bool,
    /// [`crate::Builder::max_connections_per_worker`].
    max_connections: Option<u32>,
    /// Refusals not logged yet, and when the last log line was written.
    refusals: (u64, Option<std::time::Instant>),
    /// Taking the connections queued on hung or starved workers' listeners
    /// ([`crate::Builder::rescue_hung_queues`]).
    rescue: Option<Rescue>,
}

/// A worker's share of [`crate::Builder::rescue_hung_queues`]: once a tick,
/// it looks for workers of its server that hang (heartbeat older than the
/// hang threshold) or starve (kept off their core) and accepts what their
/// listeners hold.
struct Rescue {
    tick_every: Duration,
    /// Fires once a tick.
    tick: Pin<Box<Sleep>>,
    /// At the last look, a stuck worker's listener gave a connection: look
    /// again before waiting for the next tick.
    active: bool,
    /// Rescues not logged yet, and when the last log line was written.
    logged: (u64, Option<std::time::Instant>),
}

impl fmt::Debug for HermesListener {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HermesListener")
            .field("worker", &self.worker.id())
            .field("local_addr", &self.local_addr)
            .field("closed", &self.source.is_none())
            .finish()
    }
}

/// Back-off after an accept error that is not the peer's (e.g. `EMFILE`).
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

fn is_connection_error(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionRefused | io::ErrorKind::ConnectionAborted | io::ErrorKind::ConnectionReset
    )
}

impl HermesListener {
    pub(crate) fn new(
        worker: WorkerRef,
        control: Arc<WorkerControl>,
        local_addr: SocketAddr,
        source: Source,
    ) -> Self {
        Self {
            worker,
            control,
            local_addr,
            source: Some(source),
            backoff: Box::pin(tokio::time::sleep(Duration::ZERO)),
            backing_off: false,
            nodelay: true,
            max_connections: None,
            refusals: (0, None),
            rescue: None,
        }
    }

    /// Takes the connections queued on hung or starved workers' listeners once a tick
    /// (see [`crate::Builder::rescue_hung_queues`]).
    pub(crate) fn rescue_hung(mut self, tick_every: Duration) -> Self {
        let tick = Box::pin(tokio::time::sleep(tick_every));
        self.rescue = Some(Rescue { tick_every, tick, active: false, logged: (0, None) });
        self
    }

    /// The per-worker connection limit (see
    /// [`crate::Builder::max_connections_per_worker`]).
    pub(crate) fn max_connections(mut self, max_connections: Option<u32>) -> Self {
        self.max_connections = max_connections;
        self
    }

    /// Closes a connection accepted beyond the per-worker limit, counts it,
    /// and logs the refusals at most once a second.
    fn refuse(&mut self, stream: TcpStream, max: u32) {
        // Counted before the close, so a client that sees the close sees the count.
        let total = self.control.count_refused();
        drop(stream);
        self.refusals.0 += 1;
        let now = std::time::Instant::now();
        if self.refusals.1.is_none_or(|at| now.duration_since(at) >= Duration::from_secs(1)) {
            tracing::warn!(
                worker = self.worker.id(),
                refused = self.refusals.0,
                total,
                max_connections = max,
                "refused connections over the per-worker limit (closed at once)"
            );
            self.refusals = (0, Some(now));
        }
    }

    /// Whether accepted streams get `TCP_NODELAY` (see [`crate::Builder::tcp_nodelay`]).
    pub(crate) fn tcp_nodelay(mut self, nodelay: bool) -> Self {
        self.nodelay = nodelay;
        self
    }

    /// The worker this listener belongs to.
    pub fn worker_id(&self) -> usize {
        self.worker.id()
    }

    /// The address the server listens on.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// The next connection, or `None` once the worker drains.
    pub async fn accept_connection(&mut self) -> Option<(HermesStream, SocketAddr)> {
        std::future::poll_fn(|cx| self.poll_accept(cx)).await
    }

    /// Polls for the next connection; `Ready(None)` once the worker drains.
    pub fn poll_accept(&mut self, cx: &mut Context<'_>) -> Poll<Option<(HermesStream, SocketAddr)>> {
        loop {
            // Acquire pairs with the AcqRel swap in `WorkerControl::mark_draining`:
            // the flag is set before the listener is stopped, so a wake-up
            // caused by the stop sees it.
            if self.source.is_none() || self.control.is_draining() {
                self.source = None;
                return Poll::Ready(None);
            }
            if self.backing_off {
                ready!(self.backoff.as_mut().poll(cx));
                self.backing_off = false;
            }
            if let Some(accepted) = self.poll_rescue(cx) {
                return Poll::Ready(Some(accepted));
            }
            let result = match self.source.as_ref() {
                Some(Source::Own(listener)) => ready!(listener.poll_accept(cx)),
                Some(Source::Shared { epoll, listener }) => {
                    let mut guard = match ready!(epoll.poll_read_ready(cx)) {
                        Ok(guard) => guard,
                        Err(e) => {
                            self.backoff(e);
                            continue;
                        }
                    };
                    match guard.try_io(|_| sys::accept_nonblocking(listener.as_fd())) {
                        Ok(result) => result.and_then(|(s, a)| Ok((TcpStream::from_std(s)?, a))),
                        // Another worker took it, or the wake-up was the drain eventfd.
                        Err(_would_block) => continue,
                    }
                }
                None => continue,
            };
            match result {
                Ok((stream, addr)) => {
                    // Relaxed: a lone gauge (see `HermesStream::new`); a
                    // limit off by a racing drop on another thread is fine.
                    if let Some(max) = self.max_connections
                        && self.worker.state().open_conns.load(std::sync::atomic::Ordering::Relaxed) >= max
                    {
                        self.refuse(stream, max);
                        continue;
                    }
                    // One `setsockopt` per connection. A refusal (the peer
                    // already reset it) is not worth failing the accept for.
                    if self.nodelay
                        && let Err(e) = stream.set_nodelay(true)
                    {
                        tracing::debug!(worker = self.worker.id(), error = %e, "setting TCP_NODELAY");
                    }
                    return Poll::Ready(Some((HermesStream::new(stream, &self.worker), addr)));
                }
                Err(e) if is_connection_error(&e) => continue,
                Err(e) => self.backoff(e),
            }
        }
    }

    /// A connection taken from a stuck worker's listener, when the tick came
    /// (or the last look found one) and a stuck worker's listener holds one.
    /// Costs one timer poll per call otherwise.
    fn poll_rescue(&mut self, cx: &mut Context<'_>) -> Option<(HermesStream, SocketAddr)> {
        let me = self.worker.id();
        let rescue = self.rescue.as_mut()?;
        if rescue.tick.as_mut().poll(cx).is_ready() {
            // On the worker's grid of ticks, with its housekeeping: one
            // wake-up for both.
            let until = self.worker.server().map_or(rescue.tick_every, |s| s.until_next_tick(me));
            let next = Instant::now() + until;
            rescue.tick.as_mut().reset(next);
            // Registers this task for the next tick.
            let _ = rescue.tick.as_mut().poll(cx);
            rescue.active = true;
        }
        if !rescue.active {
            return None;
        }
        // Relaxed: a lone gauge (see `poll_accept`).
        if self.max_connections.is_some_and(|max| {
            self.worker.state().open_conns.load(std::sync::atomic::Ordering::Relaxed) >= max
        }) {
            rescue.active = false;
            return None;
        }
        let Some((stream, addr, hung)) = self.worker.server().and_then(|s| s.take_from_stuck(me)) else {
            rescue.active = false;
            return None;
        };
        let total = self.control.count_rescued();
        rescue.logged.0 += 1;
        let now = std::time::Instant::now();
        if rescue.logged.1.is_none_or(|at| now.duration_since(at) >= Duration::from_secs(1)) {
            tracing::warn!(
                worker = me,
                hung,
                rescued = rescue.logged.0,
                total,
                "took connections queued on a hung or starved worker's listener"
            );
            rescue.logged = (0, Some(now));
        }
        let stream = match stream.set_nonblocking(true).and_then(|()| TcpStream::from_std(stream)) {
            Ok(s) => s,
            Err(e) => {
                tracing::debug!(worker = me, error = %e, "registering a rescued connection");
                return None;
            }
        };
        if self.nodelay
            && let Err(e) = stream.set_nodelay(true)
        {
            tracing::debug!(worker = me, error = %e, "setting TCP_NODELAY");
        }
        Some((HermesStream::new(stream, &self.worker), addr))
    }

    fn backoff(&mut self, e: io::Error) {
        if self.control.is_draining() {
            return;
        }
        tracing::error!(worker = self.worker.id(), error = %e, "accept failed; retrying in {ACCEPT_BACKOFF:?}");
        self.backoff.as_mut().reset(Instant::now() + ACCEPT_BACKOFF);
        self.backing_off = true;
    }
}

impl Stream for HermesListener {
    type Item = io::Result<HermesStream>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.get_mut().poll_accept(cx).map(|c| c.map(|(s, _)| Ok(s)))
    }
}
