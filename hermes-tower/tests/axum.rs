//! Through axum over real sockets: a server on a worker thread (a
//! current-thread runtime with its Hermes worker entered) with `HermesLayer`
//! on its `Router`, and a plain HTTP/1.1 client on the test's thread.

use std::sync::Arc;

use axum::{Router, extract::State, routing::get};
use hermes_test_support::{
    http::get_path,
    wait::eventually,
    worker::{WorkerServer, slot, table},
};
use hermes_tower::{HermesLayer, SampleRate};
use tokio::sync::Notify;

fn app(gate: Arc<Notify>) -> Router {
    Router::new()
        .route("/fast", get(|| async { "fast" }))
        .route(
            "/slow",
            get(|State(gate): State<Arc<Notify>>| async move {
                gate.notified().await;
                "slow"
            }),
        )
        .with_state(gate)
        .layer(HermesLayer::new().service_time(SampleRate::EVERY_REQUEST))
}

fn serve_axum(table: hermes_bpf::WorkerTable, id: usize, gate: Arc<Notify>) -> WorkerServer {
    WorkerServer::start(table, id, move |listener, stop| async move {
        axum::serve(listener, app(gate))
            .with_graceful_shutdown(async move {
                let _ = stop.await;
            })
            .await
            .expect("axum server");
    })
}

#[tokio::test]
async fn a_slow_request_is_in_flight_on_its_worker_until_answered() {
    let table = table(4);
    let gate = Arc::new(Notify::new());
    let server = serve_axum(table.clone(), 2, gate.clone());

    let client = tokio::spawn(get_path(server.addr, "/slow"));
    eventually("the slow request to be in flight", || slot(&table, 2).in_flight == 1).await;
    assert_eq!(slot(&table, 2).requests, 0);
    assert_eq!(slot(&table, 0).in_flight + slot(&table, 1).in_flight + slot(&table, 3).in_flight, 0);

    gate.notify_one();
    let response = client.await.expect("client task");
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    assert!(response.ends_with("slow"), "{response}");

    eventually("the request to be finished", || slot(&table, 2).in_flight == 0).await;
    let s = slot(&table, 2);
    assert_eq!(s.requests, 1);
    assert!(s.service_ns > 0);
}

#[tokio::test]
async fn every_request_is_counted_including_unrouted_ones() {
    let table = table(1);
    let server = serve_axum(table.clone(), 0, Arc::new(Notify::new()));

    for _ in 0..3 {
        let response = get_path(server.addr, "/fast").await;
        assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    }
    let response = get_path(server.addr, "/nowhere").await;
    assert!(response.starts_with("HTTP/1.1 404"), "{response}");

    eventually("four finished requests", || slot(&table, 0).requests == 4).await;
    assert_eq!(slot(&table, 0).in_flight, 0);
}
