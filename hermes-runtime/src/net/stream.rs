//! [`HermesStream`], the accepted connection that keeps its worker's
//! open-connection count exact.

use std::{
    fmt, io,
    pin::Pin,
    sync::atomic::Ordering,
    task::{Context, Poll},
};

use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf},
    net::TcpStream,
};

use crate::context::WorkerRef;

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
    pub(crate) fn new(inner: TcpStream, worker: &WorkerRef) -> Self {
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
