//! The hand-over logic of an upgrade (see [`crate::upgrade`]): what the
//! running server offers and does once a successor takes over or fails
//! ([`offer`]), the successor's checks of an offer and the slots it takes
//! beside the servers that hold some ([`check_offer`], [`successor_base`];
//! the holders are `holders`'), and the takeover once the successor's
//! workers serve ([`complete`]). The messages themselves are
//! [`crate::upgrade::protocol`]'s.

use std::{io, os::fd::OwnedFd, sync::atomic::Ordering};

use hermes_bpf::layout::LAYOUT_VERSION;

use super::server::ServerState;
use crate::{
    config::Mode,
    upgrade::{
        Upgrade, UpgradeError, Upgraded,
        offer::Held,
        protocol::{self, Offer},
    },
};

/// Hands `server` over to a successor started as `upgrade` says, and waits
/// until it serves: then every worker of `server` begins its drain. On
/// failure `server` keeps serving (taking the list back if the successor
/// had taken it) and the error is logged and returned.
pub(crate) fn offer(server: &ServerState, upgrade: Upgrade) -> Result<Upgraded, UpgradeError> {
    let mode = server.dispatch.mode();
    if mode == Mode::SharedListener {
        return Err(UpgradeError::Unsupported { mode });
    }
    // Acquire/Release: only the flag's own value matters here.
    if server.handover.upgrading.swap(true, Ordering::AcqRel) {
        return Err(UpgradeError::InProgress);
    }
    let result = send_offer(server, upgrade);
    match &result {
        Ok(done) => {
            // At once: from now on only a stale list (the kernel's hash
            // then) could still send a connection to these listeners.
            tracing::info!(successor = done.pid, "upgrade: the successor serves; draining this server");
            for id in 0..server.worker_count() {
                server.begin_drain(id);
            }
        }
        Err(e) => {
            if server.dispatch.dispatcher().is_some() && !server.dispatch.owns_list() {
                // The successor took the list (and may have attached a
                // program of its own): both come back.
                server.take_over();
                server.dispatch.reattach(&server.workers);
            }
            tracing::error!(error = %e, "upgrade failed; this server keeps serving");
            server.handover.upgrading.store(false, Ordering::Release);
        }
    }
    result
}

/// Duplicates the listeners and the kernel state, and offers them.
fn send_offer(server: &ServerState, upgrade: Upgrade) -> Result<Upgraded, UpgradeError> {
    let listeners: Vec<OwnedFd> = server
        .workers
        .iter()
        .filter_map(|w| w.with_listener(|fd| fd.try_clone_to_owned()))
        .collect::<io::Result<_>>()
        .map_err(|e| UpgradeError::io("duplicating the listeners", e))?;
    if listeners.is_empty() {
        return Err(UpgradeError::Protocol("no worker has a listener to hand over".into()));
    }
    let kernel = match server.dispatch.dispatcher() {
        Some(d) => Some(d.export_fds().map_err(|e| UpgradeError::io("duplicating the kernel maps", e))?),
        None => None,
    };
    let offer = Offer {
        pid: std::process::id(),
        mode: server.dispatch.mode(),
        layout: server.dispatch.control().layout_version(),
        slot_base: server.dispatch.slot_base,
        workers: server.worker_count(),
        listeners: listeners.len(),
        kernel: kernel.is_some(),
        held: server.handover.holders.live(),
    };
    protocol::offer(upgrade, &offer, &listeners, kernel.as_ref())
}

/// A successor whose workers serve takes over: the list moves to its
/// workers in one step, the running server is told, and the inherited
/// listeners are let go (the running server stops them as it drains).
/// Under systemd (`NOTIFY_SOCKET` set), a server tells it `READY=1` once
/// every worker serves, and a successor also `MAINPID=` its own pid.
pub(crate) fn complete(server: &ServerState) {
    let inherited = server.handover.inherited.lock().unwrap_or_else(|e| e.into_inner()).take();
    let Some(inherited) = inherited else {
        // A first start under systemd (`Type=notify`): serving now.
        if std::env::var_os("NOTIFY_SOCKET").is_some()
            && let Err(e) = sd_notify::notify(&[sd_notify::NotifyState::Ready])
        {
            tracing::warn!(error = %e, "could not tell systemd the server is ready (NOTIFY_SOCKET)");
        }
        return;
    };
    if server.dispatch.runs_own_program() {
        // The group runs the replaced server's program until this one's
        // is attached, through any of this server's listeners.
        server.dispatch.reattach(&server.workers);
    }
    if server.dispatch.dispatcher().is_some() {
        server.take_over();
    }
    // Under systemd (`NotifyAccess=all`), the service's main process is
    // this one from now on: the old one is about to exit.
    if std::env::var_os("NOTIFY_SOCKET").is_some()
        && let Err(e) = sd_notify::notify(&[
            sd_notify::NotifyState::MainPid(std::process::id()),
            sd_notify::NotifyState::Ready,
        ])
    {
        tracing::warn!(error = %e, "upgrade: could not tell systemd the new main pid (NOTIFY_SOCKET)");
    }
    match protocol::ready(&inherited.channel) {
        Ok(()) => tracing::info!(
            old = inherited.offer.pid,
            "upgrade: serving; new connections come here and the old server drains"
        ),
        Err(e) => tracing::warn!(
            old = inherited.offer.pid,
            error = %e,
            "upgrade: serving, but the old server could not be told (it may have exited)"
        ),
    }
}

/// The first slot of the lowest run of `workers` slots among the maps'
/// `slots` that overlaps none of `held` (the running server's slots, pid
/// `running`, and those of older servers that still drain).
///
/// # Errors
/// [`UpgradeError::NoFreeSlots`] when no such run exists, naming who holds
/// what and what to do: wait for the draining servers to exit, or start a
/// successor of fewer workers.
pub(crate) fn successor_base(
    slots: usize,
    workers: usize,
    held: &[Held],
    running: u32,
) -> Result<usize, UpgradeError> {
    let free = |base: usize| {
        base + workers <= slots
            && held.iter().all(|h| h.count == 0 || base + workers <= h.base || base >= h.base + h.count)
    };
    // A lowest free run starts at 0 or right after a held range.
    if let Some(base) =
        std::iter::once(0).chain(held.iter().map(|h| h.base + h.count)).filter(|&b| free(b)).min()
    {
        return Ok(base);
    }
    let mut sorted = held.to_vec();
    sorted.sort_by_key(|h| h.base);
    let holders: Vec<String> = sorted
        .iter()
        .map(|h| {
            let who = if h.pid == running { "the running server" } else { "an older server, still draining" };
            format!("pid {} ({who}) holds slots {:?}", h.pid, h.slots())
        })
        .collect();
    let draining: Vec<u32> = sorted.iter().map(|h| h.pid).filter(|&p| p != running).collect();
    let advice = if draining.is_empty() {
        let (mut widest, mut from) = (0, 0);
        for h in &sorted {
            widest = widest.max(h.base.saturating_sub(from));
            from = from.max(h.base + h.count);
        }
        widest = widest.max(slots.saturating_sub(from));
        format!("a successor of at most {widest} workers fits")
    } else {
        let pids: Vec<String> = draining.iter().map(u32::to_string).collect();
        format!(
            "wait until pid {} has exited (it drains for at most its drain timeout), then upgrade again",
            pids.join(" and pid ")
        )
    };
    Err(UpgradeError::NoFreeSlots {
        draining,
        detail: format!(
            "its {workers} workers need {workers} free slots in a row of the {slots}, but {}; {advice}",
            holders.join(", ")
        ),
    })
}

/// The layout check of an offer, before any map is touched.
pub(crate) fn check_offer(offer: &Offer, mode: Mode) -> Result<(), UpgradeError> {
    if mode != offer.mode {
        return Err(UpgradeError::Mismatch(format!(
            "the running server is in mode {}, this one in {mode}",
            offer.mode
        )));
    }
    if offer.kernel && offer.layout != LAYOUT_VERSION {
        return Err(UpgradeError::LayoutVersion { found: offer.layout, want: LAYOUT_VERSION });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::holders::Holders;

    fn held(pid: u32, base: usize, count: usize) -> Held {
        Held { pid, base, count }
    }

    #[test]
    fn successor_slots_never_overlap_the_running_servers() {
        assert_eq!(successor_base(64, 4, &[held(1, 0, 4)], 1).unwrap(), 4);
        assert_eq!(successor_base(64, 4, &[held(1, 4, 4)], 1).unwrap(), 0);
        assert_eq!(successor_base(64, 8, &[held(1, 4, 4)], 1).unwrap(), 8);
        assert_eq!(successor_base(64, 32, &[held(1, 0, 32)], 1).unwrap(), 32);
        let err = successor_base(64, 30, &[held(1, 0, 40)], 1).unwrap_err();
        assert!(matches!(&err, UpgradeError::NoFreeSlots { draining, .. } if draining.is_empty()), "{err}");
        assert!(err.to_string().contains("at most 24 workers"), "says what fits: {err}");
    }

    /// A (slots 0..2) still drains while B (2..4) upgrades: its successor
    /// takes neither, and once every slot is held it refuses, naming the
    /// draining server's pid and what to do.
    #[test]
    fn slots_an_older_server_still_drains_on_are_never_taken() {
        let (a, b) = (held(100, 0, 2), held(200, 2, 2));
        assert_eq!(successor_base(64, 2, &[b, a], 200).unwrap(), 4);
        // Once A has exited, its slots are free again.
        assert_eq!(successor_base(64, 2, &[b], 200).unwrap(), 0);
        // A 2x-sized map with both servers in it has no room for a third.
        let (a, b) = (held(100, 0, 32), held(200, 32, 32));
        let err = successor_base(64, 32, &[b, a], 200).unwrap_err();
        let UpgradeError::NoFreeSlots { draining, .. } = &err else { panic!("{err}") };
        assert_eq!(draining, &[100]);
        let text = err.to_string();
        assert!(
            text.contains("pid 100 (an older server, still draining) holds slots 0..32")
                && text.contains("pid 200 (the running server) holds slots 32..64")
                && text.contains("wait until pid 100 has exited"),
            "{text}"
        );
    }

    /// The pidfd of a process reads as exited once it has, and its slots
    /// are forgotten; an offering server whose pid runs no process holds
    /// nothing.
    #[test]
    fn holders_are_forgotten_once_they_exit() {
        let mut child = std::process::Command::new("sleep").arg("30").spawn().expect("start sleep");
        let offer = Offer {
            pid: child.id(),
            mode: Mode::Hermes,
            layout: LAYOUT_VERSION,
            slot_base: 4,
            workers: 2,
            listeners: 2,
            kernel: true,
            held: vec![held(std::process::id(), 0, 4)],
        };
        let holders = Holders::watch(&offer).expect("pidfds");
        assert_eq!(holders.live(), vec![held(child.id(), 4, 2), held(std::process::id(), 0, 4)]);
        child.kill().expect("kill");
        child.wait().expect("reap");
        assert_eq!(holders.live(), vec![held(std::process::id(), 0, 4)], "the exited one is forgotten");
        let gone = Holders::watch(&offer).expect("pidfds");
        assert_eq!(gone.live(), vec![held(std::process::id(), 0, 4)], "an exited pid holds nothing");
    }

    #[test]
    fn a_layout_version_of_another_release_is_refused() {
        let o = Offer {
            pid: 1,
            mode: Mode::Hermes,
            layout: LAYOUT_VERSION + 1,
            slot_base: 0,
            workers: 2,
            listeners: 2,
            kernel: true,
            held: Vec::new(),
        };
        let err = check_offer(&o, Mode::Hermes).unwrap_err();
        assert!(
            matches!(err, UpgradeError::LayoutVersion { found, want } if found == LAYOUT_VERSION + 1 && want == LAYOUT_VERSION)
        );
        assert!(matches!(check_offer(&o, Mode::KernelHash), Err(UpgradeError::Mismatch(_))));
    }
}
