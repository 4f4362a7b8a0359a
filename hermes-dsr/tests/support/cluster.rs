//! The tier in network namespaces, as the end-to-end tests run it: a
//! client, the balancer and three Hermes servers (`hermes_tower::serve` over
//! real sockets) on one bridge. The balancer program runs at tc ingress of
//! the balancer's interface (or at XDP); each server runs the feedback
//! program at tc egress and the agent that samples its Worker State Table.

use std::{
    collections::BTreeMap,
    io::Write,
    net::{SocketAddr, TcpStream},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    thread,
    time::{Duration, Instant},
};

use axum::{
    Router,
    body::{Body, Bytes},
    extract::Query,
    routing::get,
};
use hermes_dsr::{Agent, Backend, Balancer, BalancerSettings, Datapath, HostSettings, Policy, XdpPass};
use hermes_runtime::{Builder, ServerHandle};

use super::*;

/// Servers of every cluster.
pub const SERVERS: usize = 3;

/// Everything one test runs; dropping it stops the agents and servers and
/// removes the namespaces, in that order, also when the test fails.
pub struct Cluster {
    pub agents: Vec<Agent>,
    pub servers: Vec<Arc<ServerHandle>>,
    pub balancer: Option<Balancer>,
    /// The pass program on the balancer's bridge port, with the XDP datapath.
    pub xdp_pass: Option<XdpPass>,
    pub gate: Arc<AtomicBool>,
    pub port: u16,
    /// The balancer's staleness limit.
    pub max_stale: Duration,
    pub bed: Testbed,
}

impl Drop for Cluster {
    fn drop(&mut self) {
        self.agents.clear();
        self.balancer = None;
        self.xdp_pass = None;
        self.gate.store(true, Ordering::Relaxed);
        for handle in self.servers.drain(..) {
            if let Ok(handle) = Arc::try_unwrap(handle) {
                handle.shutdown();
            }
        }
    }
}

/// What `/download` streams, chunk after chunk.
static CHUNK: [u8; 1 << 16] = [b'x'; 1 << 16];

/// `/download?ms=N`: a body streamed as fast as the client takes it, for
/// `N` ms (at most 10 s): a bulk transfer whose segments fill the MTU.
async fn download(Query(q): Query<std::collections::HashMap<String, u64>>) -> Body {
    let ms = q.get("ms").copied().unwrap_or(1000).min(10_000);
    let deadline = tokio::time::Instant::now() + Duration::from_millis(ms);
    Body::from_stream(futures_util::stream::unfold(deadline, |deadline| async move {
        (tokio::time::Instant::now() < deadline)
            .then(|| (Ok::<_, std::convert::Infallible>(Bytes::from_static(&CHUNK)), deadline))
    }))
}

fn app(name: String, gate: Arc<AtomicBool>) -> Router {
    Router::new().route("/whoami", get(move || async move { name })).route("/download", get(download)).route(
        "/hold",
        get(move || async move {
            // Held in flight until the test opens the gate (bounded).
            let deadline = Instant::now() + Duration::from_secs(20);
            // Relaxed: the flag carries no data.
            while !gate.load(Ordering::Relaxed) && Instant::now() < deadline {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            "released"
        }),
    )
}

impl Cluster {
    pub fn start(test: &str, max_stale: Duration) -> Option<Self> {
        Self::start_with(test, max_stale, true)
    }

    /// The servers and their agents; the balancer in this process when
    /// `balancer` is true (otherwise the test runs its own).
    pub fn start_with(test: &str, max_stale: Duration, balancer: bool) -> Option<Self> {
        let datapath = balancer.then_some(Datapath::Tc);
        Self::start_on(test, max_stale, datapath)
    }

    /// As [`Cluster::start_with`], the balancer (if any) attached at `datapath`.
    pub fn start_on(test: &str, max_stale: Duration, datapath: Option<Datapath>) -> Option<Self> {
        if !privileged_or_skip(test) {
            return None;
        }
        let bed = Testbed::new(SERVERS);
        let gate = Arc::new(AtomicBool::new(false));
        let mut cluster = Cluster {
            agents: Vec::new(),
            servers: Vec::new(),
            balancer: None,
            xdp_pass: None,
            gate: gate.clone(),
            port: 0,
            max_stale,
            bed,
        };
        for i in 0..SERVERS {
            let (name, gate, port) = (format!("s{i}"), gate.clone(), cluster.port);
            let handle = in_ns(&cluster.bed.ns(&name), move || {
                let mut builder = Builder::new();
                builder.workers(1);
                hermes_tower::serve(SocketAddr::from(([0, 0, 0, 0], port)), app(name, gate))
                    .with_builder(builder)
                    .start()
                    .expect("start the Hermes server")
            });
            cluster.port = handle.local_addr().port();
            let handle = Arc::new(handle);
            cluster.servers.push(handle.clone());
            let mut settings = HostSettings::new(BALANCER_MAC, BALANCER, VIP, server_token(i));
            settings.interval = Duration::from_millis(2);
            let agent = in_ns(&cluster.bed.ns(&format!("s{i}")), move || {
                Agent::start("eth0", settings, move || handle.snapshot())
            });
            match agent {
                Ok(agent) => cluster.agents.push(agent),
                Err(e) if std::env::var("HERMES_REQUIRE_BPF").as_deref() != Ok("1") => {
                    eprintln!("\n*** SKIPPED {test}: the host feedback program did not load: {e} ***\n");
                    return None;
                }
                Err(e) => panic!("{test}: the host feedback program did not load: {e}"),
            }
        }
        let Some(datapath) = datapath else {
            return Some(cluster);
        };
        if datapath == Datapath::Xdp {
            let pass = cluster
                .bed
                .ready_for_xdp()
                .unwrap_or_else(|e| panic!("{test}: the XDP pass program did not attach: {e}"));
            cluster.xdp_pass = Some(pass);
        }
        cluster.max_stale = max_stale;
        cluster.balancer = Some(cluster.load_balancer(backends(SERVERS), datapath));
        Some(cluster)
    }

    fn load_balancer(&self, servers: Vec<Backend>, datapath: Datapath) -> Balancer {
        let settings = BalancerSettings {
            vip: VIP,
            port: self.port,
            own_mac: BALANCER_MAC,
            max_stale: self.max_stale,
            policy: Policy::Load,
        };
        in_ns(&self.bed.ns("lb"), move || {
            let mut b = Balancer::load(&settings, &servers)?;
            b.attach_with("eth0", datapath)?;
            Ok::<_, hermes_dsr::Error>(b)
        })
        .unwrap_or_else(|e| panic!("the balancer did not load: {e}"))
    }

    /// Replaces the balancer by a new one that never saw a flow, as a
    /// standby taking over does: the same settings, the servers listed in
    /// reverse order (its `server_stats` are in that order).
    pub fn take_over(&mut self) {
        let datapath = self.lb().datapath();
        // The old program is detached before the new one attaches.
        self.balancer = None;
        let mut servers = backends(SERVERS);
        servers.reverse();
        self.balancer = Some(self.load_balancer(servers, datapath));
    }

    pub fn lb(&self) -> &Balancer {
        self.balancer.as_ref().expect("balancer")
    }

    pub fn vip(&self) -> SocketAddr {
        SocketAddr::from((VIP, self.port))
    }

    pub fn direct(&self, i: usize) -> SocketAddr {
        SocketAddr::from((server_addr(i), self.port))
    }

    /// `n` new connections to the VIP from the client, one request each;
    /// returns how many each server answered.
    pub fn vip_flows(&self, n: usize) -> BTreeMap<String, usize> {
        let vip = self.vip();
        in_ns(&self.bed.ns("c"), move || {
            let mut by_server = BTreeMap::new();
            for _ in 0..n {
                *by_server.entry(fetch(vip, "/whoami")).or_insert(0) += 1;
            }
            by_server
        })
    }

    /// One request straight to each of `servers` (not through the VIP): the
    /// reply is a packet the host sends, which carries its metric out.
    pub fn touch(&self, servers: &[usize]) {
        let addrs: Vec<SocketAddr> = servers.iter().map(|&i| self.direct(i)).collect();
        in_ns(&self.bed.ns("c"), move || {
            for a in addrs {
                fetch(a, "/whoami");
            }
        });
    }

    /// `n` requests to `/hold` straight to each of `servers`, held in flight
    /// until the gate opens; the connections to keep open meanwhile.
    pub fn hold(&self, servers: &[usize], n: usize) -> Vec<TcpStream> {
        let addrs: Vec<SocketAddr> = servers.iter().map(|&i| self.direct(i)).collect();
        in_ns(&self.bed.ns("c"), move || {
            let mut held = Vec::new();
            for addr in addrs {
                for _ in 0..n {
                    let mut c = connect(addr);
                    c.write_all(b"GET /hold HTTP/1.1\r\nHost: hermes\r\n\r\n").expect("send /hold");
                    held.push(c);
                }
            }
            held
        })
    }

    /// A connection through the VIP that the balancer placed on server `i`
    /// (new connections until one answers `/whoami` from it; 100 at most).
    pub fn connection_on(&self, i: usize) -> TcpStream {
        let vip = self.vip();
        in_ns(&self.bed.ns("c"), move || {
            for _ in 0..100 {
                let mut c = connect(vip);
                if request(&mut c, "/whoami") == format!("s{i}") {
                    return c;
                }
            }
            panic!("100 connections through the VIP, none on s{i}")
        })
    }

    /// Touches `servers` until `cond` holds on the balancer (5 s at most).
    pub fn touch_until(&self, servers: &[usize], what: &str, cond: impl Fn(&Balancer) -> bool) {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            self.touch(servers);
            if cond(self.lb()) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "timed out waiting for {what}: {:?} {:?}",
                self.lb().counters(),
                self.lb().server_stats()
            );
            thread::sleep(Duration::from_millis(5));
        }
    }
}
