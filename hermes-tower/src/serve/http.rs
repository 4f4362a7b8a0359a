//! [`serve()`]: the one-line start of an axum application on a Hermes
//! server, and its protocol, [`Http`].
//!
//! The structure, from the outside in: every worker runs `axum::serve` on
//! its [`WorkerListener`] (plain or TLS, with the timeouts) with the
//! application's make-service wrapped in `WorkerMakeService`, which wraps
//! each connection's service in `WorkerService`: the stats endpoint, then
//! [`Place`] (request placement), then [`HermesLayer`], then the
//! application.

use std::{
    convert::Infallible,
    fmt,
    marker::PhantomData,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
};

use axum::{extract::Request, response::Response};
use futures_util::future::Either;
use hermes_runtime::HermesListener;
use pin_project_lite::pin_project;
use tower_layer::Layer;
use tower_service::Service;

use super::{
    IntoBindAddr, Serve,
    body::{InProgress, MinDataRate, MinRateBody},
    listener::IncomingStream,
    protocol::{DRAIN_IDLE_GRACE, Sealed, WorkerSettings},
    timeouts::Activity,
};
use crate::{
    hermes::{Hermes, HermesLayer},
    orca::{Reports, future::HeaderFuture},
    place::{ConnectionLimits, Place, future::PlaceFuture},
    stats,
};

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
pub fn serve<A, M, S>(addr: A, app: M) -> Serve<A, Http<M, S>>
where
    A: IntoBindAddr,
    M: for<'a> Service<IncomingStream<'a>, Error = Infallible, Response = S> + Clone + Send + Sync + 'static,
    for<'a> <M as Service<IncomingStream<'a>>>::Future: Send,
    S: Service<Request, Response = Response, Error = Infallible> + Clone + Send + 'static,
    S::Future: Send,
{
    Serve::new(addr, Http { app, _service: PhantomData })
}

/// The axum protocol of a [`Serve`]: `axum::serve` with the application's
/// make-service `M` (whose connection services are `S`) on every worker.
pub struct Http<M, S> {
    app: M,
    _service: PhantomData<fn() -> S>,
}

impl<M, S> fmt::Debug for Http<M, S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Http").finish_non_exhaustive()
    }
}

impl<M, S> Sealed for Http<M, S>
where
    M: for<'a> Service<IncomingStream<'a>, Error = Infallible, Response = S> + Clone + Send + Sync + 'static,
    for<'a> <M as Service<IncomingStream<'a>>>::Future: Send,
    S: Service<Request, Response = Response, Error = Infallible> + Clone + Send + 'static,
    S::Future: Send,
{
    fn serve_worker(
        &self,
        listener: HermesListener,
        settings: &WorkerSettings,
    ) -> Pin<Box<dyn Future<Output = ()>>> {
        let make = WorkerMakeService {
            inner: self.app.clone(),
            layer: settings.layer,
            stats: settings.stats,
            limits: settings.limits,
            body_rate: settings.body_rate,
            reports: settings.reports.for_worker(),
        };
        let worker = listener.worker_id();
        // Called on the worker thread: the worker's own drain.
        let drain = hermes_runtime::shutdown_signal();
        // axum's graceful shutdown closes idle keep-alive connections at
        // once, racing a client's next request on them (it then sees the
        // connection close under it). For `DRAIN_IDLE_GRACE` after the drain
        // begins, those requests are still answered, with `Connection:
        // close` (see `Place`); only then are the connections left idle
        // closed.
        let drain = async move {
            drain.await;
            tokio::time::sleep(DRAIN_IDLE_GRACE).await;
        };
        let listener = settings.listener(listener).tapped();
        Box::pin(async move {
            if let Err(e) = axum::serve(listener, make).with_graceful_shutdown(drain).await {
                tracing::error!(worker, error = %e, "axum stopped serving");
            }
        })
    }
}

/// The application's make-service, with each connection's service wrapped
/// in a [`WorkerService`].
#[derive(Clone)]
struct WorkerMakeService<M> {
    inner: M,
    layer: Option<HermesLayer>,
    stats: bool,
    limits: ConnectionLimits,
    body_rate: Option<MinDataRate>,
    reports: Option<Arc<Reports>>,
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
        MakeFuture {
            inner: self.inner.call(stream),
            layer: self.layer,
            stats: self.stats,
            limits: self.limits,
            body_rate: self.body_rate,
            reports: self.reports.clone(),
            activity,
        }
    }
}

pin_project! {
    /// The application's make-service future, its service then wrapped.
    struct MakeFuture<F> {
        #[pin]
        inner: F,
        layer: Option<HermesLayer>,
        stats: bool,
        limits: ConnectionLimits,
        body_rate: Option<MinDataRate>,
        reports: Option<Arc<Reports>>,
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
        let app = Place::with_limits(
            match this.layer {
                Some(layer) => tower::util::Either::Left(layer.layer(app)),
                None => tower::util::Either::Right(app),
            },
            *this.limits,
        );
        Poll::Ready(Ok(WorkerService {
            app,
            stats: *this.stats,
            body_rate: *this.body_rate,
            reports: this.reports.take(),
            activity: this.activity.take(),
        }))
    }
}

/// One connection's service: `/_hermes/stats` when mounted, otherwise the
/// application behind [`Place`] and [`HermesLayer`] (when on), its
/// responses with the ORCA header (when on).
#[derive(Clone)]
struct WorkerService<S> {
    app: Place<tower::util::Either<Hermes<S>, S>>,
    stats: bool,
    /// The minimum rate of request bodies, when on.
    body_rate: Option<MinDataRate>,
    reports: Option<Arc<Reports>>,
    /// The connection's [`Activity`], when it has timeouts: a request in
    /// progress (its response's body included) is never cut by the idle
    /// timeout.
    activity: Option<Arc<Activity>>,
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
    type Future =
        InProgress<Either<HeaderFuture<AppFuture<S>>, std::future::Ready<Result<Response, Infallible>>>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.app.poll_ready(cx)
    }

    fn call(&mut self, req: Request) -> Self::Future {
        let guard = self.activity.as_ref().map(Activity::start);
        let inner = if self.stats && req.uri().path() == stats::STATS_PATH {
            Either::Right(std::future::ready(Ok(stats::response(req.method()).map(axum::body::Body::from))))
        } else {
            let req = match self.body_rate {
                // A request with a body to come: one allocation for its watch.
                Some(rate) if !http_body::Body::is_end_stream(req.body()) => {
                    req.map(|body| axum::body::Body::new(MinRateBody::new(body, rate)))
                }
                _ => req,
            };
            Either::Left(HeaderFuture::new(self.app.call(req), self.reports.clone()))
        };
        InProgress::new(inner, guard)
    }
}
