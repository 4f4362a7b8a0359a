//! The one-line axum entry, `hermes_tower::serve`, over real sockets on a
//! real Hermes server (kernel dispatch when the program loads, the kernel's
//! hash otherwise): the layer it adds feeds the table, and the stats
//! endpoint it mounts reports it.

use std::{net::SocketAddr, sync::Arc, time::Duration};

use axum::{Router, extract::State, routing::get};
use hermes_test_support::{
    client::h2,
    http::get_path,
    server::{shutdown, two_workers},
    snapshot::{in_flight, requests},
    wait::{TIMEOUT, eventually_snapshot as eventually, poll_async},
};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
    sync::Notify,
};

#[tokio::test]
async fn a_slow_request_through_serve_is_in_flight_on_its_worker_until_answered() {
    let gate = Arc::new(Notify::new());
    let app = Router::new()
        .route(
            "/slow",
            get(|State(gate): State<Arc<Notify>>| async move {
                gate.notified().await;
                "slow"
            }),
        )
        .with_state(gate.clone());
    let handle = hermes_tower::serve("127.0.0.1:0", app)
        .with_builder(two_workers())
        .with_stats()
        .start()
        .expect("start the server");
    let addr = handle.local_addr();

    let client = tokio::spawn(get_path(addr, "/slow"));
    let during = eventually(&handle, "the slow request in flight", |s| in_flight(s) == 1).await;
    assert_eq!(requests(&during), 0);
    let worker = during.workers.iter().find(|w| w.in_flight == 1).expect("a worker with the request").id;

    // The stats endpoint reports the same, and is not itself counted.
    let stats = get_path(addr, "/_hermes/stats").await;
    assert!(stats.starts_with("HTTP/1.1 200"), "{stats}");
    assert!(stats.contains("\"in_flight\":1"), "{stats}");

    gate.notify_one();
    let response = client.await.expect("client task");
    assert!(response.starts_with("HTTP/1.1 200") && response.ends_with("slow"), "{response}");

    let after = eventually(&handle, "the request finished", |s| in_flight(s) == 0 && requests(s) == 1).await;
    assert_eq!(after.workers[worker].requests, 1, "{after:?}");
    shutdown(handle).await;
}

#[tokio::test]
async fn serve_takes_over_the_address_of_a_tokio_listener() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind 127.0.0.1:0");
    let addr = listener.local_addr().expect("local address");
    let app = Router::new().route("/", get(|| async { "hello" }));
    let handle =
        hermes_tower::serve(listener, app).with_builder(two_workers()).start().expect("start the server");
    assert_eq!(handle.local_addr(), addr);

    let response = get_path(addr, "/").await;
    assert!(response.starts_with("HTTP/1.1 200") && response.ends_with("hello"), "{response}");
    let response = get_path(addr, "/_hermes/stats").await;
    assert!(response.starts_with("HTTP/1.1 404"), "stats are off by default: {response}");
    eventually(&handle, "the request counted", |s| requests(s) == 2).await;
    shutdown(handle).await;
}

#[tokio::test]
async fn without_layer_the_table_counts_no_requests() {
    let app = Router::new().route("/", get(|| async { "hello" }));
    let handle = hermes_tower::serve("127.0.0.1:0", app)
        .with_builder(two_workers())
        .without_layer()
        .start()
        .expect("start the server");
    let response = get_path(handle.local_addr(), "/").await;
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    eventually(&handle, "the connection closed", |s| s.workers.iter().all(|w| w.open_connections == 0)).await;
    assert_eq!(requests(&handle.snapshot()), 0);
    shutdown(handle).await;
}

#[test]
fn an_unresolvable_address_is_reported() {
    let app = Router::new();
    let e = hermes_tower::serve("no port here", app).start().expect_err("no address");
    assert_eq!(e.kind(), std::io::ErrorKind::InvalidInput, "{e}");
}

#[tokio::test]
async fn connect_info_gives_handlers_the_clients_address() {
    use axum::extract::ConnectInfo;

    let app = Router::new()
        .route("/peer", get(|ConnectInfo(peer): ConnectInfo<SocketAddr>| async move { peer.to_string() }));
    let handle = hermes_tower::serve("127.0.0.1:0", app.into_make_service_with_connect_info::<SocketAddr>())
        .with_builder(two_workers())
        .tcp_nodelay(true)
        .start()
        .expect("start the server");
    let addr = handle.local_addr();
    // The client's own address, bound before connecting, is what the
    // handler must see.
    let socket = tokio::net::TcpSocket::new_v4().expect("socket");
    socket.bind("127.0.0.1:0".parse().unwrap()).expect("bind the client");
    let client_addr = socket.local_addr().expect("client address");
    let mut conn = socket.connect(addr).await.expect("connect");
    let request = format!("GET /peer HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    conn.write_all(request.as_bytes()).await.expect("send request");
    let mut response = String::new();
    conn.read_to_string(&mut response).await.expect("read response");
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    assert!(response.ends_with(&client_addr.to_string()), "expected {client_addr} in {response}");
    shutdown(handle).await;
}

#[tokio::test]
async fn a_custom_shutdown_future_drains_the_server_and_resolves_serve() {
    use std::future::IntoFuture;

    let (entered, gate) = (Arc::new(Notify::new()), Arc::new(Notify::new()));
    let app = Router::new()
        .route(
            "/slow",
            get(|State((entered, gate)): State<(Arc<Notify>, Arc<Notify>)>| async move {
                entered.notify_one();
                gate.notified().await;
                "slow"
            }),
        )
        .with_state((entered.clone(), gate.clone()));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind 127.0.0.1:0");
    let addr = listener.local_addr().expect("local address");
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let future: hermes_tower::serve::ServeFuture = hermes_tower::serve(listener, app)
        .with_builder(two_workers())
        .with_graceful_shutdown(async move {
            let _ = stopped.await;
        })
        .into_future();
    let server = tokio::spawn(future);

    // A slow request in flight when the signal comes is answered first.
    let mut conn =
        poll_async(TIMEOUT, Duration::from_millis(5), async || TcpStream::connect(addr).await.ok())
            .await
            .expect("the server never listened");
    conn.write_all(format!("GET /slow HTTP/1.1\r\nHost: {addr}\r\n\r\n").as_bytes()).await.expect("send");
    // Wait until the request is being served before signalling.
    tokio::time::timeout(Duration::from_secs(5), entered.notified())
        .await
        .expect("the slow request reaches its handler");
    stop.send(()).expect("the server waits for the signal");
    // Time for a server that resolves by mistake to do so: what is checked
    // is that nothing happens, there is no state to wait for.
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(!server.is_finished(), "serve resolved while a request was in flight");
    let closed = poll_async(TIMEOUT, Duration::from_millis(5), async || {
        TcpStream::connect(addr).await.is_err().then_some(())
    });
    assert!(closed.await.is_some(), "the listeners close on the signal");

    gate.notify_one();
    let mut response = vec![0u8; 1024];
    let n = conn.read(&mut response).await.expect("read the answer");
    let response = String::from_utf8_lossy(&response[..n]).to_string();
    assert!(response.starts_with("HTTP/1.1 200") && response.ends_with("slow"), "{response}");
    // Once answered, the keep-alive connection is closed by the drain.
    let result = tokio::time::timeout(Duration::from_secs(10), server)
        .await
        .expect("serve resolves after the drain")
        .expect("server task");
    result.expect("the server stopped cleanly");
}

#[tokio::test]
async fn serve_speaks_http2_with_prior_knowledge() {
    use http_body_util::{BodyExt, Empty};
    use hyper::body::Bytes;

    let app = Router::new().route("/", get(|| async { "over h2" }));
    let handle = hermes_tower::serve("127.0.0.1:0", app)
        .with_builder(two_workers())
        .start()
        .expect("start the server");
    let mut sender = h2(handle.local_addr()).await;
    let request = hyper::Request::get("/").body(Empty::<Bytes>::new()).expect("request");
    let response = sender.send_request(request).await.expect("h2 request");
    assert_eq!(response.version(), hyper::Version::HTTP_2);
    assert_eq!(response.status(), 200);
    let body = response.into_body().collect().await.expect("body").to_bytes();
    assert_eq!(&body[..], b"over h2");
    eventually(&handle, "the request counted", |s| requests(s) == 1).await;
    drop(sender);
    shutdown(handle).await;
}

/// `serve(..)` in a `select!` that another branch wins: the dropped future
/// stops the server, and the port refuses connections, as with `axum::serve`.
#[tokio::test]
async fn dropping_the_serve_future_stops_the_server() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let app = Router::new().route("/", get(|| async { "ok" }));
    let serving = hermes_tower::serve(listener, app).with_builder(two_workers());
    let answered = tokio::select! {
        result = serving => panic!("the server stopped by itself: {result:?}"),
        response = async {
            // Up once it answers.
            poll_async(Duration::from_secs(10), Duration::from_millis(20), async || {
                tokio::time::timeout(Duration::from_secs(1), tokio::spawn(get_path(addr, "/"))).await.ok()?.ok()
            })
            .await
            .expect("the server never answered")
        } => response,
    };
    assert!(answered.ends_with("ok"), "served before the drop: {answered}");

    let refused = poll_async(TIMEOUT, Duration::from_millis(20), async || {
        TcpStream::connect(addr).await.is_err().then_some(())
    });
    assert!(refused.await.is_some(), "{addr} still accepts after the future was dropped");
}
