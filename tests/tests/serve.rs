//! The one-line axum entry, `hermes_tower::serve`, over real sockets on a
//! real Hermes server (kernel dispatch when the program loads, the kernel's
//! hash otherwise): the layer it adds feeds the table, and the stats
//! endpoint it mounts reports it.

use std::sync::Arc;

use axum::{Router, extract::State, routing::get};
use hermes_test_support::{
    http::get_path,
    server::{shutdown, two_workers},
    snapshot::{in_flight, requests},
    wait::eventually_snapshot as eventually,
};
use tokio::sync::Notify;

#[tokio::test]
async fn a_slow_request_through_serve_is_in_flight_on_its_worker_until_answered() {
    let gate = Arc::new(Notify::new());
    let app = Router::new()
        .route(
            "/slow",
            get(|State(gate): State<Arc<Notify>>| async move {
                gate.notified().await;
                "slow"
            }),
        )
        .with_state(gate.clone());
    let handle = hermes_tower::serve("127.0.0.1:0", app)
        .with_builder(two_workers())
        .with_stats()
        .start()
        .expect("start the server");
    let addr = handle.local_addr();

    let client = tokio::spawn(get_path(addr, "/slow"));
    let during = eventually(&handle, "the slow request in flight", |s| in_flight(s) == 1).await;
    assert_eq!(requests(&during), 0);
    let worker = during.workers.iter().find(|w| w.in_flight == 1).expect("a worker with the request").id;

    // The stats endpoint reports the same, and is not itself counted.
    let stats = get_path(addr, "/_hermes/stats").await;
    assert!(stats.starts_with("HTTP/1.1 200"), "{stats}");
    assert!(stats.contains("\"in_flight\":1"), "{stats}");

    gate.notify_one();
    let response = client.await.expect("client task");
    assert!(response.starts_with("HTTP/1.1 200") && response.ends_with("slow"), "{response}");

    let after = eventually(&handle, "the request finished", |s| in_flight(s) == 0 && requests(s) == 1).await;
    assert_eq!(after.workers[worker].requests, 1, "{after:?}");
    shutdown(handle).await;
}

#[tokio::test]
async fn serve_takes_over_the_address_of_a_tokio_listener() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind 127.0.0.1:0");
    let addr = listener.local_addr().expect("local address");
    let app = Router::new().route("/", get(|| async { "hello" }));
    let handle =
        hermes_tower::serve(listener, app).with_builder(two_workers()).start().expect("start the server");
    assert_eq!(handle.local_addr(), addr);

    let response = get_path(addr, "/").await;
    assert!(response.starts_with("HTTP/1.1 200") && response.ends_with("hello"), "{response}");
    let response = get_path(addr, "/_hermes/stats").await;
    assert!(response.starts_with("HTTP/1.1 404"), "stats are off by default: {response}");
    eventually(&handle, "the request counted", |s| requests(s) == 2).await;
    shutdown(handle).await;
}

#[tokio::test]
async fn without_layer_the_table_counts_no_requests() {
    let app = Router::new().route("/", get(|| async { "hello" }));
    let handle = hermes_tower::serve("127.0.0.1:0", app)
        .with_builder(two_workers())
        .without_layer()
        .start()
        .expect("start the server");
    let response = get_path(handle.local_addr(), "/").await;
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    eventually(&handle, "the connection closed", |s| s.workers.iter().all(|w| w.open_connections == 0)).await;
    assert_eq!(requests(&handle.snapshot()), 0);
    shutdown(handle).await;
}

#[test]
fn an_unresolvable_address_is_reported() {
    let app = Router::new();
    let e = hermes_tower::serve("no port here", app).start().expect_err("no address");
    assert_eq!(e.kind(), std::io::ErrorKind::InvalidInput, "{e}");
}
