//! The request-placement middleware: [`Place`] (the service), [`PlaceLayer`]
//! (its layer) and [`future::PlaceFuture`].
//!
//! The kernel places connections; [`Place`] places requests. On each call,
//! inside a Hermes worker, it asks the runtime where the request runs
//! ([`hermes_runtime::placement::decide`]): the
//! owner is busy with costly work in flight and another worker is clearly
//! less loaded, the route holds its thread, or, the common case, the request
//! runs where it is, with nothing allocated and nothing locked. `Place`
//! carries the decision out: it spawns a moved handler future on the target
//! worker's runtime and waits for its response on the connection's worker,
//! which writes it.
//!
//! It also measures what requests cost, when the decision asks for it: the
//! thread time their handler futures spend in `poll`, which the runtime
//! learns per path class.
//!
//! A request of a class learned to hold its thread for at least the offload
//! threshold (`Builder::offload_heavy`, 1 ms by default) does not run on a
//! worker at all: the service is called on the connection's worker (so the
//! request counts in flight there) and its future is driven on that worker
//! runtime's blocking pool, so the worker goes on reading and answering its
//! other connections while the handler holds a pool thread. See
//! [`hermes_runtime::placement`] for why. Inside such a handler,
//! `hermes_runtime::context::current()` is the connection's worker (the pool
//! thread enters its context), and `tokio::spawn` and
//! the runtime's I/O and timers work as on the worker;
//! `tokio::task::spawn_local` does not (a handler that needs it should run
//! with `Builder::offload_heavy(None)`).
//!
//! Put it *outside* [`HermesLayer`](crate::HermesLayer), so that a moved
//! request is counted as in flight on the worker that runs it:
//!
//! ```
//! use axum::{Router, routing::get};
//! use hermes_tower::{HermesLayer, PlaceLayer};
//!
//! let app: Router = Router::new()
//!     .route("/", get(|| async { "hello" }))
//!     .layer(HermesLayer::new())
//!     .layer(PlaceLayer::new());
//! ```
//!
//! [`serve()`](crate::serve()) and [`serve_tonic`](crate::serve_tonic) add both.
//!
//! # What can move
//!
//! The handler must be `Send` (its future is spawned on another thread), and
//! so must the request and response; axum's and tonic's are. A service that
//! is not `Send` cannot take this layer: leave it out and the requests run on
//! their connection's worker, counted by [`HermesLayer`](crate::HermesLayer)
//! as before.
//!
//! # Re-placing connections
//!
//! While a worker stays overloaded and another has room, the layer asks one
//! of the overloaded worker's HTTP/1 connections per interval to reconnect
//! (`Connection: close` on its response), so that the kernel places it again
//! with the current table; see `Builder::reconnect_overloaded`. With
//! [`ConnectionLimits`] (`max_connection_age`, `max_requests_per_connection`
//! on [`serve()`](crate::serve())), every HTTP/1 connection is asked the
//! same way once it is that old or has served that many requests.
//!
//! # Failure
//!
//! A moved or offloaded request whose handler panics resumes the panic on
//! the connection's worker, as if it had run there (the connection is
//! dropped, the worker goes on). A moved or offloaded request whose runtime
//! stops before it ends is answered `503 Service Unavailable`, logged and
//! counted (`placement.lost` in the snapshot). A client that goes away
//! cancels the moved or offloaded handler too (an offloaded one at its next
//! wake-up: a handler holding its thread cannot be interrupted). A request
//! of a heavy route past the worker's offload bound (`Builder::max_offloaded`)
//! is answered `503 Service Unavailable` with `Retry-After: 1`, not run.

use std::{
    mem,
    sync::Arc,
    sync::atomic::{AtomicU64, Ordering::Relaxed},
    task::{Context, Poll},
    time::{Duration, Instant},
};

use hermes_runtime::placement::{self, Decision, Reconnect};
use tokio::sync::oneshot;
use tower_layer::Layer;
use tower_service::Service;
use tracing::Instrument;

pub mod future;

use future::{PlaceFuture, Timed};

/// When an HTTP/1 keep-alive connection is asked to close, so that its
/// client reconnects and the kernel places the new connection with the
/// current table: after `max_requests` requests, or on its first response
/// after it is `max_age` old. `None` sets no limit; both are off by
/// default. Closed connections count as `recycled` in the snapshot.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ConnectionLimits {
    /// Close after this many requests.
    pub max_requests: Option<u64>,
    /// Close on the first response after this age.
    pub max_age: Option<Duration>,
}

impl ConnectionLimits {
    /// Whether a connection opened at `opened` that has served `served`
    /// requests (this one included; 0 when not counted) is due to close.
    /// Without limits, one branch and no clock read.
    #[inline]
    pub(crate) fn due(&self, served: u64, opened: Instant) -> bool {
        if self.max_requests.is_none() && self.max_age.is_none() {
            return false;
        }
        self.max_requests.is_some_and(|m| served >= m && served > 0)
            || self.max_age.is_some_and(|a| opened.elapsed() >= a)
    }
}

/// Runs a request's handler on another worker of the Hermes server when the
/// Worker State Table says it pays; see the [module](self) documentation.
///
/// Outside a Hermes worker it passes requests straight through.
#[derive(Clone, Debug)]
pub struct Place<S> {
    inner: S,
    limits: ConnectionLimits,
    /// When this service was made: for a connection's own `Place`, when the
    /// connection was accepted (its age for [`ConnectionLimits::max_age`]).
    /// Copied into the clones that serve each request.
    opened: Instant,
    /// Requests called through this service and its clones (the
    /// connection's count for [`ConnectionLimits::max_requests`]); made
    /// only with that limit, so that by default a connection's `Place`
    /// allocates nothing.
    served: Option<Arc<AtomicU64>>,
}

impl<S> Place<S> {
    /// Wraps `inner`, with no connection limits.
    pub fn new(inner: S) -> Self {
        Self::with_limits(inner, ConnectionLimits::default())
    }

    /// Wraps `inner`. Made once per connection (hyper serves each request
    /// with a clone), it also keeps the connection's age and, with a request
    /// limit, its count.
    pub fn with_limits(inner: S, limits: ConnectionLimits) -> Self {
        let served = limits.max_requests.is_some().then(Arc::default);
        Self { inner, limits, opened: Instant::now(), served }
    }

    /// The inner service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// Unwraps the inner service.
    pub fn into_inner(self) -> S {
        self.inner
    }
}

/// Wraps services in [`Place`].
#[derive(Clone, Copy, Debug, Default)]
pub struct PlaceLayer {
    limits: ConnectionLimits,
}

impl PlaceLayer {
    /// The layer, with no connection limits.
    pub fn new() -> Self {
        Self::default()
    }

    /// Asks each HTTP/1 connection to close at these limits.
    pub fn limits(mut self, limits: ConnectionLimits) -> Self {
        self.limits = limits;
        self
    }
}

impl<S> Layer<S> for PlaceLayer {
    type Service = Place<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Place::with_limits(inner, self.limits)
    }
}

impl<S, B, RB> Service<http::Request<B>> for Place<S>
where
    S: Service<http::Request<B>, Response = http::Response<RB>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    B: Send + 'static,
    RB: Default + Send + 'static,
{
    type Response = http::Response<RB>;
    type Error = S::Error;
    type Future = PlaceFuture<S::Future, RB, S::Error>;

    #[inline]
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        // Only HTTP/1 connections are asked to reconnect; HTTP/2 streams are
        // placed one by one.
        let reconnect = if request.version() > http::Version::HTTP_11 {
            Reconnect::Cannot
        } else {
            // Relaxed: a count that only this connection's requests, which
            // hyper serves one at a time for HTTP/1, increment.
            let served = self.served.as_ref().map_or(0, |n| n.fetch_add(1, Relaxed) + 1);
            if self.limits.due(served, self.opened) { Reconnect::Due } else { Reconnect::May }
        };
        self.call_with(request, reconnect)
    }
}

impl<S> Place<S> {
    /// Places `request`, whose connection's limits were checked by the
    /// caller (`reconnect`): for a service shared by several connections,
    /// which counts each connection's requests itself (`serve_tonic`'s).
    pub(crate) fn call_with<B, RB>(
        &mut self,
        request: http::Request<B>,
        reconnect: Reconnect,
    ) -> PlaceFuture<S::Future, RB, S::Error>
    where
        S: Service<http::Request<B>, Response = http::Response<RB>> + Clone + Send + 'static,
        S::Future: Send + 'static,
        S::Error: Send + 'static,
        B: Send + 'static,
        RB: Default + Send + 'static,
    {
        // Decided without cloning the worker handle: the decision clones
        // only what outlives the call.
        let decision = placement::decide(request.uri().path().as_bytes(), reconnect);
        match decision {
            None => PlaceFuture::local(Timed::off(self.inner.call(request)), None, false),
            Some(Decision::Local { expected, learner, reconnect }) => {
                PlaceFuture::local(Timed::new(self.inner.call(request), learner), expected, reconnect)
            }
            Some(Decision::Move { runtime, expected, learner, owner, reconnect }) => {
                // The ready service goes with the request; a clone stays for
                // the next call (tower's usual way to move a called service).
                let clone = self.inner.clone();
                let mut service = mem::replace(&mut self.inner, clone);
                let task = runtime.spawn(async move {
                    let _expected = expected;
                    // Called on the target's thread: the layers inside (the
                    // in-flight count) see the target as the current worker.
                    Timed::new(service.call(request), learner).await
                });
                PlaceFuture::remote(task, owner, reconnect)
            }
            Some(Decision::Shed { reconnect }) => PlaceFuture::shed(reconnect),
            Some(Decision::Offload { runtime, permit, learner, owner, reconnect }) => {
                // Called here, on the connection's worker, so the layers
                // inside count the request in flight on this worker (which
                // waits to write its response); only the future moves.
                // In the caller's span (the worker's `hermes_worker` span), so
                // the handler's logs still carry the worker id.
                let future =
                    Timed::new(self.inner.call(request), Some(learner)).instrument(tracing::Span::current());
                let (cancel, cancelled) = oneshot::channel::<()>();
                let driver = Arc::clone(&runtime);
                // The pool thread acts for this worker: the handler sees it
                // as the current worker (`context::current()`, the stats).
                let acting_for = owner.clone();
                // Driven with `Handle::block_on` on a thread of the worker
                // runtime's blocking pool: its I/O and timers stay on the
                // worker (whose thread runs the runtime's own `block_on`), and
                // a handler that holds this thread holds none of the worker's
                // connections. Dropping the response future drops `cancel`,
                // which ends the handler at its next wake-up.
                let task = runtime.spawn_blocking(move || {
                    // Held until the handler ends, here or by cancellation.
                    let _permit = permit;
                    let _entered = acting_for.enter();
                    driver.block_on(async move {
                        tokio::select! {
                            biased;
                            output = future => Some(output),
                            _ = cancelled => None,
                        }
                    })
                });
                PlaceFuture::offloaded(task, cancel, owner, reconnect)
            }
        }
    }
}
