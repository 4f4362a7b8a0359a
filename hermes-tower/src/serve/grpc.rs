//! [`serve_tonic`]: the one-line start of tonic services on a Hermes
//! server, and its protocol, [`Grpc`].

use std::{
    convert::Infallible,
    fmt,
    pin::Pin,
    task::{Context, Poll},
};

use futures_util::future::Either;
use hermes_runtime::HermesListener;
use tonic::{body::Body, service::Routes, transport::Server};
use tower::{
    Layer, Service,
    layer::util::Identity,
    util::{Either as EitherService, option_layer},
};

use super::{
    IntoBindAddr, Serve,
    protocol::{Sealed, WorkerSettings},
    timeouts::Watch,
};
use crate::{
    hermes::Hermes,
    orca::{Reports, future::TrailerFuture},
    place::{Place, future::PlaceFuture},
    stats,
};

/// The service each worker's tonic server is given: `/_hermes/stats` when
/// mounted, otherwise the routes behind [`Place`] (so a call moved to
/// another worker is counted where it runs) and [`HermesLayer`](crate::HermesLayer) when it is
/// on. A [`Server`]'s layers (given with [`Serve::with_server`]) go around
/// it. [`HermesLayer`](crate::HermesLayer)(crate::HermesLayer) is on by default.
#[derive(Clone)]
pub struct TonicService {
    routes: Place<EitherService<Hermes<Routes>, Routes>>,
    stats: bool,
    reports: Option<std::sync::Arc<Reports>>,
}

impl fmt::Debug for TonicService {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TonicService").field("stats", &self.stats).finish_non_exhaustive()
    }
}

type RoutesFuture = PlaceFuture<
    <EitherService<Hermes<Routes>, Routes> as Service<http::Request<Body>>>::Future,
    Body,
    Infallible,
>;

impl Service<http::Request<Body>> for TonicService {
    type Response = http::Response<Body>;
    type Error = Infallible;
    type Future =
        Either<TrailerFuture<RoutesFuture>, std::future::Ready<Result<http::Response<Body>, Infallible>>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Service::<http::Request<Body>>::poll_ready(&mut self.routes, cx)
    }

    fn call(&mut self, request: http::Request<Body>) -> Self::Future {
        if self.stats && request.uri().path() == stats::STATS_PATH {
            let response =
                stats::response(request.method()).map(|bytes| Body::new(http_body_util::Full::new(bytes)));
            return Either::Right(std::future::ready(Ok(response)));
        }
        Either::Left(TrailerFuture::new(self.routes.call(request), self.reports.clone()))
    }
}

/// Starts the gRPC services that `routes` makes on a Hermes server
/// listening on `addr`; await it in place of
/// `Server::builder().add_service(..).serve(addr)`.
///
/// `routes` is called once on each worker thread (and again when a worker
/// is restarted after a panic), so each worker may have its own service
/// state; services that share state hold it in an `Arc`. Every worker serves
/// the routes behind [`HermesLayer`](crate::HermesLayer) with `Server::builder()`, or with the
/// configured server given to [`Serve::with_server`]. Every option of
/// [`Serve`] applies: TLS, stats, several addresses, upgrades, the timeouts
/// and connection age.
///
/// Each connection has the idle timeout until its first byte and the header
/// read timeout until its first request head or HTTP/2 preface is complete
/// ([`Serve::idle_timeout`], [`Serve::header_read_timeout`]): a client that
/// connects and sends nothing, or part of a preface, is closed. After that
/// the connection is tonic's: an idle channel is kept, as tonic's own
/// server keeps it (its `http2_keepalive_interval` and
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
    Serve::new(addr, Grpc { routes, server: Server::builder() })
}

/// gRPC services about to be served by a Hermes server; made by
/// [`serve_tonic`].
pub type ServeTonic<A, F, L = Identity> = Serve<A, Grpc<F, L>>;

/// The gRPC protocol of a [`Serve`]: a clone of the tonic [`Server`] (with
/// its layers `L`) on every worker, serving the [`Routes`] that `F` makes
/// there.
pub struct Grpc<F, L> {
    routes: F,
    server: Server<L>,
}

impl<F, L> fmt::Debug for Grpc<F, L> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Grpc").finish_non_exhaustive()
    }
}

impl<A, F, L> Serve<A, Grpc<F, L>> {
    /// The tonic server each worker serves with, configured as you would
    /// before `.add_service(..)`: timeouts, concurrency limits, HTTP/2
    /// keepalive, window sizes, frame size, `accept_http1`, your own layers
    /// (they go around [`HermesLayer`](crate::HermesLayer)). It is cloned on every worker.
    /// Message sizes are set on the generated services, in `routes`
    /// (`GreeterServer::new(..).max_decoding_message_size(..)`).
    ///
    /// tonic ignores its `tcp_nodelay` and `tcp_keepalive` settings for
    /// connections it did not accept itself; use [`Serve::tcp_nodelay`]
    /// here, and [`Serve::max_connection_age`] rather than tonic's own.
    /// Default: `Server::builder()`.
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
    pub fn with_server<L2>(self, server: Server<L2>) -> Serve<A, Grpc<F, L2>> {
        self.map_protocol(|grpc| Grpc { routes: grpc.routes, server })
    }
}

impl<F, L> Sealed for Grpc<F, L>
where
    F: Fn() -> Routes + Send + Sync + 'static,
    L: Layer<TonicService> + Clone + Send + Sync + 'static,
    L::Service: Service<http::Request<Body>, Response = http::Response<Body>> + Clone + Send + 'static,
    <L::Service as Service<http::Request<Body>>>::Future: Send,
    <L::Service as Service<http::Request<Body>>>::Error:
        Into<Box<dyn std::error::Error + Send + Sync>> + Send,
{
    fn serve_worker(
        &self,
        listener: HermesListener,
        settings: &WorkerSettings,
    ) -> Pin<Box<dyn Future<Output = ()>>> {
        let mut routes = (self.routes)();
        if let Some(orca) = settings.reports.service_for_worker() {
            routes = routes.add_service(orca);
        }
        let service = TonicService {
            // Only HTTP/1 connections are recycled by count or age in `Place`;
            // a gRPC connection's age is tonic's to enforce (below).
            routes: Place::new(option_layer(settings.layer).layer(routes.prepare())),
            stats: settings.stats,
            reports: settings.reports.for_worker(),
        };
        // `max_connection_age`: tonic sends the GOAWAY and lets the calls in
        // progress finish; the client's new connection is placed by the
        // kernel with the current table.
        let server = match settings.limits.max_age {
            Some(age) => self.server.clone().max_connection_age(age),
            None => self.server.clone(),
        };
        let worker = listener.worker_id();
        // Called on the worker thread: the worker's own drain.
        let drain = hermes_runtime::shutdown_signal();
        // The timeouts watch each connection until its first request head or
        // HTTP/2 preface is complete (see `Watch::FirstHead`): a client that
        // connects and sends nothing, or only part of a head, is closed;
        // after that the connection is tonic's. tonic sets TCP_NODELAY only
        // on the connections it accepts itself; the runtime sets it on ours
        // as it accepts them (`Builder::tcp_nodelay`).
        let incoming = settings.listener(listener, Watch::FirstHead);
        Box::pin(async move {
            if let Err(e) =
                server.serve_with_incoming_shutdown::<_, _, _, _, _, Body>(service, incoming, drain).await
            {
                tracing::error!(worker, error = %e, "tonic stopped serving");
            }
        })
    }
}
