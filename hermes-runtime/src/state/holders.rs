//! [`Holders`]: the live servers that hold slots of the kernel maps beside
//! this one (after upgrades in a row), watched by their pidfds, so that a
//! successor never takes a slot a live process still writes.

use std::{
    io,
    os::fd::{AsFd, OwnedFd},
    sync::Mutex,
};

use crate::{
    sys,
    upgrade::{offer::Held, protocol::Offer},
};

/// The servers that held slots of the kernel maps when this one took them
/// over (the server it replaced, and the older ones that server still saw
/// draining), each with a pidfd: a slot is never taken while its holder
/// runs, since a draining server's workers write their slots until they
/// exit (their last requests end, they mark their slots empty).
///
/// A pidfd refers to one process whatever reuses its pid later, and reads
/// as exited once it has. The successor opens them on receiving the offer:
/// the offering server is certainly alive then (it waits for the answer).
/// An older server it lists may have exited in between and its pid been
/// reused; the new process is then taken for the holder, which only keeps
/// slots free longer than needed, never hands out a held one.
#[derive(Debug, Default)]
pub(crate) struct Holders(Mutex<Vec<(Held, OwnedFd)>>);

impl Holders {
    /// Watches the servers that hold slots according to `offer`: the
    /// offering server and the older ones it lists. One that has exited
    /// already is left out.
    ///
    /// # Errors
    /// When a pidfd cannot be opened (the slots' holder could not be
    /// watched; the hand-over is refused rather than risk reusing them).
    pub(crate) fn watch(offer: &Offer) -> io::Result<Self> {
        let mut watched = Vec::new();
        for held in std::iter::once(offer.own()).chain(offer.held.iter().copied()) {
            if let Some(fd) = sys::pidfd_open(held.pid)? {
                watched.push((held, fd));
            }
        }
        Ok(Self(Mutex::new(watched)))
    }

    /// The slots held by those still running; the ones that exited are
    /// forgotten.
    pub(crate) fn live(&self) -> Vec<Held> {
        let mut watched = self.0.lock().unwrap_or_else(|e| e.into_inner());
        watched.retain(|(_, fd)| !sys::has_exited(fd.as_fd()));
        watched.iter().map(|(held, _)| *held).collect()
    }
}
