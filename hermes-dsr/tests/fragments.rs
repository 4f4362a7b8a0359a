//! IPv4 fragments through the balancer, end to end in network namespaces
//! ([`support::Cluster`]): a fragment that is not the first of its
//! datagram carries no TCP header, and the balancer never reads one from it.

mod support;

use std::{thread, time::Duration};

use hermes_dsr::Datapath;

use support::*;

/// A SYN to the VIP's port whose bytes would be read as a new flow if a
/// fragment's payload were taken for a TCP header.
fn syn_bytes(port: u16, sport: u16, payload: &[u8]) -> Vec<u8> {
    tcp(CLIENT, VIP, sport, port, 7, 0, SYN, payload)
}

/// Frames as every server received them so far, keyed by server.
fn received(captures: &[Capture]) -> Vec<Vec<Vec<u8>>> {
    captures.iter().map(Capture::frames).collect()
}

/// Which servers received an IPv4 frame with IP id `id`, and how many each.
fn with_id(frames: &[Vec<Vec<u8>>], id: u16) -> Vec<usize> {
    frames
        .iter()
        .map(|f| {
            f.iter().filter(|f| f.len() >= 34 && f[12..14] == [8, 0] && f[18..20] == id.to_be_bytes()).count()
        })
        .collect()
}

/// A lone later fragment whose payload reads like a SYN to the VIP is
/// neither placed nor looked up: it is counted as unmatched and left to
/// the balancer's stack. The two fragments of a SYN reach the same server:
/// the first is placed as its TCP segment, the second follows it.
#[test]
fn ebpf_a_non_first_fragment_is_never_parsed_as_tcp() {
    fragments_on("ebpf_a_non_first_fragment_is_never_parsed_as_tcp", Datapath::Tc);
}

/// The same at XDP.
#[test]
fn ebpf_xdp_a_non_first_fragment_is_never_parsed_as_tcp() {
    fragments_on("ebpf_xdp_a_non_first_fragment_is_never_parsed_as_tcp", Datapath::Xdp);
}

fn fragments_on(test: &str, datapath: Datapath) {
    let Some(cluster) = Cluster::start_on(test, Duration::from_secs(2), Some(datapath)) else {
        return;
    };
    cluster.touch_until(&[], "a first metric from every server", |lb| {
        lb.server_stats().iter().all(|s| s.metric_age_ms < 1000.0)
    });
    let captures: Vec<Capture> =
        (0..SERVERS).map(|i| in_ns(&cluster.bed.ns(&format!("s{i}")), Capture::open)).collect();
    let sender = in_ns(&cluster.bed.ns("c"), || RawSender::open("eth0"));
    let before = cluster.lb().counters();
    // A lone fragment at offset 24 whose payload looks like a SYN to the VIP.
    let mut ip = Ipv4::new(CLIENT, VIP, 6);
    ip.id = 0x1111;
    ip.fragment = 3;
    sender.send(&ethernet(BALANCER_MAC, CLIENT_MAC, &ip.datagram(&syn_bytes(cluster.port, 40_001, &[]))));
    cluster.touch_until(&[], "the lone fragment to be counted", |lb| {
        lb.counters().fragments_unmatched > before.fragments_unmatched
    });
    let after = cluster.lb().counters();
    eprintln!("before {before:?}\nafter {after:?}");
    assert_eq!(after.fragments_unmatched, before.fragments_unmatched + 1, "{after:?}");
    assert_eq!(after.new_flows, before.new_flows, "a fragment's payload was placed as a SYN");
    assert_eq!(after.no_flow, before.no_flow, "a fragment's payload was looked up as a flow");
    assert_eq!((after.forwarded, after.fragments), (before.forwarded, before.fragments), "{after:?}");

    // A SYN with 40 bytes of payload in two fragments: the TCP header and 4
    // bytes, then 36 bytes at offset 24.
    let segment = syn_bytes(cluster.port, 40_002, &[0x5a; 40]);
    let mut ip = Ipv4::new(CLIENT, VIP, 6);
    ip.id = 0x2222;
    ip.fragment = MORE_FRAGMENTS;
    sender.send(&ethernet(BALANCER_MAC, CLIENT_MAC, &ip.datagram(&segment[..24])));
    ip.fragment = 3;
    sender.send(&ethernet(BALANCER_MAC, CLIENT_MAC, &ip.datagram(&segment[24..])));
    cluster
        .touch_until(&[], "both fragments to be forwarded", |lb| lb.counters().fragments > before.fragments);
    thread::sleep(Duration::from_millis(50));
    let after = cluster.lb().counters();
    let got = with_id(&received(&captures), 0x2222);
    eprintln!("fragments of one SYN per server: {got:?}\n{after:?}");
    assert_eq!(after.new_flows, before.new_flows + 1, "the first fragment is placed as its SYN: {after:?}");
    assert_eq!(after.fragments, before.fragments + 1, "{after:?}");
    assert_eq!(got.iter().sum::<usize>(), 2, "both fragments arrived: {got:?}");
    assert!(got.contains(&2), "both fragments reached the same server: {got:?}");
}
