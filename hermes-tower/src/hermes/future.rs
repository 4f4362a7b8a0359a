//! The response future of [`Hermes`](super::Hermes), which holds the
//! runtime's request guard ([`hermes_runtime::context::InFlight`]) so that
//! the worker's slot is right however the request ends.

use std::{
    fmt,
    future::Future,
    pin::Pin,
    task::{Context, Poll, ready},
};

use hermes_runtime::context::InFlight;
use pin_project_lite::pin_project;

pin_project! {
    /// Response future of [`Hermes`](super::Hermes).
    ///
    /// Yields the inner future's output unchanged. The request stops counting
    /// as in flight when this future completes; if it is dropped first (the
    /// connection closed, a timeout gave up on it) or the inner future
    /// panics, it stops counting when the future is dropped or unwound.
    pub struct ResponseFuture<F> {
        #[pin]
        inner: F,
        in_flight: Option<InFlight>,
    }
}

impl<F> ResponseFuture<F> {
    pub(crate) fn new(inner: F, in_flight: Option<InFlight>) -> Self {
        Self { inner, in_flight }
    }
}

impl<F: Future> Future for ResponseFuture<F> {
    type Output = F::Output;

    #[inline]
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let output = ready!(this.inner.poll(cx));
        // Done: settle the slot now, not whenever the caller drops us.
        drop(this.in_flight.take());
        Poll::Ready(output)
    }
}

impl<F> fmt::Debug for ResponseFuture<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ResponseFuture").field("in_flight", &self.in_flight).finish_non_exhaustive()
    }
}
