//! Per-worker control through `hermes_runtime::Builder`, on a real server
//! started by `hermes_tower::serve`: the runtime hook configures each
//! worker's blocking pool, the start hook runs on each worker thread, and a
//! handler's log line carries its worker's span. Its own test binary, since
//! the log subscriber is process-wide.

use std::{
    io::Write,
    sync::{Arc, Mutex},
    time::Duration,
};

use axum::{Router, routing::get};
use hermes_runtime::Builder;
use hermes_test_support::{
    http::get_path,
    server::shutdown,
    wait::{TIMEOUT, poll_async},
};

/// A log sink the test reads back.
#[derive(Clone, Default)]
struct Logs(Arc<Mutex<Vec<u8>>>);

impl Logs {
    /// Every line logged so far.
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }
}

impl Write for Logs {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

async fn handler() -> String {
    let worker = hermes_runtime::context::current().expect("on a worker").id();
    tracing::info!(marker = "from-the-handler", "handling a request");
    let blocking = tokio::task::spawn_blocking(|| std::thread::current().name().unwrap_or("").to_owned())
        .await
        .expect("blocking task");
    format!("{worker} {blocking}")
}

/// Holds its thread for 5 ms, so the second request of the route is
/// offloaded to the blocking pool; answers the thread it ran on.
async fn heavy() -> String {
    let start = std::time::Instant::now();
    while start.elapsed() < Duration::from_millis(5) {
        std::hint::spin_loop();
    }
    let thread = std::thread::current().name().unwrap_or("").to_owned();
    tracing::info!(marker = "from-the-heavy-handler", thread, "handling a heavy request");
    thread
}

/// The body of an HTTP/1.1 response.
fn body(response: &str) -> String {
    response.rsplit("\r\n\r\n").next().unwrap().to_owned()
}

/// `GET path` on a fresh connection; the body.
async fn fetch(addr: std::net::SocketAddr, path: &str) -> String {
    body(&get_path(addr, path).await)
}

#[tokio::test]
async fn worker_hooks_configure_the_runtime_run_on_each_worker_and_logs_carry_the_worker_span() {
    let logs = Logs::default();
    let sink = logs.clone();
    tracing_subscriber::fmt()
        .with_ansi(false)
        .with_max_level(tracing::Level::INFO)
        .with_writer(move || sink.clone())
        .init();

    let started: Arc<Mutex<Vec<(usize, String)>>> = Arc::default();
    let record = started.clone();
    let mut builder = Builder::new();
    builder
        .workers(2)
        .worker_stack_size(1 << 20)
        .on_worker_runtime(|id, runtime| {
            runtime.max_blocking_threads(1).thread_name(format!("blocking-of-{id}"));
        })
        .on_worker_start(move |id| {
            let thread = std::thread::current().name().unwrap_or("").to_owned();
            assert_eq!(hermes_runtime::context::current().map(|w| w.id()), Some(id));
            record.lock().unwrap().push((id, thread));
        });
    let app = Router::new().route("/", get(handler)).route("/heavy", get(heavy));
    let handle = hermes_tower::serve("127.0.0.1:0", app).with_builder(builder).start().expect("start");

    let mut started = started.lock().unwrap().clone();
    started.sort();
    assert_eq!(started, vec![(0, "hermes-worker-0".to_owned()), (1, "hermes-worker-1".to_owned())]);

    let response = get_path(handle.local_addr(), "/").await;
    let body = body(&response);
    let (worker, blocking) = body.split_once(' ').expect("worker and thread");
    // spawn_blocking ran on the worker's own blocking pool, named by the hook.
    assert_eq!(blocking, format!("blocking-of-{worker}"), "{response}");

    let line = poll_async(TIMEOUT, Duration::from_millis(5), async || {
        logs.text().lines().find(|l| l.contains("from-the-handler")).map(str::to_owned)
    })
    .await
    .unwrap_or_else(|| panic!("no handler log line in:\n{}", logs.text()));
    assert!(line.contains(&format!("hermes_worker{{worker={worker}}}")), "{line}");

    // A route learned to hold its thread runs on the blocking pool of its
    // connection's worker, and its log lines still carry that worker's span.
    assert!(fetch(handle.local_addr(), "/heavy").await.starts_with("hermes-worker-"), "first: on the worker");
    let thread = fetch(handle.local_addr(), "/heavy").await;
    let owner = thread.strip_prefix("blocking-of-").expect("offloaded to a worker's own pool");
    let text = logs.text();
    let line = text
        .lines()
        .find(|l| l.contains("from-the-heavy-handler") && l.contains(&thread))
        .unwrap_or_else(|| panic!("no offloaded handler log line in:\n{text}"));
    assert!(line.contains(&format!("hermes_worker{{worker={owner}}}")), "{line}");

    shutdown(handle).await;
}

#[test]
fn a_zero_stack_size_is_refused() {
    let mut builder = Builder::new();
    let e = builder.worker_stack_size(0).bind("127.0.0.1:0".parse().unwrap()).build().expect_err("refused");
    assert_eq!(e.kind(), std::io::ErrorKind::InvalidInput, "{e}");
    assert!(e.to_string().contains("worker_stack_size"), "{e}");
}
