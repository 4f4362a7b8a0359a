//! Which worker the current thread is, in one thread-local entered with one
//! guard, as Tokio keeps its own `CONTEXT`: every worker thread enters its
//! [`WorkerRef`] (and with it its server) for its whole life, and a thread
//! that runs work on a worker's behalf (the blocking-pool thread of an
//! offloaded request) enters the same handle for that work. The Tower layer,
//! the accept path, [`crate::shutdown_signal`] and
//! [`crate::current_snapshot`] all read it.
//!
//! Per request, [`InFlight`] counts the request in the worker's slot (the
//! load signal) and [`ExpectedWork`] its learned cost.

mod request;
mod worker;

use std::cell::RefCell;

pub use request::{ExpectedWork, InFlight, InvalidSampleRate, SampleRate};
pub use worker::WorkerRef;

thread_local! {
    static CONTEXT: RefCell<Option<WorkerRef>> = const { RefCell::new(None) };
}

/// The worker running on this thread, or `None` outside a Hermes worker.
pub fn current() -> Option<WorkerRef> {
    CONTEXT.with(|c| c.borrow().clone())
}

/// Runs `f` with the worker running on this thread (`None` outside a
/// Hermes worker), without cloning its handle: for per-request paths that
/// only read the worker's state and clone the handle when they keep it.
///
/// `f` must not enter another worker ([`WorkerRef::enter`]) while it runs.
#[inline]
pub(crate) fn with_current<R>(f: impl FnOnce(Option<&WorkerRef>) -> R) -> R {
    CONTEXT.with(|c| f(c.borrow().as_ref()))
}

impl WorkerRef {
    /// Makes `self` (and its server) the current thread's worker until the
    /// returned guard drops, which restores what was current before.
    pub fn enter(&self) -> EnterGuard {
        let prev = CONTEXT.with(|c| c.replace(Some(self.clone())));
        EnterGuard { prev }
    }
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
        CONTEXT.with(|c| *c.borrow_mut() = prev);
    }
}
