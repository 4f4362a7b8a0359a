//! What each worker hands to `axum::serve`: [`WorkerListener`], over the
//! worker's [`HermesListener`] (with the TLS handshakes when TLS is on), and
//! the [`Connection`]s it accepts, which `serve_tonic` hands to tonic too.

#[cfg(feature = "axum")]
use std::net::SocketAddr;
use std::{
    fmt, io,
    pin::Pin,
    sync::{
        Arc,
        atomic::{AtomicU32, Ordering},
    },
    task::{Context, Poll},
    time::Duration,
};

#[cfg(feature = "axum")]
use axum::serve::{ListenerExt, TapIo};
use hermes_runtime::{HermesListener, HermesStream};
use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf},
    time::{Instant, Sleep},
};

#[cfg(feature = "tls")]
use super::tls::TlsListener;

/// What a make-service given to [`serve()`](super::serve()) is called with,
/// once per connection: axum's `IncomingStream` over the worker's listener
/// (wrapped in axum's `TapIo`, which sets `TCP_NODELAY` when asked).
///
/// `SocketAddr` implements `axum::extract::connect_info::Connected` for it,
/// so `app.into_make_service_with_connect_info::<SocketAddr>()` gives
/// handlers the client's address. A connect-info type of your own cannot
/// implement `Connected` for it: axum implements `Connected` for the address
/// type of every `TapIo` listener, and the compiler takes any other
/// implementation as overlapping. A make-service of your own can read
/// [`remote_addr`](axum::serve::IncomingStream::remote_addr) and
/// [`io`](axum::serve::IncomingStream::io) (a [`Connection`]: worker, TLS
/// session); a handler finds its worker with
/// [`hermes_runtime::context::current`].
#[cfg(feature = "axum")]
pub type IncomingStream<'a> = axum::serve::IncomingStream<'a, TapIo<WorkerListener, fn(&mut Connection)>>;

/// One worker's listener as `axum::serve` sees it: the worker's
/// [`HermesListener`], with the TLS handshakes done here when TLS is on.
/// Made by [`serve()`](super::serve()) on each worker; it appears in
/// [`IncomingStream`].
#[cfg(feature = "axum")]
pub struct WorkerListener {
    inner: Inner,
    /// The header read and idle timeouts (`Builder::header_read_timeout`,
    /// `Builder::idle_timeout`).
    timeouts: Timeouts,
}

/// The header read and idle timeouts of a worker's connections.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct Timeouts {
    header: Option<Duration>,
    idle: Option<Duration>,
}

impl Timeouts {
    pub(crate) fn of(listener: &HermesListener) -> Self {
        Self { header: listener.header_read_timeout(), idle: listener.idle_timeout() }
    }
}

#[cfg(feature = "axum")]
enum Inner {
    Plain(HermesListener),
    #[cfg(feature = "tls")]
    Tls(TlsListener),
}

#[cfg(feature = "axum")]
impl fmt::Debug for WorkerListener {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.inner {
            Inner::Plain(l) => f.debug_tuple("WorkerListener").field(l).finish(),
            #[cfg(feature = "tls")]
            Inner::Tls(l) => f.debug_tuple("WorkerListener").field(l).finish(),
        }
    }
}

#[cfg(feature = "axum")]
fn leave_as_is(_: &mut Connection) {}

#[cfg(feature = "axum")]
impl WorkerListener {
    /// Plain HTTP on `listener`.
    pub(crate) fn plain(listener: HermesListener) -> Self {
        Self { timeouts: Timeouts::of(&listener), inner: Inner::Plain(listener) }
    }

    /// HTTPS on `listener`: the handshakes run in this listener, on the
    /// worker that accepted the connection.
    #[cfg(feature = "tls")]
    pub(crate) fn tls(listener: HermesListener, config: super::tls::RustlsConfig) -> Self {
        Self { timeouts: Timeouts::of(&listener), inner: Inner::Tls(TlsListener::new(listener, config)) }
    }

    /// `self` in the form [`IncomingStream`] names (axum's `TapIo`, which
    /// makes `SocketAddr` a `ConnectInfo`); the tap does nothing, since the
    /// runtime sets `TCP_NODELAY` as it accepts (`Builder::tcp_nodelay`).
    pub(crate) fn tapped(self) -> TapIo<Self, fn(&mut Connection)> {
        self.tap_io(leave_as_is as fn(&mut Connection))
    }

    fn worker_id(&self) -> usize {
        match &self.inner {
            Inner::Plain(l) => l.worker_id(),
            #[cfg(feature = "tls")]
            Inner::Tls(l) => l.worker_id(),
        }
    }
}

#[cfg(feature = "axum")]
impl axum::serve::Listener for WorkerListener {
    type Io = Connection;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Connection, SocketAddr) {
        let next = std::future::poll_fn(|cx| match &mut self.inner {
            Inner::Plain(l) => l.poll_accept(cx).map(|c| c.map(|(s, a)| (Connection::plain(s), a))),
            #[cfg(feature = "tls")]
            Inner::Tls(l) => l.poll_accept(cx).map(|c| c.map(|(s, a)| (Connection::tls(s), a))),
        })
        .await
        .map(|(c, a)| (c.with_timeouts(self.timeouts), a));
        match next {
            Some(conn) => conn,
            // Closed: the worker is draining, and axum's graceful shutdown
            // (on the worker's drain signal) stops the accept loop.
            None => {
                tracing::trace!(worker = self.worker_id(), "listener closed; waiting for the shutdown");
                std::future::pending().await
            }
        }
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        Ok(match &self.inner {
            Inner::Plain(l) => l.local_addr(),
            #[cfg(feature = "tls")]
            Inner::Tls(l) => l.local_addr(),
        })
    }
}

/// An accepted connection, plain or TLS, counted as open on the worker that
/// accepted it (see [`HermesStream`]).
pub struct Connection {
    inner: Stream,
    /// The header read and idle timeouts; `None` when both are off.
    timer: Option<Timer>,
}

/// What a connection's service tells its connection: requests started, and
/// requests in progress. Shared by the connection and its service (and the
/// service's clones, one per request).
#[derive(Debug, Default)]
pub(crate) struct Activity {
    started: AtomicU32,
    active: AtomicU32,
}

#[cfg(feature = "axum")]
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
#[cfg(feature = "axum")]
pub(crate) struct ActiveGuard(Arc<Activity>);

#[cfg(feature = "axum")]
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
struct Timer {
    sleep: Pin<Box<Sleep>>,
    /// `None` for a tonic connection, which is watched until its first head only.
    activity: Option<Arc<Activity>>,
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
    #[cfg_attr(not(feature = "tonic"), allow(dead_code))]
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
    #[cfg(feature = "axum")]
    fn new(timeouts: Timeouts, h2: bool) -> Self {
        Self::with(timeouts, h2, Some(Arc::new(Activity::default())), None)
    }

    /// The timer of a tonic connection: see [`Timer`].
    #[cfg(feature = "tonic")]
    fn first_head(timeouts: Timeouts) -> Self {
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
    fn on_read(&mut self, bytes: &[u8]) {
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
    fn on_write(&mut self) {
        if self.phase == Phase::Idle {
            self.since = Instant::now();
        }
    }

    /// Whether a tonic connection's first head is complete: its timer has
    /// nothing more to watch.
    fn finished(&self) -> bool {
        self.first_head.is_some_and(|f| f.done)
    }

    /// Whether the phase's timeout has passed; registers the waker otherwise.
    fn poll_expired(&mut self, cx: &mut Context<'_>) -> Option<&'static str> {
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

enum Stream {
    Plain(HermesStream),
    // Boxed: a TLS session is about a kilobyte, a plain stream two words.
    #[cfg(feature = "tls")]
    Tls(Box<tokio_rustls::server::TlsStream<HermesStream>>),
}

impl fmt::Debug for Connection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Connection")
            .field("worker", &self.worker_id())
            .field("tls", &self.is_tls())
            .field("tcp", self.tcp())
            .finish()
    }
}

impl Connection {
    pub(crate) fn plain(stream: HermesStream) -> Self {
        Self { inner: Stream::Plain(stream), timer: None }
    }

    #[cfg(feature = "tls")]
    fn tls(stream: tokio_rustls::server::TlsStream<HermesStream>) -> Self {
        Self { inner: Stream::Tls(Box::new(stream)), timer: None }
    }

    /// Starts the connection's timeouts (none when both are off).
    #[cfg(feature = "axum")]
    fn with_timeouts(mut self, timeouts: Timeouts) -> Self {
        if timeouts.header.is_some() || timeouts.idle.is_some() {
            #[cfg(feature = "tls")]
            let h2 = self.tls_session().is_some_and(|s| s.alpn_protocol() == Some(b"h2"));
            #[cfg(not(feature = "tls"))]
            let h2 = false;
            self.timer = Some(Timer::new(timeouts, h2));
        }
        self
    }

    /// Starts the timeouts of a connection served by tonic, which watch its
    /// first request head or HTTP/2 preface only (see [`Timer`]).
    #[cfg(feature = "tonic")]
    pub(crate) fn with_first_head_timeouts(mut self, timeouts: Timeouts) -> Self {
        if timeouts.header.is_some() || timeouts.idle.is_some() {
            self.timer = Some(Timer::first_head(timeouts));
        }
        self
    }

    /// What the connection's service reports its requests to, when the
    /// connection has timeouts.
    #[cfg(feature = "axum")]
    pub(crate) fn activity(&self) -> Option<Arc<Activity>> {
        self.timer.as_ref().and_then(|t| t.activity.clone())
    }

    fn hermes(&self) -> &HermesStream {
        match &self.inner {
            Stream::Plain(s) => s,
            #[cfg(feature = "tls")]
            Stream::Tls(s) => s.get_ref().0,
        }
    }

    /// The worker that accepted the connection.
    pub fn worker_id(&self) -> usize {
        self.hermes().worker_id()
    }

    /// The TCP stream under the connection.
    pub fn tcp(&self) -> &tokio::net::TcpStream {
        self.hermes().get_ref()
    }

    /// Whether the connection is TLS.
    pub fn is_tls(&self) -> bool {
        match &self.inner {
            Stream::Plain(_) => false,
            #[cfg(feature = "tls")]
            Stream::Tls(_) => true,
        }
    }

    /// The TLS session (negotiated ALPN protocol, SNI name, client
    /// certificates), or `None` for plain HTTP.
    #[cfg(feature = "tls")]
    pub fn tls_session(&self) -> Option<&rustls::ServerConnection> {
        match &self.inner {
            Stream::Plain(_) => None,
            Stream::Tls(s) => Some(s.get_ref().1),
        }
    }
}

#[cfg(feature = "tonic")]
impl tonic::transport::server::Connected for Connection {
    type ConnectInfo = tonic::transport::server::TcpConnectInfo;

    /// The TCP addresses, as tonic gives them to `Request::remote_addr`.
    fn connect_info(&self) -> Self::ConnectInfo {
        self.hermes().connect_info()
    }
}

macro_rules! delegate {
    ($self:ident, $s:ident => $e:expr) => {
        match &mut $self.inner {
            Stream::Plain($s) => {
                let $s = Pin::new($s);
                $e
            }
            #[cfg(feature = "tls")]
            Stream::Tls($s) => {
                let $s = Pin::new(&mut **$s);
                $e
            }
        }
    };
}

impl AsyncRead for Connection {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let result = delegate!(this, s => s.poll_read(cx, buf));
        let Some(timer) = &mut this.timer else { return result };
        match result {
            Poll::Ready(Ok(())) if buf.filled().len() > before => {
                timer.on_read(&buf.filled()[before..]);
                if timer.finished() {
                    // A tonic connection past its first head: nothing more to
                    // watch, and its sleep leaves the timer wheel.
                    this.timer = None;
                }
            }
            Poll::Pending => {
                if let Some(what) = timer.poll_expired(cx) {
                    tracing::debug!(worker = this.worker_id(), "{what}: closing the connection");
                    return Poll::Ready(Err(io::Error::new(io::ErrorKind::TimedOut, what)));
                }
            }
            Poll::Ready(_) => {}
        }
        result
    }
}

impl AsyncWrite for Connection {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let result = delegate!(this, s => s.poll_write(cx, buf));
        if let (Some(timer), Poll::Ready(Ok(n))) = (&mut this.timer, &result)
            && *n > 0
        {
            timer.on_write();
        }
        result
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        delegate!(this, s => s.poll_flush(cx))
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        delegate!(this, s => s.poll_shutdown(cx))
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let result = delegate!(this, s => s.poll_write_vectored(cx, bufs));
        if let (Some(timer), Poll::Ready(Ok(n))) = (&mut this.timer, &result)
            && *n > 0
        {
            timer.on_write();
        }
        result
    }

    fn is_write_vectored(&self) -> bool {
        match &self.inner {
            Stream::Plain(s) => s.is_write_vectored(),
            #[cfg(feature = "tls")]
            Stream::Tls(s) => s.is_write_vectored(),
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
