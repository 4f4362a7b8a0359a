//! The network-namespace testbed of the tests and of `dsr-bench`: a client,
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

    /// The namespace of `role` (`c`, `lb`, `s0`, ...).
    pub fn ns(&self, role: &str) -> String {
        format!("{}{role}", self.prefix)
    }

    /// Number of servers.
    pub fn servers(&self) -> usize {
        self.servers
    }
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
