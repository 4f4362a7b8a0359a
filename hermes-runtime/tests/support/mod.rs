//! Shared helpers: an axum app like the workload's, a small blocking HTTP/1.1
//! client over std sockets, and the eBPF availability gate.
#![allow(dead_code)]

use std::{
    io::{self, Read, Write},
    net::{SocketAddr, TcpStream},
    time::{Duration, Instant},
};

use axum::{Router, extract::Query, http::HeaderValue, response::Response, routing::get as route_get};
use hermes_runtime::{Builder, HermesListener, ServerHandle, Snapshot, WorkerStatus};

/// Whether eBPF tests can run. Without eBPF: panics when
/// `HERMES_REQUIRE_BPF=1`, else says loudly that the test is skipped.
pub fn require_bpf(test: &str) -> bool {
    match hermes_bpf::Dispatcher::load() {
        Ok(_) => true,
        Err(e) => {
            if std::env::var("HERMES_REQUIRE_BPF").as_deref() == Ok("1") {
                panic!("{test}: eBPF is required (HERMES_REQUIRE_BPF=1) but unavailable: {e}");
            }
            // Straight to stderr, past the test harness's output capture.
            let _ = writeln!(
                io::stderr(),
                "\n!!!!! SKIPPED {test}: eBPF unavailable ({e}); set HERMES_REQUIRE_BPF=1 to fail instead !!!!!\n"
            );
            false
        }
    }
}

/// The `?ms=N` of the blocking and sleeping endpoints; missing is 0, a
/// malformed value is answered with 400 by axum's `Query` extractor.
#[derive(serde::Deserialize)]
struct Cost {
    #[serde(default)]
    ms: u64,
}

/// `/`, `/block?ms=N` (blocks the thread), `/sleep?ms=N` (async), `/panic`,
/// `/_hermes/stats`; every response has `x-hermes-worker`.
pub fn app(id: usize) -> Router {
    Router::new()
        .route("/", route_get(|| async { "ok" }))
        .route(
            "/block",
            route_get(|Query(cost): Query<Cost>| async move {
                std::thread::sleep(Duration::from_millis(cost.ms));
                "unblocked"
            }),
        )
        .route(
            "/sleep",
            route_get(|Query(cost): Query<Cost>| async move {
                tokio::time::sleep(Duration::from_millis(cost.ms)).await;
                "slept"
            }),
        )
        .route(
            "/panic",
            route_get(|| async {
                panic!("handler panic requested by the test");
                #[allow(unreachable_code)]
                "unreachable"
            }),
        )
        .merge(hermes_runtime::stats_router())
        .layer(axum::middleware::map_response(move |mut res: Response| async move {
            res.headers_mut().insert("x-hermes-worker", HeaderValue::from(id));
            res
        }))
}

/// Starts `builder` serving [`app`] with graceful shutdown.
pub fn start(builder: &Builder) -> ServerHandle {
    let server = builder.build().expect("build");
    server
        .serve(|listener: HermesListener| {
            let app = app(listener.worker_id());
            async move {
                let _ = axum::serve(listener, app)
                    .with_graceful_shutdown(hermes_runtime::shutdown_signal())
                    .await;
            }
        })
        .expect("serve")
}

/// A parsed response.
#[derive(Debug)]
pub struct Resp {
    pub status: u16,
    pub worker: Option<usize>,
    pub body: String,
}

/// Sends a GET of `path` on `stream`.
pub fn send(stream: &mut TcpStream, path: &str, keep_alive: bool) -> io::Result<()> {
    let conn = if keep_alive { "keep-alive" } else { "close" };
    write!(stream, "GET {path} HTTP/1.1\r\nHost: test\r\nConnection: {conn}\r\n\r\n")
}

/// Reads one response (headers, then a Content-Length body).
pub fn read_response(stream: &mut TcpStream) -> io::Result<Resp> {
    let mut buf = Vec::new();
    let mut byte = [0u8; 1];
    while !buf.ends_with(b"\r\n\r\n") {
        if stream.read(&mut byte)? == 0 {
            return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "connection closed before a response"));
        }
        buf.push(byte[0]);
    }
    let head = String::from_utf8_lossy(&buf).to_string();
    let mut lines = head.split("\r\n");
    let status = lines
        .next()
        .and_then(|l| l.split(' ').nth(1))
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| io::Error::other(format!("bad status line in {head:?}")))?;
    let mut worker = None;
    let mut len = 0usize;
    for l in lines {
        if let Some((k, v)) = l.split_once(':') {
            let v = v.trim();
            match k.to_ascii_lowercase().as_str() {
                "x-hermes-worker" => worker = v.parse().ok(),
                "content-length" => len = v.parse().unwrap_or(0),
                _ => {}
            }
        }
    }
    let mut body = vec![0u8; len];
    stream.read_exact(&mut body)?;
    Ok(Resp { status, worker, body: String::from_utf8_lossy(&body).into() })
}

/// One GET on a fresh connection.
pub fn get(addr: SocketAddr, path: &str) -> io::Result<Resp> {
    let mut s = TcpStream::connect(addr)?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    send(&mut s, path, false)?;
    read_response(&mut s)
}

/// Polls `f` every millisecond until it returns `Some` or `timeout` passes.
pub fn poll_until<T>(timeout: Duration, mut f: impl FnMut() -> Option<T>) -> Option<T> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return Some(v);
        }
        if Instant::now() >= deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// Waits until every worker is serving and eligible.
pub fn wait_all_eligible(h: &ServerHandle) -> Snapshot {
    poll_until(Duration::from_secs(5), || {
        let s = h.snapshot();
        s.workers.iter().all(|w| w.eligible && w.state == WorkerStatus::Serving).then_some(s)
    })
    .unwrap_or_else(|| panic!("workers never all eligible: {:?}", h.snapshot()))
}

/// Sum of open connections over the workers.
pub fn open_total(s: &Snapshot) -> u64 {
    s.workers.iter().map(|w| u64::from(w.open_connections)).sum()
}
