//! `hermes-workload` as the servers of the cross-host tier: three workload
//! processes, each in its own network namespace behind the DSR balancer,
//! started with `--dsr-balancer`, `--dsr-vip` and `--dsr-token` and nothing else. Their
//! load reaches the balancer in band, and new flows through the VIP avoid
//! the host that holds requests in flight. Real kernel programs (the
//! balancer's, each host's feedback program, the dispatch program), real
//! TCP from the client's namespace; addresses from the documentation ranges,
//! only inside the namespaces the test makes and removes.

use std::{
    collections::BTreeMap,
    io::{Read, Write},
    net::{SocketAddr, TcpStream},
    process::{Command, Stdio},
    thread,
    time::Duration,
};

use hermes_dsr::{Balancer, BalancerSettings, Policy};
use hermes_dsr_tools::testbed::{
    BALANCER, BALANCER_MAC, Testbed, VIP, backends, in_ns, server_addr, server_token,
};
use hermes_test_support::{netns::privileged_or_skip, wait::poll_every, workload::Workload};

const BIN: &str = env!("CARGO_BIN_EXE_hermes-workload");
const PORT: u16 = 8080;
const SCALES: [&str; 3] = ["1", "2", "4"];

/// The workloads, the balancer and the namespaces, dropped in that order
/// (also when the test fails): the processes die before their namespaces go.
struct Tier {
    workloads: Vec<Workload>,
    balancer: Option<Balancer>,
    bed: Testbed,
}

impl Drop for Tier {
    fn drop(&mut self) {
        // Each workload is killed (and reaped) as it is dropped.
        self.workloads.clear();
        self.balancer = None;
    }
}

fn mac_str(mac: [u8; 6]) -> String {
    mac.iter().map(|b| format!("{b:02x}")).collect::<Vec<_>>().join(":")
}

/// One request on a new connection; the status line's code and the
/// `x-hermes-pid` header of the answer.
fn get(addr: SocketAddr, path: &str) -> (u16, Option<u32>) {
    let mut conn = TcpStream::connect_timeout(&addr, Duration::from_secs(5))
        .unwrap_or_else(|e| panic!("connect to {addr}: {e}"));
    conn.set_read_timeout(Some(Duration::from_secs(10))).expect("read timeout");
    conn.write_all(format!("GET {path} HTTP/1.1\r\nHost: hermes\r\nConnection: close\r\n\r\n").as_bytes())
        .expect("send the request");
    let mut text = String::new();
    conn.read_to_string(&mut text).unwrap_or_else(|e| panic!("read the answer to {path} from {addr}: {e}"));
    let status = text.split(' ').nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
    let pid = text
        .lines()
        .take_while(|l| !l.is_empty())
        .find_map(|l| l.to_ascii_lowercase().strip_prefix("x-hermes-pid:").map(|v| v.trim().to_owned()))
        .and_then(|v| v.parse().ok());
    (status, pid)
}

impl Tier {
    fn start(test: &str) -> Option<Self> {
        if !privileged_or_skip(test) {
            return None;
        }
        let mut tier = Tier { workloads: Vec::new(), balancer: None, bed: Testbed::new(SCALES.len()) };
        let balancer = format!("{BALANCER}={}", mac_str(BALANCER_MAC));
        let mut commands: Vec<Command> = SCALES
            .iter()
            .enumerate()
            .map(|(i, scale)| {
                let mut cmd = Command::new("ip");
                cmd.args(["netns", "exec", &tier.bed.ns(&format!("s{i}")), BIN])
                    .args(["--addr", &format!("0.0.0.0:{PORT}"), "--workers", "2", "--require-ebpf"])
                    .args(["--cost-scale", scale, "--dsr-balancer", &balancer, "--dsr-vip", &VIP.to_string()])
                    .args(["--dsr-interval-ms", "2", "--dsr-token", &format!("{:x}", server_token(i))])
                    .stderr(Stdio::inherit());
                cmd
            })
            .collect();
        // Every workload announces itself (started side by side).
        tier.workloads = Workload::start_all(&mut commands);
        for (i, workload) in tier.workloads.iter().enumerate() {
            let line = &workload.line;
            assert!(line.starts_with("listening on ") && line.contains("mode=hermes"), "s{i}: {line:?}");
        }
        let settings = BalancerSettings {
            vip: VIP,
            port: PORT,
            own_mac: BALANCER_MAC,
            max_stale: Duration::from_secs(2),
            policy: Policy::Load,
        };
        let backends = backends(SCALES.len());
        let balancer = in_ns(&tier.bed.ns("lb"), move || {
            let mut b = Balancer::load(&settings, &backends)?;
            b.attach("eth0")?;
            Ok::<_, hermes_dsr::Error>(b)
        })
        .unwrap_or_else(|e| panic!("{test}: the balancer did not load: {e}"));
        tier.balancer = Some(balancer);
        Some(tier)
    }

    fn lb(&self) -> &Balancer {
        self.balancer.as_ref().expect("balancer")
    }

    /// The server index of the workload whose pid answered.
    fn server_of(&self, pid: Option<u32>) -> usize {
        // `ip netns exec` execs the workload: the child's pid is the workload's.
        self.workloads
            .iter()
            .position(|w| Some(w.pid()) == pid)
            .unwrap_or_else(|| panic!("an answer from pid {pid:?}, not one of the workloads"))
    }

    /// `n` new connections to the VIP, one `/` each; how many each server answered.
    fn vip_flows(&self, n: usize) -> BTreeMap<usize, usize> {
        let vip = SocketAddr::from((VIP, PORT));
        let pids = in_ns(&self.bed.ns("c"), move || {
            (0..n)
                .map(|_| {
                    let (status, pid) = get(vip, "/");
                    assert_eq!(status, 200, "through the VIP");
                    pid
                })
                .collect::<Vec<_>>()
        });
        let mut by_server = BTreeMap::new();
        for pid in pids {
            *by_server.entry(self.server_of(pid)).or_insert(0) += 1;
        }
        by_server
    }

    /// Waits (10 s at most) until `cond` holds on the balancer's per-server
    /// figures, sending a request straight to every server meanwhile (the
    /// replies carry the metrics out).
    fn until(&self, what: &str, cond: impl Fn(&[hermes_dsr::ServerStats]) -> bool) {
        let mut last = Vec::new();
        poll_every(Duration::from_secs(10), Duration::from_millis(20), || {
            let stats = self.lb().server_stats();
            if cond(&stats) {
                return Some(());
            }
            last = stats;
            let direct: Vec<SocketAddr> = (0..SCALES.len()).map(|i| (server_addr(i), PORT).into()).collect();
            in_ns(&self.bed.ns("c"), move || {
                for addr in direct {
                    get(addr, "/");
                }
            });
            None
        })
        .unwrap_or_else(|| panic!("timed out waiting for {what}: {last:?}"));
    }
}

#[test]
fn ebpf_workload_hosts_feed_their_load_in_band_and_new_flows_avoid_the_loaded_one() {
    let test = "ebpf_workload_hosts_feed_their_load_in_band_and_new_flows_avoid_the_loaded_one";
    let Some(tier) = Tier::start(test) else {
        return;
    };
    // Every host's metric arrives, carried by its own replies.
    tier.until("a metric from every host", |s| s.iter().all(|s| s.feedbacks > 0 && s.metric_age_ms < 500.0));
    let spread_before = tier.vip_flows(30);
    assert_eq!(spread_before.values().sum::<usize>(), 30, "{spread_before:?}");
    assert_eq!(tier.lb().counters().reply_seen, 0, "replies bypass the balancer");

    // s1 learns that `/block` holds its thread (offloaded from then on, so
    // its workers keep serving and ticking), then holds 8 requests for 2 s.
    let s1 = SocketAddr::from((server_addr(1), PORT));
    in_ns(&tier.bed.ns("c"), move || {
        for _ in 0..6 {
            assert_eq!(get(s1, "/block?ms=5").0, 200);
        }
    });
    let held: Vec<_> = (0..8)
        .map(|_| {
            let ns = tier.bed.ns("c");
            thread::spawn(move || in_ns(&ns, move || get(s1, "/block?ms=1000").0))
        })
        .collect();
    tier.until("s1's load in band", |s| s[1].load >= 4 && s[1].load > s[0].load.max(s[2].load) + 2);
    let before: Vec<u64> = tier.lb().server_stats().iter().map(|s| s.new_flows).collect();
    let spread = tier.vip_flows(30);
    let after: Vec<u64> = tier.lb().server_stats().iter().map(|s| s.new_flows).collect();
    let placed: Vec<u64> = after.iter().zip(&before).map(|(a, b)| a - b).collect();
    for status in held.into_iter().map(|h| h.join().expect("held request")) {
        assert_eq!(status, 200, "a held request");
    }
    assert_eq!(placed.iter().sum::<u64>(), 30, "{placed:?}");
    let on_s1 = spread.get(&1).copied().unwrap_or(0);
    assert_eq!(on_s1 as u64, placed[1], "the balancer's count and the answers agree: {spread:?} {placed:?}");
    eprintln!("new flows per host while s1 held 8 requests: {placed:?}; before: {spread_before:?}");
    assert!(
        placed[1] < placed[0] && placed[1] < placed[2],
        "new flows avoid the loaded host: {placed:?} (answers {spread:?})"
    );
}
