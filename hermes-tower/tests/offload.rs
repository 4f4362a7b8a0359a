//! Handlers that hold their thread run off the worker, over real sockets on
//! a real Hermes server started with the one-line `hermes_tower::serve`:
//! once a route is learned to hold the thread for longer than the offload
//! threshold, its requests run on the worker runtime's blocking pool and the
//! worker goes on answering its other connections; a cancelled or panicking
//! offloaded request leaves the counts exact. With offloading off, the same
//! handler holds its worker, which is what the first test would see without
//! the feature.

use std::{
    collections::HashMap,
    net::SocketAddr,
    time::{Duration, Instant},
};

use axum::{Router, extract::Query, routing::get};
use hermes_runtime::{Builder, ServerHandle, context};
use hermes_test_support::{
    client::{H1, get_h1, get_h2, h1, h2},
    server::shutdown,
    snapshot::{in_flight, settled},
    wait::eventually_snapshot as eventually,
};

/// The worker that runs the caller, or `none` off the workers.
fn worker_id() -> String {
    context::current().map_or_else(|| "none".to_owned(), |w| w.id().to_string())
}

/// `THREAD WORKER`: the thread that runs the caller (`hermes-worker-N` for
/// a worker, `pool-of-N` for worker N's blocking pool) and the worker it
/// acts for.
fn where_am_i() -> String {
    format!("{} {}", std::thread::current().name().unwrap_or("unnamed"), worker_id())
}

/// `/heavy?spin=MS&sleep=MS&panic=1&stats=1`: holds the thread (spins) for `spin`
/// ms, then waits `sleep` ms without holding it (a timer of the worker's
/// runtime), then panics or answers where it ran ([`where_am_i`]) and,
/// with `stats`, whether the server's snapshot is reachable from there.
async fn heavy(Query(q): Query<HashMap<String, u64>>) -> String {
    let spin = Duration::from_millis(q.get("spin").copied().unwrap_or(0));
    let start = Instant::now();
    while start.elapsed() < spin {
        std::hint::spin_loop();
    }
    let mut ran_on = where_am_i();
    if q.contains_key("stats") && hermes_runtime::current_snapshot().is_some() {
        ran_on.push_str(" with-stats");
    }
    if let Some(&ms) = q.get("sleep") {
        // The handler's own timer: a request that waits, not the test.
        tokio::time::sleep(Duration::from_millis(ms)).await;
    }
    assert!(!q.contains_key("panic"), "the handler panics on purpose");
    ran_on
}

fn app() -> Router {
    Router::new().route("/who", get(|| async { worker_id() })).route("/heavy", get(heavy))
}

/// One worker, so that every connection shares it.
fn start(offload: Option<Duration>) -> ServerHandle {
    let mut builder = Builder::new();
    builder.workers(1).offload_heavy(offload).on_worker_runtime(|id, runtime| {
        runtime.thread_name(format!("pool-of-{id}"));
    });
    hermes_tower::serve("127.0.0.1:0", app()).with_builder(builder).start().expect("start the server")
}

/// Teaches the server that `/heavy` holds its thread (20 ms per request):
/// the first request of an unknown route runs on the worker.
async fn learn_heavy(conn: &mut H1, addr: SocketAddr) {
    let (status, ran_on) = get_h1(conn, addr, "/heavy?spin=20").await.expect("first /heavy");
    assert_eq!((status, ran_on.as_str()), (200, "hermes-worker-0 0"), "an unknown route runs on its worker");
}

/// Sends a 400 ms `/heavy` on one connection and, once it is in flight, a
/// light request on another connection of the same worker; returns where
/// each ran and whether the light one was answered while the heavy one ran.
async fn heavy_then_light(handle: &ServerHandle) -> (String, String, bool) {
    let addr = handle.local_addr();
    let (mut a, mut b) = (h1(addr).await, h1(addr).await);
    learn_heavy(&mut a, addr).await;
    let heavy = tokio::spawn(async move { get_h1(&mut a, addr, "/heavy?spin=400&stats=1").await });
    eventually(handle, "the heavy request in flight", |s| in_flight(s) == 1).await;
    let (status, light_on) = get_h1(&mut b, addr, "/who").await.expect("the light request");
    assert_eq!(status, 200);
    let answered_first = !heavy.is_finished();
    let (status, heavy_on) = heavy.await.expect("join").expect("the heavy request");
    assert_eq!(status, 200);
    (heavy_on, light_on, answered_first)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_route_that_holds_its_thread_runs_off_the_worker_which_keeps_serving() {
    let handle = start(Some(Duration::from_millis(1)));
    let (heavy_on, light_on, answered_first) = heavy_then_light(&handle).await;
    assert_eq!(
        heavy_on, "pool-of-0 0 with-stats",
        "the learned-heavy request ran on its worker's blocking pool, acting for that worker"
    );
    assert_eq!(light_on, "0");
    assert!(answered_first, "the worker answered its other connection while the heavy request ran");
    let snapshot = eventually(&handle, "counts settle", settled).await;
    assert_eq!(snapshot.workers[0].offloaded, 1, "{snapshot:#?}");
    assert_eq!(snapshot.placement.offload_threshold_us, Some(1_000));
    assert_eq!(snapshot.placement.lost, 0);
    shutdown(handle).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_offloading_off_a_route_that_holds_its_thread_holds_the_worker() {
    let handle = start(None);
    let (heavy_on, light_on, answered_first) = heavy_then_light(&handle).await;
    assert_eq!((heavy_on.as_str(), light_on.as_str()), ("hermes-worker-0 0 with-stats", "0"));
    assert!(!answered_first, "the light request waited for the heavy one on the shared worker");
    let snapshot = eventually(&handle, "counts settle", settled).await;
    assert_eq!(snapshot.workers[0].offloaded, 0, "{snapshot:#?}");
    assert_eq!(snapshot.placement.offload_threshold_us, None);
    shutdown(handle).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_offloaded_request_that_is_cancelled_or_panics_leaves_the_counts_exact() {
    let handle = start(Some(Duration::from_millis(1)));
    let addr = handle.local_addr();
    let mut conn = h1(addr).await;
    learn_heavy(&mut conn, addr).await;

    // Cancelled: the offloaded handler holds the thread 20 ms, then awaits a
    // 60 s timer; the client goes away meanwhile. The handler (and with it
    // the in-flight count) ends at once, not after a minute.
    let mut cancelled = h1(addr).await;
    let pending =
        tokio::spawn(async move { get_h1(&mut cancelled, addr, "/heavy?spin=20&sleep=60000").await });
    eventually(&handle, "the offloaded request in flight", |s| {
        s.workers[0].in_flight == 1 && s.workers[0].offloaded >= 1
    })
    .await;
    pending.abort();
    let _ = pending.await;
    eventually(&handle, "counts settle after the cancel", settled).await;

    // Panics on the pool thread: the client's connection fails, the counts
    // settle, the worker goes on serving.
    let mut panicking = h1(addr).await;
    let result = get_h1(&mut panicking, addr, "/heavy?spin=20&panic=1").await;
    assert!(result.is_err(), "a panicking handler drops the connection: {result:?}");
    let snapshot = eventually(&handle, "counts settle after the panic", settled).await;
    assert!(snapshot.workers[0].offloaded >= 2, "{snapshot:#?}");
    assert_eq!(snapshot.placement.lost, 0);
    assert_eq!(get_h1(&mut conn, addr, "/who").await.expect("/who"), (200, "0".to_owned()));
    shutdown(handle).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_http2_connections_heavy_streams_run_off_the_worker_beside_its_light_ones() {
    let handle = start(Some(Duration::from_millis(1)));
    let addr = handle.local_addr();
    let sender = h2(addr).await;
    let get = |path: &'static str| get_h2(sender.clone(), addr, path);
    assert_eq!(get("/heavy?spin=20").await, "hermes-worker-0 0", "an unknown route runs on its worker");
    // Two heavy streams at once on the one-worker server: both run off the
    // worker, side by side, and a light stream is answered meanwhile.
    let heavy: Vec<_> = (0..2).map(|_| tokio::spawn(get("/heavy?spin=400"))).collect();
    eventually(&handle, "both heavy streams in flight", |s| in_flight(s) == 2).await;
    assert_eq!(get("/who").await, "0");
    assert!(heavy.iter().all(|h| !h.is_finished()), "the light stream waited for the heavy ones");
    for h in heavy {
        assert_eq!(h.await.expect("join"), "pool-of-0 0");
    }
    let snapshot = eventually(&handle, "counts settle", settled).await;
    assert_eq!(snapshot.workers[0].offloaded, 2, "{snapshot:#?}");
    shutdown(handle).await;
}
