//! The ntex peer of `hermes-bench`: the workload server built on ntex-server with its
//! `LeastLoaded` balancing (one accept loop hands each connection to the less loaded of two
//! sampled workers, skipping workers whose runtime is blocked).
//!
//! Same contract as `hermes-workload`:
//!
//! ```text
//! cargo build --release --ignore-rust-version --manifest-path benches/ntex-workload/Cargo.toml
//! target/release/ntex-workload --mode ntex --workers 2 --addr 127.0.0.1:0
//! ```
//!
//! Its first stdout line is `listening on ADDR mode=ntex workers=N`. Endpoints: `/`, `/work?us=N`
//! (spins the worker's CPU), `/block?ms=N` (blocks the worker thread), `/_hermes/stats` (per-worker
//! connections accepted, open connections and busy time from ntex-server's metrics). Every response
//! carries `x-hermes-worker: ID`, the worker's index in the order the workers started.

use std::cell::Cell;
use std::io::{self, Write as _};
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use ntex::SharedCfg;
use ntex::web::{self, App, HttpRequest, HttpResponse, HttpServer};
use ntex_server::LoadBalancing;

static NEXT_WORKER: AtomicUsize = AtomicUsize::new(0);
/// The running server, for its metrics (not `Sync`, hence the mutex).
static SERVER: Mutex<Option<ntex::server::Server>> = Mutex::new(None);

thread_local! {
    static WORKER: Cell<usize> = const { Cell::new(usize::MAX) };
}

fn reply(body: String) -> HttpResponse {
    HttpResponse::Ok()
        .header("x-hermes-worker", WORKER.with(Cell::get).to_string())
        .content_type("text/plain")
        .body(body)
}

/// The value of `key` in the request's query string.
fn query(req: &HttpRequest, key: &str) -> Option<u64> {
    req.query_string().split('&').find_map(|kv| kv.strip_prefix(key)?.strip_prefix('=')?.parse().ok())
}

async fn light() -> HttpResponse {
    reply("ok\n".to_owned())
}

async fn work(req: HttpRequest) -> HttpResponse {
    let us = query(&req, "us").unwrap_or(0);
    let start = Instant::now();
    let mut spins = 0u64;
    while start.elapsed() < Duration::from_micros(us) {
        spins = std::hint::black_box(spins.wrapping_add(1));
    }
    reply(format!("worked {us} us\n"))
}

async fn block(req: HttpRequest) -> HttpResponse {
    let ms = query(&req, "ms").unwrap_or(0);
    std::thread::sleep(Duration::from_millis(ms));
    reply(format!("blocked {ms} ms\n"))
}

/// The worker id in ntex-server's metrics (`WorkerId` exposes it only through `Debug`).
fn worker_index(id: impl std::fmt::Debug, fallback: usize) -> usize {
    let text = format!("{id:?}");
    let digits: String = text.chars().filter(char::is_ascii_digit).collect();
    digits.parse().unwrap_or(fallback)
}

async fn stats() -> HttpResponse {
    let metrics = SERVER.lock().ok().and_then(|s| s.as_ref().map(|s| s.metrics()));
    let workers = match metrics {
        Some(metrics) => metrics
            .workers
            .iter()
            .enumerate()
            .map(|(i, w)| {
                let busy = w.runtime.busy_duration.map(|d| d.as_nanos().to_string());
                format!(
                    "{{\"id\":{},\"accepted\":{},\"open_connections\":{}{}}}",
                    worker_index(w.id, i),
                    w.items,
                    w.active_connections,
                    busy.map(|b| format!(",\"busy_ns\":{b}")).unwrap_or_default()
                )
            })
            .collect::<Vec<_>>()
            .join(","),
        None => String::new(),
    };
    HttpResponse::Ok()
        .header("x-hermes-worker", WORKER.with(Cell::get).to_string())
        .content_type("application/json")
        .body(format!("{{\"mode\":\"ntex\",\"balancing\":\"LeastLoaded\",\"workers\":[{workers}]}}"))
}

struct Args {
    workers: usize,
    addr: std::net::SocketAddr,
}

fn args() -> Result<Args, String> {
    let mut workers = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
    let mut addr = "127.0.0.1:0".parse().expect("valid address");
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let value = it.next().ok_or_else(|| format!("{flag} needs a value"))?;
        match flag.as_str() {
            "--mode" if value == "ntex" => {}
            "--mode" => return Err(format!("this server only runs --mode ntex, not {value:?}")),
            "--workers" => {
                workers = value.parse().map_err(|_| format!("--workers: not a number: {value:?}"))?;
                if workers == 0 {
                    return Err("--workers must be at least 1".to_owned());
                }
            }
            "--addr" => addr = value.parse().map_err(|_| format!("--addr: not an address: {value:?}"))?,
            _ => return Err(format!("unknown option {flag}; usage: --mode ntex --workers N --addr ADDR")),
        }
    }
    Ok(Args { workers, addr })
}

#[ntex::main]
async fn main() -> io::Result<()> {
    let args = args().map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
    let listener = std::net::TcpListener::bind(args.addr)?;
    let local = listener.local_addr()?;
    let server = HttpServer::new(async |_| {
        WORKER.with(|w| {
            if w.get() == usize::MAX {
                w.set(NEXT_WORKER.fetch_add(1, Ordering::Relaxed));
            }
        });
        App::new()
            .service(web::resource("/").to(light))
            .service(web::resource("/work").to(work))
            .service(web::resource("/block").to(block))
            .service(web::resource("/_hermes/stats").to(stats))
    })
    .workers(args.workers)
    .load_balancing(LoadBalancing::LeastLoaded)
    .listen(listener, SharedCfg::default())?
    .run();
    *SERVER.lock().map_err(|_| io::Error::other("server handle lock poisoned"))? = Some(server.clone());
    println!("listening on {local} mode=ntex workers={}", args.workers);
    io::stdout().flush()?;
    server.await
}
