//! Hermes servers for tests.

use std::time::Duration;

use axum::{Router, extract::Query, http::HeaderValue, response::Response, routing::get as route_get};
use hermes_runtime::{Builder, HermesListener, ServerHandle};

/// Two workers, pinned as by default (not where the process may use every
/// CPU of the machine).
pub fn two_workers() -> Builder {
    let mut builder = Builder::new();
    builder.workers(2);
    builder
}

/// Shuts the server down on the blocking pool, so the test's runtime keeps
/// running while the workers drain.
///
/// # Panics
/// When the shutdown task panics.
pub async fn shutdown(handle: ServerHandle) {
    tokio::task::spawn_blocking(move || handle.shutdown()).await.expect("shutdown");
}

/// The `?ms=N` of the blocking and sleeping endpoints; missing is 0, a
/// malformed value is answered with 400 by axum's `Query` extractor.
#[derive(serde::Deserialize)]
struct Cost {
    #[serde(default)]
    ms: u64,
}

/// `/`, `/block?ms=N` (blocks the thread), `/sleep?ms=N` (async), `/panic`,
/// `/_hermes/stats`, served by worker `id`; every response has
/// `x-hermes-worker: id`. No `HermesLayer`: the runtime's own signals only.
pub fn app(id: usize) -> Router {
    Router::new()
        .route("/", route_get(|| async { "ok" }))
        .route(
            "/block",
            route_get(|Query(cost): Query<Cost>| async move {
                std::thread::sleep(Duration::from_millis(cost.ms));
                "unblocked"
            }),
        )
        .route(
            "/sleep",
            route_get(|Query(cost): Query<Cost>| async move {
                tokio::time::sleep(Duration::from_millis(cost.ms)).await;
                "slept"
            }),
        )
        .route(
            "/panic",
            route_get(|| async {
                panic!("handler panic requested by the test");
                #[allow(unreachable_code)]
                "unreachable"
            }),
        )
        .route(
            "/_hermes/stats",
            route_get(|| async {
                axum::Json(hermes_runtime::current_snapshot().expect("on a Hermes worker"))
            }),
        )
        .layer(axum::middleware::map_response(move |mut res: Response| async move {
            res.headers_mut().insert("x-hermes-worker", HeaderValue::from(id));
            res
        }))
}

/// Starts `builder` serving [`app`] with graceful shutdown.
///
/// # Panics
/// When the server does not build or start.
pub fn start(builder: &Builder) -> ServerHandle {
    let server = builder.build().expect("build");
    server
        .serve(|listener: HermesListener| {
            let app = app(listener.worker_id());
            async move {
                let _ = axum::serve(AxumListener(listener), app)
                    .with_graceful_shutdown(hermes_runtime::shutdown_signal())
                    .await;
            }
        })
        .expect("serve")
}

/// A worker's listener as `axum::serve` takes it, for tests of the runtime
/// alone (`hermes_tower::serve::WorkerListener` is what users take).
#[derive(Debug)]
pub struct AxumListener(pub HermesListener);

impl axum::serve::Listener for AxumListener {
    type Io = hermes_runtime::HermesStream;
    type Addr = std::net::SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self.0.accept_connection().await {
            Some(conn) => conn,
            // Closed: the worker drains, and the graceful shutdown (on
            // `shutdown_signal`) stops the accept loop.
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        Ok(self.0.local_addr())
    }
}
