//! [`serve_tonic`]: the one-line start of tonic services on a Hermes server.

use std::{io, sync::Arc};

use hermes_runtime::{Builder, HermesListener, ServerHandle, shutdown_signal};
use tonic::{service::Routes, transport::Server};
use tower::util::option_layer;

use super::{IntoBindAddr, log_start, shutdown_on_signal};
use crate::HermesLayer;

/// Starts the gRPC services that `routes` makes on a Hermes server
/// listening on `addr`; await it in place of
/// `Server::builder().add_service(..).serve(addr)`.
///
/// `routes` is called once on each worker thread (and again when a worker
/// is restarted after a panic), so each worker may have its own service
/// state; services that share state hold it in an `Arc`. Every worker serves
/// the routes with `Server::builder().layer(HermesLayer::new())`.
///
/// ```diff
/// -Server::builder().add_service(GreeterServer::new(greeter)).serve(addr).await?;
/// +hermes_tower::serve_tonic(addr, move || Routes::new(GreeterServer::new(greeter.clone()))).await?;
/// ```
///
/// ```no_run
/// use tonic::service::Routes;
///
/// #[tokio::main]
/// async fn main() -> std::io::Result<()> {
///     hermes_tower::serve_tonic("127.0.0.1:50051", || {
///         let (_reporter, health) = tonic_health::server::health_reporter();
///         Routes::new(health)
///     })
///     .await
/// }
/// ```
pub fn serve_tonic<A, F>(addr: A, routes: F) -> ServeTonic<A, F>
where
    A: IntoBindAddr,
    F: Fn() -> Routes + Send + Sync + 'static,
{
    ServeTonic { addr, routes, builder: Builder::new(), layer: Some(HermesLayer::new()) }
}

/// gRPC services about to be served by a Hermes server; made by
/// [`serve_tonic`].
///
/// Await it to serve until ctrl-c or `SIGTERM`, or [`start`](ServeTonic::start)
/// it for a [`ServerHandle`].
///
/// ```no_run
/// use tonic::service::Routes;
///
/// # fn run() -> std::io::Result<()> {
/// let handle = hermes_tower::serve_tonic("127.0.0.1:0", || {
///     Routes::new(tonic_health::server::health_reporter().1)
/// })
/// .start()?;
/// println!("grpc on {} (mode {})", handle.local_addr(), handle.mode());
/// handle.shutdown();
/// # Ok(())
/// # }
/// ```
#[must_use = "a ServeTonic does nothing until it is awaited or started"]
pub struct ServeTonic<A, F> {
    addr: A,
    routes: F,
    builder: Builder,
    layer: Option<HermesLayer>,
}

impl<A, F> std::fmt::Debug for ServeTonic<A, F> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServeTonic").field("builder", &self.builder).field("layer", &self.layer).finish()
    }
}

impl<A, F> ServeTonic<A, F>
where
    A: IntoBindAddr,
    F: Fn() -> Routes + Send + Sync + 'static,
{
    /// The server's settings; its address is replaced by the one given to
    /// [`serve_tonic`]. Default: [`Builder::new()`].
    pub fn with_builder(mut self, builder: Builder) -> Self {
        self.builder = builder;
        self
    }

    /// The layer added to every worker's tonic server. Default:
    /// [`HermesLayer::new()`].
    pub fn with_layer(mut self, layer: HermesLayer) -> Self {
        self.layer = Some(layer);
        self
    }

    /// Serves the routes without [`HermesLayer`]: the table then has no
    /// in-flight counts.
    pub fn without_layer(mut self) -> Self {
        self.layer = None;
        self
    }

    /// Binds the address, starts the workers and returns at once; see
    /// [`Serve::start`](super::Serve::start).
    ///
    /// # Errors
    /// The address's resolution error, and [`Builder::build`]'s and
    /// [`hermes_runtime::Server::serve`]'s errors.
    pub fn start(self) -> io::Result<ServerHandle> {
        let addr = self.addr.into_bind_addr()?;
        let mut builder = self.builder;
        let server = builder.bind(addr).build()?;
        let routes = Arc::new(self.routes);
        let layer = self.layer;
        let handle = server.serve(move |listener: HermesListener| {
            let routes = routes();
            async move {
                let worker = listener.worker_id();
                let served = Server::builder()
                    .layer(option_layer(layer))
                    .add_routes(routes)
                    .serve_with_incoming_shutdown(listener, shutdown_signal())
                    .await;
                if let Err(e) = served {
                    tracing::error!(worker, error = %e, "tonic stopped serving");
                }
            }
        })?;
        log_start(&handle);
        Ok(handle)
    }
}

impl<A, F> std::future::IntoFuture for ServeTonic<A, F>
where
    A: IntoBindAddr + Send + 'static,
    F: Fn() -> Routes + Send + Sync + 'static,
{
    type Output = io::Result<()>;
    type IntoFuture = std::pin::Pin<Box<dyn Future<Output = io::Result<()>> + Send>>;

    fn into_future(self) -> Self::IntoFuture {
        Box::pin(async move { shutdown_on_signal(self.start()?).await })
    }
}
