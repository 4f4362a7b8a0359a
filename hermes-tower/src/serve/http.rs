//! [`serve()`]: the one-line start of an axum application on a Hermes
//! server.
//!
//! The structure, from the outside in: [`Serve::start`] builds the server
//! and gives every worker [`serve_worker`]; that runs `axum::serve` on the
//! worker's [`WorkerListener`] (plain or TLS) with the application's
//! make-service wrapped in [`WorkerMakeService`], which wraps each
//! connection's service in [`WorkerService`]: the stats endpoint, then
//! [`Place`] (request placement), then [`HermesLayer`], then the application.

use std::{
    convert::Infallible,
    fmt, io,
    marker::PhantomData,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
};

use axum::{extract::Request, response::Response, routing::future::RouteFuture};
use futures_util::future::Either;
use hermes_runtime::{Builder, HermesListener, ServerHandle};
use pin_project_lite::pin_project;
use tokio::signal::unix::{SignalKind, signal as signal_of};
use tower_layer::Layer;
use tower_service::Service;

#[cfg(feature = "tls")]
use super::tls::RustlsConfig;
use super::{
    IncomingStream, IntoBindAddr, ServeFuture, StopSignals, WorkerListener,
    conn::{ActiveGuard, Activity},
    log_start, shutdown_all_on, shutdown_all_when,
};
use crate::{Hermes, HermesLayer, Place, place::future::PlaceFuture};

/// The path of the stats endpoint mounted by [`Serve::with_stats`].
const STATS_PATH: &str = "/_hermes/stats";

/// Starts an axum application on a Hermes server listening on `addr`; await
/// it in place of `axum::serve(listener, app)`.
///
/// `app` is what `axum::serve` takes: a `Router`, or a make-service such as
/// `app.into_make_service_with_connect_info::<SocketAddr>()` (handlers then
/// get the client's address from `ConnectInfo<SocketAddr>`). It is cloned
/// once per worker. `addr` is an address or a listener whose address is
/// taken over (see [`IntoBindAddr`] for the short window this leaves).
/// Nothing happens until the returned [`Serve`] is awaited or started.
///
/// ```no_run
/// use std::net::SocketAddr;
///
/// use axum::{Router, extract::ConnectInfo, routing::get};
///
/// #[tokio::main]
/// async fn main() -> std::io::Result<()> {
///     let app = Router::new()
///         .route("/", get(|ConnectInfo(peer): ConnectInfo<SocketAddr>| async move { peer.to_string() }));
///     let listener = tokio::net::TcpListener::bind("127.0.0.1:3000").await?;
///     hermes_tower::serve(listener, app.into_make_service_with_connect_info::<SocketAddr>()).await
/// }
/// ```
pub fn serve<A, M, S>(addr: A, app: M) -> Serve<A, M, S>
where
    A: IntoBindAddr,
    M: for<'a> Service<IncomingStream<'a>, Error = Infallible, Response = S> + Clone + Send + Sync + 'static,
    for<'a> <M as Service<IncomingStream<'a>>>::Future: Send,
    S: Service<Request, Response = Response, Error = Infallible> + Clone + Send + 'static,
    S::Future: Send,
{
    Serve {
        addr,
        also: Vec::new(),
        app,
        builder: Builder::new(),
        layer: Some(HermesLayer::new()),
        stats: false,
        #[cfg(feature = "tls")]
        tls: None,
        signal: None,
        upgrades: false,
        _service: PhantomData,
    }
}

/// An axum application about to be served by a Hermes server; made by
/// [`serve()`].
///
/// Await it to serve until ctrl-c or `SIGTERM` (or the future given to
/// [`with_graceful_shutdown`](Serve::with_graceful_shutdown)), or
/// [`start`](Serve::start) it for a [`ServerHandle`].
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
#[must_use = "a Serve does nothing until it is awaited or started"]
pub struct Serve<A, M, S> {
    addr: A,
    /// More addresses ([`Serve::also_bind`]), resolved when given.
    also: Vec<io::Result<std::net::SocketAddr>>,
    app: M,
    builder: Builder,
    layer: Option<HermesLayer>,
    stats: bool,
    #[cfg(feature = "tls")]
    tls: Option<RustlsConfig>,
    signal: Option<Pin<Box<dyn Future<Output = ()> + Send>>>,
    upgrades: bool,
    _service: PhantomData<fn() -> S>,
}

impl<A, M, S> fmt::Debug for Serve<A, M, S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut d = f.debug_struct("Serve");
        d.field("builder", &self.builder).field("layer", &self.layer).field("stats", &self.stats);
        #[cfg(feature = "tls")]
        d.field("tls", &self.tls);
        d.field("graceful_shutdown", &self.signal.is_some())
            .field("upgrades", &self.upgrades)
            .finish_non_exhaustive()
    }
}

impl<A, M, S> Serve<A, M, S>
where
    A: IntoBindAddr,
    M: for<'a> Service<IncomingStream<'a>, Error = Infallible, Response = S> + Clone + Send + Sync + 'static,
    for<'a> <M as Service<IncomingStream<'a>>>::Future: Send,
    S: Service<Request, Response = Response, Error = Infallible> + Clone + Send + 'static,
    S::Future: Send,
{
    /// The server's settings (workers, mode, `require_ebpf`, drain timeout,
    /// the worker runtimes, ...). Its address is replaced by the one given
    /// to [`serve()`]. Default: [`Builder::new()`].
    pub fn with_builder(mut self, builder: Builder) -> Self {
        self.builder = builder;
        self
    }

    /// The layer put around each connection's service, for other settings
    /// than the default ones (such as [`HermesLayer::service_time`]).
    /// Default: [`HermesLayer::new()`].
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
    /// ([`hermes_runtime::stats_router`]), ahead of `app` and outside the
    /// layer, so reading the stats does not count as load (and `app` never
    /// sees that path). Default: off.
    pub fn with_stats(mut self) -> Self {
        self.stats = true;
        self
    }

    /// Sets `TCP_NODELAY` on every accepted connection, or not: the same
    /// as [`Builder::tcp_nodelay`] on the server's builder (what axum users
    /// do with `listener.tap_io(..)`). Default: on.
    pub fn tcp_nodelay(mut self, nodelay: bool) -> Self {
        self.builder.tcp_nodelay(nodelay);
        self
    }

    /// Serves HTTPS: each worker runs the TLS handshakes of the connections
    /// it accepted (so their cost counts as that worker's load), then serves
    /// HTTP/2 or HTTP/1.1 as negotiated by ALPN. See [`RustlsConfig`] for
    /// the certificates, their reload and the handshake timeout.
    #[cfg(feature = "tls")]
    pub fn with_tls(mut self, config: RustlsConfig) -> Self {
        self.tls = Some(config);
        self
    }

    /// Stops the server when `signal` resolves, in place of ctrl-c and
    /// `SIGTERM`: every worker stops accepting, finishes its requests (up to
    /// the drain timeout), and the future resolves. As with axum's
    /// `with_graceful_shutdown`, the signals are then yours to handle (see
    /// [`ctrl_c_or_sigterm`](super::ctrl_c_or_sigterm) to keep them).
    /// Applies to `.await`; [`start`](Serve::start) ignores it.
    ///
    /// ```no_run
    /// use axum::{Router, routing::get};
    ///
    /// # async fn run() -> std::io::Result<()> {
    /// let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    /// let app = Router::new().route("/", get(|| async { "hello" }));
    /// let server = hermes_tower::serve("127.0.0.1:3000", app).with_graceful_shutdown(async move {
    ///     let _ = stopped.await;
    /// });
    /// # drop(stop);
    /// server.await
    /// # }
    /// ```
    pub fn with_graceful_shutdown<F>(mut self, signal: F) -> Self
    where
        F: Future<Output = ()> + Send + 'static,
    {
        self.signal = Some(Box::pin(signal));
        self
    }

    /// Zero-downtime upgrades in one setting: on `SIGUSR2` the server starts
    /// the current binary again with the same arguments (install the new
    /// release at the same path first), hands it the listeners and the
    /// kernel state, and drains once the new process serves; the future
    /// then resolves (see [`hermes_runtime::upgrade`]). A process started
    /// that way takes over instead of binding anew
    /// ([`Builder::upgrade_from_env`]). When the new process fails to
    /// start or refuses, this server keeps serving and logs why. With
    /// [`Serve::start`], the handle's [`ServerHandle::upgrade`] does the
    /// same on demand, and [`upgrade_on_sigusr2`](super::upgrade_on_sigusr2)
    /// waits for the signals.
    ///
    /// ```no_run
    /// # async fn run(app: axum::Router) -> std::io::Result<()> {
    /// hermes_tower::serve("0.0.0.0:3000", app).with_upgrades().await
    /// # }
    /// ```
    pub fn with_upgrades(mut self) -> Self {
        self.upgrades = true;
        self
    }

    /// Binds the address, starts the workers and returns at once.
    ///
    /// Nothing stops the server on a signal: call
    /// [`ServerHandle::shutdown`], or pass the handle to
    /// [`shutdown_on_signal`] or [`shutdown_when`]. Dropping the handle
    /// stops the server too (without waiting); [`ServerHandle::detach`]
    /// keeps it running.
    ///
    /// # Errors
    /// The address's resolution error, and [`Builder::build`]'s and
    /// [`hermes_runtime::Server::serve`]'s errors (a bad setting, the bind
    /// error, a refused dispatch program with `require_ebpf`).
    pub fn start(self) -> io::Result<ServerHandle> {
        if !self.also.is_empty() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "Serve::start serves one address; with Serve::also_bind, call Serve::start_all",
            ));
        }
        let mut handles = self.start_all()?;
        Ok(handles.remove(0))
    }

    /// Also listens on `addr` (IPv4 and IPv6, or another port), with its own
    /// server: its own workers (as many as the builder says, so two
    /// addresses run twice the threads), its own `SO_REUSEPORT` group and
    /// its own dispatch program attached to that group, all serving the same
    /// application. Awaiting serves every address and stops them together;
    /// [`Serve::start_all`] gives one handle per address.
    ///
    /// ```no_run
    /// # async fn run(app: axum::Router) -> std::io::Result<()> {
    /// hermes_tower::serve("0.0.0.0:8080", app).also_bind("[::1]:8080").also_bind("0.0.0.0:8081").await
    /// # }
    /// ```
    pub fn also_bind(mut self, addr: impl IntoBindAddr) -> Self {
        self.also.push(addr.into_bind_addr());
        self
    }

    /// Starts one server per address (the one given to [`serve()`] first,
    /// then those of [`Serve::also_bind`]) and returns their handles in
    /// that order, at once; see [`Serve::start`].
    ///
    /// # Errors
    /// As [`Serve::start`], for any address; the servers already started
    /// are then stopped.
    pub fn start_all(self) -> io::Result<Vec<ServerHandle>> {
        let mut addrs = vec![self.addr.into_bind_addr()?];
        for addr in self.also {
            addrs.push(addr?);
        }
        if self.upgrades && addrs.len() > 1 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "Serve::with_upgrades hands over one server: it cannot be combined with Serve::also_bind",
            ));
        }
        let mut builder = self.builder;
        if self.upgrades {
            builder.upgrade_from_env(true);
        }
        let make = WorkerMakeService {
            inner: self.app,
            layer: self.layer,
            stats: self.stats.then(hermes_runtime::stats_router),
        };
        let settings = WorkerSettings {
            #[cfg(feature = "tls")]
            tls: self.tls,
        };
        let mut handles = Vec::with_capacity(addrs.len());
        for addr in addrs {
            let mut builder = builder.clone();
            // On an error, the handles started so far drop: their servers stop.
            let server = builder.bind(addr).build()?;
            let (make, settings) = (make.clone(), settings.clone());
            let handle = server.serve(move |listener: HermesListener| {
                serve_worker(listener, make.clone(), settings.clone())
            })?;
            log_start(&handle);
            handles.push(handle);
        }
        Ok(handles)
    }

    /// The same, with the first address resolved (a listener given is closed).
    fn resolved(self) -> io::Result<Serve<std::net::SocketAddr, M, S>> {
        Ok(Serve {
            addr: self.addr.into_bind_addr()?,
            also: self.also,
            app: self.app,
            builder: self.builder,
            layer: self.layer,
            stats: self.stats,
            #[cfg(feature = "tls")]
            tls: self.tls,
            signal: self.signal,
            upgrades: self.upgrades,
            _service: PhantomData,
        })
    }
}

impl<A, M, S> std::future::IntoFuture for Serve<A, M, S>
where
    A: IntoBindAddr + Send + 'static,
    M: for<'a> Service<IncomingStream<'a>, Error = Infallible, Response = S> + Clone + Send + Sync + 'static,
    for<'a> <M as Service<IncomingStream<'a>>>::Future: Send,
    S: Service<Request, Response = Response, Error = Infallible> + Clone + Send + 'static,
    S::Future: Send,
{
    type Output = io::Result<()>;
    type IntoFuture = ServeFuture;

    fn into_future(mut self) -> ServeFuture {
        let signal = self.signal.take();
        let upgrades = self.upgrades;
        // A listener given is closed now, as `axum::serve` consumes its own.
        let this = self.resolved();
        ServeFuture::new(async move {
            let this = this?;
            // The handlers go in before the workers start, so that a signal
            // sent as soon as the server answers is not missed.
            let stop = match signal {
                Some(signal) => Ok(signal),
                None => Err(StopSignals::install()),
            };
            let usr2 = upgrades.then(|| signal_of(SignalKind::user_defined2()));
            // Loading the program, binding and the start-up wait block: on
            // the blocking pool, not on the caller's executor thread.
            let mut handles =
                tokio::task::spawn_blocking(move || this.start_all()).await.map_err(io::Error::other)??;
            if let Some(usr2) = usr2 {
                // One server (checked by `start_all`).
                let handle = handles.remove(0);
                return super::upgrade_on(handle, usr2, async move {
                    match stop {
                        Ok(signal) => signal.await,
                        Err(Ok(mut signals)) => signals.recv().await,
                        Err(Err(e)) => {
                            tracing::error!(error = %e, "no SIGINT/SIGTERM handler");
                            std::future::pending::<()>().await;
                        }
                    }
                })
                .await;
            }
            match stop {
                Ok(signal) => shutdown_all_when(handles, signal).await,
                Err(signals) => shutdown_all_on(handles, signals).await,
            }
        })
    }
}

/// What every worker serves with, besides the application.
#[derive(Clone)]
struct WorkerSettings {
    #[cfg(feature = "tls")]
    tls: Option<RustlsConfig>,
}

/// How long a draining worker keeps answering on idle HTTP/1 keep-alive
/// connections (each answer with `Connection: close`) before it closes
/// those still idle.
const DRAIN_IDLE_GRACE: std::time::Duration = std::time::Duration::from_millis(250);

/// One worker's server: `axum::serve` on the worker's listener until the
/// worker drains.
async fn serve_worker<M, S>(listener: HermesListener, make: WorkerMakeService<M>, settings: WorkerSettings)
where
    M: for<'a> Service<IncomingStream<'a>, Error = Infallible, Response = S> + Send + 'static,
    for<'a> <M as Service<IncomingStream<'a>>>::Future: Send,
    S: Service<Request, Response = Response, Error = Infallible> + Clone + Send + 'static,
    S::Future: Send,
{
    let worker = listener.worker_id();
    let drain = listener.shutdown_signal();
    // axum's graceful shutdown closes idle keep-alive connections at once,
    // racing a client's next request on them (it then sees the connection
    // close under it). For `DRAIN_IDLE_GRACE` after the drain begins, those
    // requests are still answered, with `Connection: close` (see `Place`);
    // only then are the connections left idle closed.
    let drain = async move {
        drain.await;
        tokio::time::sleep(DRAIN_IDLE_GRACE).await;
    };
    let listener = match settings {
        #[cfg(feature = "tls")]
        WorkerSettings { tls: Some(tls), .. } => WorkerListener::tls(listener, tls),
        _ => WorkerListener::plain(listener),
    };
    let listener = listener.tapped();
    if let Err(e) = axum::serve(listener, make).with_graceful_shutdown(drain).await {
        tracing::error!(worker, error = %e, "axum stopped serving");
    }
}

/// The application's make-service, with each connection's service wrapped
/// in a [`WorkerService`].
#[derive(Clone)]
struct WorkerMakeService<M> {
    inner: M,
    layer: Option<HermesLayer>,
    stats: Option<axum::Router>,
}

impl<'a, M, S> Service<IncomingStream<'a>> for WorkerMakeService<M>
where
    M: Service<IncomingStream<'a>, Error = Infallible, Response = S>,
{
    type Response = WorkerService<S>;
    type Error = Infallible;
    type Future = MakeFuture<M::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, stream: IncomingStream<'a>) -> Self::Future {
        let activity = stream.io().activity();
        MakeFuture { inner: self.inner.call(stream), layer: self.layer, stats: self.stats.clone(), activity }
    }
}

pin_project! {
    /// The application's make-service future, its service then wrapped.
    struct MakeFuture<F> {
        #[pin]
        inner: F,
        layer: Option<HermesLayer>,
        stats: Option<axum::Router>,
        activity: Option<Arc<Activity>>,
    }
}

impl<F, S> Future for MakeFuture<F>
where
    F: Future<Output = Result<S, Infallible>>,
{
    type Output = Result<WorkerService<S>, Infallible>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let Ok(app) = std::task::ready!(this.inner.poll(cx));
        // Placement outside the counting layer: a moved request counts as
        // in flight on the worker that runs it.
        let app = Place::new(match this.layer {
            Some(layer) => tower::util::Either::Left(layer.layer(app)),
            None => tower::util::Either::Right(app),
        });
        Poll::Ready(Ok(WorkerService { app, stats: this.stats.take(), activity: this.activity.take() }))
    }
}

/// One connection's service: `/_hermes/stats` when mounted, otherwise the
/// application behind [`Place`] and [`HermesLayer`] (when on).
#[derive(Clone)]
struct WorkerService<S> {
    app: Place<tower::util::Either<Hermes<S>, S>>,
    stats: Option<axum::Router>,
    /// The connection's [`Activity`], when it has timeouts: a request in
    /// progress is never cut by the idle timeout.
    activity: Option<Arc<Activity>>,
}

pin_project! {
    /// A request's future, counted as in progress on its connection until
    /// it completes or is dropped.
    struct Tracked<F> {
        #[pin]
        inner: F,
        guard: Option<ActiveGuard>,
    }
}

impl<F: Future> Future for Tracked<F> {
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        let this = self.project();
        let out = std::task::ready!(this.inner.poll(cx));
        this.guard.take();
        Poll::Ready(out)
    }
}

type AppFuture<S> = PlaceFuture<
    <tower::util::Either<Hermes<S>, S> as Service<Request>>::Future,
    axum::body::Body,
    Infallible,
>;

impl<S> Service<Request> for WorkerService<S>
where
    S: Service<Request, Response = Response, Error = Infallible> + Clone + Send + 'static,
    S::Future: Send + 'static,
{
    type Response = Response;
    type Error = Infallible;
    type Future = Tracked<Either<AppFuture<S>, RouteFuture<Infallible>>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.app.poll_ready(cx)
    }

    fn call(&mut self, req: Request) -> Self::Future {
        let guard = self.activity.as_ref().map(Activity::start);
        let inner = match &mut self.stats {
            Some(stats) if req.uri().path() == STATS_PATH => Either::Right(stats.call(req)),
            _ => Either::Left(self.app.call(req)),
        };
        Tracked { inner, guard }
    }
}
