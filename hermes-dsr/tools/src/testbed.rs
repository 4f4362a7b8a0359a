//! The network-namespace testbed of the tier's tests and of `dsr-bench`: a client,
//! a balancer and servers on one bridge, each in a namespace of its own that
//! [`Testbed::new`] creates and its `Drop` removes (even when a test fails).
//! Hosts take addresses from 192.0.2.0/24, the VIP is 198.51.100.10; no
//! traffic leaves the namespaces. Needs root and the `ip` command.

use std::{
    fs::File,
    net::Ipv4Addr,
    os::fd::AsRawFd,
    process::Command,
    sync::atomic::{AtomicUsize, Ordering},
};

/// The virtual address.
pub const VIP: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 10);
/// The client's address.
pub const CLIENT: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 1);
/// The balancer's address.
pub const BALANCER: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 2);
/// The client's MAC.
pub const CLIENT_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x01];
/// The balancer's MAC.
pub const BALANCER_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x02];

/// Server `i`'s address (192.0.2.11 + i).
pub fn server_addr(i: usize) -> Ipv4Addr {
    Ipv4Addr::new(192, 0, 2, 11 + i as u8)
}

/// Server `i`'s MAC.
pub fn server_mac(i: usize) -> [u8; 6] {
    [0x02, 0, 0, 0, 0, 0x11 + i as u8]
}

/// Server `i`'s token, the secret its metrics carry (a fixed test value: a
/// deployment draws a random one per server).
pub fn server_token(i: usize) -> u64 {
    0x5eed_0000_0000_0011 + i as u64
}

/// The first `n` servers as the balancer knows them: address, MAC, token.
pub fn backends(n: usize) -> Vec<hermes_dsr::Backend> {
    (0..n)
        .map(|i| hermes_dsr::Backend { mac: server_mac(i), addr: server_addr(i), token: server_token(i) })
        .collect()
}

fn mac_str(m: [u8; 6]) -> String {
    m.iter().map(|b| format!("{b:02x}")).collect::<Vec<_>>().join(":")
}

fn ip(args: &[&str]) {
    let out = Command::new("ip").args(args).output().expect("run ip");
    assert!(out.status.success(), "ip {}: {}", args.join(" "), String::from_utf8_lossy(&out.stderr));
}

/// The namespaces of one test. Dropping it deletes them, and with them
/// every veth pair and the bridge.
#[derive(Debug)]
pub struct Testbed {
    prefix: String,
    made: Vec<String>,
    servers: usize,
}

impl Drop for Testbed {
    fn drop(&mut self) {
        for ns in self.made.iter().rev() {
            let _ = Command::new("ip").args(["netns", "del", ns]).status();
        }
    }
}

static NEXT: AtomicUsize = AtomicUsize::new(0);

impl Testbed {
    /// Client (`c`), balancer (`lb`) and `servers` servers (`s0`, ...) on
    /// one bridge, each with `eth0`. The client routes the VIP through the
    /// balancer; each server holds the VIP on loopback with `arp_ignore=1`
    /// and `arp_announce=2`.
    ///
    /// # Panics
    /// When a namespace or link cannot be made (not root, no `ip`).
    pub fn new(servers: usize) -> Self {
        let prefix = format!("hdsr{}x{}", std::process::id(), NEXT.fetch_add(1, Ordering::Relaxed));
        let mut bed = Self { prefix, made: Vec::new(), servers };
        let br = bed.add_ns("br");
        ip(&["-n", &br, "link", "add", "br0", "type", "bridge"]);
        ip(&["-n", &br, "link", "set", "br0", "up"]);
        bed.add_host("c", CLIENT, CLIENT_MAC);
        bed.add_host("lb", BALANCER, BALANCER_MAC);
        for i in 0..servers {
            let name = format!("s{i}");
            bed.add_host(&name, server_addr(i), server_mac(i));
            let ns = bed.ns(&name);
            ip(&["-n", &ns, "addr", "add", &format!("{VIP}/32"), "dev", "lo"]);
            in_ns(&ns, || {
                for (key, value) in [
                    ("all/arp_ignore", "1"),
                    ("all/arp_announce", "2"),
                    ("eth0/arp_ignore", "1"),
                    ("eth0/arp_announce", "2"),
                ] {
                    let path = format!("/proc/sys/net/ipv4/conf/{key}");
                    std::fs::write(&path, value).unwrap_or_else(|e| panic!("writing {path}: {e}"));
                }
            });
        }
        ip(&["-n", &bed.ns("c"), "route", "add", &format!("{VIP}/32"), "via", &BALANCER.to_string()]);
        bed
    }

    fn add_ns(&mut self, role: &str) -> String {
        let ns = format!("{}{role}", self.prefix);
        ip(&["netns", "add", &ns]);
        self.made.push(ns.clone());
        ip(&["-n", &ns, "link", "set", "lo", "up"]);
        ns
    }

    fn add_host(&mut self, role: &str, addr: Ipv4Addr, mac: [u8; 6]) {
        let ns = self.add_ns(role);
        let br = self.ns("br");
        let port = format!("v{role}");
        ip(&[
            "-n",
            &br,
            "link",
            "add",
            &port,
            "type",
            "veth",
            "peer",
            "name",
            "eth0",
            "address",
            &mac_str(mac),
            "netns",
            &ns,
        ]);
        ip(&["-n", &br, "link", "set", &port, "master", "br0", "up"]);
        ip(&["-n", &ns, "addr", "add", &format!("{addr}/24"), "dev", "eth0"]);
        ip(&["-n", &ns, "link", "set", "eth0", "up"]);
    }

    /// The bridge's port for `role` (in the `br` namespace): the peer of
    /// that host's `eth0`.
    pub fn port(&self, role: &str) -> String {
        format!("v{role}")
    }

    /// Readies the segment for the balancer at XDP
    /// ([`Datapath::Xdp`](hermes_dsr::Datapath::Xdp)), for as long as the returned
    /// program lives. On a veth pair two things differ from a wire:
    /// - frames the balancer sends back with `XDP_TX` reach the bridge only
    ///   if the bridge's port runs an XDP program too, so a pass program is
    ///   attached there;
    /// - a frame from the client's own stack carries a partial TCP checksum
    ///   that the device is left to finish (`CHECKSUM_PARTIAL`); `XDP_TX`
    ///   turns the frame into a bare buffer and that state is lost, so the
    ///   servers would drop every forwarded segment (`TcpInCsumErrors`). The
    ///   client's transmit checksum offload is turned off, as if its frames
    ///   had come from a wire, where the checksum is always complete.
    ///
    /// # Errors
    /// As [`XdpPass::attach`](hermes_dsr::XdpPass::attach); the offload change
    /// panics like the other testbed steps.
    pub fn ready_for_xdp(&self) -> Result<hermes_dsr::XdpPass, hermes_dsr::Error> {
        in_ns(&self.ns("c"), || tx_checksum_offload("eth0", false));
        let port = self.port("lb");
        in_ns(&self.ns("br"), move || hermes_dsr::XdpPass::attach(&port))
    }

    /// Makes host `role` send every TCP segment as a packet of its own
    /// (`ip link set eth0 gso_max_segs 1`), as a host whose device does no
    /// segmentation offload does: its bulk transfers leave as frames that
    /// fill the MTU, with no room left for an IPv4 option.
    pub fn full_size_segments(&self, role: &str) {
        ip(&["-n", &self.ns(role), "link", "set", "dev", "eth0", "gso_max_segs", "1"]);
    }

    /// The namespace of `role` (`c`, `lb`, `s0`, ...).
    pub fn ns(&self, role: &str) -> String {
        format!("{}{role}", self.prefix)
    }

    /// Number of servers.
    pub fn servers(&self) -> usize {
        self.servers
    }
}

/// Turns transmit checksum offload of `interface` (in the calling thread's
/// network namespace) on or off, as `ethtool -K IF tx on|off` does.
fn tx_checksum_offload(interface: &str, on: bool) {
    /// `ETHTOOL_STXCSUM` of `linux/ethtool.h`.
    const ETHTOOL_STXCSUM: u32 = 0x17;
    #[repr(C)]
    struct EthtoolValue {
        cmd: u32,
        data: u32,
    }
    let mut value = EthtoolValue { cmd: ETHTOOL_STXCSUM, data: u32::from(on) };
    // SAFETY: an all-zero ifreq is valid (a name of NULs, a null pointer).
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    assert!(interface.len() < req.ifr_name.len(), "interface name `{interface}` too long");
    for (dst, src) in req.ifr_name.iter_mut().zip(interface.bytes()) {
        *dst = src as libc::c_char;
    }
    req.ifr_ifru.ifru_data = (&raw mut value).cast();
    // SAFETY: plain socket creation; the descriptor is closed below.
    let sock = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    assert!(sock >= 0, "socket for SIOCETHTOOL: {}", std::io::Error::last_os_error());
    // SAFETY: `req` names the interface and points at `value`, both alive
    // for the call; SIOCETHTOOL with ETHTOOL_STXCSUM reads `value` only.
    let rc = unsafe { libc::ioctl(sock, libc::SIOCETHTOOL, &mut req) };
    let err = std::io::Error::last_os_error();
    // SAFETY: `sock` is the descriptor made above, closed once.
    unsafe { libc::close(sock) };
    assert_eq!(
        rc,
        0,
        "turning transmit checksum offload of {interface} {}: {err}",
        if on { "on" } else { "off" }
    );
}

/// Runs `f` on a thread that joined network namespace `ns`. Sockets and
/// threads made there stay in it.
pub fn in_ns<T: Send + 'static>(ns: &str, f: impl FnOnce() -> T + Send + 'static) -> T {
    let path = format!("/run/netns/{ns}");
    std::thread::spawn(move || {
        let file = File::open(&path).unwrap_or_else(|e| panic!("opening {path}: {e}"));
        // SAFETY: a valid namespace fd; setns changes only this thread.
        let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
        assert_eq!(rc, 0, "setns {path}: {}", std::io::Error::last_os_error());
        f()
    })
    .join()
    .unwrap_or_else(|e| std::panic::resume_unwind(e))
}
