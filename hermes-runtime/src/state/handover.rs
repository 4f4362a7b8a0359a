//! The hand-over logic of an upgrade (see [`crate::upgrade`]): what the
//! running server offers and does once a successor takes over or fails
//! ([`offer`]), the successor's checks of an offer and the slots it takes
//! ([`check_offer`], [`successor_base`]), and its takeover once its workers
//! serve ([`complete`]). The messages themselves are
//! [`crate::upgrade::protocol`]'s.

use std::{io, os::fd::OwnedFd, sync::atomic::Ordering};

use hermes_bpf::layout::LAYOUT_VERSION;

use super::server::ServerState;
use crate::{
    config::Mode,
    upgrade::{
        Upgrade, UpgradeError, Upgraded,
        protocol::{self, Offer},
    },
};

/// Hands `server` over to a successor started as `upgrade` says, and waits
/// until it serves: then every worker of `server` begins its drain. On
/// failure `server` keeps serving (taking the bitmap back if the successor
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
            // At once: from now on only a stale bitmap (the kernel's hash
            // then) could still send a connection to these listeners.
            tracing::info!(successor = done.pid, "upgrade: the successor serves; draining this server");
            for id in 0..server.worker_count() {
                server.begin_drain(id);
            }
        }
        Err(e) => {
            if server.dispatch.dispatcher().is_some() && !server.dispatch.owns_bitmap() {
                server.dispatch.take_over(server.eligible_now());
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
    };
    protocol::offer(upgrade, &offer, &listeners, kernel.as_ref())
}

/// A successor whose workers serve takes over: the bitmap moves to its
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
    if server.dispatch.dispatcher().is_some() {
        server.dispatch.take_over(server.eligible_now());
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

/// The first slot a successor of `workers` workers uses next to the running
/// server's slots `old_base..old_base + old_workers`: below them when they
/// fit, else right after them.
pub(crate) fn successor_base(
    old_base: usize,
    old_workers: usize,
    workers: usize,
) -> Result<usize, UpgradeError> {
    let max = hermes_bpf::layout::MAX_WORKERS;
    if workers <= old_base {
        Ok(0)
    } else if old_base + old_workers + workers <= max {
        Ok(old_base + old_workers)
    } else {
        Err(UpgradeError::Mismatch(format!(
            "the running server uses slots {old_base}..{} of {max}; {workers} more workers do not fit beside them",
            old_base + old_workers
        )))
    }
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

    #[test]
    fn successor_slots_never_overlap_the_running_servers() {
        assert_eq!(successor_base(0, 4, 4).unwrap(), 4);
        assert_eq!(successor_base(4, 4, 4).unwrap(), 0);
        assert_eq!(successor_base(4, 4, 8).unwrap(), 8);
        assert_eq!(successor_base(0, 32, 32).unwrap(), 32);
        assert!(matches!(successor_base(0, 40, 30), Err(UpgradeError::Mismatch(_))));
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
        };
        let err = check_offer(&o, Mode::Hermes).unwrap_err();
        assert!(
            matches!(err, UpgradeError::LayoutVersion { found, want } if found == LAYOUT_VERSION + 1 && want == LAYOUT_VERSION)
        );
        assert!(matches!(check_offer(&o, Mode::KernelHash), Err(UpgradeError::Mismatch(_))));
    }
}
