//! `hermes_tower::serve(..).also_bind(..)`: one application on several
//! addresses (two ports on 127.0.0.1, and ::1), each address with its own
//! server, `SO_REUSEPORT` group and dispatch program, over real sockets.

use std::{
    future::IntoFuture,
    net::{SocketAddr, TcpListener},
    time::Duration,
};

use axum::{Router, routing::get};
use hermes_runtime::{Builder, Mode};
use hermes_test_support::{ebpf, http::get as http_get, wait::poll_until};

fn builder() -> Builder {
    let mut b = Builder::new();
    b.workers(2).require_ebpf(ebpf::required());
    b
}

fn app() -> Router {
    Router::new().route("/", get(|| async { "ok" }))
}

/// A free port on `ip` (bound and released).
fn free(ip: &str) -> SocketAddr {
    TcpListener::bind((ip, 0)).expect("bind").local_addr().expect("addr")
}

fn has_ipv6_loopback() -> bool {
    TcpListener::bind("[::1]:0").is_ok()
}

#[test]
fn ebpf_each_address_has_its_own_group_and_program() {
    let mut serve =
        hermes_tower::serve("127.0.0.1:0", app()).with_builder(builder()).also_bind("127.0.0.1:0");
    let v6 = has_ipv6_loopback();
    if v6 {
        serve = serve.also_bind("[::1]:0");
    } else {
        eprintln!("no IPv6 loopback on this machine: testing two IPv4 ports only");
    }
    let handles = serve.start_all().expect("start every address");
    assert_eq!(handles.len(), if v6 { 3 } else { 2 });
    assert_ne!(handles[0].local_addr().port(), handles[1].local_addr().port());
    if v6 {
        assert!(handles[2].local_addr().is_ipv6());
    }
    for h in &handles {
        if ebpf::required() {
            assert_eq!(h.mode(), Mode::Hermes, "{}", h.local_addr());
        }
        for _ in 0..10 {
            let r = http_get(h.local_addr(), "/").expect("GET /");
            assert_eq!((r.status, r.body.as_str()), (200, "ok"));
        }
    }
    // Each server accepted its own address's connections, and in Hermes
    // mode its own program placed them: the groups are separate.
    for h in &handles {
        let s = poll_until(Duration::from_secs(5), || {
            let s = h.snapshot();
            (s.workers.iter().map(|w| w.accepted).sum::<u64>() == 10).then_some(s)
        })
        .unwrap_or_else(|| panic!("{}: {:?}", h.local_addr(), h.snapshot()));
        if h.mode() == Mode::Hermes {
            let placed: u64 = s.workers.iter().map(|w| w.dispatched).sum::<u64>()
                + s.fallbacks.too_few
                + s.fallbacks.stale
                + s.fallbacks.no_socket;
            assert_eq!(placed, 10, "{}: its program saw its 10 connections only: {s:?}", h.local_addr());
        }
    }
    for h in handles {
        h.shutdown();
    }
}

#[test]
fn start_refuses_several_addresses() {
    let e =
        hermes_tower::serve("127.0.0.1:0", app()).also_bind("127.0.0.1:0").start().expect_err("one handle");
    assert_eq!(e.kind(), std::io::ErrorKind::InvalidInput);
    assert!(e.to_string().contains("start_all"), "{e}");
}

#[tokio::test]
async fn awaiting_serves_every_address_and_stops_them_together() {
    let (a, b) = (free("127.0.0.1"), free("127.0.0.1"));
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(
        hermes_tower::serve(a, app())
            .with_builder(builder())
            .also_bind(b)
            .with_graceful_shutdown(async move {
                let _ = stopped.await;
            })
            .into_future(),
    );
    let answered = tokio::task::spawn_blocking(move || {
        [a, b].map(|addr| poll_until(Duration::from_secs(10), || http_get(addr, "/").ok()).map(|r| r.status))
    })
    .await
    .unwrap();
    assert_eq!(answered, [Some(200), Some(200)]);
    stop.send(()).unwrap();
    tokio::time::timeout(Duration::from_secs(10), server)
        .await
        .expect("serve resolves after the shutdown future")
        .unwrap()
        .expect("served");
    for addr in [a, b] {
        assert!(std::net::TcpStream::connect(addr).is_err(), "{addr} still listens");
    }
}
