//! `hermes-bench`: starts the workload server once per peer, drives it with an open-loop load
//! generator, and writes a markdown table and an SVG chart per scenario.
//!
//! ```text
//! cargo run --release -p hermes-bench -- --scenario mixed --quick
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

use crate::report::PeerResult;
use crate::scenario::Size;

/// Side-by-side evaluation of Hermes against the servers users would pick instead.
#[derive(Debug, Parser)]
#[command(version)]
struct Args {
    /// Scenario to run: light, mixed, skew, churn, hang, h2, or all.
    #[arg(long, default_value = "mixed")]
    scenario: String,
    /// Comma-separated peers: hermes, reuseport, shared, tokio, ntex.
    #[arg(long, value_delimiter = ',', default_value = "hermes,reuseport,shared,tokio,ntex")]
    peers: Vec<String>,
    /// Workers per server (default: the available cores).
    #[arg(long)]
    workers: Option<usize>,
    /// Folder for the reports.
    #[arg(long, default_value = "results")]
    out: PathBuf,
    /// Short runs: every scenario for every peer in under 5 minutes on a 2-core machine.
    #[arg(long)]
    quick: bool,
    /// A few seconds: one scenario, all the peers; fails unless every peer served and the report
    /// was written.
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
    for p in &args.peers {
        if !peer::ALL.contains(&p.as_str()) {
            return Err(format!("unknown peer {p:?}; known peers: {}", peer::ALL.join(",")));
        }
    }
    let size = if args.smoke {
        Size::Smoke
    } else if args.quick {
        Size::Quick
    } else {
        Size::Full
    };
    let scenarios: Vec<&str> = if args.scenario == "all" {
        scenario::ALL.to_vec()
    } else if args.smoke && args.scenario == "mixed" && !std::env::args().any(|a| a.starts_with("--scenario"))
    {
        vec!["light"]
    } else {
        vec![args.scenario.as_str()]
    };
    for s in &scenarios {
        if scenario::build(s, size, 1.0).is_none() {
            return Err(format!("unknown scenario {s:?}; known: {} or all", scenario::ALL.join(", ")));
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
    let needs_workload =
        args.validate || args.peers.iter().any(|p| peer::binary_of(p) == peer::Binary::Workload);
    if needs_workload {
        match args.workload_bin.clone().map(Ok).unwrap_or_else(peer::build_workload) {
            Ok(p) => bench.workload_bin = Some(p),
            Err(e) => bench.build_errors.push(("workload".to_owned(), e.to_string())),
        }
    }
    let run_scenarios = !args.validate || std::env::args().any(|a| a.starts_with("--scenario"));
    if run_scenarios && args.peers.iter().any(|p| p == "ntex") {
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
            let sc = scenario::build(name, size, args.rate_scale).expect("checked above");
            // The peers run in an order rotated per scenario, so that drift in the machine's other
            // load does not always favour the same peer; the report keeps the given order.
            let mut results: Vec<PeerResult> = Vec::new();
            let n = args.peers.len();
            let offset = scenario::ALL.iter().position(|s| s == name).unwrap_or(0) % n.max(1);
            for p in args.peers.iter().cycle().skip(offset).take(n) {
                let r = bench.run_peer(&sc, p);
                eprintln!(
                    "  {name}/{p}: {}",
                    r.failure.clone().unwrap_or_else(|| format!(
                        "{:.0} req/s, p99 {:.2} ms, {} errors",
                        r.throughput, r.p99_ms, r.errors
                    ))
                );
                results.push(r);
            }
            results.sort_by_key(|r| args.peers.iter().position(|p| *p == r.peer));
            if *name == "h2"
                && let Some(note) = validate::h2load_note(&bench, &args.peers)
                && let Some(r) = results.iter_mut().find(|r| r.peer == peer::BASELINE)
            {
                r.notes.push(note);
            }
            let (md, chart) = report::write(&bench.out, name, sc.description, &bench.header, &results)
                .map_err(|e| format!("writing the {name} report: {e}"))?;
            let text = std::fs::read_to_string(&md).unwrap_or_default();
            println!("{text}");
            println!("(written: {} and {})\n", md.display(), chart.display());
            let _ = writeln!(summary, "{text}");
            if args.smoke {
                for r in &results {
                    if !r.served() {
                        eprintln!("smoke: peer {} did not serve in {name}", r.peer);
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
    let summary_path = bench.out.join("summary.md");
    std::fs::write(&summary_path, summary).map_err(|e| format!("writing {}: {e}", summary_path.display()))?;
    eprintln!("done in {:.0} s; summary: {}", started.elapsed().as_secs_f64(), summary_path.display());
    Ok(if all_ok || !(args.smoke || args.validate) { ExitCode::SUCCESS } else { ExitCode::FAILURE })
}

impl Bench {
    fn binary(&self, peer: &str) -> Result<&Path, String> {
        let (bin, what) = match peer::binary_of(peer) {
            peer::Binary::Workload => (&self.workload_bin, "workload"),
            peer::Binary::Ntex => (&self.ntex_bin, "ntex"),
        };
        bin.as_deref().ok_or_else(|| {
            self.build_errors
                .iter()
                .find(|(w, _)| w == what)
                .map(|(_, e)| e.clone())
                .unwrap_or_else(|| format!("no {what} binary"))
        })
    }

    /// Starts the peer's server, drives it with the scenario's plan, and gathers the figures.
    fn run_peer(&self, sc: &scenario::Scenario, name: &str) -> PeerResult {
        let mut r = PeerResult { peer: name.to_owned(), mode: name.to_owned(), ..Default::default() };
        let bin = match self.binary(name) {
            Ok(b) => b,
            Err(e) => {
                r.failure = Some(e);
                return r;
            }
        };
        let logs = self.out.join("logs");
        let _ = std::fs::create_dir_all(&logs);
        let server =
            match peer::Server::start(bin, name, self.workers, &logs.join(format!("{}-{name}.log", sc.name)))
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
        let seed = sc.name.bytes().fold(17u64, |h, b| h.wrapping_mul(31).wrapping_add(b as u64));
        let (before, outcome, after) = self.rt.block_on(async {
            let before = stats::fetch(addr).await;
            let outcome = load::run(addr, &sc.plan, seed).await;
            let after = stats::fetch(addr).await;
            (before, outcome, after)
        });
        drop(server);
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
