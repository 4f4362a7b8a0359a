//! How the balancer places new flows, end to end in network namespaces
//! ([`support::Cluster`]): away from a server holding requests in flight,
//! off a server whose metric went stale, by Maglev (counted) when every
//! metric is stale, and by Maglev alone under the hash policy. Real TCP
//! connections from the client's namespace to the VIP.

mod support;

use std::{sync::atomic::Ordering, thread, time::Duration};

use hermes_dsr::Policy;
use support::*;

#[test]
fn new_flows_avoid_the_loaded_server() {
    let Some(cluster) = Cluster::start("new_flows_avoid_the_loaded_server", Duration::from_secs(2)) else {
        return;
    };
    // 32 requests held in flight on s0 (straight to its own address).
    let held = cluster.hold(&[0], 32);
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
