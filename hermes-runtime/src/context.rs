//! Which worker the current thread is: the handle the Tower layer and the
//! accept path use to update their own slot of the Worker State Table.

use std::{cell::RefCell, fmt, sync::Arc};

use hermes_bpf::{WorkerTable, layout::WorkerState};

struct Inner {
    id: usize,
    table: WorkerTable,
}

/// A handle on one worker's slot of the Worker State Table.
///
/// Cloning is one uncontended atomic increment: each worker has its own
/// handle, so clones made on a worker touch only that worker's cache line.
#[derive(Clone)]
pub struct WorkerRef(Arc<Inner>);

impl WorkerRef {
    /// A handle on slot `id` of `table`.
    ///
    /// # Panics
    /// If `id` is not a slot of `table`.
    pub fn new(id: usize, table: WorkerTable) -> Self {
        assert!(id < table.len(), "worker id {id} is outside the table ({} slots)", table.len());
        Self(Arc::new(Inner { id, table }))
    }

    /// The worker id (its slot in the table and in the kernel's socket array).
    pub fn id(&self) -> usize {
        self.0.id
    }

    /// This worker's slot.
    pub fn state(&self) -> &WorkerState {
        &self.0.table[self.0.id]
    }

    /// Makes `self` the current thread's worker until the returned guard drops.
    pub fn enter(&self) -> EnterGuard {
        let prev = CURRENT.with(|c| c.replace(Some(self.clone())));
        EnterGuard { prev }
    }
}

impl fmt::Debug for WorkerRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WorkerRef").field("id", &self.0.id).finish()
    }
}

thread_local! {
    static CURRENT: RefCell<Option<WorkerRef>> = const { RefCell::new(None) };
}

/// The worker running on this thread, or `None` outside a Hermes worker.
pub fn current() -> Option<WorkerRef> {
    CURRENT.with(|c| c.borrow().clone())
}

/// Restores the previous current worker when dropped.
#[derive(Debug)]
#[must_use = "the worker is current only while the guard lives"]
pub struct EnterGuard {
    prev: Option<WorkerRef>,
}

impl Drop for EnterGuard {
    fn drop(&mut self) {
        let prev = self.prev.take();
        CURRENT.with(|c| *c.borrow_mut() = prev);
    }
}
