//! The value types of `hermes-workload`'s command line: the server under
//! test, the fine filter, on/off switches, and the parser of `--cost-scale`.

use clap::ValueEnum;

/// A cost scale: finite and above 0.
pub(crate) fn parse_scale(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(x) if x.is_finite() && x > 0.0 => Ok(x),
        Ok(_) => Err(format!("{s} is not a positive, finite number")),
        Err(e) => Err(e.to_string()),
    }
}

/// The server under test.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub(crate) enum Peer {
    /// Hermes dispatch: the kernel program places each connection on an eligible worker.
    Hermes,
    /// Hermes dispatch with every request kept on its connection's worker: no request
    /// placement, no offload to the blocking pool, no reconnect asks.
    HermesLocal,
    /// Hermes without the kernel program, as a container without CAP_BPF runs it: the
    /// kernel's hash places connections; request placement, offload, reconnect asks and
    /// the rescue of a hung worker's queue stay on.
    HermesUserspace,
    /// Hermes workers with plain SO_REUSEPORT hashing.
    Reuseport,
    /// Hermes workers sharing one listener (EPOLLEXCLUSIVE).
    Shared,
    /// The stock multi-thread Tokio runtime with one listener, as `axum::serve`.
    Tokio,
}

/// A setting turned on or off.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub(crate) enum Switch {
    /// On.
    On,
    /// Off.
    Off,
}

/// Whether the workers are pinned to CPUs (`Builder::pin_workers`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub(crate) enum Pin {
    /// The runtime's default: pinned when the process may run on only some
    /// of the machine's CPUs (taskset, a cpuset), not when on all of them.
    Auto,
    /// Pinned, one CPU each.
    On,
    /// Not pinned: every CPU the process may use.
    Off,
}

impl Pin {
    /// What to hand `Builder::pin_workers`; `None` keeps the runtime's default.
    pub(crate) fn setting(self) -> Option<bool> {
        match self {
            Pin::Auto => None,
            Pin::On => Some(true),
            Pin::Off => Some(false),
        }
    }
}

/// The kernel program's fine filter.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub(crate) enum Fine {
    /// The less loaded of two candidates drawn from the connection hash.
    TwoChoices,
    /// One candidate drawn from the connection hash.
    Hash,
}
