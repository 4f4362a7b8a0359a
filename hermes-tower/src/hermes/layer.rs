use tower_layer::Layer;

use hermes_runtime::context::SampleRate;

use super::Hermes;

/// Wraps services in [`Hermes`], which counts their requests in the current
/// Hermes worker's slot of the Worker State Table.
///
/// Outside a Hermes worker the wrapped service behaves exactly like the
/// inner one and nothing is counted. The layer is two words and `Copy`.
///
/// ```
/// use axum::{Router, routing::get};
/// use hermes_tower::{HermesLayer, SampleRate};
///
/// let app: Router = Router::new()
///     .route("/", get(|| async { "hello" }))
///     .layer(HermesLayer::new().service_time(SampleRate::EVERY_REQUEST));
/// ```
#[derive(Clone, Copy, Debug, Default)]
pub struct HermesLayer {
    service_time: SampleRate,
}

impl HermesLayer {
    /// A layer that counts every request and measures service time at the
    /// default rate ([`SampleRate::DEFAULT`]).
    pub fn new() -> Self {
        Self::default()
    }

    /// Which requests have their service time measured. Default: one in
    /// [`SampleRate::DEFAULT_ONE_IN`].
    pub fn service_time(mut self, service_time: SampleRate) -> Self {
        self.service_time = service_time;
        self
    }
}

impl<S> Layer<S> for HermesLayer {
    type Service = Hermes<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Hermes::with_service_time(inner, self.service_time)
    }
}
