//! `hermes-lb`: the Direct Server Return balancer as a program. Loads the
//! balancer (`dsr_balance` at tc ingress of `--interface`) for a VIP and its
//! servers, prints its settings as one JSON line, then, with `--stats`, one
//! JSON line of counters and per-server figures every `--stats-every-ms`,
//! until SIGINT or SIGTERM (which detach the program and print a last line).
//!
//! ```text
//! hermes-lb --interface eth0 --vip 198.51.100.10 --port 80 \
//!     --server 192.0.2.11=02:00:00:00:00:11,5eed0011 \
//!     --server 192.0.2.12=02:00:00:00:00:12,5eed0012 --stats
//! ```
//!
//! Each server's token (after the comma) is the secret its host's agent
//! sends with every metric (`HostSettings::token`, `hermes-workload
//! --dsr-token`); a metric without it is not learned.
//!
//! Needs root (or CAP_BPF and CAP_NET_ADMIN). The figures are those of
//! [`Balancer::counters`] and [`Balancer::server_stats`]; a program that
//! embeds the balancer exports the same as `metrics` with
//! [`Balancer::record_metrics`].

use std::{
    io::Write,
    net::Ipv4Addr,
    process::ExitCode,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use clap::{Parser, ValueEnum};
use hermes_dsr::{Backend, Balancer, BalancerSettings, Datapath, Policy, parse_mac, parse_token};
use serde_json::{Value, json};

/// A load-aware Direct Server Return balancer for Hermes hosts.
#[derive(Debug, Parser)]
#[command(name = "hermes-lb", version)]
struct Args {
    /// The interface that receives the VIP's packets and reaches the servers at L2.
    #[arg(long, value_name = "NAME")]
    interface: String,
    /// The virtual address clients connect to.
    #[arg(long, value_name = "ADDR")]
    vip: Ipv4Addr,
    /// The service port (0: every TCP port of the VIP).
    #[arg(long, value_name = "PORT", default_value_t = 0)]
    port: u16,
    /// A server: its address, the MAC of its interface on the segment, and
    /// the secret token its metrics carry (1 to 16 hex digits, not 0; the
    /// host's `--dsr-token`). Repeat for each.
    #[arg(long = "server", value_name = "ADDR=MAC,TOKEN", required = true, value_parser = parse_server)]
    servers: Vec<Backend>,
    /// A server whose in-band metric is older than this takes no new flows (ms).
    #[arg(long, value_name = "MS", default_value_t = 500)]
    max_stale_ms: u64,
    /// How new flows are placed.
    #[arg(long, value_enum, default_value_t = PolicyArg::Load)]
    policy: PolicyArg,
    /// Where the program runs on the interface: `tc` (ingress, `bpf_redirect`)
    /// or `xdp` (`XDP_TX`; on a veth, the peer must run an XDP program too).
    #[arg(long, value_name = "tc|xdp", default_value = "tc")]
    datapath: Datapath,
    /// Print the counters and per-server figures as JSON lines.
    #[arg(long)]
    stats: bool,
    /// How often `--stats` prints (ms).
    #[arg(long, value_name = "MS", default_value_t = 1000, value_parser = clap::value_parser!(u64).range(1..))]
    stats_every_ms: u64,
}

/// The new-flow policy.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum PolicyArg {
    /// The less loaded of the flow's Maglev server and another fresh server by the in-band
    /// metric (ties to the Maglev server); Maglev when all are stale.
    Load,
    /// Maglev consistent hashing always.
    Hash,
}

fn parse_server(s: &str) -> Result<Backend, String> {
    let (addr, rest) = s.split_once('=').ok_or_else(|| format!("{s:?}: expected ADDR=MAC,TOKEN"))?;
    let (mac, token) = rest.split_once(',').ok_or_else(|| {
        format!("{s:?}: expected ADDR=MAC,TOKEN (the server's secret token, as its host has it)")
    })?;
    let addr = addr.parse().map_err(|e| format!("{addr:?}: {e}"))?;
    Ok(Backend { addr, mac: parse_mac(mac)?, token: parse_token(token)? })
}

fn mac_str(m: [u8; 6]) -> String {
    m.iter().map(|b| format!("{b:02x}")).collect::<Vec<_>>().join(":")
}

/// The interface's own MAC, the source of the frames the balancer forwards.
fn interface_mac(name: &str) -> Result<[u8; 6], String> {
    let path = format!("/sys/class/net/{name}/address");
    let text =
        std::fs::read_to_string(&path).map_err(|e| format!("interface {name:?}: reading {path}: {e}"))?;
    parse_mac(text.trim())
}

fn settings_json(args: &Args, settings: &BalancerSettings) -> Value {
    json!({
        "settings": {
            "interface": args.interface,
            "vip": settings.vip.to_string(),
            "port": settings.port,
            "own_mac": mac_str(settings.own_mac),
            "max_stale_ms": settings.max_stale.as_millis() as u64,
            "policy": match args.policy { PolicyArg::Load => "load", PolicyArg::Hash => "hash" },
            "datapath": match args.datapath { Datapath::Tc => "tc", Datapath::Xdp => "xdp" },
            "servers": args.servers.iter().map(|b| json!({"addr": b.addr.to_string(), "mac": mac_str(b.mac)})).collect::<Vec<_>>(),
        }
    })
}

fn stats_json(balancer: &Balancer, started: Instant) -> Value {
    let c = balancer.counters();
    let servers: Vec<Value> = balancer
        .server_stats()
        .iter()
        .map(|s| {
            json!({
                "addr": s.addr.map(|a| a.to_string()),
                "load": s.load,
                "eligible": s.eligible,
                // JSON has no infinity: no metric yet reads null.
                "metric_age_ms": s.metric_age_ms.is_finite().then_some(s.metric_age_ms),
                "feedbacks": s.feedbacks,
                "new_flows": s.new_flows,
                "packets": s.packets,
            })
        })
        .collect();
    json!({
        "uptime_ms": started.elapsed().as_millis() as u64,
        "counters": {
            "forwarded": c.forwarded,
            "new_flows": c.new_flows,
            "fallback_stale": c.fallback_stale,
            "drained": c.drained,
            "no_flow": c.no_flow,
            "feedback": c.feedback,
            "feedback_unknown": c.feedback_unknown,
            "feedback_rejected": c.feedback_rejected,
            "reply_seen": c.reply_seen,
            "passed": c.passed,
            "hashed": c.hashed,
            "recoverable": c.recoverable,
            "promoted": c.promoted,
            "fragments": c.fragments,
            "fragments_unmatched": c.fragments_unmatched,
        },
        "servers": servers,
    })
}

fn print_line(v: &Value) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{v}");
    let _ = out.flush();
}

fn main() -> ExitCode {
    let args = Args::parse();
    let own_mac = match interface_mac(&args.interface) {
        Ok(mac) => mac,
        Err(e) => {
            eprintln!("hermes-lb: {e}");
            return ExitCode::FAILURE;
        }
    };
    let settings = BalancerSettings {
        vip: args.vip,
        port: args.port,
        own_mac,
        max_stale: Duration::from_millis(args.max_stale_ms),
        policy: match args.policy {
            PolicyArg::Load => Policy::Load,
            PolicyArg::Hash => Policy::Hash,
        },
    };
    let mut balancer = match Balancer::load(&settings, &args.servers) {
        Ok(b) => b,
        Err(e) => {
            eprintln!("hermes-lb: loading the balancer program: {}", e);
            return ExitCode::FAILURE;
        }
    };
    if let Err(e) = balancer.attach_with(&args.interface, args.datapath) {
        eprintln!("hermes-lb: attaching to {}: {}", args.interface, e);
        return ExitCode::FAILURE;
    }
    print_line(&settings_json(&args, &settings));

    let stop = Arc::new(AtomicBool::new(false));
    for signal in [libc::SIGINT, libc::SIGTERM] {
        // A flag the loop below polls: the signal handler does nothing else.
        if let Err(e) = signal_hook_flag(signal, stop.clone()) {
            eprintln!("hermes-lb: installing the signal handler: {e}");
            return ExitCode::FAILURE;
        }
    }
    let started = Instant::now();
    let every = Duration::from_millis(args.stats_every_ms);
    let mut next = Instant::now() + every;
    // Acquire pairs with the handler's store; the flag carries no data beyond itself.
    while !stop.load(Ordering::Acquire) {
        std::thread::sleep(Duration::from_millis(10).min(every));
        if args.stats && Instant::now() >= next {
            print_line(&stats_json(&balancer, started));
            next += every;
        }
    }
    if args.stats {
        print_line(&stats_json(&balancer, started));
    }
    // Dropping the balancer detaches its program from the interface.
    drop(balancer);
    ExitCode::SUCCESS
}

/// Sets `flag` when `signal` arrives, with tokio's signal support on a
/// small runtime thread.
fn signal_hook_flag(signal: i32, flag: Arc<AtomicBool>) -> std::io::Result<()> {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let kind = tokio::signal::unix::SignalKind::from_raw(signal);
    let mut stream = rt.block_on(async { tokio::signal::unix::signal(kind) })?;
    std::thread::spawn(move || {
        rt.block_on(async move {
            stream.recv().await;
            flag.store(true, Ordering::Release);
        })
    });
    Ok(())
}
