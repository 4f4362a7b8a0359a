//! `/_hermes/stats`: the snapshot of the server the current worker belongs
//! to, as JSON ([`hermes_runtime::Snapshot`]). [`Serve::with_stats`](crate::serve::Serve::with_stats)
//! mounts it on axum and gRPC servers alike; [`stats_router`] mounts it in
//! an axum application of your own.

use bytes::Bytes;
use http::{
    HeaderValue, Method, Response, StatusCode,
    header::{ALLOW, CONTENT_TYPE},
};

/// The path of the stats endpoint.
pub const STATS_PATH: &str = "/_hermes/stats";

/// The answer to a request for [`STATS_PATH`] with `method`: the snapshot
/// as JSON for `GET` and `HEAD` (`503` when not running on a Hermes
/// worker), `405` for any other method.
pub(crate) fn response(method: &Method) -> Response<Bytes> {
    if method != Method::GET && method != Method::HEAD {
        let mut response = Response::new(Bytes::new());
        *response.status_mut() = StatusCode::METHOD_NOT_ALLOWED;
        response.headers_mut().insert(ALLOW, HeaderValue::from_static("GET,HEAD"));
        return response;
    }
    let (status, body, json) = match hermes_runtime::current_snapshot() {
        Some(snapshot) => match serde_json::to_vec(&snapshot) {
            Ok(body) => (StatusCode::OK, body, true),
            Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, e.to_string().into_bytes(), false),
        },
        None => (StatusCode::SERVICE_UNAVAILABLE, b"not running on a Hermes worker".to_vec(), false),
    };
    let mut response = Response::new(Bytes::from(body));
    *response.status_mut() = status;
    let kind = if json { "application/json" } else { "text/plain; charset=utf-8" };
    response.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static(kind));
    response
}

/// An axum handler that serves the current server's snapshot as JSON
/// (`503` when not running on a Hermes worker).
///
/// ```no_run
/// use axum::{Router, routing::get};
///
/// let app: Router = Router::new().route("/_hermes/stats", get(hermes_tower::stats_handler));
/// ```
pub async fn stats_handler() -> axum::response::Response {
    response(&Method::GET).map(axum::body::Body::from)
}

/// A router with [`stats_handler`] at [`STATS_PATH`], to merge into an app.
///
/// ```no_run
/// use axum::{Router, routing::get};
///
/// let app: Router = Router::new()
///     .route("/", get(|| async { "hello" }))
///     .merge(hermes_tower::stats_router());
/// ```
pub fn stats_router<S: Clone + Send + Sync + 'static>() -> axum::Router<S> {
    axum::Router::new().route(STATS_PATH, axum::routing::get(stats_handler))
}
