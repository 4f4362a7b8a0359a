//! The response future of [`Hermes`](super::Hermes) and the guard that keeps
//! the worker's slot right however the request ends.

use std::{
    fmt,
    future::Future,
    pin::Pin,
    sync::atomic::{AtomicU64, Ordering::Relaxed},
    task::{Context, Poll, ready},
    time::Instant,
};

use hermes_runtime::context::WorkerRef;
use pin_project_lite::pin_project;

use super::ServiceTime;

pin_project! {
    /// Response future of [`Hermes`](super::Hermes).
    ///
    /// Yields the inner future's output unchanged. The request stops counting
    /// as in flight when this future completes; if it is dropped first (the
    /// connection closed, a timeout gave up on it) or the inner future
    /// panics, it stops counting when the future is dropped or unwound.
    pub struct ResponseFuture<F> {
        #[pin]
        inner: F,
        in_flight: Option<InFlight>,
    }
}

impl<F> ResponseFuture<F> {
    pub(crate) fn new(inner: F, in_flight: Option<InFlight>) -> Self {
        Self { inner, in_flight }
    }
}

impl<F: Future> Future for ResponseFuture<F> {
    type Output = F::Output;

    #[inline]
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let output = ready!(this.inner.poll(cx));
        // Done: settle the slot now, not whenever the caller drops us.
        drop(this.in_flight.take());
        Poll::Ready(output)
    }
}

impl<F> fmt::Debug for ResponseFuture<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ResponseFuture").field("in_flight", &self.in_flight).finish_non_exhaustive()
    }
}

/// One request in flight on one worker: counted in on creation, counted out
/// (with its service time, if measured) on drop, which happens on completion,
/// cancellation and unwinding alike.
///
/// # Orderings
///
/// Every update is `Relaxed`. Each field of the slot is an independent gauge
/// or counter: the scheduler and the kernel program read them with plain
/// loads, accept a value a few nanoseconds old, and never read one field to
/// decide whether another is valid, so no update needs to be ordered before
/// or after another. The slot's writer is its own worker thread, so there is
/// no contention on the cache line to pay for either.
///
/// `in_flight` is updated with read-modify-write operations
/// (`fetch_add`/`fetch_sub`) although on the worker's own thread a load and
/// a store would never lose an update: a response future is `Send` and may
/// be finished on another thread (a future handed to another runtime, a
/// worker's runtime dropping its tasks while another thread drives the
/// same slot), and one lost decrement would leave `in_flight` wrong for the
/// life of the worker, steering connections away from it. The totals
/// (`requests`, `service_ns`) only feed rates and averages, so they use a
/// plain load and store: in that rare cross-thread case one increment may be
/// lost, and each request saves a locked instruction (1.7 ns measured in isolation
/// on the build machine).
///
/// # Clock
///
/// The clock is `std::time::Instant` (`clock_gettime(CLOCK_MONOTONIC)` in the
/// vDSO, no system call with a TSC clocksource). On the project's 2-core EPYC
/// build machine (KVM, `tsc` clocksource) one read costs about 34 ns, and a
/// start plus an elapsed about 65 ns; the `quanta` crate's TSC clock costs
/// about 12 ns a read (26 ns a request). Either is above the ≤ 10 ns per
/// request the layer aims for, so instead of a faster clock the layer reads
/// the clock only for sampled requests ([`ServiceTime`]): at the default one
/// in 64 the standard clock costs about 1 ns a request amortised, and `quanta`
/// would save well under 1 ns of that while adding a dependency and a
/// calibration at start-up.
pub(crate) struct InFlight {
    /// `None` once settled.
    worker: Option<WorkerRef>,
    /// When measured: the start, and how many requests this one stands for.
    started: Option<(Instant, u64)>,
}

impl InFlight {
    /// Counts a request in on `worker`'s slot.
    #[inline]
    pub(crate) fn start(worker: WorkerRef, service_time: ServiceTime) -> Self {
        let slot = worker.state();
        let started = match service_time.every {
            0 => None,
            every => {
                // Requests started on this worker before this one: those
                // finished plus those in flight. Sampling on this sequence
                // measures one request in `every`, evenly spread even
                // when requests arrive in bursts, without a counter of our
                // own. Both are read with plain loads before the locked
                // increment below, so nothing waits for it.
                let seq = slot.requests.load(Relaxed).wrapping_add(u64::from(slot.in_flight.load(Relaxed)));
                (seq & u64::from(every - 1) == 0).then(|| (Instant::now(), u64::from(every)))
            }
        };
        slot.in_flight.fetch_add(1, Relaxed);
        Self { worker: Some(worker), started }
    }
}

impl Drop for InFlight {
    #[inline]
    fn drop(&mut self) {
        // Small enough to inline into the response future's drop, so a
        // request outside a worker (no guard) costs a branch, not a call.
        if let Some(worker) = self.worker.take() {
            settle(worker, self.started);
        }
    }
}

/// Counts a request out of `worker`'s slot.
#[inline(never)]
fn settle(worker: WorkerRef, started: Option<(Instant, u64)>) {
    let slot = worker.state();
    if let Some((start, weight)) = started {
        record_service_time(&slot.service_ns, start, weight);
    }
    add(&slot.requests, 1);
    slot.in_flight.fetch_sub(1, Relaxed);
}

/// Adds a measured request's time, `weight` times, to `service_ns`. Out of
/// line and cold: it runs for one request in the sampling rate, and keeping
/// it apart keeps the common path of the drop short.
#[cold]
#[inline(never)]
fn record_service_time(service_ns: &AtomicU64, start: Instant, weight: u64) {
    let ns = u64::try_from(start.elapsed().as_nanos()).unwrap_or(u64::MAX);
    add(service_ns, ns.saturating_mul(weight));
}

/// Adds to a counter of the slot with a load and a store (no locked
/// instruction; see [`InFlight`] for why a rare lost update is acceptable
/// for the counters and not for `in_flight`).
#[inline]
fn add(counter: &AtomicU64, n: u64) {
    counter.store(counter.load(Relaxed).wrapping_add(n), Relaxed);
}

impl fmt::Debug for InFlight {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("InFlight")
            .field("worker", &self.worker.as_ref().map(WorkerRef::id))
            .field("measured", &self.started.is_some())
            .finish()
    }
}
