//! [`Dispatch`]: how new connections reach this server's workers. Either the
//! Hermes program on the port's `SO_REUSEPORT` group (with its maps: the
//! socket array, the list of eligible workers and the counters), the
//! kernel's hash, or one shared listener in every worker's epoll set; and
//! the list's ownership, which a successor takes over.

use std::{
    io,
    net::SocketAddr,
    sync::{Arc, Mutex, MutexGuard},
};

use hermes_bpf::{
    ControlRegion, CounterRegion, Counters, Dispatcher, Region, layout::ListWriter, monotonic_ns,
};

use super::{selfcheck::SelfCheck, workers::Workers};
use crate::config::Mode;

/// How new connections are placed, with what each way needs.
pub(crate) enum Placer {
    /// The Hermes program places them (falling back per connection,
    /// counted); the program's counters. Boxed: the loader is large beside
    /// the other ways.
    Program { dispatcher: Box<Mutex<Dispatcher>>, counters: CounterRegion },
    /// The kernel's hash places them; why, when Hermes was asked for.
    Hash { reason: Option<String> },
    /// One listener, in every worker's epoll set with `EPOLLEXCLUSIVE`.
    SharedListener(Arc<std::net::TcpListener>),
}

/// How new connections reach this server's workers (see the module).
pub(crate) struct Dispatch {
    /// The address every worker listens on (port resolved).
    pub(crate) addr: SocketAddr,
    placer: Placer,
    /// The list of eligible workers and the program's settings: the
    /// kernel's control map in Hermes mode, process memory otherwise.
    control: ControlRegion,
    /// The first slot of this server's workers in the kernel's socket array,
    /// table and counters (0, unless it took over from a running server
    /// whose workers use the first slots).
    pub(crate) slot_base: usize,
    /// This server's token in the control map's owner field: only the owner
    /// publishes lists.
    owner: u64,
    /// Whether the program still sees the connections (Hermes mode).
    pub(crate) selfcheck: SelfCheck,
    /// The control map of the server this successor replaces, when this
    /// one runs a program of its own (with maps of its own): the takeover
    /// attaches this server's program and takes the list's ownership there
    /// too, so that the replaced server knows it no longer places
    /// connections.
    previous: Option<ControlRegion>,
}

impl Dispatch {
    /// Dispatch by `placer` on `addr`, for workers at `slot_base..`. Outside
    /// Hermes mode the control map is process memory this server owns.
    pub(crate) fn new(addr: SocketAddr, placer: Placer, slot_base: usize) -> Self {
        let control = match &placer {
            Placer::Program { dispatcher, .. } => lock(dispatcher).control().clone(),
            _ => Arc::new(Region::in_memory(1)),
        };
        let owner = new_owner_token();
        if !matches!(placer, Placer::Program { .. }) {
            // Process memory: nobody else publishes there.
            control[0].claim(owner);
        }
        Self { addr, placer, control, slot_base, owner, selfcheck: SelfCheck::default(), previous: None }
    }

    /// This successor runs its own program: `previous` is the control map
    /// of the server it replaces (see the field).
    pub(crate) fn replacing_program_of(mut self, previous: ControlRegion) -> Self {
        self.previous = Some(previous);
        self
    }

    /// Whether this successor runs its own program rather than the one of
    /// the server it replaces.
    pub(crate) fn runs_own_program(&self) -> bool {
        self.previous.is_some()
    }

    /// The mode this server was started in.
    pub(crate) fn mode(&self) -> Mode {
        match self.placer {
            Placer::Program { .. } => Mode::Hermes,
            Placer::Hash { .. } => Mode::KernelHash,
            Placer::SharedListener(_) => Mode::SharedListener,
        }
    }

    /// Why the server is in the kernel's hash though Hermes was asked for.
    pub(crate) fn fallback_reason(&self) -> Option<&str> {
        match &self.placer {
            Placer::Hash { reason } => reason.as_deref(),
            _ => None,
        }
    }

    /// The mode in force and its reason: [`Mode::KernelHash`] with
    /// [`SelfCheck::LOST`] while the self-check finds the program not
    /// running.
    pub(crate) fn current_mode(&self) -> (Mode, Option<&str>) {
        if self.selfcheck.is_lost() {
            (Mode::KernelHash, Some(SelfCheck::LOST))
        } else {
            (self.mode(), self.fallback_reason())
        }
    }

    /// The program, in Hermes mode.
    pub(crate) fn dispatcher(&self) -> Option<MutexGuard<'_, Dispatcher>> {
        match &self.placer {
            Placer::Program { dispatcher, .. } => Some(lock(dispatcher)),
            _ => None,
        }
    }

    /// The program's counters, in Hermes mode.
    pub(crate) fn counters(&self) -> Option<&CounterRegion> {
        match &self.placer {
            Placer::Program { counters, .. } => Some(counters),
            _ => None,
        }
    }

    /// A read of the program's counters, in Hermes mode.
    pub(crate) fn read_counters(&self) -> Option<Counters> {
        self.counters().map(|c| Counters::read(c))
    }

    /// The listener every worker shares, in the shared-listener mode.
    pub(crate) fn shared_listener(&self) -> Option<&Arc<std::net::TcpListener>> {
        match &self.placer {
            Placer::SharedListener(l) => Some(l),
            _ => None,
        }
    }

    /// The control map: the list, its time and the program's settings.
    pub(crate) fn control(&self) -> &hermes_bpf::layout::Control {
        &self.control[0]
    }

    /// Places `listener` in worker `id`'s slot of the socket array (Hermes
    /// mode; nothing to do otherwise).
    pub(crate) fn insert(&self, id: usize, listener: &impl std::os::fd::AsRawFd) -> io::Result<()> {
        match self.dispatcher() {
            Some(mut d) => d.insert(id, listener).map_err(bpf_error),
            None => Ok(()),
        }
    }

    /// Attaches the program again through the first worker listener found
    /// open (Hermes mode).
    pub(crate) fn reattach(&self, workers: &Workers) {
        let Some(d) = self.dispatcher() else { return };
        for control in workers.iter() {
            let done = control.with_listener(|fd| d.attach(&fd));
            match done {
                Some(Ok(())) => return,
                Some(Err(e)) => tracing::error!(error = %e, "attaching the dispatch program again"),
                None => {}
            }
        }
    }

    /// Whether this server publishes the list (a server whose maps a
    /// successor took over does not, nor does it attach its program again).
    pub(crate) fn owns_list(&self) -> bool {
        self.control().owner() == self.owner
    }

    /// Makes this server the maps' owner (it created them, before the
    /// first publish).
    pub(crate) fn claim(&self) {
        self.control().claim(self.owner);
    }

    /// Makes this server the maps' owner and publishes the list `fill`
    /// writes (in slots) at once. A publish lock that its holder kept past
    /// the patience, or left behind when it died, is taken from it: logged
    /// and counted (`hermes_publish_lock_taken_total`).
    pub(crate) fn take_over(&self, fill: impl FnOnce(&mut ListWriter<'_>)) {
        let now = monotonic_ns();
        // The replaced server's list: ours from now on, and empty (its
        // program no longer runs once ours is attached).
        let previous = self.previous.as_ref().and_then(|p| p[0].take_over(self.owner, now, 0, |_| {}));
        let stolen = self.control().take_over(self.owner, now, self.slot_base, fill);
        for s in [previous, stolen].into_iter().flatten() {
            tracing::warn!(
                holder = s.holder,
                holder_exited = s.exited,
                waited = ?s.waited,
                "taking over the list of eligible workers: the publish lock was held by pid {} ({}); taken from it",
                s.holder,
                if s.exited { "exited while holding it" } else { "held past the patience" }
            );
            metrics::counter!("hermes_publish_lock_taken_total").increment(1);
        }
    }

    /// Publishes the list `fill` writes (in slots), stamped `now_ns`, as
    /// worker `publisher`, while this server owns the maps and no newer
    /// list is in place.
    pub(crate) fn publish(&self, now_ns: u64, publisher: usize, fill: impl FnOnce(&mut ListWriter<'_>)) {
        self.control().publish_as(Some(self.owner), now_ns, self.slot_base + publisher, fill);
    }

    /// The workers (ids) of the list in force, in list order; none once a
    /// successor owns the list.
    pub(crate) fn eligible(&self) -> impl Iterator<Item = usize> + '_ {
        let base = self.slot_base;
        let owned = self.owns_list();
        self.control().eligible().filter(move |_| owned).filter_map(move |slot| slot.checked_sub(base))
    }

    /// Whether worker `id` is in the list in force (O(list)).
    pub(crate) fn is_eligible(&self, id: usize) -> bool {
        self.owns_list() && self.control().eligible().any(|slot| slot == self.slot_base + id)
    }
}

/// A token no other server holds: the pid and the start time.
fn new_owner_token() -> u64 {
    (u64::from(std::process::id()) << 32) | (monotonic_ns() & 0xffff_ffff) | 1
}

/// The program's lock, whatever a panicking holder left.
fn lock(d: &Mutex<Dispatcher>) -> MutexGuard<'_, Dispatcher> {
    d.lock().unwrap_or_else(|e| e.into_inner())
}

/// A kernel-side error as an `io::Error` (`PermissionDenied` without CAP_BPF).
pub(crate) fn bpf_error(e: hermes_bpf::Error) -> io::Error {
    let kind = match &e {
        hermes_bpf::Error::MissingCapability { .. } => io::ErrorKind::PermissionDenied,
        _ => io::ErrorKind::Other,
    };
    io::Error::new(kind, e)
}
