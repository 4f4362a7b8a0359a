//! [`Snapshot`]: the server's table, list of eligible workers and kernel
//! counters at one instant, serializable (the JSON of `/_hermes/stats`) and
//! read back by the tools that watch a server (`hermes-top`).

use std::sync::atomic::Ordering;

use hermes_bpf::{layout::WorkerPhase, monotonic_ns};
use serde::{Deserialize, Deserializer, Serialize};

use crate::{config::Mode, state::ServerState};

/// The server's state at one instant: per-worker table values, eligibility
/// and kernel dispatch counts, fallbacks by reason, and the mode.
///
/// The JSON reads back into the same value; a field missing from it (a
/// server of another version) reads as its default, and an age never
/// published (written `null`) as infinity.
///
/// ```
/// use hermes_runtime::Snapshot;
///
/// let json = serde_json::to_string(&Snapshot::default()).unwrap();
/// let back: Snapshot = serde_json::from_str(&json).unwrap();
/// assert_eq!(back, Snapshot::default());
/// let old: Snapshot = serde_json::from_str(r#"{"pid": 7, "list_age_ms": null}"#).unwrap();
/// assert_eq!((old.pid, old.list_age_ms), (7, f64::INFINITY));
/// ```
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(default)]
pub struct Snapshot {
    /// The server's process id (after an upgrade, the successor's).
    pub pid: u32,
    /// The first slot of this server's workers in the kernel's socket array
    /// and table (0 unless it took over from a running server).
    pub slot_base: usize,
    /// Times the kernel program ran (one per new connection and per
    /// migrated one); a successor carries the count on.
    pub program_runs: u64,
    /// The mode in force (`hermes`, `kernel-hash` or `shared-listener` in JSON).
    pub mode: Mode,
    /// Why the server fell back from Hermes to the kernel's hash, if it did.
    pub mode_reason: Option<String>,
    /// How many workers the list last published has (the candidates the
    /// kernel program draws from); 0 once a successor took the list over.
    pub eligible_count: usize,
    /// The workers (ids) of that list, in list order (each worker's
    /// `eligible` says the same per worker).
    pub eligible: Vec<usize>,
    /// Milliseconds since that list was published (infinite, `null` in
    /// JSON, before the first publish).
    #[serde(deserialize_with = "infinite_when_null")]
    pub list_age_ms: f64,
    /// Whether locality is on (`Builder::locality`).
    pub locality: bool,
    /// Whether each worker is pinned to a CPU (`Builder::pin_workers`, set or
    /// decided by default).
    #[serde(default)]
    pub pinned: bool,
    /// New connections the kernel program placed on the worker of the CPU
    /// that received them, while locality was on (the whole group's, across
    /// upgrades).
    pub placed_local: u64,
    /// One entry per worker, by id.
    pub workers: Vec<WorkerSnapshot>,
    /// New connections the kernel program left to the kernel's hash, by reason.
    pub fallbacks: Fallbacks,
    /// Queued connections of closing listeners that the kernel migrated.
    pub migrated: u64,
    /// Times the dispatch self-check found the program not running (the
    /// group lost it, or another program replaced it) and attached it again.
    pub dispatch_lost: u64,
    /// Request placement: the target of the moment and the requests lost
    /// with a stopped target.
    pub placement: PlacementSnapshot,
}

/// Request placement in a [`Snapshot`] (see [`crate::placement`]).
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(default)]
pub struct PlacementSnapshot {
    /// Whether requests may move (`Builder::place_requests`).
    pub enabled: bool,
    /// The lowest-scoring serving worker at the last tick.
    pub target: Option<usize>,
    /// Requests of a class learned to cost at least this many microseconds
    /// of thread time run on the blocking pool (`Builder::offload_heavy`);
    /// `None`: never.
    pub offload_threshold_us: Option<u32>,
    /// Moved requests cancelled because their target stopped (answered 503).
    pub lost: u64,
}

/// Connections the kernel program left to the kernel's hash, by reason
/// (all zero outside Hermes mode).
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(default)]
pub struct Fallbacks {
    /// Fewer candidates than the kernel's minimum.
    pub too_few: u64,
    /// The list was never published or older than the staleness limit.
    pub stale: u64,
    /// The chosen workers had no listener.
    pub no_socket: u64,
}

/// One worker in a [`Snapshot`].
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(default)]
pub struct WorkerSnapshot {
    /// Worker id (its slot in the table and the kernel's socket array).
    pub id: usize,
    /// Connections accepted in total.
    pub accepted: u64,
    /// Connections open now.
    pub open_connections: u32,
    /// Connections accepted beyond `Builder::max_connections_per_worker`
    /// and closed at once, in total.
    pub refused: u64,
    /// Connections this worker took from the listener of a hung worker
    /// (`Builder::rescue_hung_queues`), in total.
    pub rescued: u64,
    /// Requests being served now (fed by [`crate::context::InFlight`]
    /// guards: the Tower layer's, or a hand-written server's).
    pub in_flight: u32,
    /// The listener's accept-queue length at the last tick (in the
    /// shared-listener mode, the shared listener's, the same for every worker).
    pub accept_queue: u32,
    /// Whether the list last published has this worker.
    pub eligible: bool,
    /// New connections the kernel program placed on this worker (Hermes mode).
    pub dispatched: u64,
    /// Requests completed in total (fed by the same guards).
    pub requests: u64,
    /// Nanoseconds the worker's runtime spent not parked.
    pub busy_ns: u64,
    /// Milliseconds since the worker's last heartbeat (infinite, `null` in
    /// JSON, before the first one).
    #[serde(deserialize_with = "infinite_when_null")]
    pub heartbeat_age_ms: f64,
    /// Where the worker is in its life (`starting`, `serving`, `draining` or
    /// `stopped` in JSON).
    pub state: WorkerStatus,
    /// Requests of this worker's connections whose handler ran on another worker.
    pub placed_out: u64,
    /// Requests of other workers' connections whose handler ran here.
    pub placed_in: u64,
    /// Connections of this worker asked to reconnect while it was overloaded.
    pub reconnects: u64,
    /// Requests of this worker's connections run on its blocking pool
    /// (their class holds a thread for at least `Builder::offload_heavy`).
    pub offloaded: u64,
    /// Requests of this worker's connections refused (`503`) because as
    /// many ran on its blocking pool as `Builder::max_offloaded` allows.
    pub shed: u64,
    /// Keep-alive connections of this worker closed for their age or request
    /// count (`Builder::max_connection_age`, `max_requests_per_connection`).
    pub recycled: u64,
    /// Learned thread time of the requests in flight here, microseconds.
    pub expected_us: u32,
    /// Smoothed share of the recent ticks the worker was busy, per mille.
    pub util_permille: u32,
    /// Smoothed share of the recent ticks the worker's thread waited for a
    /// CPU while it had work (another thread held its core), per mille.
    pub stall_permille: u32,
    /// Nanoseconds the worker's thread waited for a CPU while it had work,
    /// in total (the kernel's run-queue delay).
    pub run_delay_ns: u64,
}

/// Where a worker is in its life, as a [`WorkerSnapshot`] shows it.
///
/// ```
/// use hermes_runtime::WorkerStatus;
///
/// assert_eq!(serde_json::to_string(&WorkerStatus::Stopped).unwrap(), r#""stopped""#);
/// assert_eq!(WorkerStatus::Serving.to_string(), "serving");
/// ```
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq, Hash)]
#[serde(rename_all = "lowercase")]
pub enum WorkerStatus {
    /// Not serving: never started in this slot, or exited.
    #[default]
    Stopped,
    /// Opening its listener (at start-up, or restarting after a failure).
    Starting,
    /// Accepting and serving connections.
    Serving,
    /// Out of the list, its listener closed, finishing its connections.
    Draining,
}

impl WorkerStatus {
    /// The name in snapshots: `starting`, `serving`, `draining` or `stopped`.
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            WorkerStatus::Stopped => "stopped",
            WorkerStatus::Starting => "starting",
            WorkerStatus::Serving => "serving",
            WorkerStatus::Draining => "draining",
        }
    }
}

impl std::fmt::Display for WorkerStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl From<WorkerPhase> for WorkerStatus {
    fn from(p: WorkerPhase) -> Self {
        match p {
            WorkerPhase::Empty => WorkerStatus::Stopped,
            WorkerPhase::Starting => WorkerStatus::Starting,
            WorkerPhase::Serving => WorkerStatus::Serving,
            WorkerPhase::Draining => WorkerStatus::Draining,
        }
    }
}

/// An age read back from JSON, which writes an infinite one as `null`.
fn infinite_when_null<'de, D: Deserializer<'de>>(d: D) -> Result<f64, D::Error> {
    Ok(Option::<f64>::deserialize(d)?.unwrap_or(f64::INFINITY))
}

pub(crate) fn snapshot(server: &ServerState) -> Snapshot {
    let now = monotonic_ns();
    let dispatch = &server.dispatch;
    // Acquire pairs with the Release store of the publish time: the list
    // read after it is that publish's or a newer one.
    let published = dispatch.control().published_ns.load(Ordering::Acquire);
    let n = server.config.workers;
    let eligible: Vec<usize> = dispatch.eligible().filter(|&id| id < n).collect();
    let mut in_list = vec![false; n];
    for &id in &eligible {
        in_list[id] = true;
    }
    let counters = dispatch.read_counters();
    let base = dispatch.slot_base;
    let placement = &server.placement;
    let ms = |ns: u64| ns as f64 / 1e6;
    let workers = server.table[..server.config.workers]
        .iter()
        .zip(server.workers.iter())
        .enumerate()
        .map(|(id, (w, control))| {
            // Relaxed: independent gauges and counters (see `WorkerState`).
            let hb = w.heartbeat_ns.load(Ordering::Relaxed);
            let (placed_out, placed_in) = placement.moves(id);
            WorkerSnapshot {
                id,
                accepted: w.accepted.load(Ordering::Relaxed),
                open_connections: w.open_conns.load(Ordering::Relaxed),
                refused: control.refused(),
                rescued: control.rescued(),
                in_flight: w.in_flight.load(Ordering::Relaxed),
                accept_queue: w.accept_queue.load(Ordering::Relaxed),
                eligible: in_list[id],
                dispatched: counters.as_ref().and_then(|c| c.dispatched.get(base + id).copied()).unwrap_or(0),
                requests: w.requests.load(Ordering::Relaxed),
                busy_ns: w.busy_ns.load(Ordering::Relaxed),
                heartbeat_age_ms: if hb == 0 { f64::INFINITY } else { ms(now.saturating_sub(hb)) },
                state: w.phase().into(),
                placed_out,
                placed_in,
                reconnects: placement.reconnects(id),
                offloaded: placement.offloaded(id),
                shed: placement.shed(id),
                recycled: placement.recycled(id),
                expected_us: w.expected_us.load(Ordering::Relaxed),
                util_permille: w.util_permille.load(Ordering::Relaxed),
                stall_permille: w.stall_permille.load(Ordering::Relaxed),
                run_delay_ns: w.run_delay_ns.load(Ordering::Relaxed),
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
    let (mode, reason) = dispatch.current_mode();
    Snapshot {
        pid: std::process::id(),
        slot_base: base,
        program_runs: counters.as_ref().map_or(0, |c| c.runs),
        mode,
        mode_reason: reason.map(str::to_owned),
        dispatch_lost: dispatch.selfcheck.losses(),
        eligible_count: eligible.len(),
        eligible,
        list_age_ms: if published == 0 { f64::INFINITY } else { ms(now.saturating_sub(published)) },
        locality: dispatch.control().locality(),
        pinned: server.config.pin_workers,
        placed_local: counters.as_ref().map_or(0, |c| c.local),
        workers,
        fallbacks,
        migrated,
        placement: PlacementSnapshot {
            enabled: placement.is_enabled(),
            target: placement.target(),
            offload_threshold_us: placement.offload_threshold_us(),
            lost: placement.lost(),
        },
    }
}
