//! Request and response bodies against the connection timeouts of
//! `hermes_tower::serve`, at the defaults users get (the minimum request
//! body rate, the idle timeout on): a request body that trickles is cut
//! once it falls under the minimum rate after its grace period, over
//! HTTP/1 and HTTP/2, and its handler is freed; a streamed response (server
//! sent events) quiet for longer than the idle timeout is not cut while its
//! handler lives, and the connection is idle again once it ends; a
//! connection upgraded to another protocol (`101 Switching Protocols`, as
//! WebSockets are) is that protocol's, quiet or not.

use std::{
    io::{Read, Write},
    net::{SocketAddr, TcpStream},
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use axum::{
    Router,
    body::{Body, Bytes},
    extract::State,
    routing::{get, post},
};
use hermes_runtime::{Builder, ServerHandle};
use hermes_test_support::{
    ebpf,
    rawh2::{END_HEADERS, RawH2, frame, kind},
    snapshot::in_flight,
    wait::poll_until,
};

/// The idle timeout of these tests; the others stay at their defaults.
const IDLE: Duration = Duration::from_millis(400);

/// Handlers that failed to read their request body.
#[derive(Clone, Default)]
struct Failed(Arc<AtomicU64>);

fn app(failed: Failed) -> Router {
    Router::new()
        .route(
            "/upload",
            post(|State(failed): State<Failed>, body: Body| async move {
                match axum::body::to_bytes(body, usize::MAX).await {
                    Ok(bytes) => format!("got {}", bytes.len()),
                    Err(e) => {
                        // Relaxed: a lone counter read by the test.
                        failed.0.fetch_add(1, Ordering::Relaxed);
                        format!("body failed: {e}")
                    }
                }
            }),
        )
        .route(
            "/events",
            get(|| async {
                let events = futures::stream::unfold(0, |n| async move {
                    match n {
                        0 => Some((Ok::<_, std::io::Error>(Bytes::from("data: first\n\n")), 1)),
                        1 => {
                            // The stream is quiet for twice the idle timeout: what is tested.
                            tokio::time::sleep(IDLE * 2).await;
                            Some((Ok(Bytes::from("data: second\n\n")), 2))
                        }
                        _ => None,
                    }
                });
                ([("content-type", "text/event-stream")], Body::from_stream(events))
            }),
        )
        .route("/upgrade", get(upgrade))
        .with_state(failed)
}

/// Answers `101 Switching Protocols`; the upgraded connection waits for a
/// byte from the client for twice the idle timeout, then says whether its
/// read ended first.
async fn upgrade(mut request: axum::extract::Request) -> axum::response::Response {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    let upgrade = hyper::upgrade::on(&mut request);
    tokio::spawn(async move {
        let Ok(upgraded) = upgrade.await else { return };
        let mut io = hyper_util::rt::TokioIo::new(upgraded);
        let mut byte = [0u8; 1];
        let said = tokio::select! {
            read = io.read(&mut byte) => format!("read ended: {read:?}"),
            // Quiet for twice the idle timeout: what is tested.
            () = tokio::time::sleep(IDLE * 2) => "still open".to_owned(),
        };
        let _ = io.write_all(said.as_bytes()).await;
    });
    axum::response::Response::builder()
        .status(101)
        .header("connection", "upgrade")
        .header("upgrade", "test")
        .body(Body::empty())
        .expect("response")
}

fn start(failed: &Failed) -> ServerHandle {
    let mut builder = Builder::new();
    builder.workers(2).require_ebpf(ebpf::required());
    hermes_tower::serve("127.0.0.1:0", app(failed.clone()))
        .with_builder(builder)
        .idle_timeout(Some(IDLE))
        .start()
        .expect("start")
}

/// The default grace before a request body's rate is checked, and what the
/// cut may take beyond it on a loaded machine.
const GRACE: Duration = Duration::from_secs(5);
const SLACK: Duration = Duration::from_secs(2);

fn settled(handle: &ServerHandle) -> bool {
    poll_until(Duration::from_secs(5), || (in_flight(&handle.snapshot()) == 0).then_some(())).is_some()
}

#[test]
fn an_http1_request_body_under_the_minimum_rate_is_cut_after_its_grace_period() {
    let failed = Failed::default();
    let handle = start(&failed);
    let addr: SocketAddr = handle.local_addr();
    let mut conn = TcpStream::connect(addr).expect("connect");
    let since = Instant::now();
    conn.write_all(b"POST /upload HTTP/1.1\r\nHost: t\r\nContent-Length: 100000\r\n\r\n0123456789")
        .expect("send the head and a first piece");
    // One byte every 200 ms: 5 bytes/s, far under the minimum.
    let mut trickle = conn.try_clone().expect("clone");
    let trickler = std::thread::spawn(move || {
        while since.elapsed() < GRACE + SLACK * 2 && trickle.write_all(b"x").is_ok() {
            std::thread::sleep(Duration::from_millis(200));
        }
    });
    conn.set_read_timeout(Some(GRACE + SLACK)).expect("read timeout");
    let mut answer = Vec::new();
    let mut buf = [0u8; 1024];
    while let Ok(n @ 1..) = conn.read(&mut buf) {
        answer.extend_from_slice(&buf[..n]);
    }
    let took = since.elapsed();
    let answer = String::from_utf8_lossy(&answer);
    eprintln!("HTTP/1 body at 5 bytes/s: answered and closed {took:?} after its head: {answer:?}");
    assert!(answer.contains("body failed"), "the handler's body read failed: {answer:?}");
    assert!(took >= GRACE && took <= GRACE + SLACK, "{took:?}");
    assert_eq!(failed.0.load(Ordering::Relaxed), 1);
    assert!(settled(&handle), "the handler is freed: {:?}", handle.snapshot());
    drop(conn);
    trickler.join().expect("trickler");
    handle.shutdown();
}

#[test]
fn an_http2_request_body_under_the_minimum_rate_is_cut_and_its_connection_serves_on() {
    let failed = Failed::default();
    let handle = start(&failed);
    let tcp = TcpStream::connect(handle.local_addr()).expect("connect");
    tcp.set_read_timeout(Some(Duration::from_millis(200))).expect("read timeout");
    let mut conn = RawH2::handshake(tcp).expect("HTTP/2 handshake");
    // POST /upload (`:method POST` is static entry 3), with a body to come.
    let mut block = vec![0x83, 0x86, 0x04, 7];
    block.extend_from_slice(b"/upload");
    let since = Instant::now();
    conn.send(&frame(kind::HEADERS, END_HEADERS, 1, &block)).expect("send HEADERS");
    let mut ended = None;
    while ended.is_none() && since.elapsed() < GRACE + SLACK {
        // One byte every 200 ms, between pings that keep reading.
        let _ = conn.send(&frame(kind::DATA, 0, 1, b"x"));
        while let Ok(f) = conn.read_frame() {
            // The stream's end: a response, or a reset.
            if f.stream == 1 && (f.flags & 0x1 != 0 || f.kind == 0x3) {
                ended = Some(since.elapsed());
                break;
            }
        }
    }
    let took = ended.expect("the slow stream is still open");
    eprintln!("HTTP/2 body at 5 bytes/s: stream ended {took:?} after its head");
    assert!(took >= GRACE && took <= GRACE + SLACK, "{took:?}");
    assert_eq!(failed.0.load(Ordering::Relaxed), 1);
    assert!(settled(&handle), "the handler is freed: {:?}", handle.snapshot());
    conn.ping().expect("the connection serves on");
    handle.shutdown();
}

#[test]
fn a_streamed_response_quiet_past_the_idle_timeout_is_not_cut() {
    let handle = start(&Failed::default());
    let mut conn = TcpStream::connect(handle.local_addr()).expect("connect");
    conn.write_all(b"GET /events HTTP/1.1\r\nHost: t\r\n\r\n").expect("send");
    conn.set_read_timeout(Some(IDLE * 5)).expect("read timeout");
    let mut got = Vec::new();
    let mut buf = [0u8; 1024];
    let since = Instant::now();
    while !String::from_utf8_lossy(&got).contains("data: second") {
        match conn.read(&mut buf) {
            Ok(n @ 1..) => got.extend_from_slice(&buf[..n]),
            other => panic!(
                "the quiet stream was cut after {:?} ({other:?}): {:?}",
                since.elapsed(),
                String::from_utf8_lossy(&got)
            ),
        }
    }
    // Once the response ends, the connection is idle, and closed after the timeout.
    let idle_from = Instant::now();
    let mut rest = Vec::new();
    let _ = conn.read_to_end(&mut rest);
    let took = idle_from.elapsed();
    assert!(took <= IDLE + Duration::from_millis(500), "closed {took:?} after the stream ended");
    handle.shutdown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_streamed_http2_response_quiet_past_the_idle_timeout_is_not_cut() {
    use http_body_util::BodyExt;

    let handle = start(&Failed::default());
    let addr = handle.local_addr();
    let mut sender = hermes_test_support::client::h2(addr).await;
    let response = sender
        .send_request(hermes_test_support::client::get_request(addr, "/events"))
        .await
        .expect("the response head");
    let body = response.into_body().collect().await.expect("the whole stream, quiet part included");
    assert_eq!(body.to_bytes(), "data: first\n\ndata: second\n\n");
    tokio::task::spawn_blocking(move || handle.shutdown()).await.expect("shutdown");
}

#[test]
fn an_upgraded_connection_is_not_cut_by_the_idle_timeout() {
    let handle = start(&Failed::default());
    let mut conn = TcpStream::connect(handle.local_addr()).expect("connect");
    conn.write_all(b"GET /upgrade HTTP/1.1\r\nHost: t\r\nConnection: upgrade\r\nUpgrade: test\r\n\r\n")
        .expect("send");
    conn.set_read_timeout(Some(IDLE * 5)).expect("read timeout");
    let mut got = Vec::new();
    let mut buf = [0u8; 256];
    while let Ok(n @ 1..) = conn.read(&mut buf) {
        got.extend_from_slice(&buf[..n]);
        if got.ends_with(b"still open") {
            break;
        }
    }
    let got = String::from_utf8_lossy(&got);
    assert!(got.starts_with("HTTP/1.1 101"), "{got}");
    assert!(got.ends_with("still open"), "the upgraded connection was cut: {got:?}");
    handle.shutdown();
}
