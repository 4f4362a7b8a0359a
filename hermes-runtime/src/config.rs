//! [`Mode`] and `Config`, the validated settings every worker shares.

use std::{fmt, net::SocketAddr, sync::Arc, time::Duration};

use hermes_bpf::layout::FinePolicy;

use crate::scheduler::Policy;

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
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default, serde::Serialize)]
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
    pub fn as_str(self) -> &'static str {
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
    pub(crate) mode: Mode,
    pub(crate) require_ebpf: bool,
    pub(crate) drain_timeout: Duration,
    pub(crate) policy: Arc<dyn Policy>,
    pub(crate) place_requests: bool,
    pub(crate) reconnect_every: Option<Duration>,
    pub(crate) offload_heavy: Option<Duration>,
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
