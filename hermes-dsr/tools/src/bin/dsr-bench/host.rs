//! `dsr-bench --host`: one server of the servers-bound scenario, as a
//! process of its own (so that a cgroup can limit its CPU), started by
//! `ip netns exec` in its namespace. A Hermes server of one worker on
//! `0.0.0.0:PORT` with `/_hermes/stats` and `/work?us=N`, which spins N µs
//! of the thread's CPU time (a throttled server then takes longer to
//! answer, as real CPU work would: a spin on the wall clock would finish on
//! time while throttled), and the host's in-band feedback (`Agent`,
//! 2 ms interval), off until told. Prints `ready`, then reads commands on
//! stdin: `in-band on`, `in-band off`; at the end of stdin it stops (the
//! feedback program detached, the server drained).

use std::{collections::HashMap, io::BufRead, net::SocketAddr, time::Duration};

use axum::{Router, extract::Query, routing::get};
use hermes_dsr::{Agent, HostSettings};
use hermes_dsr_tools::testbed::{BALANCER, BALANCER_MAC, VIP, server_token};
use hermes_runtime::Builder;

/// The CPU time the calling thread has used.
fn thread_cpu() -> Duration {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: `ts` is a valid, writable timespec for the call's duration.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    assert_eq!(rc, 0, "CLOCK_THREAD_CPUTIME_ID");
    Duration::new(u64::try_from(ts.tv_sec).unwrap_or(0), u32::try_from(ts.tv_nsec).unwrap_or(0))
}

fn app() -> Router {
    Router::new().route(
        "/work",
        get(|Query(q): Query<HashMap<String, u64>>| async move {
            let end = thread_cpu() + Duration::from_micros(q.get("us").copied().unwrap_or(100));
            while thread_cpu() < end {
                std::hint::spin_loop();
            }
            "done"
        }),
    )
}

/// Serves until stdin ends.
pub(crate) fn main(port: u16, index: usize) {
    let mut builder = Builder::new();
    builder.workers(1).pin_workers(false);
    let handle = hermes_tower::serve(SocketAddr::from(([0, 0, 0, 0], port)), app())
        .with_builder(builder)
        .with_stats()
        .start()
        .expect("start a Hermes server");
    let source = handle.snapshot_source();
    let mut settings = HostSettings::new(BALANCER_MAC, BALANCER, VIP, server_token(index));
    settings.interval = Duration::from_millis(2);
    let agent = Agent::start("eth0", settings, move || source.snapshot().unwrap_or_default())
        .expect("host feedback program");
    agent.host().set_enabled(false);
    println!("ready");
    for line in std::io::stdin().lock().lines().map_while(Result::ok) {
        match line.trim() {
            "in-band on" => agent.host().set_enabled(true),
            "in-band off" => agent.host().set_enabled(false),
            other => eprintln!("dsr-bench --host: unknown command {other:?}"),
        }
    }
    drop(agent);
    handle.shutdown();
}
