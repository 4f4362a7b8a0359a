//! The one-line start: an axum `Router` ([`serve()`]) or tonic services
//! ([`serve_tonic`]) on a Hermes server, with [`HermesLayer`] added.
//!
//! An axum application moves to Hermes dispatch by changing one line:
//!
//! ```diff
//!  let listener = tokio::net::TcpListener::bind("0.0.0.0:3000").await?;
//! -axum::serve(listener, app).await?;
//! +hermes_tower::serve(listener, app).await?;
//! ```
//!
//! The future starts a Hermes server with the [`Builder`]'s defaults (one
//! worker per CPU, [`Mode::Hermes`](hermes_runtime::Mode::Hermes) with the
//! fallback to the kernel's hash when the dispatch program cannot be
//! loaded), serves `app` on every worker with [`HermesLayer`] added and
//! graceful shutdown wired to [`hermes_runtime::shutdown_signal`], and
//! resolves once the server has stopped: after ctrl-c or `SIGTERM` (see
//! [`shutdown_on_signal`]), or when every worker stopped by itself.
//!
//! For a handle instead of a future (tests, printing the mode, stopping the
//! server from code), use [`Serve::start`]. For full control (other
//! servers than axum and tonic, per-worker state, your own shutdown), use
//! [`hermes_runtime::Builder`] and [`hermes_runtime::Server::serve`]
//! directly; the layer is then yours to add.
//!
//! # The stats endpoint
//!
//! `/_hermes/stats` (the server's [`Snapshot`](hermes_runtime::Snapshot) as
//! JSON) is off by default: the one-line change must not add a path to an
//! application's public surface. Turn it on with [`Serve::with_stats`].

mod addr;
#[cfg(feature = "tonic")]
mod grpc;

use std::{io, time::Duration};

pub use addr::IntoBindAddr;
#[cfg(feature = "tonic")]
pub use grpc::{ServeTonic, serve_tonic};
#[cfg(feature = "axum")]
use hermes_runtime::{Builder, HermesListener, shutdown_signal};
use hermes_runtime::{ServerHandle, WorkerStatus};
use tokio::signal::unix::{SignalKind, signal};

#[cfg(feature = "axum")]
use crate::HermesLayer;

/// Starts `app` on a Hermes server listening on `addr`; await it in place of
/// `axum::serve(listener, app)`.
///
/// `addr` is an address or a listener whose address is taken over (see
/// [`IntoBindAddr`] for the short window this leaves). Nothing happens until
/// the returned [`Serve`] is awaited or started.
///
/// ```no_run
/// use axum::{Router, routing::get};
///
/// #[tokio::main]
/// async fn main() -> std::io::Result<()> {
///     let app = Router::new().route("/", get(|| async { "hello" }));
///     let listener = tokio::net::TcpListener::bind("127.0.0.1:3000").await?;
///     hermes_tower::serve(listener, app).await
/// }
/// ```
#[cfg(feature = "axum")]
pub fn serve<A: IntoBindAddr>(addr: A, app: axum::Router) -> Serve<A> {
    Serve { addr, app, builder: Builder::new(), layer: Some(HermesLayer::new()), stats: false }
}

/// An axum application about to be served by a Hermes server; made by
/// [`serve()`].
///
/// Await it to serve until ctrl-c or `SIGTERM`, or [`start`](Serve::start)
/// it for a [`ServerHandle`].
///
/// ```no_run
/// use axum::{Router, routing::get};
/// use hermes_runtime::Builder;
///
/// # async fn run() -> std::io::Result<()> {
/// let app = Router::new().route("/", get(|| async { "hello" }));
/// let mut builder = Builder::new();
/// builder.workers(2);
/// let handle = hermes_tower::serve("127.0.0.1:0", app)
///     .with_builder(builder)
///     .with_stats()
///     .start()?;
/// println!("http://{}/_hermes/stats (mode {})", handle.local_addr(), handle.mode());
/// handle.shutdown();
/// # Ok(())
/// # }
/// ```
#[cfg(feature = "axum")]
#[must_use = "a Serve does nothing until it is awaited or started"]
#[derive(Debug)]
pub struct Serve<A> {
    addr: A,
    app: axum::Router,
    builder: Builder,
    layer: Option<HermesLayer>,
    stats: bool,
}

#[cfg(feature = "axum")]
impl<A: IntoBindAddr> Serve<A> {
    /// The server's settings (workers, mode, `require_ebpf`, drain timeout,
    /// ...). Its address is replaced by the one given to [`serve()`].
    /// Default: [`Builder::new()`].
    pub fn with_builder(mut self, builder: Builder) -> Self {
        self.builder = builder;
        self
    }

    /// The layer added to `app`, for other settings than the default ones
    /// (such as [`HermesLayer::service_time`]). Default: [`HermesLayer::new()`].
    pub fn with_layer(mut self, layer: HermesLayer) -> Self {
        self.layer = Some(layer);
        self
    }

    /// Serves `app` as it is, without [`HermesLayer`] (for an app that adds
    /// the layer itself). Without the layer the table has no in-flight
    /// counts, and the scheduler sees only connections, accept queues and
    /// heartbeats.
    pub fn without_layer(mut self) -> Self {
        self.layer = None;
        self
    }

    /// Also serves the server's snapshot as JSON at `/_hermes/stats`
    /// ([`hermes_runtime::stats_router`]), outside the layer, so reading the
    /// stats does not count as load. `app` must not have that path already
    /// (axum panics on overlapping routes). Default: off.
    pub fn with_stats(mut self) -> Self {
        self.stats = true;
        self
    }

    /// Binds the address, starts the workers and returns at once.
    ///
    /// Nothing stops the server on a signal: call
    /// [`ServerHandle::shutdown`], or pass the handle to
    /// [`shutdown_on_signal`].
    ///
    /// # Errors
    /// The address's resolution error, and [`Builder::build`]'s and
    /// [`hermes_runtime::Server::serve`]'s errors (a bad setting, the bind
    /// error, a refused dispatch program with `require_ebpf`).
    pub fn start(self) -> io::Result<ServerHandle> {
        let addr = self.addr.into_bind_addr()?;
        let mut builder = self.builder;
        let server = builder.bind(addr).build()?;
        let mut app = self.app;
        if let Some(layer) = self.layer {
            app = app.layer(layer);
        }
        if self.stats {
            app = app.merge(hermes_runtime::stats_router());
        }
        let handle = server.serve(move |listener: HermesListener| {
            let app = app.clone();
            async move {
                let worker = listener.worker_id();
                if let Err(e) = axum::serve(listener, app).with_graceful_shutdown(shutdown_signal()).await {
                    tracing::error!(worker, error = %e, "axum stopped serving");
                }
            }
        })?;
        log_start(&handle);
        Ok(handle)
    }
}

#[cfg(feature = "axum")]
impl<A: IntoBindAddr + Send + 'static> std::future::IntoFuture for Serve<A> {
    type Output = io::Result<()>;
    type IntoFuture = std::pin::Pin<Box<dyn Future<Output = io::Result<()>> + Send>>;

    fn into_future(self) -> Self::IntoFuture {
        Box::pin(async move { shutdown_on_signal(self.start()?).await })
    }
}

/// Logs where the server listens and its mode (with the fallback's reason).
#[cfg(any(feature = "axum", feature = "tonic"))]
fn log_start(handle: &ServerHandle) {
    match handle.mode_reason() {
        Some(reason) => tracing::info!(
            addr = %handle.local_addr(),
            mode = %handle.mode(),
            reason,
            "Hermes server started without its dispatch program"
        ),
        None => tracing::info!(addr = %handle.local_addr(), mode = %handle.mode(), "Hermes server started"),
    }
}

/// Serves until ctrl-c (`SIGINT`) or `SIGTERM`, then shuts `handle`'s server
/// down gracefully and resolves once every worker has stopped; also resolves
/// when every worker stopped by itself. A second signal during the drain
/// resolves at once, leaving the remaining workers to end with the process.
///
/// Call it from a Tokio runtime (its blocking pool waits for the workers).
///
/// ```no_run
/// use axum::{Router, routing::get};
///
/// #[tokio::main]
/// async fn main() -> std::io::Result<()> {
///     let app = Router::new().route("/", get(|| async { "hello" }));
///     let handle = hermes_tower::serve("127.0.0.1:3000", app).start()?;
///     println!("mode: {}", handle.mode());
///     hermes_tower::serve::shutdown_on_signal(handle).await
/// }
/// ```
///
/// # Errors
/// When the signal handlers cannot be installed (the server is then shut
/// down before returning).
pub async fn shutdown_on_signal(handle: ServerHandle) -> io::Result<()> {
    let signals = signal(SignalKind::interrupt()).and_then(|i| Ok((i, signal(SignalKind::terminate())?)));
    let (mut interrupt, mut terminate) = match signals {
        Ok(s) => s,
        Err(e) => {
            tokio::task::spawn_blocking(move || handle.shutdown()).await.map_err(io::Error::other)?;
            return Err(e);
        }
    };
    tokio::select! {
        _ = interrupt.recv() => tracing::info!("SIGINT: shutting the Hermes server down"),
        _ = terminate.recv() => tracing::info!("SIGTERM: shutting the Hermes server down"),
        () = all_stopped(&handle) => {
            return tokio::task::spawn_blocking(move || handle.join()).await.map_err(io::Error::other);
        }
    }
    let mut done = tokio::task::spawn_blocking(move || handle.shutdown());
    tokio::select! {
        result = &mut done => result.map_err(io::Error::other),
        _ = interrupt.recv() => {
            tracing::warn!("second signal: not waiting for the workers to drain");
            Ok(())
        }
        _ = terminate.recv() => {
            tracing::warn!("second signal: not waiting for the workers to drain");
            Ok(())
        }
    }
}

/// Resolves once every worker of `handle` has stopped.
async fn all_stopped(handle: &ServerHandle) {
    loop {
        tokio::time::sleep(Duration::from_millis(100)).await;
        if handle.snapshot().workers.iter().all(|w| w.state == WorkerStatus::Stopped) {
            return;
        }
    }
}
