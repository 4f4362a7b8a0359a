//! `hermes-top` against the real `hermes-workload` over loopback: `--once`
//! prints a row per worker with its state; under tmux (Debian's `tmux`), the
//! live view shows a worker's in-flight bar fill under load and empty again,
//! and `q` exits 0; `--http2` reads a `serve_tonic` server's stats.
//! `hermes-top` is built by cargo for the test
//! ([`hermes_test_support::cargo`]). Without tmux the tmux test is skipped
//! with a message, and fails when `CI` is set.

use std::{
    net::SocketAddr,
    path::PathBuf,
    process::{Command, Output, Stdio},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    thread,
    time::Duration,
};

use hermes_examples::greeter::{GreeterServer, WorkerGreeter};
use hermes_test_support::{
    cargo, ebpf,
    http::get_within,
    server::{shutdown, two_workers},
    wait::poll_every,
    workload::Workload,
};
use tonic::service::Routes;

const WORKLOAD: &str = env!("CARGO_BIN_EXE_hermes-workload");

/// The `in-flight` column's width: a bar of 8, a space, the count in 5.
const IN_FLIGHT_WIDTH: usize = 14;

fn top() -> PathBuf {
    cargo::binary("hermes-top", "hermes-top")
}

/// A two-worker `hermes-workload` in `mode`, eBPF required when the run requires it.
fn workload(mode: &str) -> Workload {
    let mut cmd = Command::new(WORKLOAD);
    cmd.args(["--mode", mode, "--workers", "2", "--addr", "127.0.0.1:0"]).stderr(Stdio::inherit());
    if mode == "hermes" && ebpf::required() {
        cmd.arg("--require-ebpf");
    }
    Workload::start(&mut cmd)
}

fn stats_url(addr: SocketAddr) -> String {
    format!("http://{addr}/_hermes/stats")
}

fn once(url: &str) -> Output {
    Command::new(top()).args(["--once", "--interval", "0.2", url]).output().expect("run hermes-top --once")
}

/// The workers' rows of a frame: the lines after the table's heading that
/// start with an id; `(heading, rows)`.
fn table(screen: &str) -> Option<(&str, Vec<&str>)> {
    let mut lines = screen.lines().skip_while(|l| !l.trim_start().starts_with("id state"));
    let heading = lines.next()?;
    let rows = lines.take_while(|l| l.trim_start().starts_with(|c: char| c.is_ascii_digit())).collect();
    Some((heading, rows))
}

/// The id, state and eligibility a row starts with.
fn id_state_elig(row: &str) -> (usize, &str, &str) {
    let mut words = row.split_whitespace();
    let id = words.next().and_then(|w| w.parse().ok()).unwrap_or_else(|| panic!("no id in {row:?}"));
    (id, words.next().unwrap_or(""), words.next().unwrap_or(""))
}

/// Each row's in-flight cell (its bar and count), found under the heading.
fn in_flight_cells(heading: &str, rows: &[&str]) -> Vec<String> {
    let at = heading.find("in-flight").expect("an in-flight column");
    rows.iter().map(|r| r.chars().skip(at).take(IN_FLIGHT_WIDTH).collect()).collect()
}

/// A cell's count, and whether its bar has any fill.
fn count_and_fill(cell: &str) -> (u64, bool) {
    let count = cell.split_whitespace().last().and_then(|w| w.parse().ok()).unwrap_or(0);
    (count, cell.chars().any(|c| ('█'..='▏').contains(&c)))
}

#[test]
fn ebpf_top_once_prints_a_row_per_worker_with_its_state() {
    let workload = workload("hermes");
    let out = once(&stats_url(workload.addr));
    let screen = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{screen}\n{}", String::from_utf8_lossy(&out.stderr));
    let mode = if workload.mode == "hermes" { "hermes" } else { "kernel-hash" };
    let title = screen.lines().next().unwrap_or("");
    assert!(title.contains(&format!("pid {}  mode {mode}", workload.pid())), "{screen}");
    assert!(title.contains("2 workers: 2 serving"), "{screen}");
    assert!(screen.contains("kernel: runs ") && screen.contains("too_few"), "{screen}");
    let (_, rows) = table(&screen).unwrap_or_else(|| panic!("no table in\n{screen}"));
    let ids_states: Vec<_> = rows.iter().map(|r| id_state_elig(r)).collect();
    assert_eq!(ids_states.len(), workload.workers, "{screen}");
    for (i, (id, state, elig)) in ids_states.into_iter().enumerate() {
        assert_eq!((id, state), (i, "serving"), "{screen}");
        assert!(elig == "yes" || elig == "no", "{screen}");
    }
    workload.stop();
}

#[test]
fn top_refuses_what_is_not_a_hermes_servers_stats_saying_why() {
    // The stock-runtime peer answers its stats path with a document of its own.
    let tokio = workload("tokio");
    let out = once(&stats_url(tokio.addr));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("not a Hermes snapshot"), "{stderr}");
    tokio.stop();

    let closed = std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).expect("a port");
    let out = once(&stats_url(closed));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains(&closed.to_string()) && stderr.contains("refused"), "{stderr}");

    let out = Command::new(top()).args(["--once", "https://127.0.0.1:1/"]).output().expect("run hermes-top");
    assert!(String::from_utf8_lossy(&out.stderr).contains("https is not supported"), "{out:?}");
}

#[tokio::test]
async fn top_reads_a_tonic_servers_stats_over_http2() {
    let handle = hermes_tower::serve_tonic("127.0.0.1:0", || Routes::new(GreeterServer::new(WorkerGreeter)))
        .with_builder(two_workers())
        .with_stats()
        .start()
        .expect("start the server");
    let url = stats_url(handle.local_addr());
    let out =
        Command::new(top()).args(["--once", "--http2", "--interval", "0.2", &url]).output().expect("run");
    let screen = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{screen}\n{}", String::from_utf8_lossy(&out.stderr));
    let (_, rows) = table(&screen).unwrap_or_else(|| panic!("no table in\n{screen}"));
    assert_eq!(rows.iter().map(|r| id_state_elig(r).0).collect::<Vec<_>>(), [0, 1], "{screen}");
    shutdown(handle).await;
}

/// A tmux server of the test's own (its own socket), killed when dropped.
struct Tmux {
    socket: String,
}

impl Tmux {
    fn cmd(&self, args: &[&str]) -> Output {
        Command::new("tmux")
            .args(["-L", &self.socket, "-f", "/dev/null"])
            .args(args)
            .output()
            .expect("run tmux")
    }

    fn screen(&self) -> String {
        String::from_utf8_lossy(&self.cmd(&["capture-pane", "-p", "-t", "top"]).stdout).into_owned()
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        let _ = self.cmd(&["kill-server"]);
    }
}

#[test]
fn ebpf_top_under_tmux_shows_an_in_flight_bar_move_under_load_and_q_exits_0() {
    if Command::new("tmux").arg("-V").output().is_err() {
        assert!(std::env::var_os("CI").is_none(), "tmux is missing and CI is set: install Debian's tmux");
        eprintln!(
            "SKIPPED ebpf_top_under_tmux_shows_an_in_flight_bar_move_under_load_and_q_exits_0: tmux not found (apt-get install tmux)"
        );
        return;
    }
    let workload = workload("hermes");
    // The exit status goes to a file: tmux marks a pane dead when its
    // terminal closes and may never record the status of a process that
    // exits at that moment (`#{pane_dead_status}` stays empty).
    let status_file = std::env::temp_dir().join(format!("hermes-top-test-status-{}", std::process::id()));
    let _ = std::fs::remove_file(&status_file);
    let command = format!(
        "{} --interval 0.2 {}; echo $? > {}",
        top().display(),
        stats_url(workload.addr),
        status_file.display()
    );
    let tmux = Tmux { socket: format!("hermes-top-test-{}", std::process::id()) };
    let started = tmux.cmd(&[
        "new-session",
        "-d",
        "-s",
        "top",
        "-x",
        "140",
        "-y",
        "30",
        &command,
        ";",
        "set-option",
        "-t",
        "top",
        "remain-on-exit",
        "on",
    ]);
    assert!(started.status.success(), "tmux: {started:?}");

    // Idle: every worker's bar empty.
    let every = Duration::from_millis(100);
    let idle = poll_every(Duration::from_secs(10), every, || {
        let screen = tmux.screen();
        let (heading, rows) = table(&screen)?;
        let cells = in_flight_cells(heading, &rows);
        (rows.len() == 2 && cells.iter().all(|c| count_and_fill(c) == (0, false))).then_some(screen)
    });
    assert!(idle.is_some(), "no idle view of two workers:\n{}", tmux.screen());

    // Load: requests that block their worker for 1 s (learned as heavy,
    // they move to the blocking pool and count in flight there), from three
    // clients until the view shows one in flight.
    let stop = Arc::new(AtomicBool::new(false));
    let clients: Vec<_> = (0..3)
        .map(|_| {
            let (stop, addr) = (stop.clone(), workload.addr);
            thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    let _ = get_within(addr, "/block?ms=1000", Duration::from_secs(10));
                }
            })
        })
        .collect();
    let loaded = poll_every(Duration::from_secs(20), every, || {
        let screen = tmux.screen();
        let (heading, rows) = table(&screen)?;
        in_flight_cells(heading, &rows)
            .iter()
            .any(|c| matches!(count_and_fill(c), (n, true) if n > 0))
            .then_some(screen)
    });
    stop.store(true, Ordering::Relaxed);
    clients.into_iter().for_each(|c| c.join().expect("client"));
    let loaded = loaded.unwrap_or_else(|| panic!("no in-flight bar moved under load:\n{}", tmux.screen()));
    eprintln!("under load:\n{loaded}");

    // The load over, the bars empty again.
    let settled = poll_every(Duration::from_secs(10), every, || {
        let screen = tmux.screen();
        let (heading, rows) = table(&screen)?;
        in_flight_cells(heading, &rows).iter().all(|c| count_and_fill(c) == (0, false)).then_some(())
    });
    assert!(settled.is_some(), "the in-flight bars did not empty:\n{}", tmux.screen());

    tmux.cmd(&["send-keys", "-t", "top", "q"]);
    let status = poll_every(Duration::from_secs(5), every, || {
        let text = std::fs::read_to_string(&status_file).ok()?;
        text.ends_with('\n').then(|| text.trim().to_owned())
    });
    let _ = std::fs::remove_file(&status_file);
    assert_eq!(status.as_deref(), Some("0"), "hermes-top did not exit 0 on q:\n{}", tmux.screen());
    workload.stop();
}
