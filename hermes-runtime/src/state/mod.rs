//! One running server's state, split by what it does, and what is done
//! with it:
//!
//! - [`ServerState`]: the server as its workers, its handle and its stats
//!   see it, made of
//!   - `dispatch`: how new connections reach the workers (the kernel
//!     program and its maps, the kernel's hash, or a shared listener) and
//!     who owns the list of eligible workers;
//!   - `workers`: each worker's control (drain, listener stop, counters);
//!   - `placement`: the learned costs, target and counters of request
//!     placement;
//!   - `pass_state`: what the scheduler pass keeps (its buffer, the hung
//!     workers it found);
//!   - `holders`: the live older servers that hold slots of the maps (a
//!     successor's);
//! - `open`: opening a server (afresh, from systemd's sockets, or as a
//!   successor);
//! - `load`: the host's load as balancers read it ([`HostLoad`]),
//!   refreshed by the tick; `load_source`, its reader ([`LoadSource`]);
//! - `tick`: what a worker does for the server each tick (heartbeat;
//!   once per half tick for the whole server: accept-queue sample, scheduler
//!   pass, placement target) and the rescue of a hung worker's queue;
//! - `pass`: the scheduler pass, the list it publishes (with the locality
//!   table) and the hung workers it finds;
//! - `selfcheck`: whether the kernel program still sees the connections;
//! - `drain`: drain and shutdown;
//! - `handover`: the hand-over logic of an upgrade, on both sides.

mod dispatch;
mod drain;
pub(crate) mod handover;
mod holders;
mod load;
mod load_source;
pub(crate) mod open;
mod pass;
mod pass_state;
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
