//! The one-line start: an axum application ([`serve()`]) or tonic services
//! ([`serve_tonic`]) on a Hermes server, with [`HermesLayer`](crate::HermesLayer) added.
//!
//! An axum application moves to Hermes dispatch by changing one line:
//!
//! ```diff
//!  let listener = tokio::net::TcpListener::bind("0.0.0.0:3000").await?;
//! -axum::serve(listener, app).await?;
//! +hermes_tower::serve(listener, app).await?;
//! ```
//!
//! `app` is anything `axum::serve` takes: a `Router`, or a make-service
//! such as `app.into_make_service_with_connect_info::<SocketAddr>()`:
//!
//! ```diff
//! -axum::serve(listener, app.into_make_service_with_connect_info::<SocketAddr>()).await?;
//! +hermes_tower::serve(listener, app.into_make_service_with_connect_info::<SocketAddr>()).await?;
//! ```
//!
//! [`serve_tonic`] does the same for tonic services. Both return a
//! [`Serve`], whose options ([`Serve::with_tls`], [`Serve::with_stats`],
//! [`Serve::also_bind`], [`Serve::with_upgrades`], the timeouts and
//! connection limits, ...) are the same for both protocols.
//!
//! The future ([`ServeFuture`]) starts a Hermes server with the
//! [`Builder`](hermes_runtime::Builder)'s defaults (one worker per CPU,
//! [`Mode::Hermes`](hermes_runtime::Mode::Hermes) with the fallback to the
//! kernel's hash when the dispatch program cannot be loaded), serves `app`
//! with `axum::serve` on every worker with [`HermesLayer`](crate::HermesLayer)
//! added and axum's graceful shutdown wired to the worker's drain, and
//! resolves once the server has stopped: after ctrl-c or `SIGTERM` (see
//! [`shutdown_on_signal`]) or the future given to
//! [`Serve::with_graceful_shutdown`], or when every worker stopped by itself.
//! [`Serve::with_tls`] serves HTTPS (rustls, ALPN `h2` and `http/1.1`,
//! certificates reloadable while serving: [`RustlsConfig`]).
//!
//! For a handle instead of a future (tests, printing the mode, stopping the
//! server from code), use [`Serve::start`]. For full control (other
//! servers than axum and tonic, per-worker state), use
//! [`hermes_runtime::Builder`] and [`hermes_runtime::Server::serve`]
//! directly, with [`WorkerListener::new`] around each worker's listener;
//! the layer is then yours to add.
//!
//! # The stats endpoint
//!
//! `/_hermes/stats` (the server's [`Snapshot`](hermes_runtime::Snapshot) as
//! JSON) is off by default: the one-line change must not add a path to an
//! application's public surface. Turn it on with [`Serve::with_stats`].

mod addr;
mod body;
mod conn;
mod frames;
mod grpc;
#[cfg(feature = "tls")]
mod handshake;
mod http;
mod listener;
mod options;
mod protocol;
mod signals;
mod timeouts;
#[cfg(feature = "tls")]
mod tls;

use std::{
    fmt, io,
    pin::Pin,
    task::{Context, Poll},
};

pub use addr::IntoBindAddr;
pub use body::{InProgress, MinDataRate, RequestBodyTooSlow};
pub use conn::Connection;
pub use grpc::{Grpc, GrpcConnectInfo, ServeTonic, TonicService, serve_tonic};
pub use http::{Http, serve};
pub use listener::{IncomingStream, WorkerListener};
pub use options::Serve;
pub use protocol::Protocol;
pub use signals::{ctrl_c_or_sigterm, shutdown_on_signal, shutdown_when, upgrade_on, upgrade_on_sigusr2};
pub use timeouts::{DEFAULT_HEADER_READ_TIMEOUT, DEFAULT_IDLE_TIMEOUT};
#[cfg(feature = "tls")]
pub use tls::{ALPN, RustlsConfig, TlsStats};

/// The future of [`Serve`] awaited: resolves once the server has stopped.
///
/// ```no_run
/// use hermes_tower::serve::ServeFuture;
///
/// # fn f(app: axum::Router) {
/// let server: ServeFuture = std::future::IntoFuture::into_future(hermes_tower::serve("127.0.0.1:3000", app));
/// let _task = tokio::spawn(server);
/// # }
/// ```
#[must_use = "futures do nothing unless awaited"]
pub struct ServeFuture(Pin<Box<dyn Future<Output = io::Result<()>> + Send>>);

impl ServeFuture {
    fn new(future: impl Future<Output = io::Result<()>> + Send + 'static) -> Self {
        Self(Box::pin(future))
    }
}

impl Future for ServeFuture {
    type Output = io::Result<()>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.0.as_mut().poll(cx)
    }
}

impl fmt::Debug for ServeFuture {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ServeFuture").finish_non_exhaustive()
    }
}
