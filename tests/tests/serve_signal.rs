//! The one line itself: `hermes_tower::serve(listener, app).await` serves
//! until `SIGTERM`, then drains the workers and resolves. Its own test
//! binary, since the signal goes to the whole process.

use std::time::Duration;

use axum::{Router, routing::get};
use hermes_test_support::{
    http::get_path,
    server::two_workers,
    wait::{TIMEOUT, poll_async},
};
use tokio::net::TcpStream;

#[tokio::test]
async fn the_one_line_serves_until_sigterm_then_resolves() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind 127.0.0.1:0");
    let addr = listener.local_addr().expect("local address");
    let app = Router::new().route("/", get(|| async { "hello" }));
    let mut builder = two_workers();
    builder.drain_timeout(Duration::from_secs(2));
    let server = tokio::spawn(async move { hermes_tower::serve(listener, app).with_builder(builder).await });

    // Once the server answers, its signal handlers are installed (they are
    // installed in the same poll that starts the workers).
    poll_async(TIMEOUT, Duration::from_millis(5), async || TcpStream::connect(addr).await.ok())
        .await
        .expect("the server never answered");
    let response = get_path(addr, "/").await;
    assert!(response.starts_with("HTTP/1.1 200") && response.ends_with("hello"), "{response}");
    assert!(!server.is_finished());

    // SAFETY: `kill` on our own pid with a signal the server handles.
    assert_eq!(unsafe { libc::kill(libc::getpid(), libc::SIGTERM) }, 0);
    let result = tokio::time::timeout(Duration::from_secs(10), server)
        .await
        .expect("the server stops within 10 s of SIGTERM")
        .expect("server task");
    result.expect("the server stopped cleanly");
    assert!(TcpStream::connect(addr).await.is_err(), "nothing listens after the shutdown");
}
