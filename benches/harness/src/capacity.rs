//! The capacity scenarios (`capacity`, `capacity-h2`), in two phases with a report each: every
//! peer at saturation (closed loop: requests per second and server CPU per request), then every
//! peer at one fixed rate near the slowest one's capacity (open loop: the latency percentiles
//! and the share of the offered rate delivered), named `SCENARIO-fixed`.

use crate::bench::Bench;
use crate::report::{PeerRow, fig};
use crate::scenario::{self, Scenario};

/// The fixed rate, as a share of the slowest peer's capacity.
pub const FIXED_SHARE: f64 = 0.8;

/// What the fixed-rate phase's report is named after: `capacity-fixed`.
pub const FIXED_TAG: &str = "-fixed";

/// One report of a scenario: a phase of it, or the whole of it.
#[derive(Debug)]
pub struct Phase {
    /// The report's name, e.g. `capacity` or `capacity-fixed`.
    pub name: String,
    pub description: String,
    pub rows: Vec<PeerRow>,
}

impl Phase {
    /// The one report of a scenario of one phase.
    pub fn whole(sc: &Scenario, rows: Vec<PeerRow>) -> Phase {
        Phase { name: sc.name.to_string(), description: sc.description.to_owned(), rows }
    }
}

/// The peer with the lowest median throughput, and that throughput; `None` when no peer served.
fn slowest(rows: &[PeerRow]) -> Option<(&PeerRow, f64)> {
    rows.iter().filter_map(|r| r.median(fig::rps).map(|rps| (r, rps))).min_by(|a, b| a.1.total_cmp(&b.1))
}

impl Bench {
    /// Runs both phases of a capacity scenario; the fixed-rate phase only when a peer served at
    /// saturation (its report says so otherwise).
    pub fn run_capacity(&self, sc: &Scenario) -> Vec<Phase> {
        let mut saturation = Phase::whole(sc, self.run_scenario(sc));
        let Some((peer, capacity)) = slowest(&saturation.rows).map(|(r, rps)| (r.peer, rps)) else {
            saturation.description += " (no peer served, so no fixed-rate phase)";
            return vec![saturation];
        };
        let near = FIXED_SHARE * capacity;
        let fixed = scenario::at_rate(sc, near * self.rate_scale, self.size);
        let offered = fixed.plan.streams.iter().filter_map(|s| s.rate).sum::<f64>();
        let description = format!(
            "the traffic of `{}` at a fixed rate, open loop (Poisson arrivals): {offered:.0} req/s, \
             {:.0}% of the slowest peer's capacity there (`{peer}`, {capacity:.0} req/s){}",
            sc.name,
            FIXED_SHARE * 100.0,
            // `--rate-scale`, and the smoke run's tenth.
            if (offered - near).abs() < 0.5 { String::new() } else { format!(" × {:.2}", offered / near) },
        );
        let rows = self.run_phase(&fixed, FIXED_TAG);
        vec![saturation, Phase { name: format!("{}{FIXED_TAG}", sc.name), description, rows }]
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::peer::Peer;
    use crate::report::PeerResult;

    fn row(peer: Peer, rps: &[f64]) -> PeerRow {
        let mut row = PeerRow::new(peer);
        row.runs =
            rps.iter().map(|&throughput| PeerResult { ok: 1, throughput, ..Default::default() }).collect();
        row
    }

    #[test]
    fn the_fixed_rate_follows_the_slowest_median() {
        let rows = [row(Peer::Hermes, &[100.0, 300.0, 200.0]), row(Peer::Tokio, &[150.0, 160.0, 500.0])];
        let (r, rps) = slowest(&rows).unwrap();
        assert_eq!((r.peer, rps), (Peer::Tokio, 160.0));
        let mut failed = row(Peer::Ntex, &[0.0]);
        failed.runs[0].failure = Some("did not start".to_owned());
        assert!(slowest(&[failed]).is_none());
    }
}
