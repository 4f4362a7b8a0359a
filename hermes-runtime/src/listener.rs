//! [`HermesListener`], each worker's listener, and [`HermesStream`], the
//! accepted connection that keeps the worker's open-connection count exact.

use std::{
    fmt,
    future::Future,
    io,
    net::SocketAddr,
    os::fd::AsRawFd,
    pin::Pin,
    sync::{Arc, atomic::Ordering},
    task::{Context, Poll, ready},
    time::Duration,
};

use futures_core::Stream;
use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf, unix::AsyncFd},
    net::{TcpListener, TcpStream},
    time::{Instant, Sleep},
};

use crate::{context::WorkerRef, server::WorkerControl, sys};

/// Where a worker's connections come from.
pub(crate) enum Source {
    /// The worker's own `SO_REUSEPORT` listener.
    Own(TcpListener),
    /// The shared listener, through this worker's `EPOLLEXCLUSIVE` epoll set.
    Shared { epoll: AsyncFd<sys::ExclusiveEpoll>, listener: Arc<std::net::TcpListener> },
}

/// The listener of one worker.
///
/// Pass it to `axum::serve` (it implements `axum::serve::Listener`), to
/// tonic's `serve_with_incoming_shutdown` (it is a
/// `Stream<Item = io::Result<HermesStream>>`), or accept in a loop with
/// [`HermesListener::accept_connection`] and serve each stream with
/// hyper-util (`TokioIo::new(stream)`).
///
/// Accepting never fails: connection errors are retried at once and other
/// errors (such as `EMFILE`) are logged and retried after a back-off. When
/// the worker starts draining the listener closes: the stream ends and
/// [`HermesListener::accept_connection`] returns `None`
/// (`axum::serve::Listener::accept` then never completes; stop with
/// [`crate::shutdown_signal`]).
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
/// With tonic (feature `tonic`), the listener is the incoming stream:
///
/// ```no_run
/// use hermes_runtime::{Builder, HermesListener, shutdown_signal};
///
/// let server = Builder::new().bind("127.0.0.1:50051".parse().unwrap()).build()?;
/// let handle = server.serve(|listener: HermesListener| async move {
///     let routes = tonic::service::Routes::default(); // add the gRPC services here
///     let _ = tonic::transport::Server::builder()
///         .add_routes(routes)
///         .serve_with_incoming_shutdown(listener, shutdown_signal())
///         .await;
/// })?;
/// handle.join();
/// # Ok::<(), std::io::Error>(())
/// ```
pub struct HermesListener {
    worker: WorkerRef,
    control: Arc<WorkerControl>,
    local_addr: SocketAddr,
    source: Option<Source>,
    backoff: Pin<Box<Sleep>>,
    backing_off: bool,
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
        }
    }

    /// The worker this listener belongs to.
    pub fn worker_id(&self) -> usize {
        self.worker.id()
    }

    /// The address the server listens on.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Resolves when this worker starts draining (the same as
    /// [`crate::shutdown_signal`] called on this worker's thread).
    pub fn shutdown_signal(&self) -> impl Future<Output = ()> + Send + 'static {
        let control = self.control.clone();
        async move { control.draining().await }
    }

    /// The next connection, or `None` once the worker drains.
    pub async fn accept_connection(&mut self) -> Option<(HermesStream, SocketAddr)> {
        std::future::poll_fn(|cx| self.poll_accept(cx)).await
    }

    /// Polls for the next connection; `Ready(None)` once the worker drains.
    pub fn poll_accept(&mut self, cx: &mut Context<'_>) -> Poll<Option<(HermesStream, SocketAddr)>> {
        loop {
            // Acquire pairs with the Release in `WorkerControl::begin_drain`:
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
                    match guard.try_io(|_| sys::accept_nonblocking(listener.as_raw_fd())) {
                        Ok(result) => result.and_then(|(s, a)| Ok((TcpStream::from_std(s)?, a))),
                        // Another worker took it, or the wake-up was the drain eventfd.
                        Err(_would_block) => continue,
                    }
                }
                None => continue,
            };
            match result {
                Ok((stream, addr)) => {
                    return Poll::Ready(Some((HermesStream::new(stream, &self.worker), addr)));
                }
                Err(e) if is_connection_error(&e) => continue,
                Err(e) => self.backoff(e),
            }
        }
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

#[cfg(feature = "axum")]
impl axum::serve::Listener for HermesListener {
    type Io = HermesStream;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self.accept_connection().await {
            Some(conn) => conn,
            // Closed: the worker is draining and axum's graceful shutdown
            // (on `shutdown_signal`) stops the accept loop.
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> io::Result<Self::Addr> {
        Ok(self.local_addr)
    }
}

/// An accepted connection: a [`TcpStream`] that counts itself in its
/// worker's slot of the Worker State Table (open connections up on accept,
/// down on drop, whichever way the connection ends, including a panic in
/// its task).
///
/// It holds the stream and a clone of the worker handle (one reference-count
/// increment); it allocates nothing.
///
/// ```no_run
/// # async fn f(mut listener: hermes_runtime::HermesListener) {
/// if let Some((stream, _peer)) = listener.accept_connection().await {
///     assert_eq!(stream.worker_id(), listener.worker_id());
///     let _tcp: &tokio::net::TcpStream = stream.get_ref();
/// }
/// # }
/// ```
pub struct HermesStream {
    inner: TcpStream,
    worker: WorkerRef,
}

impl fmt::Debug for HermesStream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HermesStream").field("worker", &self.worker.id()).field("inner", &self.inner).finish()
    }
}

impl HermesStream {
    /// Counts `inner` as accepted and open on `worker`.
    pub fn new(inner: TcpStream, worker: &WorkerRef) -> Self {
        let slot = worker.state();
        // Relaxed: both are counters read as independent values (by the
        // scheduler, the kernel's fine filter and snapshots); they guard no
        // other memory. Read-modify-write keeps them exact even if a stream
        // is dropped on another thread than its worker's.
        slot.accepted.fetch_add(1, Ordering::Relaxed);
        slot.open_conns.fetch_add(1, Ordering::Relaxed);
        Self { inner, worker: worker.clone() }
    }

    /// The worker that accepted this connection.
    pub fn worker_id(&self) -> usize {
        self.worker.id()
    }

    /// The TCP stream.
    pub fn get_ref(&self) -> &TcpStream {
        &self.inner
    }

    /// The TCP stream, mutably.
    pub fn get_mut(&mut self) -> &mut TcpStream {
        &mut self.inner
    }
}

impl Drop for HermesStream {
    fn drop(&mut self) {
        // Relaxed: see `new`; the decrement pairs with the increment by
        // value, not by ordering.
        self.worker.state().open_conns.fetch_sub(1, Ordering::Relaxed);
    }
}

impl AsyncRead for HermesStream {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for HermesStream {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

#[cfg(feature = "tonic")]
impl tonic::transport::server::Connected for HermesStream {
    type ConnectInfo = tonic::transport::server::TcpConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.inner.connect_info()
    }
}
