//! Bodies against the connection's timeouts: the minimum rate of a request
//! body ([`MinDataRate`], carried out by [`MinRateBody`], which fails the
//! handler's read with [`RequestBodyTooSlow`]), and a request's response
//! kept in progress on its connection until its body ends ([`InProgress`]
//! and [`Guarded`]), so that a streamed response (server-sent events) quiet for
//! longer than the idle timeout is not cut while its handler lives.

use std::{
    error::Error as StdError,
    fmt,
    pin::Pin,
    task::{Context, Poll, ready},
    time::Duration,
};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use pin_project_lite::pin_project;
use tokio::time::{Instant, Sleep};

use super::timeouts::ActiveGuard;

type BoxError = Box<dyn StdError + Send + Sync>;

/// The least rate at which a client must send a request body while its
/// handler waits for it, after a grace period
/// ([`Serve::min_request_body_rate`](super::Serve::min_request_body_rate)).
///
/// Only the time the handler spends waiting for the client counts, from the
/// request's first wait for its body on: a handler busy with other work
/// (or one that never reads its body) is not timed. Once that time passes
/// the grace period, a body whose bytes so far are fewer than
/// `bytes_per_second` times that time fails the handler's read with
/// [`RequestBodyTooSlow`] (axum's extractors answer it with a 400); an
/// HTTP/1 connection is then closed after its response, an HTTP/2 stream
/// reset. A trickle of one byte a second is cut after the grace period; a
/// large upload's early bytes earn it time to wait later.
///
/// ```
/// use std::time::Duration;
/// use hermes_tower::serve::MinDataRate;
///
/// let uploads = MinDataRate::new(1024, Duration::from_secs(10));
/// assert_eq!(uploads.bytes_per_second(), 1024);
/// assert_eq!(MinDataRate::DEFAULT, MinDataRate::new(240, Duration::from_secs(5)));
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MinDataRate {
    bytes_per_second: u64,
    grace: Duration,
}

impl MinDataRate {
    /// 240 bytes/s after a 5 s grace period: Kestrel's default, which lets a
    /// client on a poor mobile link through and stops a trickle.
    pub const DEFAULT: Self = Self::new(240, Duration::from_secs(5));

    /// At least `bytes_per_second` on average once the handler has waited
    /// `grace` for the body. [`Serve::start`](super::Serve::start) refuses
    /// zero for either.
    pub const fn new(bytes_per_second: u64, grace: Duration) -> Self {
        Self { bytes_per_second, grace }
    }

    /// The least average rate, in bytes per second.
    pub fn bytes_per_second(&self) -> u64 {
        self.bytes_per_second
    }

    /// How long the handler may wait before the rate is checked.
    pub fn grace(&self) -> Duration {
        self.grace
    }

    /// How long a handler may wait in all for a body of which `bytes` came.
    fn allowed_wait(&self, bytes: u64) -> Duration {
        let nanos = u128::from(bytes) * 1_000_000_000 / u128::from(self.bytes_per_second.max(1));
        self.grace.max(Duration::from_nanos(u64::try_from(nanos).unwrap_or(u64::MAX)))
    }
}

impl Default for MinDataRate {
    fn default() -> Self {
        Self::DEFAULT
    }
}

/// The error a handler's read of its request body gets when the client
/// sends it slower than the [`MinDataRate`].
#[derive(Clone, Copy, Debug)]
pub struct RequestBodyTooSlow {
    rate: MinDataRate,
    bytes: u64,
    waited: Duration,
}

impl fmt::Display for RequestBodyTooSlow {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "request body too slow: {} bytes in {:?} of waiting, under the minimum of {} bytes/s after {:?}",
            self.bytes, self.waited, self.rate.bytes_per_second, self.rate.grace
        )
    }
}

impl StdError for RequestBodyTooSlow {}

pin_project! {
    /// A request body held to a [`MinDataRate`]. One per request with a
    /// body (not for those that have none).
    pub(crate) struct MinRateBody<B> {
        #[pin]
        inner: B,
        // Made at the first wait, on the runtime that polls the body.
        #[pin]
        sleep: Option<Sleep>,
        rate: MinDataRate,
        bytes: u64,
        // Time spent waiting before the wait under way.
        waited: Duration,
        waiting_since: Option<Instant>,
        failed: bool,
    }
}

impl<B> MinRateBody<B> {
    pub(crate) fn new(inner: B, rate: MinDataRate) -> Self {
        Self {
            inner,
            sleep: None,
            rate,
            bytes: 0,
            waited: Duration::ZERO,
            waiting_since: None,
            failed: false,
        }
    }
}

impl<B> Body for MinRateBody<B>
where
    B: Body<Data = Bytes>,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let mut this = self.project();
        if *this.failed {
            return Poll::Ready(None);
        }
        if let Poll::Ready(frame) = this.inner.poll_frame(cx) {
            if let Some(since) = this.waiting_since.take() {
                *this.waited += since.elapsed();
            }
            if let Some(data) = frame.as_ref().and_then(|f| f.as_ref().ok()).and_then(Frame::data_ref) {
                *this.bytes += data.len() as u64;
            }
            return Poll::Ready(frame.map(|f| f.map_err(Into::into)));
        }
        let since = *this.waiting_since.get_or_insert_with(Instant::now);
        let deadline = since + this.rate.allowed_wait(*this.bytes).saturating_sub(*this.waited);
        match this.sleep.as_mut().as_pin_mut() {
            Some(sleep) if sleep.deadline() != deadline => sleep.reset(deadline),
            Some(_) => {}
            None => this.sleep.set(Some(tokio::time::sleep_until(deadline))),
        }
        let Some(sleep) = this.sleep.as_pin_mut() else { return Poll::Pending };
        ready!(sleep.poll(cx));
        *this.failed = true;
        let error = RequestBodyTooSlow {
            rate: *this.rate,
            bytes: *this.bytes,
            waited: *this.waited + since.elapsed(),
        };
        metrics::counter!("hermes_slow_request_bodies_total").increment(1);
        tracing::debug!(%error, "failing the handler's read");
        Poll::Ready(Some(Err(Box::new(error))))
    }

    fn is_end_stream(&self) -> bool {
        self.failed || self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

pin_project! {
    /// A response body that keeps its request in progress on its
    /// connection (the [`ActiveGuard`]) until it ends or is dropped.
    pub(crate) struct Guarded<B> {
        #[pin]
        inner: B,
        guard: Option<ActiveGuard>,
    }
}

impl<B: Body> Body for Guarded<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<B::Data>, B::Error>>> {
        let this = self.project();
        let frame = ready!(this.inner.poll_frame(cx));
        if !matches!(frame, Some(Ok(_))) {
            this.guard.take();
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

mod sealed {
    use super::ActiveGuard;

    /// A response body type that can carry its request's [`ActiveGuard`]:
    /// axum's and tonic's (each boxes the guarded body: one small
    /// allocation per streamed response, whose length is not known).
    pub trait CarryGuard: Sized {
        fn carry(self, guard: ActiveGuard) -> Self;
    }
}

use sealed::CarryGuard;

impl CarryGuard for axum::body::Body {
    fn carry(self, guard: ActiveGuard) -> Self {
        Self::new(Guarded { inner: self, guard: Some(guard) })
    }
}

impl CarryGuard for tonic::body::Body {
    fn carry(self, guard: ActiveGuard) -> Self {
        Self::new(Guarded { inner: self, guard: Some(guard) })
    }
}

pin_project! {
    /// The response future of a request served by [`serve()`](super::serve())
    /// or [`serve_tonic`](super::serve_tonic): its request counts as in
    /// progress on its connection (out of the idle timeout's reach) until
    /// the response's body ends, or the future or the body is dropped.
    pub struct InProgress<F> {
        #[pin]
        inner: F,
        guard: Option<ActiveGuard>,
    }
}

impl<F> InProgress<F> {
    pub(crate) fn new(inner: F, guard: Option<ActiveGuard>) -> Self {
        Self { inner, guard }
    }
}

impl<F> fmt::Debug for InProgress<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("InProgress").field("counted", &self.guard.is_some()).finish_non_exhaustive()
    }
}

impl<F, B, E> Future for InProgress<F>
where
    F: Future<Output = Result<http::Response<B>, E>>,
    B: Body + CarryGuard,
{
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        let this = self.project();
        let output = ready!(this.inner.poll(cx));
        let Some(guard) = this.guard.take() else { return Poll::Ready(output) };
        Poll::Ready(output.map(|response| {
            if response.status() == http::StatusCode::SWITCHING_PROTOCOLS {
                // The connection is the upgraded protocol's now.
                guard.keep_for_ever();
                response
            } else if response.body().is_end_stream() || response.body().size_hint().exact().is_some() {
                // A body of known length (most responses) is written at
                // once: the request ends with its response future, and the
                // body goes unwrapped (no allocation).
                response
            } else {
                response.map(|body| body.carry(guard))
            }
        }))
    }
}
