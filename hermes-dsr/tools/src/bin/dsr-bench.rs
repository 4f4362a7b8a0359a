//! Side by side, in network namespaces on this machine: new flows placed by
//! plain Maglev hashing, by load learned from polling each server's
//! `/_hermes/stats` every 100 ms and every 1 s, and by load learned in band
//! (the option). Prints requests per second and p99 per mode, and last
//! `rps ratio in-band/polling-1s = X.XX`. Two scenarios:
//!
//! - `servers-bound` (the default; see `capacity`): three Hermes servers,
//!   each a process whose CPU a cgroup limits (1 : 2 : 4, and the largest
//!   one's quota halves for a while in every run), so that the servers, not
//!   the client, bound throughput; three runs of every mode, medians.
//! - `handshakes`: three Hermes servers of unequal speed in this process (a
//!   request costs 1×, 2× and 4× on s0, s1, s2), the machine shared by all;
//!   a mix that changes every two seconds (cheap requests, then costly
//!   ones). On two vCPUs the client's handshakes bound throughput here.
//!
//! In both, a client in its own namespace opens a new connection per
//! request, closed loop.
//!
//! `cargo run --release -p hermes-dsr-tools --bin dsr-bench -- --quick [--scenario servers-bound|handshakes] [--datapath tc|xdp]`
//! (as root). `--datapath` picks where the balancer's program runs (tc
//! ingress by default; XDP with a pass program on the bridge's port).
//! Figures mean something only on a quiet machine.

use std::{
    io::{Read, Write},
    net::{SocketAddr, TcpStream},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    thread,
    time::{Duration, Instant},
};

use axum::{Router, extract::Query, routing::get};
use hermes_dsr::{Agent, Balancer, BalancerSettings, Datapath, HostSettings, Policy};
use hermes_dsr_tools::testbed::{
    BALANCER, BALANCER_MAC, Testbed, VIP, backends, in_ns, server_addr, server_token,
};
use hermes_runtime::{Builder, ServerHandle};

#[path = "dsr-bench/capacity.rs"]
mod capacity;
#[path = "dsr-bench/host.rs"]
mod host;

const SCALES: [u64; 3] = [1, 2, 4];
const CLIENTS: usize = 12;

fn app(scale: u64) -> Router {
    Router::new().route(
        "/work",
        get(move |Query(q): Query<std::collections::HashMap<String, u64>>| async move {
            // Blocks the worker, as CPU work would: its accept queue and
            // in-flight count grow while it runs.
            let us = q.get("us").copied().unwrap_or(100) * scale;
            thread::sleep(Duration::from_micros(us));
            "done"
        }),
    )
}

fn http_get(addr: SocketAddr, path: &str) -> std::io::Result<String> {
    let mut conn = TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
    conn.set_read_timeout(Some(Duration::from_secs(5)))?;
    conn.write_all(format!("GET {path} HTTP/1.1\r\nHost: hermes\r\nConnection: close\r\n\r\n").as_bytes())?;
    let mut out = String::new();
    conn.read_to_string(&mut out)?;
    if !out.starts_with("HTTP/1.1 200") {
        return Err(std::io::Error::other(format!("status: {}", out.lines().next().unwrap_or(""))));
    }
    Ok(out.split_once("\r\n\r\n").map(|(_, b)| b.to_owned()).unwrap_or_default())
}

/// Load of a server from its `/_hermes/stats` JSON: in flight + accept
/// queue over its workers, and eligible workers (as the agent computes it).
fn polled_load(body: &str) -> Option<(u32, u32)> {
    let v: serde_json::Value = serde_json::from_str(body).ok()?;
    let workers = v["workers"].as_array()?;
    let load = workers
        .iter()
        .map(|w| w["in_flight"].as_u64().unwrap_or(0) + w["accept_queue"].as_u64().unwrap_or(0))
        .sum::<u64>();
    let listed = v["eligible_count"].as_u64().unwrap_or(0);
    let serving = workers.iter().filter(|w| w["state"] == "serving");
    let eligible =
        if listed == 0 { serving.count() } else { serving.filter(|w| w["eligible"] == true).count() };
    Some((load as u32, eligible as u32))
}

struct Mode {
    name: &'static str,
    policy: Policy,
    in_band: bool,
    poll: Option<Duration>,
}

/// The four modes, in the order they run.
fn modes() -> [Mode; 4] {
    [
        Mode { name: "hashing", policy: Policy::Hash, in_band: false, poll: None },
        Mode {
            name: "polling-100ms",
            policy: Policy::Load,
            in_band: false,
            poll: Some(Duration::from_millis(100)),
        },
        Mode { name: "polling-1s", policy: Policy::Load, in_band: false, poll: Some(Duration::from_secs(1)) },
        Mode { name: "in-band", policy: Policy::Load, in_band: true, poll: None },
    ]
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    sorted[((sorted.len() as f64 * p) as usize).min(sorted.len() - 1)]
}

/// The value after `flag`, if given.
fn flag_value<'a>(args: &'a [String], flag: &str) -> Option<&'a str> {
    args.iter().position(|a| a == flag).and_then(|i| args.get(i + 1)).map(String::as_str)
}

/// Polls every server's `/_hermes/stats` every `every` from the balancer's
/// namespace and writes their loads into the balancer's map, until `stop`.
fn spawn_poller(
    stop: Arc<AtomicBool>,
    balancer: Arc<Balancer>,
    ns: String,
    every: Duration,
    port: u16,
) -> thread::JoinHandle<()> {
    thread::spawn(move || {
        in_ns(&ns, move || {
            // Relaxed: the flag carries no data.
            while !stop.load(Ordering::Relaxed) {
                for i in 0..SCALES.len() {
                    let addr = SocketAddr::from((server_addr(i), port));
                    if let Some((load, eligible)) =
                        http_get(addr, "/_hermes/stats").ok().as_deref().and_then(polled_load)
                    {
                        balancer.store_load(i, load, eligible);
                    }
                }
                thread::sleep(every);
            }
        })
    })
}

/// [`CLIENTS`] closed-loop clients in namespace `ns`, each opening a new
/// connection per request to `vip` for `per_mode` from `start`, the path
/// given by `path(elapsed)`. Every answer's completion time (since `start`)
/// and latency, and the errors.
fn run_clients(
    ns: &str,
    vip: SocketAddr,
    start: Instant,
    per_mode: Duration,
    path: fn(Duration) -> String,
) -> (Vec<(Duration, Duration)>, u64) {
    let clients: Vec<_> = (0..CLIENTS)
        .map(|_| {
            let ns = ns.to_owned();
            thread::spawn(move || {
                in_ns(&ns, move || {
                    let mut done = Vec::new();
                    let mut errors = 0u64;
                    while start.elapsed() < per_mode {
                        let t = Instant::now();
                        match http_get(vip, &path(start.elapsed())) {
                            Ok(_) => done.push((start.elapsed(), t.elapsed())),
                            Err(_) => errors += 1,
                        }
                    }
                    (done, errors)
                })
            })
        })
        .collect();
    let mut done = Vec::new();
    let mut errors = 0;
    for c in clients {
        let (d, e) = c.join().expect("client thread");
        done.extend(d);
        errors += e;
    }
    (done, errors)
}

/// The balancer on `port` of the testbed's VIP in front of its first
/// `servers` servers (placing by their load), loaded and attached in its
/// namespace; with the XDP data path also the bridge port's pass program
/// (XDP_TX on the balancer's veth reaches the bridge only if its port runs
/// an XDP program too), which the caller keeps while the balancer runs.
fn start_balancer(
    bed: &Testbed,
    port: u16,
    servers: usize,
    datapath: Datapath,
) -> (Arc<Balancer>, Option<hermes_dsr::XdpPass>) {
    let settings = BalancerSettings {
        vip: VIP,
        port,
        own_mac: BALANCER_MAC,
        max_stale: Duration::from_millis(200),
        policy: Policy::Load,
    };
    let backends = backends(servers);
    let pass = (datapath == Datapath::Xdp)
        .then(|| bed.ready_for_xdp().expect("XDP pass program on the bridge port"));
    let balancer = Arc::new(
        in_ns(&bed.ns("lb"), move || {
            let mut b = Balancer::load(&settings, &backends)?;
            b.attach_with("eth0", datapath)?;
            Ok::<_, hermes_dsr::Error>(b)
        })
        .expect("balancer program"),
    );
    (balancer, pass)
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.iter().any(|a| a == "--host") {
        let port = flag_value(&args, "--port").and_then(|p| p.parse().ok()).expect("--host needs --port N");
        let index =
            flag_value(&args, "--index").and_then(|i| i.parse().ok()).expect("--host needs --index N");
        return host::main(port, index);
    }
    let quick = args.iter().any(|a| a == "--quick");
    let datapath: Datapath = match args.iter().position(|a| a == "--datapath") {
        None => Datapath::Tc,
        Some(i) => match args.get(i + 1).map(|v| v.parse()) {
            Some(Ok(d)) => d,
            Some(Err(e)) => {
                eprintln!("dsr-bench: {e}");
                std::process::exit(2);
            }
            None => {
                eprintln!("dsr-bench: --datapath needs `tc` or `xdp`");
                std::process::exit(2);
            }
        },
    };
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("dsr-bench needs root (network namespaces, CAP_BPF, CAP_NET_ADMIN, cgroups)");
        std::process::exit(2);
    }
    match flag_value(&args, "--scenario").unwrap_or("servers-bound") {
        "servers-bound" => capacity::run(quick, datapath),
        "handshakes" => handshakes(quick, datapath),
        other => {
            eprintln!("dsr-bench: unknown --scenario {other} (servers-bound or handshakes)");
            std::process::exit(2);
        }
    }
}

/// The `handshakes` scenario (see the module).
fn handshakes(quick: bool, datapath: Datapath) {
    let per_mode = if quick { Duration::from_secs(4) } else { Duration::from_secs(20) };
    let bed = Testbed::new(SCALES.len());
    let mut port = 0;
    let mut servers: Vec<Arc<ServerHandle>> = Vec::new();
    let mut agents: Vec<Agent> = Vec::new();
    for (i, scale) in SCALES.into_iter().enumerate() {
        let ns = bed.ns(&format!("s{i}"));
        let handle = in_ns(&ns, move || {
            let mut builder = Builder::new();
            builder.workers(2).pin_workers(false);
            hermes_tower::serve(SocketAddr::from(([0, 0, 0, 0], port)), app(scale))
                .with_builder(builder)
                .with_stats()
                .start()
                .expect("start a Hermes server")
        });
        port = handle.local_addr().port();
        let handle = Arc::new(handle);
        servers.push(handle.clone());
        let mut settings = HostSettings::new(BALANCER_MAC, BALANCER, VIP, server_token(i));
        settings.interval = Duration::from_millis(2);
        agents.push(
            in_ns(&ns, move || Agent::start("eth0", settings, move || handle.snapshot()))
                .expect("host feedback program"),
        );
    }
    let (balancer, _pass) = start_balancer(&bed, port, SCALES.len(), datapath);
    let _stats = aya::sys::enable_stats(aya::sys::Stats::RunTime).ok();

    let modes = modes();
    println!(
        "servers: 3 Hermes servers of 2 workers, request cost x1 / x2 / x4; {CLIENTS} closed-loop clients,"
    );
    println!("a new connection per request; mix alternates every 2 s: 200 us requests, then 1 ms requests");
    println!("balancer datapath: {}", if datapath == Datapath::Xdp { "xdp" } else { "tc" });
    println!("{:<14} {:>10} {:>10} {:>10} {:>22}", "mode", "req/s", "p50 ms", "p99 ms", "new flows s0/s1/s2");
    let mut rps_of = std::collections::HashMap::new();
    for mode in &modes {
        for a in &agents {
            a.host().set_enabled(mode.in_band);
        }
        balancer.set_policy(mode.policy);
        balancer.set_max_stale(mode.poll.map_or(Duration::from_millis(200), |p| p * 3));
        let stop = Arc::new(AtomicBool::new(false));
        let poller =
            mode.poll.map(|every| spawn_poller(stop.clone(), balancer.clone(), bed.ns("lb"), every, port));
        thread::sleep(Duration::from_millis(300));
        let before: Vec<u64> = balancer.server_stats().iter().map(|s| s.new_flows).collect();
        let start = Instant::now();
        let vip = SocketAddr::from((VIP, port));
        let (done, errors) = run_clients(&bed.ns("c"), vip, start, per_mode, |elapsed| {
            let us = if (elapsed.as_secs() / 2).is_multiple_of(2) { 200 } else { 1000 };
            format!("/work?us={us}")
        });
        let mut lat: Vec<Duration> = done.into_iter().map(|(_, latency)| latency).collect();
        let elapsed = start.elapsed().as_secs_f64();
        stop.store(true, Ordering::Relaxed);
        if let Some(p) = poller {
            let _ = p.join();
        }
        lat.sort();
        let rps = lat.len() as f64 / elapsed;
        rps_of.insert(mode.name, rps);
        let flows: Vec<String> =
            balancer.server_stats().iter().zip(&before).map(|(s, b)| (s.new_flows - b).to_string()).collect();
        println!(
            "{:<14} {:>10.0} {:>10.2} {:>10.2} {:>22}{}",
            mode.name,
            rps,
            percentile(&lat, 0.50).as_secs_f64() * 1e3,
            percentile(&lat, 0.99).as_secs_f64() * 1e3,
            flows.join("/"),
            if errors > 0 { format!("  ({errors} errors)") } else { String::new() }
        );
        thread::sleep(Duration::from_millis(300));
    }
    let c = balancer.counters();
    let hosts: Vec<_> = agents.iter().map(|a| a.host().counters()).collect();
    let metric_bytes: u64 = hosts.iter().map(|h| h.bytes).sum();
    let metrics: u64 = hosts.iter().map(|h| h.sent).sum();
    let ns: Vec<String> = agents
        .iter()
        .filter_map(|a| a.host().program_stats().ok())
        .map(|s| format!("{:.0}", s.ns_per_run()))
        .collect();
    println!(
        "feedback cost: {metrics} metrics, {metric_bytes} bytes on the wire in all; dsr_feedback ns per packet {} (s0/s1/s2); balancer: {} ns per packet; reply packets seen by the balancer: {}",
        ns.join("/"),
        balancer.program_stats().map(|s| format!("{:.0}", s.ns_per_run())).unwrap_or_default(),
        c.reply_seen
    );
    drop(agents);
    for s in servers {
        if let Ok(s) = Arc::try_unwrap(s) {
            s.shutdown();
        }
    }
    drop(bed);
    let ratio = rps_of["in-band"] / rps_of["polling-1s"];
    println!("rps ratio in-band/polling-1s = {ratio:.2}");
}
