//! `hermes-bench-kv`: a key-value store shaped as axum users write services
//! (shared state behind an `RwLock`, and tower-http's compression, request
//! tracing, a timeout, a concurrency limit and load shedding), served by
//! `hermes_tower::serve` or by `axum::serve` from the same `Router`, so the
//! two can be compared with `wrk` at saturation:
//!
//! ```text
//! cargo run --release -p hermes-bench-kv -- --server hermes --addr 127.0.0.1:3000
//! wrk -t2 -c32 -d10s --latency http://127.0.0.1:3000/kv/answer
//! ```
//!
//! Routes: `GET /kv/{key}` (404 when absent), `POST /kv/{key}` (the body is
//! the value, at most 64 KiB), `GET /keys` (the keys, one per line), and
//! `DELETE /keys` (empties the store). The store starts with 1000 keys
//! `k0`..`k999` and `answer`, each a 256-byte value (compressible text).

use std::{
    borrow::Cow,
    collections::HashMap,
    net::SocketAddr,
    sync::{Arc, RwLock},
    time::Duration,
};

use axum::{
    Router,
    body::Bytes,
    error_handling::HandleErrorLayer,
    extract::{Path, State},
    http::StatusCode,
    response::IntoResponse,
    routing::get,
};
use clap::{Parser, ValueEnum};
use tower::{BoxError, ServiceBuilder};
use tower_http::{compression::CompressionLayer, limit::RequestBodyLimitLayer, trace::TraceLayer};

/// Which server serves the application.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Server {
    /// `hermes_tower::serve` with its defaults.
    Hermes,
    /// `axum::serve` on Tokio's multi-thread runtime.
    Axum,
}

/// The key-value application, served by Hermes or axum.
#[derive(Debug, Parser)]
struct Args {
    /// The server.
    #[arg(long, value_enum, default_value_t = Server::Hermes)]
    server: Server,
    /// Where to listen.
    #[arg(long, default_value = "127.0.0.1:3000")]
    addr: SocketAddr,
    /// Worker threads (Hermes workers, or Tokio's); default: one per CPU.
    #[arg(long)]
    workers: Option<usize>,
    /// Hermes: the time slice each worker asks the kernel for, in µs
    /// (`Builder::worker_slice`); default: the kernel's.
    #[arg(long, value_name = "US")]
    worker_slice_us: Option<u64>,
}

type Store = Arc<RwLock<HashMap<String, Bytes>>>;

async fn get_key(Path(key): Path<String>, State(store): State<Store>) -> Result<Bytes, StatusCode> {
    let store = store.read().unwrap_or_else(|e| e.into_inner());
    store.get(&key).cloned().ok_or(StatusCode::NOT_FOUND)
}

async fn set_key(Path(key): Path<String>, State(store): State<Store>, value: Bytes) {
    store.write().unwrap_or_else(|e| e.into_inner()).insert(key, value);
}

async fn list_keys(State(store): State<Store>) -> String {
    let store = store.read().unwrap_or_else(|e| e.into_inner());
    store.keys().map(String::as_str).collect::<Vec<_>>().join("\n")
}

async fn delete_keys(State(store): State<Store>) {
    store.write().unwrap_or_else(|e| e.into_inner()).clear();
}

/// What the error layers answer: the timeout and the shed load.
async fn handle_error(error: BoxError) -> impl IntoResponse {
    if error.is::<tower::timeout::error::Elapsed>() {
        return (StatusCode::REQUEST_TIMEOUT, Cow::from("request timed out"));
    }
    if error.is::<tower::load_shed::error::Overloaded>() {
        return (StatusCode::SERVICE_UNAVAILABLE, Cow::from("service is overloaded, try again later"));
    }
    (StatusCode::INTERNAL_SERVER_ERROR, Cow::from(format!("unhandled internal error: {error}")))
}

fn app() -> Router {
    let value =
        Bytes::from("the quick brown fox jumps over the lazy dog; ".repeat(6).into_bytes()[..256].to_vec());
    let mut initial: HashMap<String, Bytes> = (0..1000).map(|i| (format!("k{i}"), value.clone())).collect();
    initial.insert("answer".into(), value);
    let store: Store = Arc::new(RwLock::new(initial));
    Router::new()
        .route("/kv/{key}", get(get_key).post(set_key))
        .route("/keys", get(list_keys).delete(delete_keys))
        .layer(
            ServiceBuilder::new()
                .layer(HandleErrorLayer::new(handle_error))
                .load_shed()
                .concurrency_limit(1024)
                .timeout(Duration::from_secs(10))
                .layer(TraceLayer::new_for_http())
                .layer(CompressionLayer::new())
                .layer(RequestBodyLimitLayer::new(64 * 1024)),
        )
        .with_state(store)
}

fn main() -> std::io::Result<()> {
    let args = Args::parse();
    tracing_subscriber::fmt().with_ansi(false).with_env_filter("warn").init();
    match args.server {
        Server::Hermes => {
            let mut builder = hermes_runtime::Builder::new();
            if let Some(n) = args.workers {
                builder.workers(n);
            }
            builder.worker_slice(args.worker_slice_us.map(std::time::Duration::from_micros));
            let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
            runtime.block_on(async {
                let handle = hermes_tower::serve(args.addr, app()).with_builder(builder).start()?;
                println!("listening on {} server=hermes mode={}", handle.local_addr(), handle.mode());
                hermes_tower::serve::shutdown_on_signal(handle).await
            })
        }
        Server::Axum => {
            let mut builder = tokio::runtime::Builder::new_multi_thread();
            if let Some(n) = args.workers {
                builder.worker_threads(n);
            }
            builder.enable_all().build()?.block_on(async {
                let listener = tokio::net::TcpListener::bind(args.addr).await?;
                println!("listening on {} server=axum", listener.local_addr()?);
                axum::serve(listener, app())
                    .with_graceful_shutdown(async {
                        let _ = hermes_tower::serve::ctrl_c_or_sigterm().await;
                    })
                    .await
            })
        }
    }
}
