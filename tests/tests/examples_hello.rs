//! The `hello` example as users run it (built by cargo, on a port of its
//! own), stopped with SIGINT as ctrl-c stops it: an idle stop, an idle
//! keep-alive connection included, logs its drain at INFO and nothing at
//! WARN or above, and its log, on a pipe, has no colour codes.

use std::{
    net::{SocketAddr, TcpStream},
    process::{Command, Stdio},
    time::Duration,
};

use hermes_test_support::{
    cargo, ebpf,
    http::{get, read_response, send},
    process::Process,
    workload::signal,
};

#[test]
fn ebpf_hello_stopped_with_sigint_when_idle_logs_its_drain_at_info_and_nothing_at_warn() {
    let mut hello = Process::spawn(
        Command::new(cargo::example("hello"))
            .arg("127.0.0.1:0")
            .env_remove("RUST_LOG")
            .stderr(Stdio::piped()),
    );
    let mode = hello.line_after("dispatch mode: ", Duration::from_secs(20));
    if ebpf::required() {
        assert_eq!(mode, "hermes", "eBPF is required (HERMES_REQUIRE_BPF=1)");
    }
    let addr: SocketAddr = hello
        .line_after("listening on http://", Duration::from_secs(5))
        .trim_end_matches('/')
        .parse()
        .expect("the address hello prints");
    let response = get(addr, "/").expect("GET /");
    assert!(response.body.starts_with("Hello from Hermes worker"), "{response:?}");
    let stats: serde_json::Value =
        serde_json::from_str(&get(addr, "/_hermes/stats").expect("GET the stats").body).expect("JSON");
    let workers = stats["workers"].as_array().map_or(0, Vec::len);
    assert!(workers > 0, "{stats}");
    // A browser's idle keep-alive connection, open through the stop.
    let mut idle = TcpStream::connect(addr).expect("connect");
    send(&mut idle, "/", true).expect("send");
    assert_eq!(read_response(&mut idle).expect("a response").status, 200);

    signal(hello.pid(), libc::SIGINT);
    let status = hello.wait_exit(Duration::from_secs(10)).expect("hello exits within 10 s of SIGINT");
    assert!(status.success(), "hello exited with {status}");

    let log = hello.stderr();
    assert!(!log.contains('\x1b'), "colour codes in a log written to a pipe:\n{log}");
    let loud: Vec<&str> = log
        .lines()
        .filter(|l| l.split_whitespace().nth(1).is_some_and(|level| level == "WARN" || level == "ERROR"))
        .collect();
    assert!(loud.is_empty(), "an idle stop logged at WARN or above:\n{log}");
    for worker in 0..workers {
        for event in ["worker draining", "worker stopped"] {
            let logged = log.lines().any(|l| {
                l.contains(" INFO ") && l.contains(event) && l.contains(&format!("worker={worker}"))
            });
            assert!(logged, "no {event:?} of worker {worker} at INFO:\n{log}");
        }
    }
}
