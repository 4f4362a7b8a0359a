//! The network-namespace testbed: a client, a balancer and servers on one
//! bridge, each in a namespace of its own that the test creates and a Drop
//! guard removes (even when the test fails). Hosts take addresses from
//! 192.0.2.0/24, the VIP is 198.51.100.10; no traffic leaves the namespaces.
#![allow(dead_code)]

use std::{
    fs::File,
    io::{Read, Write},
    net::{Ipv4Addr, SocketAddr, TcpStream},
    os::fd::AsRawFd,
    process::Command,
    sync::atomic::{AtomicUsize, Ordering},
    time::Duration,
};

pub const VIP: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 10);
pub const CLIENT: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 1);
pub const BALANCER: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 2);
pub const CLIENT_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x01];
pub const BALANCER_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x02];

pub fn server_addr(i: usize) -> Ipv4Addr {
    Ipv4Addr::new(192, 0, 2, 11 + i as u8)
}

pub fn server_mac(i: usize) -> [u8; 6] {
    [0x02, 0, 0, 0, 0, 0x11 + i as u8]
}

fn mac_str(m: [u8; 6]) -> String {
    m.iter().map(|b| format!("{b:02x}")).collect::<Vec<_>>().join(":")
}

/// Whether the privileged tests can run; without, fails when
/// `HERMES_REQUIRE_BPF=1` and otherwise skips loudly.
pub fn privileged_or_skip(test: &str) -> bool {
    // SAFETY: geteuid has no preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    let ip = Command::new("ip").arg("-V").output().is_ok_and(|o| o.status.success());
    let why = match (root, ip) {
        (true, true) => return true,
        (false, _) => "needs root (CAP_SYS_ADMIN for network namespaces, CAP_BPF, CAP_NET_ADMIN)",
        (true, false) => "needs the `ip` command (iproute2)",
    };
    if std::env::var("HERMES_REQUIRE_BPF").as_deref() == Ok("1") {
        panic!("{test}: HERMES_REQUIRE_BPF=1 but the testbed cannot run: {why}");
    }
    eprintln!("\n*** SKIPPED {test}: {why} ***\n");
    false
}

fn ip(args: &[&str]) {
    let out = Command::new("ip").args(args).output().expect("run ip");
    assert!(out.status.success(), "ip {}: {}", args.join(" "), String::from_utf8_lossy(&out.stderr));
}

/// The namespaces of one test. Dropping it deletes them, and with them
/// every veth pair and the bridge.
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
    /// Client, balancer and `servers` servers on one bridge. The client
    /// routes the VIP through the balancer; each server holds the VIP on
    /// loopback with `arp_ignore=1` and `arp_announce=2`.
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

/// One HTTP/1.1 request on `conn`, returns the body (the server answers
/// with Content-Length; the connection stays open).
pub fn request(conn: &mut TcpStream, path: &str) -> String {
    let req = format!("GET {path} HTTP/1.1\r\nHost: hermes\r\n\r\n");
    conn.write_all(req.as_bytes()).expect("send request");
    let mut buf = Vec::new();
    let mut byte = [0u8; 1];
    while !buf.ends_with(b"\r\n\r\n") {
        conn.read_exact(&mut byte).expect("read response head");
        buf.push(byte[0]);
    }
    let head = String::from_utf8_lossy(&buf).to_ascii_lowercase();
    assert!(head.starts_with("http/1.1 200"), "response: {head}");
    let len: usize = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .map(|v| v.trim().parse().expect("content-length"))
        .expect("content-length header");
    let mut body = vec![0u8; len];
    conn.read_exact(&mut body).expect("read body");
    String::from_utf8(body).expect("utf-8 body")
}

pub fn connect(addr: SocketAddr) -> TcpStream {
    let conn = TcpStream::connect_timeout(&addr, Duration::from_secs(5))
        .unwrap_or_else(|e| panic!("connect to {addr}: {e}"));
    conn.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    conn
}

/// A new connection to `addr`, one request, the body.
pub fn fetch(addr: SocketAddr, path: &str) -> String {
    request(&mut connect(addr), path)
}

/// A raw capture of every frame `eth0` of the calling thread's namespace
/// receives (AF_PACKET), read back with [`Capture::frames`].
pub struct Capture {
    fd: std::os::fd::OwnedFd,
}

impl Capture {
    pub fn open() -> Self {
        use std::os::fd::FromRawFd;
        let proto = (libc::ETH_P_ALL as u16).to_be() as i32;
        // SAFETY: plain socket(2) call; the fd is owned below.
        let fd = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW | libc::SOCK_NONBLOCK, proto) };
        assert!(fd >= 0, "AF_PACKET socket: {}", std::io::Error::last_os_error());
        // SAFETY: `fd` is a fresh socket we own.
        let fd = unsafe { std::os::fd::OwnedFd::from_raw_fd(fd) };
        let size: libc::c_int = 8 << 20;
        // SAFETY: valid fd and option value of the right size.
        unsafe {
            libc::setsockopt(
                fd.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_RCVBUFFORCE,
                (&size as *const libc::c_int).cast(),
                size_of::<libc::c_int>() as libc::socklen_t,
            )
        };
        Self { fd }
    }

    /// Incoming frames captured so far (outgoing ones are skipped).
    pub fn frames(&self) -> Vec<Vec<u8>> {
        let mut out = Vec::new();
        let mut buf = vec![0u8; 65536];
        loop {
            // SAFETY: zeroed sockaddr_ll is a valid out-parameter.
            let mut from: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
            let mut len = size_of::<libc::sockaddr_ll>() as libc::socklen_t;
            // SAFETY: buffer and address pointers are valid for their lengths.
            let n = unsafe {
                libc::recvfrom(
                    self.fd.as_raw_fd(),
                    buf.as_mut_ptr().cast(),
                    buf.len(),
                    0,
                    (&mut from as *mut libc::sockaddr_ll).cast(),
                    &mut len,
                )
            };
            if n < 0 {
                return out;
            }
            if from.sll_pkttype != libc::PACKET_OUTGOING {
                out.push(buf[..n as usize].to_vec());
            }
        }
    }
}
