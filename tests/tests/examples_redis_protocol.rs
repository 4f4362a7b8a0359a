//! The Redis-protocol example's server on a real Hermes server, over real
//! sockets: pipelining, errors, the per-command load guard, and Debian's
//! `redis-benchmark` pipelining against it.

use std::{
    io::{Read, Write},
    net::{Shutdown, TcpStream},
    process::Command,
    time::Duration,
};

use hermes_examples::resp::{self, Store};
use hermes_runtime::{Builder, HermesListener, ServerHandle, Snapshot};
use hermes_test_support::wait::eventually_snapshot_blocking;

fn start(workers: usize) -> (ServerHandle, std::net::SocketAddr) {
    let server = Builder::new()
        .workers(workers)
        .bind("127.0.0.1:0".parse().expect("address"))
        .build()
        .expect("build the server");
    let addr = server.local_addr();
    let store = Store::default();
    let handle =
        server.serve(move |listener: HermesListener| resp::serve(listener, store.clone())).expect("serve");
    (handle, addr)
}

fn connect(addr: std::net::SocketAddr) -> TcpStream {
    let stream = TcpStream::connect(addr).expect("connect");
    stream.set_read_timeout(Some(Duration::from_secs(10))).expect("timeout");
    stream
}

/// Reads until `expected` bytes have arrived (or the peer closes).
fn read_exactly(stream: &mut TcpStream, expected: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(expected);
    let mut buf = [0; 64 << 10];
    while out.len() < expected {
        match stream.read(&mut buf).expect("read") {
            0 => break,
            n => out.extend_from_slice(&buf[..n]),
        }
    }
    out
}

fn command(args: &[&str]) -> Vec<u8> {
    let mut out = format!("*{}\r\n", args.len()).into_bytes();
    for a in args {
        out.extend_from_slice(format!("${}\r\n{a}\r\n", a.len()).as_bytes());
    }
    out
}

fn wait_for(handle: &ServerHandle, what: &str, cond: impl Fn(&Snapshot) -> bool) -> Snapshot {
    eventually_snapshot_blocking(handle, Duration::from_secs(10), what, cond)
}

fn totals(s: &Snapshot) -> (u32, u64, u32) {
    s.workers.iter().fold((0, 0, 0), |(f, r, o), w| (f + w.in_flight, r + w.requests, o + w.open_connections))
}

#[test]
fn a_thousand_pipelined_commands_in_one_write_come_back_in_order() {
    let (handle, addr) = start(2);
    let mut client = connect(addr);
    let mut batch = Vec::new();
    let mut expected = Vec::new();
    for i in 0..250 {
        let (key, value) = (format!("key:{i}"), format!("value {i}"));
        batch.extend(command(&["SET", &key, &value]));
        expected.extend_from_slice(b"+OK\r\n");
        batch.extend(command(&["GET", &key]));
        expected.extend(format!("${}\r\n{value}\r\n", value.len()).into_bytes());
        batch.extend(command(&["INCR", "counter"]));
        expected.extend(format!(":{}\r\n", i + 1).into_bytes());
        batch.extend(if i % 2 == 0 { b"PING\r\n".to_vec() } else { command(&["DEL", &key]) });
        expected.extend_from_slice(if i % 2 == 0 { b"+PONG\r\n" } else { b":1\r\n" });
    }
    client.write_all(&batch).expect("one write of 1000 commands");
    let replies = read_exactly(&mut client, expected.len());
    assert_eq!(String::from_utf8_lossy(&replies), String::from_utf8_lossy(&expected));
    // Every command counted as one request on the connection's worker.
    let s = wait_for(&handle, "1000 requests", |s| totals(s).1 == 1000);
    assert_eq!(totals(&s).0, 0, "{s:?}");
    handle.shutdown();
}

#[test]
fn unknown_commands_and_non_commands_get_errors_and_keep_the_connection() {
    let (handle, addr) = start(1);
    let mut client = connect(addr);
    client.write_all(&command(&["FLUSHALL"])).unwrap();
    client.write_all(&command(&["GET"])).unwrap();
    client.write_all(b"*2\r\n:1\r\n$1\r\nx\r\n").unwrap(); // well-formed, not a command
    client.write_all(&command(&["PING"])).unwrap();
    let expected = "-ERR unknown command 'FLUSHALL'\r\n\
                    -ERR wrong number of arguments for 'get' command\r\n\
                    -ERR Protocol error: expected an array of bulk strings\r\n\
                    +PONG\r\n";
    assert_eq!(String::from_utf8_lossy(&read_exactly(&mut client, expected.len())), expected);
    handle.shutdown();
}

#[test]
fn a_malformed_frame_gets_a_protocol_error_then_the_connection_closes() {
    let (handle, addr) = start(1);
    let mut client = connect(addr);
    client.write_all(&command(&["PING"])).unwrap();
    client.write_all(b"*1\r\n$abc\r\nPING\r\n").unwrap();
    let mut all = Vec::new();
    client.read_to_end(&mut all).expect("the server closes");
    let text = String::from_utf8_lossy(&all);
    assert!(text.starts_with("+PONG\r\n-ERR Protocol error: "), "{text:?}");
    assert!(text.ends_with("\r\n") && text.matches("\r\n").count() == 2, "{text:?}");
    let s = wait_for(&handle, "the connection closed", |s| totals(s).2 == 0);
    assert_eq!(totals(&s).0, 0);
    handle.shutdown();
}

#[test]
fn a_slow_command_is_in_flight_until_answered() {
    let (handle, addr) = start(1);
    let mut client = connect(addr);
    client.write_all(&command(&["DEBUG", "SLEEP", "0.5"])).unwrap();
    let s = wait_for(&handle, "the command in flight", |s| totals(s).0 == 1);
    assert_eq!(totals(&s).1, 0, "not yet counted as done: {s:?}");
    assert_eq!(read_exactly(&mut client, 5), b"+OK\r\n");
    let s = wait_for(&handle, "the command done", |s| totals(s).0 == 0);
    assert_eq!(totals(&s).1, 1, "{s:?}");
    handle.shutdown();
}

#[test]
fn counts_are_exact_after_the_client_leaves_mid_pipeline() {
    let (handle, addr) = start(1);
    let mut client = connect(addr);
    let mut batch = Vec::new();
    for i in 0..10 {
        batch.extend(command(&["SET", &format!("k{i}"), "v"]));
    }
    batch.extend(command(&["DEBUG", "SLEEP", "0.3"]));
    client.write_all(&batch).unwrap();
    // The ten SETs are done and the sleep is running when the client leaves.
    let s = wait_for(&handle, "the sleep in flight", |s| totals(s).0 == 1);
    assert_eq!(totals(&s).1, 10, "{s:?}");
    client.shutdown(Shutdown::Both).unwrap();
    drop(client);
    let s = wait_for(&handle, "the connection gone", |s| totals(s).2 == 0);
    assert_eq!(totals(&s), (0, 11, 0), "every command counted once, none left in flight: {s:?}");
    handle.shutdown();
}

#[test]
fn redis_benchmark_pipelined_gets_every_reply() {
    if Command::new("redis-benchmark").arg("--version").output().is_err() {
        assert!(
            std::env::var_os("CI").is_none(),
            "redis-benchmark is missing and CI is set: install redis-tools"
        );
        eprintln!(
            "SKIPPED redis_benchmark_pipelined_gets_every_reply: redis-benchmark not found (apt-get install redis-tools)"
        );
        return;
    }
    let (handle, addr) = start(2);
    let output = Command::new("redis-benchmark")
        .args(["-h", "127.0.0.1", "-p", &addr.port().to_string()])
        .args(["-c", "4", "-n", "2000", "-P", "16", "-t", "ping,set,get,incr", "--csv"])
        .output()
        .expect("run redis-benchmark");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{output:?}");
    for test in ["PING_INLINE", "PING_MBULK", "SET", "GET", "INCR"] {
        assert!(stdout.lines().any(|l| l.starts_with(&format!("\"{test}\","))), "{test} missing:\n{stdout}");
    }
    // redis-benchmark counts a request only once answered; the server ran them all.
    let s = wait_for(&handle, "5 x 2000 commands", |s| totals(s).1 >= 5 * 2000);
    assert_eq!(totals(&s).0, 0, "{s:?}");
    handle.shutdown();
}
