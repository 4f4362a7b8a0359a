//! The `servers-bound` scenario: the tier measured where the servers, not
//! the client, bound throughput.
//!
//! Three Hermes servers, each a process of its own (`dsr-bench --host`, see
//! `host`) in its namespace, its CPU limited by a cgroup of its own to
//! [`QUOTAS`] cores (1 : 2 : 4), so their capacities for the 1 ms CPU
//! requests are about 100, 200 and 400 per second; the client and the
//! balancer keep the rest of the machine. In every run the largest server's
//! quota halves for the middle third (it can take half as much for a
//! while: a noisy neighbour, a smaller instance), then comes back.
//! [`CLIENTS`](super::CLIENTS) closed-loop clients, a new connection per
//! request. The modes run interleaved, [`RUNS`] times; the table shows the
//! medians (and each run's req/s), the new flows per server, and the
//! throughput over time (median per half second) that shows each mode
//! follow the change of capacity.

use std::{
    io::{BufRead, BufReader, Write},
    net::SocketAddr,
    process::{Child, ChildStdin, Command, Stdio},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    thread,
    time::{Duration, Instant},
};

use hermes_dsr::{Balancer, Datapath};
use hermes_dsr_tools::{
    cgroup::CpuLimit,
    testbed::{Testbed, VIP},
};

use super::{Mode, percentile, run_clients, spawn_poller};

/// Each server's CPU quota, in cores.
pub(crate) const QUOTAS: [f64; 3] = [0.1, 0.2, 0.4];
/// The CPU time of one request, µs.
const COST_US: u64 = 1_000;
/// Runs of every mode.
const RUNS: usize = 3;
/// The port every server listens on, in its namespace.
const PORT: u16 = 8080;
/// The width of a bucket of the throughput over time.
const BUCKET: Duration = Duration::from_millis(500);

/// One server process in its cgroup; stopped (its feedback program
/// detached) and reaped when dropped.
struct Host {
    child: Child,
    stdin: Option<ChildStdin>,
    limit: CpuLimit,
}

impl Host {
    /// Starts server `i` in its namespace and limits it to its quota.
    fn start(bed: &Testbed, i: usize) -> Self {
        let exe = std::env::current_exe().expect("this binary");
        let mut child = Command::new("ip")
            .args(["netns", "exec", &bed.ns(&format!("s{i}"))])
            .arg(exe)
            .args(["--host", "--port", &PORT.to_string(), "--index", &i.to_string()])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("start dsr-bench --host");
        let name = format!("hermes-dsr-bench-{}-s{i}", std::process::id());
        let limit = CpuLimit::new(&name, QUOTAS[i]).expect("a cgroup with a CPU quota");
        limit.add(child.id()).expect("move the server into its cgroup");
        let mut line = String::new();
        BufReader::new(child.stdout.take().expect("piped")).read_line(&mut line).expect("the server's line");
        assert_eq!(line.trim(), "ready", "server s{i} did not start");
        let stdin = child.stdin.take();
        Self { child, stdin, limit }
    }

    fn in_band(&mut self, on: bool) {
        let stdin = self.stdin.as_mut().expect("running");
        writeln!(stdin, "in-band {}", if on { "on" } else { "off" }).expect("tell the server");
    }
}

impl Drop for Host {
    fn drop(&mut self) {
        drop(self.stdin.take());
        for _ in 0..500 {
            if self.child.try_wait().ok().flatten().is_some() {
                return;
            }
            thread::sleep(Duration::from_millis(10));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// What one run of one mode measured.
struct RunResult {
    rps: f64,
    p50_ms: f64,
    p99_ms: f64,
    errors: u64,
    flows: Vec<u64>,
    /// Requests per second in each [`BUCKET`].
    timeline: Vec<f64>,
}

/// The median of `xs`.
fn median(mut xs: Vec<f64>) -> f64 {
    xs.sort_by(f64::total_cmp);
    xs.get(xs.len() / 2).copied().unwrap_or(0.0)
}

pub(crate) fn run(quick: bool, datapath: Datapath) {
    let per_mode = if quick { Duration::from_secs(6) } else { Duration::from_secs(18) };
    let bed = Testbed::new(QUOTAS.len());
    let mut hosts: Vec<Host> = (0..QUOTAS.len()).map(|i| Host::start(&bed, i)).collect();
    let (balancer, _pass) = super::start_balancer(&bed, PORT, QUOTAS.len(), datapath);
    let modes = super::modes();
    println!(
        "servers: 3 Hermes servers of 1 worker, each its own process in a cgroup of {} / {} / {} CPU (s0/s1/s2);",
        QUOTAS[0], QUOTAS[1], QUOTAS[2]
    );
    println!(
        "s2's quota halves from {:.0} s to {:.0} s of every run; requests cost {COST_US} us of CPU; {} closed-loop",
        per_mode.as_secs_f64() / 3.0,
        per_mode.as_secs_f64() * 2.0 / 3.0,
        super::CLIENTS
    );
    println!(
        "clients, a new connection per request; {RUNS} runs of every mode, interleaved; balancer datapath: {}",
        if datapath == Datapath::Xdp { "xdp" } else { "tc" }
    );
    let mut results: Vec<Vec<RunResult>> = modes.iter().map(|_| Vec::new()).collect();
    for _ in 0..RUNS {
        for (m, mode) in modes.iter().enumerate() {
            results[m].push(run_mode(&bed, &mut hosts, &balancer, mode, per_mode));
        }
    }
    drop(hosts);
    print_results(&modes, &results);
    let median_rps = |name: &str| {
        let m = modes.iter().position(|m| m.name == name).expect("a mode");
        median(results[m].iter().map(|r| r.rps).collect())
    };
    let ratio = median_rps("in-band") / median_rps("polling-1s");
    if ratio < 1.47 {
        println!(
            "note: below the seed paper's 1.47; the throughput over time above shows where in-band and polling \
             differ (after each change of s2's quota) and where they do not (while the capacities stand still, \
             polling every second keeps up)"
        );
    }
    println!("rps ratio in-band/polling-1s = {ratio:.2}");
}

/// One run of `mode`: the servers' feedback and quotas set, the poller
/// started if the mode polls, the clients run while s2's quota halves in
/// the middle third.
fn run_mode(
    bed: &Testbed,
    hosts: &mut [Host],
    balancer: &Arc<Balancer>,
    mode: &Mode,
    per_mode: Duration,
) -> RunResult {
    for (i, h) in hosts.iter_mut().enumerate() {
        h.in_band(mode.in_band);
        h.limit.set(QUOTAS[i]).expect("reset the quota");
    }
    balancer.set_policy(mode.policy);
    balancer.set_max_stale(mode.poll.map_or(Duration::from_millis(200), |p| p * 3));
    let stop = Arc::new(AtomicBool::new(false));
    let poller =
        mode.poll.map(|every| spawn_poller(stop.clone(), balancer.clone(), bed.ns("lb"), every, PORT));
    thread::sleep(Duration::from_millis(300));
    let before: Vec<u64> = balancer.server_stats().iter().map(|s| s.new_flows).collect();
    let start = Instant::now();
    let largest = hosts.len() - 1;
    let limit = &hosts[largest].limit;
    let vip = SocketAddr::from((VIP, PORT));
    let (done, errors) = thread::scope(|s| {
        s.spawn(|| {
            let third = per_mode / 3;
            thread::sleep(third);
            limit.set(QUOTAS[largest] / 2.0).expect("halve the quota");
            thread::sleep(third);
            limit.set(QUOTAS[largest]).expect("restore the quota");
        });
        run_clients(&bed.ns("c"), vip, start, per_mode, |_| format!("/work?us={COST_US}"))
    });
    let elapsed = start.elapsed().as_secs_f64();
    stop.store(true, Ordering::Relaxed);
    if let Some(p) = poller {
        let _ = p.join();
    }
    let buckets = (per_mode.as_millis() / BUCKET.as_millis()) as usize;
    let mut timeline = vec![0.0; buckets];
    for (at, _) in &done {
        if let Some(b) = timeline.get_mut((at.as_millis() / BUCKET.as_millis()) as usize) {
            *b += 1.0 / BUCKET.as_secs_f64();
        }
    }
    let mut lat: Vec<Duration> = done.iter().map(|(_, l)| *l).collect();
    lat.sort();
    let flows = balancer.server_stats().iter().zip(&before).map(|(s, b)| s.new_flows - b).collect::<Vec<_>>();
    RunResult {
        rps: lat.len() as f64 / elapsed,
        p50_ms: percentile(&lat, 0.50).as_secs_f64() * 1e3,
        p99_ms: percentile(&lat, 0.99).as_secs_f64() * 1e3,
        errors,
        flows,
        timeline,
    }
}

fn print_results(modes: &[Mode], results: &[Vec<RunResult>]) {
    println!(
        "{:<14} {:>22} {:>8} {:>8} {:>20} {:>7}",
        "mode", "req/s median [runs]", "p50 ms", "p99 ms", "new flows s0/s1/s2", "errors"
    );
    for (mode, runs) in modes.iter().zip(results) {
        let rps: Vec<String> = runs.iter().map(|r| format!("{:.0}", r.rps)).collect();
        let flows: Vec<String> = (0..QUOTAS.len())
            .map(|i| format!("{:.0}", median(runs.iter().map(|r| r.flows[i] as f64).collect())))
            .collect();
        println!(
            "{:<14} {:>6.0} [{:>13}] {:>8.2} {:>8.2} {:>20} {:>7}",
            mode.name,
            median(runs.iter().map(|r| r.rps).collect()),
            rps.join(", "),
            median(runs.iter().map(|r| r.p50_ms).collect()),
            median(runs.iter().map(|r| r.p99_ms).collect()),
            flows.join("/"),
            runs.iter().map(|r| r.errors).sum::<u64>()
        );
    }
    println!("throughput over time, req/s per {} ms (median of the runs):", BUCKET.as_millis());
    for (mode, runs) in modes.iter().zip(results) {
        let buckets = runs.first().map_or(0, |r| r.timeline.len());
        let curve: Vec<String> = (0..buckets)
            .map(|b| format!("{:.0}", median(runs.iter().map(|r| r.timeline[b]).collect())))
            .collect();
        println!("{:<14} {}", mode.name, curve.join(" "));
    }
}
