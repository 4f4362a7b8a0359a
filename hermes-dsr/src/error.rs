//! The crate's error type.

use std::io;

/// Why a program of the tier could not be loaded, attached or configured.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The process lacks the capability to create BPF maps or load programs.
    #[error(
        "the hermes-dsr {program} program needs CAP_BPF and CAP_NET_ADMIN: {what} was refused ({source}); \
         run as root or grant them"
    )]
    MissingCapability {
        /// `balancer` or `host feedback`.
        program: &'static str,
        /// The step that was refused.
        what: &'static str,
        /// The OS error (`EPERM` or `EACCES`).
        #[source]
        source: io::Error,
    },
    /// The kernel refused the object, a map or the program for another reason.
    #[error("the kernel refused the hermes-dsr {program} program while {what}: {detail}")]
    KernelRefused {
        /// `balancer` or `host feedback`.
        program: &'static str,
        /// The step that failed.
        what: &'static str,
        /// The loader's message, with the verifier log when there is one.
        detail: String,
    },
    /// Attaching to an interface failed (no such interface in this network
    /// namespace, or tc refused).
    #[error("attaching the hermes-dsr {program} program to interface `{interface}` failed: {detail}")]
    Attach {
        /// `balancer` or `host feedback`.
        program: &'static str,
        /// The interface name.
        interface: String,
        /// The loader's message.
        detail: String,
    },
    /// Bad settings: nothing was changed.
    #[error("invalid hermes-dsr settings: {0}")]
    Invalid(String),
}

use hermes_bpf::error_chain::Refusal;
pub(crate) use hermes_bpf::error_chain::chain;

/// Classifies a loader error: permission errors become [`Error::MissingCapability`].
pub(crate) fn classify(
    program: &'static str,
    what: &'static str,
    e: &(dyn std::error::Error + 'static),
) -> Error {
    match Refusal::of(e) {
        Refusal::Permission(source) => Error::MissingCapability { program, what, source },
        Refusal::Other(detail) => Error::KernelRefused { program, what, detail },
    }
}
