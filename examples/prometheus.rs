//! The runtime's metrics (per-worker in-flight requests, open connections,
//! accept queues, eligibility, dispatch counts, fallbacks) in Prometheus'
//! text format, through `metrics-exporter-prometheus`.
//!
//! ```text
//! cargo run --release --example prometheus               # on 127.0.0.1:3000
//! curl http://127.0.0.1:3000/metrics
//! cargo run --release --example prometheus -- 0.0.0.0:9000   # another address
//! ```
//!
//! `examples/grafana/hermes.json` is a Grafana dashboard of these metrics
//! (see "Watching a server" in the README).
//!
//! The workers export their slot of the table every 100 ms to the `metrics`
//! recorder installed here, before the server starts; `/metrics` renders it.

use axum::{Router, routing::get};
use metrics_exporter_prometheus::PrometheusBuilder;

#[tokio::main]
async fn main() -> std::io::Result<()> {
    hermes_examples::init_logging();
    let recorder = PrometheusBuilder::new().install_recorder().map_err(std::io::Error::other)?;

    let app = Router::new().route("/", get(|| async { "hello\n" }));
    let metrics = Router::new().route("/metrics", get(move || std::future::ready(recorder.render())));
    let addr = hermes_examples::addr_arg("127.0.0.1:3000")?;
    let handle = hermes_tower::serve(addr, app.merge(metrics)).start()?;
    println!("dispatch mode: {}", handle.mode());
    println!("metrics: http://{}/metrics", handle.local_addr());
    hermes_tower::serve::shutdown_on_signal(handle).await
}
