//! The header read and idle timeouts of a worker's connections
//! ([`Timeouts`]), and the [`Timer`] each connection runs them with: the
//! idle timeout while no request is in progress, the header read timeout
//! from a request head's first byte until it is complete, none while a
//! request is served ([`Activity`] says which), for HTTP/1 and HTTP/2
//! alike (what the bytes say: [`Wire`]).

use std::{
    pin::Pin,
    sync::{
        Arc,
        atomic::{AtomicU32, AtomicU64, Ordering},
    },
    task::Context,
    time::Duration,
};

use futures_util::task::AtomicWaker;
use tokio::time::{Instant, Sleep};

use super::frames::Wire;

/// The default of [`Serve::header_read_timeout`](super::Serve::header_read_timeout):
/// hyper's own default when it has a timer.
pub const DEFAULT_HEADER_READ_TIMEOUT: Duration = Duration::from_secs(30);
/// The default of [`Serve::idle_timeout`](super::Serve::idle_timeout).
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(60);

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
/// requests in progress (from their head until their response body ends or
/// is dropped). Shared by the connection's timer, its service (and the
/// service's clones, one per request) and the responses' bodies; made once
/// per connection.
#[derive(Debug, Default)]
pub(crate) struct Activity {
    started: AtomicU64,
    active: AtomicU32,
    /// The connection's task while a request is in progress, woken when
    /// the last one ends so that its timer looks again.
    ended: AtomicWaker,
}

impl Activity {
    /// Counts a request whose head has been read, in progress until the
    /// guard drops.
    pub(crate) fn start(self: &Arc<Self>) -> ActiveGuard {
        // Relaxed: two lone counters; the connection reads each as an
        // independent value and only on its own poll, after the wake-up that
        // the response's write causes anyway.
        let nth = self.started.fetch_add(1, Ordering::Relaxed) + 1;
        self.active.fetch_add(1, Ordering::Relaxed);
        ActiveGuard { activity: self.clone(), nth }
    }
}

/// A request in progress on its connection (see [`Activity::start`]).
/// Public in this private module only for the bound of
/// [`InProgress`](super::body::InProgress)'s future.
#[derive(Debug)]
pub struct ActiveGuard {
    activity: Arc<Activity>,
    /// Which request of its connection this is, from 1.
    nth: u64,
}

impl ActiveGuard {
    /// Which request of its connection this is, from 1.
    pub(crate) fn nth(&self) -> u64 {
        self.nth
    }

    /// The connection now speaks another protocol (`101 Switching
    /// Protocols`, a WebSocket): it stays busy, out of the timeouts' reach,
    /// until it closes.
    pub(crate) fn keep_for_ever(self) {
        // Relaxed: see `Activity::start`; the guard's drop takes one back.
        self.activity.active.fetch_add(1, Ordering::Relaxed);
    }
}

impl Drop for ActiveGuard {
    fn drop(&mut self) {
        // Relaxed: see `Activity::start`; the wake-up orders the timer's
        // next look after this.
        if self.activity.active.fetch_sub(1, Ordering::Relaxed) == 1 {
            self.activity.ended.wake();
        }
    }
}

/// Where a connection is, for its timeouts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    /// No request in progress: the idle timeout runs (HTTP/1: from the last
    /// read or write; HTTP/2: from the last request's end, whatever frames
    /// come and go, as Go's HTTP/2 server counts it).
    Idle,
    /// A request head (HTTP/1), the HTTP/2 preface or an HTTP/2 header
    /// block is under way: the header read timeout runs from its first byte,
    /// whatever comes after.
    Head,
    /// A request is being served: no timeout.
    Busy,
}

/// A connection's header read and idle timeouts, checked when the HTTP
/// server reads from it and nothing is there: hyper reads while it waits for
/// a request head, on an idle keep-alive connection, and all along an HTTP/2
/// connection.
///
/// Per connection it costs the timer (boxed: hyper needs an `Unpin`
/// connection) and the [`Activity`] shared with the service, two small
/// allocations beside hyper's own buffers for the connection, and only when
/// a timeout is on. Per read it costs a clock read and, on HTTP/2, a look at
/// each frame's header; the timer is reset only when the phase changes or
/// it fires early.
pub(crate) struct Timer {
    sleep: Pin<Box<Sleep>>,
    pub(crate) activity: Arc<Activity>,
    wire: Wire,
    timeouts: Timeouts,
    phase: Phase,
    /// `Activity::started` when last looked at.
    seen: u64,
    /// When the head began (phase `Head`), or when the idle time began.
    since: Instant,
}

impl Timer {
    pub(crate) fn new(timeouts: Timeouts, activity: Arc<Activity>) -> Self {
        let now = Instant::now();
        let mut timer = Self {
            sleep: Box::pin(tokio::time::sleep_until(now)),
            activity,
            wire: Wire::new(),
            timeouts,
            phase: Phase::Idle,
            seen: 0,
            since: now,
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

    fn enter(&mut self, phase: Phase, since: Instant) {
        self.phase = phase;
        self.since = since;
        self.rearm();
    }

    /// Leaves a head: busy if a request is in progress, idle from `now` if not.
    fn settle(&mut self, now: Instant) {
        // Relaxed: see `Activity::start`.
        if self.activity.active.load(Ordering::Relaxed) > 0 {
            self.phase = Phase::Busy;
        } else {
            self.enter(Phase::Idle, now);
        }
    }

    /// Follows the service: a request started since the last look (its
    /// head was read), or every request finished. An open HTTP/2 header
    /// block keeps the connection in its head, whatever else runs. While a
    /// request is in progress, the last one's end wakes `cx`'s task: the
    /// server may not read again once the request ends (hyper's HTTP/1 waits
    /// for the socket), and the timer must look again then.
    fn sync(&mut self, cx: &Context<'_>) {
        // Relaxed: see `Activity::start`.
        let started = self.activity.started.load(Ordering::Relaxed);
        let changed = started != self.seen;
        self.seen = started;
        if self.wire.block_since().is_some() {
            return;
        }
        if self.activity.active.load(Ordering::Relaxed) > 0 {
            self.phase = Phase::Busy;
            self.activity.ended.register(cx.waker());
        } else if changed || self.phase == Phase::Busy {
            self.enter(Phase::Idle, Instant::now());
        }
    }

    /// Bytes were read, by `cx`'s task.
    pub(crate) fn on_read(&mut self, bytes: &[u8], cx: &Context<'_>) {
        self.sync(cx);
        let now = Instant::now();
        let was_http2 = self.wire.is_http2();
        self.wire.read(bytes, now);
        if !self.wire.is_http2() {
            // HTTP/1, or the preface under way: a head from its first byte
            // until the request it makes starts (`sync`).
            if self.phase == Phase::Idle {
                self.enter(Phase::Head, now);
            }
        } else if let Some(began) = self.wire.block_since() {
            if self.phase != Phase::Head || self.since != began {
                self.enter(Phase::Head, began);
            }
        } else if !was_http2 || self.phase == Phase::Head {
            // The preface or a header block just ended; other frames (PING,
            // SETTINGS, WINDOW_UPDATE, DATA) leave the phase as it is.
            self.settle(now);
        }
    }

    /// Bytes were written (an HTTP/1 response leaving, perhaps after its
    /// request finished).
    pub(crate) fn on_write(&mut self) {
        if self.phase == Phase::Idle && !self.wire.is_http2() {
            self.since = Instant::now();
        }
    }

    /// Whether the phase's timeout has passed; registers the waker otherwise.
    pub(crate) fn poll_expired(&mut self, cx: &mut Context<'_>) -> Option<&'static str> {
        self.sync(cx);
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
