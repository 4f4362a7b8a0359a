//! [`Control`], the control map's one value: the program's settings and the
//! list of eligible workers it draws its candidates from, which userspace
//! publishes without a syscall ([`Control::publish_as`] and
//! [`ListWriter`]), and the words only userspace uses (the publish lock,
//! the layout version, the owner).
//!
//! The list is double-buffered: a publish writes the buffer the program is
//! not reading, then one word (count, CPUs covered, generation) and the
//! publish time. The program reads the word once and draws two indexes
//! below the count: O(1) at any number of workers.

use std::sync::atomic::{AtomicU16, AtomicU32, AtomicU64, Ordering};

use super::{
    FinePolicy, MAX_CPUS, MAX_WORKERS,
    publish_lock::{PublishLock, StolenLock, TAKE_OVER_PATIENCE},
};

/// One buffer of the list of eligible workers (`struct hermes_list`).
#[repr(C)]
struct EligibleList {
    /// The eligible workers' slots; the first `count` (of the word in
    /// force) are the list.
    slots: [AtomicU16; MAX_WORKERS],
    /// Per CPU: slot + 1 of an eligible worker on that CPU, 0 for none; the
    /// first `cpus` (of the word in force) are set.
    local: [AtomicU16; MAX_CPUS],
}

/// The settings and the list of eligible workers (map
/// [`CONTROL_MAP`](super::CONTROL_MAP), one entry).
///
/// Userspace writes each field the program reads with one atomic store; the
/// program reads each once per connection.
#[repr(C)]
pub struct Control {
    /// The list in force: count (bits 0-31), CPUs of the locality table
    /// (32-47), generation (48-63; `lists[generation & 1]` is in force).
    list: AtomicU64,
    /// `CLOCK_MONOTONIC` nanoseconds of the last publish; 0 means never.
    pub published_ns: AtomicU64,
    /// Lists older than this fall back to the kernel hash; 0 means no limit.
    pub max_stale_ns: AtomicU64,
    /// Slot + 1 of the last publisher; 0 before the first publish.
    pub publisher: AtomicU64,
    /// Fewer workers in the list than this fall back to the kernel hash.
    pub min_candidates: AtomicU32,
    /// A [`FinePolicy`] discriminant.
    pub policy: AtomicU32,
    /// 1: the eligible worker on the CPU that received the connection is
    /// the program's first candidate (it wins ties of the fine filter).
    locality: AtomicU32,
    _pad: u32,
    _line: [u64; 2],
    /// The pid of the process whose [`Control::publish_as`] (or
    /// [`Control::take_over`]) checks and publishes at this moment, 0 when
    /// none; userspace only (the program never reads the second cache
    /// line). A pid, so that a successor can tell a holder that died
    /// holding it.
    publish_lock: PublishLock,
    /// [`LAYOUT_VERSION`](super::LAYOUT_VERSION) of the server that created
    /// the maps (userspace only).
    layout_version: AtomicU64,
    /// The token of the server whose schedulers publish the list (userspace
    /// only). Two servers share the maps during an upgrade; only the owner
    /// publishes, and the successor takes ownership once it serves
    /// ([`Control::take_over`]).
    owner: AtomicU64,
    _reserved: [u64; 5],
    lists: [EligibleList; 2],
}

impl Default for Control {
    fn default() -> Self {
        // SAFETY: every field is an atomic or a plain integer, for which all
        // zero bytes are a valid value: an empty list, never published.
        unsafe { std::mem::zeroed() }
    }
}

impl std::fmt::Debug for Control {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Control")
            .field("eligible", &self.eligible_count())
            .field("published_ns", &self.published_ns)
            .field("min_candidates", &self.min_candidates)
            .field("policy", &self.policy())
            .field("locality", &self.locality())
            .finish_non_exhaustive()
    }
}

const COUNT_MASK: u64 = 0xffff_ffff;
const CPUS_SHIFT: u32 = 32;
const GENERATION_SHIFT: u32 = 48;

/// Writes one list of eligible workers into the buffer the program is not
/// reading, within [`Control::publish_as`] (or its siblings): the slots with
/// [`ListWriter::push`], and for locality the worker of each CPU with
/// [`ListWriter::set_local`]. Plain stores into the shared map.
pub struct ListWriter<'a> {
    list: &'a EligibleList,
    count: usize,
    cpus: usize,
}

impl std::fmt::Debug for ListWriter<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ListWriter").field("count", &self.count).field("cpus", &self.cpus).finish()
    }
}

impl ListWriter<'_> {
    /// Adds `slot` to the list; `false` (nothing added) when the list is
    /// full ([`MAX_WORKERS`]) or the slot is beyond the maps' largest.
    #[inline]
    pub fn push(&mut self, slot: usize) -> bool {
        let Ok(slot) = u16::try_from(slot) else { return false };
        if self.count == MAX_WORKERS {
            return false;
        }
        // Relaxed: the buffer is published by the Release store of the word.
        self.list.slots[self.count].store(slot, Ordering::Relaxed);
        self.count += 1;
        true
    }

    /// Makes `slot` (in the list) the local candidate of `cpu`, replacing
    /// the one set before for that CPU in this list. A CPU at or above
    /// [`MAX_CPUS`] is ignored.
    #[inline]
    pub fn set_local(&mut self, cpu: usize, slot: usize) {
        let Ok(value) = u16::try_from(slot + 1) else { return };
        if cpu >= MAX_CPUS {
            return;
        }
        // The CPUs between the last one set and this one get none: every
        // entry below `cpus` is of this list.
        for c in self.cpus..cpu {
            self.list.local[c].store(0, Ordering::Relaxed);
        }
        self.list.local[cpu].store(value, Ordering::Relaxed);
        self.cpus = self.cpus.max(cpu + 1);
    }

    /// The local candidate of `cpu` set in this list, if any.
    #[inline]
    pub fn local(&self, cpu: usize) -> Option<usize> {
        if cpu >= self.cpus {
            return None;
        }
        (self.list.local[cpu].load(Ordering::Relaxed) as usize).checked_sub(1)
    }

    /// How many slots the list has so far.
    pub fn len(&self) -> usize {
        self.count
    }

    /// Whether the list is empty so far.
    pub fn is_empty(&self) -> bool {
        self.count == 0
    }
}

impl Control {
    /// The word of the list in force: (count, CPUs covered, buffer index).
    fn word(&self) -> (usize, usize, usize) {
        // Acquire pairs with the Release store of a publish: the buffer the
        // word names holds that publish's list (or a newer one's).
        let w = self.list.load(Ordering::Acquire);
        (
            (w & COUNT_MASK) as usize,
            ((w >> CPUS_SHIFT) & 0xffff) as usize,
            ((w >> GENERATION_SHIFT) & 1) as usize,
        )
    }

    /// Writes a list with `fill` into the buffer not in force and puts it
    /// in force, stamped `now_ns` by slot `publisher`. A few stores per
    /// slot and no syscall. Callers hold the publish lock, or own the
    /// memory alone.
    ///
    /// Orderings: the buffer's stores are `Relaxed`, the word's `Release`
    /// (a reader that loads the word with `Acquire` sees the buffer it
    /// names), then the time's `Release`. The kernel program reads with
    /// plain loads; x86-64 keeps stores in order, and a reader racing with a
    /// publish sees the old list with a new time or the new list with an old
    /// time (one connection placed by the previous decision or the kernel's
    /// hash). A reader racing with two publishes in a row may mix slots of
    /// both: one connection placed by a decision a tick old.
    #[inline]
    fn write(&self, now_ns: u64, publisher: usize, fill: impl FnOnce(&mut ListWriter<'_>)) {
        // Relaxed: the writer holds the lock; the word is its own.
        let generation = (self.list.load(Ordering::Relaxed) >> GENERATION_SHIFT).wrapping_add(1) & 0xffff;
        let mut writer = ListWriter { list: &self.lists[(generation & 1) as usize], count: 0, cpus: 0 };
        fill(&mut writer);
        let word =
            (generation << GENERATION_SHIFT) | ((writer.cpus as u64) << CPUS_SHIFT) | writer.count as u64;
        self.list.store(word, Ordering::Release);
        self.publisher.store(publisher as u64 + 1, Ordering::Relaxed);
        self.published_ns.store(now_ns, Ordering::Release);
    }

    /// Publishes the list `slots` (no locality table) stamped `now_ns`
    /// (`CLOCK_MONOTONIC`, see [`crate::monotonic_ns`]) by slot `publisher`,
    /// unconditionally: for a memory that one writer owns (tests,
    /// benchmarks). Servers sharing the map publish with
    /// [`Control::publish_as`].
    pub fn publish(&self, slots: impl IntoIterator<Item = usize>, now_ns: u64, publisher: usize) {
        self.write(now_ns, publisher, |w| {
            for slot in slots {
                w.push(slot);
            }
        });
    }

    /// Publishes like [`Control::publish`], unless a publish stamped later
    /// than `now_ns` already happened (a slower concurrent scheduler never
    /// rolls a newer decision back), or another scheduler is publishing at
    /// this moment (its decision is as fresh as this one; the next tick
    /// publishes again). Returns whether it published.
    pub fn publish_if_newer(
        &self,
        slots: impl IntoIterator<Item = usize>,
        now_ns: u64,
        publisher: usize,
    ) -> bool {
        self.publish_as(None, now_ns, publisher, |w| {
            for slot in slots {
                w.push(slot);
            }
        })
    }

    /// Publishes the list `fill` writes, stamped `now_ns` by slot
    /// `publisher`, while the maps' owner is `owner` (`None`: whoever owns
    /// them) and no publish stamped later happened; `fill` runs only then.
    /// Returns whether it published.
    ///
    /// The checks and the stores happen under a try-lock in the control map
    /// itself, so that two schedulers, of this process or of another one
    /// sharing the map, never interleave: without it, a scheduler preempted
    /// between its check and its stores would move `published_ns` backwards
    /// and pair an old list with a newer scheduler's time. It never waits,
    /// so a preempted holder delays the others by at most one tick, and the
    /// program's staleness limit covers a holder that never returns. A
    /// server whose maps a successor took over never publishes again.
    pub fn publish_as(
        &self,
        owner: Option<u64>,
        now_ns: u64,
        publisher: usize,
        fill: impl FnOnce(&mut ListWriter<'_>),
    ) -> bool {
        let Some(_held) = self.publish_lock.try_lock() else { return false };
        let owned = owner.is_none_or(|o| self.owner.load(Ordering::Relaxed) == o);
        let newer = owned && self.published_ns.load(Ordering::Relaxed) <= now_ns;
        if newer {
            self.write(now_ns, publisher, fill);
        }
        newer
    }

    /// Makes `owner` the maps' owner and publishes the list `fill` writes in
    /// its name, under the publish lock (waiting for a publish in progress,
    /// at most [`TAKE_OVER_PATIENCE`]). From then on only `owner`'s
    /// [`Control::publish_as`] publishes: this is how a successor's workers
    /// take the list from the server they replace, in one step.
    ///
    /// Returns the holder the lock was taken from, when it was held past
    /// the patience or by a process that exited holding it (a server killed
    /// in the middle of a publish): the caller says so in its logs and
    /// metrics.
    pub fn take_over(
        &self,
        owner: u64,
        now_ns: u64,
        publisher: usize,
        fill: impl FnOnce(&mut ListWriter<'_>),
    ) -> Option<StolenLock> {
        let (_held, stolen) = self.publish_lock.lock(TAKE_OVER_PATIENCE);
        self.owner.store(owner, Ordering::Relaxed);
        self.write(now_ns.max(self.published_ns.load(Ordering::Relaxed)), publisher, fill);
        stolen
    }

    /// The slots of the list in force, in list order.
    pub fn eligible(&self) -> impl Iterator<Item = usize> + '_ {
        let (count, _, buffer) = self.word();
        let list = &self.lists[buffer];
        // Relaxed: ordered by the word's Acquire load.
        list.slots[..count.min(MAX_WORKERS)].iter().map(|s| usize::from(s.load(Ordering::Relaxed)))
    }

    /// How many workers the list in force has.
    pub fn eligible_count(&self) -> usize {
        self.word().0
    }

    /// The local candidate of `cpu` in the list in force, if it has one.
    pub fn local(&self, cpu: usize) -> Option<usize> {
        let (_, cpus, buffer) = self.word();
        if cpu >= cpus.min(MAX_CPUS) {
            return None;
        }
        // Relaxed: ordered by the word's Acquire load.
        (usize::from(self.lists[buffer].local[cpu].load(Ordering::Relaxed))).checked_sub(1)
    }

    /// Makes `owner` the maps' owner without publishing (the server that
    /// created the maps, before its first publish).
    pub fn claim(&self, owner: u64) {
        self.owner.store(owner, Ordering::Relaxed);
    }

    /// The token of the server that publishes the list (0: none yet).
    pub fn owner(&self) -> u64 {
        // Relaxed: a lone value; the publish path reads it under the lock.
        self.owner.load(Ordering::Relaxed)
    }

    /// The [`LAYOUT_VERSION`](super::LAYOUT_VERSION) stored by the server
    /// that created the maps.
    pub fn layout_version(&self) -> u64 {
        // Relaxed: written once, before the maps are shared.
        self.layout_version.load(Ordering::Relaxed)
    }

    /// Stores the layout version (the creator of the maps stores
    /// [`LAYOUT_VERSION`](super::LAYOUT_VERSION)).
    pub fn set_layout_version(&self, version: u64) {
        self.layout_version.store(version, Ordering::Relaxed);
    }

    /// Stores the settings the program reads with each list.
    pub fn configure(&self, min_candidates: u32, max_stale_ns: u64, policy: FinePolicy) {
        self.min_candidates.store(min_candidates, Ordering::Relaxed);
        self.max_stale_ns.store(max_stale_ns, Ordering::Relaxed);
        self.policy.store(policy as u32, Ordering::Relaxed);
    }

    /// Turns locality on or off: on, the eligible worker on the CPU that
    /// received a connection (the list's locality table, see
    /// [`ListWriter::set_local`]) is the program's first candidate, and
    /// wins ties of the fine filter.
    pub fn set_locality(&self, on: bool) {
        // Relaxed: a lone setting, read once per connection.
        self.locality.store(u32::from(on), Ordering::Relaxed);
    }

    /// Whether locality is on.
    pub fn locality(&self) -> bool {
        self.locality.load(Ordering::Relaxed) != 0
    }

    /// The fine-filter policy in force; unknown values read as the default.
    pub fn policy(&self) -> FinePolicy {
        match self.policy.load(Ordering::Relaxed) {
            1 => FinePolicy::Hash,
            _ => FinePolicy::TwoChoices,
        }
    }
}

const _: () = assert!(size_of::<Control>() == 128 + 2 * 2 * (MAX_WORKERS + MAX_CPUS));
const _: () = assert!(std::mem::offset_of!(Control, publish_lock) == 64);
const _: () = assert!(std::mem::offset_of!(Control, lists) == 128);

#[cfg(test)]
#[path = "control_tests.rs"]
mod tests;
