//! Two `SIGUSR2` upgrades of the real `hermes-workload` binary in a row,
//! the second while the first server still drains a request (Hermes mode,
//! the real kernel program and maps): the third server must not take slots
//! the first one still holds. A server that did would see the first one's
//! last request finish into its slots (its in-flight and open-connection
//! counts wrap below zero) and the first one's exiting workers mark its own
//! workers stopped, out of the eligible workers for good.

use std::{
    net::SocketAddr,
    process::Command,
    thread,
    time::{Duration, Instant},
};

use hermes_test_support::{
    ebpf,
    http::{get, get_within, stats},
    wait::{poll_every, poll_until},
    workload::{Pids, Workload, alive, parse_listening, signal},
};
use serde_json::Value;

const BIN: &str = env!("CARGO_BIN_EXE_hermes-workload");
/// The request the first server still holds while the second upgrade runs.
const HELD_MS: u64 = 5_000;

/// A snapshot of the server whose pid is not one of `old`.
fn snapshot_of_new(addr: SocketAddr, old: &[u64]) -> Value {
    poll_every(Duration::from_secs(10), Duration::from_millis(20), || {
        stats(addr).filter(|s| s["pid"].as_u64().is_some_and(|p| !old.contains(&p)))
    })
    .unwrap_or_else(|| panic!("no snapshot from a server other than {old:?}"))
}

/// Sends `SIGUSR2` to `pid` and returns its successor's pid, once it serves
/// (`old`: every server of the port so far).
fn upgrade(workload: &Workload, pid: u64, old: &[u64]) -> u64 {
    signal(pid as u32, libc::SIGUSR2);
    let line = workload.next_line(Duration::from_secs(30)).expect("the successor's listening line");
    let (addr, mode, _) = parse_listening(&line).unwrap_or_else(|| panic!("unexpected line {line:?}"));
    assert_eq!((addr, mode.as_str()), (workload.addr, "hermes"), "the successor serves the same port");
    snapshot_of_new(workload.addr, old)["pid"].as_u64().expect("pid")
}

#[test]
fn ebpf_two_upgrades_in_a_row_while_the_first_server_drains() {
    if !ebpf::require_bpf("ebpf_two_upgrades_in_a_row_while_the_first_server_drains") {
        return;
    }
    // One upgrade test at a time (see `upgrade_lock`).
    let _serial = hermes_test_support::workload::upgrade_lock();
    let mut workload = Workload::start(Command::new(BIN).args([
        "--mode",
        "hermes",
        "--require-ebpf",
        "--workers",
        "2",
        // Long enough for the held request: the first server drains it.
        "--drain-timeout-ms",
        "15000",
    ]));
    let addr = workload.addr;
    let first = u64::from(workload.pid());
    let mut pids = Pids(vec![first as u32]);
    let mut seen = vec![first];

    // The request the first server holds through both upgrades.
    let held = thread::spawn(move || {
        get_within(addr, &format!("/block?ms={HELD_MS}"), Duration::from_secs(30))
            .map(|r| (r.status, r.header("x-hermes-pid").and_then(|p| p.parse::<u64>().ok())))
    });
    let held_since = Instant::now();
    poll_every(Duration::from_secs(5), Duration::from_millis(10), || {
        let s = stats(addr)?;
        let in_flight: u64 = s["workers"].as_array()?.iter().filter_map(|w| w["in_flight"].as_u64()).sum();
        (in_flight >= 1).then_some(())
    })
    .expect("the first server holds the request");

    let second = upgrade(&workload, first, &seen);
    pids.0.push(second as u32);
    seen.push(second);
    let third = upgrade(&workload, second, &seen);
    pids.0.push(third as u32);
    seen.push(third);
    assert!(
        alive(first as u32) && held_since.elapsed() < Duration::from_millis(HELD_MS),
        "the first server still drains when the third one serves (else this test shows nothing)"
    );
    let status = workload.wait_exit(Duration::from_secs(30)).expect("the first server exits once drained");
    assert!(status.success(), "the first server exited with {status}");
    poll_until(Duration::from_secs(20), || (!alive(second as u32)).then_some(()))
        .expect("the second server exits");
    let (held_status, held_pid) = held.join().expect("client thread").expect("the held request is answered");
    assert_eq!((held_status, held_pid), (200, Some(first)), "the first server answers what it held");

    // The first server is gone: what it left behind shows now.
    let s = snapshot_of_new(addr, &seen[..2]);
    assert_eq!(s["pid"].as_u64(), Some(third));
    for w in s["workers"].as_array().expect("workers") {
        assert_eq!(w["state"], "serving", "every worker of the third server serves: {w}");
        for gauge in ["in_flight", "open_connections"] {
            let v = w[gauge].as_u64().expect("a gauge");
            assert!(v < 1_000, "{gauge} is sane on every worker of the third server: {w}");
        }
    }
    let eligible = poll_every(Duration::from_secs(5), Duration::from_millis(20), || {
        let s = stats(addr)?;
        s["workers"].as_array()?.iter().any(|w| w["eligible"] == true).then_some(s)
    });
    assert!(eligible.is_some(), "the third server publishes eligible workers");
    let mut answered = 0;
    for _ in 0..50 {
        let r = get(addr, "/").expect("a fresh request is answered");
        assert_eq!(r.status, 200);
        assert_eq!(r.header("x-hermes-pid").and_then(|p| p.parse().ok()), Some(third));
        answered += 1;
    }
    assert_eq!(answered, 50);
    signal(third as u32, libc::SIGTERM);
    poll_until(Duration::from_secs(20), || (!alive(third as u32)).then_some(()))
        .expect("the third server stops on SIGTERM");
}

/// Servers too large for a third one beside them (30 workers, twice, in
/// 64 slots): while the first still drains, the second's upgrade is
/// refused with the first one's pid and what to do, and the second keeps
/// serving.
#[test]
fn ebpf_an_upgrade_with_no_free_slots_names_the_server_that_still_drains() {
    if !ebpf::require_bpf("ebpf_an_upgrade_with_no_free_slots_names_the_server_that_still_drains") {
        return;
    }
    // One upgrade test at a time (see `upgrade_lock`).
    let _serial = hermes_test_support::workload::upgrade_lock();
    let workload = Workload::start(
        Command::new(BIN)
            .args(["--mode", "hermes", "--require-ebpf", "--workers", "30", "--drain-timeout-ms", "15000"])
            .stderr(std::process::Stdio::piped()),
    );
    let addr = workload.addr;
    let first = u64::from(workload.pid());
    let mut pids = Pids(vec![first as u32]);
    let seen = vec![first];
    let held = thread::spawn(move || get_within(addr, "/block?ms=4000", Duration::from_secs(30)));
    poll_every(Duration::from_secs(5), Duration::from_millis(10), || {
        let s = stats(addr)?;
        s["workers"].as_array()?.iter().any(|w| w["in_flight"].as_u64() >= Some(1)).then_some(())
    })
    .expect("the first server holds the request");
    let second = upgrade(&workload, first, &seen);
    pids.0.push(second as u32);

    signal(second as u32, libc::SIGUSR2);
    let want = format!("wait until pid {first} has exited");
    poll_until(Duration::from_secs(30), || workload.stderr().contains(&want).then_some(()))
        .unwrap_or_else(|| panic!("no `{want}` on stderr: {}", workload.stderr()));
    assert!(alive(first as u32), "the first server still drained when the upgrade was refused");
    let r = get(addr, "/").expect("the second server still answers");
    assert_eq!(r.header("x-hermes-pid").and_then(|p| p.parse().ok()), Some(second));
    assert_eq!(held.join().expect("client thread").expect("the held request is answered").status, 200);
    signal(second as u32, libc::SIGTERM);
    poll_until(Duration::from_secs(20), || (!alive(second as u32)).then_some(()))
        .expect("the second server stops on SIGTERM");
}
