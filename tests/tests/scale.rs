//! `hermes-workload` at 256 workers on whatever machine runs the tests (two
//! cores in CI): the real kernel program with maps sized for it, the list of
//! eligible workers far beyond 64, and an upgrade to another 256 workers
//! (the maps hold both servers; the offer carries more listeners than one
//! message can). Hermes mode with `--require-ebpf`; the names say `ebpf`.

use std::{
    collections::HashMap,
    net::SocketAddr,
    process::Command,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    thread,
    time::Duration,
};

use hermes_test_support::{
    ebpf,
    http::{get, stats},
    wait::{poll_every, poll_until},
    workload::{Pids, Workload, alive, parse_listening, signal},
};
use serde_json::Value;

const BIN: &str = env!("CARGO_BIN_EXE_hermes-workload");
const WORKERS: usize = 256;

/// Every worker's `accepted`, by id.
fn accepted(s: &Value) -> Vec<u64> {
    s["workers"]
        .as_array()
        .expect("workers")
        .iter()
        .map(|w| w["accepted"].as_u64().expect("accepted"))
        .collect()
}

/// `n` requests of `/`, each on a fresh connection, from `clients` threads;
/// returns the failures.
fn fresh_requests(addr: SocketAddr, n: usize, clients: usize) -> Vec<String> {
    let failures = Arc::new(Mutex::new(Vec::new()));
    let threads: Vec<_> = (0..clients)
        .map(|c| {
            let failures = failures.clone();
            thread::spawn(move || {
                for _ in (c..n).step_by(clients) {
                    match get(addr, "/") {
                        Ok(r) if r.status == 200 => {}
                        Ok(r) => failures.lock().unwrap().push(format!("status {}", r.status)),
                        Err(e) => failures.lock().unwrap().push(e.to_string()),
                    }
                }
            })
        })
        .collect();
    for t in threads {
        t.join().expect("client thread");
    }
    Arc::try_unwrap(failures).expect("joined").into_inner().unwrap()
}

/// What a load thread saw: responses by pid, and the failures.
type Seen = (HashMap<u64, u64>, Vec<String>);

/// Fresh-connection requests from two threads until stopped: the load an
/// upgrade runs under. Returns the pids that answered and the failures.
struct Load {
    stop: Arc<AtomicBool>,
    done: Arc<AtomicU64>,
    threads: Vec<thread::JoinHandle<Seen>>,
}

impl Load {
    fn start(addr: SocketAddr) -> Self {
        let (stop, done) = (Arc::new(AtomicBool::new(false)), Arc::new(AtomicU64::new(0)));
        let threads = (0..2)
            .map(|_| {
                let (stop, done) = (stop.clone(), done.clone());
                thread::spawn(move || {
                    let (mut pids, mut failures) = (HashMap::new(), Vec::new());
                    // Relaxed: a stop flag and a progress count.
                    while !stop.load(Ordering::Relaxed) {
                        match get(addr, "/") {
                            Ok(r) if r.status == 200 => {
                                let pid = r.header("x-hermes-pid").and_then(|p| p.parse().ok()).unwrap_or(0);
                                *pids.entry(pid).or_insert(0) += 1;
                                done.fetch_add(1, Ordering::Relaxed);
                            }
                            Ok(r) => failures.push(format!("status {}", r.status)),
                            Err(e) => failures.push(e.to_string()),
                        }
                    }
                    (pids, failures)
                })
            })
            .collect();
        Self { stop, done, threads }
    }

    fn finish(self) -> Seen {
        self.stop.store(true, Ordering::Relaxed);
        let (mut pids, mut failures) = (HashMap::new(), Vec::new());
        for t in self.threads {
            let (p, f) = t.join().expect("load thread");
            for (pid, n) in p {
                *pids.entry(pid).or_insert(0) += n;
            }
            failures.extend(f);
        }
        (pids, failures)
    }
}

#[test]
fn ebpf_256_workers_serve_spread_and_upgrade_to_256_more() {
    if !ebpf::require_bpf("ebpf_256_workers_serve_spread_and_upgrade_to_256_more") {
        return;
    }
    // One upgrade test at a time (see `upgrade_lock`).
    let _serial = hermes_test_support::workload::upgrade_lock();
    let n = WORKERS.to_string();
    let workload = Workload::start(Command::new(BIN).args([
        "--mode",
        "hermes",
        "--require-ebpf",
        "--workers",
        &n,
        "--drain-timeout-ms",
        "5000",
    ]));
    assert_eq!(workload.workers, WORKERS);
    let addr = workload.addr;
    let first = u64::from(workload.pid());
    let mut pids = Pids(vec![workload.pid()]);
    // Every worker serves and a list is published. (How many are listed at
    // a given moment depends on the machine: 256 threads on two cores keep
    // their heartbeats within the hang threshold only while the cores are
    // not taken by others.)
    let mut last = (0, 0);
    let started = poll_every(Duration::from_secs(20), Duration::from_millis(50), || {
        let s = stats(addr)?;
        let serving = s["workers"].as_array()?.iter().filter(|w| w["state"] == "serving").count();
        last = (serving, s["eligible_count"].as_u64()? as usize);
        (serving == WORKERS && last.1 > 0).then_some(())
    });
    assert!(started.is_some(), "256 workers serve and a list is published: (serving, listed) = {last:?}");

    // 5000 fresh connections: every worker takes some, none over 4x the mean.
    let before = accepted(&stats(addr).expect("stats"));
    let failures = fresh_requests(addr, 5000, 4);
    assert!(failures.is_empty(), "failed requests: {:?}", &failures[..failures.len().min(5)]);
    let after = stats(addr).expect("stats");
    let spread: Vec<u64> = accepted(&after).iter().zip(&before).map(|(a, b)| a - b).collect();
    let mean = spread.iter().sum::<u64>() as f64 / WORKERS as f64;
    let (min, max) = (*spread.iter().min().unwrap(), *spread.iter().max().unwrap());
    eprintln!(
        "256 workers, 5000 fresh connections: accepted per worker min {min}, max {max}, mean {mean:.1}; \
         fallbacks {}",
        after["fallbacks"]
    );
    assert!(min > 0, "a worker took no connection: {spread:?}");
    assert!(max as f64 <= 4.0 * mean, "a worker took over 4x the mean ({mean:.1}): {spread:?}");
    for w in after["workers"].as_array().expect("workers") {
        assert_eq!(w["state"], "serving", "{w}");
    }

    // The upgrade to 256 more, under load: no request fails.
    let load = Load::start(addr);
    poll_until(Duration::from_secs(5), || (load.done.load(Ordering::Relaxed) > 100).then_some(()))
        .expect("the load runs");
    signal(first as u32, libc::SIGUSR2);
    let line = workload.next_line(Duration::from_secs(60)).expect("the successor's listening line");
    let (same, mode, workers) = parse_listening(&line).unwrap_or_else(|| panic!("unexpected line {line:?}"));
    assert_eq!((same, mode.as_str(), workers), (addr, "hermes", WORKERS));
    let successor = poll_every(Duration::from_secs(10), Duration::from_millis(20), || {
        stats(addr).filter(|s| s["pid"].as_u64() != Some(first))
    })
    .expect("a snapshot of the successor");
    let second = successor["pid"].as_u64().expect("pid");
    pids.0.push(second as u32);
    assert_eq!(
        successor["slot_base"].as_u64(),
        Some(WORKERS as u64),
        "the successor's slots are the other half"
    );
    poll_until(Duration::from_secs(15), || (!alive(first as u32)).then_some(()))
        .expect("the old server exits");
    let counted = load.done.load(Ordering::Relaxed);
    poll_until(Duration::from_secs(10), || (load.done.load(Ordering::Relaxed) > counted + 200).then_some(()))
        .expect("the load runs on the successor");
    let (pids, failures) = load.finish();
    eprintln!("upgrade of 256 workers under load: responses by pid {pids:?}, {} failed", failures.len());
    assert!(failures.is_empty(), "failed requests: {:?}", &failures[..failures.len().min(5)]);
    assert!(pids.get(&second).is_some_and(|&n| n > 200), "the successor served: {pids:?}");
    let s = stats(addr).expect("stats");
    assert_eq!(s["pid"].as_u64(), Some(second));
    assert!(s["workers"].as_array().expect("workers").iter().all(|w| w["state"] == "serving"));
    signal(second as u32, libc::SIGTERM);
    poll_until(Duration::from_secs(20), || (!alive(second as u32)).then_some(()))
        .expect("the successor stops on SIGTERM");
}
