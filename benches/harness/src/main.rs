//! `hermes-bench`: starts the workload server once per peer and run, drives it with an open-loop
//! load generator, and writes a markdown table and an SVG chart per scenario, and `summary.json`.
//!
//! ```text
//! cargo run --release -p hermes-bench -- --scenario mixed --quick
//! cargo run --release -p hermes-bench -- --scenario mixed,skew,h2 --quick --repeat 3
//! cargo run --release -p hermes-bench -- --scenario all --quick --peers hermes,reuseport,shared,tokio,ntex
//! cargo run --release -p hermes-bench -- --scenario capacity,capacity-h2 --quick --peers hermes,hermes-userspace,tokio,actix,ntex
//! cargo run --release -p hermes-bench -- --smoke
//! cargo run --release -p hermes-bench -- --validate
//! ```

mod bench;
mod capacity;
mod cpus;
mod endpoints;
mod load;
mod measure;
mod modes;
mod peer;
mod progress;
mod report;
mod scenario;
mod stats;
mod validate;

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Instant;

use clap::Parser;

use crate::bench::Bench;
use crate::capacity::Phase;
use crate::cpus::CpuList;
use crate::modes::Balancing;
use crate::peer::Peer;
use crate::report::{ScenarioReport, Summary};
use crate::scenario::{Choice, Name, Size};

/// Side-by-side evaluation of Hermes against the servers users would pick instead.
#[derive(Debug, Parser)]
#[command(version)]
struct Args {
    /// Comma-separated scenarios; all runs every one [default: mixed; light,capacity,capacity-h2
    /// with --smoke].
    #[arg(long, value_delimiter = ',')]
    scenario: Option<Vec<Choice>>,
    /// Runs each scenario N times (the peers interleaved within each run) and reports the median
    /// and the spread of each figure.
    #[arg(long, value_name = "N", default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..))]
    repeat: u32,
    /// Comma-separated peers; hermes-local is Hermes with every request kept on its connection's
    /// worker, for comparison with placement; hermes runs the runtime's default pinning (pinned
    /// only when given some of the machine's CPUs, as with --server-cpus), hermes-pinned and
    /// hermes-unpinned set it; hermes-userspace is Hermes without its kernel program;
    /// hermes-locality is Hermes with locality on (the worker on the CPU that received the connection
    /// first), for comparison with hermes.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "hermes,hermes-userspace,reuseport,shared,tokio,actix,ntex"
    )]
    peers: Vec<Peer>,
    /// Workers per server (default: the available cores, or the CPUs of --server-cpus).
    #[arg(long)]
    workers: Option<usize>,
    /// CPUs the servers run on, as taskset -c takes them (0, 1-3, 0,2); their workers pin
    /// themselves among these [default: every CPU the harness may use].
    #[arg(long, value_name = "LIST")]
    server_cpus: Option<CpuList>,
    /// CPUs the load generator runs on, as taskset -c takes them; with --server-cpus on other
    /// CPUs, client and server each have cores of their own [default: every CPU].
    #[arg(long, value_name = "LIST")]
    client_cpus: Option<CpuList>,
    /// Folder for the reports (SCENARIO.md, SCENARIO.svg, SCENARIO-percentiles.svg, summary.md,
    /// summary.json, logs/).
    #[arg(long, default_value = "results")]
    out: PathBuf,
    /// Short runs: every scenario for the default peers in about 10 minutes on a 2-core machine.
    #[arg(long)]
    quick: bool,
    /// About a second per run, at a tenth of the rates: light, capacity and capacity-h2 unless
    /// --scenario says otherwise; fails unless every peer serves /, /block and /work, served in
    /// every run, and the reports and summary.json were written.
    #[arg(long, conflicts_with = "quick")]
    smoke: bool,
    /// Compares this generator's throughput with wrk's on `light` at the same connection count.
    #[arg(long)]
    validate: bool,
    /// The `hermes-workload` binary (default: build it with cargo).
    #[arg(long)]
    workload_bin: Option<PathBuf>,
    /// The ntex workload binary (default: build benches/ntex-workload with cargo).
    #[arg(long)]
    ntex_bin: Option<PathBuf>,
    /// The actix-web workload binary (default: build benches/actix-workload with cargo).
    #[arg(long)]
    actix_bin: Option<PathBuf>,
    /// ntex's load balancing; auto probes each mode briefly per scenario and runs the best.
    #[arg(long, value_enum, default_value_t = Balancing::Auto)]
    ntex_balancing: Balancing,
    /// Multiplies every scenario's arrival rate.
    #[arg(long, default_value_t = 1.0)]
    rate_scale: f64,
    /// Threads of the load generator's runtime.
    #[arg(long, default_value_t = 1)]
    client_threads: usize,
}

impl Args {
    /// How long and how hard to run.
    fn size(&self) -> Size {
        if self.smoke {
            Size::Smoke
        } else if self.quick {
            Size::Quick
        } else {
            Size::Full
        }
    }

    /// The scenarios asked for, each once, in the order first asked.
    fn scenarios(&self) -> Vec<Name> {
        let asked = match &self.scenario {
            Some(list) => list.clone(),
            None if self.smoke => [Name::Light, Name::Capacity, Name::CapacityH2].map(Choice::One).to_vec(),
            None => vec![Choice::One(Name::Mixed)],
        };
        let mut scenarios: Vec<Name> = Vec::new();
        for name in asked.into_iter().flat_map(Choice::names) {
            if !scenarios.contains(&name) {
                scenarios.push(name);
            }
        }
        scenarios
    }

    /// False for `--validate` alone, which runs no scenario.
    fn runs_scenarios(&self) -> bool {
        !self.validate || self.scenario.is_some()
    }
}

fn main() -> ExitCode {
    let args = Args::parse();
    match real_main(args) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("hermes-bench: {e}");
            ExitCode::FAILURE
        }
    }
}

fn real_main(args: Args) -> Result<ExitCode, String> {
    let scenarios = args.scenarios();
    let started = Instant::now();
    let command: Vec<String> = std::env::args().skip(1).collect();
    let bench = Bench::new(&args, &command)?;
    std::fs::create_dir_all(&bench.out).map_err(|e| format!("creating {}: {e}", bench.out.display()))?;
    let mut summaries = Summaries::new(&bench.out, &command);
    let mut all_ok = true;

    if args.validate {
        // One server worker by default, so the server (not a client) is the bottleneck.
        let text = validate::wrk_vs_ours(&bench, args.workers.unwrap_or(1))?;
        println!("{text}");
        let _ = writeln!(summaries.markdown, "{text}\n");
        all_ok &= text.contains("agree: yes");
    }
    // The reports written, by name: a scenario's, or each of its phases'.
    let mut reported: Vec<String> = Vec::new();
    if args.smoke && args.runs_scenarios() {
        let failures = bench.check_endpoints();
        for failure in &failures {
            eprintln!("smoke: {failure}");
        }
        if failures.is_empty() {
            eprintln!("smoke: every peer serves /, /block and /work");
        }
        all_ok &= failures.is_empty();
    }
    if args.runs_scenarios() {
        for &name in &scenarios {
            all_ok &= run_scenario(&bench, name, &mut summaries, args.smoke, &mut reported)?;
        }
    }
    summaries.write()?;
    if args.smoke && !report::has_every_figure(&summaries.json_path, &reported, &bench.peers) {
        all_ok = false;
    }
    eprintln!(
        "done in {:.0} s; summary: {} and {}",
        started.elapsed().as_secs_f64(),
        summaries.md_path.display(),
        summaries.json_path.display()
    );
    Ok(if all_ok || !(args.smoke || args.validate) { ExitCode::SUCCESS } else { ExitCode::FAILURE })
}

/// Runs one scenario for every peer, writes its reports (one per phase) and adds them to the
/// summaries and their names to `reported`; returns false when `smoke` and a peer did not serve
/// in every run or a report is missing.
fn run_scenario(
    bench: &Bench,
    name: Name,
    summaries: &mut Summaries,
    smoke: bool,
    reported: &mut Vec<String>,
) -> Result<bool, String> {
    let sc = scenario::build(name, bench.size, bench.rate_scale);
    let mut phases = if name.is_capacity() {
        bench.run_capacity(&sc)
    } else {
        vec![Phase::whole(&sc, bench.run_scenario(&sc))]
    };
    if name == Name::H2
        && let Some(note) = validate::h2load_note(bench)
        && let Some(r) = phases[0].rows.iter_mut().find(|r| r.peer == peer::BASELINE)
    {
        r.notes.push(note);
    }
    let mut ok = true;
    for phase in &phases {
        ok &= write_phase(bench, phase, summaries, smoke)?;
        reported.push(phase.name.clone());
    }
    Ok(ok)
}

/// Writes one report and adds it to the summaries; returns false when `smoke` and a peer did not
/// serve in every run or a report is missing.
fn write_phase(bench: &Bench, phase: &Phase, summaries: &mut Summaries, smoke: bool) -> Result<bool, String> {
    let Phase { name, description, rows } = phase;
    let scenario_report = ScenarioReport { name, description, header: &bench.header, rows };
    let (md, chart) =
        report::write(&bench.out, &scenario_report).map_err(|e| format!("writing the {name} report: {e}"))?;
    let text = std::fs::read_to_string(&md).unwrap_or_default();
    println!("{text}");
    println!("(written: {} and {})\n", md.display(), chart.display());
    let _ = writeln!(summaries.markdown, "{text}");
    summaries.json.add(&scenario_report, bench.workers);
    // Written after every scenario, so a long run that is stopped keeps what it measured.
    summaries.write()?;
    let mut ok = true;
    if smoke {
        for r in rows {
            if !r.served_every_run() {
                eprintln!("smoke: peer {} did not serve in every run of {name}", r.peer);
                ok = false;
            }
        }
        if !md.exists() || !chart.exists() {
            eprintln!("smoke: the report for {name} was not written");
            ok = false;
        }
    }
    Ok(ok)
}

/// `summary.md` and `summary.json`: every report so far.
#[derive(Debug)]
struct Summaries {
    markdown: String,
    json: Summary,
    md_path: PathBuf,
    json_path: PathBuf,
}

impl Summaries {
    fn new(out: &Path, command: &[String]) -> Self {
        Self {
            markdown: "# hermes-bench results\n\n".to_owned(),
            json: Summary::new(command),
            md_path: out.join("summary.md"),
            json_path: out.join("summary.json"),
        }
    }

    fn write(&self) -> Result<(), String> {
        std::fs::write(&self.md_path, &self.markdown)
            .map_err(|e| format!("writing {}: {e}", self.md_path.display()))?;
        self.json.write(&self.json_path)
    }
}
