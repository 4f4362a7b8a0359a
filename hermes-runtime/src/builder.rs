//! [`Builder`]: the settings of a Hermes server.

use std::{io, net::SocketAddr, sync::Arc, time::Duration};

use hermes_bpf::layout::FinePolicy;

use crate::{
    config::{Config, Hook, Mode, Settings},
    scheduler::Policy,
    server::Server,
};

/// Builds a [`Server`], in the manner of `tokio::runtime::Builder`.
///
/// ```no_run
/// use std::time::Duration;
/// use hermes_runtime::{Builder, Mode};
///
/// let server = Builder::new()
///     .workers(4)
///     .bind("127.0.0.1:0".parse().unwrap())
///     .mode(Mode::Hermes)
///     .tick(Duration::from_millis(5))
///     .build()?;
/// println!("listening on {}", server.local_addr());
/// # Ok::<(), std::io::Error>(())
/// ```
///
/// # Each worker
///
/// A worker is an OS thread named `hermes-worker-{id}` running a
/// current-thread Tokio runtime. [`Builder::on_worker_runtime`] configures
/// that runtime (its blocking pool, its threads' names and hooks),
/// [`Builder::on_worker_start`] runs code on the worker before it serves,
/// and [`Builder::worker_stack_size`] sizes its thread. Everything a worker
/// runs is inside a `tracing` span `hermes_worker` with a `worker` field, so
/// the handlers' logs carry the worker id.
///
/// # Blocking in a handler
///
/// `tokio::task::block_in_place` panics on a current-thread runtime, so it
/// cannot be used on a worker. Use `tokio::task::spawn_blocking` instead: the
/// closure runs on the worker's blocking pool (sized with
/// `max_blocking_threads` through [`Builder::on_worker_runtime`]) while the
/// worker goes on serving. Blocking the worker thread itself stops its
/// heartbeat, and the scheduler takes it out of the list until it returns.
///
/// ```no_run
/// use hermes_runtime::Builder;
///
/// let mut builder = Builder::new();
/// builder
///     .on_worker_runtime(|id, runtime| {
///         runtime.max_blocking_threads(4).thread_name(format!("hermes-blocking-{id}"));
///     })
///     .on_worker_start(|id| tracing::info!("worker {id} starting"))
///     .worker_stack_size(4 << 20);
/// let server = builder.bind("127.0.0.1:0".parse().unwrap()).build()?;
/// // In a handler: let digest = tokio::task::spawn_blocking(move || expensive(&body)).await?;
/// # Ok::<(), std::io::Error>(())
/// ```
#[derive(Debug, Clone)]
pub struct Builder {
    settings: Settings,
}

impl Default for Builder {
    fn default() -> Self {
        Self::new()
    }
}

impl Builder {
    /// A builder with every setting at its default.
    pub fn new() -> Self {
        Self { settings: Settings::default() }
    }

    /// Number of worker threads, 1 to
    /// [`MAX_WORKERS`](hermes_bpf::layout::MAX_WORKERS) (1024); more is
    /// refused by [`Builder::build`], naming the maximum. Default:
    /// [`std::thread::available_parallelism`]: the CPUs this process may run
    /// on, lowered to its cgroup's CPU quota (`cpu.max`, or
    /// `cpu.cfs_quota_us` under cgroup v1), so a container limited to 2 CPUs
    /// on a 64-core host runs 2 workers rather than 64 throttled ones (a
    /// machine of more CPUs than the maximum runs the maximum, and says so
    /// in a warning). Set it explicitly when the quota is fractional or
    /// changes at run time.
    pub fn workers(&mut self, n: usize) -> &mut Self {
        self.settings.workers = Some(n);
        self
    }

    /// The address every worker listens on. Port 0 picks a free port once;
    /// every worker then binds that port. An IPv6 address is bound
    /// dual-stack (`IPV6_V6ONLY` off, as `std::net::TcpListener` does on
    /// Linux by default): `[::]` takes IPv4 clients too, as IPv4-mapped
    /// addresses. Default: `0.0.0.0:8080`.
    pub fn bind(&mut self, addr: SocketAddr) -> &mut Self {
        self.settings.addr = addr;
        self
    }

    /// Pin worker `i` to the `i`-th CPU this process may run on (modulo
    /// their number). A refused pin is logged at debug level and ignored.
    /// The workers' blocking pools are not pinned: their threads may run on
    /// every CPU the process may.
    ///
    /// Default: pinned when the process may run on only some of the
    /// machine's online CPUs (cores given to it: taskset, a cpuset, a
    /// container's `--cpuset-cpus`, Kubernetes' static CPU manager) or when
    /// [`Builder::locality`] is on; not pinned when it may run on all of
    /// them. There it shares its cores with whatever else runs (sidecars,
    /// other services, a load generator), and a pinned worker waits for its
    /// one CPU while another is idle: with the load generator on the same two
    /// cores, unpinned workers served 1.09× the requests at saturation (see
    /// the README's "Pinning"). [`Snapshot::pinned`](crate::Snapshot::pinned)
    /// says which was chosen.
    pub fn pin_workers(&mut self, pin: bool) -> &mut Self {
        self.settings.pin_workers = Some(pin);
        self
    }

    /// The `listen` backlog of each listener, at least 1. Default: 1024.
    pub fn backlog(&mut self, backlog: u32) -> &mut Self {
        self.settings.backlog = backlog;
        self
    }

    /// How often each worker stores its heartbeat and exports metrics, and
    /// the server (one worker per half tick, whichever comes first) samples
    /// the accept queues and runs a scheduler pass; 1 ms to 1 s. Default:
    /// 5 ms.
    pub fn tick(&mut self, tick: Duration) -> &mut Self {
        self.settings.tick = tick;
        self
    }

    /// A worker whose heartbeat is older than this is hung and never
    /// eligible; it must exceed the tick. Default: two ticks, so a blocked
    /// worker leaves the list within three ticks.
    pub fn hang_threshold(&mut self, threshold: Duration) -> &mut Self {
        self.settings.hang_threshold = Some(threshold);
        self
    }

    /// The scheduler keeps at least this many candidates when that many
    /// fresh, serving workers exist, adding the least loaded ones; 1 to the
    /// number of workers. Hung workers are never added, so the list can
    /// hold fewer: the kernel program is told to honour any non-empty
    /// list, since hashing would reach the hung workers again. Default: 1.
    pub fn min_candidates(&mut self, n: u32) -> &mut Self {
        self.settings.min_candidates = n;
        self
    }

    /// A list older than this is ignored by the kernel program, which then
    /// uses the kernel's hash (every worker hung or the schedulers stopped);
    /// it must exceed the hang threshold. Default: ten ticks.
    pub fn staleness_limit(&mut self, limit: Duration) -> &mut Self {
        self.settings.max_stale = Some(limit);
        self
    }

    /// How the kernel program picks one worker among the candidates.
    /// Default: [`FinePolicy::TwoChoices`].
    pub fn fine_policy(&mut self, policy: FinePolicy) -> &mut Self {
        self.settings.fine_policy = policy;
        self
    }

    /// Locality: when several workers are eligible, the one pinned to the
    /// CPU that received the connection's packets (the least loaded of them,
    /// when several are) is the kernel program's first candidate, and wins
    /// ties of the fine filter ([`FinePolicy::Hash`]: it always wins). Its
    /// cache and the connection's stay on one CPU, as ntex's `IncomingCpu`
    /// does; the fine filter still passes it over for a less loaded worker.
    /// Needs pinned workers ([`Builder::pin_workers`]); connections received
    /// on a CPU without an eligible worker are placed as without locality.
    /// Default: off (see the README for how it measured).
    pub fn locality(&mut self, on: bool) -> &mut Self {
        self.settings.locality = on;
        self
    }

    /// The scheduling policy. Default: [`LeastLoaded::default()`](crate::scheduler::LeastLoaded).
    pub fn policy(&mut self, policy: impl Policy) -> &mut Self {
        self.settings.policy = Arc::new(policy);
        self
    }

    /// How new connections are placed. Default: [`Mode::Hermes`].
    pub fn mode(&mut self, mode: Mode) -> &mut Self {
        self.settings.mode = mode;
        self
    }

    /// In [`Mode::Hermes`], fail in [`Builder::build`] when the dispatch
    /// program cannot be loaded, instead of running with the kernel's hash.
    /// Default: false.
    pub fn require_ebpf(&mut self, require: bool) -> &mut Self {
        self.settings.require_ebpf = require;
        self
    }

    /// How long a draining worker waits for its open connections to finish
    /// before it exits and closes them. Default: 30 s.
    pub fn drain_timeout(&mut self, timeout: Duration) -> &mut Self {
        self.settings.drain_timeout = timeout;
        self
    }

    /// Sets `TCP_NODELAY` on every accepted connection, in every mode (and
    /// so in `hermes_tower::serve` and `serve_tonic`). Default: on, as in
    /// tonic.
    ///
    /// With Nagle's algorithm (the option off), the kernel holds back a small
    /// write while an earlier one is unacknowledged, and the client's delayed
    /// ACK holds that acknowledgement for up to 40 ms: a server that writes a
    /// reply in more than one piece, or answers pipelined requests one write
    /// at a time, then waits about 40 ms per round trip. Servers here write
    /// whole replies, so they gain nothing from the kernel coalescing them;
    /// turn it off only for a protocol that makes many tiny writes and cares
    /// more for packets than for latency. A refused option is logged at
    /// debug level and the connection is served anyway.
    pub fn tcp_nodelay(&mut self, nodelay: bool) -> &mut Self {
        self.settings.tcp_nodelay = nodelay;
        self
    }

    /// Configures each worker's Tokio runtime: `f` is called on the worker's
    /// thread with the worker id and the worker's `tokio::runtime::Builder`
    /// (current-thread, all drivers enabled) each time the worker's runtime
    /// is built (at start, and again when a worker is restarted after a
    /// panic). Use it for the blocking pool (`max_blocking_threads`,
    /// `thread_keep_alive`, `thread_stack_size`, `thread_name`,
    /// `on_thread_start` and `on_thread_stop`, which apply to the pool's
    /// threads), `event_interval`, `global_queue_interval`, and so on.
    ///
    /// `on_thread_park` and `on_thread_unpark` are the worker's heartbeat
    /// and busy time: set here, they are replaced by the worker's own.
    /// With pinned workers, the worker's own `on_thread_start` gives the
    /// blocking pool's threads every CPU of the process (they would inherit
    /// the worker's one CPU); an `on_thread_start` set here replaces it.
    /// Default: none.
    pub fn on_worker_runtime<F>(&mut self, f: F) -> &mut Self
    where
        F: Fn(usize, &mut tokio::runtime::Builder) + Send + Sync + 'static,
    {
        self.settings.on_runtime = Some(Hook(Arc::new(f)));
        self
    }

    /// Runs `f` on each worker's thread with the worker id, inside the
    /// worker's runtime and `tracing` span, before the worker serves (at
    /// start, and again after a restart). Per-worker state (a thread-local
    /// cache, a connection pool) is made here. Default: none.
    pub fn on_worker_start<F>(&mut self, f: F) -> &mut Self
    where
        F: Fn(usize) + Send + Sync + 'static,
    {
        self.settings.on_start = Some(Hook(Arc::new(f)));
        self
    }

    /// The time slice each worker thread asks the kernel's fair scheduler
    /// for (EEVDF, Linux 6.12 and later; `sched_setattr` with
    /// `sched_runtime`, no privilege needed), 100 µs to 100 ms; `None`
    /// leaves the kernel's default. A per-core worker that another process
    /// keeps off its core stalls every connection it owns; a shorter slice
    /// gives it earlier deadlines, so that on waking for a request it
    /// preempts threads running on longer slices sooner. Its share of the
    /// CPU does not change. An older kernel ignores it (logged at debug
    /// level). Default: `None`.
    pub fn worker_slice(&mut self, slice: Option<Duration>) -> &mut Self {
        self.settings.worker_slice = slice;
        self
    }

    /// The stack size of each worker thread, in bytes (more than 0). The
    /// blocking pool's threads are sized with `thread_stack_size` in
    /// [`Builder::on_worker_runtime`]. Default: Rust's default for spawned
    /// threads (2 MiB, or `RUST_MIN_STACK`).
    pub fn worker_stack_size(&mut self, bytes: usize) -> &mut Self {
        self.settings.stack_size = Some(bytes);
        self
    }

    /// Whether a request may run on another worker than its connection's
    /// when the table says it pays (see [`crate::placement`]; the Tower
    /// layer `hermes_tower::Place` does the moving). Off: every request runs
    /// on its connection's worker; costs are still learned and shown.
    /// Default: on.
    pub fn place_requests(&mut self, place: bool) -> &mut Self {
        self.settings.place_requests = place;
        self
    }

    /// While a worker stays overloaded and another has room, ask at most one
    /// of its HTTP/1 keep-alive connections per `every` to reconnect
    /// (`Connection: close` on a response), so that the kernel places it
    /// again with the current table; `None` never asks (see
    /// [`crate::placement::Reconnect`]). HTTP/2 connections are not asked:
    /// their streams are placed one by one.
    /// Default: every 100 ms.
    pub fn reconnect_overloaded(&mut self, every: Option<Duration>) -> &mut Self {
        self.settings.reconnect_every = every;
        self
    }

    /// Run the requests of a route (its path, folded onto one of 64 cost
    /// classes; see [`crate::placement`]) learned to hold the worker's thread
    /// for at least `threshold` per request (CPU work without an `.await`,
    /// a blocking call) on the worker runtime's blocking pool, so that the
    /// worker goes on reading and answering its other connections; `None`
    /// keeps every request on a worker. Takes effect with
    /// [`Builder::place_requests`] on and the Tower layer
    /// `hermes_tower::Place` in the stack (`hermes_tower::serve` adds it).
    /// The pool's size is Tokio's (`max_blocking_threads`, set in
    /// [`Builder::on_worker_runtime`]); see [`crate::placement`] for why.
    /// Default: 1 ms.
    pub fn offload_heavy(&mut self, threshold: Option<Duration>) -> &mut Self {
        self.settings.offload_heavy = threshold;
        self
    }

    /// The most requests one worker runs on its blocking pool at once (see
    /// [`Builder::offload_heavy`]). Past it, a request of a route learned to
    /// hold its thread is not run at all: the server on top answers it
    /// `503 Service Unavailable` with `Retry-After: 1` (`hermes_tower`
    /// does), and it is counted as `shed` in the snapshot and
    /// `hermes_shed_total`, and logged at most once a second per worker.
    /// The pool's threads are not pinned (they may run on any CPU the
    /// process may use), so this bounds how many of the process's cores
    /// heavy handlers take from the workers. `None` leaves the bound to
    /// Tokio's blocking pool (`max_blocking_threads`, 512 by default), past
    /// which requests wait for a thread. Default: 64.
    pub fn max_offloaded(&mut self, max: Option<u32>) -> &mut Self {
        self.settings.max_offloaded = max;
        self
    }

    /// Start as the successor of a running server when the environment
    /// names a hand-over socket ([`crate::upgrade::UPGRADE_FD_ENV`], set by
    /// [`ServerHandle::upgrade`](crate::ServerHandle::upgrade) for the
    /// process it starts); without it, start as usual.
    ///
    /// A successor takes the running server's listeners and kernel state
    /// (program, Worker State Table, list, counters) instead of loading its
    /// own: [`Builder::build`] receives them, binds this server's listeners
    /// into the same `SO_REUSEPORT` group on the running server's address
    /// (a port set here must be that one; port 0 takes it), and
    /// [`Server::serve`](crate::Server::serve) takes the list over once
    /// every worker serves, after which the running server drains. When the
    /// hand-over is refused (another [layout
    /// version](hermes_bpf::layout::LAYOUT_VERSION), another mode, no free
    /// slots), `build` fails with an [`UpgradeError`](crate::UpgradeError)
    /// inside the `io::Error`, the running server is told why and keeps
    /// serving. Default: off.
    pub fn upgrade_from_env(&mut self, on: bool) -> &mut Self {
        self.settings.upgrade_from_env = on;
        self
    }

    /// Serve on the listeners systemd passes (socket activation:
    /// `LISTEN_FDS` descriptors from 3, for the process named by
    /// `LISTEN_PID`), when there are any; without them, bind as usual.
    ///
    /// What the server needs of them: listening TCP sockets on one address,
    /// each with `SO_REUSEPORT` (`ReusePort=yes` in the `.socket` unit), at
    /// most one per worker. The first workers serve on the passed sockets,
    /// and the server binds one more into the same `SO_REUSEPORT` group for
    /// each remaining worker (so `ListenStream=` once is enough); the
    /// address set with [`Builder::bind`] is then ignored. The kernel
    /// program is attached to the group as usual. A socket without
    /// `SO_REUSEPORT`, or more sockets than workers, fail [`Builder::build`]
    /// with `InvalidInput` saying so. Not in [`Mode::SharedListener`].
    /// Default: off.
    pub fn socket_activation(&mut self, on: bool) -> &mut Self {
        self.settings.socket_activation = on;
        self
    }

    /// The most connections one worker keeps open. A connection accepted
    /// beyond it is closed at once (the client sees the connection closed
    /// before any response), counted in the worker's `refused` (snapshot,
    /// `hermes_refused_total`) and logged at most once a second per worker;
    /// it is never left waiting in the accept queue. `None`: no limit (the
    /// file-descriptor limit then refuses, with `EMFILE` and a back-off).
    /// Default: 65 536.
    pub fn max_connections_per_worker(&mut self, max: Option<u32>) -> &mut Self {
        self.settings.max_connections = max;
        self
    }

    /// Whether a worker takes the connections queued on a hung or starved
    /// worker's listener. Connections the kernel queued on a worker's
    /// listener before the scheduler noticed the worker hang (its heartbeat
    /// older than the hang threshold) or starve (it waited for a CPU half of
    /// its recent ticks or more: another process holds its core) would wait
    /// there until it comes back: with this on,
    /// the other workers accept them at their next tick and serve them,
    /// counted as `rescued` (snapshot, `hermes_rescued_total`) and logged at
    /// most once a second per worker. Not in the shared-listener mode (every
    /// worker accepts from the one listener there). Default: on.
    pub fn rescue_hung_queues(&mut self, rescue: bool) -> &mut Self {
        self.settings.rescue_hung = rescue;
        self
    }

    /// The settings, validated.
    pub(crate) fn config(&self) -> io::Result<Config> {
        self.settings.validate()
    }

    /// Validates the settings, binds the listeners and, in [`Mode::Hermes`],
    /// loads the dispatch program and places each listener in its slot.
    ///
    /// # Errors
    /// `InvalidInput` naming the setting when one is out of range; the bind
    /// error; in [`Mode::Hermes`] with [`Builder::require_ebpf`], the reason
    /// the program could not be loaded (`PermissionDenied` without CAP_BPF).
    pub fn build(&self) -> io::Result<Server> {
        Server::new(self.config()?)
    }
}
