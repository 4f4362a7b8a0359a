//! The server's scheduler pass: the policy's set of eligible workers,
//! published to the kernel program as a list (with, when locality is on, the
//! least loaded eligible worker of each CPU), and the set of hung or
//! starved workers the others take queued connections from (what it keeps between runs is
//! `pass_state`'s). One pass per tick serves the whole server (the worker
//! that samples the queues runs it, see `tick`), so a tick costs
//! O(workers) at any count; a worker that drains or stops runs one at once.

use std::sync::atomic::Ordering;

use hermes_bpf::{
    layout::{ListWriter, WorkerPhase},
    monotonic_ns,
};

use super::{server::ServerState, tick::STARVED_PERMILLE};
use crate::scheduler::{self, PassInput, WorkerSet};

impl ServerState {
    /// The scheduler's input now: this server's slots.
    fn pass_input(&self, now_ns: u64) -> PassInput<'_> {
        PassInput {
            workers: &self.table[..self.config.workers],
            now_ns,
            hang_threshold_ns: self.config.hang_threshold.as_nanos() as u64,
            min_candidates: self.config.min_candidates,
        }
    }

    /// One scheduler pass, published as worker `publisher` while this
    /// server owns the list; nothing (0) until every worker has started or
    /// the server stopped waiting for them. Waits for a pass in progress (a
    /// few microseconds per hundred workers). Returns how many workers are
    /// eligible.
    pub(crate) fn schedule(&self, publisher: usize) -> usize {
        if !self.workers.may_publish() {
            return 0;
        }
        let mut set = self.pass.scratch();
        let input = self.pass_input(monotonic_ns());
        scheduler::eligible_serving(&*self.config.policy, &input, &mut set);
        self.dispatch.publish(input.now_ns, publisher, |list| self.fill(&set, list));
        self.find_stuck(&input);
        self.pass.set_eligible(set.len());
        set.len()
    }

    /// How many workers the policy finds eligible now, among those serving
    /// (a pass, not published).
    pub(crate) fn eligible_now(&self) -> usize {
        let mut set = self.pass.scratch();
        scheduler::eligible_serving(&*self.config.policy, &self.pass_input(monotonic_ns()), &mut set);
        set.len()
    }

    /// Makes this server the list's owner and publishes the workers
    /// eligible now (a successor taking over; a server whose successor
    /// failed taking the list back).
    pub(crate) fn take_over(&self) {
        let mut set = self.pass.scratch();
        scheduler::eligible_serving(&*self.config.policy, &self.pass_input(monotonic_ns()), &mut set);
        self.dispatch.take_over(|list| self.fill(&set, list));
    }

    /// Writes `set` as the list: the workers' slots and, with locality on,
    /// each CPU's least loaded eligible worker (of those pinned to it).
    fn fill(&self, set: &WorkerSet, list: &mut ListWriter<'_>) {
        let base = self.dispatch.slot_base;
        for id in set.iter() {
            list.push(base + id);
            if !self.config.locality {
                continue;
            }
            let Some(cpu) = self.workers.cpu(id) else { continue };
            match list.local(cpu) {
                Some(slot) if self.table[slot - base].load() <= self.table[id].load() => {}
                _ => list.set_local(cpu, base + id),
            }
        }
    }

    /// Records the serving workers whose heartbeat is older than the hang
    /// threshold or that starve (see `STARVED_PERMILLE`), for
    /// `take_from_stuck`.
    fn find_stuck(&self, input: &PassInput<'_>) {
        let mut any = false;
        for (i, word) in self.pass.stuck_words().iter().enumerate() {
            let mut bits = 0u64;
            for (j, w) in input.workers.iter().enumerate().skip(i * 64).take(64) {
                // Relaxed: a lone timestamp and state (see `WorkerState`).
                let hb = w.heartbeat_ns.load(Ordering::Relaxed);
                let hung = hb != 0 && input.now_ns.saturating_sub(hb) >= input.hang_threshold_ns;
                let starved = w.stall_permille.load(Ordering::Relaxed) >= STARVED_PERMILLE;
                if w.phase() == WorkerPhase::Serving && (hung || starved) {
                    bits |= 1 << (j - i * 64);
                }
            }
            // Relaxed: a hint, see `PassState::stuck`.
            word.store(bits, Ordering::Relaxed);
            any |= bits != 0;
        }
        self.pass.set_any_stuck(any);
    }
}
