//! A Tower layer that feeds the Hermes Worker State Table.
//!
//! Modules:
//!
//! - [`hermes`](mod@hermes): the middleware, [`Hermes`], [`HermesLayer`] and
//!   [`ResponseFuture`];
//! - [`place`]: request placement, [`Place`] and [`PlaceLayer`], which carry
//!   out the runtime's placement decisions;
//! - [`stats`](mod@stats): `/_hermes/stats`;
//! - [`orca`]: the host's load for the balancers in front of a fleet (ORCA
//!   for gRPC and Envoy, HAProxy's `agent-check`);
//! - [`serve`](mod@serve): the one-line entry points [`serve()`] and
//!   [`serve_tonic`], their options, and the HTTP side of a worker
//!   (listener, connections, timeouts, TLS).
//!
//! The runtime below is protocol-neutral; everything HTTP is here.
//!
//! Each worker thread of a Hermes server owns one slot of the Worker State
//! Table; the scheduler and the kernel's dispatch program read the slots to
//! decide which worker takes the next connection. [`HermesLayer`] keeps the
//! request side of the current worker's slot up to date without any code in
//! the handlers:
//!
//! - `in_flight` counts the requests being served, from `call` until the
//!   response future completes, is dropped (the client went away, a timeout
//!   fired) or unwinds from a panic;
//! - `requests` counts the requests finished;
//! - `service_ns` adds up the time spent serving them (by default measured on
//!   one request in [`SampleRate::DEFAULT_ONE_IN`] and scaled, see
//!   [`SampleRate`]).
//!
//! Outside a Hermes worker (no worker entered on the thread, see
//! [`hermes_runtime::context`]) the layer does nothing: requests pass through
//! untouched and nothing is counted. The same application can therefore run
//! under plain Tokio in tests and under Hermes in production.
//!
//! # The one line
//!
//! [`serve()`] and [`serve_tonic`] start an axum application (a `Router` or
//! any make-service `axum::serve` takes) or tonic services on a Hermes
//! server with the layer added, in place of `axum::serve` or tonic's
//! `Server::serve`, TLS included (feature `tls`, on by default):
//!
//! ```diff
//! -axum::serve(listener, app).await?;
//! +hermes_tower::serve(listener, app).await?;
//! ```
//!
//! See the [`serve`](mod@serve) module. The sections below add the layer by
//! hand, for servers started with [`hermes_runtime::Builder`].
//!
//! # With axum
//!
//! ```
//! use axum::{Router, routing::get};
//! use hermes_tower::HermesLayer;
//!
//! let app: Router = Router::new()
//!     .route("/", get(|| async { "hello" }))
//!     .layer(HermesLayer::new());
//! ```
//!
//! # With tonic
//!
//! ```no_run
//! use hermes_tower::HermesLayer;
//!
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! let (_reporter, health) = tonic_health::server::health_reporter();
//! tonic::transport::Server::builder()
//!     .layer(HermesLayer::new())
//!     .add_service(health)
//!     .serve("127.0.0.1:50051".parse()?)
//!     .await?;
//! # Ok(())
//! # }
//! ```
//!
//! # What counts as "in flight"
//!
//! A request is in flight from the layer's `call` until the inner service's
//! response future completes. For HTTP services that is when the handler has
//! produced the response head: a body streamed afterwards (a large download,
//! a gRPC server stream) is not counted as in flight while it streams.
//!
//! # Cost
//!
//! No allocation and no lock per request. Inside a worker a request costs
//! the worker lookup (a thread-local read and one reference-count increment
//! and decrement on the worker handle), two uncontended locked additions on
//! `in_flight` and a plain increment of `requests`, all on the worker's own
//! cache line; the clock is read only for the requests whose service time is
//! measured. The crate's `layer` benchmark
//! (`cargo bench -p hermes-tower --bench layer`) measures the difference
//! against the bare service.
#![deny(missing_docs)]

pub mod hermes;
pub mod orca;
pub mod place;
pub mod serve;
pub mod stats;

pub use hermes::{Hermes, HermesLayer, future::ResponseFuture};
pub use hermes_runtime::context::{InvalidSampleRate, SampleRate};
pub use place::{ConnectionLimits, Place, PlaceLayer};
pub use serve::{serve, serve_tonic};
pub use stats::{stats_handler, stats_router};
