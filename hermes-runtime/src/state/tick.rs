//! The work every worker does for the server on each tick: its heartbeat and
//! utilisation ([`WorkerTick`]) and its stall; and, by the first worker to
//! tick in each half tick, for the whole server: the accept-queue sample of
//! the listeners, the scheduler pass that publishes the list (`pass`), the
//! placement target, the dispatch self-check and the host's load (see
//! `load`). And, between ticks, taking the connections queued on a hung or
//! starved worker's listener. The server's work per tick is O(workers),
//! whatever their number.

use std::{
    net::SocketAddr,
    os::fd::AsRawFd,
    sync::atomic::{AtomicU32, Ordering},
};

use hermes_bpf::{CounterRegion, Counters, layout::WorkerState, layout::counter, monotonic_ns};

use super::{selfcheck::Finding, selfcheck::Reading, server::ServerState};
use crate::sys;

/// Most listeners one sample reads (one `getsockopt` each): beyond, the
/// samples take the listeners in turn, so a sample stays short at any
/// number of workers (at 1024, each queue is read every fourth sample).
const SAMPLE_AT_MOST: usize = 256;

/// The self-check's reading of this server's workers, `workers` (its
/// slots of the table), whose placements the program counts from `base`.
/// Reads only those counters: O(this server's workers), no allocation.
fn reading(now: u64, counters: &CounterRegion, workers: &[WorkerState], base: usize) -> Reading {
    // Relaxed: independent counters and gauges (see `WorkerState`).
    let accepted = workers.iter().map(|w| w.accepted.load(Ordering::Relaxed)).sum();
    let queued: u64 = workers.iter().map(|w| u64::from(w.accept_queue.load(Ordering::Relaxed))).sum();
    let placed: u64 = (base..base + workers.len()).map(|slot| Counters::recent(counters, slot)).sum();
    Reading { at_ns: now, accepted, runs: Counters::get(counters, counter::RUNS), pending: queued + placed }
}

/// One worker's share of the tick.
#[derive(Debug)]
pub(crate) struct WorkerTick {
    util: ShareMeter,
    stall: ShareMeter,
    /// The worker thread's scheduler statistics (`None` where the kernel
    /// gives none: the stall then reads 0).
    sched: Option<sys::SchedStat>,
}

impl WorkerTick {
    /// The tick of the worker whose thread calls this.
    pub(crate) fn on_this_thread() -> Self {
        let sched = match sys::SchedStat::of_this_thread() {
            Ok(s) => Some(s),
            Err(e) => {
                tracing::debug!(error = %e, "no scheduler statistics for the worker's thread; its stall reads 0");
                None
            }
        };
        Self { util: ShareMeter::default(), stall: ShareMeter::default(), sched }
    }

    /// Worker `id`'s tick: its heartbeat, utilisation and stall; then,
    /// unless another worker did within half a tick, the server's
    /// accept-queue sample, a scheduler pass published as `id` and the
    /// placement target (also refreshed by a worker back from a block); and
    /// the host's load, unless refreshed within half a tick.
    pub(crate) fn run(&mut self, server: &ServerState, id: usize) {
        let now = monotonic_ns();
        let slot = &server.table[id];
        let tick_ns = server.config.tick.as_nanos() as u64;
        // Relaxed: a lone timestamp and lone gauges (see `WorkerState`).
        let last_beat = slot.heartbeat_ns.swap(now, Ordering::Relaxed);
        self.util.sample(slot.busy_ns.load(Ordering::Relaxed), now, &slot.util_permille);
        if let Some(delay) = self.sched.as_ref().and_then(|s| s.run_delay_ns().ok()) {
            slot.run_delay_ns.store(delay, Ordering::Relaxed);
            self.stall.sample(delay, now, &slot.stall_permille);
        }
        if server.sample_accept_queues() {
            server.schedule(id);
            server.placement.refresh_target(now);
        } else if now.saturating_sub(last_beat) > 2 * tick_ns {
            // Back from a handler that held the thread: the requests it is
            // about to read waited behind that, and their placement wants
            // the target as of now, with this worker counted again.
            server.placement.refresh_target(now);
        }
        // Every worker offers; the load takes one refresh per half tick.
        let eligible = server.pass.eligible();
        server.load.refresh(&server.table[..server.config.workers], server.config.tick, now, eligible);
    }
}

/// Smooths the share of time a cumulative counter of nanoseconds grows by
/// (the busy time: utilisation; the run-queue delay: stall), one sample per
/// tick.
#[derive(Debug, Default)]
struct ShareMeter {
    last_total_ns: u64,
    last_ns: u64,
}

impl ShareMeter {
    /// Stores the share of the time since the last call that `total_ns`
    /// grew by, per mille, averaged with the previous value (weight 1/2),
    /// into `gauge`.
    fn sample(&mut self, total_ns: u64, now_ns: u64, gauge: &AtomicU32) {
        if self.last_ns != 0 && now_ns > self.last_ns {
            let grown = total_ns.saturating_sub(self.last_total_ns);
            let share = (grown * 1_000 / (now_ns - self.last_ns)).min(1_000);
            // Relaxed: a lone gauge, written by this thread only.
            let old = u64::from(gauge.load(Ordering::Relaxed));
            gauge.store(((old + share) / 2) as u32, Ordering::Relaxed);
        }
        self.last_total_ns = total_ns;
        self.last_ns = now_ns;
    }
}

impl ServerState {
    /// How long until worker `id`'s next tick. A worker's ticks fall on a
    /// grid of the tick's period (`CLOCK_MONOTONIC`), offset per worker to
    /// spread the workers' wake-ups over the period, so that the timers a
    /// worker runs once a tick (its housekeeping, its listener's look at
    /// hung workers) fall due together and cost one wake-up, not one each.
    pub(crate) fn until_next_tick(&self, id: usize) -> std::time::Duration {
        let tick = u64::try_from(self.config.tick.as_nanos()).unwrap_or(u64::MAX).max(1);
        let offset = (id as u64 % self.config.workers as u64) * tick / self.config.workers as u64;
        let since = (monotonic_ns() % tick + tick - offset) % tick;
        std::time::Duration::from_nanos(tick - since)
    }

    /// Samples the accept queue of the workers' listeners (one
    /// `getsockopt(TCP_INFO)` each, at most [`SAMPLE_AT_MOST`] of them, in
    /// turn) into the workers' slots, unless another worker did within the
    /// last half tick. Returns whether it sampled: the sampler then runs the
    /// server's pass too.
    ///
    /// Any worker samples every listener, rather than only its own: a worker
    /// that is descheduled or stuck is exactly the one whose queue grows, and
    /// it cannot sample it itself. Without this, its slot shows a low load
    /// while connections pile up in its queue, and both the scheduler's
    /// margin and the kernel's fine filter send it even more. This makes
    /// `accept_queue` the one field of a slot that other workers also write.
    /// One worker claims each sample (a compare-and-swap of the sample
    /// time), so the server makes O(workers) `getsockopt` calls per tick,
    /// not O(workers²).
    pub(crate) fn sample_accept_queues(&self) -> bool {
        let now = monotonic_ns();
        // Relaxed: the sample time only elects the sampler; the samples
        // themselves are lone gauges (see `WorkerState`).
        let last = self.sampled_ns.load(Ordering::Relaxed);
        let half_tick = self.config.tick.as_nanos() as u64 / 2;
        if last != 0 && now.saturating_sub(last) < half_tick {
            return false;
        }
        if self.sampled_ns.compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed).is_err() {
            return false;
        }
        let shared_queue =
            self.dispatch.shared_listener().map(|l| sys::accept_queue(l.as_raw_fd()).unwrap_or(0));
        let counters = self.dispatch.counters();
        let base = self.dispatch.slot_base;
        let n = self.config.workers;
        let (first, count) = match n <= SAMPLE_AT_MOST {
            true => (0, n),
            // Relaxed: the cursor only spreads the samples; the sampler is
            // elected above.
            false => (self.sample_cursor.fetch_add(SAMPLE_AT_MOST, Ordering::Relaxed) % n, SAMPLE_AT_MOST),
        };
        for id in (first..first + count).map(|i| i % n) {
            let (slot, control) = (&self.table[id], self.workers.control(id));
            // The placements counted so far are in the queue about to be read
            // (or already accepted); those made after this read are not.
            let seen = counters.map(|c| Counters::recent(c, base + id));
            let queue = match shared_queue {
                Some(q) => q,
                None => control
                    .with_listener(|fd| sys::accept_queue(fd.as_raw_fd()))
                    .and_then(Result::ok)
                    .unwrap_or(0),
            };
            // Relaxed: a lone gauge (see `WorkerState`).
            slot.accept_queue.store(queue, Ordering::Relaxed);
            if let (Some(counters), Some(seen)) = (counters, seen) {
                Counters::consume_recent(counters, base + id, seen);
            }
        }
        self.check_dispatch(now);
        true
    }

    /// The dispatch self-check (see `selfcheck`), run by the sampler of the
    /// tick: logs what it finds and attaches the program again when lost.
    fn check_dispatch(&self, now: u64) {
        let Some(counters) = self.dispatch.counters() else { return };
        let n = self.config.workers;
        let base = self.dispatch.slot_base;
        let finding = self.dispatch.selfcheck.observe(now, || reading(now, counters, &self.table[..n], base));
        let addr: SocketAddr = self.dispatch.addr;
        match finding {
            Finding::Nothing => {}
            Finding::Recovered => {
                tracing::info!(%addr, "the dispatch program places new connections again; mode hermes");
            }
            Finding::Lost { accepted, first } => {
                if first {
                    tracing::error!(
                        %addr,
                        accepted,
                        "connections were accepted that the dispatch program never saw: the port's SO_REUSEPORT \
                         group lost it, or another program was attached to the group; attaching it again \
                         (mode kernel-hash until it places connections)"
                    );
                }
                // Not once a successor took the list over: the program
                // found then is the successor's.
                if self.dispatch.owns_list() {
                    self.dispatch.reattach(&self.workers);
                }
            }
        }
    }

    /// One connection from the listener of a worker other than `me` that
    /// hangs (heartbeat older than the hang threshold) or starves (it waited
    /// for a CPU most of its recent ticks: another process holds its core),
    /// or `None` when no such worker's listener holds one. Looks only at
    /// the workers the last pass found hung or starved (one load when none
    /// is) and checks each again, and accepts only from a listener whose
    /// last sample showed a queue (or on which the program placed
    /// connections since): an `accept` on an empty listener still costs a
    /// socket allocation, and every worker looks every tick. Takes the stop
    /// lock of a worker only once that worker hangs or starves: never on a
    /// healthy server. Returns the connection, its peer and the worker.
    pub(crate) fn take_from_stuck(&self, me: usize) -> Option<(std::net::TcpStream, SocketAddr, usize)> {
        let threshold = u64::try_from(self.config.hang_threshold.as_nanos()).unwrap_or(u64::MAX);
        let now = monotonic_ns();
        let counters = self.dispatch.counters();
        for id in self.pass.stuck() {
            let (state, control) = (&self.table[id], self.workers.control(id));
            // Relaxed: lone timestamps, states and gauges (see `WorkerState`);
            // a stale reading costs one look too many or too few.
            let heartbeat = state.heartbeat_ns.load(Ordering::Relaxed);
            let hung = heartbeat != 0 && now.saturating_sub(heartbeat) >= threshold;
            let starved = state.stall_permille.load(Ordering::Relaxed) >= STARVED_PERMILLE;
            let queued = state.accept_queue.load(Ordering::Relaxed) > 0
                || counters.is_some_and(|c| Counters::recent(c, self.dispatch.slot_base + id) > 0);
            if id == me
                || !queued
                || state.phase() != hermes_bpf::layout::WorkerPhase::Serving
                || !(hung || starved)
            {
                continue;
            }
            match control.with_listener(sys::accept_nonblocking) {
                Some(Ok((stream, addr))) => return Some((stream, addr, id)),
                Some(Err(e)) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                Some(Err(e)) => {
                    tracing::debug!(worker = me, stuck = id, error = %e, "accepting from a stuck worker's listener")
                }
                None => {}
            }
        }
        None
    }
}

/// A worker that waited for a CPU at least this share of its recent ticks
/// (per mille) starves: the others take the connections queued on its
/// listener.
pub(super) const STARVED_PERMILLE: u32 = 500;

#[cfg(test)]
mod tests {
    use std::{
        sync::{Barrier, atomic::Ordering},
        thread,
        time::Duration,
    };

    use hermes_bpf::layout::WorkerState;

    use crate::{Builder, Mode};

    /// Four workers' housekeeping ticking at the same moment: one of them
    /// samples the four listeners, the others skip; a tick later, one
    /// samples again.
    #[test]
    fn one_worker_samples_the_queues_per_tick() {
        let config = Builder::new()
            .workers(4)
            .bind("127.0.0.1:0".parse().unwrap())
            .mode(Mode::KernelHash)
            .tick(Duration::from_millis(20))
            .config()
            .unwrap();
        let (server, _listeners) = super::super::open::open(config).unwrap();
        let start = Barrier::new(4);
        let sampled: usize = thread::scope(|s| {
            let handles: Vec<_> = (0..4)
                .map(|_| {
                    s.spawn(|| {
                        start.wait();
                        server.sample_accept_queues()
                    })
                })
                .collect();
            handles.into_iter().map(|h| usize::from(h.join().unwrap())).sum()
        });
        assert_eq!(sampled, 1, "one sampler per tick");
        assert!(!server.sample_accept_queues(), "sampled again within the tick");
        thread::sleep(Duration::from_millis(20));
        assert!(server.sample_accept_queues(), "sampled again a tick later");
    }

    /// A successor's workers use the slots from its base: the placements
    /// the self-check counts as pending are those of its slots, not of the
    /// first ones (the older server's).
    #[test]
    fn the_self_check_reads_the_placements_of_its_own_slots() {
        use hermes_bpf::layout::{DEFAULT_SLOTS, counter};
        let counters: hermes_bpf::CounterRegion =
            std::sync::Arc::new(hermes_bpf::Region::in_memory(counter::len(DEFAULT_SLOTS)));
        let recent = |slot: usize, n: u64| counters[counter::recent(slot)].store(n, Ordering::Relaxed);
        recent(0, 100); // the older server's worker 0
        recent(2, 3); // this server's worker 0
        recent(3, 4); // this server's worker 1
        let workers = [WorkerState::default(), WorkerState::default()];
        assert_eq!(super::reading(0, &counters, &workers, 2).pending, 7);
    }
}
