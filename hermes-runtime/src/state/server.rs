//! [`ServerState`]: one running server as its workers, its handle and its
//! stats see it. It is opened by `open`, worked on every tick by `tick`,
//! drained by `drain`, and handed over to a successor by `handover`.

use std::sync::{Mutex, atomic::AtomicBool};

use hermes_bpf::WorkerTable;

use super::{
    dispatch::Dispatch, holders::Holders, load::LoadCell, pass_state::PassState, placement::Placement,
    workers::Workers,
};
use crate::{config::Config, upgrade::protocol::Inherited};

/// One running server (see the module).
pub(crate) struct ServerState {
    pub(crate) config: Config,
    /// The Worker State Table: slot `i` is worker `i` (the kernel's map in
    /// Hermes mode, starting at the server's first slot; process memory
    /// otherwise).
    pub(crate) table: WorkerTable,
    pub(crate) dispatch: Dispatch,
    pub(crate) workers: Workers,
    pub(crate) placement: Placement,
    pub(crate) handover: Handover,
    /// `CLOCK_MONOTONIC` nanoseconds of the last accept-queue sample (see
    /// `tick`).
    pub(crate) sampled_ns: std::sync::atomic::AtomicU64,
    /// The first worker of the next accept-queue sample, past
    /// `SAMPLE_AT_MOST` workers (see `tick`).
    pub(crate) sample_cursor: std::sync::atomic::AtomicUsize,
    /// The scheduler pass's scratch and its set of hung workers (see `pass`).
    pub(crate) pass: PassState,
    /// The host's load, refreshed by the tick (see `load`).
    pub(crate) load: std::sync::Arc<LoadCell>,
}

/// Where the server is in an upgrade.
#[derive(Debug, Default)]
pub(crate) struct Handover {
    /// What a successor inherited, until its workers serve and it takes over.
    pub(crate) inherited: Mutex<Option<Inherited>>,
    /// Set while this server hands over to a successor, and for good once
    /// one took over.
    pub(crate) upgrading: AtomicBool,
    /// The older servers that still hold slots of the kernel maps (a
    /// successor's; empty for a server that created the maps).
    pub(crate) holders: Holders,
}

impl ServerState {
    /// The state of a server whose listeners are bound: `dispatch` places
    /// its connections on `config.workers` workers in `table`; a successor
    /// has what it `inherited` and the `holders` of other slots.
    pub(crate) fn new(
        config: Config,
        table: WorkerTable,
        dispatch: Dispatch,
        inherited: Option<Inherited>,
        holders: Holders,
    ) -> Self {
        let config_workers = config.workers;
        let workers = Workers::new(config.workers, config.pin_workers);
        let placement = Placement::new(table.clone(), &config);
        Self {
            config,
            table,
            dispatch,
            workers,
            placement,
            handover: Handover {
                inherited: Mutex::new(inherited),
                upgrading: AtomicBool::new(false),
                holders,
            },
            sampled_ns: std::sync::atomic::AtomicU64::new(0),
            sample_cursor: std::sync::atomic::AtomicUsize::new(0),
            pass: PassState::new(config_workers),
            load: Default::default(),
        }
    }

    /// How many workers the server has.
    pub(crate) fn worker_count(&self) -> usize {
        self.config.workers
    }
}
