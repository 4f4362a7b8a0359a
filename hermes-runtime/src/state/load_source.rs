//! [`LoadSource`]: the reader of a server's [`HostLoad`] that requests,
//! balancers' agents and report streams hold, apart from the server's state
//! so that it does not keep the server alive.

use std::{
    fmt,
    sync::{Arc, Weak},
};

use hermes_bpf::monotonic_ns;

use super::{HostLoad, load::LoadCell, server::ServerState};

/// Reads a server's [`HostLoad`] from anywhere, and counts the errors the
/// server on top answers; made by
/// [`ServerHandle::load_source`](crate::ServerHandle::load_source) or, on a
/// worker, [`WorkerRef::load_source`](crate::context::WorkerRef::load_source).
/// Cloning it is cheap; it does not keep the server alive.
///
/// ```no_run
/// # fn f(handle: &hermes_runtime::ServerHandle) {
/// let source = handle.load_source();
/// let load = source.load(); // per request: no allocation, no lock
/// println!("{:.0}% busy, {:.0} req/s", load.utilization() * 100.0, load.rps);
/// # }
/// ```
#[derive(Clone)]
pub struct LoadSource {
    cell: Arc<LoadCell>,
    server: Weak<ServerState>,
}

impl fmt::Debug for LoadSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LoadSource").field("load", &self.load()).finish()
    }
}

impl LoadSource {
    pub(crate) fn of(server: &Arc<ServerState>) -> Self {
        Self { cell: server.load.clone(), server: Arc::downgrade(server) }
    }

    /// The load last published: a copy of one refresh's values. Allocates
    /// nothing and takes no lock (`arc-swap`'s load), so a server may read
    /// it for every response.
    #[inline]
    pub fn load(&self) -> HostLoad {
        self.cell.load()
    }

    /// Counts one error (a response the server on top counts as failed) in
    /// the host's [`HostLoad::eps`]. One atomic add on a counter the
    /// server's workers share: meant for errors, not for every request.
    #[inline]
    pub fn count_error(&self) {
        self.cell.count_error();
    }

    /// The load now, for readers that are not on the request path (a
    /// balancer's agent, a report stream): `None` once the server is gone.
    /// When no worker has refreshed the load within the hang threshold
    /// (every worker hangs in a handler, or none runs), the eligible
    /// workers are counted afresh by a scheduler pass, so a host whose
    /// workers all hang reads 0 eligible.
    pub fn current(&self) -> Option<HostLoad> {
        let server = self.server.upgrade()?;
        let mut load = self.cell.load();
        let now = monotonic_ns();
        let stale = now.saturating_sub(load.at_ns);
        if stale > server.config.hang_threshold.as_nanos() as u64 {
            load.eligible = server.eligible_now() as u32;
            // Ineligible since the last refresh at the latest.
            load.ineligible_ns = match load.eligible {
                0 => stale + load.ineligible_ns,
                _ => 0,
            };
        }
        Some(load)
    }

    /// Whether the server still runs (its state is still held by a worker
    /// or a handle).
    pub fn is_alive(&self) -> bool {
        self.server.strong_count() > 0
    }
}
