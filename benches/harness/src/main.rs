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

mod load;
mod peer;
mod report;
mod scenario;
mod stats;
mod validate;

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Instant;

use clap::Parser;

use crate::peer::{Binary, Peer};
use crate::report::{PeerResult, PeerRow, Placement, ScenarioReport, Summary};
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
    /// worker, for comparison with placement.
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

/// Everything shared by the runs of one invocation.
#[derive(Debug)]
struct Bench {
    workers: usize,
    out: PathBuf,
    workload_bin: Option<PathBuf>,
    ntex_bin: Option<PathBuf>,
    build_errors: Vec<(String, String)>,
    rt: tokio::runtime::Runtime,
    header: String,
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

fn real_main(args: Args) -> Result<ExitCode, String> {
    let size = if args.smoke {
        Size::Smoke
    } else if args.quick {
        Size::Quick
    } else {
        Size::Full
    };
    let asked = match &args.scenario {
        Some(list) => list.clone(),
        None if args.smoke => vec![Choice::One(Name::Light)],
        None => vec![Choice::One(Name::Mixed)],
    };
    let mut scenarios: Vec<Name> = Vec::new();
    for name in asked.into_iter().flat_map(Choice::names) {
        if !scenarios.contains(&name) {
            scenarios.push(name);
        }
    }
    if args.rate_scale.is_nan() || args.rate_scale <= 0.0 {
        return Err(format!("--rate-scale must be positive, got {}", args.rate_scale));
    }
    let workers =
        args.workers.unwrap_or_else(|| std::thread::available_parallelism().map(|n| n.get()).unwrap_or(2));
    if workers == 0 {
        return Err("--workers must be at least 1".to_owned());
    }
    if args.client_threads == 0 {
        return Err("--client-threads must be at least 1".to_owned());
    }

    let started = Instant::now();
    let mut bench = Bench {
        workers,
        out: args.out.clone(),
        workload_bin: None,
        ntex_bin: None,
        build_errors: Vec::new(),
        rt: if args.client_threads == 1 {
            tokio::runtime::Builder::new_current_thread().enable_all().build()
        } else {
            tokio::runtime::Builder::new_multi_thread()
                .worker_threads(args.client_threads)
                .enable_all()
                .build()
        }
        .map_err(|e| format!("starting the generator's runtime: {e}"))?,
        header: String::new(),
    };
    let command: Vec<String> = std::env::args().skip(1).collect();
    bench.header = format!(
        "Run: `hermes-bench {}` on {}; {workers} workers per server; load generator: {} thread(s) \
         sharing the machine with the server.\n\n{}",
        command.join(" "),
        machine(),
        args.client_threads,
        scenario::EMULATION_NOTE
    );

    // Binaries: given, or built once.
    let needs_workload = args.validate || args.peers.iter().any(|p| p.binary() == Binary::Workload);
    if needs_workload {
        match args.workload_bin.clone().map(Ok).unwrap_or_else(peer::build_workload) {
            Ok(p) => bench.workload_bin = Some(p),
            Err(e) => bench.build_errors.push(("workload".to_owned(), e.to_string())),
        }
    }
    let run_scenarios = !args.validate || args.scenario.is_some();
    if run_scenarios && args.peers.contains(&Peer::Ntex) {
        match args.ntex_bin.clone().map(Ok).unwrap_or_else(peer::build_ntex) {
            Ok(p) => bench.ntex_bin = Some(p),
            Err(e) => bench.build_errors.push(("ntex".to_owned(), e.to_string())),
        }
    }
    for (what, e) in &bench.build_errors {
        eprintln!("warning: {what}: {e}");
    }

    std::fs::create_dir_all(&bench.out).map_err(|e| format!("creating {}: {e}", bench.out.display()))?;
    let mut all_ok = true;
    let mut summary = String::new();
    let _ = writeln!(summary, "# hermes-bench results\n");
    let mut summary_json = Summary::new(&command);
    let summary_path = bench.out.join("summary.md");
    let json_path = bench.out.join("summary.json");

    if args.validate {
        let bin = bench.workload_bin.clone().ok_or("--validate needs the workload binary")?;
        // One server worker by default, so the server (not a client) is the bottleneck.
        let server_workers = args.workers.unwrap_or(1);
        let text = validate::wrk_vs_ours(&bench.rt, &bin, server_workers, args.client_threads, &bench.out)?;
        println!("{text}");
        let _ = writeln!(summary, "{text}\n");
        all_ok &= text.contains("agree: yes");
    }

    if run_scenarios {
        for name in &scenarios {
            let sc = scenario::build(*name, size, args.rate_scale);
            let mut rows: Vec<PeerRow> = args.peers.iter().map(|&p| PeerRow::new(p)).collect();
            let n = args.peers.len();
            let index = name.index();
            for run in 0..args.repeat as usize {
                // Every peer runs once per repeat, so drift in the machine's other load hits them
                // alike; the order is rotated per scenario and repeat so that no peer always runs
                // first. The report keeps the given order.
                let offset = (index + run) % n.max(1);
                for p in args.peers.iter().cycle().skip(offset).take(n) {
                    let r = bench.run_peer(&sc, *p, run);
                    eprintln!(
                        "  {name}/{p} (run {}/{}): {}",
                        run + 1,
                        args.repeat,
                        r.failure.clone().unwrap_or_else(|| format!(
                            "{:.0} req/s, p99 {:.2} ms, {} errors",
                            r.throughput, r.p99_ms, r.errors
                        ))
                    );
                    if let Some(row) = rows.iter_mut().find(|row| row.peer == *p) {
                        row.runs.push(r);
                    }
                }
            }
            if *name == Name::H2
                && let Some(note) = validate::h2load_note(&bench, &args.peers)
                && let Some(r) = rows.iter_mut().find(|r| r.peer == peer::BASELINE)
            {
                r.notes.push(note);
            }
            let name_text = name.to_string();
            let scenario_report = ScenarioReport {
                name: &name_text,
                description: sc.description,
                header: &bench.header,
                rows: &rows,
            };
            let (md, chart) = report::write(&bench.out, &scenario_report)
                .map_err(|e| format!("writing the {name} report: {e}"))?;
            let text = std::fs::read_to_string(&md).unwrap_or_default();
            println!("{text}");
            println!("(written: {} and {})\n", md.display(), chart.display());
            let _ = writeln!(summary, "{text}");
            summary_json.add(&scenario_report, bench.workers);
            // Written after every scenario, so a long run that is stopped keeps what it measured.
            std::fs::write(&summary_path, &summary)
                .map_err(|e| format!("writing {}: {e}", summary_path.display()))?;
            summary_json.write(&json_path)?;
            if args.smoke {
                for r in &rows {
                    if !r.served_every_run() {
                        eprintln!("smoke: peer {} did not serve in every run of {name}", r.peer);
                        all_ok = false;
                    }
                }
                if !md.exists() || !chart.exists() {
                    eprintln!("smoke: the report for {name} was not written");
                    all_ok = false;
                }
            }
        }
    }
    std::fs::write(&summary_path, summary).map_err(|e| format!("writing {}: {e}", summary_path.display()))?;
    summary_json.write(&json_path)?;
    if args.smoke && !report::has_every_figure(&json_path, &scenarios, &args.peers) {
        all_ok = false;
    }
    eprintln!(
        "done in {:.0} s; summary: {} and {}",
        started.elapsed().as_secs_f64(),
        summary_path.display(),
        json_path.display()
    );
    Ok(if all_ok || !(args.smoke || args.validate) { ExitCode::SUCCESS } else { ExitCode::FAILURE })
}

impl Bench {
    fn binary(&self, peer: Peer) -> Result<&Path, String> {
        let (bin, what) = match peer.binary() {
            Binary::Workload => (&self.workload_bin, "workload"),
            Binary::Ntex => (&self.ntex_bin, "ntex"),
        };
        bin.as_deref().ok_or_else(|| {
            self.build_errors
                .iter()
                .find(|(w, _)| w == what)
                .map(|(_, e)| e.clone())
                .unwrap_or_else(|| format!("no {what} binary"))
        })
    }

    /// Starts the peer's server, drives it with the scenario's plan, and gathers the figures of
    /// run `run` (the peers of one run share the arrival schedule; each run has its own).
    fn run_peer(&self, sc: &scenario::Scenario, peer: Peer, run: usize) -> PeerResult {
        let mut r = PeerResult { mode: peer.to_string(), ..Default::default() };
        let bin = match self.binary(peer) {
            Ok(b) => b,
            Err(e) => {
                r.failure = Some(e);
                return r;
            }
        };
        let logs = self.out.join("logs");
        let _ = std::fs::create_dir_all(&logs);
        let server =
            match peer::Server::start(bin, peer, self.workers, &logs.join(format!("{}-{peer}.log", sc.name)))
            {
                Ok(s) => s,
                Err(e) => {
                    r.failure = Some(e.to_string());
                    return r;
                }
            };
        r.mode = server.mode.clone();
        if server.workers != self.workers {
            r.notes
                .push(format!("asked for {} workers, the server announced {}", self.workers, server.workers));
        }
        let addr = server.addr;
        let seed = sc.name.to_string().bytes().fold(17u64, |h, b| h.wrapping_mul(31).wrapping_add(b as u64));
        let seed = seed.wrapping_add(run as u64 * 0x9E37_79B9);
        let pid = server.pid().to_string();
        let (before, outcome, after, cpu) = self.rt.block_on(async {
            let before = stats::fetch(addr).await;
            let cpu_before = (stats::cpu_seconds(&pid), stats::cpu_seconds("self"), Instant::now());
            let outcome = load::run(addr, &sc.plan, seed).await;
            let cpu_after = (stats::cpu_seconds(&pid), stats::cpu_seconds("self"), Instant::now());
            let after = stats::fetch(addr).await;
            (before, outcome, after, (cpu_before, cpu_after))
        });
        drop(server);
        let ((server0, gen0, t0), (server1, gen1, t1)) = cpu;
        let wall = t1.duration_since(t0).as_secs_f64().max(1e-9);
        r.server_cpu = server0.zip(server1).map(|(a, b)| (b - a) / wall / self.workers as f64);
        r.generator_cpu = gen0.zip(gen1).map(|(a, b)| (b - a) / wall);
        let outcome = match outcome {
            Ok(o) => o,
            Err(e) => {
                r.failure = Some(e.to_string());
                return r;
            }
        };
        if let Some(snapshot) = &after {
            let mode = snapshot.mode.as_deref().unwrap_or("not reported");
            match &snapshot.mode_reason {
                Some(reason) => r.notes.push(format!("stats mode: {mode} ({reason})")),
                None => r.notes.push(format!("stats mode: {mode}")),
            }
            let rescued: f64 =
                stats::delta(before.as_ref(), snapshot, |w| w.rescued).map_or(0.0, |d| d.iter().sum());
            if rescued > 0.0 {
                r.notes.push(format!("connections taken from a hung worker's listener: {rescued}"));
            }
        }
        if outcome.ok == 0 {
            let kinds =
                outcome.errors.iter().map(|(k, v)| format!("{k} ×{v}")).collect::<Vec<_>>().join(", ");
            r.failure = Some(format!("no successful response ({kinds})"));
            return r;
        }
        let ms = |q: f64| outcome.hist.value_at_quantile(q) as f64 / 1000.0;
        r.ok = outcome.ok;
        r.throughput = outcome.throughput();
        r.p50_ms = ms(0.5);
        r.p99_ms = ms(0.99);
        r.p999_ms = ms(0.999);
        r.max_ms = outcome.hist.max() as f64 / 1000.0;
        r.slow = outcome.slow;
        r.errors = outcome.error_count();
        r.error_kinds =
            outcome.errors.iter().map(|(k, v)| format!("{k} ×{v}")).collect::<Vec<_>>().join(", ");

        let from_stats = after.as_ref().and_then(|a| stats::delta(before.as_ref(), a, |w| w.accepted));
        let conns = match from_stats {
            Some(v) if stats::spread(&v).is_some() => {
                r.conn_source = "the stats endpoint (accepted during the run)";
                v
            }
            _ => {
                r.conn_source = "the x-hermes-worker header of each connection's first response";
                stats::from_headers(&outcome.conns_by_worker, self.workers)
            }
        };
        if let Some(s) = stats::spread(&conns) {
            r.conn_sd = Some(s.sd);
            r.conn_max_mean = Some(s.max_over_mean);
        }
        if let Some(busy) = after.as_ref().and_then(|a| stats::delta(before.as_ref(), a, |w| w.busy_ns)) {
            let ms: Vec<f64> = busy.iter().map(|ns| ns / 1e6).collect();
            r.busy_sd_ms = stats::spread(&ms).map(|s| s.sd);
        }
        r.offered_rps = outcome.offered_rate();
        r.wake_p99_ms = outcome.wake.value_at_quantile(0.99) as f64 / 1000.0;
        r.wake_max_ms = outcome.wake.max() as f64 / 1000.0;
        for (i, (stream, counts)) in sc.plan.streams.iter().zip(&outcome.streams).enumerate() {
            if let Some(label) = stream.label {
                let whole = |v: Vec<f64>| v.into_iter().map(|x| x as u64).collect();
                r.placements.push(Placement {
                    label: label.to_owned(),
                    conns: whole(stats::from_headers(&counts.conns_by_worker, self.workers)),
                    requests: whole(stats::from_headers(&counts.requests_by_worker, self.workers)),
                    p99_ms: counts.quantile_ms(0.99),
                    others_p99_ms: load::others_quantile_ms(&outcome.streams, i, 0.99),
                });
            }
        }
        let reqs = stats::from_headers(&outcome.requests_by_worker, self.workers);
        r.notes.push(format!(
            "requests per worker (header): {}",
            reqs.iter().map(|v| format!("{v:.0}")).collect::<Vec<_>>().join("/")
        ));
        if let Some(w) = &outcome.hung_worker {
            r.notes.push(format!("hung worker {w}, blocked {} time(s)", outcome.hangs));
        }
        r
    }
}
