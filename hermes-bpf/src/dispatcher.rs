//! The loader of the dispatch program: [`Dispatcher`] loads the embedded
//! object (or takes over the program and maps of the server it replaces),
//! maps the program's arrays, fills the socket array with the workers'
//! listeners and attaches the program to their `SO_REUSEPORT` group;
//! [`DispatchMode`] is what loading gave: the program, or why the kernel's
//! hash places connections instead.

use std::{
    fmt,
    os::fd::{AsFd, AsRawFd},
    sync::atomic::AtomicU64,
};

use aya::{
    Ebpf, EbpfLoader,
    maps::{MapData, ReusePortSockArray},
    programs::SkReuseport,
};

use crate::{
    ControlRegion, CounterRegion, Counters, KernelFds, OBJECT, ProgramStats, WorkerTable,
    error::{self, Error},
    layout::{self, Control, DEFAULT_SLOTS, LAYOUT_VERSION, MAX_SLOTS, WorkerState, counter, slots_for},
    mapping::{map_entries, map_fd, map_region, take_map},
};

/// How new connections will be placed on workers: by the loaded program,
/// or by the kernel's hash because the program could not be loaded (made
/// by [`Dispatcher::load_or_fallback`]). There is no program without the
/// dispatcher that holds it, nor a fallback without its reason.
#[derive(Debug)]
pub enum DispatchMode {
    /// The Hermes program chooses (falling back per connection, counted).
    Ebpf(Box<Dispatcher>),
    /// The kernel's `SO_REUSEPORT` hash chooses, because loading failed so.
    KernelHash {
        /// Why the program is not in use.
        reason: Error,
    },
}

impl fmt::Display for DispatchMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Ebpf(_) => f.write_str("ebpf"),
            Self::KernelHash { reason } => write!(f, "kernel-hash ({reason})"),
        }
    }
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
    /// Whether each of this server's workers has a listener in its slot.
    filled: Vec<bool>,
    slot_base: usize,
    /// The slots of the maps (table, counters' per-slot pairs, socket array).
    slots: usize,
}

/// The program: loaded by this process, or inherited from the server it
/// replaces (aya 0.14 cannot make an `SkReuseport` from a descriptor, so
/// an inherited one is kept as its descriptor and attached with
/// `setsockopt` directly).
enum Program {
    /// Loaded from the embedded object: the object and the program's name.
    Loaded(Ebpf, &'static str),
    Inherited,
}

impl fmt::Debug for Dispatcher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Dispatcher")
            .field("slots", &self.slots)
            .field("slot_base", &self.slot_base)
            .field("filled", &self.filled.iter().filter(|&&f| f).count())
            .finish()
    }
}

impl Dispatcher {
    /// Loads the embedded program and creates its maps at their smallest
    /// size ([`DEFAULT_SLOTS`] slots: a server of up to 32 workers and its
    /// successor). [`Dispatcher::load_for`] sizes them for a server.
    ///
    /// # Errors
    /// As [`Dispatcher::load_for`].
    pub fn load() -> Result<Self, Error> {
        Self::load_for(DEFAULT_SLOTS / 2)
    }

    /// Loads the embedded program and creates its maps for a server of
    /// `workers` workers: [`slots_for`] slots in the table, the counters and
    /// the socket array (room for the server and a successor of as many
    /// workers in an upgrade), one list of eligible workers.
    ///
    /// # Errors
    /// [`Error::MissingCapability`] without CAP_BPF; [`Error::KernelRefused`]
    /// when the kernel rejects the object or program;
    /// [`Error::WorkerOutOfRange`] for more than
    /// [`MAX_WORKERS`](layout::MAX_WORKERS) workers.
    pub fn load_for(workers: usize) -> Result<Self, Error> {
        Self::load_program_for(layout::PROGRAM_NAME, workers)
    }

    /// [`Dispatcher::load_for`] with program `name` of the embedded object
    /// (of the same maps) instead of [`layout::PROGRAM_NAME`]: for the
    /// kernel cost bench's floor ([`layout::FLOOR_PROGRAM_NAME`]) and for
    /// tests of a server whose program differs from another's.
    ///
    /// # Errors
    /// As [`Dispatcher::load_for`]; [`Error::KernelRefused`] when the
    /// object has no such program.
    pub fn load_program_for(name: &'static str, workers: usize) -> Result<Self, Error> {
        if workers > layout::MAX_WORKERS {
            return Err(Error::WorkerOutOfRange { worker: workers, max: layout::MAX_WORKERS });
        }
        let slots = slots_for(workers);
        let mut ebpf = EbpfLoader::new()
            .map_max_entries(layout::TABLE_MAP, slots as u32)
            .map_max_entries(layout::COUNTERS_MAP, counter::len(slots) as u32)
            .map_max_entries(layout::SOCKETS_MAP, slots as u32)
            .load(OBJECT)
            .map_err(|e| error::classify("creating the maps", &e))?;
        let program: &mut SkReuseport = ebpf
            .program_mut(name)
            .ok_or(Error::KernelRefused {
                what: "reading the embedded object",
                detail: format!("program `{name}` is missing"),
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
        let (table, table_fd) = map_region::<WorkerState>(&mut ebpf, layout::TABLE_MAP, slots)?;
        let (counters, counters_fd) =
            map_region::<AtomicU64>(&mut ebpf, layout::COUNTERS_MAP, counter::len(slots))?;
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
            program: Program::Loaded(ebpf, name),
            sockets,
            fds,
            control,
            table,
            counters,
            filled: vec![false; slots],
            slot_base: 0,
            slots,
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
        let control = map_fd::<Control>(&fds.control, layout::CONTROL_MAP, 0, 1)?;
        let found = control[0].layout_version();
        if found != LAYOUT_VERSION {
            return Err(Error::LayoutVersion { found, want: LAYOUT_VERSION });
        }
        let slots = Self::inherited_slots(&fds)?;
        if slot_base >= slots {
            return Err(Error::WorkerOutOfRange { worker: slot_base, max: slots });
        }
        let table = map_fd::<WorkerState>(&fds.table, layout::TABLE_MAP, slot_base, slots - slot_base)?;
        let counters = map_fd::<AtomicU64>(&fds.counters, layout::COUNTERS_MAP, 0, counter::len(slots))?;
        let sockets_data = MapData::from_fd(
            fds.sockets.try_clone().map_err(|source| Error::Mmap { map: layout::SOCKETS_MAP, source })?,
        )
        .map_err(|e| error::classify("opening the inherited socket array", &e))?;
        let sockets = ReusePortSockArray::try_from(aya::maps::Map::ReusePortSockArray(sockets_data))
            .map_err(|e| error::classify("opening the inherited socket array", &e))?;
        Ok(Self {
            program: Program::Inherited,
            sockets,
            fds,
            control,
            table,
            counters,
            filled: vec![false; slots - slot_base],
            slot_base,
            slots,
        })
    }

    /// The slots of maps received in an upgrade (the table's entries; the
    /// socket array must have as many).
    ///
    /// # Errors
    /// [`Error::MapLayout`] when the socket array's size differs from the
    /// table's or is beyond [`MAX_SLOTS`]; the kernel's error when the maps
    /// cannot be read.
    pub fn inherited_slots(fds: &KernelFds) -> Result<usize, Error> {
        let slots = map_entries(&fds.table, layout::TABLE_MAP)?;
        let sockets = map_entries(&fds.sockets, layout::SOCKETS_MAP)?;
        if sockets != slots || slots > MAX_SLOTS {
            return Err(Error::MapLayout {
                map: layout::SOCKETS_MAP,
                value_size: size_of::<u32>(),
                entries: sockets,
                want_size: size_of::<u32>(),
                want_entries: slots.min(MAX_SLOTS),
            });
        }
        Ok(slots)
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

    /// The slots of the maps (every server's that shares them).
    pub fn slots(&self) -> usize {
        self.slots
    }

    /// Loads the program for a server of `workers` workers
    /// ([`Dispatcher::load_for`]), or says why new connections will be
    /// placed by the kernel's hash instead. Logs the fallback once as a
    /// warning.
    pub fn load_or_fallback(workers: usize) -> DispatchMode {
        match Self::load_for(workers) {
            Ok(d) => DispatchMode::Ebpf(Box::new(d)),
            Err(e) => {
                tracing::warn!(error = %e, "Hermes dispatch unavailable; new connections use plain SO_REUSEPORT hashing");
                DispatchMode::KernelHash { reason: e }
            }
        }
    }

    /// The settings and list, shared with the program.
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
        let Program::Loaded(ebpf, name) = &self.program else {
            return Err(Error::KernelRefused {
                what: "reading the program's info",
                detail: "the program was inherited from the server this one replaced".into(),
            });
        };
        let info = ebpf
            .program(name)
            .map(|p| p.info())
            .expect("the program exists once loaded")
            .map_err(|e| error::classify("reading the program's info", &e))?;
        Ok(ProgramStats::from(&info))
    }

    /// Whether worker `worker` (slot `slot_base + worker`) holds a listener.
    pub fn is_filled(&self, worker: usize) -> bool {
        self.filled.get(worker).copied().unwrap_or(false)
    }

    /// The slot of worker `worker`, when the maps have it.
    fn check(&self, worker: usize) -> Result<u32, Error> {
        if worker < self.filled.len() {
            Ok((self.slot_base + worker) as u32)
        } else {
            Err(Error::WorkerOutOfRange { worker, max: self.filled.len() })
        }
    }

    /// Places `listener` in worker `worker`'s slot, replacing what was
    /// there. The listener must belong to the group the program is (or will
    /// be) attached to.
    pub fn insert(&mut self, worker: usize, listener: &impl AsRawFd) -> Result<(), Error> {
        let slot = self.check(worker)?;
        self.sockets.set(slot, listener, 0).map_err(|e| Error::Socket {
            what: "placing",
            worker,
            detail: error_chain(&e),
        })?;
        self.filled[worker] = true;
        Ok(())
    }

    /// Empties worker `worker`'s slot. Emptying an empty slot is not an
    /// error. Closing a listener empties its slot by itself.
    pub fn remove(&mut self, worker: usize) -> Result<(), Error> {
        let slot = self.check(worker)?;
        if !self.filled[worker] {
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
        self.filled[worker] = false;
        Ok(())
    }

    /// Attaches the program to the `SO_REUSEPORT` group of `listener` (the
    /// whole group: any member will do), replacing the group's program if
    /// it has one. By its descriptor, loaded or inherited alike (aya 0.14
    /// cannot make an `SkReuseport` of an inherited one).
    pub fn attach(&self, listener: &impl AsFd) -> Result<(), Error> {
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
        Ok(())
    }

    /// The kernel's tag of the program (a hash of its instructions, the
    /// same for the same program whatever maps it uses): a successor
    /// compares its own program's with the one it was offered.
    ///
    /// # Errors
    /// As [`KernelFds::program_tag`].
    pub fn program_tag(&self) -> Result<u64, Error> {
        self.fds.program_tag()
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
