//! The header read and idle timeouts on HTTP/2 connections (prior
//! knowledge), for `serve` and `serve_tonic` alike, with a raw client that
//! sends frames one by one: a connection with no stream open is closed at
//! the idle timeout however many PINGs it sends, as Go's HTTP/2 server
//! does; a header block left open is closed at the header read timeout; a
//! client that sends the preface and stalls is closed; a request whose
//! handler outlasts the idle timeout is answered. (Over TLS with ALPN `h2`:
//! `tls.rs`.)

use std::{
    net::{SocketAddr, TcpStream},
    time::{Duration, Instant},
};

use axum::{Router, extract::Path, routing::get};
use hermes_runtime::{Builder, ServerHandle};
use hermes_test_support::{
    ebpf,
    rawh2::{END_HEADERS, END_STREAM, GET_ROOT, RawH2, frame, get_block, kind},
};
use tonic::service::Routes;

const HEADER: Duration = Duration::from_millis(300);
const IDLE: Duration = Duration::from_millis(900);
/// What a close may take beyond its timeout on a loaded test machine.
const SLACK: Duration = Duration::from_millis(300);
/// How often the pinging clients ping.
const EVERY: Duration = Duration::from_millis(50);

fn builder() -> Builder {
    let mut b = Builder::new();
    b.workers(2).require_ebpf(ebpf::required());
    b
}

fn axum_server() -> ServerHandle {
    let app = Router::new().route("/", get(|| async { "ok" })).route(
        "/sleep/{ms}",
        get(|Path(ms): Path<u64>| async move {
            // A handler that outlasts the idle timeout, not a wait.
            tokio::time::sleep(Duration::from_millis(ms)).await;
            "slept"
        }),
    );
    hermes_tower::serve("127.0.0.1:0", app)
        .with_builder(builder())
        .header_read_timeout(Some(HEADER))
        .idle_timeout(Some(IDLE))
        .start()
        .expect("start")
}

fn tonic_server() -> ServerHandle {
    hermes_tower::serve_tonic("127.0.0.1:0", || Routes::new(tonic_health::server::health_reporter().1))
        .with_builder(builder())
        .header_read_timeout(Some(HEADER))
        .idle_timeout(Some(IDLE))
        .start()
        .expect("start")
}

fn servers() -> [(&'static str, ServerHandle); 2] {
    [("serve", axum_server()), ("serve_tonic", tonic_server())]
}

fn h2c(addr: SocketAddr) -> RawH2<TcpStream> {
    let tcp = TcpStream::connect(addr).expect("connect");
    tcp.set_read_timeout(Some(EVERY)).expect("read timeout");
    RawH2::handshake(tcp).expect("HTTP/2 handshake")
}

#[test]
fn an_http2_connection_that_only_pings_is_closed_at_the_idle_timeout() {
    for (what, handle) in servers() {
        let since = Instant::now();
        let mut conn = h2c(handle.local_addr());
        let took = conn.ping_until_closed(IDLE * 3, since).unwrap_or_else(|| {
            panic!("{what}: a connection that only pings is open {:?} after connecting", IDLE * 3)
        });
        eprintln!(
            "{what}: pinging every {EVERY:?}, closed {took:?} after connecting (idle timeout {IDLE:?})"
        );
        assert!(took >= IDLE && took <= IDLE + SLACK, "{what}: closed after {took:?}");
        handle.shutdown();
    }
}

#[test]
fn an_http2_head_left_incomplete_is_closed_at_the_header_read_timeout() {
    for (what, handle) in servers() {
        let mut conn = h2c(handle.local_addr());
        let since = Instant::now();
        // HEADERS without END_HEADERS, and no CONTINUATION after it.
        conn.send(&frame(kind::HEADERS, END_STREAM, 1, &GET_ROOT)).expect("send HEADERS");
        let took = conn
            .closed_within(IDLE * 3, since)
            .unwrap_or_else(|| panic!("{what}: the open header block is open {:?} after it began", IDLE * 3));
        eprintln!(
            "{what}: header block left open, closed {took:?} after its first byte (header timeout {HEADER:?})"
        );
        assert!(took >= HEADER && took <= HEADER + SLACK, "{what}: closed after {took:?}");
        handle.shutdown();
    }
}

#[test]
fn a_client_that_sends_the_preface_and_stalls_is_closed_at_the_idle_timeout() {
    for (what, handle) in servers() {
        let since = Instant::now();
        let tcp = TcpStream::connect(handle.local_addr()).expect("connect");
        tcp.set_read_timeout(Some(EVERY)).expect("read timeout");
        let mut conn = RawH2::new(tcp);
        conn.send(hermes_test_support::rawh2::PREFACE).expect("send the preface");
        let took = conn
            .closed_within(IDLE * 3, since)
            .unwrap_or_else(|| panic!("{what}: a preface alone is open {:?} after it", IDLE * 3));
        eprintln!("{what}: a preface and nothing more, closed {took:?} after connecting");
        assert!(took >= IDLE && took <= IDLE + SLACK, "{what}: closed after {took:?}");
        handle.shutdown();
    }
}

#[test]
fn an_http2_request_that_outlasts_the_idle_timeout_is_answered_then_pings_do_not_keep_the_connection() {
    let handle = axum_server();
    let mut conn = h2c(handle.local_addr());
    let path = format!("/sleep/{}", (IDLE * 2).as_millis());
    conn.send(&frame(kind::HEADERS, END_HEADERS | END_STREAM, 1, &get_block(&path)))
        .expect("send the request");
    // Pings while the handler runs; the response ends the stream.
    let start = Instant::now();
    let mut answered = None;
    while answered.is_none() && start.elapsed() < IDLE * 4 {
        conn.ping().expect("the connection stays open while its request is served");
        while let Ok(f) = conn.read_frame() {
            if f.stream == 1 && f.flags & END_STREAM != 0 {
                assert!(matches!(f.kind, kind::DATA | kind::HEADERS), "{f:?}");
                answered = Some(start.elapsed());
                break;
            }
        }
    }
    let answered = answered.expect("the slow request is answered");
    assert!(answered >= IDLE * 2, "answered after {answered:?}");
    // Idle from the end of the request on, whatever the pings.
    let since = Instant::now();
    let took = conn.ping_until_closed(IDLE * 3, since).expect("the connection is closed once idle");
    assert!(took <= IDLE + SLACK, "closed {took:?} after its request ended");
    handle.shutdown();
}
