//! The request-placement middleware: [`Place`] (the service), [`PlaceLayer`]
//! (its layer) and [`future::PlaceFuture`].
//!
//! The kernel places connections; [`Place`] places requests. On each call,
//! inside a Hermes worker, it asks the server's
//! [`Placement`](hermes_runtime::placement::Placement) whether the request
//! should run on another worker (the owner is busy with costly work in
//! flight, another worker is clearly less loaded), and if so spawns the
//! handler future on that worker's runtime and waits for its response on the
//! connection's worker, which writes it. Otherwise, the common case, the
//! request runs where it is, with nothing allocated and nothing locked.
//!
//! It also learns what requests cost: the thread time their handler futures
//! spend in `poll`, per path class, measured on every request of a costly or
//! unknown class and on one in [`MEASURE_ONE_IN`] of the others.
//!
//! A request of a class learned to hold its thread for at least the offload
//! threshold (`Builder::offload_heavy`, 1 ms by default) does not run on a
//! worker at all: the service is called on the connection's worker (so the
//! request counts in flight there) and its future is driven on that worker
//! runtime's blocking pool, so the worker goes on reading and answering its
//! other connections while the handler holds a pool thread. See
//! [`hermes_runtime::placement`] for why. Inside such a handler,
//! `hermes_runtime::context::current()` is the connection's worker (the pool
//! thread acts for it: see `context::WorkerScope`), and `tokio::spawn` and
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
//! with the current table; see
//! [`Placement::should_reconnect`](hermes_runtime::placement::Placement::should_reconnect)
//! and `Builder::reconnect_overloaded`. With `Builder::max_connection_age`
//! or `Builder::max_requests_per_connection`, every HTTP/1 connection is
//! asked the same way once it is that old or has served that many requests.
//!
//! # Failure
//!
//! A moved or offloaded request whose handler panics resumes the panic on
//! the connection's worker, as if it had run there (the connection is
//! dropped, the worker goes on). A moved or offloaded request whose runtime
//! stops before it ends is answered `503 Service Unavailable`, logged and
//! counted (`placement.lost` in the snapshot). A client that goes away
//! cancels the moved or offloaded handler too (an offloaded one at its next
//! wake-up: a handler holding its thread cannot be interrupted).

use std::{
    cell::Cell,
    mem,
    sync::Arc,
    sync::atomic::{AtomicU64, Ordering::Relaxed},
    task::{Context, Poll},
    time::Instant,
};

use hermes_runtime::{
    context::{self, WorkerRef},
    placement::{CostClass, ExpectedWork, LIGHT_US},
};
use tokio::{runtime::Handle, sync::oneshot};
use tower_layer::Layer;
use tower_service::Service;
use tracing::Instrument;

pub mod future;

use future::{PlaceFuture, Timed};

/// One request in this many of a light, known class has its cost measured.
pub const MEASURE_ONE_IN: u32 = 64;

/// Runs a request's handler on another worker of the Hermes server when the
/// Worker State Table says it pays; see the [module](self) documentation.
///
/// Outside a Hermes worker it passes requests straight through.
#[derive(Clone, Debug)]
pub struct Place<S> {
    inner: S,
    /// When this service was made: for a connection's own `Place`, when the
    /// connection was accepted (its age for `Builder::max_connection_age`).
    /// Copied into the clones that serve each request.
    opened: Instant,
    /// Requests called through this service and its clones (the
    /// connection's count for `Builder::max_requests_per_connection`); made
    /// only when the server sets that limit, so that by default a
    /// connection's `Place` allocates nothing.
    served: Option<Arc<AtomicU64>>,
}

impl<S> Place<S> {
    /// Wraps `inner`. Made once per connection (hyper serves each request
    /// with a clone), it also keeps the connection's age and, when the
    /// server limits requests per connection, their count.
    pub fn new(inner: S) -> Self {
        let count = context::with_current(|worker| {
            worker.and_then(|w| w.placement()).is_some_and(|p| p.limits_requests())
        });
        Self { inner, opened: Instant::now(), served: count.then(Arc::default) }
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
    _private: (),
}

impl PlaceLayer {
    /// The layer.
    pub fn new() -> Self {
        Self::default()
    }
}

impl<S> Layer<S> for PlaceLayer {
    type Service = Place<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Place::new(inner)
    }
}

thread_local! {
    /// Requests of light, known classes seen on this thread, for sampling.
    static SEEN: Cell<u32> = const { Cell::new(0) };
}

/// Whether to measure a request of learned cost `cost_us`: always when the
/// class is unknown (0) or costly, else one in [`MEASURE_ONE_IN`].
#[inline]
fn measure(cost_us: u32) -> bool {
    if cost_us == 0 || cost_us >= LIGHT_US {
        return true;
    }
    SEEN.with(|n| {
        let seen = n.get().wrapping_add(1);
        n.set(seen);
        seen % MEASURE_ONE_IN == 0
    })
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
        let class = CostClass::of(request.uri().path().as_bytes());
        let http1 = request.version() <= http::Version::HTTP_11;
        // Relaxed: a count that only this connection's requests, which hyper
        // serves one at a time for HTTP/1, increment.
        let served = self.served.as_ref().map_or(0, |n| n.fetch_add(1, Relaxed) + 1);
        let opened = self.opened;
        // Decided without cloning the worker handle; clones are made only for
        // what outlives the call (a measurement, expected work, a move).
        let decision = context::with_current(|worker| {
            let worker = worker?;
            let placement = worker.placement()?;
            let cost = placement.expected_us(class);
            // Only HTTP/1 connections are asked to reconnect; the checks are
            // a load of one gauge unless the worker is overloaded, and one
            // branch unless connections have a maximum age or count. A
            // draining worker (stopping, or handing over to a successor)
            // asks every one, so that a keep-alive client's next request goes
            // to a serving worker instead of racing the close of an idle
            // connection.
            let draining = hermes_runtime::WorkerStatus::from(worker.state().phase())
                == hermes_runtime::WorkerStatus::Draining;
            let reconnect = http1
                && (draining
                    || placement.should_recycle(worker.id(), served, opened)
                    || placement.should_reconnect(worker.id()));
            let learner = measure(cost).then(|| (worker.clone(), class));
            if placement.offloads(cost)
                && let Some(runtime) = placement.handle(worker.id())
            {
                placement.count_offload(worker.id());
                return Some(Decision::Offload { runtime, learner, owner: worker.clone(), reconnect });
            }
            if let Some(target) = placement.choose(worker.id(), cost)
                && let Some(runtime) = placement.handle(target)
            {
                placement.count_move(worker.id(), target);
                // Counted on the target now, so the next decisions see it.
                let expected = (cost >= LIGHT_US).then(|| ExpectedWork::start(worker.sibling(target), cost));
                return Some(Decision::Move { runtime, expected, learner, owner: worker.clone(), reconnect });
            }
            let expected = (cost >= LIGHT_US).then(|| ExpectedWork::start(worker.clone(), cost));
            Some(Decision::Local { expected, learner, reconnect })
        });
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
            Some(Decision::Offload { runtime, learner, owner, reconnect }) => {
                // Called here, on the connection's worker, so the layers
                // inside count the request in flight on this worker (which
                // waits to write its response); only the future moves.
                // In the caller's span (the worker's `hermes_worker` span), so
                // the handler's logs still carry the worker id.
                let future =
                    Timed::new(self.inner.call(request), learner).instrument(tracing::Span::current());
                let (cancel, cancelled) = oneshot::channel::<()>();
                let driver = Arc::clone(&runtime);
                // The pool thread acts for this worker: the handler sees it
                // as the current worker (`context::current()`, the stats).
                let scope = context::scope();
                // Driven with `Handle::block_on` on a thread of the worker
                // runtime's blocking pool: its I/O and timers stay on the
                // worker (whose thread runs the runtime's own `block_on`), and
                // a handler that holds this thread holds none of the worker's
                // connections. Dropping the response future drops `cancel`,
                // which ends the handler at its next wake-up.
                let task = runtime.spawn_blocking(move || {
                    let _scope = scope.as_ref().map(context::WorkerScope::enter);
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

/// What [`Place::call`] decided for a request inside a worker.
enum Decision {
    Local {
        expected: Option<ExpectedWork>,
        learner: Option<(WorkerRef, CostClass)>,
        reconnect: bool,
    },
    Offload {
        runtime: Arc<Handle>,
        learner: Option<(WorkerRef, CostClass)>,
        owner: WorkerRef,
        reconnect: bool,
    },
    Move {
        runtime: Arc<Handle>,
        expected: Option<ExpectedWork>,
        learner: Option<(WorkerRef, CostClass)>,
        owner: WorkerRef,
        reconnect: bool,
    },
}
