//! [`TlsListener`]: a worker's TLS accept loop. It accepts from the
//! worker's [`HermesListener`] and runs the handshakes on the worker,
//! several at once, in a table of [`RustlsConfig::max_handshakes`] slots:
//! first each connection waits for its first byte (a silent one is closed
//! at [`RustlsConfig::first_byte_timeout`]), then rustls handshakes (closed
//! at [`RustlsConfig::handshake_timeout`] from the accept). With the table
//! full, a new connection takes the slot of the oldest one still silent, so
//! idle sockets cannot keep real clients out; only a table full of
//! handshakes under way stops the accepts.

use std::{
    fmt, io,
    net::SocketAddr,
    pin::Pin,
    sync::atomic::Ordering,
    task::{Context, Poll, Waker},
};

use futures_util::{StreamExt, stream::FuturesUnordered};
use hermes_runtime::{HermesListener, HermesStream};
use pin_project_lite::pin_project;
use tokio::{
    io::ReadBuf,
    time::{Instant, Sleep, Timeout, error::Elapsed},
};
use tokio_rustls::{Accept, TlsAcceptor, server::TlsStream};

use super::tls::RustlsConfig;

/// How a connection's wait for its first byte ended.
enum FirstByte {
    /// It sent something (or closed: the handshake finds out).
    Spoke(HermesStream),
    /// The first-byte timeout passed (the stream, to close once counted).
    TimedOut(Option<HermesStream>),
    /// Its slot went to a newer connection.
    Evicted,
}

pin_project! {
    /// A connection waiting for its first byte.
    struct Silent {
        // `None` once evicted (the socket closed then).
        stream: Option<HermesStream>,
        peer: SocketAddr,
        accepted: Instant,
        // Accept order, to find the oldest.
        seq: u64,
        #[pin]
        deadline: Sleep,
        // Woken when evicted, so the set polls it out.
        waker: Option<Waker>,
    }
}

impl Future for Silent {
    type Output = (SocketAddr, Instant, FirstByte);

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let Some(stream) = this.stream else {
            return Poll::Ready((*this.peer, *this.accepted, FirstByte::Evicted));
        };
        if !this.waker.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
            *this.waker = Some(cx.waker().clone());
        }
        // A peek of one byte (a readiness check alone can be stale): ready
        // on data, on the client's close and on an error alike; the
        // handshake tells them apart.
        let mut byte = [0u8; 1];
        if stream.get_ref().poll_peek(cx, &mut ReadBuf::new(&mut byte)).is_ready() {
            let stream = this.stream.take().expect("checked above");
            return Poll::Ready((*this.peer, *this.accepted, FirstByte::Spoke(stream)));
        }
        match this.deadline.poll(cx) {
            // The stream goes with the answer: closed once counted.
            Poll::Ready(()) => {
                Poll::Ready((*this.peer, *this.accepted, FirstByte::TimedOut(this.stream.take())))
            }
            Poll::Pending => Poll::Pending,
        }
    }
}

pin_project! {
    /// One connection's handshake, bounded by the handshake timeout.
    struct Handshake {
        #[pin]
        accept: Timeout<Accept<HermesStream>>,
        peer: SocketAddr,
    }
}

impl Future for Handshake {
    type Output = (SocketAddr, Result<io::Result<TlsStream<HermesStream>>, Elapsed>);

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        this.accept.poll(cx).map(|r| (*this.peer, r))
    }
}

/// A worker's TLS listener (see the [module](self)). A failed or timed-out
/// handshake, and an evicted silent connection, is logged at debug level,
/// counted, and the connection closed; the accept loop goes on.
pub(crate) struct TlsListener {
    inner: HermesListener,
    config: RustlsConfig,
    silent: FuturesUnordered<Silent>,
    handshakes: FuturesUnordered<Handshake>,
    /// Evicted connections still in `silent` until it polls them out.
    evicting: usize,
    next_seq: u64,
    closed: bool,
}

impl fmt::Debug for TlsListener {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TlsListener")
            .field("inner", &self.inner)
            .field("silent", &self.live_silent())
            .field("handshaking", &self.handshakes.len())
            .finish()
    }
}

impl TlsListener {
    pub(crate) fn new(inner: HermesListener, config: RustlsConfig) -> Self {
        Self {
            inner,
            config,
            silent: FuturesUnordered::new(),
            handshakes: FuturesUnordered::new(),
            evicting: 0,
            next_seq: 0,
            closed: false,
        }
    }

    pub(crate) fn worker_id(&self) -> usize {
        self.inner.worker_id()
    }

    pub(crate) fn local_addr(&self) -> SocketAddr {
        self.inner.local_addr()
    }

    fn live_silent(&self) -> usize {
        self.silent.len() - self.evicting
    }

    /// Accepts while a slot is free, or while a silent connection can give
    /// up its slot.
    fn accept_waiting(&mut self, cx: &mut Context<'_>) {
        while !self.closed {
            let full = self.live_silent() + self.handshakes.len() >= self.config.max_handshakes;
            if full && self.live_silent() == 0 {
                return;
            }
            match self.inner.poll_accept(cx) {
                Poll::Ready(Some((stream, peer))) => {
                    if full {
                        self.evict_oldest_silent();
                    }
                    let accepted = Instant::now();
                    let wait = self.config.first_byte_timeout.min(self.config.handshake_timeout);
                    self.silent.push(Silent {
                        stream: Some(stream),
                        peer,
                        accepted,
                        seq: self.next_seq,
                        deadline: tokio::time::sleep_until(accepted + wait),
                        waker: None,
                    });
                    self.next_seq += 1;
                }
                Poll::Ready(None) => self.closed = true,
                Poll::Pending => return,
            }
        }
    }

    /// Closes the connection that has waited longest without a byte (the
    /// table is full and one is). A scan of the table: only when it is full.
    fn evict_oldest_silent(&mut self) {
        let oldest =
            Pin::new(&mut self.silent).iter_pin_mut().filter(|s| s.stream.is_some()).min_by_key(|s| s.seq);
        let Some(oldest) = oldest else { return };
        let this = oldest.project();
        drop(this.stream.take());
        if let Some(waker) = this.waker.take() {
            waker.wake();
        }
        self.evicting += 1;
    }

    /// The next connection whose handshake succeeded; `Ready(None)` once
    /// the worker's listener closed and no handshake is left.
    pub(crate) fn poll_accept(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Option<(TlsStream<HermesStream>, SocketAddr)>> {
        loop {
            self.accept_waiting(cx);
            // Slots freed below let more in: go round again.
            let mut freed = false;
            while let Poll::Ready(Some((peer, accepted, first))) = self.silent.poll_next_unpin(cx) {
                match first {
                    FirstByte::Spoke(stream) => self.start_handshake(stream, peer, accepted),
                    FirstByte::TimedOut(stream) => {
                        freed = true;
                        self.count_timed_out(peer, "no first byte");
                        drop(stream);
                    }
                    FirstByte::Evicted => {
                        freed = true;
                        self.evicting -= 1;
                        // Relaxed: a counter for stats; it orders nothing.
                        self.config.shared.evicted.fetch_add(1, Ordering::Relaxed);
                        metrics::counter!("hermes_tls_handshake_failures_total", "reason" => "evicted")
                            .increment(1);
                        tracing::debug!(worker = self.worker_id(), %peer, "silent TLS connection evicted for a new one");
                    }
                }
            }
            match self.handshakes.poll_next_unpin(cx) {
                Poll::Ready(Some((peer, Ok(Ok(stream))))) => return Poll::Ready(Some((stream, peer))),
                Poll::Ready(Some((peer, Ok(Err(e))))) => {
                    // Relaxed: a counter for stats; it orders nothing.
                    self.config.shared.failed.fetch_add(1, Ordering::Relaxed);
                    metrics::counter!("hermes_tls_handshake_failures_total", "reason" => "error")
                        .increment(1);
                    tracing::debug!(worker = self.worker_id(), %peer, error = %e, "TLS handshake failed");
                }
                Poll::Ready(Some((peer, Err(_elapsed)))) => self.count_timed_out(peer, "handshake"),
                Poll::Ready(None) if self.closed && self.silent.is_empty() => return Poll::Ready(None),
                Poll::Ready(None) | Poll::Pending if freed => {}
                Poll::Ready(None) | Poll::Pending => return Poll::Pending,
            }
        }
    }

    fn start_handshake(&mut self, stream: HermesStream, peer: SocketAddr, accepted: Instant) {
        // One atomic load: the configuration current now.
        let acceptor = TlsAcceptor::from(self.config.shared.config.load_full());
        let deadline = accepted + self.config.handshake_timeout;
        let accept = tokio::time::timeout_at(deadline, acceptor.accept(stream));
        self.handshakes.push(Handshake { accept, peer });
    }

    fn count_timed_out(&self, peer: SocketAddr, what: &'static str) {
        // Relaxed: a counter for stats; it orders nothing.
        self.config.shared.timed_out.fetch_add(1, Ordering::Relaxed);
        metrics::counter!("hermes_tls_handshake_failures_total", "reason" => "timeout").increment(1);
        tracing::debug!(
            worker = self.worker_id(),
            %peer,
            what,
            first_byte = ?self.config.first_byte_timeout,
            handshake = ?self.config.handshake_timeout,
            "TLS handshake timed out"
        );
    }
}
