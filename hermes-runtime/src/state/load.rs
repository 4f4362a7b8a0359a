//! The host's load as the balancers in front of it read it: [`HostLoad`],
//! refreshed once per tick from the Worker State Table and the process's
//! CPU time (`LoadMeter`), published in a `LoadCell` that a request reads
//! without allocating or locking, through a
//! [`LoadSource`](super::LoadSource).
//!
//! Protocol-neutral: `hermes_tower` turns it into ORCA load reports (gRPC
//! and Envoy) and HAProxy agent answers; any server on the runtime can read
//! it the same way.

use std::{
    fmt,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use arc_swap::ArcSwap;
use hermes_bpf::layout::WorkerState;
use serde::Serialize;

use crate::sys;

/// How long the rates and utilisations of a [`HostLoad`] are averaged over
/// (the time constant of their exponential smoothing): long enough that a
/// report does not swing with one tick's requests, short enough that a
/// balancer sees a change of capacity within a few seconds.
pub const LOAD_WINDOW: Duration = Duration::from_secs(1);

/// The host's load at one refresh: what a balancer in front of a fleet of
/// Hermes hosts weighs them by. Refreshed once per tick by one of the
/// server's workers; read with [`LoadSource::load`](super::LoadSource::load).
///
/// ```
/// let idle = hermes_runtime::HostLoad::default();
/// assert_eq!(idle.utilization(), 0.0);
/// assert_eq!(idle.headroom(), 1.0);
/// ```
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct HostLoad {
    /// `CLOCK_MONOTONIC` nanoseconds of the refresh; 0 before the first.
    pub at_ns: u64,
    /// Refreshes so far: a reader that caches what it derives from a
    /// report rebuilds it when this changes.
    pub generation: u64,
    /// Workers serving.
    pub workers: u32,
    /// Workers eligible for new connections by the last scheduler pass
    /// (0: none can take one).
    pub eligible: u32,
    /// How long no worker has been eligible, in nanoseconds (0 while one
    /// is): a balancer drains the host when this lasts, not on one pass
    /// (a machine short of CPU can miss a tick or two).
    pub ineligible_ns: u64,
    /// Requests in flight over every worker.
    pub in_flight: u32,
    /// Connections waiting in the accept queues.
    pub queue_depth: u32,
    /// Connections open.
    pub open_connections: u32,
    /// The workers' busy share (time not parked over wall time), averaged
    /// over the serving workers and over [`LOAD_WINDOW`]: 1.0 when every
    /// event loop is always busy.
    pub worker_utilization: f64,
    /// The process's CPU time over wall time, divided by
    /// [`cpu_capacity`](HostLoad::cpu_capacity), averaged over
    /// [`LOAD_WINDOW`]: it counts what the workers' busy time misses, the
    /// handlers offloaded to the blocking pool. May exceed 1.0 when those
    /// threads use more cores than the server has workers.
    pub cpu_utilization: f64,
    /// The cores [`cpu_utilization`](HostLoad::cpu_utilization) is a share
    /// of: the server's workers (one per core), or the CPU quota of the
    /// process's cgroup when it is smaller (a container limited to 0.5 CPU
    /// is saturated at half a core). The quota is read again every
    /// [`LOAD_WINDOW`], so a quota changed while serving is followed.
    pub cpu_capacity: f64,
    /// Requests completed per second, averaged over [`LOAD_WINDOW`].
    pub rps: f64,
    /// Errors per second (as the server on top counts them with
    /// [`LoadSource::count_error`](super::LoadSource::count_error)), averaged over [`LOAD_WINDOW`].
    pub eps: f64,
}

impl HostLoad {
    /// The host's utilisation: the larger of [`worker_utilization`] (an
    /// event loop held by a handler is saturated whatever the CPU does) and
    /// [`cpu_utilization`] (work offloaded to the blocking pool uses CPU
    /// outside the workers' busy time).
    ///
    /// [`worker_utilization`]: HostLoad::worker_utilization
    /// [`cpu_utilization`]: HostLoad::cpu_utilization
    pub fn utilization(&self) -> f64 {
        self.worker_utilization.max(self.cpu_utilization)
    }

    /// What the host can still take, from 0.0 (saturated) to 1.0 (idle):
    /// one minus its [`utilization`](HostLoad::utilization), clamped.
    pub fn headroom(&self) -> f64 {
        (1.0 - self.utilization()).clamp(0.0, 1.0)
    }
}

/// Where a server's [`HostLoad`] is published, and the errors the server on
/// top counts into it.
#[derive(Default)]
pub(crate) struct LoadCell {
    published: ArcSwap<HostLoad>,
    errors: AtomicU64,
    meter: Mutex<LoadMeter>,
}

impl fmt::Debug for LoadCell {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LoadCell").field("published", &**self.published.load()).finish_non_exhaustive()
    }
}

/// What one refresh needs of the previous one.
#[derive(Debug, Default)]
struct LoadMeter {
    at_ns: u64,
    busy_ns: u64,
    requests: u64,
    errors: u64,
    cpu_ns: u64,
    /// The cgroup's CPU quota in cores, and when it was read.
    quota: Option<f64>,
    quota_read_ns: u64,
    /// Since when no worker has been eligible.
    ineligible_since: Option<u64>,
    last: HostLoad,
}

impl LoadCell {
    /// The report last published.
    pub(crate) fn load(&self) -> HostLoad {
        **self.published.load()
    }

    /// Counts one error.
    pub(crate) fn count_error(&self) {
        // Relaxed: a lone counter, read for a rate.
        self.errors.fetch_add(1, Ordering::Relaxed);
    }
}

impl LoadCell {
    /// Refreshes the [`HostLoad`] of a server of `workers` workers from its
    /// `slots` of the table, unless it was refreshed within the last half
    /// `tick` (every worker's tick calls this; one of them does the work,
    /// the others find the meter taken or fresh). `eligible` is how many
    /// workers the last scheduler pass found eligible. Not a per-request path: one
    /// `clock_gettime` system call and one allocation (the published `Arc`)
    /// per refresh.
    pub(crate) fn refresh(&self, slots: &[WorkerState], tick: Duration, now_ns: u64, eligible: usize) {
        let Ok(mut meter) = self.meter.try_lock() else { return };
        let half_tick = tick.as_nanos() as u64 / 2;
        if meter.at_ns != 0 && now_ns.saturating_sub(meter.at_ns) < half_tick {
            return;
        }
        let mut next = HostLoad { at_ns: now_ns, generation: meter.last.generation + 1, ..meter.last };
        let (mut busy, mut requests) = (0u64, 0u64);
        let (mut workers, mut in_flight, mut queue, mut open) = (0u32, 0u32, 0u32, 0u32);
        for slot in slots {
            // Relaxed: independent gauges and counters (see `WorkerState`);
            // a refresh a few nanoseconds stale is as good.
            busy = busy.wrapping_add(slot.busy_ns.load(Ordering::Relaxed));
            requests = requests.wrapping_add(slot.requests.load(Ordering::Relaxed));
            in_flight = in_flight.saturating_add(slot.in_flight.load(Ordering::Relaxed));
            queue = queue.saturating_add(slot.accept_queue.load(Ordering::Relaxed));
            open = open.saturating_add(slot.open_conns.load(Ordering::Relaxed));
            workers += u32::from(slot.phase() == hermes_bpf::layout::WorkerPhase::Serving);
        }
        // Relaxed: a counter read for a rate.
        let errors = self.errors.load(Ordering::Relaxed);
        let cpu = sys::process_cpu_ns().unwrap_or(meter.cpu_ns);
        let window = LOAD_WINDOW.as_nanos() as u64;
        if meter.quota_read_ns == 0 || now_ns.saturating_sub(meter.quota_read_ns) >= window {
            meter.quota = sys::cpu_quota_cores();
            meter.quota_read_ns = now_ns;
        }
        let workers_cores = slots.len().max(1) as f64;
        next.cpu_capacity = meter.quota.map_or(workers_cores, |q| q.min(workers_cores));
        next.workers = workers;
        next.eligible = u32::try_from(eligible).unwrap_or(u32::MAX);
        let ineligible_since = match (eligible, meter.ineligible_since) {
            (0, since) => Some(since.unwrap_or(now_ns)),
            _ => None,
        };
        next.ineligible_ns = ineligible_since.map_or(0, |since| now_ns.saturating_sub(since));
        next.in_flight = in_flight;
        next.queue_depth = queue;
        next.open_connections = open;
        if meter.at_ns != 0 && now_ns > meter.at_ns {
            let dt = (now_ns - meter.at_ns) as f64;
            // Exponential smoothing over `LOAD_WINDOW`, whatever the tick.
            let alpha = 1.0 - (-dt / LOAD_WINDOW.as_nanos() as f64).exp();
            let smooth = |old: f64, sample: f64| old + alpha * (sample - old);
            let per_s = |delta: u64| delta as f64 * 1e9 / dt;
            let capacity = dt * workers_cores;
            let cpu_capacity = dt * next.cpu_capacity;
            // A worker restarted in its slot starts its counters afresh: a
            // total that went down counts as no progress.
            let delta = |now: u64, then: u64| now.saturating_sub(then);
            next.worker_utilization =
                smooth(meter.last.worker_utilization, delta(busy, meter.busy_ns) as f64 / capacity);
            next.cpu_utilization =
                smooth(meter.last.cpu_utilization, delta(cpu, meter.cpu_ns) as f64 / cpu_capacity);
            next.rps = smooth(meter.last.rps, per_s(delta(requests, meter.requests)));
            next.eps = smooth(meter.last.eps, per_s(delta(errors, meter.errors)));
        }
        *meter = LoadMeter {
            at_ns: now_ns,
            busy_ns: busy,
            requests,
            errors,
            cpu_ns: cpu,
            quota: meter.quota,
            quota_read_ns: meter.quota_read_ns,
            ineligible_since,
            last: next,
        };
        self.published.store(Arc::new(next));
    }
}
