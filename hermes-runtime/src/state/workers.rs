//! The workers as the server sees them from any thread: [`Workers`], and
//! each worker's [`WorkerControl`] (drain, stop its listener, its
//! connection counters, the drain signal its listener and handlers wait
//! on).

use std::{
    os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering},
    },
};

use hermes_bpf::monotonic_ns;

use tokio::sync::Notify;

use crate::sys;

/// What a worker can be asked to do from other threads.
pub(crate) struct WorkerControl {
    draining: AtomicBool,
    notify: Notify,
    /// How to stop the current listener from another thread.
    stop: Mutex<Option<Stop>>,
    /// Whether the worker was counted in [`Workers::started`].
    started_once: AtomicBool,
    /// Connections accepted beyond `max_connections_per_worker` and closed.
    refused: AtomicU64,
    /// Connections this worker took from hung workers' listeners.
    rescued: AtomicU64,
    /// `CLOCK_MONOTONIC` nanoseconds when the drain began (0: not draining).
    drain_started_ns: AtomicU64,
}

/// How to stop a worker's listener from another thread.
pub(crate) enum Stop {
    /// A second descriptor of the worker's own listener (`shutdown` on it).
    Listener(OwnedFd),
    /// The eventfd in the worker's epoll set (shared-listener mode).
    Wake(sys::Waker),
}

impl Stop {
    fn run(self) {
        match self {
            Stop::Listener(fd) => {
                if let Err(e) = sys::stop_listening(fd.as_raw_fd()) {
                    tracing::debug!(error = %e, "stopping a listener");
                }
            }
            Stop::Wake(waker) => waker.wake(),
        }
    }
}

impl WorkerControl {
    pub(crate) fn new() -> Self {
        Self {
            draining: AtomicBool::new(false),
            notify: Notify::new(),
            stop: Mutex::new(None),
            started_once: AtomicBool::new(false),
            refused: AtomicU64::new(0),
            rescued: AtomicU64::new(0),
            drain_started_ns: AtomicU64::new(0),
        }
    }

    pub(crate) fn is_draining(&self) -> bool {
        // Acquire pairs with the AcqRel swap in `mark_draining`.
        self.draining.load(Ordering::Acquire)
    }

    /// Sets the drain flag; `false` if it was set already.
    pub(crate) fn mark_draining(&self) -> bool {
        // AcqRel: the flag is seen set by whoever is woken by what follows.
        let first = !self.draining.swap(true, Ordering::AcqRel);
        if first {
            // Relaxed: a lone timestamp, read only to bound waits.
            self.drain_started_ns.store(monotonic_ns(), Ordering::Relaxed);
        }
        first
    }

    /// When the drain began (`CLOCK_MONOTONIC` ns), if it has.
    pub(crate) fn drain_started_ns(&self) -> Option<u64> {
        // Relaxed: see `mark_draining`.
        Some(self.drain_started_ns.load(Ordering::Relaxed)).filter(|&t| t != 0)
    }

    /// Counts one connection taken from a hung worker's listener; returns the total.
    pub(crate) fn count_rescued(&self) -> u64 {
        // Relaxed: a lone counter.
        self.rescued.fetch_add(1, Ordering::Relaxed) + 1
    }

    /// Connections taken from hung workers' listeners so far.
    pub(crate) fn rescued(&self) -> u64 {
        // Relaxed: a lone counter.
        self.rescued.load(Ordering::Relaxed)
    }

    /// Counts one connection refused over the per-worker limit; returns the total.
    pub(crate) fn count_refused(&self) -> u64 {
        // Relaxed: a lone counter.
        self.refused.fetch_add(1, Ordering::Relaxed) + 1
    }

    /// Connections refused over the per-worker limit so far.
    pub(crate) fn refused(&self) -> u64 {
        // Relaxed: a lone counter.
        self.refused.load(Ordering::Relaxed)
    }

    /// Wakes every task waiting in [`WorkerControl::draining`].
    pub(crate) fn notify_draining(&self) {
        self.notify.notify_waiters();
    }

    /// Marks the worker as started; `true` the first time only.
    fn first_start(&self) -> bool {
        // Relaxed: only the worker's own thread swaps it; the count it guards
        // (`Workers::started`) carries its own ordering.
        !self.started_once.swap(true, Ordering::Relaxed)
    }

    /// Resolves once the worker drains.
    pub(crate) async fn draining(&self) {
        loop {
            let notified = self.notify.notified();
            let mut notified = std::pin::pin!(notified);
            notified.as_mut().enable();
            if self.is_draining() {
                return;
            }
            notified.await;
        }
    }

    /// Installs how to stop the listener of a new incarnation, or stops it
    /// at once if the worker is draining already.
    pub(crate) fn install(&self, stop: Stop) {
        let mut slot = self.stop.lock().unwrap_or_else(|e| e.into_inner());
        if self.is_draining() {
            drop(slot);
            stop.run();
        } else if let Some(previous) = slot.replace(stop) {
            // A listener left from an incarnation that ended abruptly.
            drop(slot);
            previous.run();
        }
    }

    /// Stops the current listener (migrating its queue in Hermes mode).
    pub(crate) fn stop_listener(&self) {
        let stop = self.stop.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(stop) = stop {
            stop.run();
        }
    }

    /// Runs `f` on the descriptor of the worker's own listener, if it has one.
    pub(crate) fn with_listener<R>(&self, f: impl FnOnce(BorrowedFd<'_>) -> R) -> Option<R> {
        let slot = self.stop.lock().unwrap_or_else(|e| e.into_inner());
        match slot.as_ref() {
            Some(Stop::Listener(fd)) => Some(f(fd.as_fd())),
            _ => None,
        }
    }
}

/// Every worker's [`WorkerControl`], how many have started, and the CPUs
/// they are pinned to.
pub(crate) struct Workers {
    controls: Box<[Arc<WorkerControl>]>,
    /// Workers that reached `Serving` at least once. No list is published
    /// before every worker has: a list of the first workers up would send
    /// the first burst of connections to them alone, while the kernel's hash
    /// (what an unpublished list means) spreads it over every listener.
    started: AtomicUsize,
    /// Set once the server stops waiting for its workers to start (every
    /// one did, or the start-up wait ended without some): from then on
    /// bitmaps are published with the workers that serve.
    start_over: AtomicBool,
    /// The CPU of each worker (by id, modulo their number); empty: unpinned.
    cpus: Vec<usize>,
}

impl Workers {
    /// `n` workers, pinned to the CPUs this process may run on when `pin`.
    pub(crate) fn new(n: usize, pin: bool) -> Self {
        Self {
            controls: (0..n).map(|_| Arc::new(WorkerControl::new())).collect(),
            started: AtomicUsize::new(0),
            start_over: AtomicBool::new(false),
            cpus: if pin { sys::allowed_cpus() } else { Vec::new() },
        }
    }

    /// How many workers the server has.
    pub(crate) fn len(&self) -> usize {
        self.controls.len()
    }

    /// Worker `id`'s control.
    pub(crate) fn control(&self, id: usize) -> &Arc<WorkerControl> {
        &self.controls[id]
    }

    /// Every worker's control, by id.
    pub(crate) fn iter(&self) -> impl Iterator<Item = &Arc<WorkerControl>> {
        self.controls.iter()
    }

    /// The CPU worker `id` is pinned to, if workers are pinned.
    pub(crate) fn cpu(&self, id: usize) -> Option<usize> {
        (!self.cpus.is_empty()).then(|| self.cpus[id % self.cpus.len()])
    }

    /// Every CPU the process could run on when the server was made, if
    /// workers are pinned (threads a worker starts would otherwise inherit
    /// its one CPU).
    pub(crate) fn process_cpus(&self) -> Option<&[usize]> {
        (!self.cpus.is_empty()).then_some(&self.cpus[..])
    }

    /// Workers that reached `Serving` at least once.
    pub(crate) fn started(&self) -> usize {
        // Acquire pairs with the Release increment in `count_started`.
        self.started.load(Ordering::Acquire)
    }

    /// Counts worker `id` as started, the first time only.
    pub(crate) fn count_started(&self, id: usize) {
        if self.controls[id].first_start() {
            // Release: pairs with the Acquire loads in `started`.
            self.started.fetch_add(1, Ordering::Release);
        }
    }

    /// Whether every worker has started.
    pub(crate) fn all_started(&self) -> bool {
        self.started() >= self.len()
    }

    /// Whether bitmaps may be published: every worker started, or the
    /// server stopped waiting for the ones that did not.
    pub(crate) fn may_publish(&self) -> bool {
        // Acquire pairs with the Release store in `stop_waiting`.
        self.all_started() || self.start_over.load(Ordering::Acquire)
    }

    /// The server stops waiting for its workers to start: a worker that
    /// never starts must not keep the others out of the bitmap.
    pub(crate) fn stop_waiting(&self) {
        // Release: pairs with the Acquire load in `may_publish`.
        self.start_over.store(true, Ordering::Release);
    }
}
