//! The `metrics` export: [`WorkerMetrics`], one worker's handles on the
//! installed recorder, set from its slot and the kernel's counters.

use std::sync::atomic::Ordering;

use hermes_bpf::{Counters, layout::counter, monotonic_ns};

use crate::state::{SelfCheck, ServerState};

/// Handles registered with the `metrics` recorder for one worker.
///
/// Metrics (label `worker` on all but the server-wide ones):
/// gauges `hermes_open_connections`, `hermes_in_flight`,
/// `hermes_accept_queue`, `hermes_eligible`, `hermes_heartbeat_age_seconds`,
/// `hermes_stall_ratio` (the smoothed share of the recent ticks the worker
/// waited for a CPU);
/// counters `hermes_accepted_total`, `hermes_requests_total`,
/// `hermes_busy_seconds_total`, `hermes_run_delay_seconds_total`, `hermes_dispatched_total`,
/// `hermes_placed_out_total`, `hermes_placed_in_total`,
/// `hermes_reconnects_total`, `hermes_offloaded_total`, `hermes_shed_total`, `hermes_recycled_total`,
/// `hermes_refused_total`, `hermes_rescued_total`; server-wide gauge
/// `hermes_mode{mode, reason}` (1 for the mode in force, 0 for the
/// other: in Hermes mode, `kernel-hash` with the self-check's reason while
/// the program is found not running) and counters
/// `hermes_fallbacks_total{reason}`, `hermes_migrated_total`,
/// `hermes_dispatch_lost_total` and `hermes_publish_lock_taken_total` (a
/// take-over found the publish lock held by a dead or stalled holder, see
/// [`Control::take_over`](hermes_bpf::layout::Control::take_over)).
pub(crate) struct WorkerMetrics {
    id: usize,
    open: metrics::Gauge,
    in_flight: metrics::Gauge,
    queue: metrics::Gauge,
    eligible: metrics::Gauge,
    heartbeat_age: metrics::Gauge,
    accepted: metrics::Counter,
    requests: metrics::Counter,
    busy: metrics::Gauge,
    run_delay: metrics::Gauge,
    stall: metrics::Gauge,
    dispatched: metrics::Counter,
    placed_out: metrics::Counter,
    placed_in: metrics::Counter,
    reconnects: metrics::Counter,
    offloaded: metrics::Counter,
    shed: metrics::Counter,
    recycled: metrics::Counter,
    refused: metrics::Counter,
    rescued: metrics::Counter,
    mode: metrics::Gauge,
    /// `hermes_mode{mode="kernel-hash"}` with the self-check's reason (Hermes mode only).
    mode_lost: Option<metrics::Gauge>,
    dispatch_lost: metrics::Counter,
    fallbacks: [metrics::Counter; 3],
    migrated: metrics::Counter,
}

impl WorkerMetrics {
    pub(crate) fn new(server: &ServerState, id: usize) -> Self {
        let mode = server.dispatch.mode();
        let w = id.to_string();
        Self {
            id,
            open: metrics::gauge!("hermes_open_connections", "worker" => w.clone()),
            in_flight: metrics::gauge!("hermes_in_flight", "worker" => w.clone()),
            queue: metrics::gauge!("hermes_accept_queue", "worker" => w.clone()),
            eligible: metrics::gauge!("hermes_eligible", "worker" => w.clone()),
            heartbeat_age: metrics::gauge!("hermes_heartbeat_age_seconds", "worker" => w.clone()),
            accepted: metrics::counter!("hermes_accepted_total", "worker" => w.clone()),
            requests: metrics::counter!("hermes_requests_total", "worker" => w.clone()),
            busy: metrics::gauge!("hermes_busy_seconds_total", "worker" => w.clone()),
            run_delay: metrics::gauge!("hermes_run_delay_seconds_total", "worker" => w.clone()),
            stall: metrics::gauge!("hermes_stall_ratio", "worker" => w.clone()),
            dispatched: metrics::counter!("hermes_dispatched_total", "worker" => w.clone()),
            placed_out: metrics::counter!("hermes_placed_out_total", "worker" => w.clone()),
            placed_in: metrics::counter!("hermes_placed_in_total", "worker" => w.clone()),
            reconnects: metrics::counter!("hermes_reconnects_total", "worker" => w.clone()),
            offloaded: metrics::counter!("hermes_offloaded_total", "worker" => w.clone()),
            shed: metrics::counter!("hermes_shed_total", "worker" => w.clone()),
            recycled: metrics::counter!("hermes_recycled_total", "worker" => w.clone()),
            refused: metrics::counter!("hermes_refused_total", "worker" => w.clone()),
            rescued: metrics::counter!("hermes_rescued_total", "worker" => w),
            mode: metrics::gauge!(
                "hermes_mode",
                "mode" => mode.as_str(),
                "reason" => server.dispatch.fallback_reason().unwrap_or_default().to_owned()
            ),
            mode_lost: (mode == crate::config::Mode::Hermes).then(|| {
                metrics::gauge!("hermes_mode", "mode" => crate::config::Mode::KernelHash.as_str(), "reason" => SelfCheck::LOST)
            }),
            dispatch_lost: metrics::counter!("hermes_dispatch_lost_total"),
            fallbacks: ["too_few", "stale", "no_socket"]
                .map(|reason| metrics::counter!("hermes_fallbacks_total", "reason" => reason)),
            migrated: metrics::counter!("hermes_migrated_total"),
        }
    }

    /// Sets every metric from the worker's slot and the kernel's counters.
    pub(crate) fn export(&self, server: &ServerState) {
        let id = self.id;
        let w = &server.table[id];
        let control = server.workers.control(id);
        let placement = &server.placement;
        // Relaxed: independent gauges and counters (see `WorkerState`).
        self.open.set(w.open_conns.load(Ordering::Relaxed) as f64);
        self.in_flight.set(w.in_flight.load(Ordering::Relaxed) as f64);
        self.queue.set(w.accept_queue.load(Ordering::Relaxed) as f64);
        self.eligible.set(if server.dispatch.is_eligible(id) { 1.0 } else { 0.0 });
        let hb = w.heartbeat_ns.load(Ordering::Relaxed);
        self.heartbeat_age.set(monotonic_ns().saturating_sub(hb) as f64 / 1e9);
        self.accepted.absolute(w.accepted.load(Ordering::Relaxed));
        self.requests.absolute(w.requests.load(Ordering::Relaxed));
        self.busy.set(w.busy_ns.load(Ordering::Relaxed) as f64 / 1e9);
        self.run_delay.set(w.run_delay_ns.load(Ordering::Relaxed) as f64 / 1e9);
        self.stall.set(f64::from(w.stall_permille.load(Ordering::Relaxed)) / 1e3);
        let (out, into) = placement.moves(id);
        self.placed_out.absolute(out);
        self.placed_in.absolute(into);
        self.reconnects.absolute(placement.reconnects(id));
        self.offloaded.absolute(placement.offloaded(id));
        self.shed.absolute(placement.shed(id));
        self.recycled.absolute(placement.recycled(id));
        self.refused.absolute(control.refused());
        self.rescued.absolute(control.rescued());
        let lost = server.dispatch.selfcheck.is_lost();
        self.mode.set(if lost { 0.0 } else { 1.0 });
        if let Some(g) = &self.mode_lost {
            g.set(if lost { 1.0 } else { 0.0 });
        }
        self.dispatch_lost.absolute(server.dispatch.selfcheck.losses());
        // The few counters this worker exports, read one by one: a full
        // read of every slot's would cost O(workers) per worker.
        if let Some(c) = server.dispatch.counters() {
            self.dispatched.absolute(Counters::get(c, counter::dispatched(server.dispatch.slot_base + id)));
            let reasons = [counter::FALLBACK_TOO_FEW, counter::FALLBACK_STALE, counter::FALLBACK_NO_SOCKET];
            for (m, index) in self.fallbacks.iter().zip(reasons) {
                m.absolute(Counters::get(c, index));
            }
            self.migrated.absolute(Counters::get(c, counter::MIGRATED));
        }
    }
}
