//! The peers: which binary serves each one, how it is built, and the running server process.

use std::fmt;
use std::io::{self, BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use clap::ValueEnum;

use crate::cpus::CpuList;

/// A peer, as named on the command line and in the reports (and, but for `hermes-unpinned`,
/// `hermes-pinned` and `hermes-locality`, in its server's `--mode`); `hermes` first because ratios
/// are taken against it.
///
/// `hermes-local` is Hermes with every request kept on its connection's worker (no request
/// placement, no offload, no reconnect asks): the server as it was before request placement, to
/// measure what placement costs or gains in the same run. `hermes` runs the runtime's default
/// pinning (pinned when the server was given a subset of the machine's CPUs, as `--server-cpus`
/// does; not pinned when it may run on all of them); `hermes-pinned` and `hermes-unpinned` set it,
/// to measure what pinning costs or gains. `hermes-locality` is Hermes
/// with locality on (`hermes-workload --locality on`: the eligible worker on the CPU that received a
/// connection is the kernel program's first candidate), to measure what locality costs or gains.
/// None of these four is in the default peer list. `hermes-userspace` is Hermes without its kernel
/// program (the kernel's hash places connections; request placement, offload, reconnect asks and
/// queue rescue stay on): what a container without CAP_BPF gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Peer {
    Hermes,
    HermesLocal,
    HermesUserspace,
    HermesPinned,
    HermesUnpinned,
    HermesLocality,
    Reuseport,
    Shared,
    Tokio,
    Actix,
    Ntex,
}

impl Peer {
    /// The binary serving the peer.
    pub fn binary(self) -> Binary {
        match self {
            Peer::Ntex => Binary::Ntex,
            Peer::Actix => Binary::Actix,
            _ => Binary::Workload,
        }
    }

    /// The server's `--mode` and the arguments that make it this peer, beside the ones every peer
    /// gets (workers, address).
    fn server_args(self) -> Vec<String> {
        let mode = |m: &str| vec!["--mode".to_owned(), m.to_owned()];
        match self {
            Peer::HermesPinned => [mode("hermes"), vec!["--pin".to_owned(), "on".to_owned()]].concat(),
            Peer::HermesUnpinned => [mode("hermes"), vec!["--pin".to_owned(), "off".to_owned()]].concat(),
            Peer::HermesLocality => [mode("hermes"), vec!["--locality".to_owned(), "on".to_owned()]].concat(),
            _ => mode(&self.to_string()),
        }
    }

    /// True for the peers whose kernel program must load where eBPF is required.
    fn needs_ebpf(self) -> bool {
        matches!(
            self,
            Peer::Hermes
                | Peer::HermesLocal
                | Peer::HermesPinned
                | Peer::HermesUnpinned
                | Peer::HermesLocality
        )
    }
}

impl fmt::Display for Peer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.to_possible_value().expect("no peer is hidden").get_name())
    }
}

/// The peer the ratios are taken against.
pub const BASELINE: Peer = Peer::Hermes;

/// The workspace package that holds the `hermes-workload` binary (the only place that names it).
pub const WORKLOAD_PACKAGE: &str = "hermes-tests";

/// The workload binary's name.
pub const WORKLOAD_BIN: &str = "hermes-workload";

/// Which binary serves a peer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Binary {
    /// `hermes-workload` from the [`WORKLOAD_PACKAGE`] package.
    Workload,
    /// The ntex workload server in `benches/ntex-workload`, outside the workspace.
    Ntex,
    /// The actix-web workload server in `benches/actix-workload`, outside the workspace.
    Actix,
}

/// The workspace root, two levels above this crate.
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn cargo() -> Command {
    Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()))
}

fn target_dir(default: PathBuf) -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR").map(PathBuf::from).unwrap_or(default)
}

fn run_build(mut cmd: Command, what: &str) -> io::Result<()> {
    eprintln!("building {what}: {cmd:?}");
    let status = cmd.current_dir(workspace_root()).status()?;
    if status.success() {
        Ok(())
    } else {
        Err(io::Error::other(format!("building {what} failed ({status}); pass the binary's path instead")))
    }
}

/// Builds `hermes-workload` in release mode and returns its path.
pub fn build_workload() -> io::Result<PathBuf> {
    let mut cmd = cargo();
    cmd.args(["build", "--release", "-p", WORKLOAD_PACKAGE, "--bin", WORKLOAD_BIN]);
    run_build(cmd, "the workload server (--workload-bin)")?;
    Ok(target_dir(workspace_root().join("target")).join("release").join(WORKLOAD_BIN))
}

/// Builds the ntex workload server (its own workspace; ntex-server 4.3 declares a newer
/// rust-version than the workspace's, hence `--ignore-rust-version`) and returns its path.
pub fn build_ntex() -> io::Result<PathBuf> {
    let mut cmd = cargo();
    cmd.args([
        "build",
        "--release",
        "--ignore-rust-version",
        "--manifest-path",
        "benches/ntex-workload/Cargo.toml",
    ]);
    run_build(cmd, "the ntex workload server (--ntex-bin)")?;
    Ok(target_dir(workspace_root().join("benches/ntex-workload/target")).join("release/ntex-workload"))
}

/// Builds the actix-web workload server (its own workspace) and returns its path.
pub fn build_actix() -> io::Result<PathBuf> {
    let mut cmd = cargo();
    cmd.args(["build", "--release", "--manifest-path", "benches/actix-workload/Cargo.toml"]);
    run_build(cmd, "the actix-web workload server (--actix-bin)")?;
    Ok(target_dir(workspace_root().join("benches/actix-workload/target")).join("release/actix-workload"))
}

/// A workload server process, killed on drop.
#[derive(Debug)]
pub struct Server {
    child: Child,
    /// The address it listens on, from its first line.
    pub addr: SocketAddr,
    /// The `mode=` it announced.
    pub mode: String,
    /// The `workers=` it announced.
    pub workers: usize,
}

impl Server {
    /// The server's process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

/// Parses the contract's first line: `listening on ADDR mode=MODE workers=N`.
pub fn parse_first_line(line: &str) -> Option<(SocketAddr, String, usize)> {
    let rest = line.trim().strip_prefix("listening on ")?;
    let mut parts = rest.split_whitespace();
    let addr = parts.next()?.parse().ok()?;
    let mode = parts.next()?.strip_prefix("mode=")?.to_owned();
    let workers = parts.next()?.strip_prefix("workers=")?.parse().ok()?;
    Some((addr, mode, workers))
}

impl Server {
    /// Starts `bin --mode PEER --workers N --addr 127.0.0.1:0 EXTRA..` (`extra`: e.g. ntex's
    /// `--balancing`), on `cpus` when given, and waits for its first line. The server's stderr
    /// goes to `log`.
    pub fn start(
        bin: &Path,
        peer: Peer,
        workers: usize,
        log: &Path,
        extra: &[String],
        cpus: Option<&CpuList>,
    ) -> io::Result<Server> {
        let log_file = std::fs::File::create(log)?;
        let mode = peer.to_string();
        let mut cmd = Command::new(bin);
        cmd.args(peer.server_args()).args(["--workers", &workers.to_string(), "--addr", "127.0.0.1:0"]);
        cmd.args(extra);
        if let Some(cpus) = cpus {
            cpus.apply_to(&mut cmd)?;
        }
        // Where eBPF is required (CI), a `hermes` peer that fell back to
        // kernel hashing must fail to start rather than be measured as hermes.
        if peer.needs_ebpf() && std::env::var_os("HERMES_REQUIRE_BPF").is_some_and(|v| v == "1") {
            cmd.arg("--require-ebpf");
        }
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(log_file)
            .spawn()
            .map_err(|e| io::Error::new(e.kind(), format!("starting {}: {e}", bin.display())))?;
        let stdout = child.stdout.take().expect("piped stdout");
        let (tx, rx) = mpsc::channel();
        // Reads the first line, then keeps draining stdout so the server never blocks on it.
        std::thread::spawn(move || {
            let mut lines = BufReader::new(stdout).lines();
            let first = lines.next();
            let _ = tx.send(first);
            for _ in lines {}
        });
        let fail = |child: &mut Child, msg: String| {
            let _ = child.kill();
            let _ = child.wait();
            Err(io::Error::other(format!("{msg} (server log: {})", log.display())))
        };
        match rx.recv_timeout(Duration::from_secs(15)) {
            Ok(Some(Ok(line))) => match parse_first_line(&line) {
                Some((addr, announced, n)) => {
                    if !addr.ip().is_loopback() {
                        return fail(&mut child, format!("server listens on {addr}, not loopback"));
                    }
                    Ok(Server { child, addr, mode: announced, workers: n })
                }
                None => fail(&mut child, format!("unexpected first line from --mode {mode}: {line:?}")),
            },
            Ok(_) => fail(&mut child, format!("--mode {mode} exited before announcing its address")),
            Err(_) => fail(&mut child, format!("--mode {mode} did not announce its address within 15 s")),
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_contract_first_line() {
        let (addr, mode, n) =
            parse_first_line("listening on 127.0.0.1:4000 mode=hermes workers=2\n").unwrap();
        assert_eq!(addr, "127.0.0.1:4000".parse::<SocketAddr>().unwrap());
        assert_eq!((mode.as_str(), n), ("hermes", 2));
        assert!(parse_first_line("listening at 127.0.0.1:4000").is_none());
        assert!(parse_first_line("listening on 127.0.0.1:4000 mode=hermes").is_none());
    }

    #[test]
    fn peers_keep_their_command_line_spellings() {
        let names: Vec<String> = Peer::value_variants().iter().map(Peer::to_string).collect();
        assert_eq!(
            names,
            [
                "hermes",
                "hermes-local",
                "hermes-userspace",
                "hermes-pinned",
                "hermes-unpinned",
                "hermes-locality",
                "reuseport",
                "shared",
                "tokio",
                "actix",
                "ntex"
            ]
        );
        assert_eq!(Peer::Ntex.binary(), Binary::Ntex);
        assert_eq!(Peer::Actix.binary(), Binary::Actix);
        assert_eq!(Peer::HermesLocal.binary(), Binary::Workload);
        assert_eq!(Peer::HermesUserspace.binary(), Binary::Workload);
    }

    #[test]
    fn each_peer_names_its_server_mode() {
        assert_eq!(Peer::HermesUserspace.server_args(), ["--mode", "hermes-userspace"]);
        assert_eq!(Peer::HermesPinned.server_args(), ["--mode", "hermes", "--pin", "on"]);
        assert_eq!(Peer::HermesUnpinned.server_args(), ["--mode", "hermes", "--pin", "off"]);
        assert_eq!(Peer::Actix.server_args(), ["--mode", "actix"]);
        // The userspace peer runs without the program, so it never asks for it.
        assert!(!Peer::HermesUserspace.needs_ebpf());
        assert!(Peer::HermesUnpinned.needs_ebpf());
        assert_eq!(Peer::HermesLocality.server_args(), ["--mode", "hermes", "--locality", "on"]);
        assert!(Peer::HermesLocality.needs_ebpf());
    }
}
