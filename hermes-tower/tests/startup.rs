//! Awaiting `hermes_tower::serve(..)` does its blocking work (loading the
//! program, binding, waiting for every worker to accept) on the blocking
//! pool: the caller's executor thread keeps running its other tasks.

use std::{
    future::IntoFuture,
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use axum::{Router, routing::get};
use hermes_runtime::Builder;
use hermes_test_support::{ebpf, http::get as http_get};

#[tokio::test(flavor = "current_thread")]
async fn awaiting_serve_does_not_block_the_callers_executor_thread() {
    // A worker that takes 500 ms to start: `serve` waits for it.
    let mut builder = Builder::new();
    builder
        .workers(1)
        .require_ebpf(ebpf::required())
        .bind("127.0.0.1:0".parse().unwrap())
        .on_worker_start(|_| std::thread::sleep(Duration::from_millis(500)));
    let ticks = Arc::new(AtomicUsize::new(0));
    let ticker = tokio::spawn({
        let ticks = ticks.clone();
        async move {
            loop {
                // The ticker's pace, not a wait.
                tokio::time::sleep(Duration::from_millis(10)).await;
                // Relaxed: a lone counter read by the test.
                ticks.fetch_add(1, Ordering::Relaxed);
            }
        }
    });
    let addr = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let app = Router::new().route("/", get(|| async { "ok" }));
    let server = tokio::spawn(
        hermes_tower::serve(addr, app)
            .with_builder(builder)
            .with_graceful_shutdown(async move {
                let _ = stopped.await;
            })
            .into_future(),
    );
    // 400 ms of the start-up, in which the ticks are counted: a measure,
    // not a wait.
    tokio::time::sleep(Duration::from_millis(400)).await;
    let during = ticks.load(Ordering::Relaxed);
    assert!(during >= 10, "the executor thread ran its other tasks {during} times in 400 ms of start-up");
    // The server does start.
    let ok = tokio::task::spawn_blocking(move || {
        hermes_test_support::wait::poll_until(Duration::from_secs(10), || http_get(addr, "/").ok())
    })
    .await
    .unwrap()
    .expect("the server answers");
    assert_eq!(ok.status, 200);
    stop.send(()).unwrap();
    server.await.unwrap().expect("serve resolves");
    ticker.abort();
}
