//! The balancer side: loads `dsr_balance`, fills its servers and Maglev
//! table, attaches it to the balancer's interface, reads its figures.

use std::{
    fmt,
    net::Ipv4Addr,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use aya::programs::TcAttachType;
use hermes_bpf::{ProgramStats, Region, monotonic_ns};

use crate::{
    error::Error,
    layout::{self, LbConfig, MAGLEV_SIZE, MAX_SERVERS, Policy, ServerSlot, lb_counter},
    loader::Loaded,
    maglev,
};

/// The compiled balancer program (`bpf/dsr_lb.bpf.c`, rebuilt by `cargo xtask bpf`).
pub static LB_OBJECT: &[u8] = aya::include_bytes_aligned!("../bpf/dsr_lb.bpf.o");

/// One server behind the VIP. It holds the VIP on its loopback interface
/// (with `arp_ignore=1`, `arp_announce=2`) and sits on the balancer's L2 segment.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Backend {
    /// The MAC of its interface on the balancer's segment.
    pub mac: [u8; 6],
    /// Its own address (bookkeeping and logs).
    pub addr: Ipv4Addr,
    /// The secret its metrics carry, the same as its host's
    /// [`HostSettings::token`](crate::HostSettings::token); not 0. A metric
    /// with another token is not learned (`feedback_rejected`).
    pub token: u64,
}

impl fmt::Debug for Backend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The token is a secret: it stays out of logs.
        f.debug_struct("Backend").field("mac", &self.mac).field("addr", &self.addr).finish_non_exhaustive()
    }
}

/// The balancer's settings.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BalancerSettings {
    /// The virtual address clients connect to.
    pub vip: Ipv4Addr,
    /// The service port; 0 balances every TCP port of the VIP.
    pub port: u16,
    /// The MAC of the balancer's interface (source of the frames it forwards).
    pub own_mac: [u8; 6],
    /// A server whose metric is older than this takes no new flows.
    pub max_stale: Duration,
    /// The new-flow policy.
    pub policy: Policy,
}

/// A read of the balancer's counters (see [`layout::lb_counter`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LbCounters {
    /// Packets forwarded to a server.
    pub forwarded: u64,
    /// New flows placed by policy.
    pub new_flows: u64,
    /// New flows hashed because every metric was stale.
    pub fallback_stale: u64,
    /// New flows placed while some server was drained for a stale metric.
    pub drained: u64,
    /// Non-SYN packets of flows no map knew: sent to their Maglev server,
    /// whatever the load, and not recorded.
    pub no_flow: u64,
    /// Load metrics received.
    pub feedback: u64,
    /// Load metrics from an unknown MAC.
    pub feedback_unknown: u64,
    /// Packets from the VIP that reached the balancer: with DSR, zero.
    pub reply_seen: u64,
    /// Packets not for the VIP.
    pub passed: u64,
    /// New flows placed by Maglev under [`Policy::Hash`].
    pub hashed: u64,
    /// Load metrics refused: not addressed to the balancer's MAC, not over
    /// TCP or UDP, malformed, or without their server's token.
    pub feedback_rejected: u64,
    /// New flows placed on their Maglev server: a packet of theirs that
    /// finds no flow entry (evicted, or a balancer that never saw them)
    /// still reaches their server.
    pub recoverable: u64,
    /// Flows confirmed by the client's first packet after its SYN.
    pub promoted: u64,
    /// Non-first IPv4 fragments forwarded to their first fragment's server.
    pub fragments: u64,
    /// Non-first IPv4 fragments whose first fragment was not forwarded
    /// (left to the stack, or dropped when every port is balanced).
    pub fragments_unmatched: u64,
}

/// One server's figures.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct ServerStats {
    /// Its address.
    pub addr: Option<Ipv4Addr>,
    /// The load last learned.
    pub load: u32,
    /// Eligible workers last learned.
    pub eligible: u32,
    /// Age of the metric in ms (infinite before the first).
    pub metric_age_ms: f64,
    /// Metrics received.
    pub feedbacks: u64,
    /// New flows placed on it.
    pub new_flows: u64,
    /// Packets forwarded to it.
    pub packets: u64,
}

/// The loaded balancer program, its maps and settings.
///
/// ```no_run
/// use hermes_dsr::{Backend, Balancer, BalancerSettings, Policy};
/// use std::time::Duration;
///
/// let settings = BalancerSettings {
///     vip: "198.51.100.10".parse().unwrap(),
///     port: 80,
///     own_mac: [0x02, 0, 0, 0, 0, 2],
///     max_stale: Duration::from_millis(500),
///     policy: Policy::Load,
/// };
/// let servers = [
///     Backend { mac: [0x02, 0, 0, 0, 0, 11], addr: "192.0.2.11".parse().unwrap(), token: 0x5eed_0011 },
///     Backend { mac: [0x02, 0, 0, 0, 0, 12], addr: "192.0.2.12".parse().unwrap(), token: 0x5eed_0012 },
/// ];
/// let mut balancer = Balancer::load(&settings, &servers)?;
/// balancer.attach("eth0")?;
/// println!("{:?}", balancer.counters());
/// # Ok::<(), hermes_dsr::Error>(())
/// ```
pub struct Balancer {
    loaded: Loaded,
    config: Arc<Region<LbConfig>>,
    servers: Arc<Region<ServerSlot>>,
    counters: Arc<Region<AtomicU64>>,
    backends: Vec<Backend>,
    datapath: Datapath,
}

/// Where the balancer's program runs on its interface. The logic and the
/// maps are the same; only the hook differs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Datapath {
    /// tc ingress (`dsr_balance`), forwarding with `bpf_redirect` to the
    /// same interface. Needs nothing from the segment.
    #[default]
    Tc,
    /// XDP (`dsr_balance_xdp`), forwarding with `XDP_TX`, before the kernel
    /// allocates a socket buffer. On a veth, the peer must run an XDP
    /// program too ([`XdpPass`]), or the forwarded frames are lost.
    Xdp,
}

impl std::str::FromStr for Datapath {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "tc" => Ok(Self::Tc),
            "xdp" => Ok(Self::Xdp),
            other => Err(format!("datapath `{other}`: expected `tc` or `xdp`")),
        }
    }
}

/// An XDP program that passes every frame, attached to an interface until
/// dropped: on a veth pair, the peer of the balancer's interface needs one
/// for the frames [`Datapath::Xdp`] sends back out with `XDP_TX` to be
/// received (for example the bridge port of a container's veth).
pub struct XdpPass {
    _loaded: Loaded,
}

impl fmt::Debug for XdpPass {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("XdpPass").finish_non_exhaustive()
    }
}

impl XdpPass {
    /// Attaches the pass program to `interface` in the calling thread's
    /// network namespace.
    ///
    /// # Errors
    /// As [`Balancer::load`] and [`Balancer::attach`].
    pub fn attach(interface: &str) -> Result<Self, Error> {
        let mut loaded = Loaded::load(LB_OBJECT, PROGRAM, layout::LB_PROGRAM)?;
        loaded.attach_xdp(layout::XDP_PASS_PROGRAM, interface)?;
        Ok(Self { _loaded: loaded })
    }
}

impl fmt::Debug for Balancer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Balancer").field("backends", &self.backends).finish()
    }
}

const PROGRAM: &str = "balancer";

impl Balancer {
    /// Loads the balancer program with `servers` (at most [`MAX_SERVERS`]).
    /// The Maglev table depends on the set of servers, not on their order:
    /// two balancers with the same servers send a flow neither knows to
    /// the same server.
    ///
    /// # Errors
    /// [`Error::Invalid`] for no or too many servers, a server's token 0,
    /// or a zero VIP;
    /// [`Error::MissingCapability`] without CAP_BPF; [`Error::KernelRefused`].
    pub fn load(settings: &BalancerSettings, servers: &[Backend]) -> Result<Self, Error> {
        if servers.is_empty() || servers.len() > MAX_SERVERS {
            return Err(Error::Invalid(format!(
                "a balancer needs 1 to {MAX_SERVERS} servers, {} given",
                servers.len()
            )));
        }
        if settings.vip.is_unspecified() {
            return Err(Error::Invalid("the VIP must not be 0.0.0.0".to_owned()));
        }
        if let Some(b) = servers.iter().find(|b| b.token == 0) {
            return Err(Error::Invalid(format!(
                "server {}: its token is 0; give each server a secret token, the same as its host's",
                b.addr
            )));
        }
        let mut loaded = Loaded::load(LB_OBJECT, PROGRAM, layout::LB_PROGRAM)?;
        let config = loaded.region::<LbConfig>(layout::LB_CONFIG_MAP, 1)?;
        let slots = loaded.region::<ServerSlot>(layout::SERVERS_MAP, MAX_SERVERS)?;
        let counters = loaded.region::<AtomicU64>(layout::LB_COUNTERS_MAP, layout::LB_COUNTERS_LEN)?;
        let table = loaded.region::<AtomicU64>(layout::MAGLEV_MAP, MAGLEV_SIZE)?;
        for (slot, b) in slots.iter().zip(servers) {
            slot.mac.store(layout::mac_to_u64(b.mac), Ordering::Relaxed);
            slot.addr.store(layout::ipv4_to_u32(b.addr), Ordering::Relaxed);
            slot.token.store(layout::token_to_u64(b.token), Ordering::Relaxed);
        }
        // Built over the servers sorted by MAC, then mapped back to slots.
        let mut by_mac: Vec<usize> = (0..servers.len()).collect();
        by_mac.sort_by_key(|&i| servers[i].mac);
        let names: Vec<u64> = by_mac.iter().map(|&i| layout::mac_to_u64(servers[i].mac)).collect();
        for (entry, server) in table.iter().zip(maglev::table(&names, MAGLEV_SIZE)) {
            entry.store(by_mac[server as usize] as u64, Ordering::Relaxed);
        }
        let c = &config[0];
        c.own_mac.store(layout::mac_to_u64(settings.own_mac), Ordering::Relaxed);
        c.port.store(u32::from(settings.port), Ordering::Relaxed);
        c.max_stale_ns.store(settings.max_stale.as_nanos() as u64, Ordering::Relaxed);
        c.policy.store(settings.policy as u32, Ordering::Relaxed);
        c.servers.store(servers.len() as u32, Ordering::Relaxed);
        // Release: the VIP is the switch that makes the program act; a
        // program that sees it sees the servers and table stored above.
        c.vip.store(layout::ipv4_to_u32(settings.vip), Ordering::Release);
        Ok(Self {
            loaded,
            config,
            servers: slots,
            counters,
            backends: servers.to_vec(),
            datapath: Datapath::Tc,
        })
    }

    /// Attaches the program at ingress of `interface` (in the calling
    /// thread's network namespace). It stays attached while `self` lives.
    pub fn attach(&mut self, interface: &str) -> Result<(), Error> {
        self.attach_with(interface, Datapath::Tc)
    }

    /// Attaches the program to `interface` (in the calling thread's network
    /// namespace) at `datapath`'s hook. It stays attached while `self`
    /// lives. Attach one datapath per balancer.
    ///
    /// # Errors
    /// [`Error::Attach`] when the interface is missing or the hook refused;
    /// [`Error::KernelRefused`] when the XDP program does not load.
    pub fn attach_with(&mut self, interface: &str, datapath: Datapath) -> Result<(), Error> {
        match datapath {
            Datapath::Tc => self.loaded.attach(interface, TcAttachType::Ingress)?,
            Datapath::Xdp => self.loaded.attach_xdp(layout::LB_XDP_PROGRAM, interface)?,
        }
        self.datapath = datapath;
        Ok(())
    }

    /// The datapath attached last ([`Datapath::Tc`] before any).
    pub fn datapath(&self) -> Datapath {
        self.datapath
    }

    /// Changes the new-flow policy (existing flows keep their server).
    pub fn set_policy(&self, policy: Policy) {
        self.config[0].policy.store(policy as u32, Ordering::Relaxed);
    }

    /// Changes the staleness limit.
    pub fn set_max_stale(&self, limit: Duration) {
        self.config[0].max_stale_ns.store(limit.as_nanos() as u64, Ordering::Relaxed);
    }

    /// Stores a load for `server` as if a metric had just arrived: what a
    /// polling balancer does with the figures it fetched. Out-of-range
    /// servers are ignored.
    pub fn store_load(&self, server: usize, load: u32, eligible: u32) {
        if let Some(s) = self.servers.get(server).filter(|_| server < self.backends.len()) {
            s.load.store(load, Ordering::Relaxed);
            s.eligible.store(eligible, Ordering::Relaxed);
            s.recent.store(0, Ordering::Relaxed);
            s.updated_ns.store(monotonic_ns(), Ordering::Relaxed);
        }
    }

    /// The servers, in slot order.
    pub fn backends(&self) -> &[Backend] {
        &self.backends
    }

    /// Reads the counters (each once, `Relaxed`: independent counts).
    pub fn counters(&self) -> LbCounters {
        let get = |i: usize| self.counters[i].load(Ordering::Relaxed);
        LbCounters {
            forwarded: get(lb_counter::FORWARDED),
            new_flows: get(lb_counter::NEW_FLOWS),
            fallback_stale: get(lb_counter::FALLBACK_STALE),
            drained: get(lb_counter::DRAINED),
            no_flow: get(lb_counter::NO_FLOW),
            feedback: get(lb_counter::FEEDBACK),
            feedback_unknown: get(lb_counter::FEEDBACK_UNKNOWN),
            reply_seen: get(lb_counter::REPLY_SEEN),
            passed: get(lb_counter::PASSED),
            hashed: get(lb_counter::HASHED),
            feedback_rejected: get(lb_counter::FEEDBACK_REJECTED),
            recoverable: get(lb_counter::RECOVERABLE),
            promoted: get(lb_counter::PROMOTED),
            fragments: get(lb_counter::FRAGMENTS),
            fragments_unmatched: get(lb_counter::FRAGMENTS_UNMATCHED),
        }
    }

    /// Per-server figures, in slot order.
    pub fn server_stats(&self) -> Vec<ServerStats> {
        let now = monotonic_ns();
        self.backends
            .iter()
            .zip(self.servers.iter())
            .map(|(b, s)| {
                let t = s.updated_ns.load(Ordering::Relaxed);
                ServerStats {
                    addr: Some(b.addr),
                    load: s.load.load(Ordering::Relaxed),
                    eligible: s.eligible.load(Ordering::Relaxed),
                    metric_age_ms: if t == 0 { f64::INFINITY } else { now.saturating_sub(t) as f64 / 1e6 },
                    feedbacks: s.feedbacks.load(Ordering::Relaxed),
                    new_flows: s.new_flows.load(Ordering::Relaxed),
                    packets: s.packets.load(Ordering::Relaxed),
                }
            })
            .collect()
    }

    /// Records the counters and per-server figures into the installed
    /// `metrics` recorder: counters `hermes_dsr_forwarded_total`,
    /// `hermes_dsr_new_flows_total`, `hermes_dsr_fallback_stale_total`,
    /// `hermes_dsr_drained_total`, `hermes_dsr_no_flow_total`,
    /// `hermes_dsr_feedback_total`, `hermes_dsr_feedback_rejected_total`,
    /// `hermes_dsr_recoverable_total`, `hermes_dsr_fragments_total`,
    /// `hermes_dsr_fragments_unmatched_total`, `hermes_dsr_reply_seen_total`; per
    /// server (label `server`): gauges `hermes_dsr_server_load` and
    /// `hermes_dsr_server_metric_age_seconds`, counter
    /// `hermes_dsr_server_new_flows_total`. Call it when scraping (it reads
    /// the maps and allocates labels; it is not for a hot path).
    pub fn record_metrics(&self) {
        let c = self.counters();
        for (name, value) in [
            ("hermes_dsr_forwarded_total", c.forwarded),
            ("hermes_dsr_new_flows_total", c.new_flows),
            ("hermes_dsr_fallback_stale_total", c.fallback_stale),
            ("hermes_dsr_drained_total", c.drained),
            ("hermes_dsr_no_flow_total", c.no_flow),
            ("hermes_dsr_feedback_total", c.feedback),
            ("hermes_dsr_feedback_rejected_total", c.feedback_rejected),
            ("hermes_dsr_recoverable_total", c.recoverable),
            ("hermes_dsr_fragments_total", c.fragments),
            ("hermes_dsr_fragments_unmatched_total", c.fragments_unmatched),
            ("hermes_dsr_reply_seen_total", c.reply_seen),
        ] {
            metrics::counter!(name).absolute(value);
        }
        for s in self.server_stats() {
            let server = s.addr.map(|a| a.to_string()).unwrap_or_default();
            metrics::gauge!("hermes_dsr_server_load", "server" => server.clone()).set(f64::from(s.load));
            metrics::gauge!("hermes_dsr_server_metric_age_seconds", "server" => server.clone())
                .set(s.metric_age_ms / 1e3);
            metrics::counter!("hermes_dsr_server_new_flows_total", "server" => server).absolute(s.new_flows);
        }
    }

    /// The kernel's run statistics of the balancer program.
    pub fn program_stats(&self) -> Result<ProgramStats, Error> {
        match self.datapath {
            Datapath::Tc => self.loaded.stats(),
            Datapath::Xdp => self.loaded.stats_of(layout::LB_XDP_PROGRAM),
        }
    }
}
