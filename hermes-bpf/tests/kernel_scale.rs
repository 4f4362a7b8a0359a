//! The dispatch program at 256 and 1024 workers, on the real kernel: maps
//! sized for the server, a list of eligible workers far beyond 64, the
//! fallbacks and the stale list at that size, both servers of an upgrade
//! at full size in one group, and locality. Every test loads the program
//! (names say `ebpf`); without CAP_BPF they skip loudly, or fail under
//! `HERMES_REQUIRE_BPF=1`.

use std::sync::atomic::Ordering;

use hermes_bpf::{
    Counters, Dispatcher,
    layout::{FinePolicy, MAX_SLOTS, MAX_WORKERS, slots_for},
    monotonic_ns,
};
use hermes_test_support::{ebpf, kernel::*};

/// The program sized for `workers`, or `None` (skipped loudly).
fn load_for(test: &str, workers: usize) -> Option<Dispatcher> {
    ebpf::dispatcher_or_skip(test)?;
    raise_nofile(16_384);
    Some(Dispatcher::load_for(workers).expect("the program loads once it loaded at its default size"))
}

/// 1024 workers, every odd one in the list (512, the highest slot among
/// them): 2048 connections reach only listed workers, spread over nearly
/// all of them by the two choices, and the per-slot counters agree.
#[test]
fn ebpf_1024_workers_place_on_every_listed_worker_only() {
    let Some(mut d) = load_for("ebpf_1024_workers_place_on_every_listed_worker_only", MAX_WORKERS) else {
        return;
    };
    assert_eq!(d.slots(), MAX_SLOTS);
    let (listeners, addr) = reuseport_group(MAX_WORKERS);
    let odd: Vec<usize> = (1..MAX_WORKERS).step_by(2).collect();
    steer(&mut d, &listeners, 1, &odd);
    assert_eq!(d.settings().eligible_count(), 512);

    let _clients = connect(addr, 2048);
    let got = counts(&accept_all(&refs(&listeners), 2048));
    assert_eq!(got.iter().sum::<usize>(), 2048);
    assert!(got.iter().step_by(2).all(|&n| n == 0), "an unlisted (even) worker got a connection");
    let reached = odd.iter().filter(|&&w| got[w] > 0).count();
    let max = odd.iter().map(|&w| got[w]).max().unwrap_or(0);
    assert!(reached >= 480, "{reached} of 512 listed workers reached");
    assert!(max <= 16, "no listed worker over 4x the mean of 4: {max}");
    let c = d.counters();
    assert_eq!(c.dispatched.len(), MAX_SLOTS);
    assert_eq!(c.dispatched[..MAX_WORKERS].iter().map(|&n| n as usize).collect::<Vec<_>>(), got);
    assert_eq!((c.fallbacks(), c.runs), (0, 2048));
}

/// 256 workers: too few candidates, a stale list, a listed worker without
/// a listener each fall back to the kernel's hash and are counted by
/// reason; a fresh list is obeyed again.
#[test]
fn ebpf_256_workers_fall_back_by_reason_and_obey_a_fresh_list() {
    let Some(mut d) = load_for("ebpf_256_workers_fall_back_by_reason_and_obey_a_fresh_list", 256) else {
        return;
    };
    assert_eq!(d.slots(), slots_for(256));
    let (listeners, addr) = reuseport_group(256);
    let all: Vec<usize> = (0..256).collect();
    // Fewer than the minimum of 300 candidates.
    steer(&mut d, &listeners, 300, &all);
    let _a = connect(addr, 200);
    let spread = counts(&accept_all(&refs(&listeners), 200));
    assert_eq!(spread.iter().sum::<usize>(), 200);
    assert!(spread.iter().filter(|&&n| n > 0).count() > 100, "the kernel's hash spreads them");
    assert_eq!(d.counters().fallback_too_few, 200);

    // Published 1 s ago with a 10 ms limit: stale.
    d.settings().configure(1, 10_000_000, FinePolicy::TwoChoices);
    d.settings().publish([7], monotonic_ns() - 1_000_000_000, 0);
    let _b = connect(addr, 100);
    assert_eq!(counts(&accept_all(&refs(&listeners), 100)).iter().sum::<usize>(), 100);
    assert_eq!(d.counters().fallback_stale, 100);

    // Listed, but its listener is gone from the socket array.
    d.settings().configure(1, 60_000_000_000, FinePolicy::TwoChoices);
    d.remove(255).unwrap();
    d.settings().publish([255], monotonic_ns(), 0);
    let _c = connect(addr, 50);
    assert_eq!(counts(&accept_all(&refs(&listeners), 50)).iter().sum::<usize>(), 50);
    assert_eq!(d.counters().fallback_no_socket, 50);

    // Fresh and placeable: obeyed.
    d.settings().publish([200, 254], monotonic_ns(), 0);
    let _e = connect(addr, 100);
    let got = counts(&accept_all(&refs(&listeners), 100));
    assert_eq!(got[200] + got[254], 100, "only the listed workers");
    assert!(got[200].abs_diff(got[254]) <= 1, "two choices on recent placements alternate: {got:?}");
    let c = d.counters();
    assert_eq!(c.dispatched[200] + c.dispatched[254], 100);
    assert_eq!(c.fallbacks(), 350);
}

/// An upgrade at full size in the kernel: a server of 1024 workers in
/// slots 0..1024 of maps sized for it, its successor of 1024 more in
/// 1024..2048 of the same maps and group. Once the successor takes the
/// list over, every new connection reaches the successor's listeners.
#[test]
fn ebpf_1024_workers_and_a_successor_of_1024_share_the_maps() {
    let Some(mut old) = load_for("ebpf_1024_workers_and_a_successor_of_1024_share_the_maps", MAX_WORKERS)
    else {
        return;
    };
    let (listeners, addr) = reuseport_group(2 * MAX_WORKERS);
    let (first, second) = listeners.split_at(MAX_WORKERS);
    steer(&mut old, first, 1, &(0..MAX_WORKERS).collect::<Vec<_>>());
    let mut new = Dispatcher::inherit(old.export_fds().unwrap(), MAX_WORKERS).expect("inherit at full size");
    assert_eq!((new.slots(), new.table().len()), (MAX_SLOTS, MAX_WORKERS));
    for (i, l) in second.iter().enumerate() {
        new.insert(i, l).unwrap();
    }
    assert!(new.insert(MAX_WORKERS, &second[0]).is_err(), "beyond the maps");
    new.settings().take_over(2, monotonic_ns(), MAX_WORKERS, |w| {
        for slot in MAX_WORKERS..MAX_SLOTS {
            w.push(slot);
        }
    });
    let _clients = connect(addr, 1024);
    let got = counts(&accept_all(&refs(&listeners), 1024));
    assert_eq!(got[..MAX_WORKERS].iter().sum::<usize>(), 0, "the old server gets no new connection");
    assert_eq!(got[MAX_WORKERS..].iter().sum::<usize>(), 1024);
    assert_eq!(new.counters().dispatched[MAX_WORKERS..].iter().sum::<u64>(), 1024);
}

/// Locality at 256 workers: the worker of the CPU that received the
/// connection is the first candidate. With the hash fine filter it takes
/// every connection of that CPU; with two choices it still loses to a less
/// loaded one; off, the list's hash spreads them.
#[test]
fn ebpf_locality_prefers_the_worker_of_the_receiving_cpu() {
    let Some(mut d) = load_for("ebpf_locality_prefers_the_worker_of_the_receiving_cpu", 256) else {
        return;
    };
    let cpus = allowed_cpus();
    let (listeners, addr) = reuseport_group(256);
    steer(&mut d, &listeners, 1, &[]);
    let local_of = |cpu: usize| 10 + cpu % 200;
    let publish = |d: &Dispatcher| {
        d.settings().publish_as(None, monotonic_ns(), 0, |w| {
            for slot in 0..256 {
                w.push(slot);
            }
            for &cpu in &cpus {
                w.set_local(cpu, local_of(cpu));
            }
        });
    };
    d.settings().configure(1, 0, FinePolicy::Hash);
    d.settings().set_locality(true);
    publish(&d);
    let mut placed = 0;
    for &cpu in cpus.iter().take(4) {
        assert!(pin_thread(cpu), "pin to CPU {cpu}");
        let _clients = connect(addr, 30);
        let got = counts(&accept_all(&refs(&listeners), 30));
        assert_eq!(got[local_of(cpu)], 30, "connections made on CPU {cpu} go to its worker: {got:?}");
        placed += 30;
    }
    assert_eq!(d.counters().local, placed);

    // Two choices: a local worker far more loaded loses to the other draw.
    d.settings().configure(1, 0, FinePolicy::TwoChoices);
    let cpu = cpus[0];
    assert!(pin_thread(cpu));
    d.table()[local_of(cpu)].open_conns.store(1000, Ordering::Relaxed);
    let _more = connect(addr, 30);
    let got = counts(&accept_all(&refs(&listeners), 30));
    assert_eq!(got[local_of(cpu)], 0, "the loaded local worker is passed over: {got:?}");
    d.table()[local_of(cpu)].open_conns.store(0, Ordering::Relaxed);

    // Off: the hash over the list, not the local worker.
    d.settings().configure(1, 0, FinePolicy::Hash);
    d.settings().set_locality(false);
    for slot in 0..256 {
        Counters::clear_recent(d.counter_region(), slot);
    }
    let _off = connect(addr, 60);
    let got = counts(&accept_all(&refs(&listeners), 60));
    assert!(got[local_of(cpu)] < 60 && got.iter().filter(|&&n| n > 0).count() > 20, "spread: {got:?}");
    assert_eq!(d.counters().local, placed, "nothing more counted as local");
}

/// Loads the program sized for 1024 workers with CAP_BPF alone (no
/// CAP_PERFMON, no CAP_SYS_ADMIN: the verifier then checks every map access
/// as for a restricted loader) in a child process, and places connections.
#[test]
fn ebpf_1024_workers_load_and_place_with_cap_bpf_alone() {
    if ebpf::dispatcher_or_skip("ebpf_1024_workers_load_and_place_with_cap_bpf_alone").is_none() {
        return;
    }
    hermes_test_support::child::run_child("cap_bpf_only_child", "cap_bpf_only_child: placed");
}

#[test]
#[ignore = "run by ebpf_1024_workers_load_and_place_with_cap_bpf_alone in a child process"]
fn cap_bpf_only_child() {
    if !hermes_test_support::child::child_with_cap_bpf_only("cap_bpf_only_child") {
        return;
    }
    let mut d = Dispatcher::load_for(MAX_WORKERS).expect("loads with CAP_BPF alone");
    let (listeners, addr) = reuseport_group(4);
    steer(&mut d, &listeners, 1, &[1, 3]);
    d.settings().set_locality(true);
    d.settings().publish_as(None, monotonic_ns(), 0, |w| {
        w.push(1);
        w.push(3);
        w.set_local(0, 3);
    });
    let _clients = connect(addr, 50);
    let got = counts(&accept_all(&refs(&listeners), 50));
    assert_eq!(got[0] + got[2], 0, "{got:?}");
    assert_eq!(d.counters().dispatched[1] + d.counters().dispatched[3], 50);
    println!("cap_bpf_only_child: placed {got:?}");
}
