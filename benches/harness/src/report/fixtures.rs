//! Made-up runs for the reports' tests.

use clap::ValueEnum;

use super::ScenarioReport;
use super::figures::{PeerResult, PeerRow, Placement};
use crate::peer::Peer;

/// A run of `peer` that served, with a p50 of 1 ms, a p99.9 twice its p99 and 25 µs of server
/// CPU per request.
pub fn result(peer: Peer, throughput: f64, p99: f64) -> PeerResult {
    PeerResult {
        mode: peer.to_string(),
        ok: 10,
        throughput,
        p50_ms: 1.0,
        p99_ms: p99,
        p999_ms: p99 * 2.0,
        cpu_us_per_req: Some(25.0),
        percentiles: vec![(50.0, 1.0), (99.0, p99), (99.9, p99 * 2.0)],
        conn_source: "stats",
        ..Default::default()
    }
}

/// The runs of the peer of the first one.
pub fn row(runs: Vec<PeerResult>) -> PeerRow {
    let peer = Peer::from_str(&runs[0].mode, false).expect("a peer's name");
    PeerRow { peer, runs, notes: Vec::new() }
}

/// A report of `rows` with a placeholder description and header.
pub fn report<'a>(name: &'a str, rows: &'a [PeerRow]) -> ScenarioReport<'a> {
    ScenarioReport { name, description: "d", header: "h", rows }
}

/// Three runs each: hermes' p99s 2, 8 and 3 ms; tokio's 4 and 6 ms, its second run failed.
pub fn repeated() -> [PeerRow; 2] {
    let hermes = row(vec![
        result(Peer::Hermes, 1000.0, 2.0),
        result(Peer::Hermes, 1100.0, 8.0),
        result(Peer::Hermes, 1050.0, 3.0),
    ]);
    let mut failed = result(Peer::Tokio, 0.0, 0.0);
    failed.failure = Some("did not start".to_owned());
    let tokio = row(vec![result(Peer::Tokio, 900.0, 4.0), failed, result(Peer::Tokio, 950.0, 6.0)]);
    [hermes, tokio]
}

/// A hermes run with its heavy stream placed on `conns`, its own p99 5 ms over the run's and the
/// others' a tenth of it.
pub fn placed(conns: Vec<u64>, requests: Vec<u64>, p99: f64) -> PeerResult {
    let mut r = result(Peer::Hermes, 1000.0, p99);
    r.placements.push(Placement {
        label: "heavy".to_owned(),
        conns,
        requests,
        p99_ms: Some(p99 + 5.0),
        others_p99_ms: Some(p99 / 10.0),
    });
    r
}

/// Three runs of hermes with the heavy stream on [2, 0], [1, 1] and [0, 2].
pub fn skewed() -> PeerRow {
    row(vec![
        placed(vec![2, 0], vec![400, 0], 150.0),
        placed(vec![1, 1], vec![210, 190], 21.0),
        placed(vec![0, 2], vec![0, 399], 160.0),
    ])
}
