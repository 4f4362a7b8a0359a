//! Three `hermes-workload --grpc --orca` hosts (cost scales 1, 2 and 4) on
//! loopback behind the balancer of a gRPC client no one here wrote: Python
//! `grpcio` (C-core) with the service config's `weighted_round_robin`
//! (gRFC A58), which weighs the hosts by the ORCA reports in their calls'
//! trailers (and, with `enableOobLoadReport`, by the out-of-band stream).
//! The cheapest host receives the largest share; with `round_robin` the
//! shares are equal. The p99 comparison is the benchmark's
//! (`benches/balancers/fleet_bench.py grpc`), not this test's. Skipped
//! with a message without `python3` and `grpcio` (`pip install grpcio`); a
//! failure when `CI` is set.

use std::process::Command;

use hermes_test_support::{
    fleet::{LoadResult, loadgen, tool_or_skip},
    workload::Workload,
};

const BIN: &str = env!("CARGO_BIN_EXE_hermes-workload");

/// The requests each host answered, cheapest first.
fn shares(result: &LoadResult, hosts: &[Workload]) -> Vec<u64> {
    hosts.iter().map(|h| result.answered_by(h.pid())).collect()
}

#[test]
fn grpcio_weighted_round_robin_gives_the_cheapest_host_the_largest_share() {
    if !tool_or_skip(
        "grpcio_weighted_round_robin_gives_the_cheapest_host_the_largest_share",
        Command::new("python3").args(["-c", "import grpc"]),
        "pip install grpcio",
    ) {
        return;
    }
    let mut cmds: Vec<Command> = ["1", "2", "4"]
        .into_iter()
        .map(|scale| {
            let mut cmd = Command::new(BIN);
            cmd.args([
                "--grpc",
                "--orca",
                "--orca-min-interval-ms",
                "100",
                "--workers",
                "1",
                "--cost-scale",
                scale,
            ]);
            cmd
        })
        .collect();
    let hosts = Workload::start_all(&mut cmds);
    let targets = hosts.iter().map(|h| h.addr.to_string()).collect::<Vec<_>>().join(",");
    let run = |policy: &str, extra: &[&str]| {
        let mut args =
            vec!["grpc", "--targets", &targets, "--policy", policy, "--rate", "80", "--duration", "9"];
        args.extend_from_slice(&["--warmup", "4", "--spin-us", "2000"]);
        args.extend_from_slice(extra);
        let result = loadgen(&args);
        eprintln!("{policy} {extra:?}: {result:?}");
        assert_eq!(result.errors, 0, "{policy}: {result:?}");
        assert!(result.requests > 200, "{policy}: {result:?}");
        result
    };

    let rr = shares(&run("round_robin", &[]), &hosts);
    let (lo, hi) = (rr.iter().min().copied().unwrap_or(0), rr.iter().max().copied().unwrap_or(0));
    assert!(hi - lo <= 2, "round_robin splits evenly: {rr:?}");

    for extra in [&[][..], &["--oob"][..]] {
        let wrr = shares(&run("weighted_round_robin", extra), &hosts);
        assert!(
            wrr[0] > wrr[1] && wrr[0] > wrr[2],
            "{extra:?}: the cheapest host has the largest share: {wrr:?}"
        );
        assert!(wrr[0] > 2 * wrr[2], "{extra:?}: by a margin over the dearest (4x its cost): {wrr:?}");
    }
    for host in hosts {
        host.stop();
    }
}
