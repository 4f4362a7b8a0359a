//! The kernel side of Hermes: an eBPF program attached to a `SO_REUSEPORT`
//! group that places each new connection on a worker chosen from a candidate
//! bitmap published by userspace, and the Rust loader that owns its maps.
//!
//! Modules:
//!
//! - [`layout`]: the `#[repr(C)]` mirrors of the program's maps, names and indexes;
//! - `region`: [`Region`], a map `mmap`ed into the process (or plain memory of the same layout);
//! - `error`: [`Error`], the loader's error;
//! - this file: [`Dispatcher`], the loader that owns the program and its maps.
//!
//! Userspace and the program share three `BPF_F_MMAPABLE` arrays, mapped
//! into this process so that publishing a bitmap, updating a worker's state
//! and reading the counters are plain memory operations, never syscalls:
//!
//! - [`layout::Control`]: the candidate bitmap, its publish time and the settings;
//! - [`layout::WorkerState`]: the Worker State Table, one cache line per worker;
//! - the counters: new connections placed per worker, fallbacks by reason, migrations.
//!
//! For each new connection the program falls back to the kernel's own hash
//! when the bitmap was never published or is older than the staleness limit,
//! when fewer than the minimum candidates are set, or when the chosen
//! workers have no listener; each fallback is counted by reason. When a
//! listener closes, its queued connections migrate to another worker.
//!
//! ```no_run
//! use std::net::TcpListener;
//! use hermes_bpf::{Dispatcher, monotonic_ns};
//!
//! # fn listeners() -> Vec<TcpListener> { vec![] }
//! let listeners: Vec<TcpListener> = listeners(); // SO_REUSEPORT, one per worker
//! let mut dispatcher = Dispatcher::load()?;
//! for (worker, listener) in listeners.iter().enumerate() {
//!     dispatcher.insert(worker, listener)?;
//! }
//! dispatcher.attach(&listeners[0])?;
//! dispatcher.settings().configure(1, 50_000_000, Default::default());
//! // Workers 0 and 2 take new connections.
//! dispatcher.settings().publish(0b101, monotonic_ns(), 0);
//! # Ok::<(), hermes_bpf::Error>(())
//! ```
#![deny(missing_docs)]

mod error;

/// Helpers for reporting loader errors, for the workspace's other loaders.
pub mod error_chain {
    pub use crate::error::{chain, os_error};
}
pub mod layout;
mod region;

use std::{
    fmt,
    os::fd::{AsFd, AsRawFd, OwnedFd},
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
};

use aya::{
    Ebpf, EbpfLoader,
    maps::{MapData, ReusePortSockArray},
    programs::SkReuseport,
};

pub use error::Error;
use layout::{COUNTERS_LEN, Control, LAYOUT_VERSION, MAX_WORKERS, WorkerState, counter};
pub use region::{LayoutMismatch, Region};

/// The compiled kernel program (`bpf/hermes.bpf.c`, rebuilt by `cargo xtask bpf`).
pub static OBJECT: &[u8] = aya::include_bytes_aligned!("../bpf/hermes.bpf.o");

/// `CLOCK_MONOTONIC` in nanoseconds: the clock of the program's
/// `bpf_ktime_get_ns()`, used for publish times and heartbeats.
pub fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: `ts` is a valid out-pointer; CLOCK_MONOTONIC always exists.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// The settings and bitmap region, shared by every scheduler.
pub type ControlRegion = Arc<Region<Control>>;
/// The Worker State Table, shared by every worker.
pub type WorkerTable = Arc<Region<WorkerState>>;
/// The counters region.
pub type CounterRegion = Arc<Region<AtomicU64>>;

/// How new connections are being placed on workers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DispatchMode {
    /// The Hermes program chooses (falling back per connection, counted).
    Ebpf,
    /// The kernel's `SO_REUSEPORT` hash chooses, for the reason given.
    KernelHash {
        /// Why the program is not in use.
        reason: String,
    },
}

impl fmt::Display for DispatchMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Ebpf => f.write_str("ebpf"),
            Self::KernelHash { reason } => write!(f, "kernel-hash ({reason})"),
        }
    }
}

/// A read of the program's counters.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Counters {
    /// New connections the program placed on each worker.
    pub dispatched: [u64; MAX_WORKERS],
    /// Connections left to the kernel hash because too few candidates were set.
    pub fallback_too_few: u64,
    /// Connections left to the kernel hash because the bitmap was stale or never published.
    pub fallback_stale: u64,
    /// Connections left to the kernel hash because the chosen slots had no listener.
    pub fallback_no_socket: u64,
    /// Queued connections of closing listeners that migrated.
    pub migrated: u64,
    /// Times the program ran.
    pub runs: u64,
    /// Connections placed on each worker since its accept queue was last sampled.
    pub recent: [u64; MAX_WORKERS],
}

impl Counters {
    /// Reads the counters region. Each value is read once with `Relaxed`:
    /// they are independent monotonic counts, and a read racing with the
    /// program may be one connection behind.
    pub fn read(region: &Region<AtomicU64>) -> Self {
        let get = |i: usize| region[i].load(Ordering::Relaxed);
        Self {
            dispatched: std::array::from_fn(get),
            fallback_too_few: get(counter::FALLBACK_TOO_FEW),
            fallback_stale: get(counter::FALLBACK_STALE),
            fallback_no_socket: get(counter::FALLBACK_NO_SOCKET),
            migrated: get(counter::MIGRATED),
            runs: get(counter::RUNS),
            recent: std::array::from_fn(|i| get(counter::RECENT + i)),
        }
    }

    /// Worker `worker`'s count of connections placed since its last
    /// accept-queue sample (0 for a worker beyond the map). Read it before
    /// sampling the queue, and hand it to [`Counters::consume_recent`] after
    /// storing the sample.
    pub fn recent(region: &Region<AtomicU64>, worker: usize) -> u64 {
        // Relaxed: a lone counter; the program adds to it atomically.
        region.get(counter::RECENT + worker).map_or(0, |c| c.load(Ordering::Relaxed))
    }

    /// Subtracts `seen` (a [`Counters::recent`] read taken before the queue
    /// sample now stored) from worker `worker`'s count: those placements are
    /// in the sample's queue or among its open connections now, while the
    /// ones the program made since the read stay counted. Zeroing instead
    /// would lose the placements made between the read and the store.
    /// Relaxed: the program's increments are atomic adds, and this is an
    /// atomic read-modify-write that never goes below zero.
    pub fn consume_recent(region: &Region<AtomicU64>, worker: usize, seen: u64) {
        if let Some(c) = region.get(counter::RECENT + worker) {
            let _ = c.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| Some(n.saturating_sub(seen)));
        }
    }

    /// Zeroes worker `worker`'s count of connections placed since its last
    /// accept-queue sample; call it right after storing a sample. Relaxed: a
    /// placement racing with the store may be lost from this count, and it
    /// is then in the next sample's queue or in the open connections.
    pub fn clear_recent(region: &Region<AtomicU64>, worker: usize) {
        if let Some(c) = region.get(counter::RECENT + worker) {
            c.store(0, Ordering::Relaxed);
        }
    }

    /// Connections the kernel hash placed, all reasons together.
    pub fn fallbacks(&self) -> u64 {
        self.fallback_too_few + self.fallback_stale + self.fallback_no_socket
    }
}

/// The kernel's run statistics of the dispatch program.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ProgramStats {
    /// Total nanoseconds spent in the program while statistics were enabled.
    pub run_time_ns: u64,
    /// Runs counted while statistics were enabled.
    pub run_count: u64,
}

/// The loaded dispatch program and its maps.
///
/// Place each worker's listener with [`Dispatcher::insert`], attach the
/// program to the group through any one listener with
/// [`Dispatcher::attach`], then steer with [`Control::publish`].
pub struct Dispatcher {
    program: Program,
    sockets: ReusePortSockArray<MapData>,
    fds: KernelFds,
    control: ControlRegion,
    table: WorkerTable,
    counters: CounterRegion,
    filled: u64,
    slot_base: usize,
}

/// The program: loaded by this process, or inherited from the server it
/// replaces (aya 0.14 cannot make an `SkReuseport` from a descriptor, so
/// an inherited one is kept as its descriptor and attached with
/// `setsockopt` directly).
enum Program {
    Loaded(Ebpf),
    Inherited,
}

/// Descriptors of the program and of every map, in the order a hand-over
/// sends them: what a successor needs to take the kernel state over.
#[derive(Debug)]
pub struct KernelFds {
    /// The settings and bitmap map ([`layout::CONTROL_MAP`]).
    pub control: OwnedFd,
    /// The Worker State Table map ([`layout::TABLE_MAP`]).
    pub table: OwnedFd,
    /// The counters map ([`layout::COUNTERS_MAP`]).
    pub counters: OwnedFd,
    /// The socket array ([`layout::SOCKETS_MAP`]).
    pub sockets: OwnedFd,
    /// The dispatch program.
    pub program: OwnedFd,
}

impl KernelFds {
    /// The descriptors in hand-over order.
    pub fn iter(&self) -> impl Iterator<Item = &OwnedFd> {
        [&self.control, &self.table, &self.counters, &self.sockets, &self.program].into_iter()
    }

    /// Takes five descriptors in the order [`KernelFds::iter`] gives them.
    pub fn from_fds(fds: [OwnedFd; 5]) -> Self {
        let [control, table, counters, sockets, program] = fds;
        Self { control, table, counters, sockets, program }
    }

    fn try_clone(&self) -> std::io::Result<Self> {
        Ok(Self {
            control: self.control.try_clone()?,
            table: self.table.try_clone()?,
            counters: self.counters.try_clone()?,
            sockets: self.sockets.try_clone()?,
            program: self.program.try_clone()?,
        })
    }
}

impl fmt::Debug for Dispatcher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Dispatcher").field("filled", &format_args!("{:#x}", self.filled)).finish()
    }
}

fn take_map(ebpf: &mut Ebpf, name: &'static str) -> Result<aya::maps::Map, Error> {
    ebpf.take_map(name).ok_or(Error::KernelRefused {
        what: "reading the embedded object",
        detail: format!("map `{name}` is missing"),
    })
}

fn map_region<T>(
    ebpf: &mut Ebpf,
    name: &'static str,
    len: usize,
) -> Result<(Arc<Region<T>>, OwnedFd), Error> {
    let map = take_map(ebpf, name)?;
    let aya::maps::Map::Array(data) = map else {
        return Err(Error::KernelRefused {
            what: "reading the embedded object",
            detail: format!("map `{name}` is not an array"),
        });
    };
    let fd = data.fd().as_fd().try_clone_to_owned().map_err(|source| Error::Mmap { map: name, source })?;
    // SAFETY: the map was declared in `bpf/hermes.bpf.c` as an mmapable array
    // of values laid out as `T` (checked by the layout test); `Region::map`
    // checks the value size and the entry count with the kernel.
    let region = map_fd::<T>(&fd, name, 0, len)?;
    Ok((region, fd))
}

/// Maps elements `first..first + len` of the map behind `fd`.
fn map_fd<T>(fd: &OwnedFd, name: &'static str, first: usize, len: usize) -> Result<Arc<Region<T>>, Error> {
    // SAFETY: `fd` is one of the program's mmapable arrays, whose values are
    // laid out as `T` (the layout test checks the object; an inherited map
    // is refused before this when its layout version differs);
    // `Region::map_range` checks the value size and the entry count.
    let region = unsafe { Region::map_range(fd, first, len) }.map_err(|source| {
        match source.get_ref().and_then(|e| e.downcast_ref::<LayoutMismatch>()) {
            Some(&LayoutMismatch { value_size, entries, want_size, want_entries }) => {
                Error::MapLayout { map: name, value_size, entries, want_size, want_entries }
            }
            None => Error::Mmap { map: name, source },
        }
    })?;
    Ok(Arc::new(region))
}

impl Dispatcher {
    /// Loads the embedded program and creates its maps.
    ///
    /// # Errors
    /// [`Error::MissingCapability`] without CAP_BPF; [`Error::KernelRefused`]
    /// when the kernel rejects the object or program.
    pub fn load() -> Result<Self, Error> {
        let mut ebpf =
            EbpfLoader::new().load(OBJECT).map_err(|e| error::classify("creating the maps", &e))?;
        let program: &mut SkReuseport = ebpf
            .program_mut(layout::PROGRAM_NAME)
            .ok_or(Error::KernelRefused {
                what: "reading the embedded object",
                detail: format!("program `{}` is missing", layout::PROGRAM_NAME),
            })?
            .try_into()
            .map_err(|e| error::classify("reading the program", &e))?;
        program.load().map_err(|e| error::classify("loading the program", &e))?;
        let program_fd = program
            .fd()
            .map_err(|e| error::classify("reading the program", &e))?
            .as_fd()
            .try_clone_to_owned()
            .map_err(|e| Error::KernelRefused { what: "reading the program", detail: e.to_string() })?;
        // Taken only now: the program's load resolves the maps through their fds.
        let (control, control_fd) = map_region::<Control>(&mut ebpf, layout::CONTROL_MAP, 1)?;
        let (table, table_fd) = map_region::<WorkerState>(&mut ebpf, layout::TABLE_MAP, MAX_WORKERS)?;
        let (counters, counters_fd) = map_region::<AtomicU64>(&mut ebpf, layout::COUNTERS_MAP, COUNTERS_LEN)?;
        let sockets_map = take_map(&mut ebpf, layout::SOCKETS_MAP)?;
        let sockets_fd = match &sockets_map {
            aya::maps::Map::ReusePortSockArray(data) => data.fd().as_fd().try_clone_to_owned().ok(),
            _ => None,
        };
        let sockets = ReusePortSockArray::try_from(sockets_map)
            .map_err(|e| error::classify("opening the socket array", &e))?;
        let sockets_fd = sockets_fd.ok_or_else(|| Error::KernelRefused {
            what: "opening the socket array",
            detail: "its descriptor could not be duplicated".into(),
        })?;
        control[0].set_layout_version(LAYOUT_VERSION);
        let fds = KernelFds {
            control: control_fd,
            table: table_fd,
            counters: counters_fd,
            sockets: sockets_fd,
            program: program_fd,
        };
        Ok(Self {
            program: Program::Loaded(ebpf),
            sockets,
            fds,
            control,
            table,
            counters,
            filled: 0,
            slot_base: 0,
        })
    }

    /// Takes over the program and maps of a running server (descriptors
    /// received in an upgrade), for a server whose workers use the slots
    /// `slot_base..` of the socket array, the Worker State Table and the
    /// per-worker counters: [`Dispatcher::table`] then starts at slot
    /// `slot_base`, and [`Dispatcher::insert`]'s worker `i` is slot
    /// `slot_base + i`. Nothing is reset: the counters carry on.
    ///
    /// # Errors
    /// [`Error::LayoutVersion`] when the maps were made by a server of
    /// another [`LAYOUT_VERSION`]; [`Error::MapLayout`] when a map's sizes do
    /// not fit this crate's mirrors; [`Error::Mmap`] when one cannot be
    /// mapped; [`Error::WorkerOutOfRange`] for a base beyond the table.
    pub fn inherit(fds: KernelFds, slot_base: usize) -> Result<Self, Error> {
        if slot_base >= MAX_WORKERS {
            return Err(Error::WorkerOutOfRange { worker: slot_base, max: MAX_WORKERS });
        }
        let control = map_fd::<Control>(&fds.control, layout::CONTROL_MAP, 0, 1)?;
        let found = control[0].layout_version();
        if found != LAYOUT_VERSION {
            return Err(Error::LayoutVersion { found, want: LAYOUT_VERSION });
        }
        let table = map_fd::<WorkerState>(&fds.table, layout::TABLE_MAP, slot_base, MAX_WORKERS - slot_base)?;
        let counters = map_fd::<AtomicU64>(&fds.counters, layout::COUNTERS_MAP, 0, COUNTERS_LEN)?;
        let sockets_data = MapData::from_fd(
            fds.sockets.try_clone().map_err(|source| Error::Mmap { map: layout::SOCKETS_MAP, source })?,
        )
        .map_err(|e| error::classify("opening the inherited socket array", &e))?;
        let sockets = ReusePortSockArray::try_from(aya::maps::Map::ReusePortSockArray(sockets_data))
            .map_err(|e| error::classify("opening the inherited socket array", &e))?;
        Ok(Self { program: Program::Inherited, sockets, fds, control, table, counters, filled: 0, slot_base })
    }

    /// Duplicates of the descriptors of the program and its maps, to hand
    /// to a successor ([`Dispatcher::inherit`]).
    pub fn export_fds(&self) -> std::io::Result<KernelFds> {
        self.fds.try_clone()
    }

    /// The first slot of this server's workers (0 unless inherited).
    pub fn slot_base(&self) -> usize {
        self.slot_base
    }

    /// Loads the program, or says why new connections will be placed by the
    /// kernel's hash instead. Logs the fallback once as a warning.
    pub fn load_or_fallback() -> (Option<Self>, DispatchMode) {
        match Self::load() {
            Ok(d) => (Some(d), DispatchMode::Ebpf),
            Err(e) => {
                tracing::warn!(error = %e, "Hermes dispatch unavailable; new connections use plain SO_REUSEPORT hashing");
                (None, DispatchMode::KernelHash { reason: e.to_string() })
            }
        }
    }

    /// The settings and bitmap, shared with the program.
    pub fn control(&self) -> &ControlRegion {
        &self.control
    }

    /// [`Control`] itself (the region's only entry).
    pub fn settings(&self) -> &Control {
        &self.control[0]
    }

    /// The Worker State Table the program's fine filter reads.
    pub fn table(&self) -> &WorkerTable {
        &self.table
    }

    /// The counters region.
    pub fn counter_region(&self) -> &CounterRegion {
        &self.counters
    }

    /// Reads the counters.
    pub fn counters(&self) -> Counters {
        Counters::read(&self.counters)
    }

    /// The kernel's run statistics of the program: total run time and run
    /// count. The kernel updates them only while statistics are enabled
    /// (`sysctl kernel.bpf_stats_enabled=1`, or [`aya::sys::enable_stats`]).
    ///
    /// # Errors
    /// [`Error::KernelRefused`] for a program inherited in an upgrade (aya
    /// 0.14 reads the statistics of programs it loaded only).
    pub fn program_stats(&self) -> Result<ProgramStats, Error> {
        let Program::Loaded(ebpf) = &self.program else {
            return Err(Error::KernelRefused {
                what: "reading the program's info",
                detail: "the program was inherited from the server this one replaced".into(),
            });
        };
        let info = ebpf
            .program(layout::PROGRAM_NAME)
            .map(|p| p.info())
            .expect("the program exists once loaded")
            .map_err(|e| error::classify("reading the program's info", &e))?;
        Ok(ProgramStats { run_time_ns: info.run_time().as_nanos() as u64, run_count: info.run_count() })
    }

    /// Bitmap of the worker slots that hold a listener.
    pub fn filled(&self) -> u64 {
        self.filled
    }

    fn check(worker: usize) -> Result<u32, Error> {
        if worker < MAX_WORKERS {
            Ok(worker as u32)
        } else {
            Err(Error::WorkerOutOfRange { worker, max: MAX_WORKERS })
        }
    }

    /// Places `listener` in slot `worker`, replacing what was there. The
    /// listener must belong to the group the program is (or will be) attached to.
    pub fn insert(&mut self, worker: usize, listener: &impl AsRawFd) -> Result<(), Error> {
        let slot = Self::check(worker)?;
        let slot = Self::check(slot as usize + self.slot_base)?;
        self.sockets.set(slot, listener, 0).map_err(|e| Error::Socket {
            what: "placing",
            worker,
            detail: error_chain(&e),
        })?;
        self.filled |= 1 << worker;
        Ok(())
    }

    /// Empties slot `worker`. Emptying an empty slot is not an error. Closing
    /// a listener empties its slot by itself.
    pub fn remove(&mut self, worker: usize) -> Result<(), Error> {
        let bit = Self::check(worker)?;
        let slot = Self::check(bit as usize + self.slot_base)?;
        if self.filled & (1 << bit) == 0 {
            return Ok(());
        }
        match self.sockets.clear_index(&slot) {
            Ok(()) => {}
            // The socket closed already: the kernel emptied the slot.
            Err(e) if error::os_error(&e).and_then(|io| io.raw_os_error()) == Some(libc::ENOENT) => {}
            Err(e) => {
                return Err(Error::Socket { what: "removing", worker, detail: error_chain(&e) });
            }
        }
        self.filled &= !(1 << bit);
        Ok(())
    }

    /// Attaches the program to the `SO_REUSEPORT` group of `listener` (the
    /// whole group: any member will do).
    pub fn attach(&self, listener: &impl AsFd) -> Result<(), Error> {
        let ebpf = match &self.program {
            Program::Loaded(ebpf) => ebpf,
            Program::Inherited => {
                let prog = self.fds.program.as_raw_fd();
                // SAFETY: plain setsockopt with an int-sized value; both
                // descriptors are open for the call.
                let ret = unsafe {
                    libc::setsockopt(
                        listener.as_fd().as_raw_fd(),
                        libc::SOL_SOCKET,
                        libc::SO_ATTACH_REUSEPORT_EBPF,
                        (&raw const prog).cast(),
                        size_of::<libc::c_int>() as libc::socklen_t,
                    )
                };
                if ret != 0 {
                    return Err(Error::Attach {
                        what: "attaching",
                        detail: std::io::Error::last_os_error().to_string(),
                    });
                }
                return Ok(());
            }
        };
        let program: &SkReuseport = ebpf
            .program(layout::PROGRAM_NAME)
            .and_then(|p| p.try_into().ok())
            .expect("the program was loaded as SkReuseport in Dispatcher::load");
        program.attach(listener).map_err(|e| Error::Attach { what: "attaching", detail: error_chain(&e) })
    }

    /// Detaches whatever program the group of `listener` has; the kernel hash
    /// places new connections from then on.
    pub fn detach(listener: &impl AsFd) -> Result<(), Error> {
        SkReuseport::detach(listener)
            .map_err(|e| Error::Attach { what: "detaching", detail: error_chain(&e) })
    }
}

fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    error::chain(e)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The real maps, created by the kernel from the embedded object: a Rust
    /// mirror of the wrong size, or more entries than the map has, is
    /// refused before anything is mapped.
    #[test]
    fn ebpf_mapping_checks_value_size_and_entries_with_the_kernel() {
        let mut ebpf = match EbpfLoader::new().load(OBJECT) {
            Ok(e) => e,
            Err(e) if std::env::var("HERMES_REQUIRE_BPF").as_deref() == Ok("1") => {
                panic!("HERMES_REQUIRE_BPF=1 but the maps could not be created: {e}")
            }
            Err(e) => {
                eprintln!(
                    "\n*** SKIPPED ebpf_mapping_checks_value_size_and_entries_with_the_kernel: {e} ***\n"
                );
                return;
            }
        };
        // The counters hold u64 values: a 64-byte `Control` does not fit.
        let err = map_region::<Control>(&mut ebpf, layout::COUNTERS_MAP, 1).unwrap_err();
        assert!(
            matches!(err, Error::MapLayout { value_size: 8, want_size: 64, .. }),
            "wrong value size refused: {err:?}"
        );
        assert!(err.to_string().contains("hermes_counters"), "the message names the map: {err}");
        // One entry more than the table has.
        let err = map_region::<WorkerState>(&mut ebpf, layout::TABLE_MAP, MAX_WORKERS + 1).unwrap_err();
        assert!(
            matches!(err, Error::MapLayout { entries: MAX_WORKERS, want_entries, .. } if want_entries == MAX_WORKERS + 1),
            "too many entries refused: {err:?}"
        );
        // The right mirror maps.
        let (control, _) = map_region::<Control>(&mut ebpf, layout::CONTROL_MAP, 1).unwrap();
        assert!(control.is_kernel_map());
    }
}
