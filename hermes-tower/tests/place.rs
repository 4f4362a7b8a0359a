//! Request placement over real sockets on a real Hermes server started with
//! the one-line `hermes_tower::serve`: a worker that comes back from
//! blocking hands its next costly requests to another worker, one HTTP/2
//! connection's streams spread over the workers, and the in-flight counts
//! stay exact when a moved request is cancelled or panics.
//!
//! Each handler answers with the id of the worker that ran it, so a test
//! sees where a request ran; `/who` is light and never moves from an idle
//! owner, so it tells which worker owns a connection.

use std::{
    collections::{BTreeSet, HashMap},
    net::SocketAddr,
    time::{Duration, Instant},
};

use axum::{Router, extract::Query, routing::get};
use bytes::Bytes;
use hermes_runtime::{Builder, ServerHandle, context};
use hermes_test_support::{
    client::{H1, get_h1, get_h2, get_request, h1, h2},
    server::shutdown,
    snapshot::{in_flight, settled},
    wait::{self, eventually_snapshot as eventually},
};
use http_body_util::BodyExt;
use hyper_util::rt::TokioIo;

fn worker_id() -> String {
    context::current().map_or_else(|| "none".to_owned(), |w| w.id().to_string())
}

/// `/heavy?spin=MS&sleep=MS&panic=1`: holds the thread (spins) for `spin`
/// ms, then waits `sleep` ms without holding it, then panics or answers.
async fn heavy(Query(q): Query<HashMap<String, u64>>) -> String {
    let spin = Duration::from_millis(q.get("spin").copied().unwrap_or(0));
    let start = Instant::now();
    while start.elapsed() < spin {
        std::hint::spin_loop();
    }
    let ran_on = worker_id();
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

/// A server whose costly requests move between workers: offloading to the
/// blocking pool (tested in `offload.rs`) is off, or it would take them.
fn start() -> ServerHandle {
    let mut builder = Builder::new();
    builder.workers(2).offload_heavy(None);
    hermes_tower::serve("127.0.0.1:0", app()).with_builder(builder).start().expect("start the server")
}

/// Opens keep-alive connections until `n` of them belong to one worker;
/// returns that worker and the connections.
async fn connections_on_one_worker(addr: SocketAddr, n: usize) -> (String, Vec<H1>) {
    let mut by_owner: HashMap<String, Vec<H1>> = HashMap::new();
    for _ in 0..64 {
        let mut conn = h1(addr).await;
        let (_, owner) = get_h1(&mut conn, addr, "/who").await.expect("/who");
        let conns = by_owner.entry(owner.clone()).or_default();
        conns.push(conn);
        if conns.len() == n {
            let conns = by_owner.remove(&owner).expect("present");
            return (owner, conns);
        }
    }
    panic!("64 connections and no worker with {n} of them");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_blocked_workers_next_costly_request_runs_on_another_worker() {
    let handle = start();
    let addr = handle.local_addr();
    let (owner, mut conns) = connections_on_one_worker(addr, 3).await;
    let (mut light, mut next, mut blocker) =
        (conns.pop().expect("3"), conns.pop().expect("3"), conns.pop().expect("3"));

    // The owner runs a costly request of a class it does not know yet, so
    // it runs where it is and holds the owner's thread for 300 ms; meanwhile
    // the next costly request arrives on another connection of the owner.
    let blocking = tokio::spawn(async move { get_h1(&mut blocker, addr, "/heavy?spin=300").await });
    eventually(&handle, "the blocking request in flight", |s| in_flight(s) == 1).await;
    let moved = tokio::spawn(async move { get_h1(&mut next, addr, "/heavy?spin=300").await });

    let (status, ran_on) = blocking.await.expect("join").expect("the blocking request");
    assert_eq!((status, ran_on.as_str()), (200, owner.as_str()), "an unknown class runs locally");
    // The owner is free again while the moved request runs elsewhere: a
    // light request on its third connection is answered first.
    let (status, light_on) = get_h1(&mut light, addr, "/who").await.expect("the light request");
    assert_eq!((status, light_on.as_str()), (200, owner.as_str()));
    assert!(!moved.is_finished(), "the light request waited for the moved costly one");

    let (status, moved_on) = moved.await.expect("join").expect("the moved request");
    assert_eq!(status, 200);
    assert_ne!(moved_on, owner, "the costly request queued behind the block ran on the other worker");
    let snapshot = eventually(&handle, "counts settle", settled).await;
    let owner_id: usize = owner.parse().expect("worker id");
    assert!(snapshot.workers[owner_id].placed_out >= 1, "{snapshot:#?}");
    assert!(snapshot.workers[1 - owner_id].placed_in >= 1, "{snapshot:#?}");
    shutdown(handle).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_http2_connections_concurrent_streams_run_on_more_than_one_worker() {
    let handle = start();
    let addr = handle.local_addr();
    let sender = h2(addr).await;
    let get = |path: &'static str| get_h2(sender.clone(), addr, path);
    // Learn the class's cost once, then send costly streams together.
    get("/heavy?spin=20").await;
    let streams: Vec<_> = (0..6).map(|_| tokio::spawn(get("/heavy?spin=100"))).collect();
    let mut ran_on = BTreeSet::new();
    for s in streams {
        ran_on.insert(s.await.expect("join"));
    }
    assert_eq!(ran_on.len(), 2, "the connection's streams ran on {ran_on:?}");
    let snapshot = eventually(&handle, "counts settle", settled).await;
    assert!(snapshot.workers.iter().map(|w| w.placed_out).sum::<u64>() >= 1, "{snapshot:#?}");
    shutdown(handle).await;
}

/// Blocks `owner` with a costly request on `blocker` and sends `path` on
/// `victim` once that request is in flight, so that `path` is moved;
/// returns the pending request.
async fn moved_request(
    handle: &ServerHandle,
    blocker: &mut H1,
    mut victim: H1,
    path: &'static str,
) -> tokio::task::JoinHandle<Result<(u16, String), hyper::Error>> {
    let addr = handle.local_addr();
    let blocking = get_h1(blocker, addr, "/heavy?spin=200");
    let source = handle.snapshot_source();
    let queued = tokio::spawn(async move {
        wait::eventually("the blocking request in flight", || {
            source.snapshot().is_some_and(|s| in_flight(&s) == 1)
        })
        .await;
        get_h1(&mut victim, addr, path).await
    });
    assert_eq!(blocking.await.expect("blocking request").0, 200);
    queued
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_flight_stays_exact_when_a_moved_request_is_cancelled_or_panics() {
    let handle = start();
    let addr = handle.local_addr();
    let (owner, mut conns) = connections_on_one_worker(addr, 4).await;
    let owner: usize = owner.parse().expect("worker id");
    let other = 1 - owner;
    let mut blocker = conns.pop().expect("4");

    // Cancelled: the moved request waits 5 s on the other worker; the client
    // goes away after it is counted there.
    let cancelled =
        moved_request(&handle, &mut blocker, conns.pop().expect("4"), "/heavy?spin=1&sleep=5000").await;
    eventually(&handle, "the moved request in flight on the other worker", |s| {
        s.workers[other].in_flight == 1 && s.workers[other].placed_in >= 1
    })
    .await;
    cancelled.abort();
    let _ = cancelled.await;
    eventually(&handle, "counts settle after the cancel", settled).await;

    // Panics on the other worker: the client's connection fails, the counts
    // settle, and both workers go on serving.
    let panicked =
        moved_request(&handle, &mut blocker, conns.pop().expect("4"), "/heavy?spin=1&panic=1").await;
    let result = panicked.await.expect("join");
    assert!(result.is_err(), "a panicking handler drops the connection: {result:?}");
    let snapshot = eventually(&handle, "counts settle after the panic", settled).await;
    assert!(snapshot.workers[other].placed_in >= 2, "{snapshot:#?}");
    assert_eq!(snapshot.placement.lost, 0);

    let mut survivor = conns.pop().expect("4");
    assert_eq!(get_h1(&mut survivor, addr, "/who").await.expect("/who").0, 200);
    let mut fresh = h1(addr).await;
    assert_eq!(get_h1(&mut fresh, addr, "/who").await.expect("/who").0, 200);
    shutdown(handle).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_placement_off_every_request_runs_on_its_connections_worker() {
    let mut builder = Builder::new();
    builder.workers(2).place_requests(false);
    let handle = hermes_tower::serve("127.0.0.1:0", app()).with_builder(builder).start().expect("start");
    let addr = handle.local_addr();
    let (owner, mut conns) = connections_on_one_worker(addr, 2).await;
    let mut blocker = conns.pop().expect("2");
    let queued = moved_request(&handle, &mut blocker, conns.pop().expect("2"), "/heavy?spin=50").await;
    let (status, ran_on) = queued.await.expect("join").expect("request");
    assert_eq!((status, ran_on), (200, owner));
    let snapshot = eventually(&handle, "counts settle", settled).await;
    assert!(!snapshot.placement.enabled);
    assert!(snapshot.workers.iter().all(|w| w.placed_out == 0 && w.placed_in == 0), "{snapshot:#?}");
    shutdown(handle).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_overloaded_worker_asks_a_keep_alive_connection_to_reconnect() {
    // Placement off, so the load stays on the connection's worker.
    let mut builder = Builder::new();
    builder.workers(2).place_requests(false).reconnect_overloaded(Some(Duration::from_millis(50)));
    let handle = hermes_tower::serve("127.0.0.1:0", app()).with_builder(builder).start().expect("start");
    let addr = handle.local_addr();
    let (owner, mut conns) = connections_on_one_worker(addr, 1).await;
    let mut conn = conns.pop().expect("1");
    let mut asked = None;
    for i in 0..100 {
        conn.ready().await.expect("the connection stays open until asked to reconnect");
        let response = conn.send_request(get_request(addr, "/heavy?spin=20")).await.expect("response");
        let close = response.headers().get(http::header::CONNECTION).is_some_and(|v| v == "close");
        let body = response.into_body().collect().await.expect("body").to_bytes();
        assert_eq!(String::from_utf8_lossy(&body), owner, "placement is off");
        if close {
            asked = Some(i);
            break;
        }
    }
    let asked = asked.expect("an overloaded worker asks its busy connection to reconnect");
    assert!(asked >= 1, "the first request found the worker idle, not overloaded");
    let owner: usize = owner.parse().expect("worker id");
    let snapshot = eventually(&handle, "counts settle", settled).await;
    assert!(snapshot.workers[owner].reconnects >= 1, "{snapshot:#?}");
    assert_eq!(snapshot.workers[1 - owner].reconnects, 0, "{snapshot:#?}");
    // The server closed the connection after the response.
    let closed = tokio::time::timeout(Duration::from_secs(5), conn.ready()).await.expect("closed in time");
    assert!(closed.is_err(), "the asked connection is closed");
    shutdown(handle).await;
}

/// A service whose handler holds an `Rc` across an await: not `Send`.
#[derive(Clone)]
struct NotSend {
    served: std::rc::Rc<std::cell::Cell<u64>>,
}

type NotSendFuture = std::pin::Pin<
    Box<dyn Future<Output = Result<http::Response<http_body_util::Full<Bytes>>, std::convert::Infallible>>>,
>;

impl tower::Service<http::Request<hyper::body::Incoming>> for NotSend {
    type Response = http::Response<http_body_util::Full<Bytes>>;
    type Error = std::convert::Infallible;
    type Future = NotSendFuture;

    fn poll_ready(&mut self, _: &mut std::task::Context<'_>) -> std::task::Poll<Result<(), Self::Error>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, _: http::Request<hyper::body::Incoming>) -> Self::Future {
        let served = self.served.clone();
        Box::pin(async move {
            served.set(served.get() + 1);
            // Holds the `Rc` across an await, as a handler that is not
            // `Send` does; long enough for the test to see it in flight.
            tokio::time::sleep(Duration::from_millis(200)).await;
            let body = format!("{} {}", worker_id(), served.get());
            Ok(http::Response::new(http_body_util::Full::new(Bytes::from(body))))
        })
    }
}

/// Compiles only while `T` is no `Service` of any request type (two
/// implementations of `check` would make the call ambiguous otherwise): the
/// check `static_assertions::assert_not_impl_any!` makes.
trait AmbiguousIfService<A> {
    fn check() {}
}
impl<T: ?Sized> AmbiguousIfService<()> for T {}
struct IsService;
impl<T: ?Sized + tower::Service<R>, R> AmbiguousIfService<(IsService, R)> for T {}

/// A handler that is not `Send` cannot go through `Place`, and this test
/// cannot make it: `Place` may run a handler on another worker or on the
/// blocking pool, so its `Service` implementation requires a `Send` service
/// and future, and the compiler refuses `Place` around this one (checked
/// first, at compile time). What the test checks instead is the
/// composition the `Place` docs tell such an application to use: the plain
/// builder, hyper and `HermesLayer` alone. Its requests run on their
/// connection's worker, share that worker's `!Send` state, and count in
/// flight there while they run.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_handler_that_is_not_send_runs_on_its_connections_worker() {
    use hermes_runtime::HermesListener;
    use hermes_tower::{HermesLayer, Place};
    use hyper_util::service::TowerToHyperService;
    use tower::ServiceBuilder;

    // `Place` does not take it (this line does not compile if it does).
    let () = <Place<NotSend> as AmbiguousIfService<_>>::check();

    let server = {
        let mut builder = Builder::new();
        builder.workers(2).bind("127.0.0.1:0".parse().expect("address"));
        builder.build().expect("build")
    };
    let handle = server
        .serve(|mut listener: HermesListener| async move {
            let served = std::rc::Rc::new(std::cell::Cell::new(0u64));
            while let Some((stream, _)) = listener.accept_connection().await {
                let service = ServiceBuilder::new()
                    .layer(HermesLayer::new())
                    .service(NotSend { served: served.clone() });
                tokio::task::spawn_local(async move {
                    let io = TokioIo::new(stream);
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(io, TowerToHyperService::new(service))
                        .await;
                });
            }
        })
        .expect("serve");
    let addr = handle.local_addr();
    let mut conn = h1(addr).await;
    let (_, first) = get_h1(&mut conn, addr, "/").await.expect("first");
    let owner: usize = first.split(' ').next().expect("worker id").parse().expect("a worker id");
    // The second request is counted in flight on the connection's worker
    // while its handler runs.
    let second = tokio::spawn(async move {
        let answer = get_h1(&mut conn, addr, "/").await.expect("second");
        (conn, answer)
    });
    let during = eventually(&handle, "the second request in flight", |s| in_flight(s) == 1).await;
    assert_eq!(during.workers[owner].in_flight, 1, "{during:#?}");
    let (conn, (_, second)) = second.await.expect("client task");
    assert_eq!(
        second.split(' ').next(),
        Some(owner.to_string().as_str()),
        "both ran on the connection's worker"
    );
    assert_ne!(first, second, "the worker's !Send state counted both");
    let snapshot =
        eventually(&handle, "both counted", |s| s.workers.iter().map(|w| w.requests).sum::<u64>() == 2).await;
    assert_eq!(snapshot.workers[owner].requests, 2, "{snapshot:#?}");
    assert!(settled(&snapshot));
    // This hand-written server does no graceful close: close the client's
    // side so that the drain does not wait for it.
    drop(conn);
    shutdown(handle).await;
}

/// `GET /who` on a connection: whether the response asked it to close.
async fn asks_to_close(conn: &mut H1, addr: SocketAddr) -> bool {
    conn.ready().await.expect("the connection is open");
    let response = conn.send_request(get_request(addr, "/who")).await.expect("response");
    assert_eq!(response.status(), 200);
    let close = response.headers().get(http::header::CONNECTION).is_some_and(|v| v == "close");
    response.into_body().collect().await.expect("body");
    close
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keep_alive_connections_close_at_their_maximum_request_count_or_age() {
    let mut builder = Builder::new();
    builder.workers(2);
    let handle = hermes_tower::serve("127.0.0.1:0", app())
        .with_builder(builder)
        .max_requests_per_connection(Some(3))
        .max_connection_age(Some(Duration::from_millis(400)))
        .start()
        .expect("start");
    let addr = handle.local_addr();

    // By count: the third response asks the client to reconnect, and the
    // server closes the connection after it.
    let mut conn = h1(addr).await;
    let asked: Vec<bool> = [
        asks_to_close(&mut conn, addr).await,
        asks_to_close(&mut conn, addr).await,
        asks_to_close(&mut conn, addr).await,
    ]
    .into();
    assert_eq!(asked, [false, false, true]);
    let closed = tokio::time::timeout(Duration::from_secs(5), conn.ready()).await.expect("closed in time");
    assert!(closed.is_err(), "the connection is closed after its last request");

    // By age: the first response after 400 ms asks the client to reconnect.
    let mut conn = h1(addr).await;
    assert!(!asks_to_close(&mut conn, addr).await, "a young connection stays");
    // The connection ages past its 400 ms maximum: the time under test.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(asks_to_close(&mut conn, addr).await, "an old connection is asked to reconnect");

    let snapshot = eventually(&handle, "counts settle", settled).await;
    assert_eq!(snapshot.workers.iter().map(|w| w.recycled).sum::<u64>(), 2, "{snapshot:#?}");
    shutdown(handle).await;
}

#[test]
fn zero_connection_limits_are_refused() {
    let serve = || hermes_tower::serve("127.0.0.1:0", app());
    let e = serve().max_requests_per_connection(Some(0)).start().expect_err("refused");
    assert!(e.to_string().contains("max_requests_per_connection"), "{e}");
    let e = serve().max_connection_age(Some(Duration::ZERO)).start().expect_err("refused");
    assert!(e.to_string().contains("max_connection_age"), "{e}");
}
