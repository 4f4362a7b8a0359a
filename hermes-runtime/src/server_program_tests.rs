//! A successor whose binary carries another dispatch program than the
//! running server's (a fixed release of the same maps' layout) runs its own
//! program, in maps of its own, instead of inheriting the old one. The
//! successor is this test binary again, told to carry the floor program
//! (`HERMES_TEST_OWN_PROGRAM=floor`).

use std::{io::Read, process::Command, time::Duration};

use hermes_test_support::wait::poll_until;

use crate::{Builder, HermesListener, Upgrade};

pub(super) const CHILD_ENV: &str = "HERMES_TEST_CHILD";
pub(super) const MARKER_ENV: &str = "HERMES_TEST_MARKER";
const STOP_ENV: &str = "HERMES_TEST_STOP";

/// A Hermes server of two workers (the program required) that answers
/// `answer` on every connection: the server an upgrade test hands over.
pub(super) fn old_server(answer: &'static [u8]) -> crate::ServerHandle {
    let server = Builder::new()
        .workers(2)
        .bind("127.0.0.1:0".parse().unwrap())
        .require_ebpf(true)
        .build()
        .expect("build the old server");
    server.serve(answering(answer)).expect("serve")
}

/// This test binary, running only the ignored test `exact` (a successor
/// process), told so by [`CHILD_ENV`]` = child`.
pub(super) fn successor_command(exact: &str, child: &str) -> Command {
    let mut cmd = Command::new(std::env::current_exe().expect("the test binary"));
    cmd.args(["--ignored", "--exact", exact, "--nocapture", "--test-threads=1"]).env(CHILD_ENV, child);
    cmd
}

/// Serves `answer` on every connection, then closes it.
fn answering(
    answer: &'static [u8],
) -> impl Fn(HermesListener) -> std::pin::Pin<Box<dyn Future<Output = ()>>> {
    move |mut listener: HermesListener| {
        Box::pin(async move {
            while let Some((mut stream, _)) = listener.accept_connection().await {
                use tokio::io::AsyncWriteExt;
                let _ = stream.write_all(answer).await;
            }
        })
    }
}

#[test]
fn ebpf_a_successor_with_another_program_runs_its_own() {
    if !hermes_test_support::ebpf::require_bpf("ebpf_a_successor_with_another_program_runs_its_own") {
        return;
    }
    let handle = old_server(b"old");
    let dir = std::env::temp_dir().join(format!("hermes-own-program-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("a scratch directory");
    let (marker, stop) = (dir.join("marker"), dir.join("stop"));
    let mut successor =
        successor_command("server::program_tests::own_program_successor", "own_program_successor");
    successor.env("HERMES_TEST_OWN_PROGRAM", "floor").env(MARKER_ENV, &marker).env(STOP_ENV, &stop);
    handle
        .upgrade(Upgrade::new().command(successor).timeout(Duration::from_secs(30)))
        .expect("the successor takes over");
    assert!(!handle.server.dispatch.owns_list(), "the successor took the list's ownership over");

    // The old program no longer runs: the successor's answers every
    // connection, and the old maps' run count stays where it was.
    let runs_before = handle.server.dispatch.read_counters().expect("counters").runs;
    for _ in 0..20 {
        let mut conn = std::net::TcpStream::connect(handle.local_addr()).expect("connect");
        let mut answer = String::new();
        conn.read_to_string(&mut answer).expect("read");
        assert_eq!(answer, "new");
    }
    let runs_after = handle.server.dispatch.read_counters().expect("counters").runs;
    assert_eq!(runs_after, runs_before, "the old program ran after the successor took over");

    std::fs::write(&stop, "").expect("tell the successor to stop");
    let report = poll_until(Duration::from_secs(30), || std::fs::read_to_string(&marker).ok())
        .expect("the successor reports");
    let _ = std::fs::remove_dir_all(&dir);
    let runs: u64 = report
        .strip_prefix("own program, slot_base 0, runs ")
        .unwrap_or_else(|| panic!("the successor runs its own program in its own maps: {report}"))
        .parse()
        .expect("a run count");
    assert!(runs >= 20, "the successor's program placed the connections: {runs} runs");
    handle.shutdown();
}

/// The successor of the test above (run only by it).
#[test]
#[ignore = "the successor process of the own-program test"]
fn own_program_successor() {
    if std::env::var(CHILD_ENV).as_deref() != Ok("own_program_successor") {
        return;
    }
    let marker = std::env::var_os(MARKER_ENV).expect("marker path");
    let stop = std::path::PathBuf::from(std::env::var_os(STOP_ENV).expect("stop path"));
    // The kernel counts the program's runs while this is held.
    let _stats = aya::sys::enable_stats(aya::sys::Stats::RunTime).expect("enable the kernel's statistics");
    let server = Builder::new()
        .workers(2)
        .bind("127.0.0.1:0".parse().unwrap())
        .require_ebpf(true)
        .upgrade_from_env(true)
        .build()
        .expect("take the running server over");
    let handle = server.serve(answering(b"new")).expect("serve");
    let own = handle.server.dispatch.runs_own_program();
    let base = handle.server.dispatch.slot_base;
    let stopped = poll_until(Duration::from_secs(30), || stop.exists().then_some(()));
    let runs = handle
        .server
        .dispatch
        .dispatcher()
        .map(|d| d.program_stats().map(|s| s.run_count).unwrap_or(0))
        .unwrap_or(0);
    let report = match (own, base, stopped) {
        (true, 0, Some(())) => format!("own program, slot_base 0, runs {runs}"),
        _ => format!("own program {own}, slot_base {base}, stopped {stopped:?}"),
    };
    std::fs::write(marker, report).expect("write the marker");
    handle.shutdown();
}
