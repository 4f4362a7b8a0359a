//! The ready axum handler and router for `/_hermes/stats`.

use super::current_snapshot;

/// An axum handler that serves the current server's [`Snapshot`](super::Snapshot) as JSON
/// (`503` when not running on a Hermes worker).
///
/// ```no_run
/// use axum::{Router, routing::get};
///
/// let app: Router = Router::new().route("/_hermes/stats", get(hermes_runtime::stats_handler));
/// ```
#[cfg(feature = "axum")]
pub async fn stats_handler() -> axum::response::Response {
    use axum::response::IntoResponse;
    match current_snapshot() {
        Some(s) => axum::Json(s).into_response(),
        None => {
            (axum::http::StatusCode::SERVICE_UNAVAILABLE, "not running on a Hermes worker").into_response()
        }
    }
}

/// A router with [`stats_handler`] at `/_hermes/stats`, to merge into an app.
///
/// ```no_run
/// use axum::{Router, routing::get};
///
/// let app: Router = Router::new()
///     .route("/", get(|| async { "hello" }))
///     .merge(hermes_runtime::stats_router());
/// ```
#[cfg(feature = "axum")]
pub fn stats_router<S: Clone + Send + Sync + 'static>() -> axum::Router<S> {
    axum::Router::new().route("/_hermes/stats", axum::routing::get(stats_handler))
}
