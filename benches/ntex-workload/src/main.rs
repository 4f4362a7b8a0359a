//! The ntex peer of `hermes-bench`: the workload server built on ntex-server, in the balancing
//! mode asked for (`--balancing`): `incoming-cpu` (ntex's default: the worker on the CPU that
//! received the connection's packets, unless it is busier than the least loaded choice),
//! `least-loaded` (the less loaded of two sampled workers) or `round-robin`; each skips workers
//! whose runtime is blocked. Workers keep ntex's default CPU affinity (each pinned to a core).
//!
//! Same contract as `hermes-workload`:
//!
//! ```text
//! cargo build --release --ignore-rust-version --manifest-path benches/ntex-workload/Cargo.toml
//! target/release/ntex-workload --mode ntex --workers 2 --addr 127.0.0.1:0 --balancing least-loaded
//! ```
//!
//! Its first stdout line is `listening on ADDR mode=ntex-BALANCING workers=N` (`ntex-h2-BALANCING`
//! with `--h2`). Endpoints: `/`, `/work?us=N` (spins the worker's CPU), `/block?ms=N` (blocks the
//! worker thread), `/_hermes/stats` (per-worker connections accepted, open connections and busy
//! time from ntex-server's metrics). Every response carries `x-hermes-worker: ID`, the worker's
//! index in the order the workers started.
//!
//! ntex's HTTP service speaks HTTP/2 over plaintext only as an HTTP/2-only service (it picks
//! HTTP/2 after TLS ALPN otherwise): `--h2` serves that, with prior knowledge, for the HTTP/2
//! scenarios; the stats endpoint is then reached over HTTP/2 only.

use std::cell::Cell;
use std::io::{self, Write as _};
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use ntex::SharedCfg;
use ntex::http::HttpService;
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
        .body(format!("{{\"mode\":\"ntex\",\"balancing\":\"{}\",\"workers\":[{workers}]}}", balancing_name()))
}

/// The balancing modes, by their command-line names.
const BALANCING: [(&str, LoadBalancing); 3] = [
    ("incoming-cpu", LoadBalancing::IncomingCpu),
    ("least-loaded", LoadBalancing::LeastLoaded),
    ("round-robin", LoadBalancing::RoundRobin),
];

/// The balancing mode in force, by name (for the stats endpoint).
static BALANCING_NAME: Mutex<&str> = Mutex::new("incoming-cpu");

fn balancing_name() -> &'static str {
    BALANCING_NAME.lock().map(|n| *n).unwrap_or("?")
}

struct Args {
    workers: usize,
    addr: std::net::SocketAddr,
    balancing: (&'static str, LoadBalancing),
    h2: bool,
}

fn args() -> Result<Args, String> {
    let mut workers = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
    let mut addr = "127.0.0.1:0".parse().expect("valid address");
    let mut balancing = BALANCING[0];
    let mut h2 = false;
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        if flag == "--h2" {
            h2 = true;
            continue;
        }
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
            "--balancing" => {
                balancing = *BALANCING.iter().find(|(name, _)| *name == value).ok_or_else(|| {
                    let names: Vec<&str> = BALANCING.iter().map(|(n, _)| *n).collect();
                    format!("--balancing: {value:?} is none of {}", names.join(", "))
                })?;
            }
            _ => {
                return Err(format!(
                    "unknown option {flag}; usage: --mode ntex --workers N --addr ADDR \
                     [--balancing incoming-cpu|least-loaded|round-robin] [--h2]"
                ));
            }
        }
    }
    Ok(Args { workers, addr, balancing, h2 })
}

/// Gives the worker of this thread its index, the first time it builds its app.
fn register_worker() {
    WORKER.with(|w| {
        if w.get() == usize::MAX {
            // Relaxed: the counter only hands out distinct indices.
            w.set(NEXT_WORKER.fetch_add(1, Ordering::Relaxed));
        }
    });
}

/// The app of every worker (a macro: its type is ntex's to name).
macro_rules! app {
    () => {{
        register_worker();
        App::new()
            .service(web::resource("/").to(light))
            .service(web::resource("/work").to(work))
            .service(web::resource("/block").to(block))
            .service(web::resource("/_hermes/stats").to(stats))
    }};
}

#[ntex::main]
async fn main() -> io::Result<()> {
    let args = args().map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
    let listener = std::net::TcpListener::bind(args.addr)?;
    let local = listener.local_addr()?;
    let (name, balancing) = args.balancing;
    *BALANCING_NAME.lock().map_err(|_| io::Error::other("balancing lock poisoned"))? = name;
    let server = if args.h2 {
        ntex::server::build()
            .workers(args.workers)
            .load_balancing(balancing)
            .listen("ntex-h2", listener, SharedCfg::default(), async |_| HttpService::h2(app!()))?
            .run()
    } else {
        HttpServer::new(async |_| app!())
            .workers(args.workers)
            .load_balancing(balancing)
            .listen(listener, SharedCfg::default())?
            .run()
    };
    *SERVER.lock().map_err(|_| io::Error::other("server handle lock poisoned"))? = Some(server.clone());
    let protocol = if args.h2 { "-h2" } else { "" };
    println!("listening on {local} mode=ntex{protocol}-{name} workers={}", args.workers);
    io::stdout().flush()?;
    server.await
}
