//! The open-loop load generator.
//!
//! Arrivals follow a Poisson process at a target rate and each request's latency is measured from
//! the time it was *scheduled* to be sent, not from the time it was actually written. A server that
//! stalls therefore shows its stall in every request that was due during it (no coordinated
//! omission). Keep-alive connections each carry an independent Poisson stream of rate `rate / conns`
//! (their superposition is a Poisson stream of the full rate); fresh-connection streams open one
//! connection per arrival; HTTP/2 streams multiplex their arrivals over a few long-lived connections.

use std::collections::BTreeMap;
use std::io;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use hdrhistogram::Histogram;
use http_body_util::{BodyExt, Empty};
use hyper::header::HeaderValue;
use hyper::header::{CONNECTION, HOST};
use hyper::{Request, Uri};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpStream;
use tokio::sync::Semaphore;
use tokio::time::{Instant, sleep_until, timeout};

/// The response header naming the worker that served a request.
pub const WORKER_HEADER: &str = "x-hermes-worker";

/// Latency above which a request counts as "slow" in the report.
pub const SLOW: Duration = Duration::from_secs(1);

/// The resolution of the runtime's timer. A send that wakes up to one tick after its scheduled
/// time is counted from the wake-up; lateness beyond one tick (a client or connection that fell
/// behind its schedule) is counted in full.
const TIMER_TICK: Duration = Duration::from_millis(1);

/// Highest latency the histograms track, in microseconds (60 s).
const HIST_MAX_US: u64 = 60_000_000;

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
    /// Total arrival rate in requests per second; `None` sends back to back on each connection
    /// (closed loop, used only to compare with wrk, which works that way).
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

/// What a run measured.
#[derive(Debug)]
pub struct Outcome {
    /// Latency from scheduled send time to complete response, in microseconds.
    pub hist: Histogram<u64>,
    /// Successful (2xx) responses.
    pub ok: u64,
    /// Successful responses completed within the measurement window.
    pub in_window: u64,
    /// Length of the measurement window.
    pub window: Duration,
    /// Failures by kind.
    pub errors: BTreeMap<String, u64>,
    /// Successful requests slower than [`SLOW`].
    pub slow: u64,
    /// Successful requests per worker, from the response header.
    pub requests_by_worker: BTreeMap<String, u64>,
    /// Connections per worker, from the header of each connection's first response.
    pub conns_by_worker: BTreeMap<String, u64>,
    /// The worker the hang connection landed on, when the plan has a hang.
    pub hung_worker: Option<String>,
    /// Number of blocks the hang connection issued.
    pub hangs: u64,
    /// Arrivals scheduled within the window (sent or not), all streams together.
    pub offered: u64,
    /// How late the generator woke up for the arrivals it was waiting for, in microseconds: its
    /// own lag (a starved client), not the server's.
    pub wake: Histogram<u64>,
    /// Per-stream placement, in the plan's stream order.
    pub streams: Vec<StreamCounts>,
}

/// Where one stream's traffic landed, from the response header.
#[derive(Debug, Clone, Default)]
pub struct StreamCounts {
    /// Successful requests per worker.
    pub requests_by_worker: BTreeMap<String, u64>,
    /// Connections per worker, from each connection's first response.
    pub conns_by_worker: BTreeMap<String, u64>,
    /// The stream's own latencies (as [`Outcome::hist`]); `None` before its first success.
    pub hist: Option<Histogram<u64>>,
}

impl StreamCounts {
    /// The stream's latency at quantile `q`, in milliseconds; `None` without a success.
    pub fn quantile_ms(&self, q: f64) -> Option<f64> {
        self.hist.as_ref().map(|h| h.value_at_quantile(q) as f64 / 1000.0)
    }
}

/// The latency at quantile `q` (milliseconds) of every stream of `streams` but the one at `except`
/// together; `None` when they had no success.
pub fn others_quantile_ms(streams: &[StreamCounts], except: usize, q: f64) -> Option<f64> {
    let mut merged: Option<Histogram<u64>> = None;
    for h in streams.iter().enumerate().filter(|(i, _)| *i != except).filter_map(|(_, s)| s.hist.as_ref()) {
        match merged.as_mut() {
            Some(m) => m.add(h).expect("histograms of the same bounds"),
            None => merged = Some(h.clone()),
        }
    }
    merged.map(|h| h.value_at_quantile(q) as f64 / 1000.0)
}

impl Outcome {
    /// Successful responses completed within the window, per second of the window. A server
    /// that falls behind its arrivals, or stalls at the end, shows it here; the stragglers still
    /// count in the latency figures.
    pub fn throughput(&self) -> f64 {
        self.in_window as f64 / self.window.as_secs_f64().max(1e-9)
    }

    /// Total failures.
    pub fn error_count(&self) -> u64 {
        self.errors.values().sum()
    }

    /// Arrivals scheduled per second of the window.
    pub fn offered_rate(&self) -> f64 {
        self.offered as f64 / self.window.as_secs_f64().max(1e-9)
    }
}

/// Measurements of one task, or of all of them once merged.
#[derive(Debug)]
struct Tally {
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
    offered: u64,
    wake: Histogram<u64>,
    streams: Vec<StreamCounts>,
}

fn bump(map: &mut BTreeMap<String, u64>, key: &str, n: u64) {
    match map.get_mut(key) {
        Some(v) => *v += n,
        None => {
            map.insert(key.to_owned(), n);
        }
    }
}

impl Tally {
    fn new(end: Instant) -> Self {
        let hist = Histogram::new_with_bounds(1, HIST_MAX_US, 3).expect("valid histogram bounds");
        // Two significant digits are plenty for the generator's own lateness.
        let wake = Histogram::new_with_bounds(1, HIST_MAX_US, 2).expect("valid histogram bounds");
        Self {
            end,
            hist,
            ok: 0,
            in_window: 0,
            slow: 0,
            errors: BTreeMap::new(),
            requests_by_worker: BTreeMap::new(),
            conns_by_worker: BTreeMap::new(),
            offered: 0,
            wake,
            streams: Vec::new(),
        }
    }

    fn stream(&mut self, stream: usize) -> &mut StreamCounts {
        if self.streams.len() <= stream {
            self.streams.resize_with(stream + 1, StreamCounts::default);
        }
        &mut self.streams[stream]
    }

    /// Records how late the generator woke up for an arrival due at `scheduled`.
    fn woke(&mut self, scheduled: Instant) {
        let us = Instant::now().saturating_duration_since(scheduled).as_micros() as u64;
        self.wake.record(us.clamp(1, HIST_MAX_US)).expect("value within bounds");
    }

    /// Records a success of stream `stream`; `origin` is what latency is measured from (see
    /// [`origin`]).
    fn success(&mut self, stream: usize, origin: Instant, worker: Option<&HeaderValue>, first_on_conn: bool) {
        let now = Instant::now();
        let latency = now.saturating_duration_since(origin);
        let us = (latency.as_micros() as u64).clamp(1, HIST_MAX_US);
        self.hist.record(us).expect("value within bounds");
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
        counts
            .hist
            .get_or_insert_with(|| {
                Histogram::new_with_bounds(1, HIST_MAX_US, 3).expect("valid histogram bounds")
            })
            .record(us)
            .expect("value within bounds");
    }

    fn errors(&mut self, kind: &str, n: u64) {
        if n > 0 {
            bump(&mut self.errors, kind, n);
        }
    }

    fn merge(&mut self, other: Tally) {
        self.hist.add(&other.hist).expect("histograms of the same bounds");
        self.ok += other.ok;
        self.in_window += other.in_window;
        self.slow += other.slow;
        for (k, v) in other.errors {
            bump(&mut self.errors, &k, v);
        }
        for (k, v) in other.requests_by_worker {
            bump(&mut self.requests_by_worker, &k, v);
        }
        for (k, v) in other.conns_by_worker {
            bump(&mut self.conns_by_worker, &k, v);
        }
        self.offered += other.offered;
        self.wake.add(&other.wake).expect("histograms of the same bounds");
        for (i, theirs) in other.streams.into_iter().enumerate() {
            let ours = self.stream(i);
            for (k, v) in theirs.requests_by_worker {
                bump(&mut ours.requests_by_worker, &k, v);
            }
            for (k, v) in theirs.conns_by_worker {
                bump(&mut ours.conns_by_worker, &k, v);
            }
            match (ours.hist.as_mut(), theirs.hist) {
                (Some(h), Some(t)) => h.add(&t).expect("histograms of the same bounds"),
                (None, t) => ours.hist = t,
                (Some(_), None) => {}
            }
        }
    }
}

/// Shared sink for the measurements of all tasks. Keep-alive connections keep their own [`Tally`]
/// and merge it at the end; per-request tasks record here directly.
#[derive(Debug)]
struct Recorder {
    inner: Mutex<Tally>,
}

impl Recorder {
    fn new(end: Instant) -> Self {
        Self { inner: Mutex::new(Tally::new(end)) }
    }

    fn success(&self, stream: usize, origin: Instant, worker: Option<&HeaderValue>, first_on_conn: bool) {
        self.inner.lock().expect("recorder lock").success(stream, origin, worker, first_on_conn);
    }

    /// Adds the arrivals a task scheduled and its wake-up lateness.
    fn merge_schedule(&self, offered: u64, wake: &Histogram<u64>) {
        let mut g = self.inner.lock().expect("recorder lock");
        g.offered += offered;
        g.wake.add(wake).expect("histograms of the same bounds");
    }

    fn error(&self, kind: &str) {
        self.errors(kind, 1);
    }

    fn errors(&self, kind: &str, n: u64) {
        self.inner.lock().expect("recorder lock").errors(kind, n);
    }

    fn merge(&self, tally: Tally) {
        self.inner.lock().expect("recorder lock").merge(tally);
    }

    fn finish(self, duration: Duration, hung_worker: Option<String>, hangs: u64) -> Outcome {
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
            offered: g.offered,
            wake: g.wake,
            streams: g.streams,
        }
    }
}

/// The instant a request's latency counts from: its scheduled time plus the wake-up lateness the
/// timer's resolution explains (at most one tick). Lateness beyond that counts.
fn origin(scheduled: Instant) -> Instant {
    Instant::now().min(scheduled + TIMER_TICK)
}

/// A small xorshift generator: arrivals and the request mix need no more.
#[derive(Debug, Clone)]
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Self {
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

    /// Exponentially distributed gap for a Poisson process of `rate` per second.
    fn gap(&mut self, rate: f64) -> Duration {
        Duration::from_secs_f64(-(1.0 - self.next_f64()).ln() / rate)
    }
}

/// Picks a path from a weighted mix.
#[derive(Debug, Clone)]
struct Mix {
    cumulative: Vec<(f64, String)>,
    /// The paths parsed once, in the order of `cumulative`.
    uris: Vec<Uri>,
}

impl Mix {
    fn new(mix: &[(f64, String)]) -> Self {
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

    fn pick_uri(&self, rng: &mut Rng) -> &Uri {
        &self.uris[self.index(rng)]
    }

    fn pick(&self, rng: &mut Rng) -> &str {
        self.cumulative.get(self.index(rng)).map(|(_, p)| p.as_str()).unwrap_or("/")
    }
}

type Body = Empty<Bytes>;

fn request(addr: SocketAddr, path: &str, h2: bool, close: bool) -> Request<Body> {
    let mut builder = if h2 {
        Request::get(format!("http://{addr}{path}"))
    } else {
        Request::get(path).header(HOST, addr.to_string())
    };
    if close {
        builder = builder.header(CONNECTION, "close");
    }
    builder.body(Body::new()).expect("valid request")
}

async fn connect(addr: SocketAddr) -> io::Result<TcpStream> {
    let stream = TcpStream::connect(addr).await?;
    stream.set_nodelay(true)?;
    Ok(stream)
}

/// An HTTP/1.1 client connection.
async fn h1_connect(addr: SocketAddr) -> Result<hyper::client::conn::http1::SendRequest<Body>, String> {
    let stream = connect(addr).await.map_err(|_| "connect".to_owned())?;
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|_| "handshake".to_owned())?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    Ok(sender)
}

/// A keep-alive HTTP/1.1 client connection (its connection future runs as a task of its own).
#[derive(Debug)]
struct Link {
    addr: SocketAddr,
    sender: hyper::client::conn::http1::SendRequest<Body>,
    /// Set when `send` opened a new connection (the server closed the last one, as a server that
    /// asks its clients to reconnect does); the caller takes it.
    reopened: bool,
}

impl Link {
    async fn open(addr: SocketAddr) -> Result<Link, String> {
        Ok(Link { addr, sender: h1_connect(addr).await?, reopened: false })
    }

    /// Sends one request once the connection is ready; returns the serving worker. When the server
    /// closed the connection after its last response (`Connection: close`), the request, not sent
    /// yet, goes on a new connection, as a pooled client (hyper-util's, reqwest) does.
    async fn send(&mut self, req: Request<Body>, limit: Duration) -> Result<Option<HeaderValue>, String> {
        let work = async {
            if self.sender.ready().await.is_err() {
                self.sender = h1_connect(self.addr).await?;
                self.reopened = true;
                self.sender.ready().await.map_err(|_| "closed".to_owned())?;
            }
            exchange_untimed(self.sender.send_request(req)).await
        };
        timeout(limit, work).await.unwrap_or_else(|_| Err("timeout".to_owned()))
    }
}

/// An HTTP/2 prior-knowledge client connection.
async fn h2_connect(addr: SocketAddr) -> Result<hyper::client::conn::http2::SendRequest<Body>, String> {
    let stream = connect(addr).await.map_err(|_| "connect".to_owned())?;
    let (sender, conn) = hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
        .await
        .map_err(|_| "h2 handshake".to_owned())?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    Ok(sender)
}

/// Sends one request and reads the whole response; returns the serving worker.
async fn exchange<F>(send: F, limit: Duration) -> Result<Option<HeaderValue>, String>
where
    F: Future<Output = hyper::Result<hyper::Response<hyper::body::Incoming>>>,
{
    match timeout(limit, exchange_untimed(send)).await {
        Ok(r) => r,
        Err(_) => Err("timeout".to_owned()),
    }
}

/// [`exchange`] without a time limit, for callers that set their own.
async fn exchange_untimed<F>(send: F) -> Result<Option<HeaderValue>, String>
where
    F: Future<Output = hyper::Result<hyper::Response<hyper::body::Incoming>>>,
{
    let work = async {
        let resp = send.await.map_err(|_| "request".to_owned())?;
        let status = resp.status();
        let worker = resp.headers().get(WORKER_HEADER).cloned();
        resp.into_body().collect().await.map_err(|_| "body".to_owned())?;
        if status.is_success() { Ok(worker) } else { Err(format!("status {}", status.as_u16())) }
    };
    work.await
}

/// One GET on a fresh HTTP/1.1 connection, for probes and the stats endpoint; returns the body
/// and the worker that served it.
pub async fn get_once(
    addr: SocketAddr,
    path: &str,
    limit: Duration,
) -> Result<(String, Option<String>), String> {
    let work = async {
        let mut sender = h1_connect(addr).await?;
        let resp = sender.send_request(request(addr, path, false, true)).await.map_err(|e| e.to_string())?;
        let status = resp.status();
        let worker = resp.headers().get(WORKER_HEADER).and_then(|v| v.to_str().ok()).map(str::to_owned);
        let body = resp.into_body().collect().await.map_err(|e| e.to_string())?.to_bytes();
        if !status.is_success() {
            return Err(format!("status {}", status.as_u16()));
        }
        Ok((String::from_utf8(body.to_vec()).map_err(|e| e.to_string())?, worker))
    };
    timeout(limit, work).await.unwrap_or_else(|_| Err("timeout".to_owned()))
}

/// Runs the plan against `addr` (a loopback address) and returns what it measured.
pub async fn run(addr: SocketAddr, plan: &Plan, seed: u64) -> io::Result<Outcome> {
    if !addr.ip().is_loopback() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("the load generator only targets loopback addresses, not {addr}"),
        ));
    }

    // Connections that live through the run are opened before the window starts.
    let mut h1_pools = Vec::new();
    let mut h2_pools = Vec::new();
    for stream in &plan.streams {
        match stream.transport {
            Transport::KeepAlive { conns } => {
                let mut pool = Vec::with_capacity(conns);
                for _ in 0..conns {
                    pool.push(
                        Link::open(addr).await.map_err(|e| io::Error::other(format!("{e} to {addr}")))?,
                    );
                }
                h1_pools.push(pool);
                h2_pools.push(Vec::new());
            }
            Transport::H2 { conns } => {
                let mut pool = Vec::with_capacity(conns);
                for _ in 0..conns {
                    pool.push(
                        h2_connect(addr).await.map_err(|e| io::Error::other(format!("{e} to {addr}")))?,
                    );
                }
                h2_pools.push(pool);
                h1_pools.push(Vec::new());
            }
            Transport::Fresh => {
                h1_pools.push(Vec::new());
                h2_pools.push(Vec::new());
            }
        }
    }
    let hang_conn = match plan.hang {
        Some(_) => {
            let mut sender =
                h1_connect(addr).await.map_err(|e| io::Error::other(format!("{e} to {addr}")))?;
            let worker =
                exchange(sender.send_request(request(addr, "/", false, false)), plan.request_timeout)
                    .await
                    .map_err(|e| io::Error::other(format!("probing the hang connection: {e}")))?;
            let worker = worker.as_ref().and_then(|w| w.to_str().ok()).unwrap_or("?").to_owned();
            Some((sender, worker))
        }
        None => None,
    };

    let start = Instant::now() + Duration::from_millis(20);
    let end = start + plan.duration;
    let give_up = end + plan.drain;
    let rec = Arc::new(Recorder::new(end));
    let mut tasks = tokio::task::JoinSet::new();
    let mut seed = seed;
    let mut next_seed = || {
        seed = seed.wrapping_add(0x1234_5678_9ABC_DEF1);
        seed
    };

    for (si, ((stream, h1_pool), h2_pool)) in plan.streams.iter().zip(h1_pools).zip(h2_pools).enumerate() {
        let mix = Mix::new(&stream.mix);
        match stream.transport {
            Transport::KeepAlive { conns } => {
                let per_conn = stream.rate.map(|r| r / conns as f64);
                for sender in h1_pool {
                    let (rec, mix, rng) = (rec.clone(), mix.clone(), Rng::new(next_seed()));
                    let limit = plan.request_timeout;
                    tasks.spawn(keepalive_conn(
                        addr,
                        si,
                        sender,
                        per_conn,
                        mix,
                        rng,
                        rec,
                        (start, end, give_up),
                        limit,
                    ));
                }
            }
            Transport::H2 { conns } => {
                let per_conn = stream.rate.map(|r| r / conns as f64);
                let cap = (plan.max_in_flight / conns).max(1);
                for sender in h2_pool {
                    let (rec, mix, rng) = (rec.clone(), mix.clone(), Rng::new(next_seed()));
                    let limit = plan.request_timeout;
                    tasks.spawn(h2_conn(
                        addr,
                        si,
                        sender,
                        per_conn,
                        mix,
                        rng,
                        rec,
                        (start, end, give_up),
                        limit,
                        cap,
                    ));
                }
            }
            Transport::Fresh => {
                let (rec, rng) = (rec.clone(), Rng::new(next_seed()));
                let rate = stream.rate.unwrap_or(1000.0);
                let (cap, limit) = (plan.max_in_flight, plan.request_timeout);
                tasks.spawn(fresh_stream(addr, si, rate, mix, rng, rec, (start, end), limit, cap));
            }
        }
    }

    let hang_task = match (plan.hang, hang_conn) {
        (Some(hang), Some((sender, worker))) => {
            Some(tokio::spawn(hang_conn_task(addr, sender, worker, hang, start, end)))
        }
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
    let rec = Arc::try_unwrap(rec).map_err(|_| io::Error::other("load tasks outlived the run"))?;
    let mut outcome = rec.finish(plan.duration, hung_worker, hangs);
    // A stream that never got an answer still has its (empty) entry.
    outcome.streams.resize_with(plan.streams.len().max(outcome.streams.len()), StreamCounts::default);
    Ok(outcome)
}

type Window = (Instant, Instant, Instant);

/// Blocks the worker behind one keep-alive connection at the hang's times; in between it sends a
/// cheap request every second so that servers with an idle timeout keep the connection (and so the
/// same worker). Returns the workers that served the blocks (in order, when they differ) and the
/// number of blocks.
async fn hang_conn_task(
    addr: SocketAddr,
    mut sender: hyper::client::conn::http1::SendRequest<Body>,
    worker: String,
    hang: Hang,
    start: Instant,
    end: Instant,
) -> (String, u64) {
    let mut at = start + hang.first_at;
    let mut issued = 0u64;
    let path = format!("/block?ms={}", hang.block_ms);
    let limit = Duration::from_millis(hang.block_ms) + Duration::from_secs(10);
    let mut workers = vec![worker];
    while at < end {
        let keepalive = Instant::now() + Duration::from_secs(1);
        let blocking = keepalive >= at;
        sleep_until(if blocking { at } else { keepalive }).await;
        let req = request(addr, if blocking { &path } else { "/" }, false, false);
        let result = match sender.ready().await {
            Ok(()) => exchange(sender.send_request(req), limit).await,
            Err(_) => Err("closed".to_owned()),
        };
        match result {
            Ok(w) if blocking => {
                let w = w.as_ref().and_then(|w| w.to_str().ok()).unwrap_or("?").to_owned();
                if issued == 0 {
                    workers.clear();
                }
                if workers.last() != Some(&w) {
                    workers.push(w);
                }
                issued += 1;
                at += hang.every;
            }
            Ok(_) => {}
            Err(_) => match h1_connect(addr).await {
                // Lost the connection: open another (it may land on another worker).
                Ok(s) => sender = s,
                Err(_) => break,
            },
        }
    }
    (workers.join(" then "), issued)
}

/// One keep-alive HTTP/1.1 connection with its own arrival schedule.
#[allow(clippy::too_many_arguments)]
async fn keepalive_conn(
    addr: SocketAddr,
    stream: usize,
    mut link: Link,
    rate: Option<f64>,
    mix: Mix,
    mut rng: Rng,
    rec: Arc<Recorder>,
    (start, end, give_up): Window,
    limit: Duration,
) {
    let mut tally = Tally::new(end);
    keepalive_loop(addr, stream, &mut link, rate, &mix, &mut rng, &mut tally, (start, end, give_up), limit)
        .await;
    rec.merge(tally);
}

/// The request loop of [`keepalive_conn`], recording into the connection's own tally.
#[allow(clippy::too_many_arguments)]
async fn keepalive_loop(
    addr: SocketAddr,
    stream: usize,
    link: &mut Link,
    rate: Option<f64>,
    mix: &Mix,
    rng: &mut Rng,
    rec: &mut Tally,
    (start, end, give_up): Window,
    limit: Duration,
) {
    let host = HeaderValue::from_str(&addr.to_string()).expect("an address is a valid header value");
    let mut first = true;
    let mut next = match rate {
        Some(r) => start + rng.gap(r),
        None => start,
    };
    sleep_until(start).await;
    while next < end {
        if Instant::now() > give_up {
            // Arrivals due in the window that could not even be sent.
            if let Some(rate) = rate {
                let mut unsent = 0;
                while next < end {
                    unsent += 1;
                    next += rng.gap(rate);
                }
                rec.offered += unsent;
                rec.errors("not sent", unsent);
            }
            return;
        }
        let scheduled = next;
        rec.offered += 1;
        if rate.is_some() && Instant::now() < scheduled {
            // Waiting for the arrival: how late the wake-up comes is the generator's own lag. An
            // arrival already due (the previous answer came late) is the server's lag instead.
            sleep_until(scheduled).await;
            rec.woke(scheduled);
        }
        let uri = mix.pick_uri(rng).clone();
        let scheduled = if rate.is_none() { Instant::now() } else { origin(scheduled) };
        let mut req = Request::new(Body::new());
        *req.uri_mut() = uri;
        req.headers_mut().insert(HOST, host.clone());
        let sent = link.send(req, limit).await;
        if std::mem::take(&mut link.reopened) {
            first = true;
        }
        match sent {
            Ok(worker) => {
                rec.success(stream, scheduled, worker.as_ref(), first);
                first = false;
            }
            Err(e) => {
                rec.errors(&e, 1);
                // Reconnect for the next request.
                match Link::open(addr).await {
                    Ok(l) => {
                        *link = l;
                        first = true;
                    }
                    Err(e) => rec.errors(&e, 1),
                }
            }
        }
        next = advance(next, rate, rng);
    }
}

fn advance(next: Instant, rate: Option<f64>, rng: &mut Rng) -> Instant {
    match rate {
        Some(r) => next + rng.gap(r),
        None => Instant::now().max(next),
    }
}

/// The arrivals a sending task scheduled and how late it woke up for them.
#[derive(Debug)]
struct Schedule {
    offered: u64,
    wake: Histogram<u64>,
}

impl Schedule {
    fn new() -> Self {
        Self {
            offered: 0,
            wake: Histogram::new_with_bounds(1, HIST_MAX_US, 2).expect("valid histogram bounds"),
        }
    }

    /// Sleeps until `scheduled` and records the arrival and the wake-up lateness (the task only
    /// spawns requests, so it is never held up by the server, only by its own CPU share).
    async fn wait_for(&mut self, scheduled: Instant) {
        self.offered += 1;
        if Instant::now() < scheduled {
            sleep_until(scheduled).await;
            let us = Instant::now().saturating_duration_since(scheduled).as_micros() as u64;
            self.wake.record(us.clamp(1, HIST_MAX_US)).expect("value within bounds");
        }
    }
}

/// One long-lived HTTP/2 connection; each arrival is its own multiplexed stream.
#[allow(clippy::too_many_arguments)]
async fn h2_conn(
    addr: SocketAddr,
    stream: usize,
    sender: hyper::client::conn::http2::SendRequest<Body>,
    rate: Option<f64>,
    mix: Mix,
    mut rng: Rng,
    rec: Arc<Recorder>,
    (start, end, give_up): Window,
    limit: Duration,
    cap: usize,
) {
    let in_flight = Arc::new(Semaphore::new(cap));
    let rate = rate.unwrap_or(1000.0);
    let mut next = start + rng.gap(rate);
    let mut first = Arc::new(std::sync::atomic::AtomicBool::new(true));
    let mut sender = sender;
    let mut requests = tokio::task::JoinSet::new();
    let mut schedule = Schedule::new();
    while next < end {
        let scheduled = next;
        schedule.wait_for(scheduled).await;
        next += rng.gap(rate);
        let Ok(permit) = in_flight.clone().try_acquire_owned() else {
            rec.error("client in-flight cap");
            continue;
        };
        if sender.is_closed() {
            match h2_connect(addr).await {
                Ok(s) => {
                    sender = s;
                    first = Arc::new(std::sync::atomic::AtomicBool::new(true));
                }
                Err(e) => {
                    rec.error(&e);
                    continue;
                }
            }
        }
        let path = mix.pick(&mut rng).to_owned();
        let (mut s, rec, first) = (sender.clone(), rec.clone(), first.clone());
        let scheduled = origin(scheduled);
        requests.spawn(async move {
            let _permit = permit;
            let limit = limit.min(give_up.saturating_duration_since(Instant::now()).max(limit / 4));
            match exchange(s.send_request(request(addr, &path, true, false)), limit).await {
                Ok(worker) => {
                    let first = first.swap(false, std::sync::atomic::Ordering::Relaxed);
                    rec.success(stream, scheduled, worker.as_ref(), first);
                }
                Err(e) => rec.error(&e),
            }
        });
        while requests.try_join_next().is_some() {}
    }
    rec.merge_schedule(schedule.offered, &schedule.wake);
    while requests.join_next().await.is_some() {}
}

/// A Poisson stream that opens a new connection for every request.
#[allow(clippy::too_many_arguments)]
async fn fresh_stream(
    addr: SocketAddr,
    stream: usize,
    rate: f64,
    mix: Mix,
    mut rng: Rng,
    rec: Arc<Recorder>,
    (start, end): (Instant, Instant),
    limit: Duration,
    cap: usize,
) {
    let in_flight = Arc::new(Semaphore::new(cap));
    let mut next = start + rng.gap(rate);
    let mut requests = tokio::task::JoinSet::new();
    let mut schedule = Schedule::new();
    while next < end {
        let scheduled = next;
        schedule.wait_for(scheduled).await;
        next += rng.gap(rate);
        let Ok(permit) = in_flight.clone().try_acquire_owned() else {
            rec.error("client in-flight cap");
            continue;
        };
        let path = mix.pick(&mut rng).to_owned();
        let rec = rec.clone();
        let scheduled = origin(scheduled);
        requests.spawn(async move {
            let _permit = permit;
            let work = async {
                let mut sender = h1_connect(addr).await?;
                exchange(sender.send_request(request(addr, &path, false, true)), limit).await
            };
            match timeout(limit, work).await {
                Ok(Ok(worker)) => rec.success(stream, scheduled, worker.as_ref(), true),
                Ok(Err(e)) => rec.error(&e),
                Err(_) => rec.error("timeout"),
            }
        });
        while requests.try_join_next().is_some() {}
    }
    rec.merge_schedule(schedule.offered, &schedule.wake);
    while requests.join_next().await.is_some() {}
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

    #[test]
    fn mix_follows_its_weights() {
        let mix = Mix::new(&[(95.0, "/".to_owned()), (5.0, "/heavy".to_owned())]);
        let mut rng = Rng::new(3);
        let heavy = (0..100_000).filter(|_| mix.pick(&mut rng) == "/heavy").count();
        assert!((4_500..5_500).contains(&heavy), "{heavy} heavy of 100000");
    }
}
