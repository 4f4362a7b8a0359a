//! The `hermes-workload` binary as the benchmarks run it, black-box over
//! real loopback sockets: its Hermes mode serves through
//! `hermes_tower::serve`, so a slow request is in flight on its worker in
//! `/_hermes/stats` until answered; its flags are parsed with `--help` text;
//! SIGTERM drains and exits.

use std::{
    net::SocketAddr,
    process::{Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use hermes_test_support::{
    cpus, ebpf,
    http::{get, get_within},
    wait::poll_every,
    workload::Workload,
};
use serde_json::Value;

const BIN: &str = env!("CARGO_BIN_EXE_hermes-workload");

/// Starts the binary with `args` and reads its first line,
/// `listening on ADDR mode=MODE workers=N`; killed when dropped, unless
/// stopped.
fn start_workload(args: &[&str]) -> Workload {
    let workload = Workload::start(Command::new(BIN).args(args).stderr(Stdio::inherit()));
    let wanted = args.windows(2).find(|w| w[0] == "--workers").map_or("", |w| w[1]);
    assert_eq!(workload.workers.to_string(), wanted, "{}", workload.line);
    workload
}

/// The `(in_flight, requests)` of each worker in `/_hermes/stats`, and the
/// worker that answered (the harness reads it to take the stats connection
/// out of that worker's count); `None` when no answer came within `timeout`
/// (the connection may have landed on the blocked worker).
fn workers(addr: SocketAddr, timeout: Duration) -> Option<(Vec<(u64, u64)>, usize)> {
    let resp = get_within(addr, "/_hermes/stats", timeout).ok()?;
    assert_eq!(resp.status, 200, "{resp:?}");
    let json: Value = serde_json::from_str(&resp.body).expect("stats are JSON");
    let workers = json["workers"].as_array().expect("a workers array");
    let counts = workers
        .iter()
        .map(|w| (w["in_flight"].as_u64().expect("in_flight"), w["requests"].as_u64().expect("requests")))
        .collect();
    Some((counts, resp.worker.expect("the stats response names its worker")))
}

#[test]
fn ebpf_workload_counts_a_slow_request_in_flight_on_its_worker() {
    let test = "ebpf_workload_counts_a_slow_request_in_flight_on_its_worker";
    let mut args = vec!["--mode", "hermes", "--workers", "2", "--addr", "127.0.0.1:0"];
    if ebpf::required() {
        args.push("--require-ebpf");
    }
    let workload = start_workload(&args);
    if workload.mode != "hermes" {
        // Without CAP_BPF the binary serves by the kernel's hash; the layer
        // counts all the same, so the rest of the test still runs.
        ebpf::skipped(
            &format!("{test} (Hermes dispatch part; running on mode={})", workload.mode),
            "the dispatch program did not load",
        );
    }
    let addr = workload.addr;
    let (before, _) = workers(addr, Duration::from_secs(5)).expect("stats answer");
    assert_eq!(before.len(), 2);
    assert!(before.iter().all(|&(in_flight, _)| in_flight == 0), "stats are not counted as load: {before:?}");

    let slow = thread::spawn(move || get(addr, "/block?ms=1500").expect("the slow request"));
    // The blocked worker cannot answer; a stats request that lands on it
    // times out and the next connection is tried. The state lasts as long
    // as the 1.5 s request: the wait cannot be longer.
    let (during, answered_by) = poll_every(Duration::from_millis(1400), Duration::from_millis(5), || {
        workers(addr, Duration::from_millis(200))
            .filter(|(w, _)| w.iter().any(|&(in_flight, _)| in_flight == 1))
    })
    .expect("the slow request never showed in flight");
    assert_eq!(during.iter().map(|&(in_flight, _)| in_flight).sum::<u64>(), 1, "{during:?}");
    let busy = during.iter().position(|&(in_flight, _)| in_flight == 1).expect("the busy worker");
    assert_ne!(answered_by, busy, "the blocked worker cannot have answered the stats request");

    let resp = slow.join().expect("client thread");
    assert_eq!((resp.status, resp.body.as_str()), (200, "unblocked"));
    assert_eq!(resp.worker, Some(busy), "the worker that answered is the one that had it in flight");

    let mut last = Vec::new();
    let after = poll_every(Duration::from_secs(5), Duration::from_millis(5), || {
        let (w, _) = workers(addr, Duration::from_secs(5)).expect("stats answer");
        if w.iter().all(|&(in_flight, _)| in_flight == 0) && w[busy].1 > before[busy].1 {
            return Some(w);
        }
        last = w;
        None
    })
    .unwrap_or_else(|| panic!("the slow request never finished in the table: {last:?}"));
    assert_eq!(after[busy].1, before[busy].1 + 1, "{before:?} -> {after:?}");
    workload.stop();
}

#[test]
fn every_mode_serves_the_same_endpoints() {
    // `hermes` itself is the test above; its fallback is `reuseport`.
    for (mode, stats_mode) in [
        ("hermes-local", "hermes"),
        ("hermes-userspace", "kernel-hash"),
        ("reuseport", "kernel-hash"),
        ("shared", "shared-listener"),
        ("tokio", "tokio"),
    ] {
        let workload = start_workload(&["--mode", mode, "--workers", "2", "--addr", "127.0.0.1:0"]);
        assert_eq!(workload.mode, mode);
        let ok = get(workload.addr, "/").expect("GET /");
        assert_eq!((ok.status, ok.body.as_str()), (200, "ok"), "{mode}");
        assert!(ok.worker.is_some_and(|w| w < 2), "{mode}: {ok:?}");
        let worked = get(workload.addr, "/work?us=100").expect("GET /work");
        assert_eq!((worked.status, worked.body.as_str()), (200, "worked"), "{mode}");
        let bad = get(workload.addr, "/block?ms=soon").expect("GET /block");
        assert_eq!(bad.status, 400, "{mode}: a malformed cost is a client error: {bad:?}");
        let stats = get(workload.addr, "/_hermes/stats").expect("stats");
        assert!(stats.worker.is_some(), "{mode}: {stats:?}");
        let stats: Value = serde_json::from_str(&stats.body).expect("stats are JSON");
        assert_eq!(stats["mode"], stats_mode);
        if mode != "tokio" {
            // Only `hermes` and `hermes-userspace` (Hermes without its kernel
            // program) place requests; the other per-core peers keep every
            // request on its connection's worker.
            let places = mode == "hermes-userspace";
            assert_eq!(stats["placement"]["enabled"], places, "{mode}: {stats}");
        }
        workload.stop();
    }
}

#[test]
fn help_lists_the_documented_flags_and_bad_flags_are_refused() {
    let help = Command::new(BIN).arg("--help").output().expect("run --help");
    assert!(help.status.success(), "{help:?}");
    let text = String::from_utf8_lossy(&help.stdout);
    for flag in [
        "--mode",
        "--workers",
        "--addr",
        "--require-ebpf",
        "--pin",
        "--tick-ms",
        "--fine",
        "--margin",
        "--header-timeout-ms",
        "--idle-timeout-ms",
        "--drain-timeout-ms",
        "--max-connections",
        "--cost-scale",
        "--dsr-balancer",
        "--dsr-vip",
        "--dsr-interface",
        "--dsr-interval-ms",
    ] {
        assert!(text.contains(flag), "--help lacks {flag}:\n{text}");
    }
    for value in ["hermes", "hermes-userspace", "reuseport", "shared", "tokio", "two-choices", "hash"] {
        assert!(text.contains(value), "--help lacks {value}:\n{text}");
    }

    let bad = Command::new(BIN).args(["--mode", "nginx"]).output().expect("run with a bad mode");
    assert_eq!(bad.status.code(), Some(2), "{bad:?}");
    assert!(String::from_utf8_lossy(&bad.stderr).contains("nginx"), "{bad:?}");
    for scale in ["0", "-1", "inf", "fast"] {
        let bad = Command::new(BIN).args(["--cost-scale", scale]).output().expect("run with a bad scale");
        assert_eq!(bad.status.code(), Some(2), "--cost-scale {scale}: {bad:?}");
    }
    for args in [
        &["--dsr-balancer", "192.0.2.2=02:00:00:00:00"][..],
        &["--dsr-balancer", "192.0.2.2"],
        &["--dsr-balancer", "192.0.2.2=02:00:00:00:00:02"],
        &["--dsr-vip", "198.51.100.10"],
    ] {
        let bad = Command::new(BIN).args(args).output().expect("run with bad DSR flags");
        assert_eq!(bad.status.code(), Some(2), "{args:?}: {bad:?}");
    }
}

/// The CPUs each `hermes-worker-N` thread of process `pid` may run on, by
/// thread name.
fn worker_cpus(pid: u32) -> Vec<(String, String)> {
    let mut cpus: Vec<_> =
        cpus::threads(pid).into_iter().filter(|(name, _)| name.starts_with("hermes-worker-")).collect();
    cpus.sort();
    cpus
}

/// Whether the workload's snapshot says its workers are pinned.
fn pinned(addr: SocketAddr) -> bool {
    let resp = get(addr, "/_hermes/stats").expect("GET /_hermes/stats");
    let json: Value = serde_json::from_str(&resp.body).expect("stats are JSON");
    json["pinned"].as_bool().expect("a pinned flag")
}

/// By default the workers are pinned only when the process was given some
/// of the machine's CPUs (here by taskset, as a cpuset would), and left on
/// every CPU when it may run on all of them; `--pin on` and `--pin off` set
/// it and say so in the announced mode, so a report never takes one for the
/// other. The snapshot says which was chosen.
#[test]
fn workers_are_pinned_when_given_cpus_and_as_asked() {
    let online =
        cpus::count(&std::fs::read_to_string("/sys/devices/system/cpu/online").expect("online CPUs"));
    let allowed = cpus::count(&cpus::allowed_list("/proc/self/status").expect("own Cpus_allowed_list"));
    let args = ["--mode", "hermes-userspace", "--workers", "2", "--addr", "127.0.0.1:0"];
    let cases: [(&[&str], &str, bool); 3] = [
        (&["--pin", "on"], "hermes-userspace-pinned", true),
        (&["--pin", "off"], "hermes-userspace-unpinned", false),
        (&[], "hermes-userspace", allowed < online),
    ];
    for (pin, mode, expect_pinned) in cases {
        let w = start_workload(&[&args[..], pin].concat());
        assert_eq!(w.mode, mode);
        assert_eq!(get(w.addr, "/").expect("GET /").status, 200);
        assert_eq!(pinned(w.addr), expect_pinned, "{pin:?}");
        let cpus = worker_cpus(w.pid());
        assert_eq!(cpus.len(), 2, "{cpus:?}");
        if allowed > 1 {
            assert!(cpus.iter().all(|(_, list)| cpus::is_one(list) == expect_pinned), "{pin:?}: {cpus:?}");
        }
        w.stop();
    }
    // Given one CPU of several, the default pins.
    if online > 1 {
        let w = Workload::start(
            Command::new("taskset").args(["-c", "0", BIN]).args(args).stderr(Stdio::inherit()),
        );
        assert_eq!(w.mode, "hermes-userspace");
        assert!(pinned(w.addr), "the default under taskset -c 0 left the workers unpinned");
        assert_eq!(worker_cpus(w.pid()).iter().map(|(_, l)| l.as_str()).collect::<Vec<_>>(), ["0", "0"]);
        w.stop();
    }
}

/// `--cost-scale` makes a host slower (or faster) than its peers: the costs
/// of `/work` and `/block` are multiplied, the response says the cost
/// applied, the time taken is at least that, and the maxima apply to the
/// scaled cost. In every mode, since the DSR test beds mix them.
#[test]
fn cost_scale_multiplies_the_cost_of_work_and_block() {
    for mode in ["reuseport", "tokio"] {
        let w = start_workload(&[
            "--mode",
            mode,
            "--workers",
            "2",
            "--addr",
            "127.0.0.1:0",
            "--cost-scale",
            "2.5",
        ]);
        let start = Instant::now();
        let blocked = get(w.addr, "/block?ms=100").expect("GET /block");
        let took = start.elapsed();
        assert_eq!(
            (blocked.status, blocked.header("x-hermes-cost")),
            (200, Some("ms=250")),
            "{mode}: {blocked:?}"
        );
        assert!(took >= Duration::from_millis(250), "{mode}: /block?ms=100 at 2.5x took {took:?}");
        let start = Instant::now();
        let worked = get(w.addr, "/work?us=40000").expect("GET /work");
        let took = start.elapsed();
        assert_eq!(
            (worked.status, worked.header("x-hermes-cost")),
            (200, Some("us=100000")),
            "{mode}: {worked:?}"
        );
        assert!(took >= Duration::from_millis(100), "{mode}: /work?us=40000 at 2.5x took {took:?}");
        // 30 s is under the 60 s maximum, 75 s scaled is not.
        let over = get(w.addr, "/block?ms=30000").expect("GET /block over the maximum");
        assert_eq!(over.status, 400, "{mode}: the maximum applies to the scaled cost: {over:?}");
        w.stop();
    }
    let half = start_workload(&[
        "--mode",
        "reuseport",
        "--workers",
        "1",
        "--addr",
        "127.0.0.1:0",
        "--cost-scale",
        "0.5",
    ]);
    let r = get(half.addr, "/work?us=1001").expect("GET /work");
    assert_eq!(r.header("x-hermes-cost"), Some("us=501"), "rounded: {r:?}");
    half.stop();
}
