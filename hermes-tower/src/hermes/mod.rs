//! The middleware: [`Hermes`] (the service), [`HermesLayer`] (its layer)
//! and [`future::ResponseFuture`]. Which requests have their service time
//! measured is a [`SampleRate`] (one in 64 by default).

use std::task::{Context, Poll};

use hermes_runtime::context::{self, InFlight, SampleRate};
use tower_service::Service;

pub mod future;
mod layer;

pub use layer::HermesLayer;

use future::ResponseFuture;

/// Counts the requests of the wrapped service in the current Hermes worker's
/// slot of the Worker State Table.
///
/// On `call`, inside a Hermes worker, the slot's `in_flight` goes up by one;
/// it goes back down when the [`ResponseFuture`] completes, is dropped, or
/// unwinds from a panic, at which point `requests` goes up by one and the
/// service time is added to `service_ns` (see [`SampleRate`]). Outside a
/// worker it does nothing and the request passes straight through.
///
/// Usually built by [`HermesLayer`]. Cloning clones the inner service and
/// two words of settings.
///
/// ```
/// use hermes_bpf::{Region, layout::WorkerState};
/// use hermes_runtime::context::WorkerRef;
/// use hermes_tower::Hermes;
/// use std::{convert::Infallible, sync::{Arc, atomic::Ordering}};
/// use tower::{ServiceExt, service_fn};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// let table = Arc::new(Region::<WorkerState>::in_memory(4));
/// let worker = WorkerRef::new(0, table.clone());
/// let _entered = worker.enter(); // what the Hermes runtime does on each worker thread
///
/// let svc = Hermes::new(service_fn(|n: u32| async move { Ok::<_, Infallible>(n + 1) }));
/// assert_eq!(svc.oneshot(1).await, Ok(2));
/// assert_eq!(table[0].requests.load(Ordering::Relaxed), 1);
/// assert_eq!(table[0].in_flight.load(Ordering::Relaxed), 0);
/// # }
/// ```
#[derive(Clone, Debug)]
pub struct Hermes<S> {
    inner: S,
    service_time: SampleRate,
}

impl<S> Hermes<S> {
    /// Wraps `inner`, measuring service time at the default rate.
    pub fn new(inner: S) -> Self {
        Self { inner, service_time: SampleRate::default() }
    }

    /// Wraps `inner`, measuring service time as `service_time` says.
    pub fn with_service_time(inner: S, service_time: SampleRate) -> Self {
        Self { inner, service_time }
    }

    /// A layer that wraps services in [`Hermes`].
    pub fn layer() -> HermesLayer {
        HermesLayer::new()
    }

    /// The inner service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// The inner service, mutably.
    pub fn get_mut(&mut self) -> &mut S {
        &mut self.inner
    }

    /// Unwraps the inner service.
    pub fn into_inner(self) -> S {
        self.inner
    }
}

impl<S, Request> Service<Request> for Hermes<S>
where
    S: Service<Request>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = ResponseFuture<S::Future>;

    #[inline]
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    #[inline]
    fn call(&mut self, request: Request) -> Self::Future {
        // The guard exists before the inner `call` runs: its synchronous part
        // (routing, decoding) counts as service, and if it panics the guard
        // unwinds with it and `in_flight` does not leak.
        let in_flight = context::current().map(|worker| InFlight::start(worker, self.service_time));
        ResponseFuture::new(self.inner.call(request), in_flight)
    }
}
