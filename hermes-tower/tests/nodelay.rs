//! The one-line entry points set `TCP_NODELAY` on every accepted connection
//! (the builder's default), read on the server side: the test finds the
//! server's end of its connection among this process's descriptors.

use std::{
    net::{SocketAddr, TcpStream},
    os::fd::FromRawFd,
    time::Duration,
};

use axum::{Router, routing::get};
use hermes_runtime::ServerHandle;
use hermes_test_support::{server::two_workers as builder, wait::poll_until};

/// The server's end of the connection from `client_addr`, found among this
/// process's descriptors; `None` until the server has accepted it.
fn server_side(client_addr: SocketAddr) -> Option<TcpStream> {
    for entry in std::fs::read_dir("/proc/self/fd").expect("/proc/self/fd") {
        let Ok(entry) = entry else { continue };
        let Ok(fd) = entry.file_name().to_string_lossy().parse::<i32>() else { continue };
        let Ok(target) = std::fs::read_link(entry.path()) else { continue };
        if !target.to_string_lossy().starts_with("socket:") {
            continue;
        }
        // SAFETY: `dup` of a descriptor of this process; the duplicate is
        // owned by the stream below and closed with it, the original is
        // left alone.
        let dup = unsafe { libc::dup(fd) };
        if dup < 0 {
            continue; // closed meanwhile
        }
        // SAFETY: `dup` is a fresh descriptor that nothing else owns.
        let socket = unsafe { TcpStream::from_raw_fd(dup) };
        if socket.peer_addr().ok() == Some(client_addr) {
            return Some(socket);
        }
    }
    None
}

/// `TCP_NODELAY` of the server's end of `client`'s connection.
fn server_side_nodelay(client: &TcpStream) -> bool {
    let client_addr = client.local_addr().expect("client address");
    let nodelay = |socket: TcpStream| socket.nodelay().expect("getsockopt TCP_NODELAY");
    // The descriptor exists from `accept` on, a moment before the worker
    // sets the option: read it again until it is set or the wait ends, so
    // that only a server that never sets it fails.
    poll_until(Duration::from_secs(10), || server_side(client_addr).map(nodelay).filter(|&set| set))
        .unwrap_or_else(|| {
            nodelay(
                server_side(client_addr).unwrap_or_else(|| panic!("the server never accepted {client_addr}")),
            )
        })
}

fn check(handle: ServerHandle) {
    let addr: SocketAddr = handle.local_addr();
    for _ in 0..4 {
        let client = TcpStream::connect(addr).expect("connect");
        assert!(server_side_nodelay(&client), "TCP_NODELAY off on an accepted connection");
        assert!(!client.nodelay().expect("client option"), "the client's own end is untouched");
    }
    handle.shutdown();
}

#[test]
fn serve_sets_nodelay_on_accepted_connections() {
    let app = Router::new().route("/", get(|| async { "hello" }));
    check(hermes_tower::serve("127.0.0.1:0", app).with_builder(builder()).start().expect("start"));
}

#[test]
fn serve_tonic_sets_nodelay_on_accepted_connections() {
    let routes = || tonic::service::Routes::new(tonic_health::server::health_reporter().1);
    check(hermes_tower::serve_tonic("127.0.0.1:0", routes).with_builder(builder()).start().expect("start"));
}
