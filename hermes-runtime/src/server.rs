//! [`Server`] and [`ServerHandle`]: a server before and after its workers
//! start, and [`SnapshotSource`]. Both read the same [`ServerState`]; their
//! common accessors are written once, by the `common_accessors!` macro.

use std::{
    fmt,
    future::Future,
    io,
    net::SocketAddr,
    sync::{Arc, Weak},
    thread,
    time::{Duration, Instant},
};

use crate::{
    config::{Config, Mode},
    net::HermesListener,
    state::{LoadSource, ServerState, handover, open},
    stats::{self, Snapshot},
    upgrade::{Upgrade, UpgradeError, Upgraded},
    worker,
};

/// The accessors and the `Debug` form that [`Server`] and [`ServerHandle`]
/// share, on their `server: Arc<ServerState>` field.
macro_rules! common_accessors {
    ($ty:ident) => {
        impl $ty {
            /// The address the server listens on (with the port resolved).
            pub fn local_addr(&self) -> SocketAddr {
                self.server.dispatch.addr
            }

            /// The mode in force: [`Mode::KernelHash`] after a fallback, and
            /// while the dispatch self-check finds the program not running.
            pub fn mode(&self) -> Mode {
                self.server.dispatch.current_mode().0
            }

            /// Why the server is not in [`Mode::Hermes`] though asked to be,
            /// if it is not.
            pub fn mode_reason(&self) -> Option<&str> {
                self.server.dispatch.current_mode().1
            }
        }

        impl fmt::Debug for $ty {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.debug_struct(stringify!($ty))
                    .field("addr", &self.server.dispatch.addr)
                    .field("mode", &self.server.dispatch.mode())
                    .field("workers", &self.server.config.workers)
                    .finish()
            }
        }
    };
}

/// A server whose listeners are bound (and, in Hermes mode, placed in the
/// kernel's socket array) but whose workers are not started yet. Start them
/// with [`Server::serve`].
pub struct Server {
    server: Arc<ServerState>,
    listeners: Vec<Option<std::net::TcpListener>>,
}

common_accessors!(Server);

impl Server {
    pub(crate) fn new(config: Config) -> io::Result<Self> {
        let (server, listeners) = open::open(config)?;
        Ok(Self { server, listeners })
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
        let mut threads = Vec::with_capacity(self.server.config.workers);
        for id in 0..self.server.config.workers {
            let listener = self.listeners[id].take();
            threads.push(worker::spawn(self.server.clone(), id, serve.clone(), listener)?);
        }
        // Return once every worker accepts (bounded: a worker that cannot
        // start is logged by itself and retried).
        let deadline = Instant::now() + Duration::from_secs(10);
        while !self.server.workers.all_started() {
            if Instant::now() >= deadline {
                tracing::warn!(
                    started = self.server.workers.started(),
                    workers = self.server.config.workers,
                    "not every worker started within 10 s; serving with those that did"
                );
                break;
            }
            thread::sleep(Duration::from_millis(1));
        }
        self.server.workers.stop_waiting();
        // A successor takes the list over from the server it replaces now
        // that its workers serve.
        handover::complete(&self.server);
        Ok(ServerHandle { server: self.server, threads })
    }
}

/// Reads a running server's [`Snapshot`] from anywhere; made by
/// [`ServerHandle::snapshot_source`].
///
/// ```no_run
/// # fn f(handle: &hermes_runtime::ServerHandle) {
/// let source = handle.snapshot_source();
/// std::thread::spawn(move || {
///     while let Some(snapshot) = source.snapshot() {
///         println!("{} workers", snapshot.workers.len());
///         std::thread::sleep(std::time::Duration::from_secs(1));
///     }
/// });
/// # }
/// ```
#[derive(Debug, Clone)]
pub struct SnapshotSource {
    /// Weak: the listeners and the kernel state go with the server, not
    /// with its readers.
    server: Weak<ServerState>,
}

impl SnapshotSource {
    /// The server's snapshot now; `None` once the server has been dropped.
    pub fn snapshot(&self) -> Option<Snapshot> {
        self.server.upgrade().map(|server| stats::snapshot(&server))
    }
}

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
    server: Arc<ServerState>,
    threads: Vec<thread::JoinHandle<()>>,
}

common_accessors!(ServerHandle);

impl ServerHandle {
    /// The table, the list and the kernel's counters, now.
    pub fn snapshot(&self) -> Snapshot {
        stats::snapshot(&self.server)
    }

    /// A cheap, cloneable reader of [`snapshot`](Self::snapshot) for another
    /// thread (an exporter, the cross-host feedback agent), which does not
    /// keep the server alive: once the server is gone it reads `None`.
    pub fn snapshot_source(&self) -> SnapshotSource {
        SnapshotSource { server: Arc::downgrade(&self.server) }
    }

    /// A cheap, cloneable reader of the host's load as balancers read it
    /// ([`HostLoad`](crate::HostLoad): utilisation, rates, eligible
    /// workers; refreshed every tick), which does not keep the server alive.
    pub fn load_source(&self) -> LoadSource {
        LoadSource::of(&self.server)
    }

    /// Drains worker `id`: it leaves the list, its listener closes (its
    /// queued connections migrate to the other workers in Hermes mode), its
    /// [`shutdown_signal`](crate::shutdown_signal) resolves, and it exits
    /// once its connections have finished or the drain timeout passed.
    /// Returns at once.
    ///
    /// # Errors
    /// `InvalidInput` if `id` is not a worker.
    pub fn shutdown_worker(&self, id: usize) -> io::Result<()> {
        if id >= self.server.config.workers {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("worker {id} does not exist ({} workers)", self.server.config.workers),
            ));
        }
        self.server.begin_drain(id);
        Ok(())
    }

    /// Drains every worker, one after the other, and waits for them to exit,
    /// at most the drain timeout plus [`SHUTDOWN_GRACE`](crate::SHUTDOWN_GRACE): a worker still
    /// running then (a handler blocking its thread, a stuck blocking task)
    /// is logged with what it still holds and abandoned to end with the
    /// process.
    pub fn shutdown(mut self) {
        self.server.drain_all();
        let threads = std::mem::take(&mut self.threads);
        self.server.wait_for(threads);
    }

    /// Waits for every worker to exit. A server that is not draining runs
    /// until it is stopped (by [`ServerHandle::shutdown`] from a clone of
    /// the process's logic, a signal handler, or
    /// [`ServerHandle::shutdown_worker`]), and `join` waits as long; once a
    /// worker drains, `join` waits for it at most the drain timeout plus
    /// [`SHUTDOWN_GRACE`](crate::SHUTDOWN_GRACE) from the start of its
    /// drain, as [`ServerHandle::shutdown`] does, then logs it and abandons
    /// it.
    pub fn join(mut self) {
        let threads = std::mem::take(&mut self.threads);
        self.server.wait_for(threads);
    }

    /// Hands this server over to a successor process without losing a
    /// connection (see [`crate::upgrade`]): starts the successor (by
    /// default the current binary with the same arguments; it must be built
    /// with [`Builder::upgrade_from_env`](crate::Builder::upgrade_from_env)),
    /// passes it the listeners and the kernel state, and waits until its
    /// workers serve and it has taken the list over. Then this server
    /// stops taking new connections: every worker begins its drain (in
    /// Hermes mode the listeners' queued connections migrate to the
    /// successor's), and the caller should [`ServerHandle::shutdown`] (which
    /// waits at most the drain timeout) and exit. Blocks up to the
    /// upgrade's timeout; call it from a blocking context.
    ///
    /// The drain resolves [`shutdown_signal`](crate::shutdown_signal) at
    /// once. A connection accepted just before, whose first request has not
    /// been read yet, is closed by an immediate graceful shutdown (hyper's):
    /// `hermes_tower::serve` waits 250 ms before it, answering with
    /// `Connection: close` meanwhile; a server of your own should do the same.
    ///
    /// In [`Mode::KernelHash`] the same steps run, but nothing steers new
    /// connections and the stopped listeners' queues have nowhere to go:
    /// the kernel resets those connections, as with any plain
    /// `SO_REUSEPORT` server.
    ///
    /// # Errors
    /// An [`UpgradeError`] saying why, when the successor cannot start,
    /// exits, refuses (another layout version, another mode) or does not
    /// take over within the timeout; the server then keeps serving (taking
    /// the list back if the successor had taken it) and logs the error.
    pub fn upgrade(&self, upgrade: Upgrade) -> Result<Upgraded, UpgradeError> {
        handover::offer(&self.server, upgrade)
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
        tracing::info!(addr = %self.server.dispatch.addr, "server handle dropped; draining every worker");
        self.server.drain_all();
    }
}

#[cfg(test)]
#[path = "server_program_tests.rs"]
mod program_tests;

#[cfg(test)]
mod tests {
    use std::io::Read;

    use hermes_bpf::layout::LAYOUT_VERSION;

    use super::*;
    use crate::Builder;

    use super::program_tests::{CHILD_ENV, MARKER_ENV, old_server, successor_command};

    /// A server whose maps carry another layout version (another release's)
    /// offers them to a successor: the successor's `build` fails with
    /// `UpgradeError::LayoutVersion`, the old server hears why
    /// (`UpgradeError::Refused`), keeps the list and keeps serving.
    #[test]
    fn a_successor_of_another_layout_is_refused_and_the_old_server_keeps_serving() {
        if !hermes_test_support::ebpf::require_bpf("a_successor_of_another_layout_is_refused") {
            return;
        }
        let handle = old_server(b"old");
        // The maps as another release would have made them.
        handle.server.dispatch.control().set_layout_version(LAYOUT_VERSION + 1);
        let marker = std::env::temp_dir().join(format!("hermes-layout-child-{}", std::process::id()));
        let _ = std::fs::remove_file(&marker);
        let mut successor = successor_command("server::tests::layout_successor", "layout_successor");
        successor.env(MARKER_ENV, &marker);
        let err = handle
            .upgrade(Upgrade::new().command(successor).timeout(Duration::from_secs(30)))
            .expect_err("the hand-over is refused");
        let UpgradeError::Refused { reason, .. } = &err else { panic!("not a refusal: {err}") };
        assert!(
            reason.contains(&format!("layout version {}", LAYOUT_VERSION + 1)),
            "the reason names the versions: {reason}"
        );
        let child = std::fs::read_to_string(&marker).expect("the successor ran its checks");
        assert_eq!(child, "refused with LayoutVersion");
        let _ = std::fs::remove_file(&marker);
        // Still the owner, still publishing, still serving.
        assert!(handle.server.dispatch.owns_list());
        thread::sleep(Duration::from_millis(50));
        assert_ne!(handle.snapshot().eligible_count, 0, "the old server keeps publishing its list");
        let mut conn = std::net::TcpStream::connect(handle.local_addr()).expect("connect");
        let mut answer = String::new();
        conn.read_to_string(&mut answer).expect("read");
        assert_eq!(answer, "old");
        handle.shutdown();
    }

    /// The successor of the test above (run only by it).
    #[test]
    #[ignore = "the successor process of the layout-version test"]
    fn layout_successor() {
        if std::env::var(CHILD_ENV).as_deref() != Ok("layout_successor") {
            return;
        }
        let marker = std::env::var_os(MARKER_ENV).expect("marker path");
        let err = Builder::new()
            .workers(2)
            .bind("127.0.0.1:0".parse().unwrap())
            .upgrade_from_env(true)
            .build()
            .expect_err("the hand-over must be refused");
        let inner = err.get_ref().and_then(|e| e.downcast_ref::<UpgradeError>());
        let ok = matches!(inner, Some(UpgradeError::LayoutVersion { found, want })
            if *found == LAYOUT_VERSION + 1 && *want == LAYOUT_VERSION);
        assert!(ok, "refused with {err:?}");
        assert_eq!(err.kind(), io::ErrorKind::InvalidData);
        std::fs::write(marker, "refused with LayoutVersion").expect("write the marker");
    }

    /// Worker 1's housekeeping panics once armed (a user policy that fails).
    #[derive(Debug)]
    struct PanicsOnce(std::sync::Arc<std::sync::atomic::AtomicBool>);

    impl crate::scheduler::Policy for PanicsOnce {
        fn eligible(&self, input: &crate::scheduler::PassInput<'_>, out: &mut crate::scheduler::WorkerSet) {
            if thread::current().name() == Some("hermes-worker-1")
                && self.0.swap(false, std::sync::atomic::Ordering::SeqCst)
            {
                panic!("policy panic requested by the test");
            }
            crate::scheduler::Policy::eligible(&crate::scheduler::LeastLoaded::default(), input, out)
        }
    }

    /// While a worker whose runtime panicked restarts, its runtime is not
    /// offered to moved requests (they would be cancelled with it and
    /// answered 503).
    #[test]
    fn a_panicked_workers_runtime_is_withdrawn_until_it_restarts() {
        let armed = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let server = Builder::new()
            .workers(2)
            .bind("127.0.0.1:0".parse().unwrap())
            .mode(Mode::KernelHash)
            .policy(PanicsOnce(armed.clone()))
            .build()
            .expect("build");
        let handle = server
            .serve(|mut listener: HermesListener| async move {
                while listener.accept_connection().await.is_some() {}
            })
            .expect("serve");
        let placement = &handle.server.placement;
        let until = |what: &str, cond: &dyn Fn() -> bool| {
            let deadline = Instant::now() + Duration::from_secs(5);
            while !cond() {
                assert!(Instant::now() < deadline, "timed out waiting for {what}");
                thread::sleep(Duration::from_millis(1));
            }
        };
        until("worker 1's runtime", &|| placement.handle(1).is_some());
        armed.store(true, std::sync::atomic::Ordering::SeqCst);
        until("worker 1's runtime withdrawn after its panic", &|| placement.handle(1).is_none());
        until("worker 1's new runtime", &|| placement.handle(1).is_some());
        handle.shutdown();
    }
}
