//! What the view knows of the server: the last two snapshots (rates are the
//! differences between them), the eligible workers' count over the last
//! minute, and the last failure to read. [`History::rows`] turns it into
//! one [`WorkerRow`] per worker, [`History::kernel`] into the kernel's
//! counters and their rates.

use std::{
    collections::VecDeque,
    time::{Duration, Instant},
};

use hermes_runtime::{Snapshot, WorkerSnapshot, WorkerStatus};

use crate::fetch::Sample;

/// How far back the eligible workers' count goes.
pub const WINDOW: Duration = Duration::from_secs(60);

/// One snapshot and when it was read.
#[derive(Debug, Clone)]
pub struct Timed {
    /// When it was read.
    pub at: Instant,
    /// What it said.
    pub snapshot: Snapshot,
}

/// The samples read so far, as much of them as the view needs.
#[derive(Debug, Default)]
pub struct History {
    /// The last snapshot read.
    pub latest: Option<Timed>,
    /// The one before it, for rates.
    previous: Option<Timed>,
    /// The workers in the list of eligible workers at each read of the last
    /// [`WINDOW`].
    population: VecDeque<(Instant, u32)>,
    /// The last read's failure, when the last read failed.
    pub error: Option<(Instant, String)>,
}

/// One worker's line: its table values now and its counters' rates over
/// the last interval (`None` without a previous snapshot of the same process).
#[derive(Debug, Clone, PartialEq)]
pub struct WorkerRow {
    /// The worker's values in the last snapshot.
    pub now: WorkerSnapshot,
    /// Connections accepted per second.
    pub accepted_per_s: Option<f64>,
    /// Requests of other workers' connections run here, per second.
    pub placed_in_per_s: Option<f64>,
    /// Requests of this worker's connections run elsewhere, per second.
    pub placed_out_per_s: Option<f64>,
    /// Requests run on this worker's blocking pool, per second.
    pub offloaded_per_s: Option<f64>,
    /// Connections refused over the per-worker limit, per second.
    pub refused_per_s: Option<f64>,
}

/// A counter's total and its rate over the last interval.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Counter {
    /// The total so far.
    pub total: u64,
    /// Its increase per second over the last interval.
    pub per_s: Option<f64>,
}

/// The kernel program's counters: its runs and the connections it left to
/// the kernel's hash, by reason.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Kernel {
    /// Times the program ran (one per new connection).
    pub runs: Counter,
    /// Fewer eligible workers than the kernel's minimum.
    pub too_few: Counter,
    /// The list was never published or is stale.
    pub stale: Counter,
    /// The chosen workers had no listener.
    pub no_socket: Counter,
    /// Queued connections migrated from closing listeners.
    pub migrated: Counter,
    /// Times the self-check found the program gone and attached it again.
    pub dispatch_lost: Counter,
}

impl History {
    /// Takes one more read in.
    pub fn push(&mut self, sample: Sample) {
        match sample.result {
            Ok(snapshot) => {
                self.population
                    .push_back((sample.at, u32::try_from(snapshot.eligible_count).unwrap_or(u32::MAX)));
                while self.population.front().is_some_and(|&(t, _)| sample.at.duration_since(t) > WINDOW) {
                    self.population.pop_front();
                }
                self.previous = self.latest.take();
                self.latest = Some(Timed { at: sample.at, snapshot });
                self.error = None;
            }
            Err(e) => self.error = Some((sample.at, e)),
        }
    }

    /// The two snapshots a rate is taken over: of the same process, read
    /// some time apart.
    fn interval(&self) -> Option<(&Snapshot, &Snapshot, f64)> {
        let (previous, latest) = (self.previous.as_ref()?, self.latest.as_ref()?);
        let seconds = latest.at.duration_since(previous.at).as_secs_f64();
        (previous.snapshot.pid == latest.snapshot.pid && seconds > 0.0).then_some((
            &previous.snapshot,
            &latest.snapshot,
            seconds,
        ))
    }

    /// One row per worker of the last snapshot, by id.
    pub fn rows(&self) -> Vec<WorkerRow> {
        let Some(latest) = &self.latest else { return Vec::new() };
        let interval = self.interval();
        latest
            .snapshot
            .workers
            .iter()
            .map(|now| {
                let before = interval.and_then(|(previous, _, s)| {
                    previous.workers.iter().find(|w| w.id == now.id).map(|w| (w, s))
                });
                let per_s = |field: fn(&WorkerSnapshot) -> u64| {
                    before.and_then(|(then, seconds)| rate(field(then), field(now), seconds))
                };
                WorkerRow {
                    now: now.clone(),
                    accepted_per_s: per_s(|w| w.accepted),
                    placed_in_per_s: per_s(|w| w.placed_in),
                    placed_out_per_s: per_s(|w| w.placed_out),
                    offloaded_per_s: per_s(|w| w.offloaded),
                    refused_per_s: per_s(|w| w.refused),
                }
            })
            .collect()
    }

    /// The kernel's counters in the last snapshot, with their rates.
    pub fn kernel(&self) -> Option<Kernel> {
        let latest = &self.latest.as_ref()?.snapshot;
        let interval = self.interval();
        let counter = |field: fn(&Snapshot) -> u64| Counter {
            total: field(latest),
            per_s: interval.and_then(|(previous, _, seconds)| rate(field(previous), field(latest), seconds)),
        };
        Some(Kernel {
            runs: counter(|s| s.program_runs),
            too_few: counter(|s| s.fallbacks.too_few),
            stale: counter(|s| s.fallbacks.stale),
            no_socket: counter(|s| s.fallbacks.no_socket),
            migrated: counter(|s| s.migrated),
            dispatch_lost: counter(|s| s.dispatch_lost),
        })
    }

    /// The fewest workers in the list in each of `columns` equal slices
    /// of the last [`WINDOW`] up to `now`, oldest first; `None` for a slice
    /// with no read.
    pub fn population(&self, columns: usize, now: Instant) -> Vec<Option<u64>> {
        let slice = WINDOW.as_secs_f64() / columns.max(1) as f64;
        let mut fewest = vec![None; columns];
        for &(at, count) in &self.population {
            let age = now.saturating_duration_since(at).as_secs_f64();
            let back = (age / slice) as usize;
            if back < columns {
                let column = &mut fewest[columns - 1 - back];
                *column = Some(column.map_or(u64::from(count), |c: u64| c.min(u64::from(count))));
            }
        }
        fewest
    }

    /// Workers serving, and workers in the last list.
    pub fn serving_and_eligible(&self) -> (usize, usize) {
        let Some(latest) = &self.latest else { return (0, 0) };
        let workers = &latest.snapshot.workers;
        let serving = workers.iter().filter(|w| w.state == WorkerStatus::Serving).count();
        (serving, workers.iter().filter(|w| w.eligible).count())
    }
}

/// The increase from `then` to `now` per second; `None` when the counter
/// went down (it restarted).
fn rate(then: u64, now: u64, seconds: f64) -> Option<f64> {
    now.checked_sub(then).map(|d| d as f64 / seconds)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A read of `accepted` by worker, with the workers of `bitmap`
    /// (bit `i`: worker `i`) eligible.
    fn sample(at: Instant, pid: u32, accepted: &[u64], bitmap: u64) -> Sample {
        let workers = accepted
            .iter()
            .enumerate()
            .map(|(id, &accepted)| WorkerSnapshot { id, accepted, ..Default::default() })
            .collect();
        let eligible: Vec<usize> = (0..64).filter(|i| bitmap >> i & 1 == 1).collect();
        let eligible_count = eligible.len();
        Sample { at, result: Ok(Snapshot { pid, eligible_count, eligible, workers, ..Default::default() }) }
    }

    #[test]
    fn rates_are_differences_over_the_time_between_two_reads() {
        let t0 = Instant::now();
        let mut history = History::default();
        history.push(sample(t0, 1, &[10, 0], 0b11));
        assert_eq!(history.rows()[0].accepted_per_s, None, "one read: no rate yet");
        history.push(sample(t0 + Duration::from_millis(500), 1, &[60, 5], 0b01));
        let rows = history.rows();
        assert_eq!(rows[0].accepted_per_s, Some(100.0));
        assert_eq!(rows[1].accepted_per_s, Some(10.0));
        assert_eq!(rows[1].now.accepted, 5);
    }

    #[test]
    fn a_new_process_or_a_failed_read_gives_no_rate_and_keeps_the_last_snapshot() {
        let t0 = Instant::now();
        let mut history = History::default();
        history.push(sample(t0, 1, &[10], 1));
        history.push(sample(t0 + Duration::from_secs(1), 2, &[3], 1));
        assert_eq!(history.rows()[0].accepted_per_s, None, "another pid: counters started again");
        history.push(Sample { at: t0 + Duration::from_secs(2), result: Err("refused".to_owned()) });
        assert_eq!(history.rows()[0].now.accepted, 3);
        assert_eq!(history.error.as_ref().map(|(_, e)| e.as_str()), Some("refused"));
        history.push(sample(t0 + Duration::from_secs(3), 2, &[5], 1));
        assert_eq!(history.rows()[0].accepted_per_s, Some(1.0));
        assert!(history.error.is_none());
    }

    #[test]
    fn the_population_keeps_the_fewest_eligible_per_slice_of_the_last_minute() {
        let t0 = Instant::now();
        let mut history = History::default();
        for (s, bitmap) in [(0, 0b111), (2, 0b1), (3, 0b111), (30, 0b11), (61, 0b1111)] {
            history.push(sample(t0 + Duration::from_secs(s), 1, &[0], bitmap));
        }
        // 6 slices of 10 s ending at t0 + 61 s: the read at 0 s is out of the
        // window; 2 s and 3 s (59 and 58 s old) are in the oldest slice, 30 s
        // (31 s old) in the third, 61 s in the last.
        let columns = history.population(6, t0 + Duration::from_secs(61));
        assert_eq!(columns, vec![Some(1), None, Some(2), None, None, Some(4)]);
    }
}
