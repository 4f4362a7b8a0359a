//! [`Placement`]: the state behind request placement, the scheduler's
//! second half: the learned cost of each request class, the target of the
//! moment, each worker's runtime (to run a moved request on), and the
//! per-worker counters. The decision itself, made per request from this
//! state, is [`crate::placement`].
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
//! - **Stall** ([`WorkerState::stall_permille`]): the share of the last ticks
//!   the worker's thread waited for a CPU while it had work, which a
//!   per-core worker whose core another process holds spends doing nothing.
//!
//! A worker's *score* is its expected work plus its utilisation and stall
//! as microseconds of the last tick. At each tick every worker looks for the
//! serving worker with the lowest score and stores it as the target of the
//! moment; a request moves to that target when the owner's score exceeds the
//! target's by more than [`MOVE_MARGIN_US`], and, for a request of a light
//! class, only when the owner also has work in flight that the request would
//! wait behind. Otherwise, which is the common case, it runs where it is.
//!
//! The common (local) path reads four words (the class's cost, the owner's
//! two gauges, the target's id) and writes nothing.

use std::{
    fmt,
    sync::{
        Arc,
        atomic::{AtomicU32, AtomicU64, Ordering::Relaxed},
    },
    time::Duration,
};

use arc_swap::ArcSwapOption;
use hermes_bpf::{
    WorkerTable,
    layout::{WorkerPhase, WorkerState},
};
use tokio::runtime::Handle;

use crate::config::Config;

/// How many request classes have a learned cost.
pub(crate) const COST_CLASSES: usize = 64;
/// A class whose learned cost is below this many microseconds is light: its
/// requests move only away from a worker with work in flight.
pub(crate) const LIGHT_US: u32 = 200;
/// How much higher (in microseconds of expected work) the owner's score must
/// be than the target's for a request to move. A hop to another worker costs
/// a few microseconds; a margin of a millisecond keeps requests from moving
/// for differences that noise alone makes.
pub(crate) const MOVE_MARGIN_US: u64 = 1_000;

/// A worker at or above this smoothed utilisation is overloaded (see
/// [`Placement::should_reconnect`]).
pub(crate) const OVERLOADED_PERMILLE: u32 = 850;
/// A worker at or below this smoothed utilisation has room for connections
/// asked to reconnect elsewhere.
pub(crate) const ROOM_PERMILLE: u32 = 500;

/// A request class: an index into the learned costs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) struct CostClass(usize);

impl CostClass {
    /// The class of a request key (for HTTP, the path): FNV-1a of the bytes,
    /// folded onto [`COST_CLASSES`] classes. Different keys may share a class.
    #[inline]
    pub(crate) fn of(key: &[u8]) -> Self {
        let mut h: u32 = 0x811c_9dc5;
        for &b in key {
            h = (h ^ u32::from(b)).wrapping_mul(0x0100_0193);
        }
        Self((h ^ (h >> 16)) as usize % COST_CLASSES)
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
    /// Requests of this worker's connections on its blocking pool now.
    offloading: AtomicU32,
    /// Requests of this worker's connections refused because as many were
    /// on its blocking pool as `max_offloaded` allows.
    shed: AtomicU64,
    /// `CLOCK_MONOTONIC` ns of the last warning about shed requests.
    shed_logged_ns: AtomicU64,
}

/// The placement state of one server: the workers' runtime handles, the
/// learned costs, the target of the moment, and the counters.
pub(crate) struct Placement {
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
    reconnect_every: Option<Duration>,
    /// Requests of a class learned to cost at least this many microseconds
    /// run on the blocking pool; `u32::MAX`: never.
    offload_us: u32,
    /// At most this many requests of one worker on its blocking pool at once.
    max_offloaded: u32,
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
    /// Placement for the first `config.workers` slots of `table`, as the
    /// builder set it (`place_requests`, `reconnect_overloaded`,
    /// `offload_heavy`). Offloading needs placement on.
    pub(crate) fn new(table: WorkerTable, config: &Config) -> Self {
        let workers = config.workers;
        let offload_us = match config.offload_heavy {
            Some(t) if config.place_requests => u32::try_from(t.as_micros()).unwrap_or(u32::MAX).max(1),
            _ => u32::MAX,
        };
        Self {
            table,
            workers,
            handles: (0..workers).map(|_| ArcSwapOption::empty()).collect(),
            costs: (0..COST_CLASSES).map(|_| AtomicU32::new(0)).collect(),
            target: AtomicU32::new(0),
            moves: (0..workers).map(|_| Moves::default()).collect(),
            lost: AtomicU64::new(0),
            tick_us: (config.tick.as_micros() as u64).max(1),
            enabled: config.place_requests,
            reconnect_every: config.reconnect_every,
            offload_us,
            max_offloaded: config.max_offloaded.unwrap_or(u32::MAX),
        }
    }

    /// Whether requests may move (the builder's `place_requests`).
    pub(crate) fn is_enabled(&self) -> bool {
        self.enabled
    }

    /// Whether a request of learned cost `cost_us` (thread time per request,
    /// see [`Placement::expected_us`]) runs on the blocking pool of its
    /// connection's worker rather than on a worker: its class holds a thread
    /// for at least the offload threshold. One comparison; unknown classes
    /// (cost 0) run on a worker until their cost is learned.
    #[inline]
    pub(crate) fn offloads(&self, cost_us: u32) -> bool {
        cost_us >= self.offload_us
    }

    /// The offload threshold in microseconds, if offloading is on.
    pub(crate) fn offload_threshold_us(&self) -> Option<u32> {
        (self.offload_us != u32::MAX).then_some(self.offload_us)
    }

    /// Makes worker `id`'s runtime reachable (`None` while it has none).
    pub(crate) fn set_handle(&self, id: usize, handle: Option<Handle>) {
        self.handles[id].store(handle.map(Arc::new));
    }

    /// Worker `target`'s runtime, to spawn a moved handler future on
    /// (`None` while the worker has no runtime). Cloning the handle is one
    /// reference-count increment; nothing is allocated.
    pub(crate) fn handle(&self, target: usize) -> Option<Arc<Handle>> {
        self.handles.get(target)?.load_full()
    }

    /// The learned cost of `class` in microseconds of thread time; 0 when
    /// nothing was learned yet.
    #[inline]
    pub(crate) fn expected_us(&self, class: CostClass) -> u32 {
        // Relaxed: a lone estimate; a stale value only makes one decision
        // slightly less informed.
        self.costs[class.0].load(Relaxed)
    }

    /// Learns that a request of `class` took `us` microseconds of thread
    /// time: a moving average with weight 1/4 for the new sample (the first
    /// sample is taken as it is).
    pub(crate) fn learn(&self, class: CostClass, us: u32) {
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
        if slot.phase() != WorkerPhase::Serving || !self.is_fresh(slot, now_ns) {
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
    pub(crate) fn choose(&self, from: usize, cost_us: u32) -> Option<usize> {
        // Relaxed: the target is a hint refreshed every tick; a stale one is
        // checked against the live gauges below.
        let target = self.target.load(Relaxed) as usize;
        if !self.enabled || target == 0 || target - 1 == from {
            return None;
        }
        let slot = &self.table[from];
        // Relaxed: independent gauges (see `WorkerState`).
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

    /// The target of the moment (the lowest-scoring serving worker at the
    /// last tick), if any.
    pub(crate) fn target(&self) -> Option<usize> {
        (self.target.load(Relaxed) as usize).checked_sub(1)
    }

    /// Refreshes the target from the live scores (O(workers)); run by the
    /// worker that samples the queues in each half tick, and by a worker
    /// back from a handler that held its thread (the last writer wins, each
    /// writes a fresh answer).
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
    pub(crate) fn should_reconnect(&self, from: usize) -> bool {
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

    // The counters below are for the snapshot and metrics: Relaxed, each a
    // lone value that orders nothing.

    /// Counts a request of worker `from`'s connection moved to `target`.
    pub(crate) fn count_move(&self, from: usize, target: usize) {
        self.moves[from].out.fetch_add(1, Relaxed);
        self.moves[target].into.fetch_add(1, Relaxed);
    }

    /// Admits a request of worker `from`'s connection to its blocking pool,
    /// counting it there until [`Placement::end_offload`], unless as many as
    /// `max_offloaded` are there already: then counts it as shed and says
    /// no. Called on worker `from`'s thread; the count is a lone admission
    /// counter (Relaxed: it guards no other memory), decremented wherever
    /// the request ends.
    pub(crate) fn admit_offload(&self, from: usize) -> bool {
        let moves = &self.moves[from];
        if moves.offloading.fetch_add(1, Relaxed) >= self.max_offloaded {
            moves.offloading.fetch_sub(1, Relaxed);
            let total = moves.shed.fetch_add(1, Relaxed) + 1;
            let now = hermes_bpf::monotonic_ns();
            let last = moves.shed_logged_ns.load(Relaxed);
            if now.saturating_sub(last) >= 1_000_000_000
                && moves.shed_logged_ns.compare_exchange(last, now, Relaxed, Relaxed).is_ok()
            {
                tracing::warn!(
                    worker = from,
                    shed = total,
                    max_offloaded = self.max_offloaded,
                    "requests of routes that hold their thread refused (503): as many run on the worker's \
                     blocking pool as max_offloaded allows"
                );
            }
            return false;
        }
        moves.offloaded.fetch_add(1, Relaxed);
        true
    }

    /// An admitted request of worker `from` left its blocking pool.
    pub(crate) fn end_offload(&self, from: usize) {
        self.moves[from].offloading.fetch_sub(1, Relaxed);
    }

    /// Counts a connection of worker `from` closed for its age or request count.
    pub(crate) fn count_recycled(&self, from: usize) {
        self.moves[from].recycled.fetch_add(1, Relaxed);
    }

    /// Counts a moved request whose target's runtime ended before it did
    /// (the caller answers it with an error).
    pub(crate) fn count_lost(&self) {
        self.lost.fetch_add(1, Relaxed);
        tracing::warn!(
            "a request placed on another worker or on the blocking pool was cancelled when its runtime stopped"
        );
    }

    /// `(moved out, moved in)` of worker `id`.
    pub(crate) fn moves(&self, id: usize) -> (u64, u64) {
        (self.moves[id].out.load(Relaxed), self.moves[id].into.load(Relaxed))
    }

    /// Connections of worker `id` asked to reconnect.
    pub(crate) fn reconnects(&self, id: usize) -> u64 {
        self.moves[id].reconnects.load(Relaxed)
    }

    /// Requests of worker `id`'s connections run on its blocking pool.
    pub(crate) fn offloaded(&self, id: usize) -> u64 {
        self.moves[id].offloaded.load(Relaxed)
    }

    /// Connections of worker `id` closed for their age or request count.
    pub(crate) fn recycled(&self, id: usize) -> u64 {
        self.moves[id].recycled.load(Relaxed)
    }

    /// Requests of worker `id`'s connections shed at the offload bound.
    pub(crate) fn shed(&self, id: usize) -> u64 {
        self.moves[id].shed.load(Relaxed)
    }

    /// Moved requests cancelled because their target stopped.
    pub(crate) fn lost(&self) -> u64 {
        self.lost.load(Relaxed)
    }
}

/// Expected work plus utilisation plus stall (the share of the tick the
/// worker waited for a CPU), in microseconds.
#[inline]
fn own_score(slot: &WorkerState, tick_us: u64) -> u64 {
    let busy_permille =
        u64::from(slot.util_permille.load(Relaxed)) + u64::from(slot.stall_permille.load(Relaxed));
    u64::from(slot.expected_us.load(Relaxed)) + busy_permille * tick_us / 1_000
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_key_always_falls_in_the_same_class() {
        assert_eq!(CostClass::of(b"/block"), CostClass::of(b"/block"));
        assert!((0..1000).all(|i| CostClass::of(format!("/p{i}").as_bytes()).0 < COST_CLASSES));
    }
}
