//! Thread-per-core Tokio runtimes whose new connections are placed by Hermes.
//!
//! Modules, from the system calls up to the server (each imports only the
//! ones above it):
//!
//! - `sys`: the Linux calls std and socket2 do not wrap (`TCP_INFO`, CPU
//!   pinning, listener shutdown, the `EPOLLEXCLUSIVE` epoll set);
//! - [`context`]: [`context::WorkerRef`], the current worker's slot of the table, and
//!   [`context::InFlight`], the per-request guard that feeds its load signal;
//! - [`scheduler`]: the scheduler pass and its [`scheduler::Policy`];
//! - [`placement`]: request placement, the scheduler's second half (learned
//!   costs, expected work, utilisation, the target of the moment);
//! - `config`: [`Mode`] and the validated settings;
//! - `control`: a worker's drain flag, and how to stop its listener from another thread;
//! - `net`: [`HermesListener`] and [`HermesStream`];
//! - `shared`: the state the workers share (table, kernel maps), the
//!   scheduler pass and the accept-queue sample;
//! - `stats`: [`Snapshot`], the `metrics` export, the `/_hermes/stats` handler;
//! - `worker`: each worker's thread, runtime, loop and housekeeping; [`shutdown_signal`];
//! - [`upgrade`]: the zero-downtime hand-over to a successor process;
//! - `server`: [`Server`] and [`ServerHandle`];
//! - `builder`: [`Builder`].
//!
//! A [`Builder`] makes a [`Server`]: one OS thread per worker, each running
//! a current-thread Tokio runtime with a `LocalSet` (so `!Send` handlers
//! work) and owning its own `SO_REUSEPORT` listener, placed in the kernel's
//! socket array at slot = worker id. Each worker publishes its live state
//! into its slot of the Worker State Table (open connections, accept queue,
//! heartbeat, busy time; in-flight requests come from [`context::InFlight`]
//! guards, which the Tower layer opens per request), runs a
//! [`scheduler`] pass every tick, and any worker may publish the resulting
//! bitmap of eligible workers. The kernel program then places each new
//! connection on an eligible worker, so a worker stuck in a handler stops
//! receiving connections within a few ticks.
//!
//! When the kernel refuses the program (no CAP_BPF, old kernel), the server
//! runs with plain `SO_REUSEPORT` hashing, logs one warning, and reports the
//! mode and the reason in its [`Snapshot`] and metrics (unless
//! [`Builder::require_ebpf`] asks for an error instead).
//!
//! ```no_run
//! use axum::{Router, routing::get};
//! use hermes_runtime::{Builder, HermesListener, shutdown_signal};
//!
//! let app = Router::new()
//!     .route("/", get(|| async { "hello" }))
//!     .merge(hermes_runtime::stats_router());
//! let server = Builder::new().workers(4).bind("127.0.0.1:8080".parse().unwrap()).build()?;
//! println!("listening on {} mode={}", server.local_addr(), server.mode());
//! let handle = server.serve(move |listener: HermesListener| {
//!     let app = app.clone();
//!     async move {
//!         let _ = axum::serve(listener, app).with_graceful_shutdown(shutdown_signal()).await;
//!     }
//! })?;
//! handle.join();
//! # Ok::<(), std::io::Error>(())
//! ```
//!
//! # Modes
//! [`Mode::Hermes`] (the default), [`Mode::KernelHash`] (plain
//! `SO_REUSEPORT`) and [`Mode::SharedListener`] (one listener in every
//! worker's event loop, registered with `EPOLLEXCLUSIVE`: each worker has
//! its own epoll set holding the shared listener with `EPOLLEXCLUSIVE` and
//! a drain eventfd, and that epoll descriptor is what the worker's Tokio
//! reactor watches, so one new connection wakes one worker as in nginx).
//!
//! # Shutdown
//! [`ServerHandle::shutdown_worker`] and [`ServerHandle::shutdown`] take a
//! worker out of the bitmap, stop its listener (in Hermes mode its queued
//! connections migrate to the other workers), resolve its
//! [`shutdown_signal`], and wait up to the drain timeout for its open
//! connections to finish. The queue of the last listener of a full shutdown,
//! and the queue of a listener stopped in `KernelHash` mode, have nowhere
//! to go: the kernel resets those connections.
#![deny(missing_docs)]

mod builder;
mod config;
pub mod context;
mod control;
mod error;
mod net;
pub mod placement;
pub mod scheduler;
mod server;
mod shared;
mod stats;
mod sys;
pub mod upgrade;
mod worker;

pub use builder::{Builder, DEFAULT_HEADER_READ_TIMEOUT, DEFAULT_IDLE_TIMEOUT, DEFAULT_MAX_CONNECTIONS};
pub use config::Mode;
pub use error::PortInUse;
pub use hermes_bpf::layout::FinePolicy;
pub use net::{HermesListener, HermesStream};
pub use server::{SHUTDOWN_GRACE, Server, ServerHandle, SnapshotSource};
pub use stats::{Fallbacks, PlacementSnapshot, Snapshot, WorkerSnapshot, WorkerStatus, current_snapshot};
#[cfg(feature = "axum")]
pub use stats::{stats_handler, stats_router};
pub use upgrade::{Upgrade, UpgradeError, Upgraded};
pub use worker::shutdown_signal;
