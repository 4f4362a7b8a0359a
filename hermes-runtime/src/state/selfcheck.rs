//! [`SelfCheck`]: whether the dispatch program still sees the server's new
//! connections (Hermes mode).
//!
//! The program runs for every new connection of the group before any
//! worker can accept it, so connections accepted in a period in which the
//! program never ran, beyond those already queued at its start, reached the
//! workers without it: the group lost the program (every listener closed at
//! once) or another program replaced it (another process attached its own to
//! the port's group). The caller then logs it, attaches the program again,
//! and the server reports [`Mode::KernelHash`](crate::Mode::KernelHash) with
//! [`SelfCheck::LOST`] until the program runs again.

use std::sync::{
    Mutex,
    atomic::{AtomicBool, AtomicU64, Ordering},
};

/// How often the self-check compares `accepted` with the program's runs.
const EVERY_NS: u64 = 100_000_000;

/// The self-check's state: its last reading and what it found.
#[derive(Debug, Default)]
pub(crate) struct SelfCheck {
    last: Mutex<Reading>,
    /// Whether the program was found not running, and has not been seen
    /// placing a connection since.
    lost: AtomicBool,
    /// How many times it was found not running.
    losses: AtomicU64,
}

/// One reading of the server's connections and the program's runs.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct Reading {
    /// `CLOCK_MONOTONIC` nanoseconds.
    pub(crate) at_ns: u64,
    /// Connections the workers accepted, in total.
    pub(crate) accepted: u64,
    /// Times the program ran, in total.
    pub(crate) runs: u64,
    /// Connections placed but perhaps not accepted yet (accept queues and
    /// placements since their sample).
    pub(crate) pending: u64,
}

/// What a reading found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Finding {
    /// Nothing new (no reading due, or the program runs as before).
    Nothing,
    /// The program runs again after it was found lost.
    Recovered,
    /// Connections came that the program never saw; `first` when the
    /// program was running at the previous reading.
    Lost { accepted: u64, first: bool },
}

impl SelfCheck {
    /// The reason the server gives while the program is found not running.
    pub(crate) const LOST: &'static str = "the dispatch program stopped seeing new connections (its \
         SO_REUSEPORT group lost it, or another program was attached to the group); re-attached, kernel hash \
         until it places connections again";

    /// Takes a reading with `read` if one is due at `now_ns` (at most every
    /// 100 ms; a caller racing another one's reading skips), and says what
    /// it found against the previous one.
    pub(crate) fn observe(&self, now_ns: u64, read: impl FnOnce() -> Reading) -> Finding {
        let Ok(mut last) = self.last.try_lock() else { return Finding::Nothing };
        if last.at_ns != 0 && now_ns.saturating_sub(last.at_ns) < EVERY_NS {
            return Finding::Nothing;
        }
        let now = Reading { at_ns: now_ns, ..read() };
        let previous = std::mem::replace(&mut *last, now);
        if previous.at_ns == 0 {
            return Finding::Nothing;
        }
        // Relaxed: a lone flag and a lone counter, read for reporting.
        if now.runs > previous.runs {
            return if self.lost.swap(false, Ordering::Relaxed) {
                Finding::Recovered
            } else {
                Finding::Nothing
            };
        }
        let accepted = now.accepted.saturating_sub(previous.accepted);
        if accepted <= previous.pending {
            return Finding::Nothing;
        }
        self.losses.fetch_add(1, Ordering::Relaxed);
        Finding::Lost { accepted, first: !self.lost.swap(true, Ordering::Relaxed) }
    }

    /// Whether the program is found not running now.
    pub(crate) fn is_lost(&self) -> bool {
        // Relaxed: a lone flag, read for reporting.
        self.lost.load(Ordering::Relaxed)
    }

    /// How many times the program was found not running.
    pub(crate) fn losses(&self) -> u64 {
        // Relaxed: a lone counter.
        self.losses.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reading(accepted: u64, runs: u64, pending: u64) -> impl FnOnce() -> Reading {
        move || Reading { at_ns: 0, accepted, runs, pending }
    }

    #[test]
    fn connections_the_program_never_saw_are_found_and_its_return_too() {
        let check = SelfCheck::default();
        assert_eq!(check.observe(1, reading(0, 0, 2)), Finding::Nothing, "the first reading");
        assert_eq!(check.observe(2, reading(5, 0, 0)), Finding::Nothing, "not due yet");
        // Two connections were queued at the first reading: those may come
        // without a run.
        assert_eq!(check.observe(EVERY_NS + 1, reading(2, 0, 0)), Finding::Nothing);
        assert_eq!(
            check.observe(2 * EVERY_NS + 1, reading(5, 0, 0)),
            Finding::Lost { accepted: 3, first: true }
        );
        assert!(check.is_lost());
        assert_eq!(
            check.observe(3 * EVERY_NS + 1, reading(6, 0, 0)),
            Finding::Lost { accepted: 1, first: false }
        );
        assert_eq!(check.losses(), 2);
        assert_eq!(check.observe(4 * EVERY_NS + 1, reading(7, 1, 0)), Finding::Recovered);
        assert!(!check.is_lost());
    }
}
