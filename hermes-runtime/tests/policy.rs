//! Measurement behind the default policy's margin (ignored by default; it
//! prints numbers rather than asserting them):
//!
//! `cargo test -p hermes-runtime --test policy -- --ignored --nocapture`

use std::{
    net::TcpStream,
    time::{Duration, Instant},
};

use hermes_runtime::{
    Builder, Mode,
    scheduler::{LeastLoaded, PassInput, Policy, WorkerSet},
};
use hermes_test_support::{
    ebpf::require_bpf,
    http::{read_response, send},
    server::start,
    snapshot::{open_total, wait_all_eligible},
    wait::poll_until,
};

/// Every fresh worker: leaves the whole choice to the kernel's fine filter.
#[derive(Debug)]
struct AllFresh;

impl Policy for AllFresh {
    fn eligible(&self, input: &PassInput<'_>, out: &mut WorkerSet) {
        out.extend((0..input.workers.len()).filter(|&i| input.is_fresh(i)));
    }
}

/// Opens 400 keep-alive connections in bursts of 50 (each answered once
/// and kept open), then reports how evenly the workers hold them, and how
/// long the slowest first response took.
fn spread(name: &str, policy: impl Policy) {
    let h = start(
        Builder::new().workers(4).bind("127.0.0.1:0".parse().unwrap()).require_ebpf(true).policy(policy),
    );
    assert_eq!(h.mode(), Mode::Hermes);
    wait_all_eligible(&h);
    let addr = h.local_addr();
    let mut open = Vec::new();
    let mut slowest = Duration::ZERO;
    for _ in 0..8 {
        let burst: Vec<_> = (0..50)
            .map(|_| {
                let t = Instant::now();
                let mut s = TcpStream::connect(addr).unwrap();
                send(&mut s, "/", true).unwrap();
                (t, s)
            })
            .collect();
        for (t, mut s) in burst {
            read_response(&mut s).unwrap();
            slowest = slowest.max(t.elapsed());
            open.push(s);
        }
    }
    let s = poll_until(Duration::from_secs(5), || {
        let s = h.snapshot();
        (open_total(&s) == 400).then_some(s)
    })
    .unwrap();
    let per: Vec<u32> = s.workers.iter().map(|w| w.open_connections).collect();
    let (min, max) = (per.iter().min().unwrap(), per.iter().max().unwrap());
    eprintln!(
        "{name:>28}: open per worker {per:?}, max-min {}, slowest first response {slowest:?}",
        max - min
    );
    drop(open);
    h.shutdown();
}

#[test]
#[ignore = "a measurement; run with --ignored --nocapture"]
fn ebpf_measure_policy_margin() {
    if !require_bpf("ebpf_measure_policy_margin") {
        return;
    }
    for _ in 0..3 {
        spread("strict least loaded (0, 0%)", LeastLoaded { absolute: 0, percent: 0 });
        spread("default (4, 25%)", LeastLoaded::default());
        spread("all fresh (fine filter only)", AllFresh);
    }
}
