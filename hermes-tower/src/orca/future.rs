//! Putting a per-request report on a response: [`HeaderFuture`] (HTTP: the
//! `endpoint-load-metrics` header) and [`TrailerFuture`] (gRPC: the
//! `endpoint-load-metrics-bin` trailer, through [`TrailerBody`]). Both
//! count the failed responses into the host's error rate.

use std::{
    pin::Pin,
    sync::Arc,
    task::{Context, Poll, ready},
};

use http::{HeaderName, Response};
use http_body::{Body as HttpBody, Frame};
use pin_project_lite::pin_project;

use super::{
    cache::Reports,
    report::{HEADER, TRAILER},
};

const GRPC_STATUS: HeaderName = HeaderName::from_static("grpc-status");

pin_project! {
    /// An HTTP response future whose response gets the report header (when
    /// reports are on); a `5xx` response counts as an error.
    pub struct HeaderFuture<F> {
        #[pin]
        inner: F,
        reports: Option<Arc<Reports>>,
    }
}

impl<F> HeaderFuture<F> {
    pub(crate) fn new(inner: F, reports: Option<Arc<Reports>>) -> Self {
        Self { inner, reports }
    }
}

impl<F, B, E> Future for HeaderFuture<F>
where
    F: Future<Output = Result<Response<B>, E>>,
{
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        let this = self.project();
        let mut output = ready!(this.inner.poll(cx));
        if let (Some(reports), Ok(response)) = (this.reports.take(), &mut output) {
            if response.status().is_server_error() {
                reports.count_error();
            }
            response.headers_mut().insert(HeaderName::from_static(HEADER), reports.header());
        }
        Poll::Ready(output)
    }
}

pin_project! {
    /// A gRPC response future whose call gets the report trailer (when
    /// reports are on): in the headers of a trailers-only response (an
    /// error answered at once), otherwise in the trailers at the body's
    /// end. A status other than `OK` counts as an error.
    pub struct TrailerFuture<F> {
        #[pin]
        inner: F,
        reports: Option<Arc<Reports>>,
    }
}

impl<F> TrailerFuture<F> {
    pub(crate) fn new(inner: F, reports: Option<Arc<Reports>>) -> Self {
        Self { inner, reports }
    }
}

impl<F, E> Future for TrailerFuture<F>
where
    F: Future<Output = Result<Response<tonic::body::Body>, E>>,
{
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        let this = self.project();
        let output = ready!(this.inner.poll(cx));
        let (Some(reports), Ok(response)) = (this.reports.take(), output.as_ref()) else {
            return Poll::Ready(output);
        };
        if let Some(status) = response.headers().get(GRPC_STATUS) {
            // Trailers-only: the headers are the trailers.
            if status != "0" {
                reports.count_error();
            }
            let mut output = output;
            if let Ok(response) = &mut output {
                response.headers_mut().insert(HeaderName::from_static(TRAILER), reports.trailer());
            }
            return Poll::Ready(output);
        }
        // tonic boxes its bodies: wrapping this one costs one more box per
        // call (the price of a trailer tonic has no API for).
        Poll::Ready(output.map(|response| {
            response.map(|body| tonic::body::Body::new(TrailerBody { inner: body, reports: Some(reports) }))
        }))
    }
}

pin_project! {
    /// A gRPC response body that adds the report to its trailers.
    pub struct TrailerBody<B> {
        #[pin]
        inner: B,
        reports: Option<Arc<Reports>>,
    }
}

impl<B> HttpBody for TrailerBody<B>
where
    B: HttpBody,
{
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<B::Data>, B::Error>>> {
        let this = self.project();
        let frame = ready!(this.inner.poll_frame(cx));
        let Some(Ok(frame)) = frame else { return Poll::Ready(frame) };
        let frame = match frame.into_trailers() {
            Ok(mut trailers) => {
                if let Some(reports) = this.reports.take() {
                    if trailers.get(GRPC_STATUS).is_some_and(|s| s != "0") {
                        reports.count_error();
                    }
                    trailers.insert(HeaderName::from_static(TRAILER), reports.trailer());
                }
                Frame::trailers(trailers)
            }
            Err(frame) => frame,
        };
        Poll::Ready(Some(Ok(frame)))
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}
