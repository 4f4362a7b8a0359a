//! [`PassState`]: what the scheduler pass (`pass`) keeps between runs: its
//! output buffer and the set of hung or starved workers it found.

use std::sync::{
    Mutex, MutexGuard,
    atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering},
};

use crate::scheduler::WorkerSet;

/// What the pass keeps between runs.
pub(crate) struct PassState {
    /// The pass's output, reused so that a pass allocates nothing; held
    /// while a pass runs (passes never overlap).
    scratch: Mutex<WorkerSet>,
    /// The workers the last pass found hung (serving, heartbeat older than
    /// the hang threshold) or starved, one bit each.
    stuck: Box<[AtomicU64]>,
    /// Whether any bit of `stuck` is set: the common case, none, is one load.
    any_stuck: AtomicBool,
    /// How many workers the last pass found eligible.
    eligible: AtomicUsize,
}

impl PassState {
    /// The state of a server of `workers` workers.
    pub(crate) fn new(workers: usize) -> Self {
        Self {
            scratch: Mutex::new(WorkerSet::with_capacity(workers)),
            stuck: (0..workers.div_ceil(64)).map(|_| AtomicU64::new(0)).collect(),
            any_stuck: AtomicBool::new(false),
            eligible: AtomicUsize::new(0),
        }
    }

    /// The pass's output buffer, held for the pass (passes never overlap).
    pub(crate) fn scratch(&self) -> MutexGuard<'_, WorkerSet> {
        self.scratch.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Records how many workers the pass found eligible.
    pub(crate) fn set_eligible(&self, n: usize) {
        // Relaxed: a lone gauge, read for the host's load.
        self.eligible.store(n, Ordering::Relaxed);
    }

    /// How many workers the last pass found eligible.
    pub(crate) fn eligible(&self) -> usize {
        // Relaxed: as in `set_eligible`.
        self.eligible.load(Ordering::Relaxed)
    }

    /// The words of the stuck set, for the pass to store.
    pub(crate) fn stuck_words(&self) -> &[AtomicU64] {
        &self.stuck
    }

    /// Records whether any worker was found hung or starved.
    pub(crate) fn set_any_stuck(&self, any: bool) {
        // Relaxed: a hint, see `PassState::stuck`.
        self.any_stuck.store(any, Ordering::Relaxed);
    }

    /// The workers the last pass found hung or starved, in id order.
    pub(crate) fn stuck(&self) -> impl Iterator<Item = usize> + '_ {
        // Relaxed: a hint refreshed every tick; the caller checks the worker
        // again before acting on it.
        let any = self.any_stuck.load(Ordering::Relaxed);
        self.stuck.iter().enumerate().take_while(move |_| any).flat_map(|(i, word)| {
            let mut rest = word.load(Ordering::Relaxed);
            std::iter::from_fn(move || {
                (rest != 0).then(|| {
                    let bit = rest.trailing_zeros() as usize;
                    rest &= rest - 1;
                    i * 64 + bit
                })
            })
        })
    }
}
