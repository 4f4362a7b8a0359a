//! The open-loop load generator.
//!
//! Arrivals follow a Poisson process at a target rate and each request's latency is measured from
//! the time it was *scheduled* to be sent, not from the time it was actually written. A server that
//! stalls therefore shows its stall in every request that was due during it (no coordinated
//! omission). Keep-alive connections each carry an independent Poisson stream of rate `rate / conns`
//! (their superposition is a Poisson stream of the full rate); fresh-connection streams open one
//! connection per arrival; HTTP/2 streams multiplex their arrivals over a few long-lived connections.

mod churn;
mod client;
mod h1;
mod h2;
mod h2_closed;
mod hang;
mod outcome;
mod schedule;
mod tally;
mod task;

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::task::JoinSet;
use tokio::time::{Instant, timeout};

pub use self::client::get_once;
use self::client::{H2Sender, Link, h2_connect};
use self::hang::HangConn;
pub use self::outcome::{Outcome, StreamCounts, others_quantile_ms};
use self::schedule::{Mix, Rng};
use self::tally::Recorder;
use self::task::{RunContext, Traffic, Window};

/// The response header naming the worker that served a request.
pub const WORKER_HEADER: &str = "x-hermes-worker";

/// Latency above which a request counts as "slow" in the report.
pub const SLOW: Duration = Duration::from_secs(1);

/// How a stream reaches the server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    /// HTTP/1.1 keep-alive connections opened before the measurement, one request at a time each.
    KeepAlive { conns: usize },
    /// A new HTTP/1.1 connection per request (`connection: close`).
    Fresh,
    /// Long-lived HTTP/2 (prior knowledge) connections with multiplexed requests.
    H2 { conns: usize },
}

/// One class of traffic within a scenario.
#[derive(Debug, Clone)]
pub struct Stream {
    /// How the requests reach the server.
    pub transport: Transport,
    /// Total arrival rate in requests per second; `None` sends back to back (closed loop, as wrk
    /// and h2load do): one request at a time on each keep-alive connection, the plan's
    /// `max_in_flight` spread over the HTTP/2 connections as streams; not for fresh connections.
    pub rate: Option<f64>,
    /// Request paths with their relative weights.
    pub mix: Vec<(f64, String)>,
    /// A name under which the report shows where this stream's connections and requests landed
    /// (per-worker counts, from the response header); `None` for no such figures.
    pub label: Option<&'static str>,
}

/// A worker made to hang during the run: a dedicated keep-alive connection sends
/// `/block?ms=block_ms` at `first_at` and then every `every`.
#[derive(Debug, Clone, Copy)]
pub struct Hang {
    /// Offset of the first block from the start of the measurement.
    pub first_at: Duration,
    /// Period of the blocks.
    pub every: Duration,
    /// Length of each block in milliseconds.
    pub block_ms: u64,
}

/// Everything a run needs.
#[derive(Debug, Clone)]
pub struct Plan {
    /// The traffic.
    pub streams: Vec<Stream>,
    /// An optional hang injected into one worker.
    pub hang: Option<Hang>,
    /// Length of the measurement window: arrivals are scheduled within it.
    pub duration: Duration,
    /// How long after the window requests still in flight are waited for.
    pub drain: Duration,
    /// Cap on the requests in flight per stream (bounds sockets and memory when a server stalls);
    /// arrivals over the cap count as errors.
    pub max_in_flight: usize,
    /// A request unanswered after this long counts as an error.
    pub request_timeout: Duration,
}

/// The connections a stream keeps through the run, opened before the window starts.
enum Pool {
    KeepAlive(Vec<Link>),
    H2(Vec<H2Sender>),
    /// A fresh-connection stream keeps none.
    None,
}

/// Opens `n` connections with `open`.
async fn open_pool<T, F>(addr: SocketAddr, n: usize, open: impl Fn(SocketAddr) -> F) -> io::Result<Vec<T>>
where
    F: Future<Output = Result<T, String>>,
{
    let mut pool = Vec::with_capacity(n);
    for _ in 0..n {
        pool.push(open(addr).await.map_err(|e| io::Error::other(format!("{e} to {addr}")))?);
    }
    Ok(pool)
}

/// Runs the plan against `addr` (a loopback address) and returns what it measured.
pub async fn run(addr: SocketAddr, plan: &Plan, seed: u64) -> io::Result<Outcome> {
    if !addr.ip().is_loopback() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("the load generator only targets loopback addresses, not {addr}"),
        ));
    }

    let mut pools = Vec::with_capacity(plan.streams.len());
    for stream in &plan.streams {
        pools.push(match stream.transport {
            Transport::KeepAlive { conns } => Pool::KeepAlive(open_pool(addr, conns, Link::open).await?),
            Transport::H2 { conns } => Pool::H2(open_pool(addr, conns, h2_connect).await?),
            Transport::Fresh => Pool::None,
        });
    }
    let hang_conn = match plan.hang {
        Some(_) => Some(HangConn::open(addr, plan.request_timeout).await?),
        None => None,
    };

    let start = Instant::now() + Duration::from_millis(20);
    let end = start + plan.duration;
    let window = Window { start, end, give_up: end + plan.drain };
    let ctx = Arc::new(RunContext {
        addr,
        window,
        request_timeout: plan.request_timeout,
        recorder: Recorder::new(end),
    });
    let mut tasks = JoinSet::new();
    let mut seed = seed;
    let mut next_seed = || {
        seed = seed.wrapping_add(0x1234_5678_9ABC_DEF1);
        seed
    };

    for (index, (stream, pool)) in plan.streams.iter().zip(pools).enumerate() {
        let mix = Mix::new(&stream.mix);
        let mut traffic =
            |rate: Option<f64>| Traffic { stream: index, rate, mix: mix.clone(), rng: Rng::new(next_seed()) };
        // Each connection of a stream carries an equal share of its arrivals.
        let per_conn = |conns: usize| stream.rate.map(|r| r / conns as f64);
        match pool {
            Pool::KeepAlive(links) => {
                let rate = per_conn(links.len());
                for link in links {
                    tasks.spawn(h1::keepalive_conn(ctx.clone(), traffic(rate), link));
                }
            }
            Pool::H2(senders) => {
                let (rate, cap) = (per_conn(senders.len()), (plan.max_in_flight / senders.len()).max(1));
                for sender in senders {
                    match rate {
                        Some(_) => tasks.spawn(h2::h2_conn(ctx.clone(), traffic(rate), sender, cap)),
                        None => {
                            tasks.spawn(h2_closed::h2_closed_conn(ctx.clone(), traffic(None), sender, cap))
                        }
                    };
                }
            }
            Pool::None => {
                tasks.spawn(churn::fresh_stream(ctx.clone(), traffic(stream.rate), plan.max_in_flight));
            }
        }
    }

    let hang_task = match (plan.hang, hang_conn) {
        (Some(hang), Some(conn)) => Some(tokio::spawn(conn.run(addr, hang, window))),
        _ => None,
    };

    while tasks.join_next().await.is_some() {}
    let (hung_worker, hangs) = match hang_task {
        Some(t) => match timeout(plan.drain + plan.request_timeout, t).await {
            Ok(Ok((w, n))) => (Some(w), n),
            _ => (None, 0),
        },
        None => (None, 0),
    };
    let ctx = Arc::try_unwrap(ctx).map_err(|_| io::Error::other("load tasks outlived the run"))?;
    let mut outcome = ctx.recorder.finish(plan.duration, hung_worker, hangs);
    // A stream that never got an answer still has its (empty) entry.
    outcome.streams.resize_with(plan.streams.len().max(outcome.streams.len()), StreamCounts::default);
    Ok(outcome)
}
