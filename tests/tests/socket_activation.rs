//! Socket activation, as systemd does it: the test binds the listener,
//! passes it to `hermes-workload` as descriptor 3 with `LISTEN_FDS=1` and
//! `LISTEN_PID` set to the child's pid, and the server serves on it: a
//! connection queued on the socket before the server started is answered
//! by it, and its second worker serves from a listener it added to the
//! socket's `SO_REUSEPORT` group. A socket without `SO_REUSEPORT` is refused
//! with a message naming `ReusePort=yes`.

use std::{
    io::{Read, Write},
    net::{SocketAddr, TcpStream},
    os::{fd::AsRawFd, unix::process::CommandExt},
    process::{Command, Stdio},
    time::Duration,
};

use hermes_test_support::{ebpf, http::get, wait::poll_until, workload::Workload};
use serde_json::Value;
use socket2::{Domain, Protocol, Socket, Type};

const BIN: &str = env!("CARGO_BIN_EXE_hermes-workload");

fn listener(reuseport: bool) -> (Socket, SocketAddr) {
    let s = Socket::new(Domain::IPV4, Type::STREAM, Some(Protocol::TCP)).expect("socket");
    s.set_reuse_port(reuseport).expect("SO_REUSEPORT");
    s.bind(&"127.0.0.1:0".parse::<SocketAddr>().unwrap().into()).expect("bind");
    s.listen(128).expect("listen");
    let addr = s.local_addr().expect("addr").as_socket().expect("inet");
    (s, addr)
}

/// The command that starts `hermes-workload ARGS` with `socket` as
/// descriptor 3, as systemd does: `LISTEN_FDS=1`, and `LISTEN_PID` the
/// child's own pid (set by the shell that execs the binary, keeping its pid).
fn activated(socket: &Socket, args: &[&str]) -> Command {
    let fd = socket.as_raw_fd();
    let mut cmd = Command::new("/bin/sh");
    cmd.arg("-c")
        .arg(r#"LISTEN_PID=$$; export LISTEN_PID; exec "$0" "$@""#)
        .arg(BIN)
        .args(args)
        .env("LISTEN_FDS", "1")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    // SAFETY: between fork and exec the closure only calls dup2 and fcntl,
    // which are async-signal-safe.
    unsafe {
        cmd.pre_exec(move || {
            if fd != 3 && libc::dup2(fd, 3) == -1 {
                return Err(std::io::Error::last_os_error());
            }
            // Descriptor 3 stays open across exec.
            if libc::fcntl(3, libc::F_SETFD, 0) == -1 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    cmd
}

#[test]
fn serves_on_the_listener_systemd_passes_and_adds_its_own_to_the_group() {
    if !ebpf::require_bpf("serves_on_the_listener_systemd_passes_and_adds_its_own_to_the_group") {
        return;
    }
    let (socket, addr) = listener(true);
    // Queued on the passed socket before the server runs.
    let mut early = TcpStream::connect(addr).expect("connect before the server starts");
    early.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(early, "GET / HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n").unwrap();

    let workload =
        Workload::start(&mut activated(&socket, &["--mode", "hermes", "--workers", "2", "--require-ebpf"]));
    drop(socket);
    let pid = workload.pid();
    let line = &workload.line;
    assert!(line.starts_with(&format!("listening on {addr} mode=hermes")), "{line:?}");

    let mut answer = String::new();
    early.read_to_string(&mut answer).expect("the queued connection is answered");
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(answer.to_lowercase().contains(&format!("x-hermes-pid: {pid}")), "{answer}");

    for _ in 0..40 {
        assert_eq!(get(addr, "/").expect("a request").status, 200);
    }
    let snap: Value = poll_until(Duration::from_secs(5), || {
        let s: Value = serde_json::from_str(&get(addr, "/_hermes/stats").ok()?.body).ok()?;
        let serving = s["workers"].as_array()?.iter().filter(|w| w["state"] == "serving").count();
        (serving == 2).then_some(s)
    })
    .expect("both workers serve");
    assert_eq!(snap["pid"], pid);
    assert_eq!(snap["mode"], "hermes");
    let accepted: u64 =
        snap["workers"].as_array().unwrap().iter().map(|w| w["accepted"].as_u64().unwrap()).sum();
    assert!(accepted >= 41, "accepted {accepted}");

    // Exits on SIGTERM, with success.
    workload.stop();
}

#[test]
fn a_passed_listener_without_reuseport_is_refused_with_the_reason() {
    let (socket, _) = listener(false);
    let child = activated(&socket, &["--mode", "reuseport", "--workers", "2"])
        .spawn()
        .expect("start hermes-workload");
    drop(socket);
    let out = child.wait_with_output().expect("wait for hermes-workload");
    assert!(!out.status.success(), "started on a socket without SO_REUSEPORT");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("ReusePort=yes"), "stderr: {stderr}");
}
