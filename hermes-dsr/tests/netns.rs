//! The tier end to end in network namespaces: a client, the balancer and
//! three Hermes servers (hermes_tower::serve over real sockets) on one
//! bridge. The balancer program runs at tc ingress of the balancer's
//! interface; each server runs the feedback program at tc egress and the
//! agent that samples its Worker State Table. Real TCP connections from the
//! client's namespace to the VIP.

mod support;

use std::{
    collections::BTreeMap,
    net::{SocketAddr, TcpStream},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    thread,
    time::{Duration, Instant},
};

use axum::{Router, routing::get};
use hermes_dsr::{Agent, Backend, Balancer, BalancerSettings, Datapath, HostSettings, Policy, XdpPass};
use hermes_runtime::{Builder, ServerHandle};
use support::*;

const SERVERS: usize = 3;

/// Everything one test runs; dropping it stops the agents and servers and
/// removes the namespaces, in that order, also when the test fails.
struct Cluster {
    agents: Vec<Agent>,
    servers: Vec<Arc<ServerHandle>>,
    balancer: Option<Balancer>,
    /// The pass program on the balancer's bridge port, with the XDP datapath.
    xdp_pass: Option<XdpPass>,
    gate: Arc<AtomicBool>,
    port: u16,
    bed: Testbed,
}

impl Drop for Cluster {
    fn drop(&mut self) {
        self.agents.clear();
        self.balancer = None;
        self.xdp_pass = None;
        self.gate.store(true, Ordering::Relaxed);
        for handle in self.servers.drain(..) {
            if let Ok(handle) = Arc::try_unwrap(handle) {
                handle.shutdown();
            }
        }
    }
}

fn app(name: String, gate: Arc<AtomicBool>) -> Router {
    Router::new().route("/whoami", get(move || async move { name })).route(
        "/hold",
        get(move || async move {
            // Held in flight until the test opens the gate (bounded).
            let deadline = Instant::now() + Duration::from_secs(20);
            // Relaxed: the flag carries no data.
            while !gate.load(Ordering::Relaxed) && Instant::now() < deadline {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            "released"
        }),
    )
}

impl Cluster {
    fn start(test: &str, max_stale: Duration) -> Option<Self> {
        Self::start_with(test, max_stale, true)
    }

    /// The servers and their agents; the balancer in this process when
    /// `balancer` is true (otherwise the test runs its own).
    fn start_with(test: &str, max_stale: Duration, balancer: bool) -> Option<Self> {
        let datapath = balancer.then_some(Datapath::Tc);
        Self::start_on(test, max_stale, datapath)
    }

    /// As [`Cluster::start_with`], the balancer (if any) attached at `datapath`.
    fn start_on(test: &str, max_stale: Duration, datapath: Option<Datapath>) -> Option<Self> {
        if !privileged_or_skip(test) {
            return None;
        }
        let bed = Testbed::new(SERVERS);
        let gate = Arc::new(AtomicBool::new(false));
        let mut cluster = Cluster {
            agents: Vec::new(),
            servers: Vec::new(),
            balancer: None,
            xdp_pass: None,
            gate: gate.clone(),
            port: 0,
            bed,
        };
        for i in 0..SERVERS {
            let (name, gate, port) = (format!("s{i}"), gate.clone(), cluster.port);
            let handle = in_ns(&cluster.bed.ns(&name), move || {
                let mut builder = Builder::new();
                builder.workers(1).pin_workers(false);
                hermes_tower::serve(SocketAddr::from(([0, 0, 0, 0], port)), app(name, gate))
                    .with_builder(builder)
                    .start()
                    .expect("start the Hermes server")
            });
            cluster.port = handle.local_addr().port();
            let handle = Arc::new(handle);
            cluster.servers.push(handle.clone());
            let mut settings = HostSettings::new(BALANCER_MAC, BALANCER, VIP);
            settings.interval = Duration::from_millis(2);
            let agent = in_ns(&cluster.bed.ns(&format!("s{i}")), move || {
                Agent::start("eth0", settings, move || handle.snapshot())
            });
            match agent {
                Ok(agent) => cluster.agents.push(agent),
                Err(e) if std::env::var("HERMES_REQUIRE_BPF").as_deref() != Ok("1") => {
                    eprintln!("\n*** SKIPPED {test}: the host feedback program did not load: {e} ***\n");
                    return None;
                }
                Err(e) => panic!("{test}: the host feedback program did not load: {e}"),
            }
        }
        let Some(datapath) = datapath else {
            return Some(cluster);
        };
        if datapath == Datapath::Xdp {
            let pass = cluster
                .bed
                .ready_for_xdp()
                .unwrap_or_else(|e| panic!("{test}: the XDP pass program did not attach: {e}"));
            cluster.xdp_pass = Some(pass);
        }
        let settings = BalancerSettings {
            vip: VIP,
            port: cluster.port,
            own_mac: BALANCER_MAC,
            max_stale,
            policy: Policy::Load,
        };
        let backends: Vec<Backend> =
            (0..SERVERS).map(|i| Backend { mac: server_mac(i), addr: server_addr(i) }).collect();
        let balancer = in_ns(&cluster.bed.ns("lb"), move || {
            let mut b = Balancer::load(&settings, &backends)?;
            b.attach_with("eth0", datapath)?;
            Ok::<_, hermes_dsr::Error>(b)
        })
        .unwrap_or_else(|e| panic!("{test}: the balancer did not load: {e}"));
        cluster.balancer = Some(balancer);
        Some(cluster)
    }

    fn lb(&self) -> &Balancer {
        self.balancer.as_ref().expect("balancer")
    }

    fn vip(&self) -> SocketAddr {
        SocketAddr::from((VIP, self.port))
    }

    fn direct(&self, i: usize) -> SocketAddr {
        SocketAddr::from((server_addr(i), self.port))
    }

    /// `n` new connections to the VIP from the client, one request each;
    /// returns how many each server answered.
    fn vip_flows(&self, n: usize) -> BTreeMap<String, usize> {
        let vip = self.vip();
        in_ns(&self.bed.ns("c"), move || {
            let mut by_server = BTreeMap::new();
            for _ in 0..n {
                *by_server.entry(fetch(vip, "/whoami")).or_insert(0) += 1;
            }
            by_server
        })
    }

    /// One request straight to each of `servers` (not through the VIP): the
    /// reply is a packet the host sends, which carries its metric out.
    fn touch(&self, servers: &[usize]) {
        let addrs: Vec<SocketAddr> = servers.iter().map(|&i| self.direct(i)).collect();
        in_ns(&self.bed.ns("c"), move || {
            for a in addrs {
                fetch(a, "/whoami");
            }
        });
    }

    /// Touches `servers` until `cond` holds on the balancer (5 s at most).
    fn touch_until(&self, servers: &[usize], what: &str, cond: impl Fn(&Balancer) -> bool) {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            self.touch(servers);
            if cond(self.lb()) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "timed out waiting for {what}: {:?} {:?}",
                self.lb().counters(),
                self.lb().server_stats()
            );
            thread::sleep(Duration::from_millis(5));
        }
    }
}

#[test]
fn vip_flows_stick_to_their_server_and_replies_bypass_the_balancer() {
    let Some(cluster) = Cluster::start(
        "vip_flows_stick_to_their_server_and_replies_bypass_the_balancer",
        Duration::from_secs(2),
    ) else {
        return;
    };
    let vip = cluster.vip();
    cluster.touch_until(&[], "a first metric (keepalive) from every server", |lb| {
        lb.server_stats().iter().all(|s| s.metric_age_ms < 1000.0)
    });
    // Eight long connections, six requests each: every answer on one
    // connection comes from the same server (a packet sent elsewhere would
    // reset the connection), while new flows spread.
    let (per_conn, frames): (Vec<Vec<String>>, Vec<Vec<u8>>) = in_ns(&cluster.bed.ns("c"), move || {
        let capture = Capture::open();
        let mut conns: Vec<TcpStream> = (0..8).map(|_| connect(vip)).collect();
        let mut answers = vec![Vec::new(); conns.len()];
        for _ in 0..6 {
            for (c, a) in conns.iter_mut().zip(answers.iter_mut()) {
                a.push(request(c, "/whoami"));
                thread::sleep(Duration::from_millis(3));
            }
        }
        drop(conns);
        thread::sleep(Duration::from_millis(50));
        (answers, capture.frames())
    });
    for answers in &per_conn {
        assert!(answers.iter().all(|a| a == &answers[0]), "a flow changed server: {answers:?}");
    }
    let servers_used: std::collections::BTreeSet<&String> = per_conn.iter().map(|a| &a[0]).collect();
    assert!(servers_used.len() >= 2, "long flows all on one server: {servers_used:?}");
    // What the client receives from the VIP: plain IPv4 (no option, IHL 5),
    // straight from the servers' MACs, never from the balancer's.
    let from_vip: Vec<&Vec<u8>> = frames
        .iter()
        .filter(|f| f.len() >= 34 && f[12..14] == [0x08, 0x00] && f[26..30] == VIP.octets())
        .collect();
    assert!(from_vip.len() >= 8 * 6, "captured {} frames from the VIP", from_vip.len());
    for f in &from_vip {
        assert_eq!(
            f[14],
            0x45,
            "a reply reached the client with IPv4 options: {:02x?}",
            &f[..40.min(f.len())]
        );
        assert_ne!(f[6..12], BALANCER_MAC, "a reply came through the balancer");
        assert!((0..SERVERS).any(|i| f[6..12] == server_mac(i)), "reply from an unknown MAC");
    }
    let spread = cluster.vip_flows(30);
    assert_eq!(spread.values().sum::<usize>(), 30);
    // Idle servers stay eligible through their keepalives: new flows spread.
    assert!(spread.len() >= 2, "new flows herded onto one server: {spread:?}");
    let c = cluster.lb().counters();
    let hosts: Vec<_> = cluster.agents.iter().map(|a| a.host().counters()).collect();
    eprintln!("answers per flow: {per_conn:?}\nnew flows: {spread:?}\nbalancer: {c:?}\nhosts: {hosts:?}");
    assert_eq!(c.new_flows, 38, "every connection placed once, by policy: {c:?}");
    assert_eq!(c.no_flow, 0, "every packet after the SYN found its flow: {c:?}");
    // Replies bypass the balancer: it saw no packet from the VIP, while the
    // servers sent their replies from the VIP straight to the client.
    assert_eq!(c.reply_seen, 0, "replies reached the balancer: {c:?}");
    let replies: u64 = hosts.iter().map(|h| h.replies).sum();
    assert!(replies >= 38 * 2, "servers sent {replies} packets from the VIP");
    // Client-to-server packets went through it (SYN, request, ACKs, FIN).
    assert!(c.forwarded >= 38 * 3, "{c:?}");
    // Metrics arrived in band, from known servers, without errors.
    assert!(c.feedback > 0 && c.feedback_unknown == 0, "{c:?}");
    assert!(hosts.iter().all(|h| h.errors == 0), "{hosts:?}");
    let stats = cluster.lb().server_stats();
    assert!(stats.iter().map(|s| s.new_flows).sum::<u64>() == 38, "{stats:?}");
    // The same figures through `metrics`.
    let recorder = metrics_exporter_prometheus::PrometheusBuilder::new().build_recorder();
    let handle = recorder.handle();
    metrics::with_local_recorder(&recorder, || cluster.lb().record_metrics());
    let text = handle.render();
    assert!(text.contains("hermes_dsr_new_flows_total 38"), "{text}");
    assert!(text.contains("hermes_dsr_reply_seen_total 0"), "{text}");
    assert!(text.contains(r#"hermes_dsr_server_load{server="192.0.2.11"}"#), "{text}");
}

/// The IPv4 datagram of an Ethernet frame (from its IP header on), or
/// `None` for anything else.
fn ipv4(frame: &[u8]) -> Option<&[u8]> {
    (frame.len() >= 34 && frame[12..14] == [0x08, 0x00]).then(|| &frame[14..])
}

fn src(ip: &[u8]) -> [u8; 4] {
    ip[12..16].try_into().expect("4 bytes")
}

fn dst(ip: &[u8]) -> [u8; 4] {
    ip[16..20].try_into().expect("4 bytes")
}

/// `datagrams` sorted, so two captures compare as multisets.
fn sorted(mut datagrams: Vec<Vec<u8>>) -> Vec<Vec<u8>> {
    datagrams.sort();
    datagrams
}

/// What the client sends reaches the servers byte for byte (from the IP
/// header on: the balancer rewrites only the MACs), and what the servers
/// send reaches the client byte for byte: the feedback option travels only
/// in copies addressed to the balancer's MAC, each of which is a reply
/// with the option inserted (checked by taking it out again). Captured with
/// AF_PACKET sockets in the client's and every server's namespace; a
/// server's sent frames are seen after its tc egress program.
#[test]
fn packets_arrive_byte_for_byte_as_sent_and_the_option_only_in_copies_to_the_balancer() {
    let Some(cluster) = Cluster::start(
        "packets_arrive_byte_for_byte_as_sent_and_the_option_only_in_copies_to_the_balancer",
        Duration::from_secs(2),
    ) else {
        return;
    };
    let vip = cluster.vip();
    cluster.touch_until(&[], "a first metric (keepalive) from every server", |lb| {
        lb.server_stats().iter().all(|s| s.metric_age_ms < 1000.0)
    });
    let captures: Vec<Capture> =
        (0..SERVERS).map(|i| in_ns(&cluster.bed.ns(&format!("s{i}")), Capture::open)).collect();
    let client = in_ns(&cluster.bed.ns("c"), move || {
        let capture = Capture::open();
        for _ in 0..12 {
            let mut conn = connect(vip);
            for _ in 0..3 {
                request(&mut conn, "/whoami");
                thread::sleep(Duration::from_millis(3));
            }
        }
        thread::sleep(Duration::from_millis(100));
        capture.frames_both()
    });
    let servers: Vec<(bool, Vec<u8>)> = captures.iter().flat_map(Capture::frames_both).collect();
    let (vip, client_ip) = (VIP.octets(), CLIENT.octets());
    let pick =
        |frames: &[(bool, Vec<u8>)], sent: bool, want: &dyn Fn(&[u8], &[u8]) -> bool| -> Vec<Vec<u8>> {
            frames
                .iter()
                .filter(|(out, f)| *out == sent && ipv4(f).is_some_and(|ip| want(f, ip)))
                .map(|(_, f)| ipv4(f).expect("checked").to_vec())
                .collect()
        };
    // Client to VIP: as sent, as received.
    let to_vip = |_: &[u8], ip: &[u8]| src(ip) == client_ip && dst(ip) == vip;
    let client_sent = sorted(pick(&client, true, &to_vip));
    let servers_got = sorted(pick(&servers, false, &to_vip));
    assert!(client_sent.len() >= 12 * 5, "{} packets to the VIP captured", client_sent.len());
    assert!(
        client_sent == servers_got,
        "{} sent to the VIP, {} received by the servers, or different bytes",
        client_sent.len(),
        servers_got.len()
    );
    // VIP to client: the replies, as the servers sent them (not the copies
    // to the balancer), as the client received them.
    let replies = |f: &[u8], ip: &[u8]| src(ip) == vip && dst(ip) == client_ip && f[..6] != BALANCER_MAC;
    let servers_sent = sorted(pick(&servers, true, &replies));
    let client_got = sorted(pick(&client, false, &|_: &[u8], ip: &[u8]| src(ip) == vip));
    assert!(servers_sent.len() >= 12 * 4, "{} replies captured", servers_sent.len());
    assert!(
        servers_sent == client_got,
        "{} replies sent, {} received by the client, or different bytes",
        servers_sent.len(),
        client_got.len()
    );
    assert!(client_got.iter().all(|ip| ip[0] == 0x45), "no reply reaches the client with an IP option");
    // The option path: copies to the balancer's MAC, IHL 7 with option 0x9E
    // first; a copy of a reply, with its 8 option bytes taken out (and the
    // length and header checksum, which the insertion changed, left aside),
    // is that reply.
    let copies: Vec<Vec<u8>> =
        pick(&servers, true, &|f: &[u8], ip: &[u8]| f[..6] == BALANCER_MAC && ip[0] != 0x45);
    assert!(!copies.is_empty(), "no feedback copy captured");
    let blank = |ip: &[u8]| {
        let mut v = ip.to_vec();
        v[2..4].fill(0);
        v[10..12].fill(0);
        v
    };
    let replies_blank: std::collections::BTreeSet<Vec<u8>> =
        servers_sent.iter().map(|ip| blank(ip)).collect();
    let mut of_replies = 0;
    for copy in &copies {
        assert_eq!(
            (copy[0], copy[20]),
            (0x47, 0x9E),
            "a copy carries the option: {:02x?}",
            &copy[..28.min(copy.len())]
        );
        let mut plain = copy[..20].to_vec();
        plain[0] = 0x45;
        plain.extend_from_slice(&copy[28..]);
        if src(copy) == vip && dst(copy) == client_ip {
            assert!(
                replies_blank.contains(&blank(&plain)),
                "a copy is not a reply with the option: {:02x?}",
                &copy[..40.min(copy.len())]
            );
            of_replies += 1;
        }
    }
    assert!(of_replies > 0, "no copy of a reply among {} copies", copies.len());
    eprintln!(
        "byte for byte: {} client packets to the VIP, {} replies; {} feedback copies ({} of replies)",
        client_sent.len(),
        client_got.len(),
        copies.len(),
        of_replies
    );
}

/// The balancer at XDP (`XDP_TX`, a pass program on the bridge's port): new
/// flows are placed and spread, every packet after the SYN finds its flow,
/// replies bypass the balancer, and metrics arrive in band, as with tc.
#[test]
fn xdp_datapath_balances_like_tc() {
    let Some(cluster) =
        Cluster::start_on("xdp_datapath_balances_like_tc", Duration::from_secs(2), Some(Datapath::Xdp))
    else {
        return;
    };
    assert_eq!(cluster.lb().datapath(), Datapath::Xdp);
    cluster.touch_until(&[], "a first metric (keepalive) from every server", |lb| {
        lb.server_stats().iter().all(|s| s.metric_age_ms < 1000.0)
    });
    let spread = cluster.vip_flows(30);
    assert_eq!(spread.values().sum::<usize>(), 30);
    assert!(spread.len() >= 2, "new flows herded onto one server: {spread:?}");
    let c = cluster.lb().counters();
    assert_eq!(c.new_flows, 30, "{c:?}");
    assert_eq!(c.no_flow, 0, "{c:?}");
    assert_eq!(c.reply_seen, 0, "replies reached the balancer: {c:?}");
    assert!(c.forwarded >= 30 * 3, "{c:?}");
    assert!(c.feedback > 0 && c.feedback_unknown == 0, "{c:?}");
}

#[test]
fn new_flows_avoid_the_loaded_server() {
    let Some(cluster) = Cluster::start("new_flows_avoid_the_loaded_server", Duration::from_secs(2)) else {
        return;
    };
    // 32 requests held in flight on s0 (straight to its own address).
    let direct = cluster.direct(0);
    let held: Vec<TcpStream> = in_ns(&cluster.bed.ns("c"), move || {
        (0..32)
            .map(|_| {
                let mut c = connect(direct);
                std::io::Write::write_all(&mut c, b"GET /hold HTTP/1.1\r\nHost: hermes\r\n\r\n").unwrap();
                c
            })
            .collect()
    });
    cluster.touch_until(&[0, 1, 2], "the balancer to learn s0's load", |lb| {
        let s = lb.server_stats();
        s[0].load >= 32 && s.iter().all(|s| s.metric_age_ms < 500.0)
    });
    let before = cluster.lb().counters();
    let spread = cluster.vip_flows(20);
    let after = cluster.lb().counters();
    eprintln!("new flows with s0 loaded: {spread:?}\n{:?}", cluster.lb().server_stats());
    assert_eq!(spread.get("s0"), None, "the loaded server received new flows: {spread:?}");
    assert_eq!(spread.values().sum::<usize>(), 20);
    assert_eq!(after.new_flows - before.new_flows, 20);
    assert_eq!(after.fallback_stale, before.fallback_stale, "no hashing while metrics are fresh");
    // Released: s0's load falls, and it takes new flows again.
    cluster.gate.store(true, Ordering::Relaxed);
    drop(held);
    cluster.touch_until(&[0, 1, 2], "s0's load to fall", |lb| lb.server_stats()[0].load == 0);
    let spread = cluster.vip_flows(30);
    assert!(spread.get("s0").copied().unwrap_or(0) > 0, "s0 idle again but no new flow: {spread:?}");
}

#[test]
fn silent_servers_are_drained_and_all_stale_falls_back_to_hashing_counted() {
    let limit = Duration::from_millis(300);
    let Some(cluster) =
        Cluster::start("silent_servers_are_drained_and_all_stale_falls_back_to_hashing_counted", limit)
    else {
        return;
    };
    // s2 stops sending metrics; s0 and s1 keep theirs fresh.
    cluster.agents[2].host().set_enabled(false);
    cluster.touch_until(&[0, 1], "s2's metric to go stale", |lb| {
        let s = lb.server_stats();
        s[2].metric_age_ms > limit.as_secs_f64() * 1e3
            && s[0].metric_age_ms < 100.0
            && s[1].metric_age_ms < 100.0
    });
    let before = cluster.lb().counters();
    let spread = cluster.vip_flows(15);
    let after = cluster.lb().counters();
    eprintln!("new flows with s2 silent: {spread:?}\n{after:?}");
    assert_eq!(spread.get("s2"), None, "a silent server received new flows: {spread:?}");
    assert_eq!(after.drained - before.drained, 15, "each placement counted as draining s2");
    assert_eq!(after.fallback_stale, before.fallback_stale);

    // Every host silent: past the limit, new flows are hashed (Maglev) and counted.
    for a in &cluster.agents {
        a.host().set_enabled(false);
    }
    thread::sleep(limit + Duration::from_millis(100));
    assert!(cluster.lb().server_stats().iter().all(|s| s.metric_age_ms > 300.0));
    let before = cluster.lb().counters();
    let spread = cluster.vip_flows(24);
    let after = cluster.lb().counters();
    eprintln!("new flows with every metric stale: {spread:?}\n{after:?}");
    assert_eq!(spread.values().sum::<usize>(), 24, "every flow still served");
    assert_eq!(after.fallback_stale - before.fallback_stale, 24, "each hashed flow counted");
    assert!(spread.len() >= 2, "Maglev spreads flows over servers: {spread:?}");
    // Metrics again: the policy takes over from hashing.
    for a in &cluster.agents {
        a.host().set_enabled(true);
    }
    cluster.touch_until(&[0, 1, 2], "fresh metrics", |lb| {
        lb.server_stats().iter().all(|s| s.metric_age_ms < 100.0)
    });
    let before = cluster.lb().counters();
    cluster.vip_flows(5);
    assert_eq!(cluster.lb().counters().fallback_stale, before.fallback_stale);
}

#[test]
fn hash_policy_places_flows_by_maglev_without_metrics() {
    let Some(cluster) =
        Cluster::start("hash_policy_places_flows_by_maglev_without_metrics", Duration::from_secs(2))
    else {
        return;
    };
    cluster.lb().set_policy(Policy::Hash);
    let spread = cluster.vip_flows(300);
    let c = cluster.lb().counters();
    assert_eq!(spread.values().sum::<usize>(), 300);
    assert_eq!(c.hashed, 300, "{c:?}");
    assert_eq!(c.fallback_stale, 0, "hash policy is not a fallback: {c:?}");
    // The kernel reads the table the balancer wrote: each of the three
    // servers owns a third of it, so each gets about 100 of 300 flows
    // (binomial, sd ≈ 8). 60..=140 is five sd either way. (A table the
    // kernel read at the wrong stride gave one server two thirds.)
    assert_eq!(spread.len(), 3, "every server gets flows: {spread:?}");
    assert!(spread.values().all(|&n| (60..=140).contains(&n)), "an even split: {spread:?}");
}

/// The `hermes-lb` program in the balancer's namespace: its settings line,
/// then JSON stats lines that show the flows placed through it and each
/// server's in-band metric, and a clean exit on SIGTERM.
#[test]
fn the_hermes_lb_program_balances_and_prints_its_stats_as_json() {
    use std::io::{BufRead, BufReader};
    use std::process::{Command, Stdio};

    let test = "the_hermes_lb_program_balances_and_prints_its_stats_as_json";
    let Some(cluster) = Cluster::start_with(test, Duration::from_secs(2), false) else {
        return;
    };
    let mut cmd = Command::new("ip");
    cmd.args(["netns", "exec", &cluster.bed.ns("lb"), env!("CARGO_BIN_EXE_hermes-lb")])
        .args(["--interface", "eth0", "--vip", &VIP.to_string(), "--port", &cluster.port.to_string()])
        .args(["--max-stale-ms", "2000", "--stats", "--stats-every-ms", "50"]);
    for i in 0..SERVERS {
        let mac: Vec<String> = server_mac(i).iter().map(|b| format!("{b:02x}")).collect();
        cmd.args(["--server", &format!("{}={}", server_addr(i), mac.join(":"))]);
    }
    let mut child = cmd.stdout(Stdio::piped()).stderr(Stdio::inherit()).spawn().expect("start hermes-lb");
    // Killed if the test fails before it stops it.
    struct Kill(std::process::Child);
    impl Drop for Kill {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let mut lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
    let mut child = Kill(child);
    let settings: serde_json::Value =
        serde_json::from_str(&lines.next().expect("a settings line").expect("read")).expect("JSON");
    assert_eq!(settings["settings"]["vip"], VIP.to_string(), "{settings}");
    assert_eq!(settings["settings"]["own_mac"], "02:00:00:00:00:02", "{settings}");
    assert_eq!(settings["settings"]["servers"].as_array().map(Vec::len), Some(SERVERS), "{settings}");
    assert_eq!(settings["settings"]["datapath"], "tc", "{settings}");

    // Flows through the VIP, and the servers' metrics arriving in band.
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut placed = 0;
    let last = loop {
        assert!(Instant::now() < deadline, "no stats line showed the flows and metrics");
        if placed < 20 {
            let spread = cluster.vip_flows(10);
            placed += spread.values().sum::<usize>();
        }
        cluster.touch(&[0, 1, 2]);
        let line: serde_json::Value =
            serde_json::from_str(&lines.next().expect("a stats line").expect("read")).expect("JSON");
        let servers = line["servers"].as_array().expect("servers").clone();
        let fresh =
            servers.iter().all(|s| s["feedbacks"].as_u64() > Some(0) && s["metric_age_ms"].is_number());
        if line["counters"]["new_flows"].as_u64() >= Some(20) && fresh {
            break line;
        }
    };
    assert_eq!(last["counters"]["reply_seen"], 0, "replies bypass the balancer: {last}");
    let on_servers: u64 = last["servers"]
        .as_array()
        .expect("servers")
        .iter()
        .map(|s| s["new_flows"].as_u64().unwrap_or(0))
        .sum();
    assert_eq!(Some(on_servers), last["counters"]["new_flows"].as_u64(), "{last}");

    // SIGTERM: a last line and a clean exit (the program detached).
    // SAFETY: kill with a valid pid of our child and a standard signal.
    assert_eq!(unsafe { libc::kill(child.0.id() as i32, libc::SIGTERM) }, 0);
    let status = child.0.wait().expect("wait");
    assert!(status.success(), "hermes-lb exited with {status}");
    let rest: Vec<String> = lines.map_while(Result::ok).collect();
    assert!(!rest.is_empty(), "no last stats line after SIGTERM");
}
