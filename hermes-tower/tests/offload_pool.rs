//! The blocking pool that offloaded requests run on, with workers pinned to
//! their CPUs (the default where the process was given its cores; set here,
//! as the test runs on the whole machine): its threads are not pinned to
//! their worker's CPU, the work they do for a worker counts in that worker's
//! load, and past the worker's offload bound a request of a heavy route is
//! answered `503` instead of queueing.

use std::{
    collections::HashMap,
    net::SocketAddr,
    time::{Duration, Instant},
};

use axum::{Router, extract::Query, routing::get};
use hermes_runtime::{Builder, ServerHandle, context};
use hermes_test_support::{
    client::{H1, get_h1, h1},
    cpus,
    server::shutdown,
    snapshot::settled,
    wait::eventually_snapshot as eventually,
};

/// The CPUs the calling thread may run on, as the kernel lists them
/// (`0-1`, `1`).
fn allowed_cpus() -> String {
    cpus::allowed_list("/proc/thread-self/status").expect("the thread's Cpus_allowed_list")
}

/// `/heavy?spin=MS`: holds the thread for `spin` ms, then answers the
/// thread's name, the worker it acts for, and the CPUs it may run on.
async fn heavy(Query(q): Query<HashMap<String, u64>>) -> String {
    let spin = Duration::from_millis(q.get("spin").copied().unwrap_or(0));
    let start = Instant::now();
    while start.elapsed() < spin {
        std::hint::spin_loop();
    }
    let worker = context::current().map_or_else(|| "none".to_owned(), |w| w.id().to_string());
    format!("{} {worker} {}", std::thread::current().name().unwrap_or("unnamed"), allowed_cpus())
}

fn app() -> Router {
    Router::new().route("/heavy", get(heavy))
}

/// `workers` workers, pinned, their pools' threads named.
fn start(workers: usize, max_offloaded: Option<u32>) -> ServerHandle {
    let mut builder = Builder::new();
    builder.workers(workers).pin_workers(true).max_offloaded(max_offloaded).on_worker_runtime(
        |id, runtime| {
            runtime.thread_name(format!("pool-of-{id}"));
        },
    );
    hermes_tower::serve("127.0.0.1:0", app()).with_builder(builder).start().expect("start the server")
}

/// Teaches the server that `/heavy` holds its thread; returns where the
/// first request ran (on its worker: an unknown route is not offloaded).
async fn learn_heavy(conn: &mut H1, addr: SocketAddr) -> String {
    let (status, ran_on) = get_h1(conn, addr, "/heavy?spin=20").await.expect("first /heavy");
    assert_eq!(status, 200);
    ran_on
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn offloaded_handlers_may_run_on_every_cpu_while_their_worker_is_pinned() {
    let process = allowed_cpus();
    assert_ne!(
        process.split(['-', ',']).count(),
        1,
        "this test needs a process allowed at least two CPUs (it has {process})"
    );
    let handle = start(2, Some(64));
    let addr = handle.local_addr();
    let mut conn = h1(addr).await;
    let first = learn_heavy(&mut conn, addr).await;
    let mut parts = first.split(' ');
    let (thread, worker, cpus) =
        (parts.next().unwrap_or(""), parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    assert_eq!(thread, format!("hermes-worker-{worker}"), "{first}");
    assert!(!cpus.contains(['-', ',']), "the worker is pinned to one CPU: {first}");
    let (status, offloaded) = get_h1(&mut conn, addr, "/heavy?spin=20").await.expect("offloaded /heavy");
    assert_eq!(status, 200);
    assert_eq!(
        offloaded,
        format!("pool-of-{worker} {worker} {process}"),
        "the pool thread acts for the worker and may run on every CPU of the process"
    );
    shutdown(handle).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_offloaded_requests_work_counts_in_its_workers_load() {
    let handle = start(1, Some(64));
    let addr = handle.local_addr();
    let mut conn = h1(addr).await;
    learn_heavy(&mut conn, addr).await;
    let busy_before = eventually(&handle, "the first request settles", settled).await.workers[0].busy_ns;
    let heavy = tokio::spawn(async move { get_h1(&mut conn, addr, "/heavy?spin=400").await });
    let during =
        eventually(&handle, "the offloaded request in flight", |s| s.workers[0].in_flight == 1).await;
    assert!(
        during.workers[0].expected_us >= 1_000,
        "the offloaded request's learned cost counts on its worker: {:#?}",
        during.workers[0]
    );
    let (status, ran_on) = heavy.await.expect("join").expect("the heavy request");
    assert_eq!(status, 200);
    assert!(ran_on.starts_with("pool-of-0 0"), "{ran_on}");
    let after = eventually(&handle, "counts settle", settled).await;
    let busy = after.workers[0].busy_ns - busy_before;
    assert!(
        busy >= 350_000_000,
        "the 400 ms the pool thread spun for the worker count as its busy time: {busy} ns"
    );
    shutdown(handle).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn past_the_offload_bound_a_heavy_request_is_answered_503() {
    let handle = start(1, Some(1));
    let addr = handle.local_addr();
    let (mut a, mut b) = (h1(addr).await, h1(addr).await);
    learn_heavy(&mut a, addr).await;
    let first = tokio::spawn(async move { get_h1(&mut a, addr, "/heavy?spin=500").await });
    eventually(&handle, "the first heavy request offloaded", |s| {
        s.workers[0].in_flight == 1 && s.workers[0].offloaded == 1
    })
    .await;
    b.ready().await.expect("the second connection is open");
    let response = b.send_request(hermes_test_support::client::get_request(addr, "/heavy?spin=500")).await;
    let response = response.expect("an answer, not a dropped connection");
    assert_eq!(response.status(), 503);
    assert_eq!(response.headers().get(http::header::RETRY_AFTER).map(|v| v.as_bytes()), Some(&b"1"[..]));
    let (status, _) = first.await.expect("join").expect("the first heavy request");
    assert_eq!(status, 200, "the admitted request is served");
    let snapshot = eventually(&handle, "counts settle", settled).await;
    assert_eq!((snapshot.workers[0].offloaded, snapshot.workers[0].shed), (1, 1), "{snapshot:#?}");
    shutdown(handle).await;
}
