//! [`Server`] and [`ServerHandle`]: a server before and after its workers
//! start. Both read the same shared state; their common accessors are
//! written once, by the `common_accessors!` macro.

use std::{
    fmt,
    future::Future,
    io,
    net::SocketAddr,
    sync::Arc,
    thread,
    time::{Duration, Instant},
};

use crate::{
    config::{Config, Mode},
    net::HermesListener,
    shared::Shared,
    stats::{self, Snapshot},
    worker,
};

/// The accessors and the `Debug` form that [`Server`] and [`ServerHandle`]
/// share, on their `shared: Arc<Shared>` field.
macro_rules! common_accessors {
    ($ty:ident) => {
        impl $ty {
            /// The address the server listens on (with the port resolved).
            pub fn local_addr(&self) -> SocketAddr {
                self.shared.addr
            }

            /// The mode in force: [`Mode::KernelHash`] after a fallback, and
            /// while the dispatch self-check finds the program not running.
            pub fn mode(&self) -> Mode {
                self.shared.current_mode().0
            }

            /// Why the server is not in [`Mode::Hermes`] though asked to be,
            /// if it is not.
            pub fn mode_reason(&self) -> Option<&str> {
                self.shared.current_mode().1
            }
        }

        impl fmt::Debug for $ty {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.debug_struct(stringify!($ty))
                    .field("addr", &self.shared.addr)
                    .field("mode", &self.shared.mode)
                    .field("workers", &self.shared.config.workers)
                    .finish()
            }
        }
    };
}

/// A server whose listeners are bound (and, in Hermes mode, placed in the
/// kernel's socket array) but whose workers are not started yet. Start them
/// with [`Server::serve`].
pub struct Server {
    shared: Arc<Shared>,
    listeners: Vec<Option<std::net::TcpListener>>,
}

common_accessors!(Server);

impl Server {
    pub(crate) fn new(config: Config) -> io::Result<Self> {
        let (shared, listeners) = Shared::open(config)?;
        Ok(Self { shared, listeners })
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
            let listener = self.listeners[id].take();
            threads.push(worker::spawn(self.shared.clone(), id, serve.clone(), listener)?);
        }
        // Return once every worker accepts (bounded: a worker that cannot
        // start is logged by itself and retried).
        let deadline = Instant::now() + Duration::from_secs(10);
        while self.shared.started() < self.shared.config.workers {
            if Instant::now() >= deadline {
                tracing::warn!("not every worker started within 10 s; serving with those that did");
                break;
            }
            thread::sleep(Duration::from_millis(1));
        }
        Ok(ServerHandle { shared: self.shared, threads })
    }
}

/// How long [`ServerHandle::shutdown`] waits past the drain timeout for the
/// workers to exit (their runtimes give blocking tasks 1 s of it).
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(2);

/// A running server. Stop it with [`ServerHandle::shutdown`] (drains and
/// waits). Dropping the handle also stops the server, without waiting: every
/// worker drains and exits on its own, as when a dropped `axum::serve`
/// future stops serving. A server that should outlive its handle is
/// [detached](ServerHandle::detach).
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

common_accessors!(ServerHandle);

impl ServerHandle {
    /// The table, the bitmap and the kernel's counters, now.
    pub fn snapshot(&self) -> Snapshot {
        stats::snapshot(&self.shared)
    }

    /// Drains worker `id`: it leaves the bitmap, its listener closes (its
    /// queued connections migrate to the other workers in Hermes mode), its
    /// [`shutdown_signal`](crate::shutdown_signal) resolves, and it exits
    /// once its connections have finished or the drain timeout passed.
    /// Returns at once.
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

    /// Drains every worker, one after the other, and waits for them to exit,
    /// at most the drain timeout plus [`SHUTDOWN_GRACE`]: a worker still
    /// running then (a handler blocking its thread, a stuck blocking task)
    /// is logged with what it still holds and abandoned to end with the
    /// process.
    pub fn shutdown(mut self) {
        for id in 0..self.shared.config.workers {
            self.shared.begin_drain(id);
        }
        let threads = std::mem::take(&mut self.threads);
        self.wait_bounded(threads);
    }

    /// Waits for every worker to exit. A server that is not draining runs
    /// until it is stopped (by [`ServerHandle::shutdown`] from a clone of
    /// the process's logic, a signal handler, or
    /// [`ServerHandle::shutdown_worker`]), and `join` waits as long; once a
    /// worker drains, `join` waits for it at most the drain timeout plus
    /// [`SHUTDOWN_GRACE`] from the start of its drain, as
    /// [`ServerHandle::shutdown`] does, then logs it and abandons it.
    pub fn join(mut self) {
        let threads = std::mem::take(&mut self.threads);
        self.wait_bounded(threads);
    }

    /// Waits until every worker thread has finished, or every one still
    /// running has drained for longer than the drain timeout plus
    /// [`SHUTDOWN_GRACE`]; joins the finished ones and logs the others.
    fn wait_bounded(&self, threads: Vec<thread::JoinHandle<()>>) {
        let bound = (self.shared.config.drain_timeout + SHUTDOWN_GRACE).as_nanos() as u64;
        loop {
            let now = hermes_bpf::monotonic_ns();
            let waiting = threads.iter().enumerate().filter(|(_, t)| !t.is_finished()).all(|(id, _)| {
                self.shared.workers[id].drain_started_ns().is_some_and(|t| now.saturating_sub(t) >= bound)
            });
            // `all` over no unfinished worker is true: every one exited.
            if waiting {
                break;
            }
            thread::sleep(Duration::from_millis(5));
        }
        for (id, t) in threads.into_iter().enumerate() {
            if t.is_finished() {
                let _ = t.join();
            } else {
                let slot = &self.shared.table[id];
                // Relaxed: lone gauges (see `WorkerState`).
                tracing::error!(
                    worker = id,
                    open_connections = slot.open_conns.load(std::sync::atomic::Ordering::Relaxed),
                    in_flight = slot.in_flight.load(std::sync::atomic::Ordering::Relaxed),
                    "the worker did not stop within the drain timeout; abandoning it"
                );
            }
        }
    }

    /// Lets the server run on after the handle is gone (until the process
    /// exits, or every worker stopped by itself): dropping a handle
    /// otherwise stops the server.
    pub fn detach(mut self) {
        self.threads.clear();
    }
}

impl Drop for ServerHandle {
    /// Begins the drain of every worker unless the handle was joined, shut
    /// down or detached; returns at once.
    fn drop(&mut self) {
        if self.threads.is_empty() {
            return;
        }
        tracing::info!(addr = %self.shared.addr, "server handle dropped; draining every worker");
        for id in 0..self.shared.config.workers {
            self.shared.begin_drain(id);
        }
    }
}
