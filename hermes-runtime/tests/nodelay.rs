//! `TCP_NODELAY` on accepted streams: on by default in every mode, off when
//! the builder says so. Read on the server side, from the accepted socket.

use hermes_test_support::ebpf as support;

use std::{net::TcpStream, sync::mpsc, time::Duration};

use hermes_runtime::{Builder, HermesListener, Mode};

/// Starts a server in `mode`, connects `conns` times and returns what
/// `TCP_NODELAY` each accepted stream had, read on the server side.
fn accepted_nodelay(mode: Mode, nodelay: Option<bool>, conns: usize) -> Vec<bool> {
    let mut builder = Builder::new();
    builder.workers(2).mode(mode).bind("127.0.0.1:0".parse().expect("address"));
    if mode == Mode::Hermes {
        builder.require_ebpf(true);
    }
    if let Some(nodelay) = nodelay {
        builder.tcp_nodelay(nodelay);
    }
    let server = builder.build().expect("build the server");
    let addr = server.local_addr();
    let (tx, rx) = mpsc::channel();
    let handle = server
        .serve(move |mut listener: HermesListener| {
            let tx = tx.clone();
            async move {
                while let Some((stream, _peer)) = listener.accept_connection().await {
                    let _ = tx.send(stream.get_ref().nodelay().expect("getsockopt TCP_NODELAY"));
                }
            }
        })
        .expect("serve");
    let mut clients = Vec::new();
    let mut seen = Vec::new();
    for _ in 0..conns {
        clients.push(TcpStream::connect(addr).expect("connect"));
        seen.push(rx.recv_timeout(Duration::from_secs(10)).expect("the server accepted"));
    }
    handle.shutdown();
    seen
}

#[test]
fn ebpf_accepted_streams_have_nodelay() {
    if !support::require_bpf("ebpf_accepted_streams_have_nodelay") {
        return;
    }
    assert_eq!(accepted_nodelay(Mode::Hermes, None, 8), [true; 8]);
}

#[test]
fn kernel_hash_and_shared_listener_streams_have_nodelay() {
    assert_eq!(accepted_nodelay(Mode::KernelHash, None, 8), [true; 8]);
    assert_eq!(accepted_nodelay(Mode::SharedListener, None, 8), [true; 8]);
}

#[test]
fn nodelay_can_be_turned_off() {
    assert_eq!(accepted_nodelay(Mode::KernelHash, Some(false), 4), [false; 4]);
    assert_eq!(accepted_nodelay(Mode::SharedListener, Some(false), 4), [false; 4]);
}
