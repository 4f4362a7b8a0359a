//! Packets whose flow the balancer does not know, end to end in network
//! namespaces ([`support::Cluster`]): a flood of spoofed SYN/ACKs leaves
//! no state and breaks no live connection, and a balancer that never saw
//! a flow sends it to its Maglev server, where every flow the policy placed
//! there lives on.

mod support;

use std::{
    net::{Ipv4Addr, TcpStream},
    thread,
    time::{Duration, Instant},
};

use support::*;

/// Live connections through the VIP, each with its server.
fn open_live(cluster: &Cluster, n: usize) -> Vec<(TcpStream, String)> {
    let vip = cluster.vip();
    in_ns(&cluster.bed.ns("c"), move || {
        (0..n)
            .map(|_| {
                let mut c = connect(vip);
                let server = request(&mut c, "/whoami");
                (c, server)
            })
            .collect()
    })
}

/// How many of `live` still answer from their own server.
fn survivors(live: &mut [(TcpStream, String)]) -> usize {
    let mut alive = 0;
    for (conn, server) in live.iter_mut() {
        alive += usize::from(try_request(conn, "/whoami").is_ok_and(|s| &s == server));
    }
    alive
}

/// `frames` TCP SYN/ACKs (each sent twice) to the VIP's port from random addresses of
/// 203.0.113.0/24 and random ports, sent raw from the client's namespace to
/// the balancer's MAC, paced so that the balancer sees nearly every one.
/// Returns how many frames the balancer forwarded meanwhile.
fn flood_spoofed_syn_acks(cluster: &Cluster, frames: u64, seed: u64) -> u64 {
    let sender = in_ns(&cluster.bed.ns("c"), || RawSender::open("eth0"));
    let port = cluster.port;
    let mut rng = Rng::new(seed);
    let start = cluster.lb().counters().forwarded;
    let mut sent = 0;
    while sent < frames {
        for _ in 0..512.min(frames - sent) {
            let r = rng.next();
            let src = Ipv4Addr::new(203, 0, 113, (r & 0xff) as u8);
            let sport = (r >> 8) as u16 | 1024;
            let segment = tcp(src, VIP, sport, port, (r >> 24) as u32, (r >> 32) as u32, SYN | ACK, &[]);
            let frame = ethernet(BALANCER_MAC, CLIENT_MAC, &Ipv4::new(src, VIP, 6).datagram(&segment));
            // Twice, as a retransmission: a map entry looked up again counts
            // as in use, and only such entries push live flows out of an LRU.
            sender.send(&frame);
            sender.send(&frame);
            sent += 1;
        }
        // Paced: the next batch once the balancer is at most 2048 frames
        // behind (or has not moved for 100 ms: the rest were lost on the way).
        let (mut seen, mut moved) = (cluster.lb().counters().forwarded, Instant::now());
        while seen - start + 2048 < 2 * sent && moved.elapsed() < Duration::from_millis(100) {
            thread::yield_now();
            let now = cluster.lb().counters().forwarded;
            if now != seen {
                (seen, moved) = (now, Instant::now());
            }
        }
    }
    thread::sleep(Duration::from_millis(50));
    cluster.lb().counters().forwarded - start
}

/// Live connections, idle, while 131,072 spoofed SYN/ACKs (each sent
/// twice, as a retransmission would be) cross the balancer: twice the flow
/// map's size, what it takes to push entries in use out of the kernel's LRU
/// from an empty map (a full map, the state of a balancer that ran a while,
/// needs half). None is placed, none enters a map, every live connection
/// answers from its own server after.
#[test]
fn ebpf_live_connections_survive_a_flood_of_spoofed_syn_acks() {
    let test = "ebpf_live_connections_survive_a_flood_of_spoofed_syn_acks";
    let Some(cluster) = Cluster::start(test, Duration::from_secs(2)) else {
        return;
    };
    cluster.touch_until(&[], "a first metric from every server", |lb| {
        lb.server_stats().iter().all(|s| s.metric_age_ms < 1000.0)
    });
    let mut live = open_live(&cluster, 30);
    let before = cluster.lb().counters();
    let seen = flood_spoofed_syn_acks(&cluster, 2 * hermes_dsr::layout::FLOWS_LEN as u64, 0x5eed);
    let after = cluster.lb().counters();
    let alive = survivors(&mut live);
    eprintln!("{alive} of {} live connections survived {seen} spoofed SYN/ACK frames\n{after:?}", live.len());
    assert!(seen >= 250_000, "the balancer saw {seen} of the 262,144 spoofed frames");
    assert!(
        after.no_flow - before.no_flow >= 250_000,
        "each counted as a packet of no known flow: {after:?}"
    );
    assert_eq!(after.new_flows, before.new_flows, "no spoofed frame was placed as a new flow");
    assert_eq!(after.promoted, before.promoted, "no spoofed frame entered the flow map");
    assert_eq!(alive, live.len(), "live connections broken by spoofed SYN/ACKs");
}

/// A balancer that never saw the live connections takes over (a standby,
/// its servers listed in another order): each connection's next packet
/// finds no entry and goes to its Maglev server. Those the policy placed
/// there (`recoverable`) answer as before; the others, placed elsewhere by
/// load, are reset by the Maglev server: the limit of placing by load
/// without shared state.
#[test]
fn ebpf_a_balancer_that_never_saw_a_flow_sends_it_to_its_maglev_server() {
    let test = "ebpf_a_balancer_that_never_saw_a_flow_sends_it_to_its_maglev_server";
    let Some(mut cluster) = Cluster::start(test, Duration::from_secs(2)) else {
        return;
    };
    cluster.touch_until(&[], "a first metric from every server", |lb| {
        lb.server_stats().iter().all(|s| s.metric_age_ms < 1000.0)
    });
    let before = cluster.lb().counters();
    let mut live = open_live(&cluster, 30);
    let placed = cluster.lb().counters();
    assert_eq!(placed.new_flows - before.new_flows, 30, "{placed:?}");
    let recoverable = (placed.recoverable - before.recoverable) as usize;
    cluster.take_over();
    let alive = survivors(&mut live);
    let c = cluster.lb().counters();
    eprintln!(
        "{alive} of 30 live connections survived a takeover; {recoverable} were placed on their Maglev server\n{c:?}"
    );
    assert!(recoverable > 0, "no flow placed on its Maglev server: {placed:?}");
    assert_eq!(alive, recoverable, "exactly the flows placed on their Maglev server live on");
    assert!(c.no_flow > 0 && c.new_flows == 0, "{c:?}");
    // New flows through the new balancer are placed and served.
    cluster.touch_until(&[0, 1, 2], "metrics at the new balancer", |lb| {
        lb.server_stats().iter().all(|s| s.metric_age_ms < 1000.0)
    });
    assert_eq!(cluster.vip_flows(10).values().sum::<usize>(), 10);
}
