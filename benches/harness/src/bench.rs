//! The context of one invocation, [`Bench`]: what every run shares (workers, the reports' folder,
//! the servers' binaries, the generator's runtime, the scenarios' size and rate), and the
//! interleaved runs of a scenario.

use std::path::{Path, PathBuf};

use tokio::runtime::Runtime;

use crate::Args;
use crate::cpus::CpuList;
use crate::measure::PeerRun;
use crate::modes::Balancing;
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
    /// ntex's balancing mode: one, or the best of them per scenario (`auto`).
    pub ntex_balancing: Balancing,
    /// The CPUs the servers start on (`--server-cpus`); `None`: every CPU the harness may use.
    pub server_cpus: Option<CpuList>,
    workload_bin: Built,
    ntex_bin: Built,
    actix_bin: Built,
}

impl Bench {
    /// Checks the arguments, starts the generator's runtime and finds (or builds) the binaries
    /// the peers need; `command` is the arguments as given.
    pub fn new(args: &Args, command: &[String]) -> Result<Bench, String> {
        if args.rate_scale.is_nan() || args.rate_scale <= 0.0 {
            return Err(format!("--rate-scale must be positive, got {}", args.rate_scale));
        }
        let workers = match (args.workers, &args.server_cpus) {
            (Some(n), _) => n,
            (None, Some(cpus)) => cpus.len(),
            (None, None) => std::thread::available_parallelism().map(|n| n.get()).unwrap_or(2),
        };
        if workers == 0 {
            return Err("--workers must be at least 1".to_owned());
        }
        if args.client_threads == 0 {
            return Err("--client-threads must be at least 1".to_owned());
        }
        // Binaries: given, or built once (on every CPU: the builds come before the generator's
        // CPUs are set).
        let needs_workload = args.validate || args.peers.iter().any(|p| p.binary() == Binary::Workload);
        let workload_bin = needs_workload.then(|| given_or_built(&args.workload_bin, peer::build_workload));
        let needs = |p: Peer| args.runs_scenarios() && args.peers.contains(&p);
        let ntex_bin = needs(Peer::Ntex).then(|| given_or_built(&args.ntex_bin, peer::build_ntex));
        let actix_bin = needs(Peer::Actix).then(|| given_or_built(&args.actix_bin, peer::build_actix));
        for (what, built) in [("workload", &workload_bin), ("ntex", &ntex_bin), ("actix", &actix_bin)] {
            if let Some(Err(e)) = built {
                eprintln!("warning: {what}: {e}");
            }
        }
        // Before the generator's runtime starts, so that its threads inherit the CPUs (and
        // after reading the machine's core count, which they change).
        let machine = machine();
        if let Some(cpus) = &args.client_cpus {
            cpus.apply_here()?;
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
             {}.\n\n{}",
            command.join(" "),
            machine,
            args.client_threads,
            placement(args),
            scenario::EMULATION_NOTE
        );
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
            ntex_balancing: args.ntex_balancing,
            server_cpus: args.server_cpus.clone(),
            workload_bin,
            ntex_bin,
            actix_bin,
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
            Binary::Actix => (&self.actix_bin, "actix"),
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
        self.run_phase(scenario, "")
    }

    /// [`Bench::run_scenario`] for a phase of a scenario, `tag` naming it in the progress lines
    /// and the server logs (empty for a scenario's only phase).
    pub fn run_phase(&self, scenario: &Scenario, tag: &str) -> Vec<PeerRow> {
        let mut rows: Vec<PeerRow> = self.peers.iter().map(|&p| PeerRow::new(p)).collect();
        // Each peer's mode for the scenario, chosen before its runs (ntex's by a probe).
        let launches: Vec<_> = self.peers.iter().map(|&p| self.launch(scenario, p, tag)).collect();
        for (row, launch) in rows.iter_mut().zip(&launches) {
            row.notes.extend(launch.notes.iter().cloned());
        }
        let n = self.peers.len();
        let name = scenario.name;
        for run in 0..self.repeat {
            // Every peer runs once per repeat, so drift in the machine's other load hits them
            // alike; the order is rotated per scenario and repeat so that no peer always runs
            // first. The report keeps the given order.
            let offset = (name.index() + run) % n.max(1);
            for i in (0..n).cycle().skip(offset).take(n) {
                let (peer, args) = (self.peers[i], launches[i].args.as_slice());
                let r = self.run_peer(&PeerRun { scenario, peer, run, args, tag });
                eprintln!(
                    "  {name}{tag}/{peer} (run {}/{}): {}",
                    run + 1,
                    self.repeat,
                    r.failure.clone().unwrap_or_else(|| format!(
                        "{:.0} req/s, p99 {:.2} ms, {} errors",
                        r.throughput, r.p99_ms, r.errors
                    ))
                );
                rows[i].runs.push(r);
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
/// Where the generator runs beside the servers, for the header.
fn placement(args: &Args) -> String {
    match (&args.client_cpus, &args.server_cpus) {
        (None, None) => "sharing the machine with the server".to_owned(),
        (client, server) => {
            let on = |cpus: &Option<CpuList>| {
                cpus.as_ref().map_or("every CPU".to_owned(), |c| format!("CPUs {c}"))
            };
            let own = matches!((client, server), (Some(c), Some(s)) if !c.overlaps(s));
            let shared = if own { "each on CPUs of its own" } else { "sharing CPUs" };
            format!("on {}, the servers on {} ({shared})", on(client), on(server))
        }
    }
}

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
