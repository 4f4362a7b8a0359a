//! The context of one invocation, [`Bench`]: what every run shares (workers, the reports' folder,
//! the servers' binaries, the generator's runtime, the scenarios' size and rate), and the
//! interleaved runs of a scenario.

use std::path::{Path, PathBuf};

use tokio::runtime::Runtime;

use crate::Args;
use crate::measure::PeerRun;
use crate::peer::{self, Binary, Peer};
use crate::report::PeerRow;
use crate::scenario::{self, Scenario, Size};

/// A server binary: its path, or why there is none (its build failed); `None` when no peer asked
/// needs it.
type Built = Option<Result<PathBuf, String>>;

/// Everything shared by the runs of one invocation.
#[derive(Debug)]
pub struct Bench {
    /// Workers per server.
    pub workers: usize,
    /// The folder of the reports and `logs/`.
    pub out: PathBuf,
    /// The peers, in the order asked for (the reports keep it).
    pub peers: Vec<Peer>,
    /// Runs of each scenario per peer.
    pub repeat: usize,
    /// How long the scenarios run.
    pub size: Size,
    /// Multiplies every scenario's arrival rate.
    pub rate_scale: f64,
    /// Threads of the generator's runtime.
    pub client_threads: usize,
    /// The generator's runtime.
    pub rt: Runtime,
    /// What every report starts with: the command, the machine, how heavy work is emulated.
    pub header: String,
    workload_bin: Built,
    ntex_bin: Built,
}

impl Bench {
    /// Checks the arguments, starts the generator's runtime and finds (or builds) the binaries
    /// the peers need; `command` is the arguments as given.
    pub fn new(args: &Args, command: &[String]) -> Result<Bench, String> {
        if args.rate_scale.is_nan() || args.rate_scale <= 0.0 {
            return Err(format!("--rate-scale must be positive, got {}", args.rate_scale));
        }
        let workers = args
            .workers
            .unwrap_or_else(|| std::thread::available_parallelism().map(|n| n.get()).unwrap_or(2));
        if workers == 0 {
            return Err("--workers must be at least 1".to_owned());
        }
        if args.client_threads == 0 {
            return Err("--client-threads must be at least 1".to_owned());
        }
        let rt = if args.client_threads == 1 {
            tokio::runtime::Builder::new_current_thread().enable_all().build()
        } else {
            tokio::runtime::Builder::new_multi_thread()
                .worker_threads(args.client_threads)
                .enable_all()
                .build()
        }
        .map_err(|e| format!("starting the generator's runtime: {e}"))?;
        let header = format!(
            "Run: `hermes-bench {}` on {}; {workers} workers per server; load generator: {} thread(s) \
             sharing the machine with the server.\n\n{}",
            command.join(" "),
            machine(),
            args.client_threads,
            scenario::EMULATION_NOTE
        );
        // Binaries: given, or built once.
        let needs_workload = args.validate || args.peers.iter().any(|p| p.binary() == Binary::Workload);
        let workload_bin = needs_workload.then(|| given_or_built(&args.workload_bin, peer::build_workload));
        let needs_ntex = args.runs_scenarios() && args.peers.contains(&Peer::Ntex);
        let ntex_bin = needs_ntex.then(|| given_or_built(&args.ntex_bin, peer::build_ntex));
        for (what, built) in [("workload", &workload_bin), ("ntex", &ntex_bin)] {
            if let Some(Err(e)) = built {
                eprintln!("warning: {what}: {e}");
            }
        }
        Ok(Bench {
            workers,
            out: args.out.clone(),
            peers: args.peers.clone(),
            repeat: args.repeat as usize,
            size: args.size(),
            rate_scale: args.rate_scale,
            client_threads: args.client_threads,
            rt,
            header,
            workload_bin,
            ntex_bin,
        })
    }

    /// The `hermes-workload` binary, when it was given or built.
    pub fn workload_bin(&self) -> Option<&Path> {
        self.workload_bin.as_ref()?.as_deref().ok()
    }

    /// The binary serving `peer`, or why there is none.
    pub fn binary(&self, peer: Peer) -> Result<&Path, String> {
        let (bin, what) = match peer.binary() {
            Binary::Workload => (&self.workload_bin, "workload"),
            Binary::Ntex => (&self.ntex_bin, "ntex"),
        };
        match bin {
            Some(Ok(path)) => Ok(path),
            Some(Err(e)) => Err(e.clone()),
            None => Err(format!("no {what} binary")),
        }
    }

    /// Runs every peer on the scenario, `repeat` times; returns one row per peer, in the order
    /// asked for.
    pub fn run_scenario(&self, scenario: &Scenario) -> Vec<PeerRow> {
        let mut rows: Vec<PeerRow> = self.peers.iter().map(|&p| PeerRow::new(p)).collect();
        let n = self.peers.len();
        let name = scenario.name;
        for run in 0..self.repeat {
            // Every peer runs once per repeat, so drift in the machine's other load hits them
            // alike; the order is rotated per scenario and repeat so that no peer always runs
            // first. The report keeps the given order.
            let offset = (name.index() + run) % n.max(1);
            for &peer in self.peers.iter().cycle().skip(offset).take(n) {
                let r = self.run_peer(&PeerRun { scenario, peer, run });
                eprintln!(
                    "  {name}/{peer} (run {}/{}): {}",
                    run + 1,
                    self.repeat,
                    r.failure.clone().unwrap_or_else(|| format!(
                        "{:.0} req/s, p99 {:.2} ms, {} errors",
                        r.throughput, r.p99_ms, r.errors
                    ))
                );
                if let Some(row) = rows.iter_mut().find(|row| row.peer == peer) {
                    row.runs.push(r);
                }
            }
        }
        rows
    }
}

/// The binary given on the command line, or else the one `build` builds.
fn given_or_built(
    given: &Option<PathBuf>,
    build: fn() -> std::io::Result<PathBuf>,
) -> Result<PathBuf, String> {
    match given {
        Some(path) => Ok(path.clone()),
        None => build().map_err(|e| e.to_string()),
    }
}

/// The machine, for the reports' header: cores, CPU model and kernel.
fn machine() -> String {
    let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .map(|l| l.split(':').nth(1).unwrap_or("").trim().to_owned())
        })
        .unwrap_or_default();
    format!("{cores} cores ({cpu}), Linux {}", kernel.trim())
}
