//! The per-request guards on a worker's slot: [`InFlight`] (the request is
//! in flight, and its service time, one request in a [`SampleRate`]) and
//! [`ExpectedWork`] (the learned cost of a request placed on a worker).

use std::{
    fmt,
    sync::atomic::{AtomicU64, Ordering::Relaxed},
    time::Instant,
};

use super::worker::WorkerRef;

/// Which requests an [`InFlight`] guard times: one in a power of two, or
/// none.
///
/// Reading the clock is the dearest part of the guard (two reads per timed
/// request, about 65 ns together on a KVM guest with a TSC clocksource), so
/// by default one request in [`SampleRate::DEFAULT_ONE_IN`] is timed and its
/// time is added that many times to the slot's `service_ns`: the total is
/// then an unbiased estimate of the time spent serving, and
/// `service_ns / requests` the mean service time. In-flight and request
/// counting do not depend on the rate: they happen for every request.
///
/// ```
/// use hermes_runtime::context::SampleRate;
///
/// assert_eq!(SampleRate::one_in(16).map(SampleRate::rate), Ok(Some(16)));
/// assert_eq!(SampleRate::one_in(10).unwrap_err().requested(), 10); // not a power of two
/// assert_eq!(SampleRate::OFF.rate(), None);
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct SampleRate {
    /// Time one request in `every`; 0 times none. Always 0 or a power of
    /// two, so that choosing a request is a mask.
    every: u32,
}

impl SampleRate {
    /// Times no request; `service_ns` is not written.
    pub const OFF: Self = Self { every: 0 };
    /// Times every request; `service_ns` is exact.
    pub const EVERY_REQUEST: Self = Self { every: 1 };
    /// One request in this many is timed by default.
    pub const DEFAULT_ONE_IN: u32 = 64;
    /// The default: one request in [`SampleRate::DEFAULT_ONE_IN`].
    pub const DEFAULT: Self = Self { every: Self::DEFAULT_ONE_IN };

    /// Times one request in `n`, counting its time `n` times.
    ///
    /// Which requests are timed follows the worker's request sequence (every
    /// `n`-th request to start on the worker), so a steady stream is sampled
    /// evenly.
    ///
    /// # Errors
    /// Unless `n` is a power of two (0 included: use [`SampleRate::OFF`]).
    pub const fn one_in(n: u32) -> Result<Self, InvalidSampleRate> {
        if n.is_power_of_two() { Ok(Self { every: n }) } else { Err(InvalidSampleRate { requested: n }) }
    }

    /// One request in how many is timed, or `None` when off.
    pub const fn rate(self) -> Option<u32> {
        if self.every == 0 { None } else { Some(self.every) }
    }
}

/// A sampling rate that is not a power of two, refused by
/// [`SampleRate::one_in`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct InvalidSampleRate {
    requested: u32,
}

impl InvalidSampleRate {
    /// The rate that was asked for.
    pub fn requested(&self) -> u32 {
        self.requested
    }
}

impl fmt::Display for InvalidSampleRate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "service time can be measured on one request in a power of two (1, 2, 4, ... 2^31), not one in {}; \
             use SampleRate::OFF to measure none",
            self.requested
        )
    }
}

impl std::error::Error for InvalidSampleRate {}

impl Default for SampleRate {
    /// [`SampleRate::DEFAULT`].
    fn default() -> Self {
        Self::DEFAULT
    }
}

/// One request in flight on one worker: the load signal of a server that
/// has no Tower stack (a hand-written protocol, a proxy, a Redis-protocol
/// server).
///
/// Open one per request or command, on the worker that serves it, and keep
/// it for as long as the request is being served. While it lives, the
/// request counts in the slot's `in_flight`, which the scheduler and the
/// kernel program read as load; when it drops (on completion, on
/// cancellation of the future that holds it, or while unwinding from a
/// panic) the slot's `requests` goes up by one and, for timed requests (see
/// [`SampleRate`]), its service time goes into `service_ns`. It is what
/// `hermes_tower::HermesLayer` opens for every HTTP request and gRPC call,
/// so a hand-written server that opens it shows the same figures in
/// snapshots, `/_hermes/stats` and metrics.
///
/// Opening and dropping it allocates nothing and takes no lock: a
/// reference-count increment on the worker handle, one atomic add and one
/// atomic subtract on `in_flight`, a load and a store on `requests`.
///
/// ```
/// use hermes_bpf::{Region, layout::WorkerState};
/// use hermes_runtime::context::{self, WorkerRef};
/// use std::sync::{Arc, atomic::Ordering};
///
/// let table = Arc::new(Region::<WorkerState>::in_memory(2));
/// let worker = WorkerRef::new(0, table.clone());
/// let _entered = worker.enter(); // what the runtime does on each worker thread
///
/// // In a hand-written server, for each command:
/// let worker = context::current().expect("on a Hermes worker");
/// let guard = worker.request();
/// assert_eq!(table[0].in_flight.load(Ordering::Relaxed), 1);
/// drop(guard); // the command is answered
/// assert_eq!(table[0].in_flight.load(Ordering::Relaxed), 0);
/// assert_eq!(table[0].requests.load(Ordering::Relaxed), 1);
/// ```
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
/// a store would never lose an update: the guard is `Send` and may be
/// dropped on another thread (a future handed to another runtime, a
/// worker's runtime dropping its tasks while another thread drives the same
/// slot), and one lost decrement would leave `in_flight` wrong for the life
/// of the worker, steering connections away from it. The totals
/// (`requests`, `service_ns`) only feed rates and averages, so they use a
/// plain load and store: in that rare cross-thread case one increment may be
/// lost, and each request saves a locked instruction (1.7 ns measured in
/// isolation on the build machine).
///
/// # Clock
///
/// The clock is `std::time::Instant` (`clock_gettime(CLOCK_MONOTONIC)` in the
/// vDSO, no system call with a TSC clocksource). On the project's 2-core EPYC
/// build machine (KVM, `tsc` clocksource) one read costs about 34 ns, and a
/// start plus an elapsed about 65 ns; the `quanta` crate's TSC clock costs
/// about 12 ns a read (26 ns a request). Either is above the ≤ 10 ns per
/// request the guard aims for, so instead of a faster clock the guard reads
/// the clock only for sampled requests ([`SampleRate`]): at the default one
/// in 64 the standard clock costs about 1 ns a request amortised.
#[must_use = "the request counts as in flight only while the guard lives"]
pub struct InFlight {
    /// `None` once settled.
    worker: Option<WorkerRef>,
    /// When timed: the start, and how many requests this one stands for.
    started: Option<(Instant, u64)>,
}

impl InFlight {
    /// Counts a request in on `worker`'s slot, timing it as `rate` says.
    #[inline]
    pub fn start(worker: WorkerRef, rate: SampleRate) -> Self {
        let slot = worker.state();
        let started = match rate.every {
            0 => None,
            every => {
                // Requests started on this worker before this one: those
                // finished plus those in flight. Sampling on this sequence
                // times one request in `every`, evenly spread even when
                // requests arrive in bursts, without a counter of our own.
                // Both are read with plain loads before the locked
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
        // Small enough to inline into a response future's drop; the work
        // is out of line.
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

/// Adds a timed request's time, `weight` times, to `service_ns`. Out of
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

impl WorkerRef {
    /// Counts one request in flight on this worker until the returned guard
    /// drops, measuring its service time at the default rate
    /// ([`SampleRate::DEFAULT`]). See [`InFlight`].
    ///
    /// Costs one reference-count increment on this handle and one atomic add
    /// on the worker's slot; it allocates nothing and takes no lock.
    #[inline]
    pub fn request(&self) -> InFlight {
        InFlight::start(self.clone(), SampleRate::DEFAULT)
    }
}

/// Counts `us` microseconds of expected work (the learned cost of a request
/// placed there, see [`crate::placement`]) on a worker's slot for as long as
/// it lives: made by the placement decision, dropped where the request ends
/// (on completion, cancellation or unwinding alike, on whichever thread).
///
/// The slot's gauge saturates at `u32::MAX` (about 71 minutes of work)
/// rather than wrapping to a small value: a guard adds what fits and takes
/// back exactly what it added.
#[derive(Debug)]
pub struct ExpectedWork {
    /// Whose table (a clone of the deciding worker's handle).
    worker: WorkerRef,
    /// The slot the work counts on.
    slot: usize,
    /// What this guard added (less than asked at saturation).
    us: u32,
}

impl ExpectedWork {
    /// Adds `us` to the expected work of slot `slot` of `worker`'s table,
    /// up to `u32::MAX`.
    pub(crate) fn start(worker: WorkerRef, slot: usize, us: u32) -> Self {
        // Read-modify-write (not load + store): the guard may be dropped on
        // another thread than the one that created it, and a lost update
        // would skew the worker's score for its whole life. Relaxed: a lone
        // gauge, read as an independent value.
        let gauge = &worker.slot(slot).expected_us;
        let before = gauge.fetch_update(Relaxed, Relaxed, |v| Some(v.saturating_add(us)));
        let before = before.unwrap_or_else(|v| v);
        let added = before.saturating_add(us) - before;
        Self { worker, slot, us: added }
    }
}

impl Drop for ExpectedWork {
    fn drop(&mut self) {
        // Relaxed: see `start`.
        self.worker.slot(self.slot).expected_us.fetch_sub(self.us, Relaxed);
    }
}

impl fmt::Debug for InFlight {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("InFlight")
            .field("worker", &self.worker.as_ref().map(WorkerRef::id))
            .field("timed", &self.started.is_some())
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use std::{
        sync::{Arc, atomic::Ordering},
        time::Duration,
    };

    use hermes_bpf::{Region, WorkerTable, layout::WorkerState};

    use super::*;

    fn slot(table: &WorkerTable, id: usize) -> (u32, u64, u64) {
        let s = &table[id];
        (
            s.in_flight.load(Ordering::Relaxed),
            s.requests.load(Ordering::Relaxed),
            s.service_ns.load(Ordering::Relaxed),
        )
    }

    #[test]
    fn counts_in_while_alive_and_out_on_drop() {
        let table: WorkerTable = Arc::new(Region::<WorkerState>::in_memory(2));
        let worker = WorkerRef::new(1, table.clone());
        let a = worker.request();
        let b = InFlight::start(worker.clone(), SampleRate::OFF);
        assert_eq!(slot(&table, 1), (2, 0, 0));
        assert_eq!(slot(&table, 0), (0, 0, 0), "only the worker's own slot moves");
        drop(a);
        assert_eq!(slot(&table, 1).0, 1);
        assert_eq!(slot(&table, 1).1, 1);
        drop(b);
        assert_eq!(slot(&table, 1).0, 0);
        assert_eq!(slot(&table, 1).1, 2);
    }

    #[test]
    fn times_one_request_in_the_rate_and_weighs_it() {
        let table: WorkerTable = Arc::new(Region::<WorkerState>::in_memory(1));
        let worker = WorkerRef::new(0, table.clone());
        let rate = SampleRate::one_in(4).expect("a power of two");
        for i in 0..8 {
            let guard = InFlight::start(worker.clone(), rate);
            if i % 4 == 0 {
                std::thread::sleep(Duration::from_millis(2));
            }
            drop(guard);
        }
        let (in_flight, requests, service_ns) = slot(&table, 0);
        assert_eq!((in_flight, requests), (0, 8));
        // Requests 0 and 4 are timed (2 ms each, counted 4 times each).
        assert!(service_ns >= 2 * 4 * 2_000_000, "got {service_ns} ns");
        assert!(service_ns < 4 * 1_000_000_000, "got {service_ns} ns");
    }

    #[test]
    fn off_leaves_service_time_alone_and_a_panic_settles() {
        let table: WorkerTable = Arc::new(Region::<WorkerState>::in_memory(1));
        let worker = WorkerRef::new(0, table.clone());
        let w = worker.clone();
        let result = std::thread::spawn(move || {
            let _guard = InFlight::start(w, SampleRate::OFF);
            panic!("the handler fails");
        })
        .join();
        assert!(result.is_err());
        assert_eq!(slot(&table, 0), (0, 1, 0));
    }

    #[test]
    fn expected_work_saturates_and_gives_back_what_it_added() {
        let table: WorkerTable = Arc::new(Region::<WorkerState>::in_memory(1));
        let worker = WorkerRef::new(0, table.clone());
        let gauge = || table[0].expected_us.load(Ordering::Relaxed);
        let a = ExpectedWork::start(worker.clone(), 0, u32::MAX / 2 + 1);
        let b = ExpectedWork::start(worker.clone(), 0, u32::MAX / 2 + 1);
        assert_eq!(gauge(), u32::MAX, "saturated, not wrapped to a small value");
        drop(a);
        assert_eq!(gauge(), u32::MAX / 2, "the first guard took back its whole part");
        drop(b);
        assert_eq!(gauge(), 0);
    }
}
