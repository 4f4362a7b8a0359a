//! The workload server the benchmarks drive.
//!
//! ```text
//! cargo run --release --bin hermes-workload -- --mode hermes|reuseport|shared|tokio --workers N --addr 127.0.0.1:0
//! ```
//!
//! The first line on stdout is `listening on ADDR mode=MODE workers=N`, where
//! MODE is the mode in effect (`reuseport` when `hermes` fell back to the
//! kernel's hash; the reason goes to stderr). Endpoints: `/` (light),
//! `/work?us=N` (spins the worker's CPU for N µs), `/block?ms=N` (blocks the
//! worker thread for N ms), `/_hermes/stats` (the snapshot as JSON). Every
//! response carries `x-hermes-worker: ID`. Ctrl-C or SIGTERM drains and exits.

use std::{
    cell::Cell,
    io::Write,
    net::SocketAddr,
    process::ExitCode,
    sync::atomic::{AtomicUsize, Ordering},
    time::{Duration, Instant},
};

use axum::{
    Router,
    extract::Query,
    http::HeaderValue,
    response::{IntoResponse, Response},
    routing::get,
};
use hermes_runtime::{Builder, FinePolicy, HermesListener, Mode, scheduler::LeastLoaded};

const USAGE: &str = "usage: hermes-workload --mode hermes|reuseport|shared|tokio --workers N --addr ADDR \
                     [--require-ebpf] [--tick-ms N] [--fine two-choices|hash] [--margin N]";

struct Args {
    mode: String,
    workers: usize,
    addr: SocketAddr,
    require_ebpf: bool,
    tick_ms: u64,
    fine: FinePolicy,
    margin: Option<u64>,
}

fn parse_args() -> Result<Args, String> {
    let mut args = Args {
        mode: "hermes".into(),
        workers: std::thread::available_parallelism().map_or(1, |n| n.get()),
        addr: SocketAddr::from(([127, 0, 0, 1], 0)),
        require_ebpf: false,
        tick_ms: 5,
        fine: FinePolicy::default(),
        margin: None,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().ok_or_else(|| format!("{flag} needs a value"));
        match flag.as_str() {
            "--mode" => args.mode = value()?,
            "--workers" => args.workers = value()?.parse().map_err(|e| format!("--workers: {e}"))?,
            "--addr" => args.addr = value()?.parse().map_err(|e| format!("--addr: {e}"))?,
            "--tick-ms" => args.tick_ms = value()?.parse().map_err(|e| format!("--tick-ms: {e}"))?,
            "--fine" => {
                args.fine = match value()?.as_str() {
                    "two-choices" => FinePolicy::TwoChoices,
                    "hash" => FinePolicy::Hash,
                    other => return Err(format!("--fine: unknown policy `{other}`")),
                }
            }
            "--margin" => args.margin = Some(value()?.parse().map_err(|e| format!("--margin: {e}"))?),
            "--require-ebpf" => args.require_ebpf = true,
            "-h" | "--help" => return Err(USAGE.into()),
            other => return Err(format!("unknown argument `{other}`\n{USAGE}")),
        }
    }
    Ok(args)
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

/// The endpoints, answering with `x-hermes-worker: id`.
fn app(stats: Router, worker: impl Fn() -> usize + Clone + Send + Sync + 'static) -> Router {
    Router::new()
        .route("/", get(|| async { "ok" }))
        .route(
            "/work",
            get(|Query(cost): Query<Cost>| async move {
                let end = Instant::now() + Duration::from_micros(cost.us);
                while Instant::now() < end {
                    std::hint::spin_loop();
                }
                "worked"
            }),
        )
        .route(
            "/block",
            get(|Query(cost): Query<Cost>| async move {
                // Blocks the worker thread, as a stuck handler would.
                std::thread::sleep(Duration::from_millis(cost.ms));
                "unblocked"
            }),
        )
        .merge(stats)
        .layer(axum::middleware::map_response(move |mut res: Response| {
            let id = worker();
            async move {
                res.headers_mut().insert("x-hermes-worker", HeaderValue::from(id));
                res
            }
        }))
}

fn wait_for_signal() {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("signal runtime");
    rt.block_on(async {
        let mut term =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).expect("SIGTERM");
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
    });
}

fn run_tokio(args: &Args) -> std::io::Result<()> {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    thread_local!(static ID: Cell<usize> = const { Cell::new(0) });
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(args.workers)
        .enable_all()
        .on_thread_start(|| ID.with(|id| id.set(NEXT.fetch_add(1, Ordering::Relaxed))))
        .build()?;
    let workers = args.workers;
    rt.block_on(async move {
        let listener = tokio::net::TcpListener::bind(&args.addr).await?;
        println!("listening on {} mode=tokio workers={workers}", listener.local_addr()?);
        std::io::stdout().flush()?;
        let stats = Router::new().route(
            "/_hermes/stats",
            get(|| async { axum::Json(serde_json::json!({"mode": "tokio", "workers": []})).into_response() }),
        );
        let app = app(stats, || ID.with(|id| id.get()));
        let signal = async {
            let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
                .expect("SIGTERM handler");
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
        };
        axum::serve(listener, app).with_graceful_shutdown(signal).await
    })
}

fn run_hermes(args: &Args) -> std::io::Result<()> {
    let mode = match args.mode.as_str() {
        "hermes" => Mode::Hermes,
        "reuseport" => Mode::KernelHash,
        "shared" => Mode::SharedListener,
        other => {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                format!("unknown mode `{other}`"),
            ));
        }
    };
    let mut builder = Builder::new();
    if let Some(absolute) = args.margin {
        builder.policy(LeastLoaded { absolute, ..LeastLoaded::default() });
    }
    let server = builder
        .workers(args.workers)
        .bind(args.addr)
        .mode(mode)
        .require_ebpf(args.require_ebpf)
        .tick(Duration::from_millis(args.tick_ms))
        .fine_policy(args.fine)
        .build()?;
    if let Some(reason) = server.mode_reason() {
        eprintln!("warning: Hermes dispatch unavailable, using plain SO_REUSEPORT hashing: {reason}");
    }
    let shown = match server.mode() {
        Mode::Hermes => "hermes",
        Mode::KernelHash => "reuseport",
        Mode::SharedListener => "shared",
    };
    let addr = server.local_addr();
    // `serve` returns once every worker accepts: only then say so.
    let handle = server.serve(|listener: HermesListener| {
        let id = listener.worker_id();
        let app = app(hermes_runtime::stats_router(), move || id);
        async move {
            let _ =
                axum::serve(listener, app).with_graceful_shutdown(hermes_runtime::shutdown_signal()).await;
        }
    })?;
    println!("listening on {addr} mode={shown} workers={}", args.workers);
    std::io::stdout().flush()?;
    wait_for_signal();
    handle.shutdown();
    Ok(())
}

fn main() -> ExitCode {
    let args = match parse_args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::from(2);
        }
    };
    let result = if args.mode == "tokio" { run_tokio(&args) } else { run_hermes(&args) };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("hermes-workload: {e}");
            ExitCode::FAILURE
        }
    }
}
