//! The mode a peer's server runs a scenario in, where it has several: ntex's load balancing (the
//! one `--ntex-balancing` names, or by default the best of its modes for the scenario, chosen by a
//! short probe of each), and ntex's HTTP/2-only listener for the HTTP/2 scenarios (its HTTP
//! service takes HTTP/2 over plaintext no other way).

use clap::ValueEnum;

use crate::bench::Bench;
use crate::load::{Plan, Transport};
use crate::measure::PeerRun;
use crate::peer::Peer;
use crate::report::PeerResult;
use crate::scenario::Scenario;

/// ntex-server's ways of handing connections to its workers (`ntex_server::LoadBalancing`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Balancing {
    /// The best of the others for each scenario, by a short probe of each.
    Auto,
    /// The worker on the CPU that received the connection's packets (`SO_INCOMING_CPU`), unless
    /// it is busier than the least loaded choice; ntex's default.
    IncomingCpu,
    /// The less loaded of two sampled workers.
    LeastLoaded,
    /// The workers in turn.
    RoundRobin,
}

impl Balancing {
    /// The modes `auto` chooses from.
    const MODES: [Balancing; 3] = [Balancing::IncomingCpu, Balancing::LeastLoaded, Balancing::RoundRobin];

    fn name(self) -> String {
        self.to_possible_value().expect("no mode is hidden").get_name().to_owned()
    }
}

/// The share of a scenario's window each mode is probed for (at least [`PROBE_MIN`]).
const PROBE_SHARE: f64 = 0.25;
/// The shortest probe.
const PROBE_MIN: std::time::Duration = std::time::Duration::from_millis(250);

/// How a peer's server is started for a scenario, and how that was chosen.
#[derive(Debug, Default)]
pub struct Launch {
    /// Arguments beyond the usual ones.
    pub args: Vec<String>,
    /// Notes for the report.
    pub notes: Vec<String>,
}

/// True when every stream of the plan speaks HTTP/2.
fn http2_only(plan: &Plan) -> bool {
    plan.streams.iter().all(|s| matches!(s.transport, Transport::H2 { .. })) && plan.hang.is_none()
}

/// True when no stream has an arrival rate: every connection sends as fast as it is answered.
fn closed_loop(plan: &Plan) -> bool {
    plan.streams.iter().all(|s| s.rate.is_none())
}

impl Bench {
    /// How `peer` is started for `scenario` (a phase named by `tag`); for ntex in `auto`, probes
    /// each balancing mode on a shortened copy of the scenario first.
    pub fn launch(&self, scenario: &Scenario, peer: Peer, tag: &str) -> Launch {
        if peer != Peer::Ntex {
            return Launch::default();
        }
        let base: Vec<String> = if http2_only(&scenario.plan) { vec!["--h2".to_owned()] } else { Vec::new() };
        let args = |mode: Balancing| [base.clone(), vec!["--balancing".to_owned(), mode.name()]].concat();
        if self.ntex_balancing != Balancing::Auto {
            return Launch { args: args(self.ntex_balancing), notes: Vec::new() };
        }
        let mut probe = scenario.clone();
        probe.plan.duration = probe.plan.duration.mul_f64(PROBE_SHARE).max(PROBE_MIN);
        let results: Vec<(Balancing, PeerResult)> = Balancing::MODES
            .iter()
            .map(|&mode| {
                let (args, tag) = (args(mode), format!("{tag}-probe-{}", mode.name()));
                (mode, self.run_peer(&PeerRun { scenario: &probe, peer, run: 0, args: &args, tag: &tag }))
            })
            .collect();
        let closed = closed_loop(&scenario.plan);
        let best = choose(&results, closed).unwrap_or(Balancing::LeastLoaded);
        let figures: Vec<String> = results.iter().map(|(mode, r)| probe_figure(*mode, r, closed)).collect();
        let note = if results.iter().any(|(_, r)| r.served()) {
            format!(
                "balancing `{}`, chosen by a probe of {:.2} s per mode ({}): {}",
                best.name(),
                probe.plan.duration.as_secs_f64(),
                if closed { "most req/s" } else { "lowest p99 among the modes that kept up" },
                figures.join("; "),
            )
        } else {
            format!("balancing `{}`: no mode served in the probe ({})", best.name(), figures.join("; "))
        };
        Launch { args: args(best), notes: vec![note] }
    }
}

/// One mode's probe, for the note.
fn probe_figure(mode: Balancing, r: &PeerResult, closed: bool) -> String {
    match (&r.failure, closed) {
        (Some(why), _) => format!("{} failed ({why})", mode.name()),
        (None, true) => format!("{} {:.0} req/s", mode.name(), r.throughput),
        (None, false) => format!(
            "{} p99 {:.2} ms ({:.0}% delivered)",
            mode.name(),
            r.p99_ms,
            r.delivered.unwrap_or(0.0) * 100.0
        ),
    }
}

/// A mode kept up when it completed at least this share of the offered rate...
const KEPT_UP: f64 = 0.98;
/// ...with at most this share of its requests failed.
const FAILED: f64 = 0.001;

/// The best mode of a probe: for a closed loop the most requests per second; for an open loop the
/// lowest p99 among the modes that kept up, or among all that served when none did. `None` when
/// no mode served.
fn choose(results: &[(Balancing, PeerResult)], closed: bool) -> Option<Balancing> {
    let served = results.iter().filter(|(_, r)| r.served());
    if closed {
        return served.max_by(|a, b| a.1.throughput.total_cmp(&b.1.throughput)).map(|(m, _)| *m);
    }
    let kept_up = |r: &PeerResult| {
        r.delivered.is_none_or(|d| d >= KEPT_UP) && (r.errors as f64) <= FAILED * (r.ok + r.errors) as f64
    };
    let lowest = |rs: &mut dyn Iterator<Item = &(Balancing, PeerResult)>| {
        rs.min_by(|a, b| a.1.p99_ms.total_cmp(&b.1.p99_ms)).map(|(m, _)| *m)
    };
    lowest(&mut served.clone().filter(|(_, r)| kept_up(r))).or_else(|| lowest(&mut served.clone()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(throughput: f64, p99_ms: f64, delivered: f64, errors: u64) -> PeerResult {
        PeerResult { ok: 1000, throughput, p99_ms, delivered: Some(delivered), errors, ..Default::default() }
    }

    #[test]
    fn the_best_mode_is_the_fastest_closed_and_the_lowest_tail_that_kept_up_open() {
        let results = vec![
            (Balancing::IncomingCpu, run(900.0, 1.0, 0.90, 0)),
            (Balancing::LeastLoaded, run(1000.0, 3.0, 1.0, 0)),
            (Balancing::RoundRobin, run(950.0, 2.0, 0.99, 0)),
        ];
        assert_eq!(choose(&results, true), Some(Balancing::LeastLoaded));
        // incoming-cpu has the lowest p99 but fell behind its arrivals.
        assert_eq!(choose(&results, false), Some(Balancing::RoundRobin));
        // Errors count as not keeping up.
        let mut failing = results;
        failing[2].1.errors = 50;
        assert_eq!(choose(&failing, false), Some(Balancing::LeastLoaded));
    }

    #[test]
    fn with_no_mode_keeping_up_the_lowest_tail_wins_and_failed_modes_never_do() {
        let mut failed = run(0.0, 0.0, 0.0, 0);
        failed.failure = Some("did not start".to_owned());
        let results = vec![
            (Balancing::IncomingCpu, failed),
            (Balancing::LeastLoaded, run(500.0, 9.0, 0.5, 0)),
            (Balancing::RoundRobin, run(600.0, 7.0, 0.6, 0)),
        ];
        assert_eq!(choose(&results, false), Some(Balancing::RoundRobin));
        assert_eq!(choose(&results[..1], false), None);
        assert_eq!(choose(&results[..1], true), None);
    }
}
