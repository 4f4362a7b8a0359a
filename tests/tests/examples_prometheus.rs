//! The Prometheus example's wiring: the runtime's metrics, recorded by
//! `metrics-exporter-prometheus` and rendered on `/metrics` of a server
//! started with `hermes_tower::serve`. Its own test binary, since the
//! recorder is process-wide.

use std::time::Duration;

use axum::{Router, routing::get};
use hermes_test_support::{
    http::get_path,
    server::{shutdown, two_workers},
    wait::{TIMEOUT, poll_async},
};
use metrics_exporter_prometheus::PrometheusBuilder;

#[tokio::test]
async fn metrics_lists_every_worker_and_the_mode() {
    let recorder = PrometheusBuilder::new().install_recorder().expect("install the recorder");
    let metrics = Router::new().route("/metrics", get(move || std::future::ready(recorder.render())));
    let app = Router::new().route("/", get(|| async { "hello" })).merge(metrics);
    let handle = hermes_tower::serve("127.0.0.1:0", app).with_builder(two_workers()).start().expect("start");
    let addr = handle.local_addr();
    assert!(get_path(addr, "/").await.ends_with("hello"));

    // The workers export every 100 ms.
    let mut body = String::new();
    let exported = poll_async(TIMEOUT, Duration::from_millis(20), async || {
        body = get_path(addr, "/metrics").await;
        let wanted = [
            "hermes_in_flight{worker=\"0\"}",
            "hermes_in_flight{worker=\"1\"}",
            "hermes_open_connections{worker=\"1\"}",
            "hermes_requests_total{worker=",
            &format!("hermes_mode{{mode=\"{}\"", handle.mode()),
        ];
        wanted.iter().all(|w| body.contains(w)).then_some(())
    })
    .await;
    assert!(exported.is_some(), "missing metrics in:\n{body}");
    shutdown(handle).await;
}
