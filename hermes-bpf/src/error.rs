//! The loader's error type.

use std::io;

/// Why the dispatch program could not be loaded, attached or fed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The process lacks the capability to create BPF maps or load programs.
    #[error(
        "loading the Hermes dispatch program needs CAP_BPF: {what} was refused ({source}); \
         run as root or grant it (`setcap cap_bpf+ep BINARY`), or run with plain SO_REUSEPORT hashing"
    )]
    MissingCapability {
        /// The step that was refused.
        what: &'static str,
        /// The OS error (`EPERM` or `EACCES`).
        #[source]
        source: io::Error,
    },
    /// The kernel refused the object or the program for another reason
    /// (old kernel, verifier, missing map type).
    #[error(
        "the kernel refused the Hermes dispatch program while {what}: {detail}; \
         it needs Linux 5.14+ with SK_REUSEPORT programs and mmapable arrays"
    )]
    KernelRefused {
        /// The step that failed.
        what: &'static str,
        /// The loader's message, with the verifier log when there is one.
        detail: String,
    },
    /// A map could not be mapped into memory.
    #[error("mmap of BPF map `{map}` failed: {source}")]
    Mmap {
        /// Map name.
        map: &'static str,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// A map's value size or entry count, as the kernel reports them, does not
    /// match its Rust mirror in [`crate::layout`]: the embedded object and
    /// this crate were built from different sources.
    #[error(
        "BPF map `{map}` has {entries} values of {value_size} bytes, but its Rust mirror needs \
         {want_entries} of {want_size} bytes; rebuild the object with `cargo xtask bpf`"
    )]
    MapLayout {
        /// Map name.
        map: &'static str,
        /// The map's value size in bytes.
        value_size: usize,
        /// The map's number of entries.
        entries: usize,
        /// The Rust mirror's size in bytes.
        want_size: usize,
        /// The entries the mapping needs.
        want_entries: usize,
    },
    /// Maps inherited in an upgrade were made by a server whose
    /// [`LAYOUT_VERSION`](crate::layout::LAYOUT_VERSION) differs: their slots
    /// may be laid out differently, so they are not used.
    #[error(
        "the running server's maps have layout version {found}, this server needs {want}: \
         the hand-over is refused (stop the old server and start this one, or upgrade through a \
         release of the same layout)"
    )]
    LayoutVersion {
        /// The version stored in the inherited maps (0: a server from before versions).
        found: u64,
        /// This crate's version.
        want: u64,
    },
    /// A worker id beyond the maps' slots (or a server of more workers than
    /// [`MAX_WORKERS`](crate::layout::MAX_WORKERS)).
    #[error("worker id {worker} is out of range: a dispatch group holds at most {max} workers")]
    WorkerOutOfRange {
        /// The id given.
        worker: usize,
        /// The largest number of workers.
        max: usize,
    },
    /// A socket could not be placed in, or removed from, the socket array.
    #[error(
        "{what} worker {worker}'s listener in the socket array failed: {detail}; the listener must \
         be a listening TCP socket with SO_REUSEPORT set before bind"
    )]
    Socket {
        /// "placing" or "removing".
        what: &'static str,
        /// Worker id.
        worker: usize,
        /// The loader's message.
        detail: String,
    },
    /// Attaching the program to, or detaching it from, a reuseport group failed.
    #[error("{what} the dispatch program on the listener's SO_REUSEPORT group failed: {detail}")]
    Attach {
        /// "attaching" or "detaching".
        what: &'static str,
        /// The loader's message.
        detail: String,
    },
}

/// Walks an error's source chain for the OS error underneath (shared with
/// the other loaders of the workspace, such as `hermes-dsr`'s).
pub fn os_error<'a>(e: &'a (dyn std::error::Error + 'static)) -> Option<&'a io::Error> {
    let mut cur = Some(e);
    while let Some(err) = cur {
        if let Some(io) = err.downcast_ref::<io::Error>() {
            return Some(io);
        }
        cur = err.source();
    }
    None
}

/// Full message of an error and its sources, joined by ": ".
pub fn chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut out = e.to_string();
    let mut cur = e.source();
    while let Some(err) = cur {
        let s = err.to_string();
        if !out.contains(&s) {
            out.push_str(": ");
            out.push_str(&s);
        }
        cur = err.source();
    }
    out
}

/// What a loader error comes down to: the kernel refusing for lack of a
/// capability, or anything else. Each loader of the workspace turns it into
/// its own error type ([`Error::MissingCapability`] or
/// [`Error::KernelRefused`] here, the same variants in `hermes-dsr`), so
/// that a missing privilege is told apart the same way everywhere.
#[derive(Debug)]
pub enum Refusal {
    /// `EPERM` or `EACCES` among the error's sources: the process lacks
    /// CAP_BPF (or, for tc and XDP programs, CAP_NET_ADMIN).
    Permission(io::Error),
    /// Any other failure: the error's full message with its sources ([`chain`]).
    Other(String),
}

impl Refusal {
    /// Sorts a loader error (aya's, which carries the OS error among its
    /// sources) into a [`Refusal`].
    pub fn of(e: &(dyn std::error::Error + 'static)) -> Self {
        match os_error(e).and_then(io::Error::raw_os_error) {
            Some(code @ (libc::EPERM | libc::EACCES)) => Self::Permission(io::Error::from_raw_os_error(code)),
            _ => Self::Other(chain(e)),
        }
    }
}

/// Classifies a loader error: permission errors become [`Error::MissingCapability`].
pub(crate) fn classify(what: &'static str, e: &(dyn std::error::Error + 'static)) -> Error {
    match Refusal::of(e) {
        Refusal::Permission(source) => Error::MissingCapability { what, source },
        Refusal::Other(detail) => Error::KernelRefused { what, detail },
    }
}
