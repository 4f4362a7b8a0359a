//! The server-host side: `dsr_feedback` at tc egress, and the agent thread
//! that stores the host's load from the Hermes server's Worker State Table.

use std::{
    fmt, io,
    net::{Ipv4Addr, UdpSocket},
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    thread,
    time::Duration,
};

use aya::programs::TcAttachType;
use hermes_bpf::{ProgramStats, Region, monotonic_ns};
use hermes_runtime::{Snapshot, WorkerStatus};

use crate::{
    error::Error,
    layout::{self, HostConfig, HostLoad, host_counter},
    loader::Loaded,
};

/// The compiled host feedback program (`bpf/dsr_host.bpf.c`, rebuilt by `cargo xtask bpf`).
pub static HOST_OBJECT: &[u8] = aya::include_bytes_aligned!("../bpf/dsr_host.bpf.o");

/// A server host's feedback settings.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct HostSettings {
    /// The MAC of the balancer's interface: where metrics are sent.
    pub balancer_mac: [u8; 6],
    /// The balancer's address: where an idle host's keepalives go.
    pub balancer_addr: Ipv4Addr,
    /// UDP port of the keepalives (the balancer drops them before its stack
    /// sees them); 0 sends none, and an idle host is then drained.
    pub keepalive_port: u16,
    /// An agent whose host sent no metric for this long sends a keepalive.
    pub keepalive_after: Duration,
    /// The VIP (used to count replies that leave straight to clients).
    pub vip: Ipv4Addr,
    /// At most one metric per interval.
    pub interval: Duration,
    /// A load sample older than this is not sent: a host whose agent stops
    /// goes silent and the balancer drains it.
    pub max_age: Duration,
    /// The secret every metric of this host carries, the same as the
    /// balancer's [`Backend::token`](crate::Backend::token) for this host;
    /// not 0. The balancer learns no metric without it.
    pub token: u64,
}

impl fmt::Debug for HostSettings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The token is a secret: it stays out of logs.
        f.debug_struct("HostSettings")
            .field("balancer_mac", &self.balancer_mac)
            .field("balancer_addr", &self.balancer_addr)
            .field("keepalive_port", &self.keepalive_port)
            .field("keepalive_after", &self.keepalive_after)
            .field("vip", &self.vip)
            .field("interval", &self.interval)
            .field("max_age", &self.max_age)
            .finish_non_exhaustive()
    }
}

impl HostSettings {
    /// 10 ms interval, 100 ms maximum sample age, keepalives to port 9
    /// (discard) after 50 ms without a metric; `token` is this host's
    /// secret, as given to the balancer for it.
    pub fn new(balancer_mac: [u8; 6], balancer_addr: Ipv4Addr, vip: Ipv4Addr, token: u64) -> Self {
        Self {
            balancer_mac,
            balancer_addr,
            keepalive_port: 9,
            keepalive_after: Duration::from_millis(50),
            vip,
            interval: Duration::from_millis(10),
            max_age: Duration::from_millis(100),
            token,
        }
    }
}

/// One load sample of a host.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LoadSample {
    /// Requests in flight + accept queue, summed over workers.
    pub load: u32,
    /// Workers eligible for new connections.
    pub eligible: u32,
    /// Workers.
    pub workers: u32,
}

impl LoadSample {
    /// The sample of a Hermes server's snapshot: in flight plus accept queue
    /// over its workers; eligible = serving workers in the published list
    /// (every serving worker when the server hashes, which publishes none).
    pub fn from_snapshot(s: &Snapshot) -> Self {
        let serving = s.workers.iter().filter(|w| w.state == WorkerStatus::Serving);
        let eligible =
            if s.eligible_count == 0 { serving.count() } else { serving.filter(|w| w.eligible).count() };
        Self {
            load: s.workers.iter().map(|w| w.in_flight.saturating_add(w.accept_queue)).sum(),
            eligible: eligible as u32,
            workers: s.workers.len() as u32,
        }
    }
}

/// A read of the host program's counters (see [`layout::host_counter`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct HostCounters {
    /// IPv4 TCP packets seen leaving.
    pub seen: u64,
    /// Of which from the VIP: replies sent straight to clients.
    pub replies: u64,
    /// Metrics sent to the balancer.
    pub sent: u64,
    /// Metrics that failed.
    pub errors: u64,
    /// Due packets skipped (GSO or with options).
    pub skipped: u64,
    /// Due packets with no room for the option (they fill the MTU); the
    /// next packet, or the agent's keepalive, carries the metric.
    pub too_big: u64,
    /// Due packets with no fresh load to send.
    pub stale: u64,
    /// Bytes of the frames sent as metrics (the feedback's whole cost on the wire).
    pub bytes: u64,
    /// Of the metrics, those carried by keepalives (the host was idle).
    pub keepalives: u64,
    /// `CLOCK_MONOTONIC` ns of the last metric; 0 = none yet.
    pub last_ns: u64,
}

/// The loaded host feedback program and its maps.
pub struct FeedbackHost {
    loaded: Loaded,
    config: Arc<Region<HostConfig>>,
    load: Arc<Region<HostLoad>>,
    counters: Arc<Region<AtomicU64>>,
}

impl fmt::Debug for FeedbackHost {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FeedbackHost").field("counters", &self.counters()).finish()
    }
}

const PROGRAM: &str = "host feedback";

impl FeedbackHost {
    /// Loads the host program with `settings`, enabled.
    ///
    /// # Errors
    /// [`Error::Invalid`] for a token 0; [`Error::MissingCapability`]
    /// without CAP_BPF; [`Error::KernelRefused`].
    pub fn load(settings: &HostSettings) -> Result<Self, Error> {
        if settings.token == 0 {
            return Err(Error::Invalid(
                "the host's token is 0; give it the secret token the balancer has for it".to_owned(),
            ));
        }
        let mut loaded = Loaded::load(HOST_OBJECT, PROGRAM, layout::HOST_PROGRAM)?;
        let config = loaded.region::<HostConfig>(layout::HOST_CONFIG_MAP, 1)?;
        let load = loaded.region::<HostLoad>(layout::HOST_LOAD_MAP, 1)?;
        let counters = loaded.region::<AtomicU64>(layout::HOST_COUNTERS_MAP, layout::HOST_COUNTERS_LEN)?;
        let c = &config[0];
        c.lb_mac.store(layout::mac_to_u64(settings.balancer_mac), Ordering::Relaxed);
        c.vip.store(layout::ipv4_to_u32(settings.vip), Ordering::Relaxed);
        c.interval_ns.store(settings.interval.as_nanos() as u64, Ordering::Relaxed);
        c.max_age_ns.store(settings.max_age.as_nanos() as u64, Ordering::Relaxed);
        c.keepalive_port.store(u32::from(settings.keepalive_port), Ordering::Relaxed);
        c.token.store(layout::token_to_u64(settings.token), Ordering::Relaxed);
        c.enabled.store(1, Ordering::Relaxed);
        Ok(Self { loaded, config, load, counters })
    }

    /// Attaches the program at egress of `interface` (in the calling
    /// thread's network namespace). It stays attached while `self` lives.
    pub fn attach(&mut self, interface: &str) -> Result<(), Error> {
        self.loaded.attach(interface, TcAttachType::Egress)
    }

    /// Starts or stops sending metrics (a stopped host is drained by the
    /// balancer once its last metric is older than the balancer's limit).
    pub fn set_enabled(&self, enabled: bool) {
        self.config[0].enabled.store(u32::from(enabled), Ordering::Relaxed);
    }

    /// The load region the agent stores into.
    pub fn load_region(&self) -> &Arc<Region<HostLoad>> {
        &self.load
    }

    /// The counters region (the agent reads the time of the last metric).
    pub fn counter_region(&self) -> &Arc<Region<AtomicU64>> {
        &self.counters
    }

    /// Stores a sample now.
    pub fn store(&self, sample: LoadSample) {
        store(&self.load, sample);
    }

    /// Reads the counters (each once, `Relaxed`: independent counts).
    pub fn counters(&self) -> HostCounters {
        let get = |i: usize| self.counters[i].load(Ordering::Relaxed);
        HostCounters {
            seen: get(host_counter::SEEN),
            replies: get(host_counter::REPLIES),
            sent: get(host_counter::SENT),
            errors: get(host_counter::ERRORS),
            skipped: get(host_counter::SKIPPED),
            too_big: get(host_counter::TOO_BIG),
            stale: get(host_counter::STALE),
            bytes: get(host_counter::BYTES),
            keepalives: get(host_counter::KEEPALIVES),
            last_ns: get(host_counter::LAST_NS),
        }
    }

    /// The kernel's run statistics of the host program (ns per packet).
    pub fn program_stats(&self) -> Result<ProgramStats, Error> {
        self.loaded.stats()
    }
}

fn store(region: &Region<HostLoad>, sample: LoadSample) {
    let l = &region[0];
    l.load.store(sample.load, Ordering::Relaxed);
    l.eligible.store(sample.eligible, Ordering::Relaxed);
    l.workers.store(sample.workers, Ordering::Relaxed);
    // Release, last: a reader that sees this time sees the sample above (the
    // program reads the fields after the time; a torn sample across two
    // ticks differs by one tick's change, which the policy tolerates).
    l.updated_ns.store(monotonic_ns(), Ordering::Release);
}

/// The feedback of one Hermes server host: the host program attached to its
/// interface, and a thread that samples the server every tick and stores
/// the load for the program to send. Dropping it stops the thread and
/// detaches the program.
///
/// ```no_run
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// use hermes_dsr::{Agent, HostSettings};
///
/// let app = axum::Router::new().route("/", axum::routing::get(|| async { "hello" }));
/// let server = hermes_tower::serve("0.0.0.0:80", app).start()?;
/// let settings =
///     HostSettings::new([0x02, 0, 0, 0, 0, 2], "192.0.2.2".parse()?, "198.51.100.10".parse()?, 0x5eed_0011);
/// // Reads the table without keeping the server alive.
/// let source = server.snapshot_source();
/// let agent = Agent::start("eth0", settings, move || source.snapshot().unwrap_or_default())?;
/// # drop(agent);
/// # Ok(())
/// # }
/// ```
pub struct Agent {
    host: FeedbackHost,
    stop: Arc<AtomicBool>,
    thread: Option<thread::JoinHandle<()>>,
}

impl fmt::Debug for Agent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Agent").field("host", &self.host).finish()
    }
}

/// How often the agent samples the server.
pub const AGENT_TICK: Duration = Duration::from_millis(5);

impl Agent {
    /// Loads the host program, attaches it at egress of `interface` (in the
    /// calling thread's network namespace) and samples `snapshot` every
    /// [`AGENT_TICK`] on a thread of its own. When the host sent no metric
    /// for [`HostSettings::keepalive_after`], the thread sends a one-byte UDP
    /// keepalive to the balancer for the program to carry the metric.
    ///
    /// # Errors
    /// [`FeedbackHost::load`]'s and [`FeedbackHost::attach`]'s; the
    /// keepalive socket's and the thread's spawn errors.
    pub fn start(
        interface: &str,
        settings: HostSettings,
        mut snapshot: impl FnMut() -> Snapshot + Send + 'static,
    ) -> Result<Self, Error> {
        let mut host = FeedbackHost::load(&settings)?;
        host.attach(interface)?;
        let stop = Arc::new(AtomicBool::new(false));
        let region = host.load_region().clone();
        let counters = host.counter_region().clone();
        let flag = stop.clone();
        // Made here, in the caller's network namespace.
        let keepalive = if settings.keepalive_port == 0 {
            None
        } else {
            let socket = UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0))
                .and_then(|s| s.connect((settings.balancer_addr, settings.keepalive_port)).map(|()| s))
                .and_then(|s| s.set_nonblocking(true).map(|()| s))
                .map_err(|e| {
                    Error::Invalid(format!("keepalive socket to {}: {e}", settings.balancer_addr))
                })?;
            Some(socket)
        };
        let idle_ns = settings.keepalive_after.as_nanos() as u64;
        let thread = thread::Builder::new()
            .name("hermes-dsr-agent".to_owned())
            .spawn(move || {
                // Relaxed: the flag carries no data, only "stop".
                while !flag.load(Ordering::Relaxed) {
                    store(&region, LoadSample::from_snapshot(&snapshot()));
                    // Relaxed: a time written by the program; one tick late is harmless.
                    let last = counters[host_counter::LAST_NS].load(Ordering::Relaxed);
                    if let Some(socket) = &keepalive
                        && monotonic_ns().saturating_sub(last) >= idle_ns
                        && let Err(e) = socket.send(&[0])
                        && e.kind() != io::ErrorKind::WouldBlock
                    {
                        tracing::debug!(error = %e, "hermes-dsr keepalive not sent");
                    }
                    thread::sleep(AGENT_TICK);
                }
            })
            .map_err(|e| Error::Invalid(format!("spawning the agent thread: {e}")))?;
        Ok(Self { host, stop, thread: Some(thread) })
    }

    /// The host program.
    pub fn host(&self) -> &FeedbackHost {
        &self.host
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
