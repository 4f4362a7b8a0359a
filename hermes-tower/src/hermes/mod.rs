//! The middleware: [`Hermes`] (the service), [`HermesLayer`] (its layer),
//! [`future::ResponseFuture`] and the [`ServiceTime`] setting.

use std::task::{Context, Poll};

use hermes_runtime::context::{self, InFlight, SampleRate};
use tower_service::Service;

pub mod error;
pub mod future;
mod layer;

pub use layer::HermesLayer;

use error::InvalidSampleRate;
use future::ResponseFuture;

/// Which requests have their service time measured.
///
/// Reading the clock is the dearest part of the layer (two reads per
/// measured request, about 65 ns together on a KVM guest with a TSC
/// clocksource, several times the rest of the layer), so by default the
/// layer measures one request in [`ServiceTime::DEFAULT_ONE_IN`] and adds
/// its time multiplied by that rate to the slot's `service_ns`. The total is
/// then an unbiased estimate of the time spent serving, and
/// `service_ns / requests` the mean service time. [`ServiceTime::EVERY_REQUEST`]
/// makes the total exact; [`ServiceTime::OFF`] leaves `service_ns` alone.
///
/// In-flight and request counting are not affected by this setting: they
/// happen for every request.
///
/// ```
/// use hermes_tower::{HermesLayer, ServiceTime};
///
/// # fn main() -> Result<(), hermes_tower::InvalidSampleRate> {
/// let exact = HermesLayer::new().service_time(ServiceTime::EVERY_REQUEST);
/// let sampled = HermesLayer::new().service_time(ServiceTime::one_in(16)?);
/// let counts_only = HermesLayer::new().service_time(ServiceTime::OFF);
/// assert_eq!(ServiceTime::one_in(16)?.rate(), Some(16));
/// # Ok(())
/// # }
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ServiceTime {
    /// The runtime guard's rate: one request in a power of two, or none.
    sampling: SampleRate,
}

impl ServiceTime {
    /// Measures no request; `service_ns` is not written.
    pub const OFF: Self = Self { sampling: SampleRate::OFF };
    /// Measures every request; `service_ns` is exact.
    pub const EVERY_REQUEST: Self = Self { sampling: SampleRate::EVERY_REQUEST };
    /// The default rate: one request in this many is measured.
    pub const DEFAULT_ONE_IN: u32 = SampleRate::DEFAULT_ONE_IN;

    /// Measures one request in `n` and counts its time `n` times.
    ///
    /// Which requests are measured follows the worker's request sequence
    /// (every `n`-th request to start on the worker), so a steady stream is
    /// sampled evenly.
    ///
    /// # Errors
    /// If `n` is not a power of two (0 included: use [`ServiceTime::OFF`]).
    pub const fn one_in(n: u32) -> Result<Self, InvalidSampleRate> {
        match SampleRate::one_in(n) {
            Some(sampling) => Ok(Self { sampling }),
            None => Err(InvalidSampleRate::new(n)),
        }
    }

    /// One request in how many is measured, or `None` when off.
    pub const fn rate(&self) -> Option<u32> {
        self.sampling.rate()
    }
}

impl Default for ServiceTime {
    /// One request in [`ServiceTime::DEFAULT_ONE_IN`].
    fn default() -> Self {
        Self { sampling: SampleRate::DEFAULT }
    }
}

/// Counts the requests of the wrapped service in the current Hermes worker's
/// slot of the Worker State Table.
///
/// On `call`, inside a Hermes worker, the slot's `in_flight` goes up by one;
/// it goes back down when the [`ResponseFuture`] completes, is dropped, or
/// unwinds from a panic, at which point `requests` goes up by one and the
/// service time is added to `service_ns` (see [`ServiceTime`]). Outside a
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
    service_time: ServiceTime,
}

impl<S> Hermes<S> {
    /// Wraps `inner`, measuring service time at the default rate.
    pub fn new(inner: S) -> Self {
        Self { inner, service_time: ServiceTime::default() }
    }

    /// Wraps `inner`, measuring service time as `service_time` says.
    pub fn with_service_time(inner: S, service_time: ServiceTime) -> Self {
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
        let in_flight = context::current().map(|worker| InFlight::start(worker, self.service_time.sampling));
        ResponseFuture::new(self.inner.call(request), in_flight)
    }
}
