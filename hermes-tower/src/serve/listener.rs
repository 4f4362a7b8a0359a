//! [`WorkerListener`]: one worker's listener as axum and tonic take it, over
//! the worker's [`HermesListener`], with the TLS handshakes done on the
//! worker when TLS is on, and each connection's timeouts started as it is
//! accepted.

use std::{
    fmt, io,
    net::SocketAddr,
    pin::Pin,
    task::{Context, Poll},
};

use axum::serve::{ListenerExt, TapIo};
use futures_util::Stream;
use hermes_runtime::HermesListener;

use super::{conn::Connection, timeouts::Timeouts};
#[cfg(feature = "tls")]
use super::{handshake::TlsListener, tls::RustlsConfig};

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

/// One worker's listener as axum and tonic take it: it implements
/// `axum::serve::Listener`, and it is the `Stream` of connections tonic's
/// `serve_with_incoming_shutdown` takes. [`serve()`](super::serve()) and
/// [`serve_tonic`](super::serve_tonic) make one on each worker, with TLS
/// and the timeouts they are given; for a server of your own on the plain
/// [`hermes_runtime::Builder`], wrap the worker's listener with
/// [`WorkerListener::new`]:
///
/// ```no_run
/// use axum::{Router, routing::get};
/// use hermes_runtime::{Builder, HermesListener, shutdown_signal};
/// use hermes_tower::{HermesLayer, serve::WorkerListener};
///
/// let app = Router::new().route("/", get(|| async { "hello" })).layer(HermesLayer::new());
/// let server = Builder::new().bind("127.0.0.1:3000".parse().unwrap()).build()?;
/// let handle = server.serve(move |listener: HermesListener| {
///     let app = app.clone();
///     async move {
///         let _ = axum::serve(WorkerListener::new(listener), app).with_graceful_shutdown(shutdown_signal()).await;
///     }
/// })?;
/// handle.join();
/// # Ok::<(), std::io::Error>(())
/// ```
///
/// When the worker drains, the listener closes: the stream ends, and
/// `axum::serve::Listener::accept` never completes (stop axum with
/// [`hermes_runtime::shutdown_signal`]).
pub struct WorkerListener {
    inner: Inner,
    timeouts: Timeouts,
}

enum Inner {
    Plain(HermesListener),
    #[cfg(feature = "tls")]
    Tls(TlsListener),
}

impl fmt::Debug for WorkerListener {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut d = f.debug_struct("WorkerListener");
        match &self.inner {
            Inner::Plain(l) => d.field("inner", l),
            #[cfg(feature = "tls")]
            Inner::Tls(l) => d.field("inner", l),
        };
        d.field("timeouts", &self.timeouts).finish()
    }
}

fn leave_as_is(_: &mut Connection) {}

impl WorkerListener {
    /// Plain connections from `listener`, with no timeouts: the listener a
    /// server of your own hands to `axum::serve` or tonic.
    pub fn new(listener: HermesListener) -> Self {
        Self { inner: Inner::Plain(listener), timeouts: Timeouts::NONE }
    }

    /// Connections from `listener`, over TLS when `tls` is given, with
    /// `timeouts`.
    pub(crate) fn with(
        listener: HermesListener,
        #[cfg(feature = "tls")] tls: Option<RustlsConfig>,
        timeouts: Timeouts,
    ) -> Self {
        #[cfg(feature = "tls")]
        let inner = match tls {
            Some(config) => Inner::Tls(TlsListener::new(listener, config)),
            None => Inner::Plain(listener),
        };
        #[cfg(not(feature = "tls"))]
        let inner = Inner::Plain(listener);
        Self { inner, timeouts }
    }

    /// `self` in the form [`IncomingStream`] names (axum's `TapIo`, which
    /// makes `SocketAddr` a `ConnectInfo`); the tap does nothing, since the
    /// runtime sets `TCP_NODELAY` as it accepts (`Builder::tcp_nodelay`).
    pub(crate) fn tapped(self) -> TapIo<Self, fn(&mut Connection)> {
        self.tap_io(leave_as_is as fn(&mut Connection))
    }

    /// The worker this listener belongs to.
    pub fn worker_id(&self) -> usize {
        match &self.inner {
            Inner::Plain(l) => l.worker_id(),
            #[cfg(feature = "tls")]
            Inner::Tls(l) => l.worker_id(),
        }
    }

    /// The address the server listens on.
    pub fn local_addr(&self) -> SocketAddr {
        match &self.inner {
            Inner::Plain(l) => l.local_addr(),
            #[cfg(feature = "tls")]
            Inner::Tls(l) => l.local_addr(),
        }
    }

    /// Polls for the next connection (its handshake done, its timer
    /// started); `Ready(None)` once the worker drains.
    pub fn poll_accept(&mut self, cx: &mut Context<'_>) -> Poll<Option<(Connection, SocketAddr)>> {
        let next = match &mut self.inner {
            Inner::Plain(l) => l.poll_accept(cx).map(|c| c.map(|(s, a)| (Connection::plain(s), a))),
            #[cfg(feature = "tls")]
            Inner::Tls(l) => l.poll_accept(cx).map(|c| c.map(|(s, a)| (Connection::tls(s), a))),
        };
        next.map(|c| c.map(|(conn, addr)| (conn.with_timer(self.timeouts), addr)))
    }
}

impl axum::serve::Listener for WorkerListener {
    type Io = Connection;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Connection, SocketAddr) {
        match std::future::poll_fn(|cx| self.poll_accept(cx)).await {
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
        Ok(WorkerListener::local_addr(self))
    }
}

impl Stream for WorkerListener {
    type Item = io::Result<Connection>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.get_mut().poll_accept(cx).map(|c| c.map(|(conn, _)| Ok(conn)))
    }
}
