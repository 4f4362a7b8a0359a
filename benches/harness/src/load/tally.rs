//! Where the measurements go: each keep-alive connection's own [`Tally`], and the shared
//! [`Recorder`] that the per-request tasks record into and every tally is merged into.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::Duration;

use hdrhistogram::Histogram;
use hyper::header::HeaderValue;
use tokio::time::Instant;

use super::SLOW;
use super::outcome::{Outcome, StreamCounts};
use super::schedule::Schedule;

/// Highest latency the histograms track, in microseconds (60 s).
pub(super) const HIST_MAX_US: u64 = 60_000_000;

/// An empty latency histogram: microseconds, three significant digits.
fn latency_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, HIST_MAX_US, 3).expect("valid histogram bounds")
}

/// Records `us` microseconds, clamped to the histograms' bounds.
pub(super) fn record_us(hist: &mut Histogram<u64>, us: u64) {
    hist.record(us.clamp(1, HIST_MAX_US)).expect("value within bounds");
}

fn bump(map: &mut BTreeMap<String, u64>, key: &str, n: u64) {
    match map.get_mut(key) {
        Some(v) => *v += n,
        None => {
            map.insert(key.to_owned(), n);
        }
    }
}

/// Adds the counts of `from` to those of `into`, key by key.
fn add_counts(into: &mut BTreeMap<String, u64>, from: BTreeMap<String, u64>) {
    for (k, v) in from {
        bump(into, &k, v);
    }
}

/// Adds one task's figures of a stream to the run's.
fn merge_stream(ours: &mut StreamCounts, theirs: StreamCounts) {
    add_counts(&mut ours.requests_by_worker, theirs.requests_by_worker);
    add_counts(&mut ours.conns_by_worker, theirs.conns_by_worker);
    match (ours.hist.as_mut(), theirs.hist) {
        (Some(h), Some(t)) => h.add(&t).expect("histograms of the same bounds"),
        (None, t) => ours.hist = t,
        (Some(_), None) => {}
    }
}

/// Measurements of one task, or of all of them once merged.
#[derive(Debug)]
pub(super) struct Tally {
    /// End of the measurement window.
    end: Instant,
    hist: Histogram<u64>,
    ok: u64,
    /// Successes completed within the window.
    in_window: u64,
    slow: u64,
    errors: BTreeMap<String, u64>,
    requests_by_worker: BTreeMap<String, u64>,
    conns_by_worker: BTreeMap<String, u64>,
    /// The arrivals scheduled and the generator's lateness waking up for them.
    pub(super) schedule: Schedule,
    streams: Vec<StreamCounts>,
}

impl Tally {
    pub(super) fn new(end: Instant) -> Self {
        Self {
            end,
            hist: latency_histogram(),
            ok: 0,
            in_window: 0,
            slow: 0,
            errors: BTreeMap::new(),
            requests_by_worker: BTreeMap::new(),
            conns_by_worker: BTreeMap::new(),
            schedule: Schedule::new(),
            streams: Vec::new(),
        }
    }

    fn stream(&mut self, stream: usize) -> &mut StreamCounts {
        if self.streams.len() <= stream {
            self.streams.resize_with(stream + 1, StreamCounts::default);
        }
        &mut self.streams[stream]
    }

    /// Records a success of stream `stream`; `origin` is what latency is measured from (see
    /// [`origin`](super::schedule::origin)).
    pub(super) fn success(
        &mut self,
        stream: usize,
        origin: Instant,
        worker: Option<&HeaderValue>,
        first_on_conn: bool,
    ) {
        let now = Instant::now();
        let latency = now.saturating_duration_since(origin);
        let us = latency.as_micros() as u64;
        record_us(&mut self.hist, us);
        self.ok += 1;
        if now <= self.end {
            self.in_window += 1;
        }
        if latency > SLOW {
            self.slow += 1;
        }
        let worker = worker.and_then(|w| w.to_str().ok()).unwrap_or("?");
        if first_on_conn {
            bump(&mut self.conns_by_worker, worker, 1);
            bump(&mut self.stream(stream).conns_by_worker, worker, 1);
        }
        bump(&mut self.requests_by_worker, worker, 1);
        let counts = self.stream(stream);
        bump(&mut counts.requests_by_worker, worker, 1);
        record_us(counts.hist.get_or_insert_with(latency_histogram), us);
    }

    /// Counts `n` failures of one kind.
    pub(super) fn errors(&mut self, kind: &str, n: u64) {
        if n > 0 {
            bump(&mut self.errors, kind, n);
        }
    }

    fn merge(&mut self, other: Tally) {
        self.hist.add(&other.hist).expect("histograms of the same bounds");
        self.ok += other.ok;
        self.in_window += other.in_window;
        self.slow += other.slow;
        add_counts(&mut self.errors, other.errors);
        add_counts(&mut self.requests_by_worker, other.requests_by_worker);
        add_counts(&mut self.conns_by_worker, other.conns_by_worker);
        self.schedule.merge(&other.schedule);
        for (i, theirs) in other.streams.into_iter().enumerate() {
            merge_stream(self.stream(i), theirs);
        }
    }
}

/// Shared sink for the measurements of all tasks. Keep-alive connections keep their own [`Tally`]
/// and merge it at the end; per-request tasks record here directly.
#[derive(Debug)]
pub(super) struct Recorder {
    inner: Mutex<Tally>,
}

impl Recorder {
    pub(super) fn new(end: Instant) -> Self {
        Self { inner: Mutex::new(Tally::new(end)) }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Tally> {
        self.inner.lock().expect("recorder lock")
    }

    pub(super) fn success(
        &self,
        stream: usize,
        origin: Instant,
        worker: Option<&HeaderValue>,
        first_on_conn: bool,
    ) {
        self.lock().success(stream, origin, worker, first_on_conn);
    }

    /// Adds the arrivals a task scheduled and its wake-up lateness.
    pub(super) fn merge_schedule(&self, schedule: &Schedule) {
        self.lock().schedule.merge(schedule);
    }

    /// Counts one failure.
    pub(super) fn error(&self, kind: &str) {
        self.lock().errors(kind, 1);
    }

    /// Adds a keep-alive connection's own tally.
    pub(super) fn merge(&self, tally: Tally) {
        self.lock().merge(tally);
    }

    pub(super) fn finish(self, duration: Duration, hung_worker: Option<String>, hangs: u64) -> Outcome {
        let g = self.inner.into_inner().expect("recorder lock");
        Outcome {
            hist: g.hist,
            ok: g.ok,
            in_window: g.in_window,
            window: duration,
            errors: g.errors,
            slow: g.slow,
            requests_by_worker: g.requests_by_worker,
            conns_by_worker: g.conns_by_worker,
            hung_worker,
            hangs,
            offered: g.schedule.offered,
            wake: g.schedule.wake,
            streams: g.streams,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::outcome::others_quantile_ms;
    use super::*;

    #[test]
    fn stream_quantiles_are_their_own_and_the_others_merged() {
        let end = Instant::now() + Duration::from_secs(60);
        let mut tally = Tally::new(end);
        let now = Instant::now();
        // Stream 0: 100 successes that count from now; stream 1: 10 that count from 50 ms ago,
        // stream 2: 10 from 20 ms ago.
        for _ in 0..100 {
            tally.success(0, now, None, false);
        }
        for _ in 0..10 {
            tally.success(1, now - Duration::from_millis(50), None, false);
            tally.success(2, now - Duration::from_millis(20), None, false);
        }
        assert!(tally.streams[0].quantile_ms(0.99).unwrap() < 20.0);
        assert!(tally.streams[1].quantile_ms(0.5).unwrap() >= 50.0);
        // Without stream 1: 100 fast and 10 at 20 ms, p99 is 20 ms and some.
        let others = others_quantile_ms(&tally.streams, 1, 0.99).unwrap();
        assert!((20.0..50.0).contains(&others), "{others}");
        // Without stream 0: half at 20 ms, half at 50 ms.
        assert!(others_quantile_ms(&tally.streams, 0, 0.99).unwrap() >= 50.0);
        assert_eq!(others_quantile_ms(&tally.streams[..1], 0, 0.99), None);

        // A keep-alive connection's own tally, merged: its stream's latencies come along.
        let mut conn = Tally::new(end);
        for _ in 0..10 {
            conn.success(1, now - Duration::from_millis(80), None, false);
        }
        tally.merge(conn);
        assert!(tally.streams[1].quantile_ms(0.99).unwrap() >= 80.0);
        assert_eq!(tally.streams[1].hist.as_ref().map(|h| h.len()), Some(20));
        let mut fresh = Tally::new(end);
        fresh.merge(tally);
        assert_eq!(fresh.streams[2].hist.as_ref().map(|h| h.len()), Some(10));
    }
}
