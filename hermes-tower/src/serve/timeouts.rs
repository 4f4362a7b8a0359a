//! The header read and idle timeouts of a worker's connections
//! ([`Timeouts`]), and the [`Timer`] each connection runs them with: the
//! idle timeout while no request is in progress, the header read timeout
//! from a request head's first byte until it is complete, none while a
//! request is served ([`Activity`] says which).

use std::{
    pin::Pin,
    sync::{
        Arc,
        atomic::{AtomicU32, Ordering},
    },
    task::Context,
    time::Duration,
};

use tokio::time::{Instant, Sleep};

/// The default of [`Serve::header_read_timeout`](super::Serve::header_read_timeout):
/// hyper's own default when it has a timer.
pub const DEFAULT_HEADER_READ_TIMEOUT: Duration = Duration::from_secs(30);
/// The default of [`Serve::idle_timeout`](super::Serve::idle_timeout).
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(60);

/// What a connection's timer watches.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Watch {
    /// Every request (axum's connections report their requests through
    /// the service `serve()` wraps them in).
    Requests,
    /// The first request head or HTTP/2 preface only (tonic's: it gives the
    /// service no handle on its connection).
    FirstHead,
}

/// The header read and idle timeouts of a worker's connections.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Timeouts {
    pub(crate) header: Option<Duration>,
    pub(crate) idle: Option<Duration>,
}

impl Default for Timeouts {
    fn default() -> Self {
        Self { header: Some(DEFAULT_HEADER_READ_TIMEOUT), idle: Some(DEFAULT_IDLE_TIMEOUT) }
    }
}

impl Timeouts {
    /// No timeout at all.
    pub(crate) const NONE: Self = Self { header: None, idle: None };

    /// Whether either timeout is on.
    pub(crate) fn any(&self) -> bool {
        self.header.is_some() || self.idle.is_some()
    }
}

/// What a connection's service tells its connection: requests started, and
/// requests in progress. Shared by the connection and its service (and the
/// service's clones, one per request).
#[derive(Debug, Default)]
pub(crate) struct Activity {
    started: AtomicU32,
    active: AtomicU32,
}

impl Activity {
    /// Counts a request whose head has been read, until the guard drops
    /// (its response produced, or the request cancelled).
    pub(crate) fn start(self: &Arc<Self>) -> ActiveGuard {
        // Relaxed: two lone counters; the connection reads each as an
        // independent value and only on its own poll, after the wake-up that
        // the response's write causes anyway.
        self.started.fetch_add(1, Ordering::Relaxed);
        self.active.fetch_add(1, Ordering::Relaxed);
        ActiveGuard(self.clone())
    }
}

/// A request in progress on its connection (see [`Activity::start`]).
pub(crate) struct ActiveGuard(Arc<Activity>);

impl Drop for ActiveGuard {
    fn drop(&mut self) {
        // Relaxed: see `Activity::start`.
        self.0.active.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Where a connection is, for its timeouts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    /// No request in progress: the idle timeout runs from the last read or write.
    Idle,
    /// The first bytes of a request head arrived: the header read timeout
    /// runs from them, whatever comes after.
    Head,
    /// A request is being served: no timeout.
    Busy,
}

/// A connection's header read and idle timeouts, checked when the HTTP
/// server reads from it and nothing is there: hyper reads while it waits for
/// a request head, and on an idle keep-alive connection.
///
/// Per connection it costs the timer (boxed: hyper needs an `Unpin`
/// connection) and the [`Activity`] shared with the service, two small
/// allocations beside hyper's own buffers for the connection, and only when
/// a timeout is on. Per read it costs a clock read; the timer is reset only
/// when the phase changes or it fires early.
///
/// A connection served by tonic (`serve_tonic`) has no [`Activity`]: tonic
/// gives the service no handle on its connection. Its timer watches only
/// the start: the idle timeout until the first byte, the header read timeout
/// from there until the first request head (HTTP/1) or the HTTP/2 preface is
/// complete ([`FirstHead`]); then the timer is dropped, and the connection
/// is tonic's, with tonic's own settings (hyper's HTTP/1 header timeout, the
/// HTTP/2 keep-alive pings), as a gRPC channel that idles between calls
/// expects.
pub(crate) struct Timer {
    sleep: Pin<Box<Sleep>>,
    /// `None` for a tonic connection, which is watched until its first head only.
    pub(crate) activity: Option<Arc<Activity>>,
    /// Some for a tonic connection: how far its first head is.
    first_head: Option<FirstHead>,
    timeouts: Timeouts,
    phase: Phase,
    /// `Activity::started` when last looked at.
    seen: u32,
    /// When the head began (phase `Head`), or the last read or write.
    since: Instant,
    /// HTTP/2 (by its preface or ALPN): its frames are not request heads,
    /// so only the idle timeout applies (hyper's h2 reads whole frames).
    h2: bool,
}

/// How far a tonic connection's first request head is: an HTTP/1 head
/// ends at its first empty line, the HTTP/2 preface after its 24 bytes.
#[derive(Clone, Copy, Debug)]
struct FirstHead {
    /// Bytes read so far.
    read: usize,
    /// Whether every byte so far was the HTTP/2 preface's.
    h2: bool,
    /// The last four bytes read, to find `\r\n\r\n` across reads.
    tail: u32,
    done: bool,
}

/// The HTTP/2 connection preface (RFC 9113, section 3.4).
const PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

impl FirstHead {
    fn new() -> Self {
        Self { read: 0, h2: true, tail: 0, done: false }
    }

    /// Takes bytes read; whether the head (or preface) is now complete.
    /// Looks at each byte until then (a head is at most a few kilobytes:
    /// hyper refuses longer ones), at none after.
    fn read(&mut self, bytes: &[u8]) -> bool {
        for &b in bytes {
            if self.done {
                break;
            }
            self.h2 = self.h2 && PREFACE.get(self.read) == Some(&b);
            self.read = self.read.saturating_add(1);
            self.tail = (self.tail << 8) | u32::from(b);
            // The preface holds an empty line of its own, after 18 bytes.
            self.done = if self.h2 {
                self.read == PREFACE.len()
            } else {
                self.tail == u32::from_be_bytes(*b"\r\n\r\n")
            };
        }
        self.done
    }
}

impl Timer {
    pub(crate) fn new(timeouts: Timeouts, h2: bool) -> Self {
        Self::with(timeouts, h2, Some(Arc::new(Activity::default())), None)
    }

    /// The timer of a tonic connection: see [`Timer`].
    pub(crate) fn first_head(timeouts: Timeouts) -> Self {
        Self::with(timeouts, false, None, Some(FirstHead::new()))
    }

    fn with(
        timeouts: Timeouts,
        h2: bool,
        activity: Option<Arc<Activity>>,
        first_head: Option<FirstHead>,
    ) -> Self {
        let now = Instant::now();
        let mut timer = Self {
            sleep: Box::pin(tokio::time::sleep_until(now)),
            activity,
            first_head,
            timeouts,
            phase: Phase::Idle,
            seen: 0,
            since: now,
            h2,
        };
        timer.rearm();
        timer
    }

    /// The deadline of the current phase, if it has one.
    fn deadline(&self) -> Option<Instant> {
        match self.phase {
            Phase::Idle => self.timeouts.idle.map(|t| self.since + t),
            Phase::Head => self.timeouts.header.map(|t| self.since + t),
            Phase::Busy => None,
        }
    }

    fn rearm(&mut self) {
        if let Some(at) = self.deadline() {
            self.sleep.as_mut().reset(at);
        }
    }

    fn enter(&mut self, phase: Phase, now: Instant) {
        self.phase = phase;
        self.since = now;
        self.rearm();
    }

    /// Follows the service: a request started since the last look (its
    /// head was read), or every request finished.
    fn sync(&mut self) {
        let Some(activity) = &self.activity else { return };
        // Relaxed: see `Activity::start`.
        let started = activity.started.load(Ordering::Relaxed);
        let active = activity.active.load(Ordering::Relaxed);
        if active > 0 {
            self.seen = started;
            self.phase = Phase::Busy;
        } else if started != self.seen || self.phase == Phase::Busy {
            self.seen = started;
            self.enter(Phase::Idle, Instant::now());
        }
    }

    /// Bytes were read.
    pub(crate) fn on_read(&mut self, bytes: &[u8]) {
        if let Some(first) = &mut self.first_head {
            if first.read(bytes) {
                self.phase = Phase::Busy;
            } else if self.phase == Phase::Idle {
                self.enter(Phase::Head, Instant::now());
            }
            return;
        }
        self.sync();
        let now = Instant::now();
        match self.phase {
            Phase::Idle if self.h2 || bytes.starts_with(b"PRI ") => {
                self.h2 = true;
                self.since = now;
            }
            Phase::Idle => self.enter(Phase::Head, now),
            Phase::Head | Phase::Busy => {}
        }
    }

    /// Bytes were written (a response leaving, perhaps after its request
    /// finished).
    pub(crate) fn on_write(&mut self) {
        if self.phase == Phase::Idle {
            self.since = Instant::now();
        }
    }

    /// Whether a tonic connection's first head is complete: its timer has
    /// nothing more to watch.
    pub(crate) fn finished(&self) -> bool {
        self.first_head.is_some_and(|f| f.done)
    }

    /// Whether the phase's timeout has passed; registers the waker otherwise.
    pub(crate) fn poll_expired(&mut self, cx: &mut Context<'_>) -> Option<&'static str> {
        self.sync();
        loop {
            let at = self.deadline()?;
            if self.sleep.as_mut().poll(cx).is_pending() {
                return None;
            }
            if Instant::now() >= at {
                return Some(if self.phase == Phase::Head { "header read timeout" } else { "idle timeout" });
            }
            // Fired for an earlier deadline (the idle one moved on): re-arm.
            self.sleep.as_mut().reset(at);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{FirstHead, PREFACE};

    fn complete_after(chunks: &[&[u8]]) -> Option<usize> {
        let mut head = FirstHead::new();
        chunks.iter().position(|c| head.read(c))
    }

    #[test]
    fn an_http1_head_ends_at_its_first_empty_line_across_reads() {
        assert_eq!(complete_after(&[b"GET / HTTP/1.1\r\nHost: a\r\n\r\n"]), Some(0));
        assert_eq!(complete_after(&[b"GET / HTTP/1.1\r\nHost: a\r", b"\n\r", b"\n"]), Some(2));
        assert_eq!(complete_after(&[b"GET / HTTP/1.1\r\nHost: a\r\n"]), None);
    }

    #[test]
    fn the_http2_preface_is_complete_after_its_24_bytes_not_its_empty_line() {
        assert_eq!(complete_after(&[&PREFACE[..18]]), None, "the preface's own empty line is not the end");
        assert_eq!(complete_after(&[&PREFACE[..3], &PREFACE[3..20], &PREFACE[20..]]), Some(2));
        let mut with_settings = PREFACE.to_vec();
        with_settings.extend_from_slice(&[0, 0, 0, 4, 0, 0, 0, 0, 0]);
        assert_eq!(complete_after(&[&with_settings]), Some(0));
    }
}
