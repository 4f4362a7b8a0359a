//! A child process of a test whose stdout is read line by line on a thread
//! of its own (and its stderr, when piped, echoed on the test's stderr and
//! kept); killed and reaped when dropped. [`crate::workload`] runs
//! `hermes-workload` on it; tests run the examples and `hermes-top` on it.

use std::{
    io::{BufRead, BufReader},
    path::Path,
    process::{Child, Command, ExitStatus, Stdio},
    sync::{Arc, Mutex, mpsc},
    thread,
    time::Duration,
};

use crate::wait::poll_until;

/// A running child; killed (and reaped) when dropped.
#[derive(Debug)]
pub struct Process {
    child: Child,
    /// What it is, in messages: its program's file name.
    name: String,
    /// Its stdout lines not read yet.
    lines: mpsc::Receiver<String>,
    /// Its stderr so far, when the command piped it.
    stderr: Option<Arc<Mutex<String>>>,
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Process {
    /// Starts `cmd` with its stdout piped here. Its stderr is the
    /// command's: inherited unless set; when piped, each line is echoed on
    /// the test's stderr (prefixed with the program's name) and kept for
    /// [`Process::stderr`].
    ///
    /// # Panics
    /// When it cannot start.
    pub fn spawn(cmd: &mut Command) -> Self {
        let name = Path::new(cmd.get_program()).file_name().map_or_else(
            || cmd.get_program().to_string_lossy().into_owned(),
            |n| n.to_string_lossy().into_owned(),
        );
        let mut child = cmd.stdout(Stdio::piped()).spawn().unwrap_or_else(|e| panic!("start {name}: {e}"));
        let (tx, lines) = mpsc::channel();
        let out = child.stdout.take().expect("piped stdout");
        thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        let stderr = child.stderr.take().map(|err| {
            let kept = Arc::new(Mutex::new(String::new()));
            let (sink, prefix) = (kept.clone(), name.clone());
            thread::spawn(move || {
                for line in BufReader::new(err).lines().map_while(Result::ok) {
                    eprintln!("[{prefix}] {line}");
                    sink.lock().unwrap_or_else(|e| e.into_inner()).push_str(&(line + "\n"));
                }
            });
            kept
        });
        Self { child, name, lines, stderr }
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The next line it prints on stdout, within `timeout`.
    pub fn next_line(&self, timeout: Duration) -> Option<String> {
        self.lines.recv_timeout(timeout).ok()
    }

    /// The rest of the first line it prints on stdout that starts with
    /// `prefix`, skipping the lines before it.
    ///
    /// # Panics
    /// When no such line comes within `timeout`.
    pub fn line_after(&self, prefix: &str, timeout: Duration) -> String {
        let deadline = std::time::Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            let line = self.next_line(left).unwrap_or_else(|| {
                panic!("{} printed no line starting with {prefix:?} within {timeout:?}", self.name)
            });
            if let Some(rest) = line.strip_prefix(prefix) {
                return rest.to_owned();
            }
        }
    }

    /// Its stderr so far, when the command piped it (empty otherwise).
    pub fn stderr(&self) -> String {
        self.stderr.as_ref().map(|s| s.lock().unwrap_or_else(|e| e.into_inner()).clone()).unwrap_or_default()
    }

    /// Waits (up to `timeout`) for the process to exit; its status, or
    /// `None` when it still runs.
    ///
    /// # Panics
    /// When its status cannot be read.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let name = &self.name;
        poll_until(timeout, || self.child.try_wait().unwrap_or_else(|e| panic!("wait for {name}: {e}")))
    }
}
