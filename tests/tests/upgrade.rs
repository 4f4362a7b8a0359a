//! Zero-downtime upgrade of the real `hermes-workload` binary over loopback:
//! while one client opens fresh connections at a steady rate and others hold
//! keep-alive connections with requests in flight, `SIGUSR2` hands the
//! server over to a new process of the binary installed at its path.
//!
//! - Hermes mode: first a broken release is installed (a script that exits
//!   3): the old server keeps serving and says why on stderr; then the real
//!   binary: the new process takes over, every response after the switch
//!   comes from it, the old process exits within its drain timeout, the
//!   kernel's counters carry on, and no request is refused, reset or lost;
//!   then the successor is upgraded in turn, with the same guarantees.
//! - The same upgrade of `--mode reuseport` (plain `SO_REUSEPORT`) is
//!   measured in the same test and its failures reported beside Hermes's
//!   (not asserted: whether a queued connection is caught depends on timing).

use std::{
    io::{self, Read, Write},
    net::{SocketAddr, TcpStream},
    os::unix::fs::PermissionsExt,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    thread,
    time::{Duration, Instant},
};

use hermes_test_support::{
    ebpf,
    http::get,
    wait::{poll_every, poll_until},
    workload::{Workload, alive, parse_listening, signal},
};
use serde_json::Value;

const BIN: &str = env!("CARGO_BIN_EXE_hermes-workload");
const DRAIN: Duration = Duration::from_secs(5);
/// Clients opening fresh connections, each one every `FRESH_EVERY`.
const FRESH_CLIENTS: usize = 4;
const FRESH_EVERY: Duration = Duration::from_millis(4);

/// The binary installed at a path of its own, so that the test can install
/// another release there, as a deployment does (a new file renamed over
/// the old one).
struct Install {
    dir: PathBuf,
    exe: PathBuf,
}

impl Install {
    fn new(name: &str) -> Self {
        let dir =
            Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("upgrade-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("create the install folder");
        let exe = dir.join("hermes-workload");
        let me = Self { dir, exe };
        me.install_real();
        me
    }

    fn staged(&self) -> PathBuf {
        self.dir.join(".staged")
    }

    /// Installs the real binary (a hard link, or a copy across filesystems).
    fn install_real(&self) {
        let staged = self.staged();
        let _ = std::fs::remove_file(&staged);
        if std::fs::hard_link(BIN, &staged).is_err() {
            std::fs::copy(BIN, &staged).expect("copy the binary");
        }
        std::fs::rename(&staged, &self.exe).expect("install the binary");
    }

    /// Installs a release that fails at once; it leaves `ran` behind.
    fn install_broken(&self) -> PathBuf {
        let marker = self.dir.join("ran");
        let staged = self.staged();
        std::fs::write(
            &staged,
            format!("#!/bin/sh\ntouch '{}'\necho 'broken release' >&2\nexit 3\n", marker.display()),
        )
        .expect("write the broken release");
        std::fs::set_permissions(&staged, std::fs::Permissions::from_mode(0o755)).expect("chmod");
        std::fs::rename(&staged, &self.exe).expect("install the broken release");
        marker
    }
}

impl Drop for Install {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The first server process (its successors print their stdout lines on
/// the same pipe), and every pid seen serving, to stop them all at the end.
struct Server {
    workload: Workload,
    pids: Vec<u32>,
}

impl Server {
    /// Starts the server with `NOTIFY_SOCKET` at `notify`, as systemd would
    /// for a `Type=notify` unit.
    fn start(exe: &Path, mode: &str, notify: &Path) -> Self {
        let mut args = vec!["--mode", mode, "--workers", "2", "--drain-timeout-ms", "5000"];
        if mode == "hermes" {
            args.push("--require-ebpf");
        }
        let workload = Workload::start(
            Command::new(exe).args(&args).env("NOTIFY_SOCKET", notify).stderr(Stdio::piped()),
        );
        let pid = workload.pid();
        Self { workload, pids: vec![pid] }
    }

    fn addr(&self) -> SocketAddr {
        self.workload.addr
    }

    /// `/_hermes/stats`. A `503 not running on a Hermes worker` is asked
    /// again: under this load the stats request can be offloaded to a
    /// worker's blocking pool, where no snapshot is at hand (not a failure of
    /// the upgrade; the clients' requests are all checked).
    fn snapshot(&self) -> Value {
        poll_every(Duration::from_secs(5), Duration::from_millis(20), || {
            let resp =
                get(self.addr(), "/_hermes/stats").unwrap_or_else(|e| panic!("read /_hermes/stats: {e}"));
            if resp.status == 503 && resp.body.contains("not running on a Hermes worker") {
                return None;
            }
            assert_eq!(resp.status, 200, "{}", resp.body);
            Some(serde_json::from_str(&resp.body).expect("stats JSON"))
        })
        .expect("/_hermes/stats answered 503 for 5 s")
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        for &pid in &self.pids {
            // SAFETY: `kill` with a plain signal on a process this test started.
            unsafe { libc::kill(pid as i32, libc::SIGKILL) };
        }
    }
}

fn listening_addr(line: &str) -> SocketAddr {
    parse_listening(line).map(|(addr, _, _)| addr).unwrap_or_else(|| panic!("unexpected line {line:?}"))
}

/// One response, as far as this test needs it.
struct Reply {
    status: u16,
    pid: u32,
    close: bool,
}

/// Sends `GET path` and reads the response. The error says whether any
/// byte of a response arrived.
fn exchange(stream: &mut TcpStream, path: &str, keep_alive: bool) -> Result<Reply, (bool, io::Error)> {
    let conn = if keep_alive { "keep-alive" } else { "close" };
    write!(stream, "GET {path} HTTP/1.1\r\nHost: test\r\nConnection: {conn}\r\n\r\n")
        .map_err(|e| (false, e))?;
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        match stream.read(&mut byte) {
            Ok(0) => {
                let got = !head.is_empty();
                return Err((got, io::Error::new(io::ErrorKind::UnexpectedEof, "closed before a response")));
            }
            Ok(_) => head.push(byte[0]),
            Err(e) => return Err((!head.is_empty(), e)),
        }
    }
    let head = String::from_utf8_lossy(&head).to_lowercase();
    let mut lines = head.split("\r\n");
    let status = lines.next().and_then(|l| l.split(' ').nth(1)).and_then(|s| s.parse().ok()).unwrap_or(0);
    let (mut pid, mut len, mut close) = (0, 0usize, false);
    for l in lines {
        if let Some((k, v)) = l.split_once(':') {
            match k.trim() {
                "x-hermes-pid" => pid = v.trim().parse().unwrap_or(0),
                "content-length" => len = v.trim().parse().unwrap_or(0),
                "connection" => close = v.trim() == "close",
                _ => {}
            }
        }
    }
    let mut body = vec![0u8; len];
    stream.read_exact(&mut body).map_err(|e| (true, e))?;
    Ok(Reply { status, pid, close })
}

fn connect(addr: SocketAddr) -> io::Result<TcpStream> {
    let s = TcpStream::connect(addr)?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    s.set_nodelay(true)?;
    Ok(s)
}

/// What the clients saw.
#[derive(Default)]
struct Tally {
    /// Fresh-connection requests: (start, pid that answered).
    fresh: Mutex<Vec<(Instant, u32)>>,
    keepalive_ok: AtomicU64,
    /// Keep-alive requests the server closed the connection under before any
    /// byte of a response, on a connection that had served a request: retried
    /// once on a new connection, as HTTP clients do for idempotent requests.
    keepalive_retried: AtomicU64,
    failures: Mutex<Vec<String>>,
}

impl Tally {
    fn fail(&self, what: String) {
        self.failures.lock().unwrap().push(what);
    }
}

/// The clients: [`FRESH_CLIENTS`] opening a fresh connection every
/// [`FRESH_EVERY`] each, three holding keep-alive connections with a request
/// (1.5 ms of work) always in flight.
struct Load {
    stop: Arc<AtomicBool>,
    tally: Arc<Tally>,
    threads: Vec<thread::JoinHandle<()>>,
}

impl Load {
    fn start(addr: SocketAddr) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let tally = Arc::new(Tally::default());
        let mut threads = Vec::new();
        for _ in 0..FRESH_CLIENTS {
            let (stop, tally) = (stop.clone(), tally.clone());
            threads.push(thread::spawn(move || {
                // Relaxed: a stop flag, read once per request.
                while !stop.load(Ordering::Relaxed) {
                    let start = Instant::now();
                    match connect(addr).map_err(|e| (false, e)).and_then(|mut s| exchange(&mut s, "/", false))
                    {
                        Ok(r) if r.status == 200 => tally.fresh.lock().unwrap().push((start, r.pid)),
                        Ok(r) => tally.fail(format!("fresh: status {}", r.status)),
                        Err((_, e)) => tally.fail(format!("fresh: {e}")),
                    }
                    // The client's pace, not a wait.
                    thread::sleep(FRESH_EVERY.saturating_sub(start.elapsed()));
                }
            }));
        }
        for _ in 0..3 {
            let (stop, tally) = (stop.clone(), tally.clone());
            threads.push(thread::spawn(move || {
                let mut conn: Option<(TcpStream, u32)> = None;
                while !stop.load(Ordering::Relaxed) {
                    let (mut stream, served) = match conn.take() {
                        Some(c) => c,
                        None => match connect(addr) {
                            Ok(s) => (s, 0),
                            Err(e) => {
                                tally.fail(format!("keep-alive connect: {e}"));
                                continue;
                            }
                        },
                    };
                    let path = "/work?us=1500";
                    let result = match exchange(&mut stream, path, true) {
                        // Closed under a request before any byte of a
                        // response on a reused connection: the one retry a
                        // pooled client makes.
                        Err((false, _)) if served > 0 => {
                            tally.keepalive_retried.fetch_add(1, Ordering::Relaxed);
                            connect(addr).map_err(|e| (false, e)).and_then(|mut s| {
                                let r = exchange(&mut s, path, true);
                                stream = s;
                                r
                            })
                        }
                        other => other,
                    };
                    match result {
                        Ok(r) if r.status == 200 => {
                            tally.keepalive_ok.fetch_add(1, Ordering::Relaxed);
                            if !r.close {
                                conn = Some((stream, served + 1));
                            }
                        }
                        Ok(r) => tally.fail(format!("keep-alive: status {}", r.status)),
                        Err((_, e)) => tally.fail(format!("keep-alive: {e}")),
                    }
                }
            }));
        }
        Self { stop, tally, threads }
    }

    fn finish(self) -> Arc<Tally> {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads {
            t.join().expect("client thread");
        }
        self.tally
    }
}

/// What one upgrade under load showed.
struct Outcome {
    old_pid: u32,
    new_pid: u32,
    fresh: usize,
    keepalive: u64,
    retried: u64,
    failures: Vec<String>,
    /// Fresh-connection requests started 200 ms or more after the
    /// successor's `listening on` line, and the ones the old pid answered.
    after_switch: usize,
    after_switch_from_old: usize,
    runs_before: u64,
    runs_after: u64,
    fresh_after_runs_read: usize,
    old_exit_after_switch: Duration,
}

/// Sends SIGUSR2 to the server under load and follows the hand-over to the
/// end (the old process's exit). With `broken`, first installs a release
/// that cannot start and checks the old server keeps serving; with `twice`,
/// the successor is upgraded in turn (the figures are then the last
/// switch's, the old process's exit time the first's).
fn upgrade_under_load(mode: &str, broken: bool, twice: bool) -> Outcome {
    let install = Install::new(mode);
    // systemd's notification socket: a successor announces its pid there.
    let notify_path = install.dir.join("notify");
    let notify = std::os::unix::net::UnixDatagram::bind(&notify_path).expect("bind the notify socket");
    notify.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut server = Server::start(&install.exe, mode, &notify_path);
    let mut buf = [0u8; 256];
    let n = notify.recv(&mut buf).expect("the server notifies systemd");
    assert_eq!(std::str::from_utf8(&buf[..n]).unwrap(), "READY=1\n");
    let old_pid = server.workload.pid();
    let load = Load::start(server.addr());
    // The load runs 400 ms before the upgrade: the scenario, not a wait.
    thread::sleep(Duration::from_millis(400));

    if broken {
        let marker = install.install_broken();
        signal(old_pid, libc::SIGUSR2);
        poll_until(Duration::from_secs(10), || marker.exists().then_some(()))
            .expect("the broken release was started");
        // The old server sees the successor exit and logs why.
        poll_until(Duration::from_secs(5), || {
            server.workload.stderr().contains("upgrade failed").then_some(())
        })
        .unwrap_or_else(|| panic!("no `upgrade failed` on stderr: {}", server.workload.stderr()));
        // Time for an old server that exits by mistake to do so: what is
        // checked is that nothing happens, there is no state to wait for.
        thread::sleep(Duration::from_millis(300));
        assert!(alive(old_pid), "the old server exited after a failed upgrade");
        assert_eq!(server.snapshot()["pid"], old_pid, "the old server still answers");
        install.install_real();
    }

    let runs_before = server.snapshot()["program_runs"].as_u64().expect("program_runs");
    let runs_read_at = Instant::now();
    signal(old_pid, libc::SIGUSR2);
    let line = server.workload.next_line(Duration::from_secs(30)).expect("the successor's listening line");
    let switched = Instant::now();
    assert_eq!(listening_addr(&line), server.addr(), "the successor serves the same address");
    let exited = server.workload.wait_exit(DRAIN + Duration::from_secs(5)).expect("the old server exited");
    let old_exit_after_switch = switched.elapsed();
    assert!(exited.success(), "the old server exited with {exited}");
    // The load runs 300 ms on the successor alone: the scenario, not a wait.
    thread::sleep(Duration::from_millis(300));
    let second = poll_until(Duration::from_secs(5), || {
        let s = server.snapshot();
        (s["pid"] != old_pid).then_some(s)
    })
    .expect("a snapshot of the successor");
    let mut new_pid = second["pid"].as_u64().expect("pid") as u32;
    server.pids.push(new_pid);
    let n = notify.recv(&mut buf).expect("the successor notifies systemd");
    assert_eq!(
        std::str::from_utf8(&buf[..n]).unwrap(),
        format!("MAINPID={new_pid}\nREADY=1\n"),
        "the successor announces itself as the main process"
    );
    let mut switched = switched;
    if twice {
        // The successor upgrades in turn: its successor takes the slots the
        // first server left, and the maps it inherited carry on again.
        let first_base = second["slot_base"].as_u64().expect("slot_base");
        signal(new_pid, libc::SIGUSR2);
        let line = server.workload.next_line(Duration::from_secs(30)).expect("the third listening line");
        switched = Instant::now();
        assert_eq!(listening_addr(&line), server.addr());
        poll_until(DRAIN + Duration::from_secs(5), || (!alive(new_pid)).then_some(()))
            .expect("the second server exited");
        // The load runs 300 ms on the third server alone: the scenario.
        thread::sleep(Duration::from_millis(300));
        let third = poll_until(Duration::from_secs(5), || {
            let s = server.snapshot();
            (s["pid"] != new_pid).then_some(s)
        })
        .expect("a snapshot of the third server");
        assert_ne!(third["slot_base"].as_u64(), Some(first_base), "the third server uses other slots");
        new_pid = third["pid"].as_u64().expect("pid") as u32;
        server.pids.push(new_pid);
    }
    // And 200 ms more: the scenario, not a wait.
    thread::sleep(Duration::from_millis(200));
    let tally = load.finish();
    let snap = server.snapshot();
    assert_eq!(snap["pid"], new_pid);
    let runs_after = snap["program_runs"].as_u64().expect("program_runs");
    let fresh = tally.fresh.lock().unwrap();
    let late: Vec<u32> =
        fresh.iter().filter(|(t, _)| *t >= switched + Duration::from_millis(200)).map(|&(_, p)| p).collect();
    let outcome = Outcome {
        old_pid,
        new_pid,
        fresh: fresh.len(),
        keepalive: tally.keepalive_ok.load(Ordering::Relaxed),
        retried: tally.keepalive_retried.load(Ordering::Relaxed),
        failures: tally.failures.lock().unwrap().clone(),
        after_switch: late.len(),
        after_switch_from_old: late.iter().filter(|&&p| p == old_pid).count(),
        runs_before,
        runs_after,
        fresh_after_runs_read: fresh.iter().filter(|(t, _)| *t > runs_read_at).count(),
        old_exit_after_switch,
    };
    drop(fresh);
    // Stop the successor (not this test's child: it was started by the old server).
    signal(new_pid, libc::SIGTERM);
    poll_until(Duration::from_secs(10), || (!alive(new_pid)).then_some(()))
        .expect("the successor stops on SIGTERM");
    outcome
}

#[test]
fn sigusr2_upgrade_loses_no_request_and_plain_reuseport_is_measured() {
    if !ebpf::require_bpf("sigusr2_upgrade_loses_no_request_and_plain_reuseport_is_measured") {
        return;
    }
    // One upgrade test at a time (see `upgrade_lock`).
    let _serial = hermes_test_support::workload::upgrade_lock();
    let hermes = upgrade_under_load("hermes", true, true);
    let plain = upgrade_under_load("reuseport", false, false);
    for (name, o) in [("hermes", &hermes), ("reuseport", &plain)] {
        eprintln!(
            "upgrade of --mode {name}: pid {} -> {}; {} fresh-connection and {} keep-alive requests; \
             {} failed ({:?}); {} keep-alive requests retried after an idle close; old exited {:?} after the switch; \
             program runs {} -> {}",
            o.old_pid,
            o.new_pid,
            o.fresh,
            o.keepalive,
            o.failures.len(),
            o.failures.iter().take(5).collect::<Vec<_>>(),
            o.retried,
            o.old_exit_after_switch,
            o.runs_before,
            o.runs_after
        );
    }
    assert!(hermes.failures.is_empty(), "Hermes upgrade failed requests: {:?}", hermes.failures);
    // A draining worker answers on its keep-alive connections with
    // `Connection: close` before it closes idle ones: no client request
    // meets a closing connection.
    assert_eq!(hermes.retried, 0, "keep-alive requests that met a closing connection");
    assert_ne!(hermes.new_pid, hermes.old_pid);
    assert!(
        hermes.fresh > 100 && hermes.keepalive > 100,
        "the load ran: {} / {}",
        hermes.fresh,
        hermes.keepalive
    );
    assert!(hermes.after_switch > 50, "fresh requests after the switch: {}", hermes.after_switch);
    assert_eq!(hermes.after_switch_from_old, 0, "responses from the old pid after the switch");
    assert!(hermes.old_exit_after_switch <= DRAIN, "the old server took {:?}", hermes.old_exit_after_switch);
    // Every fresh connection made since the first read passed through the
    // program: a successor whose counters restarted at zero would be below.
    assert!(
        hermes.runs_after >= hermes.runs_before + hermes.fresh_after_runs_read as u64,
        "the program's run count did not carry on: {} then {} with {} connections between",
        hermes.runs_before,
        hermes.runs_after,
        hermes.fresh_after_runs_read
    );
    assert_ne!(plain.new_pid, plain.old_pid, "the reuseport server was upgraded too");
}
