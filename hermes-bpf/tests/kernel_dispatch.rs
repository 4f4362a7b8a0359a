//! The dispatch program on the real kernel: real SO_REUSEPORT groups on
//! loopback, real connections, the real maps. Every test here loads the
//! program (names say `ebpf`); without CAP_BPF they skip loudly, or fail
//! under `HERMES_REQUIRE_BPF=1`.

use std::sync::atomic::Ordering;

use hermes_bpf::{Dispatcher, Error, layout::FinePolicy, monotonic_ns};
use hermes_test_support::{child, ebpf::dispatcher_or_skip, kernel::*};

#[test]
fn ebpf_single_candidate_takes_every_connection() {
    let Some(mut d) = dispatcher_or_skip("ebpf_single_candidate_takes_every_connection") else {
        return;
    };
    let (listeners, addr) = reuseport_group(4);
    steer(&mut d, &listeners, 1, &[2]);

    let _clients = connect(addr, 200);
    let accepted = accept_all(&refs(&listeners), 200);

    assert_eq!(counts(&accepted), [0, 0, 200, 0]);
    let c = d.counters();
    assert_eq!(&c.dispatched[..4], &[0, 0, 200, 0], "kernel counters agree with accepts");
    assert_eq!(c.fallbacks(), 0);
    assert_eq!(c.runs, 200);
}

#[test]
fn ebpf_excluded_worker_gets_nothing_and_detach_restores_hash() {
    let Some(mut d) = dispatcher_or_skip("ebpf_excluded_worker_gets_nothing_and_detach_restores_hash") else {
        return;
    };
    let (listeners, addr) = reuseport_group(4);
    steer(&mut d, &listeners, 1, &[0, 1, 3]);

    let _clients = connect(addr, 200);
    let accepted = accept_all(&refs(&listeners), 200);
    let got = counts(&accepted);
    assert_eq!(got.iter().sum::<usize>(), 200);
    assert_eq!(got[2], 0, "worker 2 is not a candidate: {got:?}");
    for w in [0, 1, 3] {
        assert!(got[w] > 0, "candidate {w} received none: {got:?}");
    }
    let c = d.counters();
    assert_eq!(c.dispatched[..4].iter().map(|&n| n as usize).collect::<Vec<_>>(), got);

    // Detached, the program no longer runs and the hash reaches worker 2 again.
    Dispatcher::detach(&listeners[1]).unwrap();
    let _more = connect(addr, 200);
    let after = counts(&accept_all(&refs(&listeners), 200));
    assert_eq!(after.iter().sum::<usize>(), 200);
    assert!(after[2] > 0, "after detach the kernel hash should reach worker 2: {after:?}");
    assert_eq!(d.counters().runs, 200, "the program did not run after detach");
}

#[test]
fn ebpf_too_few_candidates_fall_back_to_kernel_hash() {
    let Some(mut d) = dispatcher_or_skip("ebpf_too_few_candidates_fall_back_to_kernel_hash") else {
        return;
    };
    let (listeners, addr) = reuseport_group(4);
    steer(&mut d, &listeners, 2, &[1]);

    let _clients = connect(addr, 200);
    let got = counts(&accept_all(&refs(&listeners), 200));
    assert_eq!(got.iter().sum::<usize>(), 200);
    assert!(got.iter().filter(|&&n| n > 0).count() >= 3, "kernel-hash spread expected: {got:?}");
    let c = d.counters();
    assert_eq!(c.fallback_too_few, 200);
    assert_eq!(c.dispatched.iter().sum::<u64>(), 0);
}

#[test]
fn ebpf_stale_or_unpublished_list_falls_back_to_kernel_hash() {
    let Some(mut d) = dispatcher_or_skip("ebpf_stale_or_unpublished_list_falls_back_to_kernel_hash") else {
        return;
    };
    let (listeners, addr) = reuseport_group(4);
    for (i, l) in listeners.iter().enumerate() {
        d.insert(i, l).unwrap();
    }
    d.attach(&listeners[0]).unwrap();

    // Never published: the program must not trust the zeroed list.
    let _first = connect(addr, 100);
    let got = counts(&accept_all(&refs(&listeners), 100));
    assert_eq!(got.iter().sum::<usize>(), 100);
    assert_eq!(d.counters().fallback_stale, 100);

    // Published 1 s ago with a 10 ms limit: stale.
    let limit_ns = 10_000_000;
    d.settings().configure(1, limit_ns, FinePolicy::TwoChoices);
    d.settings().publish([3], monotonic_ns() - 1_000_000_000, 0);
    let _second = connect(addr, 200);
    let got = counts(&accept_all(&refs(&listeners), 200));
    assert_eq!(got.iter().sum::<usize>(), 200);
    assert!(got.iter().filter(|&&n| n > 0).count() >= 3, "kernel-hash spread expected: {got:?}");
    let c = d.counters();
    assert_eq!(c.fallback_stale, 300);
    assert_eq!(c.dispatched.iter().sum::<u64>(), 0);

    // Fresh again, under a limit the test cannot outlive: the list is obeyed.
    d.settings().configure(1, 60_000_000_000, FinePolicy::TwoChoices);
    d.settings().publish([3], monotonic_ns(), 0);
    let _third = connect(addr, 50);
    assert_eq!(counts(&accept_all(&refs(&listeners), 50)), [0, 0, 0, 50]);
}

/// Default policy, list {0,1}, worker 0's slot shows far more load: the
/// two draws are always distinct when there are two candidates, so the
/// expected share for worker 1 is 100%.
#[test]
fn ebpf_two_choices_avoids_the_loaded_worker() {
    let Some(mut d) = dispatcher_or_skip("ebpf_two_choices_avoids_the_loaded_worker") else {
        return;
    };
    let (listeners, addr) = reuseport_group(4);
    steer(&mut d, &listeners, 1, &[0, 1]);
    d.table()[0].open_conns.store(1000, Ordering::Relaxed);
    d.table()[0].in_flight.store(50, Ordering::Relaxed);

    let _clients = connect(addr, 200);
    assert_eq!(counts(&accept_all(&refs(&listeners), 200)), [0, 200, 0, 0]);

    // Switched at run time to hash among candidates: load is ignored, both get some.
    d.settings().configure(1, 0, FinePolicy::Hash);
    let _more = connect(addr, 200);
    let got = counts(&accept_all(&refs(&listeners), 200));
    assert!(got[0] > 0 && got[1] > 0 && got[2] == 0 && got[3] == 0, "hash policy: {got:?}");
}

/// A burst of new connections that nobody accepts yet: the table shows no
/// load at all, so only the program's own count of recent placements tells
/// the two candidates apart. Two choices on that count alternates, so the
/// split is even to within one connection (a hash alone splits unevenly).
#[test]
fn ebpf_burst_is_spread_by_recent_placements() {
    let Some(mut d) = dispatcher_or_skip("ebpf_burst_is_spread_by_recent_placements") else {
        return;
    };
    let (listeners, addr) = reuseport_group(4);
    steer(&mut d, &listeners, 1, &[0, 1]);

    let _clients = connect(addr, 201);
    let got = counts(&accept_all(&refs(&listeners), 201));
    assert_eq!(got.iter().sum::<usize>(), 201);
    assert!(got[0].abs_diff(got[1]) <= 1 && got[2] == 0 && got[3] == 0, "even split expected: {got:?}");
    let c = d.counters();
    assert_eq!(&c.recent[..2], &[got[0] as u64, got[1] as u64], "recent counts every placement");

    // A queue sample resets the count: the worker that was sampled (and has
    // a zero count now) takes the next connection.
    let heavier = usize::from(c.recent[1] > c.recent[0]);
    hermes_bpf::Counters::clear_recent(d.counter_region(), heavier);
    let _one = connect(addr, 1);
    let next = counts(&accept_all(&refs(&listeners), 1));
    assert_eq!(next[heavier], 1, "the cleared worker is the less loaded one: {next:?}");
}

#[test]
fn ebpf_empty_slot_falls_back_and_is_counted() {
    let Some(mut d) = dispatcher_or_skip("ebpf_empty_slot_falls_back_and_is_counted") else {
        return;
    };
    let (listeners, addr) = reuseport_group(4);
    steer(&mut d, &listeners, 1, &[2]);
    d.remove(2).unwrap();
    d.remove(2).unwrap(); // idempotent

    let _clients = connect(addr, 100);
    assert_eq!(counts(&accept_all(&refs(&listeners), 100)).iter().sum::<usize>(), 100);
    let c = d.counters();
    assert_eq!(c.fallback_no_socket, 100);
    assert_eq!(c.dispatched.iter().sum::<u64>(), 0);
    assert!(matches!(d.insert(64, &listeners[0]), Err(Error::WorkerOutOfRange { worker: 64, .. })));
}

/// 20 connections wait, not accepted, in worker 1's queue; worker 1 leaves
/// the list and closes. Every one is accepted elsewhere and works.
#[test]
fn ebpf_closing_listener_migrates_its_queue_without_reset() {
    let Some(mut d) = dispatcher_or_skip("ebpf_closing_listener_migrates_its_queue_without_reset") else {
        return;
    };
    let (mut listeners, addr) = reuseport_group(4);
    steer(&mut d, &listeners, 1, &[1]);

    let mut clients = connect(addr, 20);
    assert_eq!(d.counters().dispatched[1], 20);

    d.settings().publish([0, 2, 3], monotonic_ns(), 0);
    drop(listeners.remove(1)); // closes worker 1's listener with its queue full
    let survivors = refs(&listeners); // workers 0, 2, 3
    let mut accepted: Vec<_> = accept_all(&survivors, 20).into_iter().flatten().collect();
    assert_eq!(accepted.len(), 20, "every queued connection reached another worker");
    assert_eq!(d.counters().migrated, 20);

    // Pair server and client sides by address, and prove neither was reset.
    for server in &mut accepted {
        let peer = server.peer_addr().unwrap();
        let client = clients.iter_mut().find(|c| c.local_addr().unwrap() == peer).unwrap();
        round_trip(server, client).expect("migrated connection works end to end");
    }
}

/// Re-runs this test binary as a child whose capabilities are dropped; the
/// child test below does the checks.
#[test]
fn ebpf_without_cap_bpf_fails_typed_and_hash_still_serves() {
    // Only meaningful where the program loads at all (root or CAP_BPF).
    if dispatcher_or_skip("ebpf_without_cap_bpf_fails_typed_and_hash_still_serves").is_none() {
        return;
    }
    child::run_child("no_cap_child", "no_cap_child: checked");
}

#[test]
#[ignore = "run by ebpf_without_cap_bpf_fails_typed_and_hash_still_serves in a child process"]
fn no_cap_child() {
    // Capabilities are per thread: they are dropped on this one, which does the loading.
    if !child::child_without_caps("no_cap_child") {
        return;
    }
    let err = Dispatcher::load().expect_err("loading must fail without CAP_BPF");
    assert!(matches!(err, Error::MissingCapability { .. }), "typed error expected, got {err:?}");
    let msg = err.to_string();
    assert!(msg.contains("CAP_BPF") && msg.contains("SO_REUSEPORT"), "message says what to do: {msg}");

    // The same kind of listeners still serve, by kernel hash.
    let (listeners, addr) = reuseport_group(4);
    let _clients = connect(addr, 100);
    let got = counts(&accept_all(&refs(&listeners), 100));
    assert_eq!(got.iter().sum::<usize>(), 100);
    assert!(got.iter().filter(|&&n| n > 0).count() >= 2, "kernel-hash spread expected: {got:?}");
    println!("no_cap_child: checked ({err})");
}

/// A queue sample takes back only the placements it saw: 10 connections
/// placed before the read, 5 after; consuming the read leaves the 5 counted
/// (zeroing would leave none, and the fine filter would under-count them).
#[test]
fn ebpf_queue_sample_consumes_only_the_placements_it_saw() {
    let Some(mut d) = dispatcher_or_skip("ebpf_queue_sample_consumes_only_the_placements_it_saw") else {
        return;
    };
    let (listeners, addr) = reuseport_group(2);
    steer(&mut d, &listeners, 1, &[1]);

    let _before = connect(addr, 10);
    let seen = hermes_bpf::Counters::recent(d.counter_region(), 1);
    assert_eq!(seen, 10);
    let _after = connect(addr, 5); // placed between the read and the sample's store
    hermes_bpf::Counters::consume_recent(d.counter_region(), 1, seen);
    assert_eq!(d.counters().recent[1], 5, "the placements made after the read stay counted");
    hermes_bpf::Counters::consume_recent(d.counter_region(), 1, 99);
    assert_eq!(d.counters().recent[1], 0, "never below zero");
    assert_eq!(counts(&accept_all(&refs(&listeners), 15)), [0, 15]);
}

/// The program's kernel tag: the same for the same program loaded twice
/// (other maps), another for another program of the same maps, and what a
/// successor reads from the descriptors it was handed.
#[test]
fn ebpf_program_tags_tell_programs_apart() {
    let Some(a) = dispatcher_or_skip("ebpf_program_tags_tell_programs_apart") else {
        return;
    };
    let b = Dispatcher::load_for(300).expect("a second load, with larger maps");
    let floor = Dispatcher::load_program_for(hermes_bpf::layout::FLOOR_PROGRAM_NAME, 2).expect("the floor");
    let tag = a.program_tag().expect("a tag");
    assert_ne!(tag, 0);
    assert_eq!(b.program_tag().expect("a tag"), tag, "the same program, other maps");
    assert_ne!(floor.program_tag().expect("a tag"), tag, "another program");
    let handed = a.export_fds().expect("the descriptors");
    assert_eq!(handed.program_tag().expect("a tag"), tag);
}
