//! Observability: [`Snapshot`] (serializable), the `metrics` export, and the
//! ready axum handler.

use std::sync::atomic::Ordering;

use hermes_bpf::{Counters, layout::WorkerPhase, monotonic_ns};
use serde::Serialize;

use crate::server::{Shared, current_server};

/// The server's state at one instant: per-worker table values, eligibility
/// and kernel dispatch counts, fallbacks by reason, and the mode.
///
/// ```
/// let json = serde_json::to_value(hermes_runtime::Snapshot::default()).unwrap();
/// assert!(json["workers"].is_array());
/// ```
#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct Snapshot {
    /// `hermes`, `kernel-hash` or `shared-listener`.
    pub mode: String,
    /// Why the server fell back from Hermes to the kernel's hash, if it did.
    pub mode_reason: Option<String>,
    /// The candidate bitmap last published (bit `i` = worker `i`).
    pub bitmap: u64,
    /// Milliseconds since that bitmap was published.
    pub bitmap_age_ms: f64,
    /// One entry per worker, by id.
    pub workers: Vec<WorkerSnapshot>,
    /// New connections the kernel program left to the kernel's hash, by reason.
    pub fallbacks: Fallbacks,
    /// Queued connections of closing listeners that the kernel migrated.
    pub migrated: u64,
}

/// Connections the kernel program left to the kernel's hash, by reason
/// (all zero outside Hermes mode).
#[derive(Debug, Clone, Copy, Default, Serialize, PartialEq, Eq)]
pub struct Fallbacks {
    /// Fewer candidates than the kernel's minimum.
    pub too_few: u64,
    /// The bitmap was never published or older than the staleness limit.
    pub stale: u64,
    /// The chosen workers had no listener.
    pub no_socket: u64,
}

/// One worker in a [`Snapshot`].
#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct WorkerSnapshot {
    /// Worker id (its slot in the table and the kernel's socket array).
    pub id: usize,
    /// Connections accepted in total.
    pub accepted: u64,
    /// Connections open now.
    pub open_connections: u32,
    /// Requests being served now (fed by the Tower layer).
    pub in_flight: u32,
    /// The listener's accept-queue length at the last tick (in the
    /// shared-listener mode, the shared listener's, the same for every worker).
    pub accept_queue: u32,
    /// Whether the last published bitmap has this worker.
    pub eligible: bool,
    /// New connections the kernel program placed on this worker (Hermes mode).
    pub dispatched: u64,
    /// Requests completed in total (fed by the Tower layer).
    pub requests: u64,
    /// Nanoseconds the worker's runtime spent not parked.
    pub busy_ns: u64,
    /// Milliseconds since the worker's last heartbeat.
    pub heartbeat_age_ms: f64,
    /// `starting`, `serving`, `draining` or `stopped`.
    pub state: &'static str,
}

fn phase_name(p: WorkerPhase) -> &'static str {
    match p {
        WorkerPhase::Empty => "stopped",
        WorkerPhase::Starting => "starting",
        WorkerPhase::Serving => "serving",
        WorkerPhase::Draining => "draining",
    }
}

pub(crate) fn snapshot(shared: &Shared) -> Snapshot {
    let now = monotonic_ns();
    let control = &shared.control[0];
    // Acquire pairs with the Release store of the publish time: the bitmap
    // read after it is that publish's or a newer one.
    let published = control.published_ns.load(Ordering::Acquire);
    let bitmap = control.bitmap.load(Ordering::Relaxed);
    let counters = shared.counters.as_deref().map(Counters::read);
    let ms = |ns: u64| ns as f64 / 1e6;
    let workers = shared.table[..shared.config.workers]
        .iter()
        .enumerate()
        .map(|(id, w)| {
            // Relaxed: independent gauges and counters (see `WorkerState`).
            let hb = w.heartbeat_ns.load(Ordering::Relaxed);
            WorkerSnapshot {
                id,
                accepted: w.accepted.load(Ordering::Relaxed),
                open_connections: w.open_conns.load(Ordering::Relaxed),
                in_flight: w.in_flight.load(Ordering::Relaxed),
                accept_queue: w.accept_queue.load(Ordering::Relaxed),
                eligible: bitmap & (1 << id) != 0,
                dispatched: counters.as_ref().map_or(0, |c| c.dispatched[id]),
                requests: w.requests.load(Ordering::Relaxed),
                busy_ns: w.busy_ns.load(Ordering::Relaxed),
                heartbeat_age_ms: if hb == 0 { f64::INFINITY } else { ms(now.saturating_sub(hb)) },
                state: phase_name(w.phase()),
            }
        })
        .collect();
    let (fallbacks, migrated) = counters.as_ref().map_or((Fallbacks::default(), 0), |c| {
        (
            Fallbacks {
                too_few: c.fallback_too_few,
                stale: c.fallback_stale,
                no_socket: c.fallback_no_socket,
            },
            c.migrated,
        )
    });
    Snapshot {
        mode: shared.mode.as_str().to_owned(),
        mode_reason: shared.mode_reason.clone(),
        bitmap,
        bitmap_age_ms: if published == 0 { f64::INFINITY } else { ms(now.saturating_sub(published)) },
        workers,
        fallbacks,
        migrated,
    }
}

/// The snapshot of the server the current thread works for, or `None`
/// outside a Hermes worker thread.
pub fn current_snapshot() -> Option<Snapshot> {
    current_server().map(|(s, _)| s.snapshot())
}

/// Handles registered with the `metrics` recorder for one worker.
///
/// Metrics (label `worker` on all but the server-wide ones):
/// gauges `hermes_open_connections`, `hermes_in_flight`,
/// `hermes_accept_queue`, `hermes_eligible`, `hermes_heartbeat_age_seconds`;
/// counters `hermes_accepted_total`, `hermes_requests_total`,
/// `hermes_busy_seconds_total`, `hermes_dispatched_total`; server-wide gauge
/// `hermes_mode{mode, reason}` (1) and counters
/// `hermes_fallbacks_total{reason}` and `hermes_migrated_total`.
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
    dispatched: metrics::Counter,
    mode: metrics::Gauge,
    fallbacks: [metrics::Counter; 3],
    migrated: metrics::Counter,
}

impl WorkerMetrics {
    pub(crate) fn new(shared: &Shared, id: usize) -> Self {
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
            dispatched: metrics::counter!("hermes_dispatched_total", "worker" => w),
            mode: metrics::gauge!(
                "hermes_mode",
                "mode" => shared.mode.as_str(),
                "reason" => shared.mode_reason.clone().unwrap_or_default()
            ),
            fallbacks: ["too_few", "stale", "no_socket"]
                .map(|reason| metrics::counter!("hermes_fallbacks_total", "reason" => reason)),
            migrated: metrics::counter!("hermes_migrated_total"),
        }
    }

    /// Sets every metric from the worker's slot and the kernel's counters.
    pub(crate) fn export(&self, shared: &Shared, bitmap: u64) {
        let id = self.id;
        let w = &shared.table[id];
        // Relaxed: independent gauges and counters (see `WorkerState`).
        self.open.set(w.open_conns.load(Ordering::Relaxed) as f64);
        self.in_flight.set(w.in_flight.load(Ordering::Relaxed) as f64);
        self.queue.set(w.accept_queue.load(Ordering::Relaxed) as f64);
        self.eligible.set(if bitmap & (1 << id) != 0 { 1.0 } else { 0.0 });
        let hb = w.heartbeat_ns.load(Ordering::Relaxed);
        self.heartbeat_age.set(monotonic_ns().saturating_sub(hb) as f64 / 1e9);
        self.accepted.absolute(w.accepted.load(Ordering::Relaxed));
        self.requests.absolute(w.requests.load(Ordering::Relaxed));
        self.busy.set(w.busy_ns.load(Ordering::Relaxed) as f64 / 1e9);
        self.mode.set(1.0);
        if let Some(c) = shared.counters.as_deref().map(Counters::read) {
            self.dispatched.absolute(c.dispatched[id]);
            for (m, v) in
                self.fallbacks.iter().zip([c.fallback_too_few, c.fallback_stale, c.fallback_no_socket])
            {
                m.absolute(v);
            }
            self.migrated.absolute(c.migrated);
        }
    }
}

/// An axum handler that serves the current server's [`Snapshot`] as JSON
/// (`503` when not running on a Hermes worker).
///
/// ```no_run
/// use axum::{Router, routing::get};
///
/// let app: Router = Router::new().route("/_hermes/stats", get(hermes_runtime::stats_handler));
/// ```
#[cfg(feature = "axum")]
pub async fn stats_handler() -> axum::response::Response {
    use axum::response::IntoResponse;
    match current_snapshot() {
        Some(s) => axum::Json(s).into_response(),
        None => {
            (axum::http::StatusCode::SERVICE_UNAVAILABLE, "not running on a Hermes worker").into_response()
        }
    }
}

/// A router with [`stats_handler`] at `/_hermes/stats`, to merge into an app.
///
/// ```no_run
/// use axum::{Router, routing::get};
///
/// let app: Router = Router::new()
///     .route("/", get(|| async { "hello" }))
///     .merge(hermes_runtime::stats_router());
/// ```
#[cfg(feature = "axum")]
pub fn stats_router<S: Clone + Send + Sync + 'static>() -> axum::Router<S> {
    axum::Router::new().route("/_hermes/stats", axum::routing::get(stats_handler))
}
