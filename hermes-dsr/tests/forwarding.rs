//! Flows through the balancer, end to end in network namespaces
//! ([`support::Cluster`]): a flow keeps its server, replies bypass the
//! balancer and reach the client without the option, packets arrive byte
//! for byte as sent, and the XDP datapath does as the tc one does. Real TCP
//! connections from the client's namespace to the VIP.

mod support;

use std::{net::TcpStream, thread, time::Duration};

use hermes_dsr::{Datapath, layout::OPTION_LEN};
use support::*;

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
    // The option path: copies to the balancer's MAC, IHL 9 with option 0x9E
    // first; a copy of a reply, with its 16 option bytes taken out (and the
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
        // IHL 9: 20 bytes and the 16-byte option (its token, s0's to s2's).
        let end = 20 + OPTION_LEN;
        assert_eq!(
            (copy[0], copy[20], copy[21]),
            (0x49, 0x9E, OPTION_LEN as u8),
            "a copy carries the option: {:02x?}",
            &copy[..end.min(copy.len())]
        );
        let token = u64::from_be_bytes(copy[28..end].try_into().expect("8 bytes"));
        assert!((0..SERVERS).any(|i| server_token(i) == token), "a copy without its host's token");
        let mut plain = copy[..20].to_vec();
        plain[0] = 0x45;
        plain.extend_from_slice(&copy[end..]);
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
