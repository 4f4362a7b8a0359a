//! The scheduler: turns the Worker State Table into the set of workers that
//! may take new connections ([`WorkerSet`]), which the runtime publishes to
//! the kernel program as a list.
//!
//! Any worker may run the pass and publish (with
//! [`Control::publish_as`]: a try-lock and a few stores per eligible
//! worker, no syscall); on each tick the first worker to get there runs it
//! for the server, so the work per tick stays O(workers) at any count. A
//! worker stuck in a handler cannot run the pass, which is exactly why any
//! of them may: the others see its heartbeat age and take it out of the
//! list.

mod set;

use std::{fmt, sync::atomic::Ordering};

use hermes_bpf::layout::{Control, WorkerPhase, WorkerState};
pub use set::WorkerSet;

/// What a [`Policy`] sees on each pass.
#[derive(Debug, Clone, Copy)]
pub struct PassInput<'a> {
    /// The slots of this server's workers (slot `i` is worker `i`).
    pub workers: &'a [WorkerState],
    /// `CLOCK_MONOTONIC` nanoseconds at the start of the pass.
    pub now_ns: u64,
    /// Workers whose heartbeat is older than this are hung.
    pub hang_threshold_ns: u64,
    /// The number of candidates the policy should try to keep.
    pub min_candidates: u32,
}

impl PassInput<'_> {
    /// Whether worker `i` turned its event loop within the hang threshold.
    pub fn is_fresh(&self, i: usize) -> bool {
        // Relaxed: the heartbeat is a lone timestamp, it guards no other data.
        let hb = self.workers[i].heartbeat_ns.load(Ordering::Relaxed);
        hb != 0 && self.now_ns.saturating_sub(hb) <= self.hang_threshold_ns
    }
}

/// A scheduling policy: which workers may take new connections.
///
/// Implementations add the eligible workers to `out` (empty on entry, with
/// room for every worker of `input.workers`), and must never add a worker
/// whose heartbeat is stale ([`PassInput::is_fresh`] false). The runtime
/// additionally removes every worker that is not [`WorkerPhase::Serving`].
/// Keep a pass O(workers): it runs every tick, on up to
/// [`MAX_WORKERS`](hermes_bpf::layout::MAX_WORKERS) workers.
///
/// ```
/// use hermes_runtime::scheduler::{PassInput, Policy, WorkerSet};
///
/// /// Every fresh worker, whatever its load.
/// #[derive(Debug)]
/// struct AllFresh;
///
/// impl Policy for AllFresh {
///     fn eligible(&self, input: &PassInput<'_>, out: &mut WorkerSet) {
///         out.extend((0..input.workers.len()).filter(|&i| input.is_fresh(i)));
///     }
/// }
/// ```
pub trait Policy: Send + Sync + fmt::Debug + 'static {
    /// Adds the eligible workers (by id: slot `i` of `input.workers` is
    /// worker `i`) to `out`.
    fn eligible(&self, input: &PassInput<'_>, out: &mut WorkerSet);
}

/// The default policy.
///
/// A worker is eligible when its heartbeat is fresh, it is serving, and its
/// load (open connections + in-flight requests + accept queue, the same sum
/// the kernel's fine filter compares) is within `margin` of the least loaded
/// such worker, where `margin = max(absolute, least * percent / 100)`. When
/// fewer than the minimum candidates qualify, the least loaded of the other
/// fresh, serving workers are added. A hung worker is never eligible.
///
/// Why this default: the kernel's fine filter already balances between the
/// candidates by load (two choices), so the list's job is to exclude the
/// workers that cannot take work now (hung, draining) or are clearly behind.
/// A margin keeps most workers in the list under even load, so the fine
/// filter has room to choose and a burst arriving between two ticks is
/// spread rather than dumped on the single least loaded worker of the last
/// pass. Measured (`tests/policy.rs`, 4 workers, 400 kept-open connections
/// opened in bursts of 50, six runs): spread between the most and least
/// loaded worker 22 to 49 connections with no margin, 3 to 20 with the
/// default, 2 to 15 with every fresh worker eligible. The margin costs a
/// little balance against leaving every fresh worker to the fine filter, and
/// buys the exclusion of workers that fall clearly behind (a slow worker
/// whose queue and in-flight requests grow).
///
/// ```
/// use hermes_runtime::scheduler::LeastLoaded;
///
/// let policy = LeastLoaded { absolute: 4, percent: 25 };
/// assert_eq!(policy, LeastLoaded::default());
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LeastLoaded {
    /// Load margin above the least loaded worker, in connections (default 4).
    pub absolute: u64,
    /// Load margin as a percentage of the least load (default 25).
    pub percent: u64,
}

impl Default for LeastLoaded {
    fn default() -> Self {
        Self { absolute: 4, percent: 25 }
    }
}

fn serving(w: &WorkerState) -> bool {
    w.phase() == WorkerPhase::Serving
}

/// A worker's load as the default policy weighs it: [`WorkerState::load`],
/// plus its stall counted as connections (`stall_permille / 32`: up to 31
/// for a worker kept off its core all the time). A worker that waits for
/// a CPU half the time serves at half speed, whatever its own load says.
fn weighted_load(w: &WorkerState) -> u64 {
    // Relaxed: a lone gauge (see `WorkerState`).
    w.load() + u64::from(w.stall_permille.load(Ordering::Relaxed) >> 5)
}

impl Policy for LeastLoaded {
    /// O(workers): one pass for the least load, one for the margin; the top
    /// up scans once more per worker it adds (`min_candidates` is small).
    fn eligible(&self, input: &PassInput<'_>, out: &mut WorkerSet) {
        let fresh = |i: usize, w: &WorkerState| serving(w) && input.is_fresh(i);
        let Some(least) = input
            .workers
            .iter()
            .enumerate()
            .filter(|&(i, w)| fresh(i, w))
            .map(|(_, w)| weighted_load(w))
            .min()
        else {
            return;
        };
        let limit = least.saturating_add(self.absolute.max(least.saturating_mul(self.percent) / 100));
        let mut added = 0;
        for (i, w) in input.workers.iter().enumerate() {
            if fresh(i, w) && weighted_load(w) <= limit {
                out.insert(i);
                added += 1;
            }
        }
        // Top up with the least loaded of the remaining fresh workers.
        while added < input.min_candidates as usize {
            let best = input
                .workers
                .iter()
                .enumerate()
                .filter(|&(i, w)| !out.contains(i) && fresh(i, w))
                .min_by_key(|(_, w)| weighted_load(w));
            match best {
                Some((i, _)) => {
                    out.insert(i);
                    added += 1;
                }
                None => break,
            }
        }
    }
}

/// One scheduler pass: runs `policy` into `out` (cleared first), removes
/// the workers that are not serving, and publishes their ids as the list
/// (slot = worker id) unless a newer decision is already in place. Returns
/// whether it published.
pub fn pass(
    policy: &dyn Policy,
    input: &PassInput<'_>,
    control: &Control,
    publisher: usize,
    out: &mut WorkerSet,
) -> bool {
    eligible_serving(policy, input, out);
    control.publish_as(None, input.now_ns, publisher, |list| {
        for id in out.iter() {
            list.push(id);
        }
    })
}

/// The policy's set without the workers that are not serving, in `out`
/// (cleared first).
pub(crate) fn eligible_serving(policy: &dyn Policy, input: &PassInput<'_>, out: &mut WorkerSet) {
    out.clear();
    policy.eligible(input, out);
    for (i, w) in input.workers.iter().enumerate() {
        if !serving(w) {
            out.remove(i);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::Ordering::Relaxed;

    use super::*;

    fn table(loads: &[(u32, u64)]) -> Vec<WorkerState> {
        loads
            .iter()
            .map(|&(load, hb)| {
                let w = WorkerState::default();
                w.set_phase(WorkerPhase::Serving);
                w.open_conns.store(load, Relaxed);
                w.heartbeat_ns.store(hb, Relaxed);
                w
            })
            .collect()
    }

    fn run(workers: &[WorkerState], min: u32) -> Vec<usize> {
        let input = PassInput { workers, now_ns: 1_000_000, hang_threshold_ns: 10_000, min_candidates: min };
        let mut out = WorkerSet::with_capacity(workers.len());
        LeastLoaded::default().eligible(&input, &mut out);
        out.iter().collect()
    }

    #[test]
    fn hung_worker_is_never_eligible() {
        let t = table(&[(0, 1_000_000), (0, 1), (50, 999_999)]);
        assert_eq!(run(&t, 3), [0, 2]);
    }

    #[test]
    fn margin_and_top_up() {
        let t = table(&[(10, 1_000_000), (12, 1_000_000), (40, 1_000_000), (30, 1_000_000)]);
        assert_eq!(run(&t, 1), [0, 1]);
        assert_eq!(run(&t, 3), [0, 1, 3]);
    }

    #[test]
    fn draining_is_removed_and_the_list_published() {
        let t = table(&[(0, 1_000_000), (0, 1_000_000)]);
        t[1].set_phase(WorkerPhase::Draining);
        let control = Control::default();
        let input =
            PassInput { workers: &t, now_ns: 1_000_000, hang_threshold_ns: 10_000, min_candidates: 2 };
        let mut out = WorkerSet::with_capacity(2);
        assert!(pass(&LeastLoaded::default(), &input, &control, 0, &mut out));
        assert_eq!(out.iter().collect::<Vec<_>>(), [0]);
        assert_eq!(control.eligible().collect::<Vec<_>>(), [0]);
    }

    /// Far beyond 64 workers: the margin and the hung workers at 1024.
    #[test]
    fn a_pass_over_1024_workers() {
        let loads: Vec<(u32, u64)> =
            (0..1024u32).map(|i| (i % 10, if i % 100 == 7 { 1 } else { 1_000_000 })).collect();
        let t = table(&loads);
        let got = run(&t, 1);
        // Loads 0..=4 are within the margin of 4 above the least (0); the
        // hung ones (heartbeat 1) never.
        assert!(got.iter().all(|&i| i % 10 <= 4 && i % 100 != 7));
        assert_eq!(got.len(), (0..1024).filter(|i| i % 10 <= 4 && i % 100 != 7).count());
        assert!(got.contains(&1020) && !got.contains(&1019), "ids far beyond 64 are decided too");
    }
}
