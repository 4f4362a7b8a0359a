//! Request placement: the second half of the scheduler.
//!
//! The kernel places each new *connection* on a worker; after that, every
//! request of that connection arrives on the same worker. [`Placement`] lets
//! a middleware (the Tower layer `hermes_tower::Place`) run a request's
//! handler future on another worker when the table says it pays: the
//! connection's I/O stays on its worker, the handler runs elsewhere, and its
//! response comes back to the owner, which writes it.
//!
//! # What the decision reads
//!
//! - **Learned costs.** A request's cost is the thread time its handler
//!   future takes (the time spent inside `poll`, not waiting), learned per
//!   request class (a hash of the path, [`COST_CLASSES`] classes) as a
//!   moving average. Wall time would call a handler that awaits a database
//!   for 100 ms heavy, though it leaves the worker free.
//! - **Expected work** ([`WorkerState::expected_us`]): the learned cost of the
//!   requests in flight on a worker, added when a request of a costly class
//!   is placed and removed when it ends.
//! - **Utilisation** ([`WorkerState::util_permille`]): the share of the last
//!   ticks the worker's thread was busy, smoothed, stored by the worker on
//!   each tick. A worker whose heartbeat is older than two ticks is busy now
//!   (blocked in a handler), whatever it last stored.
//!
//! A worker's *score* is its expected work plus its utilisation as
//! microseconds of the last tick. At each tick every worker looks for the
//! serving worker with the lowest score and stores it as the target of the
//! moment; a request moves to that target when the owner's score exceeds the
//! target's by more than [`MOVE_MARGIN_US`], and, for a request of a light
//! class, only when the owner also has work in flight that the request would
//! wait behind. Otherwise, which is the common case, it runs where it is.
//!
//! # Handlers that hold their thread
//!
//! A per-core worker that runs a handler which holds the thread (CPU work
//! without an `.await`, a blocking call) for milliseconds stalls every
//! connection it owns: it cannot even read their next requests, so moving
//! them afterwards comes too late. A multi-thread runtime hides this, as
//! another thread polls the I/O driver and steals the stalled worker's
//! tasks. Hermes keeps connections on their workers and instead runs a
//! request whose class has learned to hold the thread for at least the
//! offload threshold ([`Placement::offloads`], `Builder::offload_heavy`) on
//! its worker runtime's blocking pool, as Tokio advises for blocking work:
//! the handler future is driven there with [`Handle::block_on`], its I/O
//! and timers stay on the worker, and the worker goes on serving its other
//! connections. Such a request costs a hand-over to a pool thread (tens of
//! microseconds, one allocation), small beside the milliseconds it holds.
//!
//! # Mechanism
//!
//! A moved handler future is spawned on the target worker's runtime through
//! its [`tokio::runtime::Handle`]: Tokio's own injection queue for a
//! current-thread runtime, one allocation for the task, a wake-up of the
//! target if it is parked. This is push placement: the owner decides with
//! the table. A pull design (an overflow queue idle workers drain) decides
//! later and better, but a blocked or busy owner would have to enqueue its
//! requests before it knows whether anyone will take them, and a per-core
//! worker that is busy cannot pull at all; the push path keeps the local
//! case free of any queue.
//!
//! The common (local) path reads four words (the class's cost, the owner's
//! two gauges, the target's id) and writes nothing.

use std::{
    fmt,
    sync::{
        Arc,
        atomic::{AtomicU32, AtomicU64, Ordering::Relaxed},
    },
};

use arc_swap::ArcSwapOption;
use hermes_bpf::{
    WorkerTable,
    layout::{WorkerPhase, WorkerState},
};
use tokio::runtime::Handle;

/// How many request classes have a learned cost.
pub const COST_CLASSES: usize = 64;
/// A class whose learned cost is below this many microseconds is light: its
/// requests move only away from a worker with work in flight.
pub const LIGHT_US: u32 = 200;
/// How much higher (in microseconds of expected work) the owner's score must
/// be than the target's for a request to move. A hop to another worker costs
/// a few microseconds; a margin of a millisecond keeps requests from moving
/// for differences that noise alone makes.
pub const MOVE_MARGIN_US: u64 = 1_000;

/// The default offload threshold (`Builder::offload_heavy`): a request
/// class that holds its worker's thread for a millisecond per request
/// stalls the worker's other connections for that long, while the hand-over
/// to the blocking pool costs tens of microseconds.
pub const DEFAULT_OFFLOAD: std::time::Duration = std::time::Duration::from_millis(1);

/// A worker at or above this smoothed utilisation is overloaded (see
/// [`Placement::should_reconnect`]).
pub const OVERLOADED_PERMILLE: u32 = 850;
/// A worker at or below this smoothed utilisation has room for connections
/// asked to reconnect elsewhere.
pub const ROOM_PERMILLE: u32 = 500;

/// A request class: an index into the learned costs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct CostClass(usize);

impl CostClass {
    /// The class of a request key (for HTTP, the path): FNV-1a of the bytes,
    /// folded onto [`COST_CLASSES`] classes. Different keys may share a class.
    ///
    /// ```
    /// use hermes_runtime::placement::CostClass;
    /// assert_eq!(CostClass::of(b"/block"), CostClass::of(b"/block"));
    /// ```
    #[inline]
    pub fn of(key: &[u8]) -> Self {
        let mut h: u32 = 0x811c_9dc5;
        for &b in key {
            h = (h ^ u32::from(b)).wrapping_mul(0x0100_0193);
        }
        Self((h ^ (h >> 16)) as usize % COST_CLASSES)
    }

    /// The index of the class, below [`COST_CLASSES`].
    pub fn index(self) -> usize {
        self.0
    }
}

/// Per-worker placement counters, one cache line each so that owners
/// counting their moves do not contend.
#[derive(Debug, Default)]
#[repr(align(64))]
struct Moves {
    /// Requests whose connection is on this worker and whose handler ran elsewhere.
    out: AtomicU64,
    /// Requests whose handler ran here for a connection of another worker.
    into: AtomicU64,
    /// Connections of this worker asked to reconnect.
    reconnects: AtomicU64,
    /// `CLOCK_MONOTONIC` ns before which this worker asks no connection to reconnect.
    next_reconnect_ns: AtomicU64,
    /// Requests of this worker's connections run on its blocking pool.
    offloaded: AtomicU64,
    /// Connections of this worker closed for their age or request count.
    recycled: AtomicU64,
}

/// The placement state of one server: the workers' runtime handles, the
/// learned costs, the target of the moment, and the counters. Reached from a
/// worker thread through [`WorkerRef::placement`](crate::context::WorkerRef::placement).
pub struct Placement {
    table: WorkerTable,
    workers: usize,
    handles: Box<[ArcSwapOption<Handle>]>,
    costs: Box<[AtomicU32]>,
    /// Worker id + 1 of the lowest-scoring serving worker at the last tick; 0: none.
    target: AtomicU32,
    moves: Box<[Moves]>,
    /// Moved requests whose target's runtime ended before they did.
    lost: AtomicU64,
    tick_us: u64,
    enabled: bool,
    /// At most one connection per worker is asked to reconnect per interval; `None`: never.
    reconnect_every: Option<std::time::Duration>,
    /// Requests of a class learned to cost at least this many microseconds
    /// run on the blocking pool; `u32::MAX`: never.
    offload_us: u32,
    /// Close a keep-alive connection after this many requests.
    max_requests: Option<u64>,
    /// Close a keep-alive connection on its first response after this age.
    max_age: Option<std::time::Duration>,
}

impl fmt::Debug for Placement {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Placement")
            .field("workers", &self.workers)
            .field("enabled", &self.enabled)
            .field("target", &self.target())
            .finish_non_exhaustive()
    }
}

impl Placement {
    /// Placement for the first `workers` slots of `table`, whose workers tick
    /// every `tick`. When `enabled` is false, [`Placement::choose`] never
    /// moves a request (costs are still learned and shown).
    ///
    /// A Hermes server makes its own; this is for runtimes built by hand
    /// (and benchmarks) that enter workers with
    /// [`WorkerRef::with_placement`](crate::context::WorkerRef::with_placement).
    pub fn new(table: WorkerTable, workers: usize, tick: std::time::Duration, enabled: bool) -> Self {
        Self::with_reconnects(table, workers, tick, enabled, None)
    }

    /// [`Placement::new`], asking at most one connection per worker and per
    /// `reconnect_every` to reconnect while the worker stays overloaded (see
    /// [`Placement::should_reconnect`]); `None` never asks.
    pub fn with_reconnects(
        table: WorkerTable,
        workers: usize,
        tick: std::time::Duration,
        enabled: bool,
        reconnect_every: Option<std::time::Duration>,
    ) -> Self {
        Self {
            table,
            workers,
            handles: (0..workers).map(|_| ArcSwapOption::empty()).collect(),
            costs: (0..COST_CLASSES).map(|_| AtomicU32::new(0)).collect(),
            target: AtomicU32::new(0),
            moves: (0..workers).map(|_| Moves::default()).collect(),
            lost: AtomicU64::new(0),
            tick_us: (tick.as_micros() as u64).max(1),
            enabled,
            reconnect_every,
            offload_us: u32::MAX,
            max_requests: None,
            max_age: None,
        }
    }

    /// Asks every HTTP/1 keep-alive connection to close (`Connection: close`
    /// on a response) once it has served `max_requests` requests, or on its
    /// first response after it is `max_age` old, so that the client
    /// reconnects and the kernel places the new connection with the current
    /// table; `None` sets no limit. See [`Placement::should_recycle`].
    pub fn with_connection_limits(
        mut self,
        max_requests: Option<u64>,
        max_age: Option<std::time::Duration>,
    ) -> Self {
        self.max_requests = max_requests;
        self.max_age = max_age;
        self
    }

    /// Whether connections have a maximum request count (so their services
    /// count requests).
    pub fn limits_requests(&self) -> bool {
        self.max_requests.is_some()
    }

    /// Whether worker `from`'s connection, which has served `served`
    /// requests (this one included; 0 when not counted) since `opened`, reached its maximum
    /// request count or age and should close after this response. Counts it
    /// when it says yes. Without limits, one branch and no clock read.
    #[inline]
    pub fn should_recycle(&self, from: usize, served: u64, opened: std::time::Instant) -> bool {
        if self.max_requests.is_none() && self.max_age.is_none() {
            return false;
        }
        let due = self.max_requests.is_some_and(|m| served >= m && served > 0)
            || self.max_age.is_some_and(|a| opened.elapsed() >= a);
        if due {
            // Relaxed: a counter for the snapshot and metrics.
            self.moves[from].recycled.fetch_add(1, Relaxed);
        }
        due
    }

    /// Connections of worker `id` closed for their age or request count.
    pub fn recycled(&self, id: usize) -> u64 {
        self.moves[id].recycled.load(Relaxed)
    }

    /// Runs requests of a class learned to hold its thread for at least
    /// `threshold` per request on the worker runtime's blocking pool (see
    /// [`Placement::offloads`]); `None` never does. Ignored when placement
    /// is not enabled.
    pub fn with_offload(mut self, threshold: Option<std::time::Duration>) -> Self {
        self.offload_us = match threshold {
            Some(t) if self.enabled => u32::try_from(t.as_micros()).unwrap_or(u32::MAX).max(1),
            _ => u32::MAX,
        };
        self
    }

    /// Whether a request of learned cost `cost_us` (thread time per request,
    /// see [`Placement::expected_us`]) runs on the blocking pool of its
    /// connection's worker rather than on a worker: its class holds a thread
    /// for at least the offload threshold. One comparison; unknown classes
    /// (cost 0) run on a worker until their cost is learned.
    #[inline]
    pub fn offloads(&self, cost_us: u32) -> bool {
        cost_us >= self.offload_us
    }

    /// The offload threshold in microseconds, if offloading is on.
    pub fn offload_threshold_us(&self) -> Option<u32> {
        (self.offload_us != u32::MAX).then_some(self.offload_us)
    }

    /// Counts a request of worker `from`'s connection run on its blocking pool.
    pub fn count_offload(&self, from: usize) {
        // Relaxed: a counter for the snapshot and metrics.
        self.moves[from].offloaded.fetch_add(1, Relaxed);
    }

    /// Requests of worker `id`'s connections run on its blocking pool.
    pub fn offloaded(&self, id: usize) -> u64 {
        self.moves[id].offloaded.load(Relaxed)
    }

    /// Whether requests may move (the builder's `place_requests`).
    pub fn is_enabled(&self) -> bool {
        self.enabled
    }

    /// Makes worker `id`'s runtime reachable (`None` while it has none).
    pub(crate) fn set_handle(&self, id: usize, handle: Option<Handle>) {
        self.handles[id].store(handle.map(Arc::new));
    }

    /// The learned cost of `class` in microseconds of thread time; 0 when
    /// nothing was learned yet.
    #[inline]
    pub fn expected_us(&self, class: CostClass) -> u32 {
        // Relaxed: a lone estimate; a stale value only makes one decision
        // slightly less informed.
        self.costs[class.0].load(Relaxed)
    }

    /// Learns that a request of `class` took `us` microseconds of thread
    /// time: a moving average with weight 1/4 for the new sample (the first
    /// sample is taken as it is).
    pub fn learn(&self, class: CostClass, us: u32) {
        let cell = &self.costs[class.0];
        let old = cell.load(Relaxed);
        let new = if old == 0 { us.max(1) } else { ((u64::from(old) * 3 + u64::from(us)) / 4).max(1) as u32 };
        // Relaxed load and store: two workers learning the same class at once
        // may lose one sample of an average; no decision depends on exactness.
        cell.store(new, Relaxed);
    }

    /// A worker's score: its expected work in flight plus its utilisation as
    /// microseconds of one tick; `u64::MAX` when it may not take requests
    /// (not serving, or its heartbeat is older than two ticks: it is stuck in
    /// a handler now, whatever it last stored).
    fn score(&self, id: usize, now_ns: u64) -> u64 {
        let slot = &self.table[id];
        // Relaxed: independent gauges (see `WorkerState`).
        if slot.phase() != WorkerPhase::Serving {
            return u64::MAX;
        }
        if !self.is_fresh(slot, now_ns) {
            return u64::MAX;
        }
        own_score(slot, self.tick_us)
    }

    /// Where a request of learned cost `cost_us` arriving on worker `from`
    /// should run: `Some(target)` to move it, `None` to run it where it is.
    ///
    /// Called on worker `from`'s thread. A worker whose own heartbeat is
    /// older than two ticks has just come back from blocking (a handler that
    /// held the thread): the requests it now reads waited behind that, and
    /// its utilisation has not been updated yet, so it counts as fully busy.
    #[inline]
    pub fn choose(&self, from: usize, cost_us: u32) -> Option<usize> {
        // Relaxed: the target is a hint refreshed every tick; a stale one is
        // checked against the live gauges below.
        let target = self.target.load(Relaxed) as usize;
        if !self.enabled || target == 0 || target - 1 == from {
            return None;
        }
        let slot = &self.table[from];
        if cost_us < LIGHT_US && slot.expected_us.load(Relaxed) == 0 {
            // A light request on a worker with nothing costly in flight:
            // the common case, decided without touching another cache line.
            return None;
        }
        let now = hermes_bpf::monotonic_ns();
        let own = if self.is_fresh(slot, now) {
            own_score(slot, self.tick_us)
        } else {
            u64::from(slot.expected_us.load(Relaxed)) + self.tick_us
        };
        let theirs = self.score(target - 1, now);
        (theirs != u64::MAX && own > theirs.saturating_add(MOVE_MARGIN_US)).then_some(target - 1)
    }

    /// Whether `slot`'s heartbeat is at most two ticks old.
    fn is_fresh(&self, slot: &WorkerState, now_ns: u64) -> bool {
        // Relaxed: a lone timestamp.
        let hb = slot.heartbeat_ns.load(Relaxed);
        hb != 0 && now_ns.saturating_sub(hb) <= 2 * self.tick_us * 1_000
    }

    /// Worker `target`'s runtime, to spawn a moved handler future on
    /// (`None` while the worker has no runtime). Cloning the handle is one
    /// reference-count increment; nothing is allocated.
    pub fn handle(&self, target: usize) -> Option<Arc<Handle>> {
        self.handles.get(target)?.load_full()
    }

    /// Counts a request of worker `from`'s connection moved to `target`.
    pub fn count_move(&self, from: usize, target: usize) {
        // Relaxed: counters for the snapshot and metrics.
        self.moves[from].out.fetch_add(1, Relaxed);
        self.moves[target].into.fetch_add(1, Relaxed);
    }

    /// Counts a moved request whose target's runtime ended before it did
    /// (the caller answers it with an error).
    pub fn count_lost(&self) {
        self.lost.fetch_add(1, Relaxed);
        tracing::warn!(
            "a request placed on another worker or on the blocking pool was cancelled when its runtime stopped"
        );
    }

    /// Worker `id`'s slot.
    pub fn slot(&self, id: usize) -> &WorkerState {
        &self.table[id]
    }

    /// The target of the moment (the lowest-scoring serving worker at the
    /// last tick), if any.
    pub fn target(&self) -> Option<usize> {
        (self.target.load(Relaxed) as usize).checked_sub(1)
    }

    /// Refreshes the target from the live scores; run by every worker on
    /// every tick (the last writer wins, each writes a fresh answer).
    pub(crate) fn refresh_target(&self, now_ns: u64) {
        let best = (0..self.workers)
            .map(|id| (self.score(id, now_ns), id))
            .filter(|(s, _)| *s != u64::MAX)
            .min()
            .map_or(0, |(_, id)| id as u32 + 1);
        self.target.store(best, Relaxed);
    }

    /// Whether worker `from` should ask the connection of the request it is
    /// answering to reconnect, so that the kernel places it again with the
    /// current table: the worker has been overloaded (smoothed utilisation of
    /// at least [`OVERLOADED_PERMILLE`]) while the target of the moment has
    /// room (at most [`ROOM_PERMILLE`]), and the worker asked no other
    /// connection within the interval. Counts the ask when it says yes.
    ///
    /// Request placement moves single requests; this moves the connections
    /// themselves, for the load that stays (a heavy tenant's keep-alive
    /// connections all placed on one worker).
    pub fn should_reconnect(&self, from: usize) -> bool {
        let Some(every) = self.reconnect_every else { return false };
        let slot = &self.table[from];
        // Relaxed: lone gauges and a rate limiter whose exactness does not matter
        // beyond the compare-exchange that lets one request through per interval.
        if slot.util_permille.load(Relaxed) < OVERLOADED_PERMILLE {
            return false;
        }
        let Some(target) = self.target().filter(|&t| t != from) else { return false };
        let now = hermes_bpf::monotonic_ns();
        let theirs = &self.table[target];
        if !self.is_fresh(theirs, now) || theirs.util_permille.load(Relaxed) > ROOM_PERMILLE {
            return false;
        }
        let moves = &self.moves[from];
        let next = moves.next_reconnect_ns.load(Relaxed);
        if now < next
            || moves
                .next_reconnect_ns
                .compare_exchange(next, now + every.as_nanos() as u64, Relaxed, Relaxed)
                .is_err()
        {
            return false;
        }
        moves.reconnects.fetch_add(1, Relaxed);
        true
    }

    /// Connections of worker `id` asked to reconnect.
    pub fn reconnects(&self, id: usize) -> u64 {
        self.moves[id].reconnects.load(Relaxed)
    }

    /// `(moved out, moved in)` of worker `id`.
    pub fn moves(&self, id: usize) -> (u64, u64) {
        (self.moves[id].out.load(Relaxed), self.moves[id].into.load(Relaxed))
    }

    /// Moved requests cancelled because their target stopped.
    pub fn lost(&self) -> u64 {
        self.lost.load(Relaxed)
    }
}

/// Expected work plus utilisation, in microseconds.
#[inline]
fn own_score(slot: &WorkerState, tick_us: u64) -> u64 {
    u64::from(slot.expected_us.load(Relaxed)) + u64::from(slot.util_permille.load(Relaxed)) * tick_us / 1_000
}

/// Counts `us` microseconds of expected work on a worker's slot for as long
/// as it lives (created where the request runs; dropped on completion,
/// cancellation or unwinding alike).
#[derive(Debug)]
pub struct ExpectedWork {
    slot: crate::context::WorkerRef,
    us: u32,
}

impl ExpectedWork {
    /// Adds `us` to `worker`'s expected work.
    pub fn start(worker: crate::context::WorkerRef, us: u32) -> Self {
        // fetch_add/fetch_sub (not load + store): the guard may be dropped on
        // another thread than the one that created it, and a lost update
        // would skew the worker's score for its whole life. Relaxed: a lone
        // gauge, read as an independent value.
        worker.state().expected_us.fetch_add(us, Relaxed);
        Self { slot: worker, us }
    }
}

impl Drop for ExpectedWork {
    fn drop(&mut self) {
        self.slot.state().expected_us.fetch_sub(self.us, Relaxed);
    }
}

/// Smooths a worker's utilisation from its busy time, one sample per tick.
#[derive(Debug, Default)]
pub(crate) struct UtilMeter {
    last_busy_ns: u64,
    last_ns: u64,
}

impl UtilMeter {
    /// Stores the worker's utilisation since the last call, averaged with
    /// the previous value (weight 1/2), into its slot.
    pub(crate) fn sample(&mut self, slot: &WorkerState, now_ns: u64) {
        // Relaxed: the busy time is written by this same thread.
        let busy = slot.busy_ns.load(Relaxed);
        if self.last_ns != 0 && now_ns > self.last_ns {
            let share = (busy.saturating_sub(self.last_busy_ns) * 1_000 / (now_ns - self.last_ns)).min(1_000);
            let old = u64::from(slot.util_permille.load(Relaxed));
            slot.util_permille.store(((old + share) / 2) as u32, Relaxed);
        }
        self.last_busy_ns = busy;
        self.last_ns = now_ns;
    }
}
