//! Opening a server: loading the dispatch program (or falling back to the
//! kernel's hash), binding one listener per worker (or taking those systemd
//! passes, or the running server's group as its successor), and placing
//! them in the kernel's socket array.

use std::{io, net::SocketAddr, os::fd::OwnedFd, sync::Arc, sync::Mutex, time::Duration};

use hermes_bpf::{Counters, DispatchMode, Dispatcher, Region, WorkerTable, layout::WorkerPhase};

use super::{
    dispatch::{Dispatch, Placer, bpf_error},
    handover,
    holders::Holders,
    server::ServerState,
};
use crate::{
    config::{Config, Mode},
    sys,
    upgrade::{UpgradeError, protocol},
};

/// A server's state and one listener per worker (`None` in the
/// shared-listener mode, where the workers share one).
pub(crate) type Opened = (Arc<ServerState>, Vec<Option<std::net::TcpListener>>);

/// Opens the server `config` describes: as the successor of a running
/// server when the environment names a hand-over socket (and the builder
/// allows it), else afresh.
pub(crate) fn open(config: Config) -> io::Result<Opened> {
    if config.upgrade_from_env
        && let Some(channel) = protocol::channel_from_env()?
    {
        return open_successor(config, channel);
    }
    open_fresh(config)
}

/// Loads the program (or falls back), binds every listener and places them
/// in the kernel's socket array.
fn open_fresh(config: Config) -> io::Result<Opened> {
    let program = match config.mode {
        Mode::Hermes if config.require_ebpf => Some(Dispatcher::load_for(config.workers).map_err(bpf_error)?),
        Mode::Hermes => match Dispatcher::load_or_fallback(config.workers) {
            DispatchMode::Ebpf(d) => Some(*d),
            DispatchMode::KernelHash { reason } => {
                return open_bound(config, |_| Ok(Placer::Hash { reason: Some(reason.to_string()) }));
            }
        },
        _ => None,
    };
    open_bound(config, move |listeners| match program {
        Some(mut d) => {
            for (i, l) in listeners.iter().enumerate() {
                d.insert(i, l.as_ref().expect("bound above")).map_err(bpf_error)?;
            }
            d.attach(listeners[0].as_ref().expect("bound above")).map_err(bpf_error)?;
            let counters = d.counter_region().clone();
            Ok(Placer::Program { dispatcher: Box::new(Mutex::new(d)), counters })
        }
        None => Ok(Placer::Hash { reason: None }),
    })
}

/// Binds the listeners (or takes systemd's), then lets `placer` place them
/// and says how the connections are placed.
fn open_bound(
    config: Config,
    placer: impl FnOnce(&[Option<std::net::TcpListener>]) -> io::Result<Placer>,
) -> io::Result<Opened> {
    let (addr, listeners, shared) = bind(&config)?;
    let placer = match shared {
        Some(l) => Placer::SharedListener(l),
        None => placer(&listeners)?,
    };
    let dispatch = Dispatch::new(addr, placer, 0);
    let table = dispatch
        .dispatcher()
        .map_or_else(|| Arc::new(Region::in_memory(config.workers)), |d| d.table().clone());
    reset_slots(&table, config.workers);
    // The kernel honours any non-empty list: the scheduler itself keeps
    // `min_candidates` when enough healthy workers exist, and a list
    // without the hung workers beats the hash, which would include them.
    configure(&dispatch, &config);
    dispatch.claim();
    Ok((Arc::new(ServerState::new(config, table, dispatch, None, Holders::default())), listeners))
}

/// One listener per worker on the configured address (or systemd's), or
/// the shared listener of the shared-listener mode.
#[allow(clippy::type_complexity)]
fn bind(
    config: &Config,
) -> io::Result<(SocketAddr, Vec<Option<std::net::TcpListener>>, Option<Arc<std::net::TcpListener>>)> {
    let n = config.workers;
    // Never join a group this server did not create (its program would
    // be replaced by ours). The probe and the first bind are a few
    // microseconds apart; a server started in between joins our group.
    let activated = if config.socket_activation { sys::listen_fds()? } else { None };
    if activated.is_none() {
        sys::refuse_taken_port(config.addr)?;
    }
    let mut listeners = Vec::with_capacity(n);
    if let Some(passed) = activated {
        // Socket activation: the passed listeners serve the first workers;
        // the others bind their own into the same group.
        if config.mode == Mode::SharedListener || passed.len() > n {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "socket activation passed {} listeners to a server of {n} workers in mode {}; \
                     it takes at most one per worker, in mode hermes or kernel-hash",
                    passed.len(),
                    config.mode
                ),
            ));
        }
        let addr = passed[0].local_addr()?;
        tracing::info!(%addr, passed = passed.len(), workers = n, "socket activation: serving on the passed listeners");
        listeners.extend(passed.into_iter().map(Some));
        while listeners.len() < n {
            listeners.push(Some(sys::listener(addr, true, config.backlog)?));
        }
        return Ok((addr, listeners, None));
    }
    if config.mode == Mode::SharedListener {
        let l = sys::listener(config.addr, false, config.backlog)?;
        let addr = l.local_addr()?;
        listeners.resize_with(n, || None);
        return Ok((addr, listeners, Some(Arc::new(l))));
    }
    let first = sys::listener(config.addr, true, config.backlog)?;
    let addr = first.local_addr()?;
    listeners.push(Some(first));
    for _ in 1..n {
        listeners.push(Some(sys::listener(addr, true, config.backlog)?));
    }
    Ok((addr, listeners, None))
}

/// The successor's side of an upgrade: receives the running server's
/// offer on `channel`, takes its maps over (or refuses the hand-over,
/// telling the running server why), binds this server's listeners into the
/// running server's group and places them in free slots. The takeover
/// itself happens once the workers serve ([`handover::complete`]).
fn open_successor(config: Config, channel: OwnedFd) -> io::Result<Opened> {
    let n = config.workers;
    let (inherited, kernel) = protocol::receive(channel, Duration::from_secs(10)).map_err(|(ch, e)| {
        protocol::refuse(&ch, &e);
        io::Error::from(e)
    })?;
    let offer = inherited.offer.clone();
    let opened = (|| -> Result<_, UpgradeError> {
        // The running server's effective mode decides: a Hermes successor
        // of a server that fell back to the kernel's hash runs with the
        // hash too, unless it requires the program.
        let mode = match (config.mode, offer.mode) {
            (Mode::Hermes, Mode::KernelHash) if !config.require_ebpf => Mode::KernelHash,
            (m, _) => m,
        };
        handover::check_offer(&offer, mode)?;
        let bpf_mismatch = |e: hermes_bpf::Error| match e {
            hermes_bpf::Error::LayoutVersion { found, want } => UpgradeError::LayoutVersion { found, want },
            other => UpgradeError::Mismatch(other.to_string()),
        };
        // A binary that carries another program than the running server's
        // (a fixed release of the same layout) runs its own, in maps of its
        // own: nobody else holds slots there.
        let own = kernel.as_ref().and_then(|k| own_program(n, k));
        let previous = match (&own, &kernel) {
            (Some(_), Some(k)) => Some(k.map_control().map_err(bpf_mismatch)?),
            _ => None,
        };
        // The slots of the running server and of the older ones that still
        // drain are watched now, while the running server certainly runs.
        let holders = match (&kernel, &own) {
            (Some(_), None) => Holders::watch(&offer)
                .map_err(|e| UpgradeError::io("watching the servers holding slots", e))?,
            _ => Holders::default(),
        };
        let base = match (&kernel, &own) {
            (Some(k), None) => {
                let slots =
                    Dispatcher::inherited_slots(k).map_err(|e| UpgradeError::Mismatch(e.to_string()))?;
                handover::successor_base(slots, n, &holders.live(), offer.pid)?
            }
            _ => 0,
        };
        let mut dispatcher = match (own, kernel) {
            (Some(own), _) => Some(own),
            (None, Some(k)) => Some(Dispatcher::inherit(k, base).map_err(bpf_mismatch)?),
            (None, None) => None,
        };
        let addr = inherited.listeners[0]
            .local_addr()
            .map_err(|e| UpgradeError::io("reading the inherited listener's address", e))?;
        if config.addr.port() != 0 && config.addr != addr {
            return Err(UpgradeError::Mismatch(format!(
                "the running server listens on {addr}, this one is set to {}",
                config.addr
            )));
        }
        // These join the inherited listeners' group (same address,
        // SO_REUSEPORT, same user), and with it the group's program.
        let mut listeners = Vec::with_capacity(n);
        for i in 0..n {
            let l = sys::listener(addr, true, config.backlog)
                .map_err(|e| UpgradeError::io("binding the successor's listeners", e))?;
            if let Some(d) = &mut dispatcher {
                d.insert(i, &l).map_err(|e| UpgradeError::Mismatch(e.to_string()))?;
            }
            listeners.push(Some(l));
        }
        Ok((base, dispatcher, previous, addr, listeners, holders))
    })();
    let (base, dispatcher, previous, addr, listeners, holders) = match opened {
        Ok(v) => v,
        Err(e) => {
            tracing::error!(error = %e, old = offer.pid, "upgrade: refusing the hand-over");
            protocol::refuse(&inherited.channel, &e);
            return Err(e.into());
        }
    };
    let placer = match dispatcher {
        Some(d) => {
            let counters = d.counter_region().clone();
            for id in 0..n {
                Counters::clear_recent(&counters, base + id);
            }
            Placer::Program { dispatcher: Box::new(Mutex::new(d)), counters }
        }
        None => Placer::Hash { reason: None },
    };
    let dispatch = match previous {
        Some(p) => Dispatch::new(addr, placer, base).replacing_program_of(p),
        None => Dispatch::new(addr, placer, base),
    };
    let table: WorkerTable =
        dispatch.dispatcher().map_or_else(|| Arc::new(Region::in_memory(n)), |d| d.table().clone());
    reset_slots(&table, n);
    // The kernel honours any non-empty list (see `open_bound`).
    configure(&dispatch, &config);
    tracing::info!(
        old = offer.pid,
        %addr,
        slot_base = base,
        draining = ?offer.held.iter().map(|h| h.pid).collect::<Vec<_>>(),
        listeners = inherited.listeners.len(),
        kernel_state = dispatch.dispatcher().is_some(),
        own_program = dispatch.runs_own_program(),
        "upgrade: took the running server's listeners and kernel state; starting the workers"
    );
    Ok((Arc::new(ServerState::new(config, table, dispatch, Some(inherited), holders)), listeners))
}

/// Stores the program's settings: any non-empty list is honoured, the
/// staleness limit, the fine filter and locality.
fn configure(dispatch: &Dispatch, config: &Config) {
    dispatch.control().configure(1, config.max_stale.as_nanos() as u64, config.fine_policy);
    dispatch.control().set_locality(config.locality);
}

/// Empties the first `n` slots of `table` and marks them starting.
fn reset_slots(table: &WorkerTable, n: usize) {
    for slot in table.iter().take(n) {
        slot.reset();
        slot.set_phase(WorkerPhase::Starting);
    }
}

/// This binary's program, loaded with maps of its own for `workers`
/// workers, when it differs from the running server's (`kernel`'s, by the
/// kernel's tags): a successor that carries a fixed program runs it rather
/// than inherit the old one. `None` when both are the same (the running
/// server's maps carry on, counters and all), or when it cannot tell
/// (logged; the running server's program carries on, as before).
fn own_program(workers: usize, kernel: &hermes_bpf::KernelFds) -> Option<Dispatcher> {
    let own = match Dispatcher::load_program_for(own_program_name(), workers) {
        Ok(d) => d,
        Err(e) => {
            tracing::warn!(error = %e, "upgrade: this binary's dispatch program could not be loaded to compare it with the running server's; keeping the running server's");
            return None;
        }
    };
    match (own.program_tag(), kernel.program_tag()) {
        (Ok(mine), Ok(running)) if mine == running => None,
        (Ok(mine), Ok(running)) => {
            tracing::info!(
                own = format_args!("{mine:016x}"),
                running = format_args!("{running:016x}"),
                "upgrade: this binary carries another dispatch program than the running server's; running it, with maps of its own"
            );
            Some(own)
        }
        (Err(e), _) | (_, Err(e)) => {
            tracing::warn!(error = %e, "upgrade: could not compare the dispatch programs; keeping the running server's");
            None
        }
    }
}

/// The program this binary runs: the dispatch program; in this crate's
/// tests, the floor program when `HERMES_TEST_OWN_PROGRAM=floor` (a
/// successor of the same maps' layout that carries another program).
fn own_program_name() -> &'static str {
    #[cfg(test)]
    if std::env::var("HERMES_TEST_OWN_PROGRAM").as_deref() == Ok("floor") {
        return hermes_bpf::layout::FLOOR_PROGRAM_NAME;
    }
    hermes_bpf::layout::PROGRAM_NAME
}
