//! The connection limits of `hermes_tower::serve` and `serve_tonic`, over
//! real loopback sockets (HTTP/1 here; HTTP/2 in `h2_timeouts.rs`): a
//! request head that does not complete within the header read timeout, and
//! a keep-alive connection idle for the idle timeout, are closed; a request
//! whose handler outlasts both is answered; connections beyond the
//! per-worker limit are closed at once and counted, while the others are
//! served.

use std::{
    io::{ErrorKind, Read, Write},
    net::{SocketAddr, TcpStream},
    time::{Duration, Instant},
};

use axum::{Router, extract::Path, routing::get};
use hermes_runtime::{Builder, ServerHandle};
use hermes_test_support::{
    ebpf,
    http::{get as http_get, read_response, send},
    snapshot::open_total,
    wait::poll_until,
};

fn app() -> Router {
    Router::new().route("/", get(|| async { "ok" })).route(
        "/sleep/{ms}",
        get(|Path(ms): Path<u64>| async move {
            // A handler that outlasts the timeouts under test, not a wait.
            tokio::time::sleep(Duration::from_millis(ms)).await;
            "slept"
        }),
    )
}

fn builder(workers: usize) -> Builder {
    let mut b = Builder::new();
    b.workers(workers).require_ebpf(ebpf::required());
    b
}

/// `app` on a server of `b` with these header read and idle timeouts.
fn start(b: Builder, header: Option<Duration>, idle: Option<Duration>) -> ServerHandle {
    hermes_tower::serve("127.0.0.1:0", app())
        .with_builder(b)
        .header_read_timeout(header)
        .idle_timeout(idle)
        .start()
        .expect("start")
}

const T300: Option<Duration> = Some(Duration::from_millis(300));

/// How long until the server closes `s` (EOF or reset), reading whatever it
/// sends; `None` if it is still open after `limit`.
fn closed_within(s: &mut TcpStream, limit: Duration) -> Option<Duration> {
    let start = Instant::now();
    s.set_read_timeout(Some(Duration::from_millis(50))).expect("read timeout");
    let mut buf = [0u8; 1024];
    while start.elapsed() < limit {
        match s.read(&mut buf) {
            Ok(0) => return Some(start.elapsed()),
            Ok(_) => {}
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
            Err(_) => return Some(start.elapsed()),
        }
    }
    None
}

#[test]
fn a_slow_partial_head_is_closed_after_the_header_read_timeout() {
    let handle = start(builder(2), T300, None);
    let addr = handle.local_addr();

    let mut slow = TcpStream::connect(addr).expect("connect");
    slow.write_all(b"GET / HTTP/1.1\r\nHost: t\r\n").expect("partial head");
    // A byte every 100 ms keeps the connection busy but does not extend
    // the header read timeout, which runs from the head's first byte.
    let mut trickle = slow.try_clone().expect("clone");
    let trickler = std::thread::spawn(move || {
        for _ in 0..30 {
            std::thread::sleep(Duration::from_millis(100));
            if trickle.write_all(b"X").is_err() {
                return;
            }
        }
    });
    let took =
        closed_within(&mut slow, Duration::from_secs(3)).expect("the partial head is still open after 3 s");
    assert!(took >= Duration::from_millis(250), "closed before the timeout: {took:?}");
    trickler.join().expect("trickler");
    // The server serves on.
    let ok = http_get(addr, "/").expect("GET / after the slow head");
    assert_eq!(ok.status, 200);
    assert!(
        poll_until(Duration::from_secs(5), || (open_total(&handle.snapshot()) == 0).then_some(())).is_some()
    );
    handle.shutdown();
}

#[test]
fn an_idle_keep_alive_connection_is_closed_and_a_long_request_is_not() {
    let handle = start(builder(2), T300, T300);
    let addr = handle.local_addr();

    // A request whose handler outlasts both timeouts is answered, and the
    // connection then stays usable until it has been idle for the timeout.
    let mut conn = TcpStream::connect(addr).expect("connect");
    conn.set_read_timeout(Some(Duration::from_secs(5))).expect("read timeout");
    send(&mut conn, "/sleep/900", true).expect("send");
    let resp = read_response(&mut conn).expect("the long request is answered");
    assert_eq!((resp.status, resp.body.as_str()), (200, "slept"));
    send(&mut conn, "/", true).expect("send on the kept-alive connection");
    assert_eq!(read_response(&mut conn).expect("second response").status, 200);
    let took = closed_within(&mut conn, Duration::from_secs(3))
        .expect("the idle connection is still open after 3 s");
    assert!(took >= Duration::from_millis(250), "closed before the idle timeout: {took:?}");

    // A connection that never sends a byte is idle too.
    let mut silent = TcpStream::connect(addr).expect("connect");
    closed_within(&mut silent, Duration::from_secs(3))
        .expect("the silent connection is still open after 3 s");
    assert!(
        poll_until(Duration::from_secs(5), || (open_total(&handle.snapshot()) == 0).then_some(())).is_some()
    );
    handle.shutdown();
}

#[test]
fn a_connection_left_idle_after_a_slow_request_is_closed_at_the_idle_timeout() {
    let handle = start(builder(2), T300, T300);
    let mut conn = TcpStream::connect(handle.local_addr()).expect("connect");
    conn.set_read_timeout(Some(Duration::from_secs(5))).expect("read timeout");
    send(&mut conn, "/sleep/600", true).expect("send");
    assert_eq!(read_response(&mut conn).expect("the slow request is answered").status, 200);
    // Nothing more is sent: the server reads nothing until it closes.
    let took = closed_within(&mut conn, Duration::from_secs(3))
        .expect("the connection left idle after its slow request is still open after 3 s");
    assert!(
        took >= Duration::from_millis(250) && took <= Duration::from_millis(800),
        "closed after {took:?}"
    );
    handle.shutdown();
}

#[test]
fn connections_beyond_the_per_worker_limit_are_closed_and_counted() {
    let mut b = builder(1);
    b.max_connections_per_worker(Some(3));
    let handle = start(b, Some(hermes_tower::serve::DEFAULT_HEADER_READ_TIMEOUT), None);
    let addr: SocketAddr = handle.local_addr();

    let mut held: Vec<TcpStream> = (0..3).map(|_| TcpStream::connect(addr).expect("connect")).collect();
    assert!(
        poll_until(Duration::from_secs(5), || (handle.snapshot().workers[0].open_connections == 3)
            .then_some(()))
        .is_some(),
        "three connections open: {:?}",
        handle.snapshot()
    );
    let mut over = TcpStream::connect(addr).expect("the kernel completes the handshake");
    let _ = send(&mut over, "/", false);
    let took = closed_within(&mut over, Duration::from_secs(2)).expect("the connection over the limit waits");
    assert!(took < Duration::from_secs(1), "{took:?}");
    assert_eq!(handle.snapshot().workers[0].refused, 1, "{:?}", handle.snapshot());

    // The held connections are served all along.
    for conn in &mut held {
        conn.set_read_timeout(Some(Duration::from_secs(5))).expect("read timeout");
        send(conn, "/", true).expect("send");
        assert_eq!(read_response(conn).expect("a held connection is served").status, 200);
    }
    // Room again once one closes.
    drop(held.pop());
    assert!(
        poll_until(Duration::from_secs(5), || (handle.snapshot().workers[0].open_connections == 2)
            .then_some(()))
        .is_some()
    );
    assert_eq!(http_get(addr, "/").expect("GET / below the limit").status, 200);
    assert_eq!(handle.snapshot().workers[0].refused, 1);
    drop(held);
    handle.shutdown();
}

/// `serve_tonic` applies the timeouts to its connections as `serve` does: a
/// client that connects and sends nothing, part of a preface or part of a
/// head is closed; a gRPC channel with no call for the idle timeout is
/// closed too, and its next call goes over a new connection.
#[test]
fn serve_tonic_closes_unfinished_and_idle_connections_and_a_channel_reconnects() {
    use tonic::{service::Routes, transport::Channel};
    use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};

    let handle =
        hermes_tower::serve_tonic("127.0.0.1:0", || Routes::new(tonic_health::server::health_reporter().1))
            .with_builder(builder(2))
            .header_read_timeout(T300)
            .idle_timeout(T300)
            // HTTP/1 too (gRPC-Web), whose heads hyper would otherwise wait
            // 30 s for.
            .with_server(tonic::transport::Server::builder().accept_http1(true))
            .start()
            .expect("start");
    let addr = handle.local_addr();
    // A runtime that runs all along, as a client's does: its connection task
    // sees the server close the idle channel's connection.
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("client runtime");
    let mut health = runtime.block_on(async {
        let channel =
            Channel::from_shared(format!("http://{addr}")).expect("URI").connect().await.expect("connect");
        let mut health = HealthClient::new(channel);
        health.check(HealthCheckRequest::default()).await.expect("first call");
        health
    });

    let mut silent = TcpStream::connect(addr).expect("connect");
    let mut preface = TcpStream::connect(addr).expect("connect");
    // The preface up to and past its own empty line, short of its 24 bytes.
    preface.write_all(b"PRI * HTTP/2.0\r\n\r\nSM").expect("partial preface");
    let mut head = TcpStream::connect(addr).expect("connect");
    head.write_all(b"POST /grpc.health.v1.Health/Check HTTP/1.1\r\nHost: t\r\n").expect("partial head");
    for (what, conn) in
        [("silent", &mut silent), ("partial preface", &mut preface), ("partial head", &mut head)]
    {
        let took = closed_within(conn, Duration::from_secs(3))
            .unwrap_or_else(|| panic!("the {what} connection is still open after 3 s"));
        assert!(took < Duration::from_secs(2), "{what}: {took:?}");
    }
    // The channel's connection, idle since its call, is closed too.
    assert!(
        poll_until(Duration::from_secs(5), || (open_total(&handle.snapshot()) == 0).then_some(())).is_some(),
        "the idle channel's connection stays open: {:?}",
        handle.snapshot()
    );
    // The channel connects again for its next call: a fifth connection.
    runtime.block_on(async {
        health.check(HealthCheckRequest::default()).await.expect("call after the idle close");
    });
    let accepted: u64 = handle.snapshot().workers.iter().map(|w| w.accepted).sum();
    assert_eq!(accepted, 5, "{:?}", handle.snapshot());
    drop(health);
    drop(runtime);
    handle.shutdown();
}
