//! [`Mode`] and `Config`, the validated settings every worker shares.

use std::{fmt, io, net::SocketAddr, sync::Arc, time::Duration};

use hermes_bpf::layout::{FinePolicy, MAX_WORKERS};

use crate::{
    scheduler::{LeastLoaded, Policy},
    sys,
};

/// How new connections are placed on workers.
///
/// ```
/// use hermes_runtime::Mode;
///
/// assert_eq!(Mode::default(), Mode::Hermes);
/// assert_eq!(Mode::KernelHash.to_string(), "kernel-hash");
/// // Snapshots (`/_hermes/stats`) carry the same name.
/// assert_eq!(serde_json::to_string(&Mode::SharedListener).unwrap(), r#""shared-listener""#);
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Mode {
    /// Each worker has its own `SO_REUSEPORT` listener and the Hermes eBPF
    /// program places each new connection on an eligible worker.
    #[default]
    Hermes,
    /// Each worker has its own `SO_REUSEPORT` listener and the kernel's hash
    /// of the connection's 4-tuple places it (no program).
    KernelHash,
    /// One listening socket registered in every worker's event loop with
    /// `EPOLLEXCLUSIVE` (nginx's default): the first worker woken accepts.
    SharedListener,
}

impl Mode {
    /// The mode's name in snapshots and metrics: `hermes`, `kernel-hash` or
    /// `shared-listener`.
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Mode::Hermes => "hermes",
            Mode::KernelHash => "kernel-hash",
            Mode::SharedListener => "shared-listener",
        }
    }
}

impl fmt::Display for Mode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The validated settings, shared by every worker.
#[derive(Debug, Clone)]
pub(crate) struct Config {
    pub(crate) workers: usize,
    pub(crate) addr: SocketAddr,
    pub(crate) pin_workers: bool,
    pub(crate) backlog: u32,
    pub(crate) tick: Duration,
    pub(crate) hang_threshold: Duration,
    pub(crate) min_candidates: u32,
    pub(crate) max_stale: Duration,
    pub(crate) fine_policy: FinePolicy,
    pub(crate) locality: bool,
    pub(crate) mode: Mode,
    pub(crate) require_ebpf: bool,
    pub(crate) drain_timeout: Duration,
    pub(crate) policy: Arc<dyn Policy>,
    pub(crate) place_requests: bool,
    pub(crate) reconnect_every: Option<Duration>,
    pub(crate) offload_heavy: Option<Duration>,
    pub(crate) max_offloaded: Option<u32>,
    pub(crate) worker_slice: Option<Duration>,
    pub(crate) tcp_nodelay: bool,
    pub(crate) on_runtime: Option<Hook<RuntimeHook>>,
    pub(crate) on_start: Option<Hook<StartHook>>,
    pub(crate) stack_size: Option<usize>,
    pub(crate) upgrade_from_env: bool,
    pub(crate) socket_activation: bool,
    pub(crate) max_connections: Option<u32>,
    pub(crate) rescue_hung: bool,
}

/// A function run on each worker, shared by every worker.
pub(crate) struct Hook<F: ?Sized>(pub(crate) Arc<F>);

impl<F: ?Sized> Clone for Hook<F> {
    fn clone(&self) -> Self {
        Self(self.0.clone())
    }
}

impl<F: ?Sized> fmt::Debug for Hook<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Hook(..)")
    }
}

/// [`Builder::on_worker_runtime`](crate::Builder::on_worker_runtime)'s function.
pub(crate) type RuntimeHook = dyn Fn(usize, &mut tokio::runtime::Builder) + Send + Sync;
/// [`Builder::on_worker_start`](crate::Builder::on_worker_start)'s function.
pub(crate) type StartHook = dyn Fn(usize) + Send + Sync;

/// The default of [`Builder::max_connections_per_worker`](crate::Builder::max_connections_per_worker).
pub const DEFAULT_MAX_CONNECTIONS: u32 = 65_536;

/// The default offload threshold (`Builder::offload_heavy`): a request
/// class that holds its worker's thread for a millisecond per request
/// stalls the worker's other connections for that long, while the hand-over
/// to the blocking pool costs tens of microseconds.
pub(crate) const DEFAULT_OFFLOAD: Duration = Duration::from_millis(1);

/// The default of [`Builder::max_offloaded`](crate::Builder::max_offloaded).
pub(crate) const DEFAULT_MAX_OFFLOADED: u32 = 64;

/// The settings as a [`Builder`](crate::Builder) holds them, before
/// validation.
#[derive(Debug, Clone)]
pub(crate) struct Settings {
    pub(crate) workers: Option<usize>,
    pub(crate) addr: SocketAddr,
    /// `None`: decided when the settings are validated (see `Builder::pin_workers`).
    pub(crate) pin_workers: Option<bool>,
    pub(crate) backlog: u32,
    pub(crate) tick: Duration,
    pub(crate) hang_threshold: Option<Duration>,
    pub(crate) min_candidates: u32,
    pub(crate) max_stale: Option<Duration>,
    pub(crate) fine_policy: FinePolicy,
    pub(crate) locality: bool,
    pub(crate) mode: Mode,
    pub(crate) require_ebpf: bool,
    pub(crate) drain_timeout: Duration,
    pub(crate) policy: Arc<dyn Policy>,
    pub(crate) tcp_nodelay: bool,
    pub(crate) on_runtime: Option<Hook<RuntimeHook>>,
    pub(crate) on_start: Option<Hook<StartHook>>,
    pub(crate) stack_size: Option<usize>,
    pub(crate) place_requests: bool,
    pub(crate) reconnect_every: Option<Duration>,
    pub(crate) offload_heavy: Option<Duration>,
    pub(crate) max_offloaded: Option<u32>,
    pub(crate) worker_slice: Option<Duration>,
    pub(crate) upgrade_from_env: bool,
    pub(crate) socket_activation: bool,
    pub(crate) max_connections: Option<u32>,
    pub(crate) rescue_hung: bool,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            workers: None,
            addr: SocketAddr::from(([0, 0, 0, 0], 8080)),
            pin_workers: None,
            backlog: 1024,
            tick: Duration::from_millis(5),
            hang_threshold: None,
            min_candidates: 1,
            max_stale: None,
            fine_policy: FinePolicy::default(),
            locality: false,
            mode: Mode::Hermes,
            require_ebpf: false,
            drain_timeout: Duration::from_secs(30),
            policy: Arc::new(LeastLoaded::default()),
            tcp_nodelay: true,
            on_runtime: None,
            on_start: None,
            stack_size: None,
            place_requests: true,
            reconnect_every: Some(Duration::from_millis(100)),
            offload_heavy: Some(DEFAULT_OFFLOAD),
            max_offloaded: Some(DEFAULT_MAX_OFFLOADED),
            worker_slice: None,
            upgrade_from_env: false,
            socket_activation: false,
            max_connections: Some(DEFAULT_MAX_CONNECTIONS),
            rescue_hung: true,
        }
    }
}

/// The default worker count on `cpus` CPUs: one per CPU, at most
/// [`MAX_WORKERS`]; above it, the maximum, with a warning saying so.
fn default_workers(cpus: usize) -> usize {
    if cpus > MAX_WORKERS {
        tracing::warn!(
            cpus,
            workers = MAX_WORKERS,
            "more CPUs than one server's most workers: running {MAX_WORKERS} workers (set `workers` to choose)"
        );
    }
    cpus.clamp(1, MAX_WORKERS)
}

fn invalid(msg: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidInput, msg)
}

impl Settings {
    pub(crate) fn validate(&self) -> io::Result<Config> {
        let workers = match self.workers {
            Some(n) => n,
            None => default_workers(std::thread::available_parallelism().map_or(1, |n| n.get())),
        };
        if !(1..=MAX_WORKERS).contains(&workers) {
            return Err(invalid(format!(
                "workers must be 1 to {MAX_WORKERS} (the most one server holds), got {workers}"
            )));
        }
        if self.backlog == 0 {
            return Err(invalid("backlog must be at least 1".into()));
        }
        if self.tick < Duration::from_millis(1) || self.tick > Duration::from_secs(1) {
            return Err(invalid(format!("tick must be 1 ms to 1 s, got {:?}", self.tick)));
        }
        let hang_threshold = self.hang_threshold.unwrap_or(self.tick * 2);
        if hang_threshold <= self.tick {
            return Err(invalid(format!(
                "hang_threshold ({hang_threshold:?}) must exceed the tick ({:?})",
                self.tick
            )));
        }
        if self.min_candidates == 0 || self.min_candidates as usize > workers {
            return Err(invalid(format!(
                "min_candidates must be 1 to the number of workers ({workers}), got {}",
                self.min_candidates
            )));
        }
        if self.reconnect_every.is_some_and(|d| d.is_zero()) {
            return Err(invalid(
                "reconnect_overloaded: the interval must not be zero (None turns it off)".into(),
            ));
        }
        let max_stale = self.max_stale.unwrap_or(self.tick * 10);
        if max_stale <= hang_threshold {
            return Err(invalid(format!(
                "staleness_limit ({max_stale:?}) must exceed the hang threshold ({hang_threshold:?})"
            )));
        }
        if self.offload_heavy.is_some_and(|d| d < Duration::from_micros(100)) {
            return Err(invalid(format!(
                "offload_heavy: the threshold must be at least 100 µs (a hand-over to the blocking pool \
                 costs tens of microseconds), got {:?}; None turns it off",
                self.offload_heavy.unwrap_or_default()
            )));
        }
        if self.worker_slice.is_some_and(|s| s < Duration::from_micros(100) || s > Duration::from_millis(100))
        {
            return Err(invalid(format!(
                "worker_slice must be 100 µs to 100 ms (the kernel's range), got {:?}; None leaves the kernel's",
                self.worker_slice.unwrap_or_default()
            )));
        }
        if self.max_offloaded == Some(0) {
            return Err(invalid(
                "max_offloaded must be at least 1 (None: Tokio's blocking pool bounds it)".into(),
            ));
        }
        if self.stack_size == Some(0) {
            return Err(invalid("worker_stack_size must be more than 0 bytes".into()));
        }
        if self.max_connections == Some(0) {
            return Err(invalid("max_connections_per_worker must be at least 1 (None: no limit)".into()));
        }
        // Unless set: pinned where the process was given cores of its own, or
        // where locality (which needs a worker per CPU) is on.
        let pin_workers = self.pin_workers.unwrap_or_else(|| self.locality || sys::given_a_cpu_subset());
        Ok(Config {
            workers,
            addr: self.addr,
            pin_workers,
            backlog: self.backlog,
            tick: self.tick,
            hang_threshold,
            min_candidates: self.min_candidates,
            max_stale,
            fine_policy: self.fine_policy,
            locality: self.locality,
            mode: self.mode,
            require_ebpf: self.require_ebpf,
            drain_timeout: self.drain_timeout,
            policy: self.policy.clone(),
            tcp_nodelay: self.tcp_nodelay,
            on_runtime: self.on_runtime.clone(),
            on_start: self.on_start.clone(),
            stack_size: self.stack_size,
            place_requests: self.place_requests,
            reconnect_every: self.reconnect_every,
            offload_heavy: self.offload_heavy,
            max_offloaded: self.max_offloaded,
            worker_slice: self.worker_slice,
            upgrade_from_env: self.upgrade_from_env,
            socket_activation: self.socket_activation,
            max_connections: self.max_connections,
            rescue_hung: self.rescue_hung,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// No silent clamp: a default above the maximum is the maximum (with a
    /// warning), an explicit count above it is refused with the maximum.
    #[test]
    fn worker_counts_beyond_the_maximum() {
        assert_eq!(default_workers(2), 2);
        assert_eq!(default_workers(0), 1);
        assert_eq!(default_workers(MAX_WORKERS + 500), MAX_WORKERS);
        let settings = Settings { workers: Some(MAX_WORKERS + 1), ..Settings::default() };
        let err = settings.validate().unwrap_err();
        assert!(err.to_string().contains(&format!("1 to {MAX_WORKERS}")), "{err}");
        let settings = Settings { workers: Some(MAX_WORKERS), ..Settings::default() };
        assert_eq!(settings.validate().unwrap().workers, MAX_WORKERS);
    }
}
