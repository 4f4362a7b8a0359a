//! When arrivals are due and what they ask for: the Poisson gaps, the weighted request mix, the
//! instant a request's latency counts from, and the tally of arrivals and wake-up lateness.

use std::time::Duration;

use hdrhistogram::Histogram;
use hyper::Uri;
use tokio::time::{Instant, sleep_until};

use super::tally::{HIST_MAX_US, record_us};

/// The resolution of the runtime's timer. A send that wakes up to one tick after its scheduled
/// time is counted from the wake-up; lateness beyond one tick (a client or connection that fell
/// behind its schedule) is counted in full.
const TIMER_TICK: Duration = Duration::from_millis(1);

/// The instant a request's latency counts from: its scheduled time plus the wake-up lateness the
/// timer's resolution explains (at most one tick). Lateness beyond that counts.
pub(super) fn origin(scheduled: Instant) -> Instant {
    Instant::now().min(scheduled + TIMER_TICK)
}

/// A small xorshift generator: arrivals and the request mix need no more.
#[derive(Debug, Clone)]
pub(super) struct Rng(u64);

impl Rng {
    pub(super) fn new(seed: u64) -> Self {
        Self(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }

    /// Uniform in [0, 1).
    fn next_f64(&mut self) -> f64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        (x.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 11) as f64 / (1u64 << 53) as f64
    }

    /// A generator of its own for a task this one's task starts, seeded from this one.
    pub(super) fn fork(&mut self) -> Self {
        Self::new((self.next_f64() * u64::MAX as f64) as u64)
    }

    /// Exponentially distributed gap for a Poisson process of `rate` per second.
    pub(super) fn gap(&mut self, rate: f64) -> Duration {
        Duration::from_secs_f64(-(1.0 - self.next_f64()).ln() / rate)
    }
}

/// Picks a path from a weighted mix.
#[derive(Debug, Clone)]
pub(super) struct Mix {
    cumulative: Vec<(f64, String)>,
    /// The paths parsed once, in the order of `cumulative`.
    uris: Vec<Uri>,
}

impl Mix {
    pub(super) fn new(mix: &[(f64, String)]) -> Self {
        let total: f64 = mix.iter().map(|(w, _)| w).sum();
        let mut acc = 0.0;
        let cumulative = mix
            .iter()
            .map(|(w, p)| {
                acc += w / total;
                (acc, p.clone())
            })
            .collect::<Vec<(f64, String)>>();
        let uris =
            cumulative.iter().map(|(_, p)| p.parse().unwrap_or_else(|_| Uri::from_static("/"))).collect();
        Self { cumulative, uris }
    }

    fn index(&self, rng: &mut Rng) -> usize {
        let u = rng.next_f64();
        self.cumulative.iter().position(|(c, _)| u < *c).unwrap_or(self.cumulative.len().saturating_sub(1))
    }

    /// A path, parsed.
    pub(super) fn pick_uri(&self, rng: &mut Rng) -> &Uri {
        &self.uris[self.index(rng)]
    }

    /// A path.
    pub(super) fn pick(&self, rng: &mut Rng) -> &str {
        self.cumulative.get(self.index(rng)).map(|(_, p)| p.as_str()).unwrap_or("/")
    }
}

/// The arrivals a sending task scheduled and how late it woke up for them.
#[derive(Debug)]
pub(super) struct Schedule {
    /// Arrivals scheduled within the window, sent or not.
    pub(super) offered: u64,
    /// The wake-up lateness, in microseconds.
    pub(super) wake: Histogram<u64>,
}

impl Schedule {
    pub(super) fn new() -> Self {
        // Two significant digits are plenty for the generator's own lateness.
        let wake = Histogram::new_with_bounds(1, HIST_MAX_US, 2).expect("valid histogram bounds");
        Self { offered: 0, wake }
    }

    /// Counts the arrival due at `scheduled`, and when it is still ahead, sleeps until then and
    /// records how late the wake-up came: the generator's own lag. An arrival already due (a
    /// keep-alive connection's previous answer came late) is the server's lag instead.
    pub(super) async fn wait_for(&mut self, scheduled: Instant) {
        self.offered += 1;
        if Instant::now() < scheduled {
            sleep_until(scheduled).await;
            record_us(&mut self.wake, Instant::now().saturating_duration_since(scheduled).as_micros() as u64);
        }
    }

    /// Adds another task's arrivals and lateness.
    pub(super) fn merge(&mut self, other: &Schedule) {
        self.offered += other.offered;
        self.wake.add(&other.wake).expect("histograms of the same bounds");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn poisson_gaps_average_to_the_rate() {
        let mut rng = Rng::new(7);
        let n = 100_000;
        let total: f64 = (0..n).map(|_| rng.gap(1000.0).as_secs_f64()).sum();
        let mean = total / n as f64;
        assert!((mean - 0.001).abs() < 0.00005, "mean gap {mean}");
    }

    #[test]
    fn mix_follows_its_weights() {
        let mix = Mix::new(&[(95.0, "/".to_owned()), (5.0, "/heavy".to_owned())]);
        let mut rng = Rng::new(3);
        let heavy = (0..100_000).filter(|_| mix.pick(&mut rng) == "/heavy").count();
        assert!((4_500..5_500).contains(&heavy), "{heavy} heavy of 100000");
    }
}
