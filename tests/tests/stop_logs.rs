//! What a stop says: a request still in flight when the drain timeout
//! passes is cut, and its worker's stop is logged at WARN with how much it
//! cuts, while the idle worker's stop is logged at INFO. Its own test
//! binary, since the log subscriber is process-wide.

use std::time::Duration;

use axum::{Router, routing::get};
use hermes_test_support::{
    server::{shutdown, two_workers},
    snapshot::in_flight,
    wait::eventually_snapshot,
};
use tokio::io::AsyncWriteExt;

#[tokio::test]
async fn a_stop_that_cuts_a_request_warns_with_how_much_and_an_idle_worker_stops_at_info() {
    let path = std::env::temp_dir().join(format!("hermes-stop-logs-{}.log", std::process::id()));
    let file = std::fs::File::create(&path).expect("create the log file");
    tracing_subscriber::fmt()
        .with_ansi(false)
        .with_max_level(tracing_subscriber::filter::LevelFilter::INFO)
        .with_writer(file)
        .init();
    let app = Router::new().route(
        "/sleep",
        get(|| async {
            tokio::time::sleep(Duration::from_secs(30)).await;
            "slept"
        }),
    );
    let mut builder = two_workers();
    builder.drain_timeout(Duration::from_millis(300));
    let handle = hermes_tower::serve("127.0.0.1:0", app).with_builder(builder).start().expect("start");

    let mut client = tokio::net::TcpStream::connect(handle.local_addr()).await.expect("connect");
    client.write_all(b"GET /sleep HTTP/1.1\r\nHost: test\r\n\r\n").await.expect("send");
    let snapshot = eventually_snapshot(&handle, "the request in flight", |s| in_flight(s) == 1).await;
    let busy = snapshot.workers.iter().find(|w| w.in_flight == 1).expect("its worker").id;
    shutdown(handle).await;

    let text = std::fs::read_to_string(&path).expect("read the log");
    let _ = std::fs::remove_file(&path);
    let of = |worker: usize| move |l: &&str| l.contains(&format!("worker={worker}"));
    let warned: Vec<&str> = text.lines().filter(|l| l.contains(" WARN ")).collect();
    assert_eq!(warned.len(), 1, "one warning, for the worker whose request is cut:\n{text}");
    let warning = warned[0];
    assert!(
        warning.contains("cutting it")
            && of(busy)(&warning)
            && warning.contains("requests=1")
            && warning.contains("connections=1"),
        "{text}"
    );
    let idle = 1 - busy;
    assert!(
        text.lines().filter(of(idle)).any(|l| l.contains(" INFO ") && l.contains("worker stopped")),
        "the idle worker's stop at INFO:\n{text}"
    );
    drop(client);
}
