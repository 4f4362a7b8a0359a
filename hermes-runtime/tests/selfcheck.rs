//! The dispatch self-check over real sockets: another program attached to
//! the server's `SO_REUSEPORT` group (a second loaded copy of the dispatch
//! program, as another process would attach its own) takes the placement of
//! new connections away from the server's program. The server notices
//! (connections accepted that its program never saw), reports
//! `kernel-hash` with the reason, attaches its program again, and reports
//! `hermes` once its program places connections again.

use std::{net::SocketAddr, time::Duration};

use hermes_runtime::{Builder, Mode};
use hermes_test_support::{ebpf::dispatcher_or_skip, http::get, server::start, wait::poll_until};
use socket2::{Domain, Socket, Type};

/// A socket in the group listening on `addr` (same user, `SO_REUSEPORT`).
fn member_of_group(addr: SocketAddr) -> Socket {
    let s = Socket::new(Domain::for_address(addr), Type::STREAM, None).expect("socket");
    s.set_reuse_port(true).expect("SO_REUSEPORT");
    s.bind(&addr.into()).expect("join the group");
    s.listen(16).expect("listen");
    s
}

fn requests(addr: SocketAddr, n: usize) {
    for _ in 0..n {
        assert_eq!(get(addr, "/").expect("GET /").status, 200);
    }
}

#[test]
fn ebpf_a_foreign_program_on_the_group_is_detected_reported_and_replaced() {
    let Some(foreign) =
        dispatcher_or_skip("ebpf_a_foreign_program_on_the_group_is_detected_reported_and_replaced")
    else {
        return;
    };
    let h = start(Builder::new().workers(2).bind("127.0.0.1:0".parse().unwrap()).require_ebpf(true));
    let addr = h.local_addr();
    assert_eq!(h.mode(), Mode::Hermes);
    requests(addr, 20);
    // Time for the self-check to raise a false alarm: what is checked is
    // that nothing happens, there is no state to wait for.
    std::thread::sleep(Duration::from_millis(300));
    let s = h.snapshot();
    assert_eq!((s.mode, s.dispatch_lost), (Mode::Hermes, 0), "no false alarm while the program runs: {s:?}");

    // Another program takes the group: attached through a member that then
    // leaves (the program stays with the group). Its bitmap is never
    // published, so it leaves every connection to the kernel's hash.
    let member = member_of_group(addr);
    foreign.attach(&member).expect("attach the foreign program");
    drop(member);
    let foreign_runs = foreign.counters().runs;

    let lost = poll_until(Duration::from_secs(5), || {
        requests(addr, 5);
        let s = h.snapshot();
        (s.mode == Mode::KernelHash && s.dispatch_lost >= 1).then_some(s)
    })
    .unwrap_or_else(|| panic!("the foreign program was never detected: {:?}", h.snapshot()));
    assert!(
        lost.mode_reason.as_deref().is_some_and(|r| r.contains("another program")),
        "{:?}",
        lost.mode_reason
    );
    assert!(foreign.counters().runs > foreign_runs, "the foreign program placed the connections meanwhile");

    // Re-attached: the server's program places connections again.
    let back = poll_until(Duration::from_secs(5), || {
        requests(addr, 5);
        let s = h.snapshot();
        (s.mode == Mode::Hermes).then_some(s)
    })
    .unwrap_or_else(|| panic!("the server never reported hermes again: {:?}", h.snapshot()));
    assert_eq!(back.mode_reason, None);
    let foreign_after = foreign.counters().runs;
    requests(addr, 20);
    assert_eq!(foreign.counters().runs, foreign_after, "the foreign program no longer sees new connections");
    assert_eq!(h.mode(), Mode::Hermes);
    h.shutdown();
}
