//! The `#[repr(C)]` mirrors of every map the kernel program uses, with the
//! names, sizes and indexes shared with `bpf/hermes.bpf.c`. This module (and
//! its `control` part: the settings and the list of eligible workers) is the
//! only place these layouts are written down on the Rust side; a test parses
//! the embedded object and checks names and value sizes against it.
//!
//! Fields are atomics because the memory is shared: userspace and the kernel
//! program read and write it concurrently through `mmap`. An atomic integer
//! has the same size and alignment as the plain integer in the C struct.
//!
//! Sizes: the table, the counters and the socket array hold [`slots_for`]
//! the server's workers (two slots per worker, so that an upgrade's
//! successor of as many workers fits beside it; at least
//! [`DEFAULT_SLOTS`]), set when the maps are created. The control map holds
//! one list of up to [`MAX_WORKERS`] eligible workers, whatever the size.

mod control;
mod publish_lock;

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};

pub use control::{Control, ListWriter};
pub use publish_lock::{StolenLock, TAKE_OVER_PATIENCE};

/// Most workers one server can have: the capacity of the list of eligible
/// workers the program draws from.
pub const MAX_WORKERS: usize = 1024;

/// Most slots the maps can have: two servers of [`MAX_WORKERS`] workers
/// during an upgrade.
pub const MAX_SLOTS: usize = 2 * MAX_WORKERS;

/// The maps' sizes in the embedded object, and the fewest slots a loader
/// creates (a server of up to 32 workers).
pub const DEFAULT_SLOTS: usize = 64;

/// CPUs the locality table covers: a connection received on a CPU at or
/// above this gets no local candidate.
pub const MAX_CPUS: usize = 1024;

/// The slots of the maps a server of `workers` workers creates: twice its
/// workers (its successor in an upgrade takes the other half), at least
/// [`DEFAULT_SLOTS`], at most [`MAX_SLOTS`].
///
/// ```
/// use hermes_bpf::layout::{DEFAULT_SLOTS, MAX_SLOTS, MAX_WORKERS, slots_for};
///
/// assert_eq!(slots_for(4), DEFAULT_SLOTS);
/// assert_eq!(slots_for(256), 512);
/// assert_eq!(slots_for(MAX_WORKERS), MAX_SLOTS);
/// ```
pub const fn slots_for(workers: usize) -> usize {
    let slots = workers.saturating_mul(2);
    if slots < DEFAULT_SLOTS {
        DEFAULT_SLOTS
    } else if slots > MAX_SLOTS {
        MAX_SLOTS
    } else {
        slots
    }
}

/// The version of the maps' layout (every `#[repr(C)]` type of this module
/// and how the maps are sized and indexed), stored in [`Control`] by the
/// server that creates the maps. A server taking over the maps of a running
/// one in an upgrade refuses them when the version differs: a program or a
/// server reading a slot laid out differently would misplace connections.
/// Raise it with any change of a layout, a map's size or a counter index.
/// Version 0 is a server from before versions were stored; 1 had a 64-bit
/// bitmap of at most 64 workers; 2 the bitmap and a Worker State Table of
/// two cache lines per worker (run-queue delay and stall); 3 the list of
/// eligible workers, maps sized for the server, and the two cache lines.
pub const LAYOUT_VERSION: u64 = 3;

/// Name of the program in the object (its C function name).
pub const PROGRAM_NAME: &str = "hermes_dispatch";
/// The select-only reference program of the kernel cost bench: one
/// `bpf_sk_select_reuseport` on a slot drawn from the hash. Never loaded by
/// the runtime.
pub const FLOOR_PROGRAM_NAME: &str = "hermes_select_floor";
/// Settings and list of eligible workers: one [`Control`].
pub const CONTROL_MAP: &str = "hermes_ctl";
/// Worker State Table map: one [`WorkerState`] per slot.
pub const TABLE_MAP: &str = "hermes_wst";
/// Counters map: [`counter::len`] `u64`s, indexed by [`counter`].
pub const COUNTERS_MAP: &str = "hermes_counters";
/// `REUSEPORT_SOCKARRAY` holding each worker's listener at its slot.
pub const SOCKETS_MAP: &str = "hermes_sockets";

/// Indexes into the counters map: a fixed block of totals, then two
/// counters per slot.
pub mod counter {
    /// Fewer candidates than the minimum: the kernel hash chose.
    pub const FALLBACK_TOO_FEW: usize = 0;
    /// List never published or older than the staleness limit: the kernel hash chose.
    pub const FALLBACK_STALE: usize = 1;
    /// The chosen workers had no listener in their slot: the kernel hash chose.
    pub const FALLBACK_NO_SOCKET: usize = 2;
    /// Queued connections of a closing listener that the kernel migrated.
    pub const MIGRATED: usize = 3;
    /// Times the program ran.
    pub const RUNS: usize = 4;
    /// Connections placed on the worker of the CPU that received them
    /// (locality on, see [`Control::set_locality`](super::Control::set_locality)).
    pub const LOCAL: usize = 5;
    /// The size of the fixed block; the per-slot counters follow.
    pub const FIXED: usize = 8;

    /// The new connections the program placed on slot `slot`.
    pub const fn dispatched(slot: usize) -> usize {
        FIXED + 2 * slot
    }

    /// The connections placed on slot `slot` since its accept queue was last
    /// sampled. The program adds them to the load its fine filter compares,
    /// so a burst arriving between two samples is spread instead of following
    /// one stale reading; whoever stores a sample in
    /// [`WorkerState::accept_queue`](super::WorkerState) subtracts what it
    /// read of the counter before sampling
    /// ([`Counters::consume_recent`](crate::Counters::consume_recent)).
    pub const fn recent(slot: usize) -> usize {
        FIXED + 2 * slot + 1
    }

    /// The number of counters of maps of `slots` slots.
    pub const fn len(slots: usize) -> usize {
        FIXED + 2 * slots
    }
}

/// Fine-filter policy: how the program picks one worker among the candidates.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
#[repr(u32)]
pub enum FinePolicy {
    /// Draw two distinct candidates from the list with the connection hash
    /// and take the one whose table slot shows the lower load (open
    /// connections + in-flight requests + accept queue + connections placed
    /// since the queue was sampled). With two candidates this always takes
    /// the less loaded one.
    #[default]
    TwoChoices = 0,
    /// Draw one candidate from the connection hash (load is not read).
    Hash = 1,
}

/// Worker lifecycle states stored in [`WorkerState::state`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u32)]
pub enum WorkerPhase {
    /// The slot is unused.
    Empty = 0,
    /// The worker is starting and not yet accepting.
    Starting = 1,
    /// The worker accepts and serves.
    Serving = 2,
    /// The worker finishes its connections and takes no new ones.
    Draining = 3,
}

impl WorkerPhase {
    /// Decodes a stored state; unknown values read as `Empty`.
    pub fn from_u32(v: u32) -> Self {
        match v {
            1 => Self::Starting,
            2 => Self::Serving,
            3 => Self::Draining,
            _ => Self::Empty,
        }
    }
}

/// One worker's slot of the Worker State Table (map [`TABLE_MAP`]): one cache
/// line, written by its own worker, read by every scheduler and by the
/// kernel program's fine filter. The one exception is `accept_queue`, a
/// sample any worker may store: a stuck worker cannot sample its own queue.
///
/// Orderings: every field is an independent gauge or counter. Readers (the
/// scheduler, the kernel) tolerate a value that is a few nanoseconds old and
/// never use one field to guard another, so `Relaxed` is enough everywhere.
#[repr(C, align(64))]
#[derive(Debug, Default)]
pub struct WorkerState {
    /// `CLOCK_MONOTONIC` nanoseconds of the worker's last loop turn.
    pub heartbeat_ns: AtomicU64,
    /// Total nanoseconds the worker's runtime spent not parked.
    pub busy_ns: AtomicU64,
    /// Connections accepted in total.
    pub accepted: AtomicU64,
    /// Requests completed in total.
    pub requests: AtomicU64,
    /// Connections open now.
    pub open_conns: AtomicU32,
    /// Requests being served now.
    pub in_flight: AtomicU32,
    /// The listener's accept-queue length at the last sample.
    pub accept_queue: AtomicU32,
    /// A [`WorkerPhase`] discriminant.
    pub state: AtomicU32,
    /// Total nanoseconds spent serving completed requests.
    pub service_ns: AtomicU64,
    /// Learned thread time of the requests in flight on the worker, in
    /// microseconds: what the worker still has to do, as far as the
    /// placement layer knows (saturating).
    pub expected_us: AtomicU32,
    /// Share of the recent ticks the worker's thread was busy (not parked),
    /// per mille, smoothed; written by the worker on each tick.
    pub util_permille: AtomicU32,
    // The second cache line: what the worker reads of its own thread from
    // the kernel's scheduler statistics on each tick.
    /// Total nanoseconds the worker's thread was runnable but waiting for a
    /// CPU (the kernel's run-queue delay: another thread held its core).
    pub run_delay_ns: AtomicU64,
    /// Share of the recent ticks the worker's thread waited for a CPU while
    /// runnable, per mille, smoothed; written on each tick.
    pub stall_permille: AtomicU32,
}

impl WorkerState {
    /// Open connections plus in-flight requests plus the accept queue, plus
    /// the expected work in flight and the utilisation counted as
    /// connections (`expected_us / 1024` and `util_permille / 128`: about one
    /// per millisecond of work, up to eight for a worker busy all the time).
    /// The kernel's fine filter compares this sum plus the connections it
    /// placed on the worker since the queue was sampled ([`counter::RECENT`]).
    pub fn load(&self) -> u64 {
        u64::from(self.open_conns.load(Ordering::Relaxed))
            + u64::from(self.in_flight.load(Ordering::Relaxed))
            + u64::from(self.accept_queue.load(Ordering::Relaxed))
            + u64::from(self.expected_us.load(Ordering::Relaxed) >> 10)
            + u64::from(self.util_permille.load(Ordering::Relaxed) >> 7)
    }

    /// The worker's lifecycle state.
    pub fn phase(&self) -> WorkerPhase {
        WorkerPhase::from_u32(self.state.load(Ordering::Relaxed))
    }

    /// Stores the worker's lifecycle state.
    pub fn set_phase(&self, phase: WorkerPhase) {
        self.state.store(phase as u32, Ordering::Relaxed);
    }

    /// Zeroes every field (a slot handed to a new worker).
    pub fn reset(&self) {
        for f in [
            &self.heartbeat_ns,
            &self.busy_ns,
            &self.accepted,
            &self.requests,
            &self.service_ns,
            &self.run_delay_ns,
        ] {
            f.store(0, Ordering::Relaxed);
        }
        for f in [
            &self.open_conns,
            &self.in_flight,
            &self.accept_queue,
            &self.state,
            &self.expected_us,
            &self.util_permille,
            &self.stall_permille,
        ] {
            f.store(0, Ordering::Relaxed);
        }
    }
}

const _: () = assert!(size_of::<WorkerState>() == 128);
const _: () = assert!(align_of::<WorkerState>() == 64);
