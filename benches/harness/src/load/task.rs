//! What a sending task is given: the run's shared [`RunContext`] and its own [`Traffic`], and for
//! the streams whose every request is a task of its own, the [`PerRequest`] arrival loop.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinSet;
use tokio::time::Instant;

use super::schedule::{Mix, Rng, Schedule};
use super::tally::Recorder;

/// The arrival rate of a stream that has none, for the transports that need one.
const DEFAULT_RATE: f64 = 1000.0;

/// The measurement window of a run.
#[derive(Debug, Clone, Copy)]
pub(super) struct Window {
    /// Arrivals are scheduled from here...
    pub(super) start: Instant,
    /// ...to here.
    pub(super) end: Instant,
    /// Requests still unanswered by here (the end plus the drain) are given up.
    pub(super) give_up: Instant,
}

/// What every sending task of a run shares.
#[derive(Debug)]
pub(super) struct RunContext {
    /// The server, on loopback.
    pub(super) addr: SocketAddr,
    pub(super) window: Window,
    /// A request unanswered after this long counts as an error.
    pub(super) request_timeout: Duration,
    /// Where the per-request tasks record, and the keep-alive connections merge their tallies.
    pub(super) recorder: Recorder,
}

/// One sending task's part of a stream.
#[derive(Debug)]
pub(super) struct Traffic {
    /// The stream's index in the plan.
    pub(super) stream: usize,
    /// This task's arrival rate in requests per second (the stream's, divided among its
    /// connections); `None` sends back to back (closed loop).
    pub(super) rate: Option<f64>,
    pub(super) mix: Mix,
    /// The task's own random source, for its arrivals and its picks from the mix.
    pub(super) rng: Rng,
}

/// The arrival loop of a task whose every request is a task of its own (HTTP/2 streams, fresh
/// connections): Poisson arrivals at the traffic's rate, at most `cap` requests in flight.
#[derive(Debug)]
pub(super) struct PerRequest {
    traffic: Traffic,
    rate: f64,
    /// The next arrival.
    next: Instant,
    end: Instant,
    schedule: Schedule,
    in_flight: Arc<Semaphore>,
    requests: JoinSet<()>,
}

impl PerRequest {
    pub(super) fn new(mut traffic: Traffic, window: Window, cap: usize) -> Self {
        let rate = traffic.rate.unwrap_or(DEFAULT_RATE);
        let next = window.start + traffic.rng.gap(rate);
        Self {
            traffic,
            rate,
            next,
            end: window.end,
            schedule: Schedule::new(),
            in_flight: Arc::new(Semaphore::new(cap)),
            requests: JoinSet::new(),
        }
    }

    /// The stream's index in the plan.
    pub(super) fn stream(&self) -> usize {
        self.traffic.stream
    }

    /// Waits for the next arrival of the window; returns its scheduled time and its place among
    /// the requests in flight, to hold until it is answered. An arrival over the cap counts as an
    /// error and is skipped. `None` once the window is over.
    pub(super) async fn next(&mut self, recorder: &Recorder) -> Option<(Instant, OwnedSemaphorePermit)> {
        while self.next < self.end {
            let scheduled = self.next;
            self.schedule.wait_for(scheduled).await;
            self.next += self.traffic.rng.gap(self.rate);
            match self.in_flight.clone().try_acquire_owned() {
                Ok(permit) => return Some((scheduled, permit)),
                Err(_) => recorder.error("client in-flight cap"),
            }
        }
        None
    }

    /// A path from the stream's mix.
    pub(super) fn pick(&mut self) -> String {
        self.traffic.mix.pick(&mut self.traffic.rng).to_owned()
    }

    /// Runs one request as a task of its own, and reaps the ones that are done.
    pub(super) fn spawn(&mut self, request: impl Future<Output = ()> + Send + 'static) {
        self.requests.spawn(request);
        while self.requests.try_join_next().is_some() {}
    }

    /// Records the arrivals and the wake-up lateness, then waits for every request in flight.
    pub(super) async fn finish(mut self, recorder: &Recorder) {
        recorder.merge_schedule(&self.schedule);
        while self.requests.join_next().await.is_some() {}
    }
}
