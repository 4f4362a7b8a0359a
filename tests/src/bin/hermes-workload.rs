//! The workload server the benchmarks drive.
//!
//! ```text
//! cargo run --release -p hermes-tests --bin hermes-workload -- --mode hermes|hermes-userspace|reuseport|shared|tokio --workers N --addr 127.0.0.1:0
//! ```
//!
//! The first line on stdout is `listening on ADDR mode=MODE workers=N`, where
//! MODE is the mode in effect (`reuseport` when `hermes` fell back to the
//! kernel's hash; the reason goes to stderr; `-pinned` added with
//! `--pin on`, `-unpinned` with `--pin off`). Endpoints: `/` (light),
//! `/work?us=N` (spins the worker's CPU for N µs, at most 10 s), `/cpu?us=N`
//! (the same, N µs of the thread's CPU time: see `cpu`), `/block?ms=N`
//! (blocks the worker thread for N ms, at most 60 s), `/panic` (the handler
//! panics: its connection closes, the worker serves on), `/_hermes/stats`
//! (the snapshot as JSON). `--cost-scale X` multiplies the costs of `/work`
//! and `/block` (their responses say the cost applied in `x-hermes-cost`).
//! On a host behind `hermes-lb`, `--dsr-balancer ADDR=MAC --dsr-vip VIP
//! --dsr-token HEX` sends the host's load to the balancer in band
//! (`hermes_dsr::Agent`). `--grpc` serves `hermes.bench.Workload/Work`
//! (see `grpc`); `--orca` and `--agent-port` give a balancer of the
//! user's the host's load (`fleet`).
//! A cost above its maximum is answered 400. Every
//! response carries `x-hermes-worker: ID` and `x-hermes-pid: PID`. Ctrl-C or
//! SIGTERM drains and exits, within the drain timeout plus 2 s even with a
//! worker blocked. `SIGUSR2` upgrades without downtime (the Hermes modes):
//! the binary now at this path starts with the same arguments, takes the
//! listeners and the kernel state over, prints its own `listening on` line,
//! and this process drains and exits; if the new one fails, this one keeps
//! serving. Started with systemd's socket activation (`LISTEN_FDS`,
//! `ReusePort=yes`), the Hermes modes serve on the passed listeners (`--addr`
//! is ignored).
//!
//! The Hermes modes (`hermes`, `hermes-userspace`, `reuseport`, `shared`) are served as the
//! README tells users to serve an axum app: through `hermes_tower::serve`,
//! with [`HermesLayer`] at its default settings counting every request into
//! the Worker State Table and `/_hermes/stats` mounted outside the layer,
//! the router `.with_stats()` composes. The app is composed here (and served
//! with `.without_layer()`, the README's option for an app that adds the
//! layer itself) only so that the worker header wraps the stats response
//! too: the harness reads it to take the stats connection out of that
//! worker's accepted count. `tokio` serves the same router with
//! `axum::serve` on the stock multi-thread runtime; there the layer finds no
//! Hermes worker and passes requests straight through, so every peer runs
//! the same middleware.

use std::{
    cell::Cell,
    io::Write,
    net::SocketAddr,
    process::ExitCode,
    sync::atomic::{AtomicUsize, Ordering},
    time::Duration,
};

use axum::{
    Router,
    extract::Query,
    http::{HeaderValue, StatusCode},
    response::{IntoResponse, Response},
    routing::get,
};
use clap::Parser;
use hermes_runtime::{Builder, FinePolicy, Mode, scheduler::LeastLoaded};
use hermes_tower::HermesLayer;

#[path = "hermes-workload/cpu.rs"]
mod cpu;
#[path = "hermes-workload/dsr.rs"]
mod dsr;
#[path = "hermes-workload/fleet.rs"]
mod fleet;
#[path = "hermes-workload/grpc.rs"]
mod grpc;
#[path = "hermes-workload/options.rs"]
mod options;

use options::{Fine, Peer, Pin, Switch, parse_scale};

/// The workload server of the Hermes benchmarks: the same endpoints on
/// Hermes dispatch or on the servers users would pick instead.
///
/// Prints `listening on ADDR mode=MODE workers=N` once every worker accepts;
/// MODE is the mode in effect (`reuseport` when `hermes` fell back to the
/// kernel's hash, with the reason on stderr). Endpoints: `/`, `/work?us=N`
/// (spins the worker's CPU for N µs, at most 10000000), `/cpu?us=N` (N µs of
/// CPU time), `/block?ms=N` (blocks
/// the worker thread for N ms, at most 60000), `/panic` (the handler panics),
/// `/_hermes/stats`. A cost above its maximum is answered 400. Ctrl-C or
/// SIGTERM drains and exits; SIGUSR2 hands the server over to a new process
/// of the binary at this path.
#[derive(Debug, Parser)]
#[command(name = "hermes-workload", version)]
struct Args {
    /// How new connections reach the workers.
    #[arg(long, value_enum, default_value_t = Peer::Hermes)]
    mode: Peer,
    /// Worker threads (default: one per CPU; the Hermes modes take at most
    /// 1024 and say so when the CPUs are more).
    #[arg(long, value_name = "N")]
    workers: Option<usize>,
    /// Address to listen on (port 0: the kernel picks one, printed on the first line).
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:0")]
    addr: SocketAddr,
    /// Fail instead of falling back to the kernel's hash when the dispatch program cannot be loaded.
    #[arg(long)]
    require_ebpf: bool,
    /// Hermes modes: pin each worker to a CPU (`Builder::pin_workers`); `auto`
    /// leaves it to the runtime's default (pinned when the process may run on
    /// only some of the machine's CPUs). `on` and `off` are announced in the
    /// mode (`-pinned`, `-unpinned`).
    #[arg(long, value_enum, default_value_t = Pin::Auto)]
    pin: Pin,
    /// Scheduler tick of the Hermes modes, in milliseconds.
    #[arg(long, value_name = "N", default_value_t = 5)]
    tick_ms: u64,
    /// How the kernel program picks one worker among the eligible ones.
    #[arg(long, value_enum, default_value_t = Fine::TwoChoices)]
    fine: Fine,
    /// Hermes modes: the eligible worker on the CPU that received a
    /// connection is the kernel program's first candidate (`Builder::locality`).
    #[arg(long, value_enum, value_name = "on|off", default_value_t = Switch::Off)]
    locality: Switch,
    /// The scheduler's absolute margin: a worker is eligible within this many
    /// units of load of the least loaded (default: the policy's own).
    #[arg(long, value_name = "N")]
    margin: Option<u64>,
    /// Hermes modes: close a connection whose request head is not complete
    /// this many milliseconds after its first byte (0: never).
    #[arg(long, value_name = "N", default_value_t = 30_000)]
    header_timeout_ms: u64,
    /// Hermes modes: close a connection with no request in progress and no
    /// traffic for this many milliseconds (0: never).
    #[arg(long, value_name = "N", default_value_t = 60_000)]
    idle_timeout_ms: u64,
    /// Hermes modes: the least rate, in bytes per second, at which a client
    /// must send a request body once its handler has waited
    /// `--body-grace-ms` for it; slower, the handler's read fails (0: no
    /// minimum).
    #[arg(long, value_name = "N", default_value_t = 240)]
    min_body_rate: u64,
    /// Hermes modes: the grace period of `--min-body-rate`, in milliseconds.
    #[arg(long, value_name = "N", default_value_t = 5_000)]
    body_grace_ms: u64,
    /// Hermes modes: how long a drain (on SIGTERM, or after handing over on
    /// SIGUSR2) waits for the requests in progress; SIGTERM exits within
    /// this plus 2 s, even with a worker blocked.
    #[arg(long, value_name = "N", default_value_t = 30_000)]
    drain_timeout_ms: u64,
    /// Hermes modes: connections one worker keeps open; more are closed at
    /// once and counted as `refused` (0: no limit).
    #[arg(long, value_name = "N", default_value_t = 65_536)]
    max_connections: u32,
    /// Hermes modes: the time slice each worker thread asks the kernel for,
    /// in microseconds (`Builder::worker_slice`; 0: the kernel's default).
    #[arg(long, value_name = "US", default_value_t = 0)]
    worker_slice_us: u64,
    /// Multiplies the cost of `/work?us=N` and `/block?ms=N` (every mode), so
    /// hosts of one test bed can be made slower or faster than each other;
    /// the maxima apply to the scaled cost.
    #[arg(long, value_name = "X", default_value_t = 1.0, value_parser = parse_scale)]
    cost_scale: f64,
    #[command(flatten)]
    dsr: dsr::DsrArgs,
    #[command(flatten)]
    fleet: fleet::FleetArgs,
}

/// `n` scaled by `scale`, rounded, saturating at `u64::MAX`.
fn scaled(n: u64, scale: f64) -> u64 {
    // `as` saturates for floats out of range.
    (n as f64 * scale).round() as u64
}

/// The largest `/work?us=N`: 10 s of spinning.
const MAX_WORK_US: u64 = 10_000_000;
/// The largest `/block?ms=N`: a minute of blocking.
const MAX_BLOCK_MS: u64 = 60_000;

/// `400 Bad Request` naming the parameter and its maximum.
fn too_large(what: &str, max: u64) -> (StatusCode, String) {
    (StatusCode::BAD_REQUEST, format!("{what} is above its maximum, {max}\n"))
}

/// `Some(d)` for `ms` milliseconds, `None` for 0.
fn millis(ms: u64) -> Option<Duration> {
    (ms > 0).then(|| Duration::from_millis(ms))
}

fn default_workers() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// The cost parameters of `/work?us=N` and `/block?ms=N`; a missing one is 0,
/// a malformed one is answered with 400 by axum's `Query` extractor.
#[derive(serde::Deserialize)]
struct Cost {
    #[serde(default)]
    us: u64,
    #[serde(default)]
    ms: u64,
}

thread_local! {
    /// The index of a stock Tokio runtime's worker thread (mode `tokio`).
    static TOKIO_WORKER: Cell<usize> = const { Cell::new(0) };
}

/// The worker serving the current request: the Hermes worker of this thread,
/// else the stock runtime's thread index.
fn worker_id() -> usize {
    hermes_runtime::context::current().map_or_else(|| TOKIO_WORKER.with(Cell::get), |w| w.id())
}

/// The endpoints.
fn endpoints(scale: f64) -> Router {
    Router::new()
        .route("/", get(|| async { "ok" }))
        .route("/work", cpu::spin_route(scale, cpu::spin_wall))
        .route("/cpu", cpu::spin_route(scale, cpu::spin_cpu))
        .route(
            "/block",
            get(move |Query(cost): Query<Cost>| async move {
                let ms = scaled(cost.ms, scale);
                if ms > MAX_BLOCK_MS {
                    return Err(too_large("ms", MAX_BLOCK_MS));
                }
                // Blocks the worker thread, as a stuck handler would.
                std::thread::sleep(Duration::from_millis(ms));
                Ok(([("x-hermes-cost", format!("ms={ms}"))], "unblocked"))
            }),
        )
        .route(
            "/panic",
            get(|| async {
                // A handler bug: the connection's task unwinds, the worker serves on.
                if std::hint::black_box(true) {
                    panic!("/panic requested");
                }
                "unreachable"
            }),
        )
}

/// What every mode serves: the endpoints inside [`HermesLayer`] (default
/// settings), `stats` outside it (reading stats is not load), as
/// `hermes_tower::serve(..).with_stats()` composes them; every response,
/// the stats one included, answers with `x-hermes-worker: id`.
fn app(stats: Router, scale: f64) -> Router {
    endpoints(scale).layer(HermesLayer::new()).merge(stats).layer(axum::middleware::map_response(
        |mut res: Response| async move {
            res.headers_mut().insert("x-hermes-worker", HeaderValue::from(worker_id()));
            // Which process answered (it changes with an upgrade on SIGUSR2).
            res.headers_mut().insert("x-hermes-pid", HeaderValue::from(std::process::id()));
            res
        },
    ))
}

fn run_tokio(args: &Args) -> std::io::Result<()> {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(args.workers.unwrap_or_else(default_workers))
        .enable_all()
        // Relaxed: the counter only hands out distinct indices.
        .on_thread_start(|| TOKIO_WORKER.with(|id| id.set(NEXT.fetch_add(1, Ordering::Relaxed))))
        .build()?;
    let workers = args.workers.unwrap_or_else(default_workers);
    args.fleet.check_tokio()?;
    rt.block_on(async move {
        let listener = tokio::net::TcpListener::bind(&args.addr).await?;
        println!("listening on {} mode=tokio workers={workers}", listener.local_addr()?);
        std::io::stdout().flush()?;
        if args.fleet.grpc {
            return grpc::serve_tokio(listener, args.cost_scale, signal()).await;
        }
        let stats = Router::new().route(
            "/_hermes/stats",
            get(|| async {
                axum::Json(serde_json::json!({"pid": std::process::id(), "mode": "tokio", "workers": []}))
                    .into_response()
            }),
        );
        let app = app(stats, args.cost_scale);
        axum::serve(listener, app).with_graceful_shutdown(signal()).await
    })
}

/// Ctrl-C or SIGTERM, for mode `tokio`.
async fn signal() {
    if let Err(e) = hermes_tower::serve::ctrl_c_or_sigterm().await {
        eprintln!("hermes-workload: no SIGINT/SIGTERM handler: {e}");
        std::future::pending::<()>().await;
    }
}

fn run_hermes(args: &Args) -> std::io::Result<()> {
    let mode = match args.mode {
        Peer::Hermes | Peer::HermesLocal => Mode::Hermes,
        Peer::HermesUserspace | Peer::Reuseport => Mode::KernelHash,
        Peer::Shared => Mode::SharedListener,
        Peer::Tokio => unreachable!("served by run_tokio"),
    };
    let mut builder = Builder::new();
    if !matches!(args.mode, Peer::Hermes | Peer::HermesUserspace) {
        // The peers stand for plain thread-per-core servers: the kernel (or
        // the shared listener) places connections, and nothing places requests.
        builder.place_requests(false).reconnect_overloaded(None);
    }
    if matches!(args.mode, Peer::Reuseport | Peer::Shared) {
        // Nor does any worker take connections queued on a hung one.
        builder.rescue_hung_queues(false);
    }
    if let Some(absolute) = args.margin {
        builder.policy(LeastLoaded { absolute, ..LeastLoaded::default() });
    }
    if let Some(n) = args.workers {
        builder.workers(n);
    }
    if let Some(pin) = args.pin.setting() {
        builder.pin_workers(pin);
    }
    builder
        .mode(mode)
        .require_ebpf(args.require_ebpf)
        .tick(Duration::from_millis(args.tick_ms))
        .drain_timeout(Duration::from_millis(args.drain_timeout_ms))
        // Started by SIGUSR2's upgrade: take the running server over.
        .upgrade_from_env(true)
        // Started by systemd (or anything speaking LISTEN_FDS): serve there.
        .socket_activation(true)
        .max_connections_per_worker((args.max_connections > 0).then_some(args.max_connections))
        .worker_slice((args.worker_slice_us > 0).then(|| Duration::from_micros(args.worker_slice_us)))
        .fine_policy(match args.fine {
            Fine::TwoChoices => FinePolicy::TwoChoices,
            Fine::Hash => FinePolicy::Hash,
        })
        .locality(args.locality == Switch::On);
    // The main thread's runtime (signals, the upgrade) exists before the
    // server announces itself: once clients may flood it past its
    // descriptor limit, creating one (epoll, eventfd) could fail with
    // `EMFILE`, and the process would exit while its workers serve.
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    // The SIGUSR2 handler too: whoever reads the announcement below may
    // signal at once, and an unhandled SIGUSR2 would end the process.
    let usr2 = {
        let _entered = rt.enter();
        tokio::signal::unix::signal(tokio::signal::unix::SignalKind::user_defined2())
    };
    // The one-line entry, as the README tells users; `app` carries the
    // default layer and the stats route (see the module's docs). `start`
    // returns once every worker accepts: only then say so.
    // gRPC: the default layer, and the stats on the gRPC port (HTTP/2).
    let (handle, agent) = if args.fleet.grpc {
        fleet::start(args.fleet.grpc(args.addr, args.cost_scale).with_stats(), args, builder)?
    } else {
        let app = app(hermes_tower::stats_router(), args.cost_scale);
        fleet::start(hermes_tower::serve(args.addr, app).without_layer(), args, builder)?
    };
    if let Some(reason) = handle.mode_reason() {
        eprintln!("warning: Hermes dispatch unavailable, using plain SO_REUSEPORT hashing: {reason}");
    }
    let shown = match handle.mode() {
        Mode::Hermes if args.mode == Peer::HermesLocal => "hermes-local",
        // The harness's `hermes-locality` peer.
        Mode::Hermes if args.locality == Switch::On => "hermes-locality",
        Mode::Hermes => "hermes",
        Mode::KernelHash if args.mode == Peer::HermesUserspace => "hermes-userspace",
        Mode::KernelHash => "reuseport",
        Mode::SharedListener => "shared",
    };
    let shown = match args.pin {
        Pin::Auto => shown.to_owned(),
        Pin::On => format!("{shown}-pinned"),
        Pin::Off => format!("{shown}-unpinned"),
    };
    // After the start and before the announcement: a test bed that waits
    // for the line finds the host's feedback running.
    let _agent = dsr::start_agent(&args.dsr, &handle)?;
    println!("listening on {} mode={shown} workers={}", handle.local_addr(), handle.snapshot().workers.len());
    if let Some(agent) = agent {
        println!("agent on {agent}");
    }
    std::io::stdout().flush()?;
    rt.block_on(hermes_tower::serve::upgrade_on(handle, usr2, async {
        if let Err(e) = hermes_tower::serve::ctrl_c_or_sigterm().await {
            eprintln!("hermes-workload: no SIGINT/SIGTERM handler: {e}");
            std::future::pending::<()>().await;
        }
    }))
}

fn main() -> ExitCode {
    // The runtime's warnings and errors (a failed upgrade says why) on
    // stderr; `RUST_LOG` for more.
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let args = Args::parse();
    let result = if args.mode == Peer::Tokio { run_tokio(&args) } else { run_hermes(&args) };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("hermes-workload: {e}");
            ExitCode::FAILURE
        }
    }
}
