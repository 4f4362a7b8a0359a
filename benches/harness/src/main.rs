//! `hermes-bench`: starts the workload server once per peer and run, drives it with an open-loop
//! load generator, and writes a markdown table and an SVG chart per scenario, and `summary.json`.
//!
//! ```text
//! cargo run --release -p hermes-bench -- --scenario mixed --quick
//! cargo run --release -p hermes-bench -- --scenario mixed,skew,h2 --quick --repeat 3
//! cargo run --release -p hermes-bench -- --scenario all --quick --peers hermes,reuseport,shared,tokio,ntex
//! cargo run --release -p hermes-bench -- --smoke
//! cargo run --release -p hermes-bench -- --validate
//! ```

mod bench;
mod load;
mod measure;
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
use crate::peer::Peer;
use crate::report::{ScenarioReport, Summary};
use crate::scenario::{Choice, Name, Size};

/// Side-by-side evaluation of Hermes against the servers users would pick instead.
#[derive(Debug, Parser)]
#[command(version)]
struct Args {
    /// Comma-separated scenarios; all runs every one [default: mixed; light with --smoke].
    #[arg(long, value_delimiter = ',')]
    scenario: Option<Vec<Choice>>,
    /// Runs each scenario N times (the peers interleaved within each run) and reports the median
    /// and the spread of each figure.
    #[arg(long, value_name = "N", default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..))]
    repeat: u32,
    /// Comma-separated peers; hermes-local is Hermes with every request kept on its connection's
    /// worker, for comparison with placement; hermes-locality is Hermes with locality on (the
    /// worker on the CPU that received the connection first), for comparison with hermes.
    #[arg(long, value_delimiter = ',', default_value = "hermes,reuseport,shared,tokio,ntex")]
    peers: Vec<Peer>,
    /// Workers per server (default: the available cores).
    #[arg(long)]
    workers: Option<usize>,
    /// Folder for the reports (SCENARIO.md, SCENARIO.svg, summary.md, summary.json, logs/).
    #[arg(long, default_value = "results")]
    out: PathBuf,
    /// Short runs: every scenario for every peer in under 5 minutes on a 2-core machine.
    #[arg(long)]
    quick: bool,
    /// A few seconds: one scenario, all the peers; fails unless every peer served in every run and
    /// the reports and summary.json were written.
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
            None if self.smoke => vec![Choice::One(Name::Light)],
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
    if args.runs_scenarios() {
        for &name in &scenarios {
            all_ok &= run_scenario(&bench, name, &mut summaries, args.smoke)?;
        }
    }
    summaries.write()?;
    if args.smoke && !report::has_every_figure(&summaries.json_path, &scenarios, &bench.peers) {
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

/// Runs one scenario for every peer, writes its reports and adds them to the summaries; returns
/// false when `smoke` and a peer did not serve in every run or a report is missing.
fn run_scenario(bench: &Bench, name: Name, summaries: &mut Summaries, smoke: bool) -> Result<bool, String> {
    let sc = scenario::build(name, bench.size, bench.rate_scale);
    let mut rows = bench.run_scenario(&sc);
    if name == Name::H2
        && let Some(note) = validate::h2load_note(bench)
        && let Some(r) = rows.iter_mut().find(|r| r.peer == peer::BASELINE)
    {
        r.notes.push(note);
    }
    let name_text = name.to_string();
    let scenario_report =
        ScenarioReport { name: &name_text, description: sc.description, header: &bench.header, rows: &rows };
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
        for r in &rows {
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
