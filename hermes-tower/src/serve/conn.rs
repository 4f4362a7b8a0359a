//! What each worker hands to `axum::serve`: [`WorkerListener`], over the
//! worker's [`HermesListener`] (with the TLS handshakes when TLS is on), and
//! the [`Connection`]s it accepts.

use std::{
    fmt, io,
    net::SocketAddr,
    pin::Pin,
    task::{Context, Poll},
};

use axum::serve::{ListenerExt, TapIo};
use hermes_runtime::{HermesListener, HermesStream};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

#[cfg(feature = "tls")]
use super::tls::TlsListener;

/// What a make-service given to [`serve()`](super::serve()) is called with,
/// once per connection: axum's `IncomingStream` over the worker's listener
/// (wrapped in axum's `TapIo`, which sets `TCP_NODELAY` when asked).
///
/// `SocketAddr` implements `axum::extract::connect_info::Connected` for it,
/// so `app.into_make_service_with_connect_info::<SocketAddr>()` gives
/// handlers the client's address. A connect-info type of your own cannot
/// implement `Connected` for it: axum implements `Connected` for the address
/// type of every `TapIo` listener, and the compiler takes any other
/// implementation as overlapping. A make-service of your own can read
/// [`remote_addr`](axum::serve::IncomingStream::remote_addr) and
/// [`io`](axum::serve::IncomingStream::io) (a [`Connection`]: worker, TLS
/// session); a handler finds its worker with
/// [`hermes_runtime::context::current`].
pub type IncomingStream<'a> = axum::serve::IncomingStream<'a, TapIo<WorkerListener, fn(&mut Connection)>>;

/// One worker's listener as `axum::serve` sees it: the worker's
/// [`HermesListener`], with the TLS handshakes done here when TLS is on.
/// Made by [`serve()`](super::serve()) on each worker; it appears in
/// [`IncomingStream`].
pub struct WorkerListener {
    inner: Inner,
}

enum Inner {
    Plain(HermesListener),
    #[cfg(feature = "tls")]
    Tls(TlsListener),
}

impl fmt::Debug for WorkerListener {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.inner {
            Inner::Plain(l) => f.debug_tuple("WorkerListener").field(l).finish(),
            #[cfg(feature = "tls")]
            Inner::Tls(l) => f.debug_tuple("WorkerListener").field(l).finish(),
        }
    }
}

fn leave_as_is(_: &mut Connection) {}

impl WorkerListener {
    /// Plain HTTP on `listener`.
    pub(crate) fn plain(listener: HermesListener) -> Self {
        Self { inner: Inner::Plain(listener) }
    }

    /// HTTPS on `listener`: the handshakes run in this listener, on the
    /// worker that accepted the connection.
    #[cfg(feature = "tls")]
    pub(crate) fn tls(listener: HermesListener, config: super::tls::RustlsConfig) -> Self {
        Self { inner: Inner::Tls(TlsListener::new(listener, config)) }
    }

    /// `self` in the form [`IncomingStream`] names (axum's `TapIo`, which
    /// makes `SocketAddr` a `ConnectInfo`); the tap does nothing, since the
    /// runtime sets `TCP_NODELAY` as it accepts (`Builder::tcp_nodelay`).
    pub(crate) fn tapped(self) -> TapIo<Self, fn(&mut Connection)> {
        self.tap_io(leave_as_is as fn(&mut Connection))
    }

    fn worker_id(&self) -> usize {
        match &self.inner {
            Inner::Plain(l) => l.worker_id(),
            #[cfg(feature = "tls")]
            Inner::Tls(l) => l.worker_id(),
        }
    }
}

impl axum::serve::Listener for WorkerListener {
    type Io = Connection;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Connection, SocketAddr) {
        let next = std::future::poll_fn(|cx| match &mut self.inner {
            Inner::Plain(l) => l.poll_accept(cx).map(|c| c.map(|(s, a)| (Connection::plain(s), a))),
            #[cfg(feature = "tls")]
            Inner::Tls(l) => l.poll_accept(cx).map(|c| c.map(|(s, a)| (Connection::tls(s), a))),
        })
        .await;
        match next {
            Some(conn) => conn,
            // Closed: the worker is draining, and axum's graceful shutdown
            // (on the worker's drain signal) stops the accept loop.
            None => {
                tracing::trace!(worker = self.worker_id(), "listener closed; waiting for the shutdown");
                std::future::pending().await
            }
        }
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        Ok(match &self.inner {
            Inner::Plain(l) => l.local_addr(),
            #[cfg(feature = "tls")]
            Inner::Tls(l) => l.local_addr(),
        })
    }
}

/// An accepted connection, plain or TLS, counted as open on the worker that
/// accepted it (see [`HermesStream`]).
pub struct Connection {
    inner: Stream,
}

enum Stream {
    Plain(HermesStream),
    // Boxed: a TLS session is about a kilobyte, a plain stream two words.
    #[cfg(feature = "tls")]
    Tls(Box<tokio_rustls::server::TlsStream<HermesStream>>),
}

impl fmt::Debug for Connection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Connection")
            .field("worker", &self.worker_id())
            .field("tls", &self.is_tls())
            .field("tcp", self.tcp())
            .finish()
    }
}

impl Connection {
    fn plain(stream: HermesStream) -> Self {
        Self { inner: Stream::Plain(stream) }
    }

    #[cfg(feature = "tls")]
    fn tls(stream: tokio_rustls::server::TlsStream<HermesStream>) -> Self {
        Self { inner: Stream::Tls(Box::new(stream)) }
    }

    fn hermes(&self) -> &HermesStream {
        match &self.inner {
            Stream::Plain(s) => s,
            #[cfg(feature = "tls")]
            Stream::Tls(s) => s.get_ref().0,
        }
    }

    /// The worker that accepted the connection.
    pub fn worker_id(&self) -> usize {
        self.hermes().worker_id()
    }

    /// The TCP stream under the connection.
    pub fn tcp(&self) -> &tokio::net::TcpStream {
        self.hermes().get_ref()
    }

    /// Whether the connection is TLS.
    pub fn is_tls(&self) -> bool {
        match &self.inner {
            Stream::Plain(_) => false,
            #[cfg(feature = "tls")]
            Stream::Tls(_) => true,
        }
    }

    /// The TLS session (negotiated ALPN protocol, SNI name, client
    /// certificates), or `None` for plain HTTP.
    #[cfg(feature = "tls")]
    pub fn tls_session(&self) -> Option<&rustls::ServerConnection> {
        match &self.inner {
            Stream::Plain(_) => None,
            Stream::Tls(s) => Some(s.get_ref().1),
        }
    }
}

macro_rules! delegate {
    ($self:ident, $s:ident => $e:expr) => {
        match &mut $self.get_mut().inner {
            Stream::Plain($s) => {
                let $s = Pin::new($s);
                $e
            }
            #[cfg(feature = "tls")]
            Stream::Tls($s) => {
                let $s = Pin::new(&mut **$s);
                $e
            }
        }
    };
}

impl AsyncRead for Connection {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        delegate!(self, s => s.poll_read(cx, buf))
    }
}

impl AsyncWrite for Connection {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        delegate!(self, s => s.poll_write(cx, buf))
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        delegate!(self, s => s.poll_flush(cx))
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        delegate!(self, s => s.poll_shutdown(cx))
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        delegate!(self, s => s.poll_write_vectored(cx, bufs))
    }

    fn is_write_vectored(&self) -> bool {
        match &self.inner {
            Stream::Plain(s) => s.is_write_vectored(),
            #[cfg(feature = "tls")]
            Stream::Tls(s) => s.is_write_vectored(),
        }
    }
}
