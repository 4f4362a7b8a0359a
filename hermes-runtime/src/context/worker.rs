//! [`WorkerRef`]: a handle on one worker of one server.

use std::{
    fmt,
    sync::{Arc, atomic::AtomicU32},
};

use hermes_bpf::{WorkerTable, layout::WorkerState};

use crate::state::{LoadSource, ServerState};

struct Inner {
    id: usize,
    table: WorkerTable,
    /// `None` for a worker made by hand, without a server.
    server: Option<Arc<ServerState>>,
    /// Requests of light, known classes seen by this worker, to measure one
    /// in `MEASURE_ONE_IN` of them (see `crate::placement`). Written by the
    /// worker's own thread only.
    seen: AtomicU32,
}

/// A handle on one worker: its slot of the Worker State Table, and the
/// server it belongs to.
///
/// Each worker thread has its own handle (see [`crate::context`]), so the
/// clones a worker makes per request or per connection touch only that
/// worker's reference count: cloning is one uncontended atomic increment.
#[derive(Clone)]
pub struct WorkerRef(Arc<Inner>);

impl WorkerRef {
    /// A worker with no server behind it: slot `id` of `table`, for code
    /// that runs a Hermes layer or guard outside a Hermes server (tests,
    /// benchmarks). Requests it counts go into that slot; it places nothing
    /// and has no snapshot.
    ///
    /// # Panics
    /// If `id` is not a slot of `table`.
    pub fn new(id: usize, table: WorkerTable) -> Self {
        assert!(id < table.len(), "worker id {id} is outside the table ({} slots)", table.len());
        Self(Arc::new(Inner { id, table, server: None, seen: AtomicU32::new(0) }))
    }

    /// Worker `id` of `server`.
    pub(crate) fn of(server: &Arc<ServerState>, id: usize) -> Self {
        Self(Arc::new(Inner {
            id,
            table: server.table.clone(),
            server: Some(server.clone()),
            seen: AtomicU32::new(0),
        }))
    }

    /// The worker id (its slot in the table and in the kernel's socket array).
    pub fn id(&self) -> usize {
        self.0.id
    }

    /// This worker's slot of the Worker State Table.
    pub(crate) fn state(&self) -> &WorkerState {
        &self.0.table[self.0.id]
    }

    /// Slot `id` of the same table.
    pub(crate) fn slot(&self, id: usize) -> &WorkerState {
        &self.0.table[id]
    }

    /// A reader of the host's load ([`LoadSource`]) of this worker's
    /// server; `None` for a worker made by hand, without a server.
    pub fn load_source(&self) -> Option<LoadSource> {
        self.0.server.as_ref().map(LoadSource::of)
    }

    /// The server this worker belongs to, if it has one.
    pub(crate) fn server(&self) -> Option<&Arc<ServerState>> {
        self.0.server.as_ref()
    }

    /// The count of light requests seen, for sampling their cost.
    pub(crate) fn seen(&self) -> &AtomicU32 {
        &self.0.seen
    }
}

impl fmt::Debug for WorkerRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WorkerRef").field("id", &self.0.id).finish()
    }
}
