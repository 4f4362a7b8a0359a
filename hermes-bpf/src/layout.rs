//! The `#[repr(C)]` mirrors of every map the kernel program uses, with the
//! names and indexes shared with `bpf/hermes.bpf.c`. This module is the only
//! place these layouts are written down on the Rust side; a test parses the
//! embedded object and checks names and value sizes against it.
//!
//! Fields are atomics because the memory is shared: userspace and the kernel
//! program read and write it concurrently through `mmap`. An atomic integer
//! has the same size and alignment as the plain integer in the C struct.

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};

/// Most workers one dispatch group can hold (one bit each in the bitmap).
pub const MAX_WORKERS: usize = 64;

/// The version of the maps' layout (every `#[repr(C)]` type of this module
/// and the maps' sizes), stored in [`Control`]'s `layout_version` by the
/// server that creates the maps. A server taking over the maps of a running
/// one in an upgrade refuses them when the version differs: a program or a
/// server reading a slot laid out differently would misplace connections.
/// Raise it with any change of a layout, a map's size or a counter index.
/// Version 0 is a server from before versions were stored.
pub const LAYOUT_VERSION: u64 = 2;

/// Name of the program in the object (its C function name).
pub const PROGRAM_NAME: &str = "hermes_dispatch";
/// The select-only reference program of the kernel cost bench: one
/// `bpf_sk_select_reuseport` on a slot drawn from the hash. Never loaded by
/// the runtime.
pub const FLOOR_PROGRAM_NAME: &str = "hermes_select_floor";
/// Settings and candidate bitmap map: one [`Control`].
pub const CONTROL_MAP: &str = "hermes_ctl";
/// Worker State Table map: [`MAX_WORKERS`] [`WorkerState`] slots.
pub const TABLE_MAP: &str = "hermes_wst";
/// Counters map: [`COUNTERS_LEN`] `u64`s, indexed by [`counter`].
pub const COUNTERS_MAP: &str = "hermes_counters";
/// `REUSEPORT_SOCKARRAY` holding each worker's listener at its worker id.
pub const SOCKETS_MAP: &str = "hermes_sockets";

/// Indexes into the counters map. Indexes `0..MAX_WORKERS` count the new
/// connections the program placed on each worker.
pub mod counter {
    use super::MAX_WORKERS;
    /// Fewer candidates than the minimum: the kernel hash chose.
    pub const FALLBACK_TOO_FEW: usize = MAX_WORKERS;
    /// Bitmap never published or older than the staleness limit: the kernel hash chose.
    pub const FALLBACK_STALE: usize = MAX_WORKERS + 1;
    /// The chosen workers had no listener in their slot: the kernel hash chose.
    pub const FALLBACK_NO_SOCKET: usize = MAX_WORKERS + 2;
    /// Queued connections of a closing listener that the kernel migrated.
    pub const MIGRATED: usize = MAX_WORKERS + 3;
    /// Times the program ran.
    pub const RUNS: usize = MAX_WORKERS + 4;
    /// Start of a block of [`MAX_WORKERS`] counters: the connections placed on
    /// each worker since its accept queue was last sampled. The program adds
    /// them to the load its fine filter compares, so a burst arriving between
    /// two samples is spread instead of following one stale reading; whoever
    /// stores a sample in [`WorkerState::accept_queue`](super::WorkerState)
    /// subtracts what it read of the counter before sampling
    /// ([`Counters::consume_recent`](crate::Counters::consume_recent)).
    pub const RECENT: usize = MAX_WORKERS + 8;
}
/// Number of `u64` entries in the counters map.
pub const COUNTERS_LEN: usize = 2 * MAX_WORKERS + 8;

/// Fine-filter policy: how the program picks one worker among the candidates.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
#[repr(u32)]
pub enum FinePolicy {
    /// Draw two distinct candidates from the connection hash and take the one
    /// whose table slot shows the lower load (open connections + in-flight
    /// requests + accept queue + connections placed since the queue was
    /// sampled). With two candidates this always takes the less loaded one.
    #[default]
    TwoChoices = 0,
    /// Draw one candidate from the connection hash (load is not read).
    Hash = 1,
}

/// The settings and candidate bitmap (map [`CONTROL_MAP`], one entry).
///
/// Userspace writes each field with one atomic store; the program reads each
/// field once per connection.
#[repr(C)]
#[derive(Debug, Default)]
pub struct Control {
    /// Bit `i` set: worker `i` may take new connections.
    pub bitmap: AtomicU64,
    /// `CLOCK_MONOTONIC` nanoseconds of the last publish; 0 means never.
    pub published_ns: AtomicU64,
    /// Bitmaps older than this fall back to the kernel hash; 0 means no limit.
    pub max_stale_ns: AtomicU64,
    /// Worker id + 1 of the last publisher; 0 before the first publish.
    pub publisher: AtomicU64,
    /// Fewer candidates than this fall back to the kernel hash.
    pub min_candidates: AtomicU32,
    /// A [`FinePolicy`] discriminant.
    pub policy: AtomicU32,
    /// Held (1) while a [`Control::publish_if_newer`] checks and publishes;
    /// userspace only (the first of the C struct's `_reserved` words, which
    /// the program never reads).
    publish_lock: AtomicU64,
    /// [`LAYOUT_VERSION`] of the server that created the maps (the C struct's
    /// second `_reserved` word; userspace only).
    layout_version: AtomicU64,
    /// The token of the server whose schedulers publish the bitmap (the C
    /// struct's third `_reserved` word; userspace only). Two servers share
    /// the maps during an upgrade; only the owner publishes, and the
    /// successor takes ownership once it serves ([`Control::take_over`]).
    owner: AtomicU64,
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

impl Control {
    /// Publishes a candidate bitmap stamped `now_ns` (`CLOCK_MONOTONIC`, see
    /// [`crate::monotonic_ns`]) by worker `publisher`. Two plain stores and no
    /// syscall.
    ///
    /// Orderings: the bitmap is stored before its timestamp, with `Release`
    /// on the timestamp, so a reader that sees the new timestamp (and uses
    /// `Acquire`) sees this bitmap or a newer one. The kernel program reads
    /// both with plain loads; on x86-64 stores are not reordered with other
    /// stores, and a reader racing with a publish sees at worst one old
    /// bitmap with a new time, or the new bitmap with an old time (one
    /// connection placed by the previous decision or by the kernel hash).
    pub fn publish(&self, bitmap: u64, now_ns: u64, publisher: usize) {
        self.bitmap.store(bitmap, Ordering::Relaxed);
        self.publisher.store(publisher as u64 + 1, Ordering::Relaxed);
        self.published_ns.store(now_ns, Ordering::Release);
    }

    /// Publishes like [`Control::publish`], unless a publish stamped later
    /// than `now_ns` already happened (a slower concurrent scheduler never
    /// rolls a newer decision back), or another scheduler is publishing at
    /// this moment (its decision is as fresh as this one; this one's next
    /// tick publishes again). Returns whether it published.
    ///
    /// The check and the stores happen under a try-lock in the control map
    /// itself, so that two schedulers, of this process or of another one
    /// sharing the map, never interleave: without it, a scheduler preempted
    /// between its check and its stores would move `published_ns` backwards
    /// and pair an old bitmap with a newer scheduler's time. It never waits,
    /// so a preempted holder delays the others by at most one tick, and the
    /// program's staleness limit covers a holder that never returns.
    pub fn publish_if_newer(&self, bitmap: u64, now_ns: u64, publisher: usize) -> bool {
        self.publish_as(None, bitmap, now_ns, publisher)
    }

    /// Publishes like [`Control::publish_if_newer`], and only while the
    /// maps' owner is `owner` (`None`: whoever owns them): a server whose
    /// maps a successor took over never publishes again. The owner is
    /// checked under the same try-lock as the publish time, so a takeover
    /// never interleaves with a publish.
    pub fn publish_as(&self, owner: Option<u64>, bitmap: u64, now_ns: u64, publisher: usize) -> bool {
        // Acquire on taking the lock pairs with the Release that frees it:
        // the holder sees every store of the previous holder's publish (and
        // the owner a takeover stored under the lock).
        if self.publish_lock.compare_exchange(0, 1, Ordering::Acquire, Ordering::Relaxed).is_err() {
            return false;
        }
        let owned = owner.is_none_or(|o| self.owner.load(Ordering::Relaxed) == o);
        let newer = owned && self.published_ns.load(Ordering::Relaxed) <= now_ns;
        if newer {
            self.publish(bitmap, now_ns, publisher);
        }
        self.publish_lock.store(0, Ordering::Release);
        newer
    }

    /// Makes `owner` the maps' owner and publishes `bitmap` in its name,
    /// under the publish lock (waiting for a publish in progress, which
    /// takes a few stores). From then on only `owner`'s
    /// [`Control::publish_as`] publishes: this is how a successor's workers
    /// take the bitmap from the server they replace, in one step.
    pub fn take_over(&self, owner: u64, bitmap: u64, now_ns: u64, publisher: usize) {
        // Acquire/Release: as in `publish_as`.
        while self.publish_lock.compare_exchange(0, 1, Ordering::Acquire, Ordering::Relaxed).is_err() {
            std::thread::yield_now();
        }
        self.owner.store(owner, Ordering::Relaxed);
        self.publish(bitmap, now_ns.max(self.published_ns.load(Ordering::Relaxed)), publisher);
        self.publish_lock.store(0, Ordering::Release);
    }

    /// Makes `owner` the maps' owner without publishing (the server that
    /// created the maps, before its first publish).
    pub fn claim(&self, owner: u64) {
        self.owner.store(owner, Ordering::Relaxed);
    }

    /// The token of the server that publishes the bitmap (0: none yet).
    pub fn owner(&self) -> u64 {
        // Relaxed: a lone value; the publish path reads it under the lock.
        self.owner.load(Ordering::Relaxed)
    }

    /// The [`LAYOUT_VERSION`] stored by the server that created the maps.
    pub fn layout_version(&self) -> u64 {
        // Relaxed: written once, before the maps are shared.
        self.layout_version.load(Ordering::Relaxed)
    }

    /// Stores the layout version (the creator of the maps stores
    /// [`LAYOUT_VERSION`]).
    pub fn set_layout_version(&self, version: u64) {
        self.layout_version.store(version, Ordering::Relaxed);
    }

    /// Stores the settings the program reads with each bitmap.
    pub fn configure(&self, min_candidates: u32, max_stale_ns: u64, policy: FinePolicy) {
        self.min_candidates.store(min_candidates, Ordering::Relaxed);
        self.max_stale_ns.store(max_stale_ns, Ordering::Relaxed);
        self.policy.store(policy as u32, Ordering::Relaxed);
    }

    /// The fine-filter policy in force; unknown values read as the default.
    pub fn policy(&self) -> FinePolicy {
        match self.policy.load(Ordering::Relaxed) {
            1 => FinePolicy::Hash,
            _ => FinePolicy::TwoChoices,
        }
    }
}

const _: () = assert!(size_of::<Control>() == 64);
const _: () = assert!(size_of::<WorkerState>() == 128);
const _: () = assert!(align_of::<WorkerState>() == 64);
