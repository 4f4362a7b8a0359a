//! `hermes_tower::serve_tonic` with a configured `tonic::transport::Server`,
//! over real sockets on a real Hermes server: the server's settings and
//! layers take effect on every worker, the Hermes layer still counts the
//! calls, and a shutdown future of the application's own stops it.

use std::{
    future::IntoFuture,
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use hermes_test_support::{
    server::{shutdown, two_workers},
    snapshot::{in_flight, requests},
    wait::{TIMEOUT, eventually, eventually_snapshot, poll_async},
};
use tokio::sync::Notify;
use tonic::{Code, service::Routes, transport::Channel};
use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};
use tower::util::MapFutureLayer;

/// Connects once the server listens (a spawned `serve_tonic` starts its
/// workers on its first poll).
async fn client(addr: std::net::SocketAddr) -> HealthClient<Channel> {
    let mut last = None;
    let channel = poll_async(TIMEOUT, Duration::from_millis(5), async || {
        Channel::from_shared(format!("http://{addr}"))
            .expect("URI")
            .connect()
            .await
            .map_err(|e| last = Some(e))
            .ok()
    })
    .await;
    HealthClient::new(channel.unwrap_or_else(|| panic!("the server never listened: {last:?}")))
}

#[tokio::test]
async fn a_configured_tonic_server_times_out_slow_calls_and_a_shutdown_future_stops_it() {
    let gate = Arc::new(Notify::new());
    let (held, entered) = (gate.clone(), Arc::new(AtomicUsize::new(0)));
    let counted = entered.clone();
    // A layer of the application's own, holding each call until the gate
    // opens: a slow call. It counts the calls it holds.
    let slow = MapFutureLayer::new(move |call| {
        let gate = held.clone();
        // Relaxed: a lone counter read by the test.
        counted.fetch_add(1, Ordering::Relaxed);
        async move {
            gate.notified().await;
            call.await
        }
    });
    let server = tonic::transport::Server::builder().timeout(Duration::from_millis(200)).layer(slow);
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("address");
    let serving = tokio::spawn(
        hermes_tower::serve_tonic(listener, || Routes::new(tonic_health::server::health_reporter().1))
            .with_builder(two_workers())
            .with_server(server)
            .with_graceful_shutdown(async move {
                let _ = stopped.await;
            })
            .into_future(),
    );

    let mut health = client(addr).await;
    // The server's timeout answers the held call.
    let started = tokio::time::Instant::now();
    let status = health.check(HealthCheckRequest { service: String::new() }).await.expect_err("timed out");
    assert_eq!(status.code(), Code::Cancelled, "{status:?}");
    assert!(status.message().contains("Timeout"), "{status:?}");
    assert!(started.elapsed() >= Duration::from_millis(200));

    // Within the timeout, the call goes through the layer and is answered.
    let call = tokio::spawn(async move { health.check(HealthCheckRequest { service: String::new() }).await });
    eventually("the second call held by the layer", || entered.load(Ordering::Relaxed) == 2).await;
    gate.notify_one();
    call.await.expect("client task").expect("health check");

    stop.send(()).expect("the server waits for the signal");
    tokio::time::timeout(Duration::from_secs(10), serving)
        .await
        .expect("serve_tonic resolves after the shutdown future")
        .expect("server task")
        .expect("stopped cleanly");
}

#[tokio::test]
async fn serve_tonic_counts_calls_in_flight_behind_a_configured_server() {
    let gate = Arc::new(Notify::new());
    let held = gate.clone();
    let slow = MapFutureLayer::new(move |call| {
        let gate = held.clone();
        async move {
            gate.notified().await;
            call.await
        }
    });
    let server = tonic::transport::Server::builder().concurrency_limit_per_connection(8).layer(slow);
    let handle =
        hermes_tower::serve_tonic("127.0.0.1:0", || Routes::new(tonic_health::server::health_reporter().1))
            .with_builder(two_workers())
            .with_server(server)
            .tcp_nodelay(true)
            .start()
            .expect("start");
    let mut health = client(handle.local_addr()).await;
    let call = tokio::spawn(async move { health.check(HealthCheckRequest { service: String::new() }).await });
    // The application's layer wraps the Hermes layer's response future: the
    // held call is in flight on one worker until answered.
    eventually_snapshot(&handle, "the held call in flight", |s| in_flight(s) == 1).await;
    assert_eq!(requests(&handle.snapshot()), 0);
    gate.notify_one();
    call.await.expect("client task").expect("health check");
    eventually_snapshot(&handle, "the call counted", |s| requests(s) == 1).await;
    shutdown(handle).await;
}

#[tokio::test]
async fn max_connection_age_makes_grpc_channels_reconnect() {
    let handle =
        hermes_tower::serve_tonic("127.0.0.1:0", || Routes::new(tonic_health::server::health_reporter().1))
            .with_builder(two_workers())
            .max_connection_age(Some(Duration::from_millis(200)))
            .start()
            .expect("start");
    let mut health = client(handle.local_addr()).await;
    // One channel, calls one after another for over a second: tonic sends
    // each connection a GOAWAY at 200 ms and the channel connects again.
    let until = tokio::time::Instant::now() + Duration::from_millis(1200);
    let (mut answered, mut cancelled) = (0u64, 0u64);
    while tokio::time::Instant::now() < until {
        match health.check(HealthCheckRequest { service: String::new() }).await {
            Ok(_) => answered += 1,
            // A call the client hands to a connection as its GOAWAY arrives
            // is cancelled by the client before it is sent (hyper's
            // "connection closed"); tonic's own server with its own
            // `max_connection_age` does the same, about as often, when
            // client and server run on their own threads. It never reached
            // the server, so it is safe to retry; it happens at most once per
            // GOAWAY for calls made one at a time.
            Err(status) => {
                assert_eq!(status.code(), Code::Cancelled, "{status:?}");
                cancelled += 1;
            }
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let accepted: u64 = handle.snapshot().workers.iter().map(|w| w.accepted).sum();
    assert!(
        accepted >= 3,
        "{answered} calls over 1.2 s came on {accepted} connection(s): {:?}",
        handle.snapshot()
    );
    assert!(cancelled < accepted, "{cancelled} calls cancelled over {accepted} connections");
    assert!(answered >= 20, "{answered} answered, {cancelled} cancelled");
    drop(health);
    tokio::task::spawn_blocking(move || handle.shutdown()).await.expect("shutdown");
}

/// A gRPC call over HTTP/1 (the server accepts it) on `conn`: whether the
/// response asks the client to close the connection.
async fn asks_to_close(conn: &mut hermes_test_support::client::H1, addr: std::net::SocketAddr) -> bool {
    conn.ready().await.expect("the connection is open");
    let request = http::Request::post(format!("http://{addr}/grpc.health.v1.Health/Check"))
        .header("content-type", "application/grpc")
        .body(http_body_util::Empty::new())
        .expect("request");
    let response = conn.send_request(request).await.expect("response");
    assert_eq!(response.status(), 200, "{response:?}");
    response.headers().get(http::header::CONNECTION).is_some_and(|v| v == "close")
}

#[tokio::test]
async fn each_connection_counts_its_own_requests_toward_the_limit() {
    use hermes_test_support::client::h1;

    let mut builder = hermes_runtime::Builder::new();
    // One worker: every connection is that worker's.
    builder.workers(1);
    let handle =
        hermes_tower::serve_tonic("127.0.0.1:0", || Routes::new(tonic_health::server::health_reporter().1))
            .with_builder(builder)
            .with_server(tonic::transport::Server::builder().accept_http1(true))
            .max_requests_per_connection(Some(3))
            .start()
            .expect("start");
    let addr = handle.local_addr();
    let mut first = h1(addr).await;
    let mut second = h1(addr).await;
    assert!(!asks_to_close(&mut second, addr).await, "a connection's first request");
    let mut asked = Vec::new();
    for _ in 0..3 {
        asked.push(asks_to_close(&mut first, addr).await);
    }
    assert_eq!(asked, [false, false, true], "the first connection is recycled at its third request");
    // The other connection of the same worker has served one request: it
    // is not recycled because the first one reached the limit.
    assert!(!asks_to_close(&mut second, addr).await, "the second connection's second request");
    let mut fresh = h1(addr).await;
    assert!(!asks_to_close(&mut fresh, addr).await, "a fresh connection's first request");
    drop((first, second, fresh));
    shutdown(handle).await;
}
