//! [`Server`] and [`ServerHandle`]: the worker threads, their supervision,
//! the per-tick housekeeping, and graceful shutdown.

use std::{
    cell::RefCell,
    fmt,
    future::Future,
    io,
    net::SocketAddr,
    os::fd::{AsRawFd, OwnedFd},
    panic::AssertUnwindSafe,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicUsize, Ordering},
    },
    thread,
    time::{Duration, Instant},
};

use hermes_bpf::{
    ControlRegion, CounterRegion, Counters, DispatchMode, Dispatcher, Region, WorkerTable,
    layout::{MAX_WORKERS, WorkerPhase},
    monotonic_ns,
};
use tokio::{io::unix::AsyncFd, sync::Notify, task::LocalSet};

use crate::{
    Mode,
    builder::Config,
    context::WorkerRef,
    listener::{HermesListener, Source},
    scheduler::{self, PassInput},
    stats::{self, Snapshot},
    sys,
};

/// What a worker can be asked to do from other threads.
pub(crate) struct WorkerControl {
    draining: AtomicBool,
    notify: Notify,
    /// How to stop the current listener from another thread.
    stop: Mutex<Option<Stop>>,
    /// Whether the worker was counted in `Shared::started`.
    started_once: AtomicBool,
}

enum Stop {
    /// A second descriptor of the worker's own listener (`shutdown` on it).
    Listener(OwnedFd),
    /// The eventfd in the worker's epoll set (shared-listener mode).
    Wake(OwnedFd),
}

impl Stop {
    fn run(self) {
        match self {
            Stop::Listener(fd) => {
                if let Err(e) = sys::stop_listening(fd.as_raw_fd()) {
                    tracing::debug!(error = %e, "stopping a listener");
                }
            }
            Stop::Wake(fd) => sys::wake_eventfd(fd.as_raw_fd()),
        }
    }
}

impl WorkerControl {
    fn new() -> Self {
        Self {
            draining: AtomicBool::new(false),
            notify: Notify::new(),
            stop: Mutex::new(None),
            started_once: AtomicBool::new(false),
        }
    }

    pub(crate) fn is_draining(&self) -> bool {
        // Acquire pairs with the AcqRel swap in `begin_drain`.
        self.draining.load(Ordering::Acquire)
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
    fn install(&self, stop: Stop) {
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
    fn stop_listener(&self) {
        let stop = self.stop.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(stop) = stop {
            stop.run();
        }
    }

    fn with_listener_fd<R>(&self, f: impl FnOnce(i32) -> R) -> Option<R> {
        let slot = self.stop.lock().unwrap_or_else(|e| e.into_inner());
        match slot.as_ref() {
            Some(Stop::Listener(fd)) => Some(f(fd.as_raw_fd())),
            _ => None,
        }
    }
}

/// State shared by the workers, the handle and the stats handler.
pub(crate) struct Shared {
    pub(crate) config: Config,
    pub(crate) mode: Mode,
    pub(crate) mode_reason: Option<String>,
    pub(crate) addr: SocketAddr,
    pub(crate) table: WorkerTable,
    pub(crate) control: ControlRegion,
    pub(crate) counters: Option<CounterRegion>,
    dispatcher: Option<Mutex<Dispatcher>>,
    pub(crate) workers: Box<[Arc<WorkerControl>]>,
    shared_listener: Option<Arc<std::net::TcpListener>>,
    cpus: Vec<usize>,
    /// Workers that reached `Serving` at least once. No bitmap is published
    /// before every worker has: a bitmap of the first workers up would send
    /// the first burst of connections to them alone, while the kernel's hash
    /// (what an unpublished bitmap means) spreads it over every listener.
    started: AtomicUsize,
}

impl Shared {
    /// One scheduler pass published as worker `publisher`.
    fn schedule(&self, publisher: usize) -> u64 {
        // Acquire pairs with the Release increment in `worker_loop`.
        if self.started.load(Ordering::Acquire) < self.config.workers {
            return 0;
        }
        let input = PassInput {
            workers: &self.table[..self.config.workers],
            now_ns: monotonic_ns(),
            hang_threshold_ns: self.config.hang_threshold.as_nanos() as u64,
            min_candidates: self.config.min_candidates,
        };
        scheduler::pass(&*self.config.policy, &input, &self.control[0], publisher)
    }

    /// Graceful drain of worker `id`, from any thread (even while the worker
    /// is blocked): out of the bitmap first, then the listener stops (its
    /// queued connections migrate to the others), then the signal.
    fn begin_drain(&self, id: usize) {
        let control = &self.workers[id];
        // AcqRel: the flag is seen set by whoever is woken by what follows.
        if control.draining.swap(true, Ordering::AcqRel) {
            return;
        }
        self.table[id].set_phase(WorkerPhase::Draining);
        self.schedule(id);
        control.stop_listener();
        control.notify.notify_waiters();
        tracing::info!(worker = id, "worker draining");
    }

    /// Samples the accept queue of every worker's listener (one
    /// `getsockopt(TCP_INFO)` each) into the workers' slots.
    ///
    /// Every worker samples every listener, rather than only its own: a
    /// worker that is descheduled or stuck is exactly the one whose queue
    /// grows, and it cannot sample it itself. Without this, its slot shows a
    /// low load while connections pile up in its queue, and both the
    /// scheduler's margin and the kernel's fine filter send it even more.
    /// This makes `accept_queue` the one field of a slot that other workers
    /// also write; each writer stores a fresh sample of the same kernel
    /// value, so the last store wins and nothing is lost.
    fn sample_accept_queues(&self) {
        let shared_queue =
            self.shared_listener.as_ref().map(|l| sys::accept_queue(l.as_raw_fd()).unwrap_or(0));
        for (id, (slot, control)) in self.table.iter().zip(self.workers.iter()).enumerate() {
            let queue = match shared_queue {
                Some(q) => q,
                None => control.with_listener_fd(sys::accept_queue).and_then(Result::ok).unwrap_or(0),
            };
            // Relaxed: a lone gauge (see `WorkerState`).
            slot.accept_queue.store(queue, Ordering::Relaxed);
            // The sample now holds the connections the kernel placed on this
            // worker and it has not accepted: restart the kernel's count of
            // placements since the sample.
            if let Some(counters) = &self.counters {
                Counters::clear_recent(counters, id);
            }
        }
    }

    pub(crate) fn snapshot(&self) -> Snapshot {
        stats::snapshot(self)
    }
}

thread_local! {
    static SERVER: RefCell<Option<(Arc<Shared>, usize)>> = const { RefCell::new(None) };
}

/// The server and worker id of the current thread, if it is a worker.
pub(crate) fn current_server() -> Option<(Arc<Shared>, usize)> {
    SERVER.with(|s| s.borrow().clone())
}

/// Resolves when the current worker starts draining; never resolves when
/// called outside a Hermes worker thread. Pass it to axum's
/// `with_graceful_shutdown` or tonic's `serve_with_incoming_shutdown`.
///
/// ```no_run
/// use axum::{Router, routing::get};
/// use hermes_runtime::{Builder, HermesListener, shutdown_signal};
///
/// let app = Router::new().route("/", get(|| async { "hello" }));
/// let server = Builder::new().bind("127.0.0.1:0".parse().unwrap()).build()?;
/// let handle = server.serve(move |listener: HermesListener| {
///     let app = app.clone();
///     async move {
///         axum::serve(listener, app).with_graceful_shutdown(shutdown_signal()).await.ok();
///     }
/// })?;
/// handle.join();
/// # Ok::<(), std::io::Error>(())
/// ```
pub fn shutdown_signal() -> impl Future<Output = ()> + Send + 'static {
    let control = current_server().map(|(s, id)| s.workers[id].clone());
    if control.is_none() {
        tracing::debug!("shutdown_signal() called outside a Hermes worker; it never resolves");
    }
    async move {
        match control {
            Some(c) => c.draining().await,
            None => std::future::pending().await,
        }
    }
}

/// A server whose listeners are bound (and, in Hermes mode, placed in the
/// kernel's socket array) but whose workers are not started yet. Start them
/// with [`Server::serve`].
pub struct Server {
    shared: Arc<Shared>,
    listeners: Vec<Option<std::net::TcpListener>>,
}

impl fmt::Debug for Server {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Server")
            .field("addr", &self.shared.addr)
            .field("mode", &self.shared.mode)
            .field("workers", &self.shared.config.workers)
            .finish()
    }
}

fn bpf_error(e: hermes_bpf::Error) -> io::Error {
    let kind = match &e {
        hermes_bpf::Error::MissingCapability { .. } => io::ErrorKind::PermissionDenied,
        _ => io::ErrorKind::Other,
    };
    io::Error::new(kind, e)
}

impl Server {
    pub(crate) fn new(config: Config) -> io::Result<Self> {
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

        let mut listeners = Vec::with_capacity(n);
        let mut shared_listener = None;
        let addr;
        if mode == Mode::SharedListener {
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
        let cpus = if config.pin_workers { sys::allowed_cpus() } else { Vec::new() };
        let workers = (0..n).map(|_| Arc::new(WorkerControl::new())).collect();
        let shared = Arc::new(Shared {
            config,
            mode,
            mode_reason,
            addr,
            table,
            control,
            counters,
            dispatcher,
            workers,
            shared_listener,
            cpus,
            started: AtomicUsize::new(0),
        });
        Ok(Self { shared, listeners })
    }

    /// The address the server listens on (with the port resolved).
    pub fn local_addr(&self) -> SocketAddr {
        self.shared.addr
    }

    /// The mode in force: [`Mode::KernelHash`] after a fallback.
    pub fn mode(&self) -> Mode {
        self.shared.mode
    }

    /// Why the server fell back from [`Mode::Hermes`], if it did.
    pub fn mode_reason(&self) -> Option<&str> {
        self.shared.mode_reason.as_deref()
    }

    /// Starts the workers. `serve` is called on each worker thread with its
    /// listener, and again when the worker is restarted after a panic; the
    /// future it returns runs on the worker's `LocalSet`, so it and its
    /// `spawn_local`ed tasks need not be `Send`.
    ///
    /// Returns once every worker accepts (or after 10 s, with a warning).
    ///
    /// # Errors
    /// When a worker thread cannot be spawned.
    pub fn serve<F, Fut>(mut self, serve: F) -> io::Result<ServerHandle>
    where
        F: Fn(HermesListener) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = ()> + 'static,
    {
        let serve = Arc::new(serve);
        let mut threads = Vec::with_capacity(self.shared.config.workers);
        for id in 0..self.shared.config.workers {
            let shared = self.shared.clone();
            let serve = serve.clone();
            let listener = self.listeners[id].take();
            let t = thread::Builder::new()
                .name(format!("hermes-worker-{id}"))
                .spawn(move || worker_thread(shared, id, serve, listener))?;
            threads.push(t);
        }
        // Return once every worker accepts (bounded: a worker that cannot
        // start is logged by itself and retried).
        let deadline = Instant::now() + Duration::from_secs(10);
        while self.shared.started.load(Ordering::Acquire) < self.shared.config.workers {
            if Instant::now() >= deadline {
                tracing::warn!("not every worker started within 10 s; serving with those that did");
                break;
            }
            thread::sleep(Duration::from_millis(1));
        }
        Ok(ServerHandle { shared: self.shared, threads })
    }
}

/// A running server. Dropping the handle leaves the server running; stop it
/// with [`ServerHandle::shutdown`].
///
/// ```no_run
/// use hermes_runtime::{Builder, HermesListener};
///
/// let server = Builder::new().workers(2).bind("127.0.0.1:0".parse().unwrap()).build()?;
/// let handle = server.serve(|mut listener: HermesListener| async move {
///     while let Some((_stream, _peer)) = listener.accept_connection().await {}
/// })?;
/// let snapshot = handle.snapshot();
/// println!("{}", serde_json::to_string(&snapshot).unwrap());
/// handle.shutdown_worker(1)?; // worker 1 drains; worker 0 keeps serving
/// handle.shutdown();
/// # Ok::<(), std::io::Error>(())
/// ```
pub struct ServerHandle {
    shared: Arc<Shared>,
    threads: Vec<thread::JoinHandle<()>>,
}

impl fmt::Debug for ServerHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ServerHandle")
            .field("addr", &self.shared.addr)
            .field("mode", &self.shared.mode)
            .field("workers", &self.shared.config.workers)
            .finish()
    }
}

impl ServerHandle {
    /// The address the server listens on.
    pub fn local_addr(&self) -> SocketAddr {
        self.shared.addr
    }

    /// The mode in force.
    pub fn mode(&self) -> Mode {
        self.shared.mode
    }

    /// Why the server fell back from [`Mode::Hermes`], if it did.
    pub fn mode_reason(&self) -> Option<&str> {
        self.shared.mode_reason.as_deref()
    }

    /// The table, the bitmap and the kernel's counters, now.
    pub fn snapshot(&self) -> Snapshot {
        self.shared.snapshot()
    }

    /// Drains worker `id`: it leaves the bitmap, its listener closes (its
    /// queued connections migrate to the other workers in Hermes mode), its
    /// [`shutdown_signal`] resolves, and it exits once its connections have
    /// finished or the drain timeout passed. Returns at once.
    ///
    /// # Errors
    /// `InvalidInput` if `id` is not a worker.
    pub fn shutdown_worker(&self, id: usize) -> io::Result<()> {
        if id >= self.shared.config.workers {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("worker {id} does not exist ({} workers)", self.shared.config.workers),
            ));
        }
        self.shared.begin_drain(id);
        Ok(())
    }

    /// Drains every worker, one after the other, and waits for them to exit.
    pub fn shutdown(self) {
        for id in 0..self.shared.config.workers {
            self.shared.begin_drain(id);
        }
        self.join();
    }

    /// Waits for every worker to exit.
    pub fn join(self) {
        for t in self.threads {
            let _ = t.join();
        }
    }
}

fn worker_thread<F, Fut>(
    shared: Arc<Shared>,
    id: usize,
    serve: Arc<F>,
    listener: Option<std::net::TcpListener>,
) where
    F: Fn(HermesListener) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = ()> + 'static,
{
    if !shared.cpus.is_empty() {
        let cpu = shared.cpus[id % shared.cpus.len()];
        if let Err(e) = sys::pin_to(cpu) {
            tracing::debug!(worker = id, cpu, error = %e, "could not pin the worker");
        }
    }
    let worker = WorkerRef::new(id, shared.table.clone());
    let _enter = worker.enter();
    SERVER.with(|s| *s.borrow_mut() = Some((shared.clone(), id)));
    let mut listener = listener;
    loop {
        let run = std::panic::catch_unwind(AssertUnwindSafe(|| {
            run_runtime(&shared, &worker, &serve, &mut listener)
        }));
        match run {
            Ok(()) => break,
            Err(_) if shared.workers[id].is_draining() => break,
            Err(_) => {
                tracing::error!(worker = id, "the worker's runtime panicked; restarting it");
                thread::sleep(Duration::from_millis(100));
            }
        }
    }
    worker.state().set_phase(WorkerPhase::Empty);
    shared.schedule(id);
    SERVER.with(|s| *s.borrow_mut() = None);
}

thread_local! {
    static UNPARKED_AT: std::cell::Cell<u64> = const { std::cell::Cell::new(0) };
}

fn run_runtime<F, Fut>(
    shared: &Arc<Shared>,
    worker: &WorkerRef,
    serve: &Arc<F>,
    listener: &mut Option<std::net::TcpListener>,
) where
    F: Fn(HermesListener) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = ()> + 'static,
{
    let (on_park, on_unpark) = (worker.clone(), worker.clone());
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .on_thread_park(move || {
            let now = monotonic_ns();
            let slot = on_park.state();
            let since = UNPARKED_AT.with(|t| t.get());
            // Relaxed: single writer (this thread); readers take each
            // counter as an independent value.
            if since != 0 {
                slot.busy_ns.store(slot.busy_ns.load(Ordering::Relaxed) + (now - since), Ordering::Relaxed);
            }
            slot.heartbeat_ns.store(now, Ordering::Relaxed);
        })
        .on_thread_unpark(move || {
            let now = monotonic_ns();
            UNPARKED_AT.with(|t| t.set(now));
            on_unpark.state().heartbeat_ns.store(now, Ordering::Relaxed);
        })
        .build();
    let rt = match rt {
        Ok(rt) => rt,
        Err(e) => {
            tracing::error!(worker = worker.id(), error = %e, "could not build the worker's runtime");
            thread::sleep(Duration::from_secs(1));
            panic!("runtime build failed");
        }
    };
    UNPARKED_AT.with(|t| t.set(monotonic_ns()));
    let local = LocalSet::new();
    local.block_on(&rt, worker_loop(shared.clone(), worker.clone(), serve.clone(), listener));
}

fn new_source(shared: &Shared, id: usize, initial: &mut Option<std::net::TcpListener>) -> io::Result<Source> {
    let control = &shared.workers[id];
    if let Some(shared_listener) = &shared.shared_listener {
        let epoll = sys::ExclusiveEpoll::new(shared_listener.as_raw_fd())?;
        control.install(Stop::Wake(epoll.waker()?));
        // SAFETY: `ExclusiveEpoll` owns its epoll descriptor, which stays open
        // and unchanged until the `AsyncFd` drops it.
        let epoll = unsafe { AsyncFd::register_with_interest(epoll, tokio::io::Interest::READABLE) }
            .map_err(io::Error::from)?;
        return Ok(Source::Shared { epoll, listener: shared_listener.clone() });
    }
    let std_listener = match initial.take() {
        Some(l) => l,
        None => {
            let l = sys::listener(shared.addr, true, shared.config.backlog)?;
            if let Some(d) = &shared.dispatcher {
                let mut d = d.lock().unwrap_or_else(|e| e.into_inner());
                if let Err(e) = d.insert(id, &l) {
                    tracing::error!(worker = id, error = %e, "could not place the restarted worker's listener");
                }
            }
            l
        }
    };
    control.install(Stop::Listener(OwnedFd::from(std_listener.try_clone()?)));
    Ok(Source::Own(tokio::net::TcpListener::from_std(std_listener)?))
}

async fn worker_loop<F, Fut>(
    shared: Arc<Shared>,
    worker: WorkerRef,
    serve: Arc<F>,
    initial: &mut Option<std::net::TcpListener>,
) where
    F: Fn(HermesListener) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = ()> + 'static,
{
    let id = worker.id();
    let control = shared.workers[id].clone();
    let mut housekeeping = tokio::task::spawn_local(housekeeping(shared.clone(), worker.clone()));
    loop {
        if control.is_draining() {
            break;
        }
        let source = match new_source(&shared, id, initial) {
            Ok(s) => s,
            Err(e) => {
                tracing::error!(worker = id, error = %e, "could not open the worker's listener; retrying");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let listener = HermesListener::new(worker.clone(), control.clone(), shared.addr, source);
        // Starting -> Serving, unless a drain began meanwhile (Relaxed: the
        // state is a lone value; the compare-exchange only keeps a drain's
        // store from being overwritten).
        let _ = worker.state().state.compare_exchange(
            WorkerPhase::Starting as u32,
            WorkerPhase::Serving as u32,
            Ordering::Relaxed,
            Ordering::Relaxed,
        );
        let started = Instant::now();
        if !control.started_once.swap(true, Ordering::Relaxed) {
            // Release: pairs with the Acquire loads in `schedule` and `serve`.
            shared.started.fetch_add(1, Ordering::Release);
        }
        let main = tokio::task::spawn_local((*serve)(listener));
        tokio::select! {
            result = main => match result {
                Ok(()) if control.is_draining() => break,
                Ok(()) => {
                    tracing::warn!(worker = id, "the serve future returned; the worker drains and stops");
                    shared.begin_drain(id);
                    break;
                }
                Err(e) => {
                    if control.is_draining() {
                        break;
                    }
                    tracing::error!(worker = id, error = %e, "the worker's serve future failed; restarting the worker in its slot");
                    let _ = worker.state().state.compare_exchange(
                        WorkerPhase::Serving as u32,
                        WorkerPhase::Starting as u32,
                        Ordering::Relaxed,
                        Ordering::Relaxed,
                    );
                    shared.schedule(id);
                    control.stop_listener();
                    if started.elapsed() < Duration::from_secs(1) {
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                }
            },
            _ = &mut housekeeping => return,
        }
    }
    let _ = housekeeping.await;
}

/// The worker's tick: heartbeat, accept-queue sample, scheduler pass,
/// metrics; and, once draining, the wait for the connections to finish.
/// Returns when the worker may exit.
async fn housekeeping(shared: Arc<Shared>, worker: WorkerRef) {
    let id = worker.id();
    let control = shared.workers[id].clone();
    let slot = worker.state();
    let mut interval = tokio::time::interval(shared.config.tick);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let metrics = stats::WorkerMetrics::new(&shared, id);
    let export_every = (Duration::from_millis(100).as_nanos() / shared.config.tick.as_nanos()).max(1) as u64;
    let mut ticks = 0u64;
    let mut drain_started: Option<Instant> = None;
    loop {
        interval.tick().await;
        ticks += 1;
        // Relaxed: lone timestamp (see `WorkerState`).
        slot.heartbeat_ns.store(monotonic_ns(), Ordering::Relaxed);
        shared.sample_accept_queues();
        let bitmap = shared.schedule(id);
        if ticks.is_multiple_of(export_every) {
            metrics.export(&shared, bitmap);
        }
        if control.is_draining() {
            let started = *drain_started.get_or_insert_with(Instant::now);
            let open = slot.open_conns.load(Ordering::Relaxed);
            if open == 0 {
                return;
            }
            if started.elapsed() >= shared.config.drain_timeout {
                tracing::warn!(worker = id, open, "drain timeout; closing the remaining connections");
                return;
            }
        }
    }
}
