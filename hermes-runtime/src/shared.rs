//! [`Shared`]: the state the workers, the handle and the stats share (the
//! Worker State Table, the kernel's maps, each worker's control), how it is
//! opened from a [`Config`], and what any worker does with it every tick:
//! the scheduler pass and the accept-queue sample.

use std::{
    cell::RefCell,
    io,
    net::SocketAddr,
    os::fd::{AsRawFd, BorrowedFd},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering},
    },
    time::Duration,
};

use hermes_bpf::{
    ControlRegion, CounterRegion, Counters, DispatchMode, Dispatcher, Region, WorkerTable,
    layout::{MAX_WORKERS, WorkerPhase},
    monotonic_ns,
};

use crate::{
    config::{Config, Mode},
    control::WorkerControl,
    placement::Placement,
    scheduler::{self, PassInput},
    sys,
    upgrade::{self, Inherited, UpgradeError},
};

/// State shared by the workers, the handle and the stats handler.
pub(crate) struct Shared {
    pub(crate) config: Config,
    pub(crate) mode: Mode,
    pub(crate) mode_reason: Option<String>,
    pub(crate) addr: SocketAddr,
    pub(crate) table: WorkerTable,
    pub(crate) control: ControlRegion,
    pub(crate) counters: Option<CounterRegion>,
    pub(crate) dispatcher: Option<Mutex<Dispatcher>>,
    pub(crate) workers: Box<[Arc<WorkerControl>]>,
    pub(crate) shared_listener: Option<Arc<std::net::TcpListener>>,
    pub(crate) cpus: Vec<usize>,
    pub(crate) placement: Arc<Placement>,
    /// The first slot of this server's workers in the kernel's socket array,
    /// table, counters and bitmap (0, unless it took over from a running
    /// server whose workers use the first slots).
    pub(crate) slot_base: usize,
    /// This server's token in the control map's owner field: only the owner
    /// publishes bitmaps.
    pub(crate) owner: u64,
    /// What a successor inherited, until its workers serve and it takes over.
    pub(crate) handover: Mutex<Option<Inherited>>,
    /// Set while an upgrade is in progress, and for good once one succeeded.
    pub(crate) upgrading: AtomicBool,
    /// Workers that reached `Serving` at least once. No bitmap is published
    /// before every worker has: a bitmap of the first workers up would send
    /// the first burst of connections to them alone, while the kernel's hash
    /// (what an unpublished bitmap means) spreads it over every listener.
    started: AtomicUsize,
    /// `CLOCK_MONOTONIC` nanoseconds of the last accept-queue sample.
    sampled_ns: AtomicU64,
    /// The dispatch self-check's last reading (see [`Shared::check_dispatch`]).
    dispatch_check: Mutex<DispatchCheck>,
    /// Whether the self-check found the program not running, and has not
    /// seen it place a connection since.
    dispatch_lost: AtomicBool,
    /// How many times the self-check found the program not running.
    dispatch_losses: AtomicU64,
}

/// The reason [`Shared::current_mode`] gives while the dispatch program is
/// found not running.
pub(crate) const DISPATCH_LOST: &str = "the dispatch program stopped seeing new connections (its SO_REUSEPORT \
     group lost it, or another program was attached to the group); re-attached, kernel hash until it places \
     connections again";

/// How often the dispatch self-check compares `accepted` with the program's runs.
const DISPATCH_CHECK_NS: u64 = 100_000_000;

/// One reading of the dispatch self-check.
#[derive(Default)]
struct DispatchCheck {
    at_ns: u64,
    accepted: u64,
    runs: u64,
    /// Connections placed but perhaps not accepted yet at that reading
    /// (accept queues and placements since their sample).
    pending: u64,
}

fn bpf_error(e: hermes_bpf::Error) -> io::Error {
    let kind = match &e {
        hermes_bpf::Error::MissingCapability { .. } => io::ErrorKind::PermissionDenied,
        _ => io::ErrorKind::Other,
    };
    io::Error::new(kind, e)
}

impl Shared {
    /// Loads the kernel program (or falls back), binds every listener and
    /// places them in the kernel's socket array. Returns the shared state
    /// and one listener per worker (`None` in the shared-listener mode).
    pub(crate) fn open(config: Config) -> io::Result<(Arc<Self>, Vec<Option<std::net::TcpListener>>)> {
        if config.upgrade_from_env
            && let Some(channel) = upgrade::channel_from_env()?
        {
            return Self::open_successor(config, channel);
        }
        let n = config.workers;
        let (dispatcher, mode, mode_reason) = match config.mode {
            Mode::Hermes if config.require_ebpf => {
                (Some(Dispatcher::load().map_err(bpf_error)?), Mode::Hermes, None)
            }
            Mode::Hermes => match Dispatcher::load_or_fallback() {
                (Some(d), _) => (Some(d), Mode::Hermes, None),
                (None, DispatchMode::KernelHash { reason }) => (None, Mode::KernelHash, Some(reason)),
                (None, DispatchMode::Ebpf) => (None, Mode::KernelHash, Some("unknown".into())),
            },
            other => (None, other, None),
        };
        let table = dispatcher
            .as_ref()
            .map_or_else(|| Arc::new(Region::in_memory(MAX_WORKERS)), |d| d.table().clone());
        let control =
            dispatcher.as_ref().map_or_else(|| Arc::new(Region::in_memory(1)), |d| d.control().clone());
        let counters = dispatcher.as_ref().map(|d| d.counter_region().clone());
        for slot in table.iter().take(n) {
            slot.reset();
            slot.set_phase(WorkerPhase::Starting);
        }
        // The kernel honours any non-empty bitmap: the scheduler itself keeps
        // `min_candidates` when enough healthy workers exist, and a bitmap
        // without the hung workers beats the hash, which would include them.
        control[0].configure(1, config.max_stale.as_nanos() as u64, config.fine_policy);

        // Never join a group this server did not create (its program would
        // be replaced by ours). The probe and the first bind are a few
        // microseconds apart; a server started in between joins our group.
        let activated = if config.socket_activation { sys::listen_fds()? } else { None };
        if activated.is_none() {
            sys::refuse_taken_port(config.addr)?;
        }
        let mut listeners = Vec::with_capacity(n);
        let mut shared_listener = None;
        let addr;
        if let Some(passed) = activated {
            // Socket activation: the passed listeners serve the first
            // workers; the others bind their own into the same group.
            if mode == Mode::SharedListener || passed.len() > n {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidInput,
                    format!(
                        "socket activation passed {} listeners to a server of {n} workers in mode {mode}; \
                         it takes at most one per worker, in mode hermes or kernel-hash",
                        passed.len()
                    ),
                ));
            }
            addr = passed[0].local_addr()?;
            tracing::info!(%addr, passed = passed.len(), workers = n, "socket activation: serving on the passed listeners");
            listeners.extend(passed.into_iter().map(Some));
            while listeners.len() < n {
                listeners.push(Some(sys::listener(addr, true, config.backlog)?));
            }
        } else if mode == Mode::SharedListener {
            let l = sys::listener(config.addr, false, config.backlog)?;
            addr = l.local_addr()?;
            shared_listener = Some(Arc::new(l));
            listeners.resize_with(n, || None);
        } else {
            let first = sys::listener(config.addr, true, config.backlog)?;
            addr = first.local_addr()?;
            listeners.push(Some(first));
            for _ in 1..n {
                listeners.push(Some(sys::listener(addr, true, config.backlog)?));
            }
        }
        let dispatcher = match dispatcher {
            Some(mut d) => {
                for (i, l) in listeners.iter().enumerate() {
                    d.insert(i, l.as_ref().expect("bound above")).map_err(bpf_error)?;
                }
                d.attach(listeners[0].as_ref().expect("bound above")).map_err(bpf_error)?;
                Some(Mutex::new(d))
            }
            None => None,
        };
        let owner = new_owner_token();
        control[0].claim(owner);
        let shared = Self::assemble(config, mode, mode_reason, addr, table, control, counters, dispatcher);
        let shared = Self { shared_listener, owner, ..shared };
        Ok((Arc::new(shared), listeners))
    }

    /// The successor's side of an upgrade: receives the running server's
    /// offer on `channel`, takes its maps over (or refuses the hand-over,
    /// telling the running server why), binds this server's listeners into
    /// the running server's group and places them in free slots. The
    /// takeover itself happens once the workers serve
    /// ([`Shared::complete_handover`]).
    fn open_successor(
        config: Config,
        channel: std::os::fd::OwnedFd,
    ) -> io::Result<(Arc<Self>, Vec<Option<std::net::TcpListener>>)> {
        let n = config.workers;
        let (inherited, kernel) = upgrade::receive(channel, Duration::from_secs(10)).map_err(|(ch, e)| {
            upgrade::refuse(&ch, &e);
            io::Error::from(e)
        })?;
        let offer = inherited.offer.clone();
        let opened = (|| -> Result<_, UpgradeError> {
            // The running server's effective mode decides: a Hermes successor
            // of a server that fell back to the kernel's hash runs with the
            // hash too, unless it requires the program.
            let mode = match (config.mode, offer.mode) {
                (Mode::Hermes, Mode::KernelHash) if !config.require_ebpf => Mode::KernelHash,
                (m, _) => m,
            };
            upgrade::check_offer(&offer, mode)?;
            let base = if kernel.is_some() {
                upgrade::successor_base(offer.slot_base, offer.workers, n)?
            } else {
                0
            };
            let mut dispatcher = match kernel {
                Some(k) => Some(Dispatcher::inherit(k, base).map_err(|e| match e {
                    hermes_bpf::Error::LayoutVersion { found, want } => {
                        UpgradeError::LayoutVersion { found, want }
                    }
                    other => UpgradeError::Mismatch(other.to_string()),
                })?),
                None => None,
            };
            let addr = inherited.listeners[0]
                .local_addr()
                .map_err(|e| UpgradeError::io("reading the inherited listener's address", e))?;
            if config.addr.port() != 0 && config.addr != addr {
                return Err(UpgradeError::Mismatch(format!(
                    "the running server listens on {addr}, this one is set to {}",
                    config.addr
                )));
            }
            // These join the inherited listeners' group (same address,
            // SO_REUSEPORT, same user), and with it the group's program.
            let mut listeners = Vec::with_capacity(n);
            for i in 0..n {
                let l = sys::listener(addr, true, config.backlog)
                    .map_err(|e| UpgradeError::io("binding the successor's listeners", e))?;
                if let Some(d) = &mut dispatcher {
                    d.insert(i, &l).map_err(|e| UpgradeError::Mismatch(e.to_string()))?;
                }
                listeners.push(Some(l));
            }
            Ok((mode, base, dispatcher, addr, listeners))
        })();
        let (mode, base, dispatcher, addr, listeners) = match opened {
            Ok(v) => v,
            Err(e) => {
                tracing::error!(error = %e, old = offer.pid, "upgrade: refusing the hand-over");
                upgrade::refuse(&inherited.channel, &e);
                return Err(e.into());
            }
        };
        let table = dispatcher
            .as_ref()
            .map_or_else(|| Arc::new(Region::in_memory(MAX_WORKERS)), |d| d.table().clone());
        let control =
            dispatcher.as_ref().map_or_else(|| Arc::new(Region::in_memory(1)), |d| d.control().clone());
        let counters = dispatcher.as_ref().map(|d| d.counter_region().clone());
        for slot in table.iter().take(n) {
            slot.reset();
            slot.set_phase(WorkerPhase::Starting);
        }
        if let Some(c) = &counters {
            for id in 0..n {
                Counters::clear_recent(c, base + id);
            }
        }
        // The kernel honours any non-empty bitmap (see `open`).
        control[0].configure(1, config.max_stale.as_nanos() as u64, config.fine_policy);
        let owner = new_owner_token();
        if dispatcher.is_none() {
            // Process memory: nobody else publishes there.
            control[0].claim(owner);
        }
        tracing::info!(
            old = offer.pid,
            %addr,
            slot_base = base,
            listeners = inherited.listeners.len(),
            kernel_state = dispatcher.is_some(),
            "upgrade: took the running server's listeners and kernel state; starting the workers"
        );
        let dispatcher = dispatcher.map(Mutex::new);
        let shared = Self::assemble(config, mode, None, addr, table, control, counters, dispatcher);
        let shared = Self { slot_base: base, owner, handover: Mutex::new(Some(inherited)), ..shared };
        Ok((Arc::new(shared), listeners))
    }

    #[allow(clippy::too_many_arguments)]
    fn assemble(
        config: Config,
        mode: Mode,
        mode_reason: Option<String>,
        addr: SocketAddr,
        table: WorkerTable,
        control: ControlRegion,
        counters: Option<CounterRegion>,
        dispatcher: Option<Mutex<Dispatcher>>,
    ) -> Self {
        let n = config.workers;
        let cpus = if config.pin_workers { sys::allowed_cpus() } else { Vec::new() };
        let workers = (0..n).map(|_| Arc::new(WorkerControl::new())).collect();
        let placement = Arc::new(
            Placement::with_reconnects(
                table.clone(),
                n,
                config.tick,
                config.place_requests,
                config.reconnect_every,
            )
            .with_offload(config.offload_heavy)
            .with_connection_limits(config.max_connection_requests, config.max_connection_age),
        );
        Shared {
            config,
            mode,
            mode_reason,
            addr,
            table,
            control,
            counters,
            dispatcher,
            workers,
            shared_listener: None,
            cpus,
            placement,
            slot_base: 0,
            owner: 0,
            handover: Mutex::new(None),
            upgrading: AtomicBool::new(false),
            started: AtomicUsize::new(0),
            sampled_ns: AtomicU64::new(0),
            dispatch_check: Mutex::new(DispatchCheck::default()),
            dispatch_lost: AtomicBool::new(false),
            dispatch_losses: AtomicU64::new(0),
        }
    }

    /// A successor whose workers serve takes over: the bitmap moves to its
    /// workers in one step, the running server is told, and the inherited
    /// listeners are let go (the running server stops them as it drains).
    /// Under systemd (`NOTIFY_SOCKET` set), a server tells it `READY=1` once
    /// every worker serves, and a successor also `MAINPID=` its own pid.
    pub(crate) fn complete_handover(&self) {
        let Some(inherited) = self.handover.lock().unwrap_or_else(|e| e.into_inner()).take() else {
            // A first start under systemd (`Type=notify`): serving now.
            if std::env::var_os("NOTIFY_SOCKET").is_some()
                && let Err(e) = sd_notify::notify(&[sd_notify::NotifyState::Ready])
            {
                tracing::warn!(error = %e, "could not tell systemd the server is ready (NOTIFY_SOCKET)");
            }
            return;
        };
        if self.dispatcher.is_some() {
            self.take_ownership();
        }
        // Under systemd (`NotifyAccess=all`), the service's main process is
        // this one from now on: the old one is about to exit.
        if std::env::var_os("NOTIFY_SOCKET").is_some()
            && let Err(e) = sd_notify::notify(&[
                sd_notify::NotifyState::MainPid(std::process::id()),
                sd_notify::NotifyState::Ready,
            ])
        {
            tracing::warn!(error = %e, "upgrade: could not tell systemd the new main pid (NOTIFY_SOCKET)");
        }
        match upgrade::ready(&inherited.channel) {
            Ok(()) => tracing::info!(
                old = inherited.offer.pid,
                "upgrade: serving; new connections come here and the old server drains"
            ),
            Err(e) => tracing::warn!(
                old = inherited.offer.pid,
                error = %e,
                "upgrade: serving, but the old server could not be told (it may have exited)"
            ),
        }
    }

    /// Makes this server the maps' owner and publishes its bitmap at once.
    pub(crate) fn take_ownership(&self) {
        let now = monotonic_ns();
        let input = PassInput {
            workers: &self.table[..self.config.workers],
            now_ns: now,
            hang_threshold_ns: self.config.hang_threshold.as_nanos() as u64,
            min_candidates: self.config.min_candidates,
        };
        let bitmap = scheduler::eligible_serving(&*self.config.policy, &input);
        self.control[0].take_over(self.owner, bitmap << self.slot_base, now, self.slot_base);
    }

    /// Whether this server publishes the bitmap (a server whose maps a
    /// successor took over does not).
    pub(crate) fn owns_bitmap(&self) -> bool {
        self.control[0].owner() == self.owner
    }

    /// Workers that reached `Serving` at least once.
    pub(crate) fn started(&self) -> usize {
        // Acquire pairs with the Release increment in `count_started`.
        self.started.load(Ordering::Acquire)
    }

    /// Counts one more worker as started (once per worker).
    pub(crate) fn count_started(&self) {
        // Release: pairs with the Acquire loads in `started`.
        self.started.fetch_add(1, Ordering::Release);
    }

    /// One scheduler pass published as worker `publisher`.
    pub(crate) fn schedule(&self, publisher: usize) -> u64 {
        if self.started() < self.config.workers {
            return 0;
        }
        let input = PassInput {
            workers: &self.table[..self.config.workers],
            now_ns: monotonic_ns(),
            hang_threshold_ns: self.config.hang_threshold.as_nanos() as u64,
            min_candidates: self.config.min_candidates,
        };
        scheduler::pass_as(
            &*self.config.policy,
            &input,
            &self.control[0],
            publisher,
            self.owner,
            self.slot_base,
        )
    }

    /// Graceful drain of worker `id`, from any thread (even while the worker
    /// is blocked): out of the bitmap first, then the listener stops (its
    /// queued connections migrate to the others), then the signal.
    pub(crate) fn begin_drain(&self, id: usize) {
        let control = &self.workers[id];
        if !control.mark_draining() {
            return;
        }
        self.table[id].set_phase(WorkerPhase::Draining);
        self.schedule(id);
        control.stop_listener();
        control.notify_draining();
        tracing::info!(worker = id, "worker draining");
    }

    /// Samples the accept queue of every worker's listener (one
    /// `getsockopt(TCP_INFO)` each) into the workers' slots, unless another
    /// worker did within the last half tick. Returns whether it sampled.
    ///
    /// Any worker samples every listener, rather than only its own: a worker
    /// that is descheduled or stuck is exactly the one whose queue grows, and
    /// it cannot sample it itself. Without this, its slot shows a low load
    /// while connections pile up in its queue, and both the scheduler's
    /// margin and the kernel's fine filter send it even more. This makes
    /// `accept_queue` the one field of a slot that other workers also write.
    /// One worker claims each sample (a compare-and-swap of the sample
    /// time), so the server makes O(workers) `getsockopt` calls per tick,
    /// not O(workers²).
    pub(crate) fn sample_accept_queues(&self) -> bool {
        let now = monotonic_ns();
        // Relaxed: the sample time only elects the sampler; the samples
        // themselves are lone gauges (see `WorkerState`).
        let last = self.sampled_ns.load(Ordering::Relaxed);
        let half_tick = self.config.tick.as_nanos() as u64 / 2;
        if last != 0 && now.saturating_sub(last) < half_tick {
            return false;
        }
        if self.sampled_ns.compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed).is_err() {
            return false;
        }
        let shared_queue =
            self.shared_listener.as_ref().map(|l| sys::accept_queue(l.as_raw_fd()).unwrap_or(0));
        for (id, (slot, control)) in self.table.iter().zip(self.workers.iter()).enumerate() {
            // The placements counted so far are in the queue about to be read
            // (or already accepted); those made after this read are not.
            let seen = self.counters.as_ref().map(|c| Counters::recent(c, self.slot_base + id));
            let queue = match shared_queue {
                Some(q) => q,
                None => control.with_listener_fd(sys::accept_queue).and_then(Result::ok).unwrap_or(0),
            };
            // Relaxed: a lone gauge (see `WorkerState`).
            slot.accept_queue.store(queue, Ordering::Relaxed);
            if let (Some(counters), Some(seen)) = (&self.counters, seen) {
                Counters::consume_recent(counters, self.slot_base + id, seen);
            }
        }
        self.check_dispatch(now);
        true
    }

    /// The mode in force and its reason: [`Mode::KernelHash`] with
    /// [`DISPATCH_LOST`] while the self-check finds the program not running.
    pub(crate) fn current_mode(&self) -> (Mode, Option<&str>) {
        // Relaxed: a lone flag, read for reporting.
        if self.dispatch_lost.load(Ordering::Relaxed) {
            (Mode::KernelHash, Some(DISPATCH_LOST))
        } else {
            (self.mode, self.mode_reason.as_deref())
        }
    }

    /// How many times the self-check found the program not running.
    pub(crate) fn dispatch_losses(&self) -> u64 {
        // Relaxed: a lone counter.
        self.dispatch_losses.load(Ordering::Relaxed)
    }

    /// The dispatch self-check, at most every 100 ms (Hermes mode only):
    /// the program runs for every new connection of the group before any
    /// worker can accept it, so connections accepted in a period in which
    /// the program never ran, beyond those already queued at its start,
    /// reached the workers without it: the group lost the program (every
    /// listener closed at once) or another program replaced it (another
    /// process attached its own to the port's group). The server then logs
    /// it, attaches its program again, and reports
    /// [`Mode::KernelHash`] with [`DISPATCH_LOST`] until the program runs
    /// again.
    fn check_dispatch(&self, now: u64) {
        let (Some(counters), Some(_)) = (&self.counters, &self.dispatcher) else { return };
        // Only the sampler of the tick calls this; `try_lock` keeps a
        // racing caller from waiting.
        let Ok(mut check) = self.dispatch_check.try_lock() else { return };
        if check.at_ns != 0 && now.saturating_sub(check.at_ns) < DISPATCH_CHECK_NS {
            return;
        }
        let n = self.config.workers;
        let read = Counters::read(counters);
        // Relaxed: independent counters and gauges (see `WorkerState`).
        let accepted: u64 = self.table[..n].iter().map(|w| w.accepted.load(Ordering::Relaxed)).sum();
        let pending: u64 =
            self.table[..n].iter().map(|w| u64::from(w.accept_queue.load(Ordering::Relaxed))).sum::<u64>()
                + read.recent[..n].iter().sum::<u64>();
        if check.at_ns != 0 {
            let ran = read.runs.saturating_sub(check.runs);
            let came = accepted.saturating_sub(check.accepted);
            if ran > 0 {
                // Relaxed: a lone flag.
                if self.dispatch_lost.swap(false, Ordering::Relaxed) {
                    tracing::info!(addr = %self.addr, "the dispatch program places new connections again; mode hermes");
                }
            } else if came > check.pending {
                self.dispatch_losses.fetch_add(1, Ordering::Relaxed);
                if !self.dispatch_lost.swap(true, Ordering::Relaxed) {
                    tracing::error!(
                        addr = %self.addr,
                        accepted = came,
                        "connections were accepted that the dispatch program never saw: the port's SO_REUSEPORT \
                         group lost it, or another program was attached to the group; attaching it again \
                         (mode kernel-hash until it places connections)"
                    );
                }
                self.reattach();
            }
        }
        *check = DispatchCheck { at_ns: now, accepted, runs: read.runs, pending };
    }

    /// Attaches the dispatch program to the group again, through the first
    /// worker listener found open.
    fn reattach(&self) {
        let Some(d) = &self.dispatcher else { return };
        let d = d.lock().unwrap_or_else(|e| e.into_inner());
        for control in self.workers.iter() {
            let done = control.with_listener_fd(|fd| {
                // SAFETY: `with_listener_fd` keeps the descriptor open
                // during the call, and the borrow does not outlive it.
                let fd = unsafe { BorrowedFd::borrow_raw(fd) };
                d.attach(&fd)
            });
            match done {
                Some(Ok(())) => return,
                Some(Err(e)) => tracing::error!(error = %e, "attaching the dispatch program again"),
                None => {}
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::{sync::Barrier, thread, time::Duration};

    use super::*;
    use crate::Builder;

    /// Four workers' housekeeping ticking at the same moment: one of them
    /// samples the four listeners, the others skip; a tick later, one
    /// samples again.
    #[test]
    fn one_worker_samples_the_queues_per_tick() {
        let config = Builder::new()
            .workers(4)
            .bind("127.0.0.1:0".parse().unwrap())
            .mode(Mode::KernelHash)
            .tick(Duration::from_millis(20))
            .config()
            .unwrap();
        let (shared, _listeners) = Shared::open(config).unwrap();
        let start = Barrier::new(4);
        let sampled: usize = thread::scope(|s| {
            let handles: Vec<_> = (0..4)
                .map(|_| {
                    s.spawn(|| {
                        start.wait();
                        shared.sample_accept_queues()
                    })
                })
                .collect();
            handles.into_iter().map(|h| usize::from(h.join().unwrap())).sum()
        });
        assert_eq!(sampled, 1, "one sampler per tick");
        assert!(!shared.sample_accept_queues(), "sampled again within the tick");
        thread::sleep(Duration::from_millis(20));
        assert!(shared.sample_accept_queues(), "sampled again a tick later");
    }
}

/// A token no other server holds: the pid and the start time.
fn new_owner_token() -> u64 {
    (u64::from(std::process::id()) << 32) | (monotonic_ns() & 0xffff_ffff) | 1
}

thread_local! {
    static CURRENT: RefCell<Option<(Arc<Shared>, usize)>> = const { RefCell::new(None) };
}

/// The server and worker id of the current thread, if it is a worker.
pub(crate) fn current() -> Option<(Arc<Shared>, usize)> {
    CURRENT.with(|s| s.borrow().clone())
}

/// Makes `server` the current thread's server (`None`: no server).
pub(crate) fn set_current(server: Option<(Arc<Shared>, usize)>) {
    CURRENT.with(|s| *s.borrow_mut() = server);
}
