//! The actix-web peer of `hermes-bench`: the workload server on actix-web's default multi-worker
//! server (one accept thread hands connections to the workers in turn, each worker a
//! single-threaded runtime), its listener taking HTTP/1.1 and plaintext HTTP/2 with prior
//! knowledge (`listen_auto_h2c`, which actix-web 4.19 and later do by default).
//!
//! Same contract as `hermes-workload`:
//!
//! ```text
//! cargo build --release --manifest-path benches/actix-workload/Cargo.toml
//! target/release/actix-workload --mode actix --workers 2 --addr 127.0.0.1:0
//! ```
//!
//! Its first stdout line is `listening on ADDR mode=actix workers=N`. Endpoints: `/`, `/work?us=N`
//! (spins the worker's CPU), `/block?ms=N` (blocks the worker thread), `/_hermes/stats` (per-worker
//! connections accepted, counted as each worker takes one). Every response carries
//! `x-hermes-worker: ID`, the worker's index in the order the workers started.

use std::cell::Cell;
use std::io::{self, Write as _};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use actix_web::{App, HttpRequest, HttpResponse, HttpServer, web};
use clap::Parser;

/// Hands out worker indices in the order the workers build their app.
static NEXT_WORKER: AtomicUsize = AtomicUsize::new(0);
/// Connections accepted by each worker, by index.
static ACCEPTED: OnceLock<Vec<AtomicU64>> = OnceLock::new();

thread_local! {
    static WORKER: Cell<usize> = const { Cell::new(usize::MAX) };
}

fn worker() -> usize {
    WORKER.with(Cell::get)
}

fn ok(body: String) -> HttpResponse {
    HttpResponse::Ok().insert_header(("x-hermes-worker", worker().to_string())).body(body)
}

/// `key=N` from the query string, 0 when absent or malformed.
fn param(req: &HttpRequest, key: &str) -> u64 {
    let pairs = req.query_string().split('&');
    pairs
        .filter_map(|kv| kv.split_once('='))
        .find(|(k, _)| *k == key)
        .and_then(|(_, v)| v.parse().ok())
        .unwrap_or(0)
}

async fn light() -> HttpResponse {
    ok("ok\n".to_owned())
}

async fn work(req: HttpRequest) -> HttpResponse {
    let us = param(&req, "us");
    let until = Instant::now() + Duration::from_micros(us);
    while Instant::now() < until {
        std::hint::spin_loop();
    }
    ok(format!("worked {us} us\n"))
}

async fn block(req: HttpRequest) -> HttpResponse {
    let ms = param(&req, "ms");
    // Blocks the worker thread, as a stuck handler would.
    std::thread::sleep(Duration::from_millis(ms));
    ok(format!("blocked {ms} ms\n"))
}

async fn stats() -> HttpResponse {
    let workers: Vec<String> = ACCEPTED
        .get()
        .map(|all| {
            // Relaxed: each count is read on its own, as a snapshot of a counter.
            all.iter()
                .enumerate()
                .map(|(i, n)| format!("{{\"id\":{i},\"accepted\":{}}}", n.load(Ordering::Relaxed)))
        })
        .into_iter()
        .flatten()
        .collect();
    HttpResponse::Ok()
        .insert_header(("x-hermes-worker", worker().to_string()))
        .content_type("application/json")
        .body(format!("{{\"mode\":\"actix\",\"workers\":[{}]}}", workers.join(",")))
}

/// The actix-web peer of hermes-bench.
#[derive(Debug, Parser)]
struct Args {
    /// The peer served: only `actix`.
    #[arg(long, default_value = "actix", value_parser = ["actix"])]
    mode: String,
    /// Worker threads (default: one per CPU).
    #[arg(long, default_value_t = default_workers(), value_parser = clap::value_parser!(u16).range(1..))]
    workers: u16,
    /// Address to listen on (port 0: the kernel picks one, printed on the first line).
    #[arg(long, default_value = "127.0.0.1:0")]
    addr: std::net::SocketAddr,
}

fn default_workers() -> u16 {
    std::thread::available_parallelism().map_or(1, |n| u16::try_from(n.get()).unwrap_or(u16::MAX))
}

#[actix_web::main]
async fn main() -> io::Result<()> {
    let args = Args::parse();
    let workers = usize::from(args.workers);
    let listener = std::net::TcpListener::bind(args.addr)?;
    let local = listener.local_addr()?;
    ACCEPTED.get_or_init(|| (0..workers).map(|_| AtomicU64::new(0)).collect());
    let server = HttpServer::new(|| {
        WORKER.with(|w| {
            if w.get() == usize::MAX {
                // Relaxed: the counter only hands out distinct indices.
                w.set(NEXT_WORKER.fetch_add(1, Ordering::Relaxed));
            }
        });
        App::new()
            .route("/", web::get().to(light))
            .route("/work", web::get().to(work))
            .route("/block", web::get().to(block))
            .route("/_hermes/stats", web::get().to(stats))
    })
    .workers(workers)
    // Runs on the worker that took the connection.
    .on_connect(|_, _| {
        if let Some(n) = ACCEPTED.get().and_then(|all| all.get(worker())) {
            n.fetch_add(1, Ordering::Relaxed);
        }
    })
    .listen_auto_h2c(listener)?
    .run();
    println!("listening on {local} mode={} workers={workers}", args.mode);
    io::stdout().flush()?;
    server.await
}
