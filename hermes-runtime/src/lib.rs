//! Thread-per-core Tokio runtimes whose new connections are placed by Hermes.
//!
//! A [`Builder`] makes a [`Server`]: one OS thread per worker, each running
//! a current-thread Tokio runtime with a `LocalSet` (so `!Send` handlers work) and
//! owning its own `SO_REUSEPORT` listener, placed in the kernel's socket
//! array at slot = worker id. Each worker publishes its live state into its
//! slot of the Worker State Table (open connections, accept queue,
//! heartbeat, busy time; in-flight requests come from [`context::InFlight`]
//! guards, which the Tower layer opens per request), runs a [`scheduler`]
//! pass every tick, and any worker may publish the resulting list of
//! eligible workers. The kernel program then places each new connection on
//! an eligible worker, so a worker stuck in a handler stops receiving
//! connections within a few ticks. Requests are placed too: [`placement`]
//! decides, per request, whether its handler runs on its connection's
//! worker, another worker, or the blocking pool.
//!
//! The runtime is protocol-neutral: it hands each worker a
//! [`HermesListener`] and counts what the server on top reports. HTTP
//! (axum, tonic, timeouts, TLS, `/_hermes/stats`) is `hermes_tower`'s; the
//! `redis` example serves its own protocol on the same runtime.
//!
//! When the kernel refuses the program (no CAP_BPF, old kernel), the server
//! runs with plain `SO_REUSEPORT` hashing, logs one warning, and reports the
//! mode and the reason in its [`Snapshot`] and metrics (unless
//! [`Builder::require_ebpf`] asks for an error instead).
//!
//! ```no_run
//! use hermes_runtime::{Builder, HermesListener, shutdown_signal};
//! use tokio::io::AsyncWriteExt;
//!
//! let server = Builder::new().workers(4).bind("127.0.0.1:8080".parse().unwrap()).build()?;
//! println!("listening on {} mode={}", server.local_addr(), server.mode());
//! let handle = server.serve(|mut listener: HermesListener| async move {
//!     let accept = async {
//!         while let Some((mut stream, _peer)) = listener.accept_connection().await {
//!             tokio::task::spawn_local(async move {
//!                 let _in_flight = hermes_runtime::context::current().map(|w| w.request());
//!                 let _ = stream.write_all(b"hello\n").await;
//!             });
//!         }
//!     };
//!     tokio::select! {
//!         () = accept => {}
//!         () = shutdown_signal() => {}
//!     }
//! })?;
//! handle.join();
//! # Ok::<(), std::io::Error>(())
//! ```
//!
//! # Modules
//!
//! Each imports only the ones listed before it:
//!
//! - `sys`: the Linux calls beyond `std` (listeners, affinity, epoll, `TCP_INFO`);
//! - `config`: [`Mode`] and the validated settings;
//! - [`scheduler`]: the scheduler pass and its [`scheduler::Policy`];
//! - [`upgrade`]: the zero-downtime hand-over's public types, and
//!   `upgrade::protocol`, its messages (text header, `SCM_RIGHTS`);
//! - `state`: the running server's state, split by what it does (dispatch,
//!   workers, placement state, opening, the tick, the self-check, drain,
//!   the hand-over logic, the host's load for balancers: [`HostLoad`]);
//! - [`context`]: the one thread-local saying which worker a thread is
//!   ([`context::WorkerRef`]), and the per-request guards;
//! - [`placement`]: the per-request placement decision;
//! - `net`: [`HermesListener`] and [`HermesStream`];
//! - `stats`: [`Snapshot`] and the `metrics` export;
//! - `worker`: each worker's thread, runtime, loop and housekeeping; [`shutdown_signal`];
//! - `server`: the public [`Server`] and [`ServerHandle`];
//! - `builder`: [`Builder`].
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
//! worker out of the list, stop its listener (in Hermes mode its queued
//! connections migrate to the other workers), resolve its
//! [`shutdown_signal`], and wait up to the drain timeout for its open
//! connections to finish. The queue of the last listener of a full shutdown,
//! and the queue of a listener stopped in `KernelHash` mode, have nowhere
//! to go: the kernel resets those connections.
#![deny(missing_docs)]

mod builder;
mod config;
pub mod context;
mod error;
mod net;
pub mod placement;
pub mod scheduler;
mod server;
mod state;
mod stats;
mod sys;
pub mod upgrade;
mod worker;

pub use builder::Builder;
pub use config::{DEFAULT_MAX_CONNECTIONS, Mode};
pub use error::PortInUse;
pub use hermes_bpf::layout::FinePolicy;
pub use net::{HermesListener, HermesStream};
pub use server::{Server, ServerHandle, SnapshotSource};
pub use state::{HostLoad, LOAD_WINDOW, LoadSource, SHUTDOWN_GRACE};
pub use stats::{Fallbacks, PlacementSnapshot, Snapshot, WorkerSnapshot, WorkerStatus, current_snapshot};
pub use upgrade::{Upgrade, UpgradeError, Upgraded};
pub use worker::shutdown_signal;
