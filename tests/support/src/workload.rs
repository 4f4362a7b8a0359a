//! The `hermes-workload` binary as a child process of a test: started from
//! a [`Command`] the test builds (the binary's path comes from the calling
//! test crate, `env!("CARGO_BIN_EXE_hermes-workload")`), its announced
//! address read from its first line, stopped with `SIGTERM`, and killed when
//! dropped. Also signals to, and the liveness of, processes it started
//! itself (an upgraded successor).

use std::{
    net::SocketAddr,
    process::{Command, ExitStatus},
    time::Duration,
};

use crate::process::Process;

/// How long a workload may take to print its first line.
pub const START_TIMEOUT: Duration = Duration::from_secs(20);

/// How long a workload may take to exit after `SIGTERM` in [`Workload::stop`].
pub const STOP_TIMEOUT: Duration = Duration::from_secs(10);

/// A running `hermes-workload`; killed (and reaped) when dropped.
#[derive(Debug)]
pub struct Workload {
    /// Its first line, `listening on ADDR mode=MODE workers=N`.
    pub line: String,
    /// The address it announced.
    pub addr: SocketAddr,
    /// The mode in effect it announced (`reuseport` when `hermes` fell back).
    pub mode: String,
    /// The number of workers it announced.
    pub workers: usize,
    process: Process,
}

impl Workload {
    /// Starts `cmd` (its stdout is piped here; its stderr is the command's:
    /// inherited unless set, and when piped it is echoed on the test's stderr
    /// and kept for [`Workload::stderr`]), and waits for its first line.
    ///
    /// # Panics
    /// When it cannot start, or its first line is not `listening on ADDR
    /// mode=MODE workers=N` within [`START_TIMEOUT`] (the child is killed).
    pub fn start(cmd: &mut Command) -> Self {
        Self::announced(Process::spawn(cmd))
    }

    /// Starts every command at once, then waits for each one's first line:
    /// the workloads start side by side. See [`Workload::start`].
    ///
    /// # Panics
    /// As [`Workload::start`] does; every workload started is killed.
    pub fn start_all(cmds: &mut [Command]) -> Vec<Self> {
        let spawned: Vec<Process> = cmds.iter_mut().map(Process::spawn).collect();
        spawned.into_iter().map(Self::announced).collect()
    }

    fn announced(process: Process) -> Self {
        let line = process
            .next_line(START_TIMEOUT)
            .unwrap_or_else(|| panic!("hermes-workload printed no first line within {START_TIMEOUT:?}"));
        let (addr, mode, workers) =
            parse_listening(&line).unwrap_or_else(|| panic!("unexpected first line {line:?}"));
        Self { line, addr, mode, workers, process }
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.process.pid()
    }

    /// Sends `sig` to the process.
    ///
    /// # Panics
    /// When the signal cannot be sent.
    pub fn signal(&self, sig: i32) {
        signal(self.pid(), sig);
    }

    /// The next line it (or a successor on the same pipe) prints on stdout,
    /// within `timeout`.
    pub fn next_line(&self, timeout: Duration) -> Option<String> {
        self.process.next_line(timeout)
    }

    /// Its stderr so far, when the command piped it (empty otherwise).
    pub fn stderr(&self) -> String {
        self.process.stderr()
    }

    /// Waits (up to `timeout`) for the process to exit; its status, or
    /// `None` when it still runs.
    ///
    /// # Panics
    /// When its status cannot be read.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        self.process.wait_exit(timeout)
    }

    /// Sends `SIGTERM` and waits (up to [`STOP_TIMEOUT`]) for a clean exit.
    ///
    /// # Panics
    /// When it still runs after the timeout, or exits with a failure.
    pub fn stop(mut self) {
        self.signal(libc::SIGTERM);
        let status = self
            .wait_exit(STOP_TIMEOUT)
            .unwrap_or_else(|| panic!("hermes-workload still runs {STOP_TIMEOUT:?} after SIGTERM"));
        assert!(status.success(), "hermes-workload exited with {status} after SIGTERM");
    }
}

/// The address, mode and worker count of a `listening on ADDR mode=MODE
/// workers=N` line.
pub fn parse_listening(line: &str) -> Option<(SocketAddr, String, usize)> {
    let mut words = line.trim_end().strip_prefix("listening on ")?.split(' ');
    let addr = words.next()?.parse().ok()?;
    let mode = words.next()?.strip_prefix("mode=")?.to_owned();
    let workers = words.next()?.strip_prefix("workers=")?.parse().ok()?;
    Some((addr, mode, workers))
}

/// Sends `sig` to `pid`, a process the test started (or its successor).
///
/// # Panics
/// When the signal cannot be sent.
pub fn signal(pid: u32, sig: i32) {
    let target = libc::pid_t::try_from(pid).expect("a pid");
    // SAFETY: `kill` has no memory preconditions; the caller names a process
    // the test started, with a signal it means to send.
    assert_eq!(unsafe { libc::kill(target, sig) }, 0, "signal {sig} to {pid}");
}

/// Whether `pid` runs (a zombie does not).
pub fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| s.rsplit(')').next().map(|r| !r.trim_start().starts_with('Z')))
        .unwrap_or(false)
}

/// Processes a test started, directly or through upgrades (a successor is
/// not the test's child): each still running is killed when this drops,
/// whatever the test's outcome.
#[derive(Debug, Default)]
pub struct Pids(pub Vec<u32>);

impl Drop for Pids {
    fn drop(&mut self) {
        for &pid in &self.0 {
            if alive(pid) {
                // SAFETY: `kill` with a plain signal on a process the test started.
                unsafe { libc::kill(pid as libc::pid_t, libc::SIGKILL) };
            }
        }
    }
}

/// Upgrade tests run one at a time: the lock this returns is held until it
/// drops, across threads and test binaries (an advisory lock on a file in
/// the temporary directory, released by the kernel if the test dies). Each
/// upgrade test starts servers that start successors, drain and exit on
/// their own schedule; two at once on a two-core machine make each one's
/// timing (a drain still running, a successor announcing itself) the
/// other's accident.
///
/// # Panics
/// When the lock file cannot be opened or locked.
pub fn upgrade_lock() -> std::fs::File {
    let path = std::env::temp_dir().join("hermes-upgrade-tests.lock");
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .unwrap_or_else(|e| panic!("open {}: {e}", path.display()));
    file.lock().unwrap_or_else(|e| panic!("lock {}: {e}", path.display()));
    file
}
