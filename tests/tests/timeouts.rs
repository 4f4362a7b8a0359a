//! The `hermes-workload` binary in Hermes mode with two workers, its HTTP/2
//! connections (prior knowledge) driven frame by frame: one that sends only
//! PINGs is closed at `--idle-timeout-ms`, one whose request head is left
//! incomplete (HEADERS without END_HEADERS, no CONTINUATION) at
//! `--header-timeout-ms`, each within one scheduler tick of its timeout plus
//! what a loaded test machine adds (the figures go to stderr: `TIMEOUT ...`).

use std::{
    net::TcpStream,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use hermes_test_support::{
    ebpf,
    rawh2::{END_STREAM, GET_ROOT, RawH2, frame, kind},
    workload::Workload,
};

const BIN: &str = env!("CARGO_BIN_EXE_hermes-workload");
const HEADER: Duration = Duration::from_millis(1000);
const IDLE: Duration = Duration::from_millis(2000);
/// The workload's scheduler tick (`--tick-ms`, default 5).
const TICK: Duration = Duration::from_millis(5);
/// What scheduling on a loaded 2-core test machine may add to a close.
const SLACK: Duration = Duration::from_millis(250);

fn start(test: &str) -> Workload {
    let mut cmd = Command::new(BIN);
    cmd.args(["--mode", "hermes", "--workers", "2", "--addr", "127.0.0.1:0"])
        .args(["--header-timeout-ms", &HEADER.as_millis().to_string()])
        .args(["--idle-timeout-ms", &IDLE.as_millis().to_string()]);
    if ebpf::required() {
        cmd.arg("--require-ebpf");
    }
    let workload = Workload::start(cmd.stderr(Stdio::null()));
    if workload.mode != "hermes" {
        ebpf::skipped(&format!("{test} (mode={})", workload.mode), "the dispatch program did not load");
    }
    workload
}

#[test]
fn ebpf_workload_closes_an_http2_connection_that_only_pings_at_its_idle_timeout() {
    let w = start("ebpf_workload_closes_an_http2_connection_that_only_pings_at_its_idle_timeout");
    let every = Duration::from_millis(100);
    let since = Instant::now();
    let tcp = TcpStream::connect(w.addr).expect("connect");
    tcp.set_read_timeout(Some(every)).expect("read timeout");
    let mut conn = RawH2::handshake(tcp).expect("HTTP/2 handshake");
    let took = conn.ping_until_closed(IDLE * 3, since).unwrap_or_else(|| {
        panic!("a connection pinging every {every:?} is open {:?} after connecting", IDLE * 3)
    });
    eprintln!(
        "TIMEOUT h2 pings only: closed {took:?} after connecting, {:?} past --idle-timeout-ms {}",
        took.saturating_sub(IDLE),
        IDLE.as_millis()
    );
    assert!(took >= IDLE, "closed before the idle timeout: {took:?}");
    assert!(took <= IDLE + TICK + SLACK, "closed {took:?} after connecting");
}

#[test]
fn ebpf_workload_closes_an_http2_head_left_incomplete_at_its_header_timeout() {
    let w = start("ebpf_workload_closes_an_http2_head_left_incomplete_at_its_header_timeout");
    let tcp = TcpStream::connect(w.addr).expect("connect");
    tcp.set_read_timeout(Some(Duration::from_millis(100))).expect("read timeout");
    let mut conn = RawH2::handshake(tcp).expect("HTTP/2 handshake");
    let since = Instant::now();
    conn.send(&frame(kind::HEADERS, END_STREAM, 1, &GET_ROOT)).expect("HEADERS without END_HEADERS");
    let took = conn
        .closed_within(IDLE * 3, since)
        .unwrap_or_else(|| panic!("the incomplete head is open {:?} after its first byte", IDLE * 3));
    eprintln!(
        "TIMEOUT h2 incomplete head: closed {took:?} after its first byte, {:?} past --header-timeout-ms {}",
        took.saturating_sub(HEADER),
        HEADER.as_millis()
    );
    assert!(took >= HEADER, "closed before the header timeout: {took:?}");
    assert!(took <= HEADER + TICK + SLACK, "closed {took:?} after its first byte");
}
