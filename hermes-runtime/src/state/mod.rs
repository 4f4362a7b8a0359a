//! One running server's state, split by what it does, and what is done
//! with it:
//!
//! - [`ServerState`]: the server as its workers, its handle and its stats
//!   see it, made of
//!   - `dispatch`: how new connections reach the workers (the kernel
//!     program and its maps, the kernel's hash, or a shared listener) and
//!     who owns the bitmap;
//!   - `workers`: each worker's control (drain, listener stop, counters);
//!   - `placement`: the learned costs, target and counters of request
//!     placement;
//! - `open`: opening a server (afresh, from systemd's sockets, or as a
//!   successor);
//! - `load`: the host's load as balancers read it ([`HostLoad`]),
//!   refreshed by the tick; `load_source`, its reader ([`LoadSource`]);
//! - `tick`: what a worker does for the server each tick (heartbeat,
//!   accept-queue sample, scheduler pass, placement target) and the rescue
//!   of a hung worker's queue;
//! - `selfcheck`: whether the kernel program still sees the connections;
//! - `drain`: drain and shutdown;
//! - `handover`: the hand-over logic of an upgrade, on both sides.

mod dispatch;
mod drain;
pub(crate) mod handover;
mod load;
mod load_source;
pub(crate) mod open;
pub(crate) mod placement;
mod selfcheck;
mod server;
mod tick;
mod workers;

pub(crate) use drain::DrainWait;
pub use drain::SHUTDOWN_GRACE;
pub use load::{HostLoad, LOAD_WINDOW};
pub use load_source::LoadSource;
pub(crate) use selfcheck::SelfCheck;
pub(crate) use server::ServerState;
pub(crate) use tick::WorkerTick;
pub(crate) use workers::{Stop, WorkerControl};
