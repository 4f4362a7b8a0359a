//! One peer's run of a scenario: start its server, drive it with the scenario's plan, and gather
//! the figures of the run from the load's outcome and the server's stats around it.

use std::time::Instant;

use crate::bench::Bench;
use crate::load::{self, Outcome};
use crate::peer::{Peer, Server};
use crate::progress::RunProgress;
use crate::report::{PERCENTILES, PeerResult, Placement};
use crate::scenario::Scenario;
use crate::stats::{self, Snapshot};

/// Which run: the scenario, the peer, and the repetition (from 0).
#[derive(Debug, Clone, Copy)]
pub struct PeerRun<'a> {
    pub scenario: &'a Scenario,
    pub peer: Peer,
    pub run: usize,
    /// Arguments for the peer's server beyond the usual ones (e.g. ntex's balancing mode).
    pub args: &'a [String],
    /// Added to the server log's name, to keep apart the runs of one scenario that are not the
    /// table's (a probe, a second phase); empty for the table's.
    pub tag: &'a str,
}

impl PeerRun<'_> {
    /// The seed of the run's arrival schedule: the peers of one repetition share it, each
    /// repetition has its own.
    fn seed(&self) -> u64 {
        let name = self.scenario.name.to_string();
        let seed = name.bytes().fold(17u64, |h, b| h.wrapping_mul(31).wrapping_add(b as u64));
        seed.wrapping_add(self.run as u64 * 0x9E37_79B9)
    }
}

/// What the server's stats said before and after the load.
#[derive(Debug)]
struct Snapshots {
    before: Option<Snapshot>,
    after: Option<Snapshot>,
}

impl Snapshots {
    /// Per-worker increase of a counter over the run, when the server reports it.
    fn delta(&self, field: impl Fn(&stats::WorkerCounters) -> Option<u64>) -> Option<Vec<f64>> {
        self.after.as_ref().and_then(|a| stats::delta(self.before.as_ref(), a, field))
    }
}

/// `kind ×count` for each kind of failure.
fn error_kinds(outcome: &Outcome) -> String {
    outcome.errors.iter().map(|(k, v)| format!("{k} ×{v}")).collect::<Vec<_>>().join(", ")
}

impl Bench {
    /// Starts the peer's server, drives it with the scenario's plan, and gathers the run's figures;
    /// a run that could not be measured says why in [`PeerResult::failure`].
    pub fn run_peer(&self, run: &PeerRun<'_>) -> PeerResult {
        let mut r = PeerResult { mode: run.peer.to_string(), ..Default::default() };
        if let Err(e) = self.measure(run, &mut r) {
            r.failure = Some(e);
        }
        r
    }

    fn measure(&self, run: &PeerRun<'_>, r: &mut PeerResult) -> Result<(), String> {
        let (sc, peer) = (run.scenario, run.peer);
        let bin = self.binary(peer)?;
        let logs = self.out.join("logs");
        let _ = std::fs::create_dir_all(&logs);
        let log = logs.join(format!("{}{}-{peer}.log", sc.name, run.tag));
        let cpus = self.server_cpus.as_ref();
        let server =
            Server::start(bin, peer, self.workers, &log, run.args, cpus).map_err(|e| e.to_string())?;
        r.mode = server.mode.clone();
        if server.workers != self.workers {
            r.notes
                .push(format!("asked for {} workers, the server announced {}", self.workers, server.workers));
        }
        let addr = server.addr;
        let pid = Some(server.pid());
        let label = format!("{}{}/{peer} (run {}/{})", sc.name, run.tag, run.run + 1, self.repeat);
        let progress = RunProgress::new(label, sc.plan.duration);
        let (before, outcome, after, cpu) = self.rt.block_on(async {
            let before = stats::fetch(addr).await;
            let cpu_before = (stats::cpu_seconds(pid), stats::cpu_seconds(None), Instant::now());
            let outcome = progress.during(load::run(addr, &sc.plan, run.seed())).await;
            let cpu_after = (stats::cpu_seconds(pid), stats::cpu_seconds(None), Instant::now());
            let after = stats::fetch(addr).await;
            (before, outcome, after, (cpu_before, cpu_after))
        });
        drop(progress);
        drop(server);
        let ((server0, gen0, t0), (server1, gen1, t1)) = cpu;
        let wall = t1.duration_since(t0).as_secs_f64().max(1e-9);
        r.server_cpu = server0.zip(server1).map(|(a, b)| (b - a) / wall / self.workers as f64);
        r.generator_cpu = gen0.zip(gen1).map(|(a, b)| (b - a) / wall);
        let outcome = outcome.map_err(|e| e.to_string())?;
        let snapshots = Snapshots { before, after };
        if let Some(snapshot) = &snapshots.after {
            let mode = snapshot.mode.as_deref().unwrap_or("not reported");
            match &snapshot.mode_reason {
                Some(reason) => r.notes.push(format!("stats mode: {mode} ({reason})")),
                None => r.notes.push(format!("stats mode: {mode}")),
            }
            let rescued: f64 = snapshots.delta(|w| w.rescued).map_or(0.0, |d| d.iter().sum());
            if rescued > 0.0 {
                r.notes.push(format!("connections taken from a hung worker's listener: {rescued}"));
            }
        }
        if outcome.ok == 0 {
            return Err(format!("no successful response ({})", error_kinds(&outcome)));
        }
        self.record(sc, &outcome, &snapshots, r);
        // Over the same span as the requests: from before the load's first connection to its
        // last answer.
        r.cpu_us_per_req = server0.zip(server1).map(|(a, b)| (b - a) * 1e6 / outcome.ok as f64);
        Ok(())
    }

    /// The figures of a run that served.
    fn record(&self, sc: &Scenario, outcome: &Outcome, snapshots: &Snapshots, r: &mut PeerResult) {
        let ms = |q: f64| outcome.hist.value_at_quantile(q) as f64 / 1000.0;
        r.ok = outcome.ok;
        r.throughput = outcome.throughput();
        r.p50_ms = ms(0.5);
        r.p99_ms = ms(0.99);
        r.p999_ms = ms(0.999);
        r.max_ms = outcome.hist.max() as f64 / 1000.0;
        r.slow = outcome.slow;
        r.errors = outcome.error_count();
        r.error_kinds = error_kinds(outcome);

        let conns = match snapshots.delta(|w| w.accepted) {
            Some(v) if stats::spread(&v).is_some() => {
                r.conn_source = "the stats endpoint (accepted during the run)";
                v
            }
            _ => {
                r.conn_source = "the x-hermes-worker header of each connection's first response";
                stats::from_headers(&outcome.conns_by_worker, self.workers)
            }
        };
        if let Some(s) = stats::spread(&conns) {
            r.conn_sd = Some(s.sd);
            r.conn_max_mean = Some(s.max_over_mean);
        }
        if let Some(busy) = snapshots.delta(|w| w.busy_ns) {
            let ms: Vec<f64> = busy.iter().map(|ns| ns / 1e6).collect();
            r.busy_sd_ms = stats::spread(&ms).map(|s| s.sd);
        }
        r.offered_rps = outcome.offered_rate();
        let open_loop = sc.plan.streams.iter().all(|s| s.rate.is_some());
        r.delivered = (open_loop && r.offered_rps > 0.0).then(|| r.throughput / r.offered_rps);
        // Only the percentiles the run's sample reaches: a 99.99th of 1000 requests is their maximum.
        let reached = |p: f64| 100.0 / (100.0 - p) <= outcome.ok as f64;
        r.percentiles = PERCENTILES.iter().filter(|&&p| reached(p)).map(|&p| (p, ms(p / 100.0))).collect();
        r.wake_p99_ms = outcome.wake.value_at_quantile(0.99) as f64 / 1000.0;
        r.wake_max_ms = outcome.wake.max() as f64 / 1000.0;
        for (i, (stream, counts)) in sc.plan.streams.iter().zip(&outcome.streams).enumerate() {
            if let Some(label) = stream.label {
                let whole = |v: Vec<f64>| v.into_iter().map(|x| x as u64).collect();
                r.placements.push(Placement {
                    label: label.to_owned(),
                    conns: whole(stats::from_headers(&counts.conns_by_worker, self.workers)),
                    requests: whole(stats::from_headers(&counts.requests_by_worker, self.workers)),
                    p99_ms: counts.quantile_ms(0.99),
                    others_p99_ms: load::others_quantile_ms(&outcome.streams, i, 0.99),
                });
            }
        }
        let reqs = stats::from_headers(&outcome.requests_by_worker, self.workers);
        r.notes.push(format!(
            "requests per worker (header): {}",
            reqs.iter().map(|v| format!("{v:.0}")).collect::<Vec<_>>().join("/")
        ));
        if let Some(w) = &outcome.hung_worker {
            r.notes.push(format!("hung worker {w}, blocked {} time(s)", outcome.hangs));
        }
    }
}
