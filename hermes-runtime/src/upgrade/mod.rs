//! Zero-downtime upgrade: a running server hands its listeners and the
//! kernel state (the dispatch program and its maps) to a successor process
//! over a Unix socket (`SCM_RIGHTS`).
//!
//! The hand-over, step by step:
//!
//! 1. [`ServerHandle::upgrade`](crate::ServerHandle::upgrade) makes a
//!    `SOCK_SEQPACKET` socket pair and starts the successor (by default the
//!    current binary again, with the same arguments), with its end of the
//!    pair in [`UPGRADE_FD_ENV`].
//! 2. The old server sends an offer: a short text header (protocol,
//!    [`LAYOUT_VERSION`](hermes_bpf::layout::LAYOUT_VERSION), its pid, mode, the slots its workers use) with the
//!    descriptors of its listeners and, in Hermes mode, of the program and
//!    its four maps (table, control, counters, socket array).
//! 3. The successor ([`Builder::upgrade_from_env`](crate::Builder::upgrade_from_env))
//!    checks the header (a different layout version is refused with
//!    [`UpgradeError::LayoutVersion`]), maps the inherited maps (nothing is
//!    reset: the counters carry on), binds its own `SO_REUSEPORT` listeners
//!    on the inherited address (they join the old listeners' group, and so
//!    its program) and places them in its own slots of the socket array: the
//!    lowest free run of slots beside the old server's and beside those of
//!    older servers that still drain after earlier upgrades (the offer lists
//!    them; the successor watches each with a pidfd until it exits), so no
//!    two live servers ever share a slot of the array, the table or the
//!    counters. With no room left it refuses, naming the pid that still
//!    drains ([`UpgradeError::NoFreeSlots`]).
//! 4. Once every worker of the successor serves, it takes the maps over
//!    ([`Control::take_over`](hermes_bpf::layout::Control::take_over)): in
//!    one step under the publish lock, the list moves to its workers and
//!    the old server's schedulers stop publishing. It answers `ready`.
//! 5. The old server then drains: its listeners leave the group and their
//!    queued connections migrate to the successor's listeners (the program
//!    is attached as `sk_reuseport/migrate`, and the list names only the
//!    successor's workers), its requests in flight finish, and it exits
//!    within its drain timeout.
//!
//! If the successor exits, refuses, or does not answer within the timeout,
//! the old server kills it if it still runs, takes the maps back if it had
//! lost them, keeps serving, and returns (and logs) why.
//!
//! Why descriptors rather than pins in bpffs: a descriptor passed over the
//! socket lives as long as a process holds it, needs no mounted bpffs
//! (machines often have none) and leaves nothing to clean up when both
//! processes are gone.

pub(crate) mod offer;
pub(crate) mod protocol;

use std::{process::Command, time::Duration};

use crate::config::Mode;

/// The environment variable that tells a successor which descriptor is its
/// end of the hand-over socket.
pub const UPGRADE_FD_ENV: &str = "HERMES_UPGRADE_FD";

/// Why an upgrade did not happen. In every case the old server keeps
/// serving.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum UpgradeError {
    /// The mode cannot hand its listeners over (the shared listener of
    /// [`Mode::SharedListener`] has no group to join).
    #[error("a server in mode {mode} cannot be upgraded in place (only hermes and kernel-hash can)")]
    Unsupported {
        /// The server's mode.
        mode: Mode,
    },
    /// An upgrade is already in progress on this server.
    #[error("an upgrade is already in progress")]
    InProgress,
    /// The successor could not be started.
    #[error("could not start the successor {command}: {source}")]
    Spawn {
        /// The command, as run.
        command: String,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// The successor exited before it took over.
    #[error("the successor (pid {pid}) exited with {status} before taking over")]
    SuccessorExited {
        /// Its pid.
        pid: u32,
        /// How it exited.
        status: std::process::ExitStatus,
    },
    /// The successor refused the hand-over, for the reason it gave.
    #[error("the successor (pid {pid}) refused the hand-over: {reason}")]
    Refused {
        /// Its pid.
        pid: u32,
        /// Its message.
        reason: String,
    },
    /// The successor did not answer within the timeout; it was killed.
    #[error("the successor (pid {pid}) did not take over within {timeout:?}; it was stopped")]
    Timeout {
        /// Its pid.
        pid: u32,
        /// The timeout.
        timeout: Duration,
    },
    /// The maps of the running server have another layout version (seen by
    /// the successor).
    #[error(
        "the running server's maps have layout version {found}, this server needs {want}; \
         the hand-over is refused and the running server keeps serving"
    )]
    LayoutVersion {
        /// The version in the running server's offer and maps.
        found: u64,
        /// This server's [`LAYOUT_VERSION`](hermes_bpf::layout::LAYOUT_VERSION).
        want: u64,
    },
    /// The successor's settings do not fit the running server's (mode,
    /// address, too many workers for the free slots).
    #[error("the successor's settings do not fit the running server's: {0}")]
    Mismatch(String),
    /// The kernel maps have no run of free slots for the successor's
    /// workers beside the slots live servers hold: the running server's,
    /// and those of older servers that still drain after earlier upgrades
    /// (their pids in `draining`). A slot is never shared with a live
    /// server (its workers write it until they exit). The message names
    /// each holder and what to do: wait for the draining servers to exit,
    /// or start a successor of fewer workers.
    #[error("the kernel maps have no room for the successor's workers: {detail}")]
    NoFreeSlots {
        /// The older servers that still drain and hold slots.
        draining: Vec<u32>,
        /// Who holds which slots, and what to do.
        detail: String,
    },
    /// The hand-over socket failed or carried something unexpected.
    #[error("hand-over protocol: {0}")]
    Protocol(String),
    /// A system call of the hand-over failed.
    #[error("hand-over: {what}: {source}")]
    Io {
        /// The step.
        what: &'static str,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
}

impl UpgradeError {
    pub(crate) fn io(what: &'static str, source: impl Into<std::io::Error>) -> Self {
        Self::Io { what, source: source.into() }
    }
}

impl From<UpgradeError> for std::io::Error {
    fn from(e: UpgradeError) -> Self {
        let kind = match &e {
            UpgradeError::LayoutVersion { .. } | UpgradeError::Mismatch(_) => std::io::ErrorKind::InvalidData,
            UpgradeError::Unsupported { .. } => std::io::ErrorKind::Unsupported,
            UpgradeError::Timeout { .. } => std::io::ErrorKind::TimedOut,
            UpgradeError::NoFreeSlots { .. } => std::io::ErrorKind::ResourceBusy,
            _ => std::io::ErrorKind::Other,
        };
        std::io::Error::new(kind, e)
    }
}

/// How to start the successor: [`Upgrade::new`] re-executes the current
/// binary with the same arguments and environment; [`Upgrade::command`]
/// runs a command of your own (it must start a server built with
/// [`Builder::upgrade_from_env`](crate::Builder::upgrade_from_env)).
///
/// ```no_run
/// # fn demo(handle: hermes_runtime::ServerHandle) {
/// use std::time::Duration;
/// use hermes_runtime::Upgrade;
///
/// match handle.upgrade(Upgrade::new().timeout(Duration::from_secs(20))) {
///     Ok(done) => {
///         println!("pid {} serves now; draining", done.pid);
///         handle.shutdown();
///     }
///     Err(e) => eprintln!("upgrade failed, still serving: {e}"),
/// }
/// # }
/// ```
#[derive(Debug)]
pub struct Upgrade {
    pub(crate) command: Option<Command>,
    pub(crate) timeout: Duration,
}

impl Default for Upgrade {
    fn default() -> Self {
        Self::new()
    }
}

impl Upgrade {
    /// Re-executes the current binary (the file now at its path, so a new
    /// release installed over it is what starts) with the same arguments;
    /// 30 s to take over.
    pub fn new() -> Self {
        Self { command: None, timeout: Duration::from_secs(30) }
    }

    /// Runs `command` instead (its environment gets [`UPGRADE_FD_ENV`]).
    pub fn command(mut self, command: Command) -> Self {
        self.command = Some(command);
        self
    }

    /// How long the successor has to start its workers and take over.
    /// Default: 30 s.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }
}

/// A finished hand-over.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct Upgraded {
    /// The successor's pid.
    pub pid: u32,
}
