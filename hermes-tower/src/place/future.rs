//! The response future of [`Place`](super::Place), and [`Timed`], which
//! learns what a handler future costs.

use std::{
    fmt,
    future::Future,
    panic,
    pin::Pin,
    task::{Context, Poll, ready},
    time::Instant,
};

use hermes_runtime::{
    context::{ExpectedWork, WorkerRef},
    placement::Learner,
};
use pin_project_lite::pin_project;
use tokio::{sync::oneshot, task::JoinHandle};

pin_project! {
    /// A handler future whose thread time (time spent inside `poll`) is
    /// learned as the cost of its request class when it completes.
    pub struct Timed<F> {
        #[pin]
        inner: F,
        learner: Option<Learner>,
        spent_ns: u64,
    }
}

impl<F> Timed<F> {
    /// Measures `inner` when `learner` is given.
    pub(crate) fn new(inner: F, learner: Option<Learner>) -> Self {
        Self { inner, learner, spent_ns: 0 }
    }

    /// Measures nothing.
    pub(crate) fn off(inner: F) -> Self {
        Self::new(inner, None)
    }
}

impl<F: Future> Future for Timed<F> {
    type Output = F::Output;

    #[inline]
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        let this = self.project();
        if this.learner.is_none() {
            return this.inner.poll(cx);
        }
        let start = Instant::now();
        let poll = this.inner.poll(cx);
        *this.spent_ns += u64::try_from(start.elapsed().as_nanos()).unwrap_or(u64::MAX);
        if poll.is_ready()
            && let Some(learner) = this.learner.take()
        {
            learner.learn(std::time::Duration::from_nanos(*this.spent_ns));
        }
        poll
    }
}

impl<F> fmt::Debug for Timed<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Timed").field("measured", &self.learner.is_some()).finish_non_exhaustive()
    }
}

/// The handle of a moved handler; dropping it aborts the handler (the
/// client went away, a timeout fired), so the target stops working for
/// nobody.
struct AbortOnDrop<T>(JoinHandle<T>);

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}

pin_project! {
    /// Response future of [`Place`](super::Place): the handler running here,
    /// or the handle of the handler running on another worker.
    pub struct PlaceFuture<F, B, E> {
        #[pin]
        state: State<F, B, E>,
        // Add `Connection: close` to the response.
        reconnect: bool,
    }
}

pin_project! {
    #[project = Proj]
    enum State<F, B, E> {
        // The request runs on its connection's worker, its expected work
        // counted on this worker while it runs.
        Local {
            #[pin]
            inner: Timed<F>,
            expected: Option<ExpectedWork>,
        },
        // The request runs on another worker; `worker` is the connection's.
        Remote {
            task: AbortOnDrop<Result<http::Response<B>, E>>,
            worker: WorkerRef,
        },
        // The request runs on the blocking pool of its connection's worker
        // (`worker`); dropping `_cancel` ends it at its next wake-up, and
        // `None` is what a cancelled one returns.
        Offloaded {
            task: AbortOnDrop<Option<Result<http::Response<B>, E>>>,
            _cancel: oneshot::Sender<()>,
            worker: WorkerRef,
        },
        // The request is refused (the worker's offload bound): answered 503.
        Shed,
    }
}

impl<F, B, E> PlaceFuture<F, B, E> {
    pub(crate) fn local(inner: Timed<F>, expected: Option<ExpectedWork>, reconnect: bool) -> Self {
        Self { state: State::Local { inner, expected }, reconnect }
    }

    pub(crate) fn remote(
        task: JoinHandle<Result<http::Response<B>, E>>,
        worker: WorkerRef,
        reconnect: bool,
    ) -> Self {
        Self { state: State::Remote { task: AbortOnDrop(task), worker }, reconnect }
    }

    pub(crate) fn offloaded(
        task: JoinHandle<Option<Result<http::Response<B>, E>>>,
        cancel: oneshot::Sender<()>,
        worker: WorkerRef,
        reconnect: bool,
    ) -> Self {
        Self { state: State::Offloaded { task: AbortOnDrop(task), _cancel: cancel, worker }, reconnect }
    }

    pub(crate) fn shed(reconnect: bool) -> Self {
        Self { state: State::Shed, reconnect }
    }

    /// Whether the request runs on another worker than its connection's.
    pub fn is_moved(&self) -> bool {
        matches!(self.state, State::Remote { .. })
    }

    /// Whether the request runs on the blocking pool of its connection's
    /// worker.
    pub fn is_offloaded(&self) -> bool {
        matches!(self.state, State::Offloaded { .. })
    }
}

impl<F, B, E> Future for PlaceFuture<F, B, E>
where
    F: Future<Output = Result<http::Response<B>, E>>,
    B: Default,
{
    type Output = Result<http::Response<B>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let mut output = ready!(this.state.poll(cx));
        if *this.reconnect
            && let Ok(response) = &mut output
        {
            response.headers_mut().insert(http::header::CONNECTION, http::HeaderValue::from_static("close"));
        }
        Poll::Ready(output)
    }
}

impl<F, B, E> Future for State<F, B, E>
where
    F: Future<Output = Result<http::Response<B>, E>>,
    B: Default,
{
    type Output = Result<http::Response<B>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project() {
            Proj::Local { inner, expected } => {
                let output = ready!(inner.poll(cx));
                // Done: the worker's expected work drops now.
                drop(expected.take());
                Poll::Ready(output)
            }
            Proj::Remote { task, worker } => match ready!(Pin::new(&mut task.0).poll(cx)) {
                Ok(output) => Poll::Ready(output),
                Err(e) if e.is_panic() => panic::resume_unwind(e.into_panic()),
                Err(_) => Poll::Ready(Ok(lost(worker))),
            },
            Proj::Offloaded { task, worker, .. } => match ready!(Pin::new(&mut task.0).poll(cx)) {
                Ok(Some(output)) => Poll::Ready(output),
                Err(e) if e.is_panic() => panic::resume_unwind(e.into_panic()),
                // Cancelled: the runtime shut down before the handler ended
                // (this future still holds the cancel handle, so it was not
                // this side).
                Ok(None) | Err(_) => Poll::Ready(Ok(lost(worker))),
            },
            Proj::Shed => Poll::Ready(Ok(shed())),
        }
    }
}

/// The answer to a placed request whose handler was cancelled by its
/// runtime's shutdown: counted, logged, `503 Service Unavailable`.
fn lost<B: Default>(worker: &WorkerRef) -> http::Response<B> {
    worker.placed_request_lost();
    let mut response = http::Response::new(B::default());
    *response.status_mut() = http::StatusCode::SERVICE_UNAVAILABLE;
    response
}

/// The answer to a request refused at its worker's offload bound: `503
/// Service Unavailable`, to be retried in a second.
fn shed<B: Default>() -> http::Response<B> {
    let mut response = http::Response::new(B::default());
    *response.status_mut() = http::StatusCode::SERVICE_UNAVAILABLE;
    response.headers_mut().insert(http::header::RETRY_AFTER, http::HeaderValue::from_static("1"));
    response
}

impl<F, B, E> fmt::Debug for PlaceFuture<F, B, E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.state {
            State::Local { .. } => f.write_str("PlaceFuture::Local"),
            State::Remote { worker, .. } => {
                f.debug_struct("PlaceFuture::Remote").field("owner", &worker.id()).finish()
            }
            State::Offloaded { worker, .. } => {
                f.debug_struct("PlaceFuture::Offloaded").field("owner", &worker.id()).finish()
            }
            State::Shed => f.write_str("PlaceFuture::Shed"),
        }
    }
}
