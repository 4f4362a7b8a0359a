//! The scenarios: what traffic each one sends and for how long.
//!
//! Heavy requests are `/block?ms=N` (the worker thread sleeps), not `/work?us=N` (the worker spins):
//! on a 2-core machine the generator and the server share the cores, and CPU spin in the server
//! would slow the generator and blur what is measured. Blocking holds the worker exactly as a
//! spinning handler would, as far as the worker's other connections can tell. `mixed-spin` is the
//! exception that checks this: `mixed` with real CPU spin, at a rate low enough that the spin
//! leaves the generator its share of the cores (see [`SPIN_RATE`]).

use std::fmt;
use std::sync::OnceLock;
use std::time::Duration;

use clap::ValueEnum;
use clap::builder::PossibleValue;

use crate::load::{Hang, Plan, Stream, Transport};

/// A scenario, as named on the command line and in the reports; declared in report order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Name {
    Light,
    Mixed,
    MixedSpin,
    Skew,
    Churn,
    Hang,
    H2,
    Capacity,
    CapacityH2,
}

impl Name {
    /// Every scenario, in report order.
    pub fn all() -> &'static [Name] {
        Name::value_variants()
    }

    /// The scenario's place in report order.
    pub fn index(self) -> usize {
        Name::all().iter().position(|n| *n == self).expect("every scenario is listed")
    }

    /// True for the scenarios measured at saturation and then at a fixed rate near it (see
    /// `capacity.rs`).
    pub fn is_capacity(self) -> bool {
        matches!(self, Name::Capacity | Name::CapacityH2)
    }
}

impl fmt::Display for Name {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.to_possible_value().expect("no scenario is hidden").get_name())
    }
}

/// What `--scenario` accepts: one scenario, or `all` of them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Choice {
    One(Name),
    All,
}

impl Choice {
    /// The scenarios chosen: `all` gives every one, in report order.
    pub fn names(self) -> Vec<Name> {
        match self {
            Choice::One(name) => vec![name],
            Choice::All => Name::all().to_vec(),
        }
    }
}

impl ValueEnum for Choice {
    fn value_variants<'a>() -> &'a [Self] {
        static CHOICES: OnceLock<Vec<Choice>> = OnceLock::new();
        CHOICES.get_or_init(|| Name::all().iter().copied().map(Choice::One).chain([Choice::All]).collect())
    }

    fn to_possible_value(&self) -> Option<PossibleValue> {
        match self {
            Choice::One(name) => name.to_possible_value(),
            Choice::All => Some(PossibleValue::new("all")),
        }
    }
}

/// The heavy request: 10 ms of worker time, emulated by blocking the worker thread.
pub const HEAVY: &str = "/block?ms=10";

/// The heavy request of `mixed-spin`: 10 ms of CPU spin in the worker.
pub const SPIN: &str = "/work?us=10000";

/// The arrival rate of `mixed-spin`. 5% of the arrivals spin 10 ms, so the server spins
/// 1000 × 0.05 × 10 ms = 0.5 CPU-seconds per second: a quarter of two workers, half a core of a
/// 2-core machine, and the cheap requests and the generator fit in the rest. At `mixed`'s
/// 1500 req/s the spin alone would take 0.75 of a core, and with the cheap requests and the
/// generator the machine would run near saturation, where the generator's own lag would be
/// measured as the server's. Every run reports the arrivals offered against the responses
/// completed, the generator's wake-up lateness and the CPU the server and the generator used,
/// so a run where the generator did not keep up shows it.
pub const SPIN_RATE: f64 = 1000.0;

/// The note printed with every report about how heavy work is emulated.
pub const EMULATION_NOTE: &str = "Heavy work is emulated with `/block?ms=N` (the worker thread blocks) \
     rather than `/work?us=N` (CPU spin): on this machine the load generator and the server share \
     the cores, and spinning would take CPU from the generator. `mixed-spin` spins for real, at a \
     rate that leaves the generator its share of the cores.";

/// Keep-alive connections of `capacity`: with each sending its next request as soon as the last is
/// answered, enough to keep every worker of a small server busy.
pub const CAPACITY_CONNS: usize = 64;

/// HTTP/2 connections of `capacity-h2`, and the streams each keeps in flight (as `h2load -c 8
/// -m 16`).
pub const CAPACITY_H2_CONNS: usize = 8;
pub const CAPACITY_H2_STREAMS: usize = 16;

/// The cap on the requests in flight per stream of the open-loop scenarios.
const MAX_IN_FLIGHT: usize = 2000;

/// Seconds of the fixed-rate phase of the capacity scenarios, at `--quick`.
const FIXED_SECS: f64 = 4.0;

/// How long and how hard to run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Size {
    /// A few seconds per scenario and peer: all scenarios for the default peers in about 10
    /// minutes.
    Quick,
    /// Three times longer than quick.
    Full,
    /// About a second, low rate: only proves every peer serves.
    Smoke,
}

/// A scenario's description for the report.
#[derive(Debug, Clone)]
pub struct Scenario {
    pub name: Name,
    pub description: &'static str,
    pub plan: Plan,
}

fn light_mix() -> Vec<(f64, String)> {
    vec![(1.0, "/".to_owned())]
}

fn mixed_mix() -> Vec<(f64, String)> {
    vec![(95.0, "/".to_owned()), (5.0, HEAVY.to_owned())]
}

fn spin_mix() -> Vec<(f64, String)> {
    vec![(95.0, "/".to_owned()), (5.0, SPIN.to_owned())]
}

/// A stream without a label.
fn stream(transport: Transport, rate: Option<f64>, mix: Vec<(f64, String)>) -> Stream {
    Stream { transport, rate, mix, label: None }
}

/// The window of a scenario of `secs` seconds at `--quick`.
fn window(secs: f64, size: Size) -> Duration {
    match size {
        Size::Quick => Duration::from_secs_f64(secs),
        Size::Full => Duration::from_secs_f64(secs * 3.0),
        Size::Smoke => Duration::from_secs(1),
    }
}

fn plan(streams: Vec<Stream>, secs: f64, size: Size) -> Plan {
    Plan {
        streams,
        hang: None,
        duration: window(secs, size),
        drain: Duration::from_secs(3),
        max_in_flight: MAX_IN_FLIGHT,
        request_timeout: Duration::from_secs(8),
    }
}

/// Builds a scenario. `rate_scale` multiplies every rate.
pub fn build(name: Name, size: Size, rate_scale: f64) -> Scenario {
    let r = |rate: f64| Some(rate * rate_scale * if size == Size::Smoke { 0.1 } else { 1.0 });
    match name {
        Name::Light => Scenario {
            name,
            description: "uniform cheap requests (`/`) over 32 keep-alive connections, 3000 req/s",
            plan: plan(vec![stream(Transport::KeepAlive { conns: 32 }, r(3000.0), light_mix())], 4.0, size),
        },
        Name::Mixed => Scenario {
            name,
            description: "95% `/`, 5% 10 ms of blocked worker time, 32 keep-alive connections, 1500 req/s",
            plan: plan(vec![stream(Transport::KeepAlive { conns: 32 }, r(1500.0), mixed_mix())], 5.0, size),
        },
        Name::MixedSpin => Scenario {
            name,
            description: "95% `/`, 5% 10 ms of CPU spin (`/work?us=10000`), 32 keep-alive connections, \
                 1000 req/s (lower than `mixed`, so the generator keeps its share of the cores)",
            plan: plan(vec![stream(Transport::KeepAlive { conns: 32 }, r(SPIN_RATE), spin_mix())], 4.0, size),
        },
        Name::Skew => Scenario {
            name,
            description: "30 keep-alive connections of `/` at 1500 req/s, and a heavy tenant: 2 keep-alive \
                 connections carrying all the 10 ms blocking requests, 80 req/s",
            plan: plan(
                vec![
                    stream(Transport::KeepAlive { conns: 30 }, r(1500.0), light_mix()),
                    Stream {
                        transport: Transport::KeepAlive { conns: 2 },
                        rate: r(80.0),
                        mix: vec![(1.0, HEAVY.to_owned())],
                        label: Some("heavy"),
                    },
                ],
                5.0,
                size,
            ),
        },
        Name::Churn => Scenario {
            name,
            description: "a new connection per request (`/`), 800 req/s",
            plan: plan(vec![stream(Transport::Fresh, r(800.0), light_mix())], 4.0, size),
        },
        Name::Hang => {
            let mut p = plan(vec![stream(Transport::Fresh, r(400.0), light_mix())], 12.0, size);
            p.hang = Some(Hang {
                first_at: if size == Size::Smoke {
                    Duration::from_millis(200)
                } else {
                    Duration::from_secs(1)
                },
                every: Duration::from_secs(10),
                block_ms: if size == Size::Smoke { 300 } else { 2000 },
            });
            Scenario {
                name,
                description: "a new connection per request (`/`), 400 req/s, while one worker is blocked \
                     for 2 s every 10 s (a keep-alive connection sends it `/block?ms=2000`)",
                plan: p,
            }
        }
        Name::H2 => Scenario {
            name,
            description: "8 long-lived HTTP/2 connections with multiplexed requests, 95% `/`, 5% 10 ms \
                 of blocked worker time, 1500 req/s",
            plan: plan(vec![stream(Transport::H2 { conns: 8 }, r(1500.0), mixed_mix())], 4.0, size),
        },
        Name::Capacity => Scenario {
            name,
            description: "`/` over 64 HTTP/1.1 keep-alive connections at saturation: closed loop, each \
                 connection sends its next request as soon as the last is answered",
            plan: plan(
                vec![stream(Transport::KeepAlive { conns: CAPACITY_CONNS }, None, light_mix())],
                3.0,
                size,
            ),
        },
        Name::CapacityH2 => {
            let mut p =
                plan(vec![stream(Transport::H2 { conns: CAPACITY_H2_CONNS }, None, light_mix())], 3.0, size);
            // In a closed loop the cap is the streams kept in flight.
            p.max_in_flight = CAPACITY_H2_CONNS * CAPACITY_H2_STREAMS;
            Scenario {
                name,
                description: "`/` over 8 HTTP/2 connections at saturation: closed loop, 16 streams in \
                     flight on each, each sending its next request as soon as the last is answered",
                plan: p,
            }
        }
    }
}

/// The fixed-rate phase of a capacity scenario: its traffic, open loop (Poisson arrivals), at
/// `rate` requests per second in all (a tenth of it for the smoke run, as every smoke rate).
pub fn at_rate(sc: &Scenario, rate: f64, size: Size) -> Scenario {
    let mut fixed = sc.clone();
    let rate = rate * if size == Size::Smoke { 0.1 } else { 1.0 };
    let streams = fixed.plan.streams.len().max(1) as f64;
    for s in &mut fixed.plan.streams {
        s.rate = Some(rate / streams);
    }
    fixed.plan.duration = window(FIXED_SECS, size);
    fixed.plan.max_in_flight = MAX_IN_FLIGHT;
    fixed
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_scenario_builds_and_quick_fits_the_budget() {
        // The default peers; ntex probes its three balancing modes on a quarter of each window.
        let peers = 7.0;
        let mut secs = 0.0;
        for &name in Name::all() {
            let s = build(name, Size::Quick, 1.0);
            assert_eq!(s.name, name);
            let mut windows = vec![s.plan.duration.as_secs_f64()];
            if name.is_capacity() {
                windows.push(at_rate(&s, 1000.0, Size::Quick).plan.duration.as_secs_f64());
            }
            for w in windows {
                // Window and about two seconds of server start and stop, per peer and per probe.
                secs += (w + 2.0) * peers + (w / 4.0 + 2.0) * 3.0;
            }
        }
        assert!(secs < 660.0, "quick would take about {secs} s");
    }

    #[test]
    fn capacity_saturates_closed_loop_then_runs_open_at_a_fixed_rate() {
        for name in [Name::Capacity, Name::CapacityH2] {
            let sat = build(name, Size::Quick, 1.0);
            assert!(name.is_capacity());
            assert!(sat.plan.streams.iter().all(|s| s.rate.is_none()), "{name}: closed loop");
            let fixed = at_rate(&sat, 8000.0, Size::Quick);
            let rates: f64 = fixed.plan.streams.iter().map(|s| s.rate.expect("open loop")).sum();
            assert_eq!(rates, 8000.0);
            assert_eq!(fixed.plan.streams[0].transport, sat.plan.streams[0].transport);
            assert_eq!(fixed.plan.duration, Duration::from_secs_f64(FIXED_SECS));
            assert_eq!(at_rate(&sat, 8000.0, Size::Smoke).plan.streams[0].rate, Some(800.0));
        }
        let h2 = build(Name::CapacityH2, Size::Quick, 1.0);
        assert_eq!(h2.plan.max_in_flight, CAPACITY_H2_CONNS * CAPACITY_H2_STREAMS);
        assert!(at_rate(&h2, 1.0, Size::Quick).plan.max_in_flight > h2.plan.max_in_flight);
        assert!(!Name::H2.is_capacity());
    }

    #[test]
    fn names_keep_their_command_line_spellings() {
        let names: Vec<String> = Name::all().iter().map(Name::to_string).collect();
        assert_eq!(
            names,
            ["light", "mixed", "mixed-spin", "skew", "churn", "hang", "h2", "capacity", "capacity-h2"]
        );
        assert_eq!(Choice::from_str("all", false), Ok(Choice::All));
        assert_eq!(Choice::All.names(), Name::all());
        assert_eq!(Choice::from_str("mixed-spin", false), Ok(Choice::One(Name::MixedSpin)));
        assert_eq!(Name::H2.index(), 6);
    }

    #[test]
    fn mixed_spin_is_mixed_with_cpu_spin_at_its_own_rate() {
        let spin = build(Name::MixedSpin, Size::Quick, 1.0);
        let mixed = build(Name::Mixed, Size::Quick, 1.0);
        let (s, m) = (&spin.plan.streams[0], &mixed.plan.streams[0]);
        assert_eq!(s.transport, m.transport);
        assert_eq!(s.rate, Some(SPIN_RATE));
        assert!(s.mix.iter().any(|(w, p)| *w == 5.0 && p == SPIN), "{:?}", s.mix);
        assert!(!s.mix.iter().any(|(_, p)| p.starts_with("/block")), "{:?}", s.mix);
        // The server's spin stays at half a core: 5% of the arrivals, 10 ms each.
        let spin_cores = SPIN_RATE * 0.05 * 0.010;
        assert!(spin_cores <= 0.5, "{spin_cores}");
    }

    #[test]
    fn skew_labels_its_heavy_stream() {
        let skew = build(Name::Skew, Size::Quick, 1.0);
        let labels: Vec<_> = skew.plan.streams.iter().map(|s| s.label).collect();
        assert_eq!(labels, [None, Some("heavy")]);
    }
}
