//! What the dispatch program counts, read from its counters map
//! ([`Counters`]), and what the kernel counts of any program's runs
//! ([`ProgramStats`], shared with `hermes-dsr`'s programs).

use std::sync::atomic::{AtomicU64, Ordering};

use crate::{Region, layout::counter};

/// A read of the program's counters.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Counters {
    /// New connections the program placed on each slot.
    pub dispatched: Vec<u64>,
    /// Connections left to the kernel hash because too few candidates were set.
    pub fallback_too_few: u64,
    /// Connections left to the kernel hash because the list was stale or never published.
    pub fallback_stale: u64,
    /// Connections left to the kernel hash because the chosen slots had no listener.
    pub fallback_no_socket: u64,
    /// Queued connections of closing listeners that migrated.
    pub migrated: u64,
    /// Times the program ran.
    pub runs: u64,
    /// Connections placed on the worker of the CPU that received them
    /// (locality on).
    pub local: u64,
    /// Connections placed on each slot since its accept queue was last sampled.
    pub recent: Vec<u64>,
}

impl Counters {
    /// Reads the counters region (every slot's). Each value is read once
    /// with `Relaxed`: they are independent monotonic counts, and a read
    /// racing with the program may be one connection behind.
    pub fn read(region: &Region<AtomicU64>) -> Self {
        let get = |i: usize| region.get(i).map_or(0, |c| c.load(Ordering::Relaxed));
        let slots = region.len().saturating_sub(counter::FIXED) / 2;
        Self {
            dispatched: (0..slots).map(|s| get(counter::dispatched(s))).collect(),
            fallback_too_few: get(counter::FALLBACK_TOO_FEW),
            fallback_stale: get(counter::FALLBACK_STALE),
            fallback_no_socket: get(counter::FALLBACK_NO_SOCKET),
            migrated: get(counter::MIGRATED),
            runs: get(counter::RUNS),
            local: get(counter::LOCAL),
            recent: (0..slots).map(|s| get(counter::recent(s))).collect(),
        }
    }

    /// One counter (an index of [`counter`]; 0 beyond the map), without
    /// reading the others: what a per-tick reader takes, allocation-free.
    pub fn get(region: &Region<AtomicU64>, index: usize) -> u64 {
        // Relaxed: a lone counter; the program adds to it atomically.
        region.get(index).map_or(0, |c| c.load(Ordering::Relaxed))
    }

    /// Slot `slot`'s count of connections placed since its last
    /// accept-queue sample (0 for a slot beyond the map). Read it before
    /// sampling the queue, and hand it to [`Counters::consume_recent`] after
    /// storing the sample.
    pub fn recent(region: &Region<AtomicU64>, slot: usize) -> u64 {
        Self::get(region, counter::recent(slot))
    }

    /// Subtracts `seen` (a [`Counters::recent`] read taken before the queue
    /// sample now stored) from slot `worker`'s count: those placements are
    /// in the sample's queue or among its open connections now, while the
    /// ones the program made since the read stay counted. Zeroing instead
    /// would lose the placements made between the read and the store.
    /// Relaxed: the program's increments are atomic adds, and this is an
    /// atomic read-modify-write that never goes below zero.
    pub fn consume_recent(region: &Region<AtomicU64>, worker: usize, seen: u64) {
        if let Some(c) = region.get(counter::recent(worker)) {
            let _ = c.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| Some(n.saturating_sub(seen)));
        }
    }

    /// Zeroes slot `worker`'s count of connections placed since its last
    /// accept-queue sample; call it right after storing a sample. Relaxed: a
    /// placement racing with the store may be lost from this count, and it
    /// is then in the next sample's queue or in the open connections.
    pub fn clear_recent(region: &Region<AtomicU64>, worker: usize) {
        if let Some(c) = region.get(counter::recent(worker)) {
            c.store(0, Ordering::Relaxed);
        }
    }

    /// Connections the kernel hash placed, all reasons together.
    pub fn fallbacks(&self) -> u64 {
        self.fallback_too_few + self.fallback_stale + self.fallback_no_socket
    }
}

/// The kernel's run statistics of a program: of the dispatch program
/// ([`Dispatcher::program_stats`](crate::Dispatcher::program_stats)), and of
/// `hermes-dsr`'s balancer and host programs. The kernel updates them only
/// while statistics are enabled (`sysctl kernel.bpf_stats_enabled=1`, or
/// [`aya::sys::enable_stats`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ProgramStats {
    /// Total nanoseconds spent in the program while statistics were enabled.
    pub run_time_ns: u64,
    /// Runs counted while statistics were enabled.
    pub run_count: u64,
}

impl ProgramStats {
    /// Mean nanoseconds per run, or 0 before any counted run.
    pub fn ns_per_run(&self) -> f64 {
        if self.run_count == 0 { 0.0 } else { self.run_time_ns as f64 / self.run_count as f64 }
    }
}

impl From<&aya::programs::ProgramInfo> for ProgramStats {
    /// The statistics in a program's info (`Program::info()` of aya).
    fn from(info: &aya::programs::ProgramInfo) -> Self {
        Self { run_time_ns: info.run_time().as_nanos() as u64, run_count: info.run_count() }
    }
}
