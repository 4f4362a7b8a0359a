//! The in-band metric under stress, end to end in network namespaces
//! ([`support::Cluster`]): a host whose every segment fills the MTU stays
//! fresh at the balancer, and metrics forged with a server's MAC are
//! ignored and counted.

mod support;

use std::{
    io::{Read, Write},
    sync::atomic::Ordering,
    thread,
    time::{Duration, Instant},
};

use hermes_dsr::Datapath;
use support::*;

/// s0 sends only full-size frames (no segmentation offload) while it
/// streams a download through the VIP: no packet of it has room for the
/// option, so the metric must travel in the agent's keepalive, and the host
/// must stay fresh and keep taking new flows.
#[test]
fn ebpf_a_host_sending_only_full_size_segments_stays_fresh_and_keeps_new_flows() {
    let limit = Duration::from_millis(300);
    let test = "ebpf_a_host_sending_only_full_size_segments_stays_fresh_and_keeps_new_flows";
    let Some(cluster) = Cluster::start(test, limit) else {
        return;
    };
    cluster.bed.full_size_segments("s0");
    // s1 and s2 hold 4 requests each: s0, idle, is where new flows should go.
    let held = cluster.hold(&[1, 2], 4);
    cluster.touch_until(&[0], "s1's and s2's loads and a fresh s0", |lb| {
        let s = lb.server_stats();
        s[1].load >= 4 && s[2].load >= 4 && s.iter().all(|s| s.metric_age_ms < 100.0)
    });
    let mut conn = cluster.connection_on(0);
    conn.write_all(b"GET /download?ms=2500 HTTP/1.1\r\nHost: hermes\r\nConnection: close\r\n\r\n")
        .expect("send the download request");
    let reader = thread::spawn(move || {
        let mut total = 0usize;
        let mut buf = vec![0u8; 1 << 16];
        loop {
            match conn.read(&mut buf) {
                Ok(0) => return Ok(total),
                Ok(n) => total += n,
                Err(e) => return Err(e),
            }
        }
    });
    // For 1.2 s of the download, s0's metric as the balancer sees it.
    let host_before = cluster.agents[0].host().counters();
    let started = Instant::now();
    let mut worst: f64 = 0.0;
    while started.elapsed() < Duration::from_millis(1200) {
        worst = worst.max(cluster.lb().server_stats()[0].metric_age_ms);
        thread::sleep(Duration::from_millis(10));
    }
    let before = cluster.lb().counters();
    let spread = cluster.vip_flows(20);
    let after = cluster.lb().counters();
    let downloaded = reader.join().expect("the reader thread").expect("the download");
    let host = cluster.agents[0].host().counters();
    cluster.gate.store(true, Ordering::Relaxed);
    drop(held);
    eprintln!(
        "s0 downloaded {} MB; worst s0 metric age {worst:.1} ms (limit {} ms); new flows {spread:?}\n\
         s0 host before {host_before:?}\n      after {host:?}\nbalancer {after:?}",
        downloaded >> 20,
        limit.as_millis()
    );
    assert!(downloaded > 10 << 20, "a bulk transfer: {downloaded} bytes");
    assert!(worst < limit.as_secs_f64() * 1e3, "s0 went stale while it sent full-size segments: {worst} ms");
    assert_eq!(after.drained, before.drained, "no placement found s0 stale: {after:?}");
    assert!(spread.get("s0").copied().unwrap_or(0) > 0, "s0, the least loaded, took no new flow: {spread:?}");
    // The full-size segments were passed over, not failed, and the agent's
    // keepalives carried the metric meanwhile.
    assert!(host.too_big > host_before.too_big, "no segment filled the MTU: {host:?}");
    assert_eq!(host.errors, 0, "{host:?}");
    assert!(host.keepalives >= host_before.keepalives + 10, "{host_before:?} {host:?}");
}

/// Frames that carry the load option with s0's source MAC, sent from the
/// client's namespace (a host that is not s0): each claims a load of
/// 0xDEAD and 77 eligible workers.
fn forge(cluster: &Cluster, frames: &[(&str, [u8; 6], u8, Option<u64>)]) {
    let sender = in_ns(&cluster.bed.ns("c"), || RawSender::open("eth0"));
    for &(what, dst_mac, protocol, token) in frames {
        let mut ip = Ipv4::new(VIP, CLIENT, protocol);
        ip.options = load_option(0xDEAD, 77, 1, token);
        let payload =
            if protocol == 6 { tcp(VIP, CLIENT, cluster.port, 40_000, 1, 1, ACK, b"x") } else { vec![0; 8] };
        eprintln!("forging: {what}");
        sender.send(&ethernet(dst_mac, server_mac(0), &ip.datagram(&payload)));
    }
}

/// Metrics forged with s0's MAC are not learned: without a token (the
/// option of releases before tokens), with a wrong token, addressed to
/// another MAC than the balancer's, or carried by another protocol than TCP
/// or UDP; each is counted. The same frame with s0's token is learned,
/// which shows that the token is what the balancer checks.
#[test]
fn ebpf_forged_metrics_are_ignored_and_counted() {
    forged_metrics_on("ebpf_forged_metrics_are_ignored_and_counted", Datapath::Tc);
}

/// The same at XDP.
#[test]
fn ebpf_xdp_forged_metrics_are_ignored_and_counted() {
    forged_metrics_on("ebpf_xdp_forged_metrics_are_ignored_and_counted", Datapath::Xdp);
}

fn forged_metrics_on(test: &str, datapath: Datapath) {
    let Some(cluster) = Cluster::start_on(test, Duration::from_secs(2), Some(datapath)) else {
        return;
    };
    cluster.touch_until(&[0, 1, 2], "fresh metrics", |lb| {
        lb.server_stats().iter().all(|s| s.metric_age_ms < 100.0 && s.feedbacks > 0)
    });
    // s0's own metrics stop, so that any change to its figures is forged.
    cluster.agents[0].host().set_enabled(false);
    thread::sleep(Duration::from_millis(50));
    let before = cluster.lb().server_stats()[0];
    let counters = cluster.lb().counters();
    let token = server_token(0);
    const BROADCAST: [u8; 6] = [0xff; 6];
    forge(
        &cluster,
        &[
            ("the option without a token", BALANCER_MAC, 6, None),
            ("a wrong token", BALANCER_MAC, 6, Some(token ^ 1)),
            ("s0's token, to the broadcast MAC", BROADCAST, 6, Some(token)),
            ("s0's token, over ICMP", BALANCER_MAC, 1, Some(token)),
        ],
    );
    cluster.touch_until(&[], "the forged metrics to be counted", |lb| {
        lb.counters().feedback_rejected >= counters.feedback_rejected + 4
    });
    let after = cluster.lb().server_stats()[0];
    let c = cluster.lb().counters();
    eprintln!("s0 before {before:?}\ns0 after {after:?}\n{c:?}");
    assert_eq!(c.feedback_rejected, counters.feedback_rejected + 4, "{c:?}");
    assert_eq!(after.feedbacks, before.feedbacks, "a forged metric was learned: {after:?}");
    assert_eq!((after.load, after.eligible), (before.load, before.eligible), "{after:?}");
    assert_eq!(c.feedback_unknown, counters.feedback_unknown, "s0's MAC is known: {c:?}");

    forge(&cluster, &[("s0's token, to the balancer, over TCP", BALANCER_MAC, 6, Some(token))]);
    cluster.touch_until(&[], "the metric with s0's token to be learned", |lb| {
        lb.server_stats()[0].feedbacks == before.feedbacks + 1
    });
    let learned = cluster.lb().server_stats()[0];
    assert_eq!((learned.load, learned.eligible), (0xDEAD, 77), "{learned:?}");
    assert_eq!(cluster.lb().counters().feedback_rejected, counters.feedback_rejected + 4);
}
