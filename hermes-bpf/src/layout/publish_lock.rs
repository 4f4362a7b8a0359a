//! [`PublishLock`]: the try-lock in the control map under which a server
//! checks and publishes the list of eligible workers, holding the pid of
//! the process that holds it, so that a successor taking the list over
//! ([`Control::take_over`](super::Control::take_over)) can tell a holder
//! that died holding it and never waits for it without bound.

use std::{
    sync::{
        OnceLock,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

/// How long [`Control::take_over`](super::Control::take_over) waits for the
/// holder of the publish lock before taking the lock from it. A publish
/// holds it for a few stores per eligible worker (microseconds); only a
/// holder that stalled or died holds it this long.
pub const TAKE_OVER_PATIENCE: Duration = Duration::from_millis(100);

/// The publish lock, taken by [`Control::take_over`](super::Control::take_over)
/// from a holder that held it past [`TAKE_OVER_PATIENCE`] or exited holding it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StolenLock {
    /// The holder's pid.
    pub holder: u32,
    /// Whether the holder had exited (else it held the lock past the patience).
    pub exited: bool,
    /// How long the take-over waited.
    pub waited: Duration,
}

/// The lock word: the pid of the process holding it, 0 when free.
#[repr(transparent)]
pub(super) struct PublishLock(pub(super) AtomicU64);

/// The publish lock held by this process; released on drop (also when the
/// holder panics: a panicking worker never leaves the lock held).
pub(super) struct LockGuard<'a>(&'a AtomicU64, u64);

impl Drop for LockGuard<'_> {
    fn drop(&mut self) {
        // Release pairs with the Acquire that takes the lock. Only if it is
        // still ours: a take-over may have taken it from a holder that
        // stalled.
        let _ = self.0.compare_exchange(self.1, 0, Ordering::Release, Ordering::Relaxed);
    }
}

impl PublishLock {
    /// Takes the lock if it is free.
    pub(super) fn try_lock(&self) -> Option<LockGuard<'_>> {
        let me = this_pid();
        // Acquire on taking the lock pairs with the Release that frees it:
        // the holder sees every store of the previous holder's publish (and
        // the owner a takeover stored under the lock).
        self.0.compare_exchange(0, me, Ordering::Acquire, Ordering::Relaxed).ok()?;
        Some(LockGuard(&self.0, me))
    }

    /// Takes the lock, waiting for a publish in progress at most
    /// `patience`; a lock still held then, or held by a process that has
    /// exited, is taken from its holder, which is returned. A holder that
    /// only stalled may then store one list beside the taker's: a
    /// connection or two placed by a decision a tick old, never a lock held
    /// for good.
    pub(super) fn lock(&self, patience: Duration) -> (LockGuard<'_>, Option<StolenLock>) {
        let me = this_pid();
        let start = Instant::now();
        loop {
            if let Some(guard) = self.try_lock() {
                return (guard, None);
            }
            // Relaxed: the holder's pid, a hint; taking the lock is the
            // Acquire compare-exchange.
            let holder = self.0.load(Ordering::Relaxed);
            let exited = holder != 0 && !process_alive(holder);
            if holder != 0
                && (exited || start.elapsed() >= patience)
                && self.0.compare_exchange(holder, me, Ordering::Acquire, Ordering::Relaxed).is_ok()
            {
                let stolen = StolenLock { holder: holder as u32, exited, waited: start.elapsed() };
                return (LockGuard(&self.0, me), Some(stolen));
            }
            std::thread::yield_now();
        }
    }
}

/// This process's pid, read once: `getpid` is a syscall, and a publish
/// makes none.
fn this_pid() -> u64 {
    static PID: OnceLock<u64> = OnceLock::new();
    *PID.get_or_init(|| u64::from(std::process::id()))
}

/// Whether process `pid` runs (signal 0: existence and permission only).
fn process_alive(pid: u64) -> bool {
    let Ok(pid) = libc::pid_t::try_from(pid) else { return false };
    // SAFETY: `kill` with signal 0 sends nothing; it only checks the pid.
    let r = unsafe { libc::kill(pid, 0) };
    r == 0 || std::io::Error::last_os_error().raw_os_error() != Some(libc::ESRCH)
}
