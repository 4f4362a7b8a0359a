//! [`serve_tonic`]: the one-line start of tonic services on a Hermes
//! server, and its protocol, [`Grpc`].
//!
//! tonic makes one service per worker and clones it for each connection and
//! each request, with no word of which connection a request came on; what
//! it does carry per connection is the connection's `ConnectInfo`. So each
//! connection is given to tonic as a [`GrpcConnection`], whose
//! [`GrpcConnectInfo`] holds the connection's own state (its [`Activity`]:
//! requests started and in progress, for its timeouts and request limit,
//! and when it was accepted, for its age), and [`TonicService`] reads it
//! from each request.

use std::{
    convert::Infallible,
    fmt, io,
    net::SocketAddr,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
    time::Instant,
};

use futures_util::{StreamExt, future::Either};
use hermes_runtime::{HermesListener, placement::Reconnect};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tonic::{
    body::Body,
    service::Routes,
    transport::{
        Server,
        server::{Connected, TcpConnectInfo},
    },
};
use tower::{
    Layer, Service,
    layer::util::Identity,
    util::{Either as EitherService, option_layer},
};

use super::{
    IntoBindAddr, Serve,
    body::InProgress,
    conn::Connection,
    protocol::{Sealed, WorkerSettings},
    timeouts::Activity,
};
use crate::{
    hermes::Hermes,
    orca::{Reports, future::TrailerFuture},
    place::{ConnectionLimits, Place, future::PlaceFuture},
    stats,
};

/// The service each worker's tonic server is given: `/_hermes/stats` when
/// mounted, otherwise the routes behind [`Place`] (so a call moved to
/// another worker is counted where it runs) and [`HermesLayer`](crate::HermesLayer) when it is
/// on. A [`Server`]'s layers (given with [`Serve::with_server`]) go around
/// it. Each request's connection is found in its [`GrpcConnectInfo`]: the
/// request counts as in progress there (for the connection's timeouts) until
/// its response's body ends, and toward the connection's own request limit.
#[derive(Clone)]
pub struct TonicService {
    routes: Place<EitherService<Hermes<Routes>, Routes>>,
    stats: bool,
    limits: ConnectionLimits,
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
    type Future = InProgress<
        Either<TrailerFuture<RoutesFuture>, std::future::Ready<Result<http::Response<Body>, Infallible>>>,
    >;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Service::<http::Request<Body>>::poll_ready(&mut self.routes, cx)
    }

    fn call(&mut self, mut request: http::Request<Body>) -> Self::Future {
        // The connection's own state, and the addresses the services read
        // with `Request::remote_addr`.
        let conn = request.extensions_mut().remove::<GrpcConnectInfo>();
        let guard = conn.as_ref().map(|c| {
            request.extensions_mut().insert(c.tcp.clone());
            c.activity.start()
        });
        if self.stats && request.uri().path() == stats::STATS_PATH {
            let response =
                stats::response(request.method()).map(|bytes| Body::new(http_body_util::Full::new(bytes)));
            return InProgress::new(Either::Right(std::future::ready(Ok(response))), guard);
        }
        // Only HTTP/1 connections are asked to reconnect (see `Place`).
        let reconnect = match (&conn, &guard) {
            _ if request.version() > http::Version::HTTP_11 => Reconnect::Cannot,
            (Some(conn), Some(guard)) if self.limits.due(guard.nth(), conn.opened) => Reconnect::Due,
            _ => Reconnect::May,
        };
        let call = TrailerFuture::new(self.routes.call_with(request, reconnect), self.reports.clone());
        InProgress::new(Either::Left(call), guard)
    }
}

/// What tonic puts in each request's extensions (its `ConnectInfo`) for a
/// connection of [`serve_tonic`]: the TCP addresses and the connection's
/// own state. [`TonicService`] takes it out and puts tonic's
/// [`TcpConnectInfo`] in its place, so that `Request::remote_addr` works in
/// the services; a layer of your own given with [`Serve::with_server`] runs
/// before that and finds the addresses here
/// ([`GrpcConnectInfo::remote_addr`]).
#[derive(Clone, Debug)]
pub struct GrpcConnectInfo {
    tcp: TcpConnectInfo,
    activity: Arc<Activity>,
    opened: Instant,
}

impl GrpcConnectInfo {
    /// The client's address.
    pub fn remote_addr(&self) -> Option<SocketAddr> {
        self.tcp.remote_addr()
    }

    /// The server's address the client connected to.
    pub fn local_addr(&self) -> Option<SocketAddr> {
        self.tcp.local_addr()
    }
}

/// A connection as [`serve_tonic`] gives it to tonic: the [`Connection`],
/// with its state for [`GrpcConnectInfo`] (the timer's [`Activity`], or one
/// of its own when the timeouts are off).
struct GrpcConnection {
    inner: Connection,
    activity: Arc<Activity>,
    opened: Instant,
}

impl GrpcConnection {
    fn new(inner: Connection) -> Self {
        let activity = inner.activity().unwrap_or_default();
        Self { inner, activity, opened: Instant::now() }
    }
}

impl Connected for GrpcConnection {
    type ConnectInfo = GrpcConnectInfo;

    fn connect_info(&self) -> GrpcConnectInfo {
        GrpcConnectInfo {
            tcp: self.inner.connect_info(),
            activity: self.activity.clone(),
            opened: self.opened,
        }
    }
}

impl AsyncRead for GrpcConnection {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for GrpcConnection {
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
/// The timeouts apply to each connection as with [`serve()`](super::serve()):
/// the header read timeout to each request head (an HTTP/2 header block),
/// the idle timeout while no call is in progress
/// ([`Serve::header_read_timeout`], [`Serve::idle_timeout`]). A channel
/// with no call for the idle timeout (60 s by default) is closed, whatever
/// PINGs it sends; tonic's `Channel` connects again for its next call.
/// Calls (a long stream included) are never cut by it. The minimum request
/// body rate does not apply: gRPC streams may idle between messages.
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
    /// Your layers see the client's address in [`GrpcConnectInfo`] (the
    /// services, in `Request::remote_addr`). Default: `Server::builder()`.
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
            // Each connection's limits are checked here with its own counts
            // (see `TonicService::call`), not by the shared `Place`.
            routes: Place::new(option_layer(settings.layer).layer(routes.prepare())),
            stats: settings.stats,
            limits: settings.limits,
            reports: settings.reports.for_worker(),
        };
        // `max_connection_age`: tonic also sends the GOAWAY and lets the
        // calls in progress finish; the client's new connection is placed by
        // the kernel with the current table.
        let server = match settings.limits.max_age {
            Some(age) => self.server.clone().max_connection_age(age),
            None => self.server.clone(),
        };
        let worker = listener.worker_id();
        // Called on the worker thread: the worker's own drain.
        let drain = hermes_runtime::shutdown_signal();
        // tonic sets TCP_NODELAY only on the connections it accepts itself;
        // the runtime sets it on ours as it accepts them
        // (`Builder::tcp_nodelay`).
        let incoming = settings.listener(listener).map(|c| c.map(GrpcConnection::new));
        Box::pin(async move {
            if let Err(e) =
                server.serve_with_incoming_shutdown::<_, _, _, _, _, Body>(service, incoming, drain).await
            {
                tracing::error!(worker, error = %e, "tonic stopped serving");
            }
        })
    }
}
