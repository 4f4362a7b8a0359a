//! The kernel side of Hermes: an eBPF program attached to a `SO_REUSEPORT`
//! group that places each new connection on a worker chosen from the list of
//! eligible workers published by userspace, and the Rust loader that owns its
//! maps. Up to [`layout::MAX_WORKERS`] workers per server; the program is
//! loop-free and O(1) at any size, and the maps are sized for the server
//! ([`layout::slots_for`]).
//!
//! Modules:
//!
//! - [`layout`]: the `#[repr(C)]` mirrors of the program's maps, names and indexes;
//! - `region`: [`Region`], a map `mmap`ed into the process (or plain memory of the same
//!   layout), and [`Region::take_array`], how every loader of the workspace maps its arrays;
//! - `dispatcher`: [`Dispatcher`], the loader that owns the program and its maps
//!   (`mapping`: how it maps them into the process);
//! - `counters`: [`Counters`], the program's counters, and [`ProgramStats`], the kernel's
//!   run statistics of a program (the dispatch program's, and `hermes-dsr`'s);
//! - `kernel_fds`: [`KernelFds`], the descriptors an upgrade hands to the successor;
//! - `error`: [`Error`], the loader's error, and [`error_chain`], the helpers the
//!   workspace's other loaders report their errors with.
//!
//! Userspace and the program share three `BPF_F_MMAPABLE` arrays, mapped
//! into this process so that publishing the eligible workers, updating a
//! worker's state and reading the counters are plain memory operations,
//! never syscalls:
//!
//! - [`layout::Control`]: the list of eligible workers (double-buffered, with
//!   a locality table per CPU), its publish time and the settings;
//! - [`layout::WorkerState`]: the Worker State Table, one cache line per worker;
//! - the counters: new connections placed per worker, fallbacks by reason, migrations.
//!
//! For each new connection the program draws two candidates from the list
//! with the connection's hash (with locality on, the worker on the CPU that
//! received the connection is the first) and takes the less loaded. It falls
//! back to the kernel's own hash when the list was never published or is
//! older than the staleness limit, when it has fewer than the minimum
//! candidates, or when the chosen
//! workers have no listener; each fallback is counted by reason. When a
//! listener closes, its queued connections migrate to another worker.
//!
//! ```no_run
//! use std::net::TcpListener;
//! use hermes_bpf::{Dispatcher, monotonic_ns};
//!
//! # fn listeners() -> Vec<TcpListener> { vec![] }
//! let listeners: Vec<TcpListener> = listeners(); // SO_REUSEPORT, one per worker
//! let mut dispatcher = Dispatcher::load_for(listeners.len())?;
//! for (worker, listener) in listeners.iter().enumerate() {
//!     dispatcher.insert(worker, listener)?;
//! }
//! dispatcher.attach(&listeners[0])?;
//! dispatcher.settings().configure(1, 50_000_000, Default::default());
//! // Workers 0 and 2 take new connections.
//! dispatcher.settings().publish([0, 2], monotonic_ns(), 0);
//! # Ok::<(), hermes_bpf::Error>(())
//! ```
#![deny(missing_docs)]

mod counters;
mod dispatcher;
mod error;
mod kernel_fds;
pub mod layout;
mod mapping;
mod region;

/// Helpers for reporting loader errors, for the workspace's other loaders.
pub mod error_chain {
    pub use crate::error::{Refusal, chain, os_error};
}

use std::sync::{Arc, atomic::AtomicU64};

pub use counters::{Counters, ProgramStats};
pub use dispatcher::{DispatchMode, Dispatcher};
pub use error::Error;
pub use kernel_fds::KernelFds;
use layout::{Control, WorkerState};
pub use region::{LayoutMismatch, Region, TakeArrayError};

/// The compiled kernel program (`bpf/hermes.bpf.c`, rebuilt by `cargo xtask bpf`).
pub static OBJECT: &[u8] = aya::include_bytes_aligned!("../bpf/hermes.bpf.o");

/// `CLOCK_MONOTONIC` in nanoseconds: the clock of the program's
/// `bpf_ktime_get_ns()`, used for publish times and heartbeats.
pub fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: `ts` is a valid out-pointer; CLOCK_MONOTONIC always exists.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// The settings and list region, shared by every scheduler.
pub type ControlRegion = Arc<Region<Control>>;
/// The Worker State Table, shared by every worker.
pub type WorkerTable = Arc<Region<WorkerState>>;
/// The counters region.
pub type CounterRegion = Arc<Region<AtomicU64>>;
