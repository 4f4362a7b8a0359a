//! HAProxy's `agent-check` port on a real Hermes server, read as HAProxy
//! reads it (connect, read one line): its weight falls while requests spin
//! the CPU, it answers `drain` while every worker hangs in a handler, and
//! `up` (with `ready`, which cancels the drain) once they are back. One
//! worker, so that one handler hangs them all, and so that the process's
//! CPU share shows on a machine other builds keep busy.

use std::{
    collections::HashMap,
    io::Read,
    net::{SocketAddr, TcpStream},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    thread,
    time::Duration,
};

use axum::{Router, extract::Query, routing::get};
use hermes_runtime::Builder;
use hermes_test_support::{
    ebpf::require_bpf,
    http,
    wait::{TIMEOUT, poll_every},
};
use hermes_tower::orca::HaproxyAgent;

/// The CPU time the calling thread has used.
fn thread_cpu() -> Duration {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: `ts` is a valid, writable timespec for the call's duration.
    assert_eq!(unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) }, 0);
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

/// One agent answer.
fn agent_line(addr: SocketAddr) -> String {
    let mut conn = TcpStream::connect_timeout(&addr, Duration::from_secs(2)).expect("connect to the agent");
    conn.set_read_timeout(Some(Duration::from_secs(2))).expect("timeout");
    let mut line = String::new();
    conn.read_to_string(&mut line).expect("read the answer");
    line
}

/// The weight of an `up ... N%` answer.
fn weight(line: &str) -> Option<u32> {
    line.split_whitespace().find_map(|w| w.strip_suffix('%')?.parse().ok())
}

/// Polls the agent until `cond` holds on its answer; the answer.
fn agent_until(addr: SocketAddr, timeout: Duration, what: &str, cond: impl Fn(&str) -> bool) -> String {
    let mut last = String::new();
    poll_every(timeout, Duration::from_millis(20), || {
        last = agent_line(addr);
        cond(&last).then(|| last.clone())
    })
    .unwrap_or_else(|| panic!("the agent never answered {what}; last answer {last:?}"))
}

/// The `ms` of `?ms=N`.
fn ms(q: &HashMap<String, u64>) -> Duration {
    Duration::from_millis(q.get("ms").copied().unwrap_or(0))
}

fn app() -> Router {
    Router::new()
        .route(
            "/spin",
            get(|Query(q): Query<HashMap<String, u64>>| async move {
                // The thread's CPU time, not the wall clock: a spinner
                // preempted by other builds still costs what it asks.
                let end = thread_cpu() + ms(&q);
                while thread_cpu() < end {
                    std::hint::spin_loop();
                }
                "spun"
            }),
        )
        .route(
            "/block",
            get(|Query(q): Query<HashMap<String, u64>>| async move {
                std::thread::sleep(ms(&q));
                "unblocked"
            }),
        )
}

#[test]
fn the_agents_answers_follow_the_load_and_drain_while_every_worker_hangs_ebpf() {
    if !require_bpf("the_agents_answers_follow_the_load_and_drain_while_every_worker_hangs_ebpf") {
        return;
    }
    let agent = HaproxyAgent::bind("127.0.0.1:0").expect("bind the agent");
    let agent_addr = agent.local_addr().expect("agent address");
    let mut builder = Builder::new();
    builder.workers(1).require_ebpf(true);
    let handle = hermes_tower::serve("127.0.0.1:0", app())
        .with_builder(builder)
        .with_haproxy_agent(agent)
        .start()
        .expect("start");
    let addr = handle.local_addr();

    // Idle, just started: up, ready (a previous process may have drained
    // the server), a high weight.
    let idle = agent_until(agent_addr, TIMEOUT, "up and ready", |l| l.starts_with("up ready "));
    let idle_weight = weight(&idle).expect("a weight");

    // Requests spinning the CPU (on the worker, then, learned as heavy, on
    // its blocking pool): the weight falls well below the idle one.
    let stop = Arc::new(AtomicBool::new(false));
    let spinners: Vec<_> = (0..6)
        .map(|_| {
            let stop = stop.clone();
            thread::spawn(move || {
                // Relaxed: the flag carries no data.
                while !stop.load(Ordering::Relaxed) {
                    let _ = http::get(addr, "/spin?ms=20");
                }
            })
        })
        .collect();
    let busy = agent_until(agent_addr, Duration::from_secs(15), "a weight below half the idle one", |l| {
        weight(l).is_some_and(|w| w * 2 < idle_weight)
    });
    stop.store(true, Ordering::Relaxed);
    for s in spinners {
        s.join().expect("spinner");
    }
    eprintln!("agent: idle {idle:?}, spinning {busy:?}");

    // The worker hangs in a handler: drain.
    let blocker = thread::spawn(move || http::get(addr, "/block?ms=3000"));
    agent_until(agent_addr, Duration::from_secs(3), "drain", |l| l == "drain\n");
    // Back: up, and ready to cancel the drain.
    let back = agent_until(agent_addr, Duration::from_secs(10), "up after the drain", |l| {
        l.starts_with("up ready ")
    });
    assert_eq!(blocker.join().expect("blocker").expect("GET /block").status, 200);
    eprintln!("agent: back {back:?}");
    handle.shutdown();
    // The agent stops with the server.
    poll_every(TIMEOUT, Duration::from_millis(20), || TcpStream::connect(agent_addr).is_err().then_some(()))
        .expect("the agent's port closes once the server stopped");
}
