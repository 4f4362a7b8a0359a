//! [`serve_tonic`]: the one-line start of tonic services on a Hermes server.

use std::{fmt, io, pin::Pin, sync::Arc};

use hermes_runtime::{Builder, HermesListener, ServerHandle};
use tonic::{body::Body, service::Routes, transport::Server};
use tower::{
    Layer, Service,
    layer::util::Identity,
    util::{Either, option_layer},
};

use futures_util::StreamExt;

use super::{
    IntoBindAddr, ServeFuture, StopSignals,
    conn::{Connection, Timeouts},
    log_start, shutdown_all_on, shutdown_when,
};
use crate::{Hermes, HermesLayer, Place};

/// The service each worker's tonic server is given: the routes, behind
/// [`HermesLayer`] when it is on, behind [`Place`] (so a call moved to
/// another worker is counted where it runs). A [`Server`]'s layers (given
/// with [`ServeTonic::with_server`]) go around it.
pub type TonicService = Place<Either<Hermes<Routes>, Routes>>;

/// Starts the gRPC services that `routes` makes on a Hermes server
/// listening on `addr`; await it in place of
/// `Server::builder().add_service(..).serve(addr)`.
///
/// `routes` is called once on each worker thread (and again when a worker
/// is restarted after a panic), so each worker may have its own service
/// state; services that share state hold it in an `Arc`. Every worker serves
/// the routes behind [`HermesLayer`] with `Server::builder()`, or with the
/// configured server given to [`ServeTonic::with_server`].
///
/// Each connection has the builder's idle timeout until its first byte and
/// its header read timeout until its first request head or HTTP/2 preface
/// is complete (`Builder::idle_timeout`, `Builder::header_read_timeout`):
/// a client that connects and sends nothing, or part of a preface, is
/// closed. After that the connection is tonic's: an idle channel is kept, as
/// tonic's own server keeps it (its `http2_keepalive_interval` and
/// `http2_keepalive_timeout` find dead peers).
///
/// ```diff
/// -Server::builder().add_service(GreeterServer::new(greeter)).serve(addr).await?;
/// +hermes_tower::serve_tonic(addr, move || Routes::new(GreeterServer::new(greeter.clone()))).await?;
/// ```
///
/// ```no_run
/// use tonic::service::Routes;
///
/// #[tokio::main]
/// async fn main() -> std::io::Result<()> {
///     hermes_tower::serve_tonic("127.0.0.1:50051", || {
///         let (_reporter, health) = tonic_health::server::health_reporter();
///         Routes::new(health)
///     })
///     .await
/// }
/// ```
pub fn serve_tonic<A, F>(addr: A, routes: F) -> ServeTonic<A, F>
where
    A: IntoBindAddr,
    F: Fn() -> Routes + Send + Sync + 'static,
{
    ServeTonic {
        addr,
        routes,
        builder: Builder::new(),
        layer: Some(HermesLayer::new()),
        server: Server::builder(),
        signal: None,
    }
}

/// gRPC services about to be served by a Hermes server; made by
/// [`serve_tonic`].
///
/// Await it to serve until ctrl-c or `SIGTERM`, or [`start`](ServeTonic::start)
/// it for a [`ServerHandle`].
///
/// ```no_run
/// use tonic::service::Routes;
///
/// # fn run() -> std::io::Result<()> {
/// let handle = hermes_tower::serve_tonic("127.0.0.1:0", || {
///     Routes::new(tonic_health::server::health_reporter().1)
/// })
/// .start()?;
/// println!("grpc on {} (mode {})", handle.local_addr(), handle.mode());
/// handle.shutdown();
/// # Ok(())
/// # }
/// ```
#[must_use = "a ServeTonic does nothing until it is awaited or started"]
pub struct ServeTonic<A, F, L = Identity> {
    addr: A,
    routes: F,
    builder: Builder,
    layer: Option<HermesLayer>,
    server: Server<L>,
    signal: Option<Pin<Box<dyn Future<Output = ()> + Send>>>,
}

impl<A, F, L> fmt::Debug for ServeTonic<A, F, L> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ServeTonic")
            .field("builder", &self.builder)
            .field("layer", &self.layer)
            .field("graceful_shutdown", &self.signal.is_some())
            .finish_non_exhaustive()
    }
}

impl<A, F, L> ServeTonic<A, F, L>
where
    A: IntoBindAddr,
    F: Fn() -> Routes + Send + Sync + 'static,
    L: Layer<TonicService> + Clone + Send + Sync + 'static,
    L::Service: Service<http::Request<Body>, Response = http::Response<Body>> + Clone + Send + 'static,
    <L::Service as Service<http::Request<Body>>>::Future: Send,
    <L::Service as Service<http::Request<Body>>>::Error:
        Into<Box<dyn std::error::Error + Send + Sync>> + Send,
{
    /// The tonic server each worker serves with, configured as you would
    /// before `.add_service(..)`: timeouts, concurrency limits, HTTP/2
    /// keepalive, window sizes, frame size, `accept_http1`, your own layers
    /// (they go around [`HermesLayer`]). It is cloned on every worker.
    /// Message sizes are set on the generated services, in `routes`
    /// (`GreeterServer::new(..).max_decoding_message_size(..)`).
    ///
    /// tonic ignores its `tcp_nodelay` and `tcp_keepalive` settings for
    /// connections it did not accept itself; use
    /// [`ServeTonic::tcp_nodelay`] here. Default: `Server::builder()`.
    ///
    /// ```no_run
    /// use std::time::Duration;
    /// use tonic::{service::Routes, transport::Server};
    ///
    /// # async fn run() -> std::io::Result<()> {
    /// let server = Server::builder()
    ///     .timeout(Duration::from_secs(5))
    ///     .concurrency_limit_per_connection(64)
    ///     .http2_keepalive_interval(Some(Duration::from_secs(30)));
    /// hermes_tower::serve_tonic("127.0.0.1:50051", || Routes::new(tonic_health::server::health_reporter().1))
    ///     .with_server(server)
    ///     .await
    /// # }
    /// ```
    pub fn with_server<L2>(self, server: Server<L2>) -> ServeTonic<A, F, L2> {
        ServeTonic {
            addr: self.addr,
            routes: self.routes,
            builder: self.builder,
            layer: self.layer,
            server,
            signal: self.signal,
        }
    }

    /// Sets `TCP_NODELAY` on every accepted connection. Default: on (as
    /// tonic's own default).
    pub fn tcp_nodelay(mut self, nodelay: bool) -> Self {
        self.builder.tcp_nodelay(nodelay);
        self
    }

    /// Stops the server when `signal` resolves, in place of ctrl-c and
    /// `SIGTERM`; see [`Serve::with_graceful_shutdown`](super::Serve::with_graceful_shutdown).
    pub fn with_graceful_shutdown<S>(mut self, signal: S) -> Self
    where
        S: Future<Output = ()> + Send + 'static,
    {
        self.signal = Some(Box::pin(signal));
        self
    }

    /// The server's settings; its address is replaced by the one given to
    /// [`serve_tonic`]. Default: [`Builder::new()`].
    pub fn with_builder(mut self, builder: Builder) -> Self {
        self.builder = builder;
        self
    }

    /// The layer added to every worker's tonic server. Default:
    /// [`HermesLayer::new()`].
    pub fn with_layer(mut self, layer: HermesLayer) -> Self {
        self.layer = Some(layer);
        self
    }

    /// Serves the routes without [`HermesLayer`]: the table then has no
    /// in-flight counts.
    pub fn without_layer(mut self) -> Self {
        self.layer = None;
        self
    }

    /// Binds the address, starts the workers and returns at once; see
    /// [`Serve::start`](super::Serve::start).
    ///
    /// # Errors
    /// The address's resolution error, and [`Builder::build`]'s and
    /// [`hermes_runtime::Server::serve`]'s errors.
    pub fn start(self) -> io::Result<ServerHandle> {
        let addr = self.addr.into_bind_addr()?;
        let mut builder = self.builder;
        let server = builder.bind(addr).build()?;
        let routes = Arc::new(self.routes);
        let (layer, tonic_server) = (self.layer, self.server);
        let handle = server.serve(move |listener: HermesListener| {
            let service = Place::new(option_layer(layer).layer(routes().prepare()));
            serve_worker(listener, tonic_server.clone(), service)
        })?;
        log_start(&handle);
        Ok(handle)
    }
}

/// One worker's tonic server: `server` on the worker's listener until the
/// worker drains.
async fn serve_worker<L>(listener: HermesListener, server: Server<L>, service: TonicService)
where
    L: Layer<TonicService>,
    L::Service: Service<http::Request<Body>, Response = http::Response<Body>> + Clone + Send + 'static,
    <L::Service as Service<http::Request<Body>>>::Future: Send,
    <L::Service as Service<http::Request<Body>>>::Error:
        Into<Box<dyn std::error::Error + Send + Sync>> + Send,
{
    let worker = listener.worker_id();
    let drain = listener.shutdown_signal();
    // The header read and idle timeouts watch each connection until its
    // first request head or HTTP/2 preface is complete (see `Connection`):
    // a client that connects and sends nothing, or only part of a head, is
    // closed; after that the connection is tonic's.
    let timeouts = Timeouts::of(&listener);
    // `Builder::max_connection_age`: tonic sends the GOAWAY and lets the
    // calls in progress finish; the client's new connection is placed by the
    // kernel with the current table.
    let server = match listener.max_connection_age() {
        Some(age) => server.max_connection_age(age),
        None => server,
    };
    let incoming = listener
        .map(move |accepted| accepted.map(|s| Connection::plain(s).with_first_head_timeouts(timeouts)));
    // tonic sets TCP_NODELAY only on the connections it accepts itself; the
    // runtime sets it on ours as it accepts them (`Builder::tcp_nodelay`).
    if let Err(e) = server.serve_with_incoming_shutdown::<_, _, _, _, _, Body>(service, incoming, drain).await
    {
        tracing::error!(worker, error = %e, "tonic stopped serving");
    }
}

impl<A, F, L> std::future::IntoFuture for ServeTonic<A, F, L>
where
    A: IntoBindAddr + Send + 'static,
    F: Fn() -> Routes + Send + Sync + 'static,
    L: Layer<TonicService> + Clone + Send + Sync + 'static,
    L::Service: Service<http::Request<Body>, Response = http::Response<Body>> + Clone + Send + 'static,
    <L::Service as Service<http::Request<Body>>>::Future: Send,
    <L::Service as Service<http::Request<Body>>>::Error:
        Into<Box<dyn std::error::Error + Send + Sync>> + Send,
{
    type Output = io::Result<()>;
    type IntoFuture = ServeFuture;

    fn into_future(mut self) -> ServeFuture {
        let signal = self.signal.take();
        // A listener given is closed now, as tonic's own serve consumes its own.
        let this = self.addr.into_bind_addr().map(|addr| ServeTonic {
            addr,
            routes: self.routes,
            builder: self.builder,
            layer: self.layer,
            server: self.server,
            signal: None,
        });
        ServeFuture::new(async move {
            let this = this?;
            // Loading the program, binding and the start-up wait block: on
            // the blocking pool, not on the caller's executor thread.
            // The handlers go in before the workers start (see `serve`).
            let stop = match signal {
                Some(signal) => Ok(signal),
                None => Err(StopSignals::install()),
            };
            let handle =
                tokio::task::spawn_blocking(move || this.start()).await.map_err(io::Error::other)??;
            match stop {
                Ok(signal) => shutdown_when(handle, signal).await,
                Err(signals) => shutdown_all_on(vec![handle], signals).await,
            }
        })
    }
}
