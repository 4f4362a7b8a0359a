//! Hand-made frames for the tests that send the balancer what a normal
//! stack would not: spoofed TCP segments, IPv4 fragments, forged metrics.
//! Headers carry correct checksums; frames leave raw through `eth0` of the
//! calling thread's network namespace (AF_PACKET), to documentation
//! addresses only.

use std::{
    net::Ipv4Addr,
    os::fd::{AsRawFd, FromRawFd, OwnedFd},
};

/// TCP flags.
pub const SYN: u8 = 0x02;
pub const ACK: u8 = 0x10;
/// The "more fragments" flag of an IPv4 header's fragment field.
pub const MORE_FRAGMENTS: u16 = 0x2000;

/// The one's complement sum of `data` (RFC 1071), folded.
fn sum(data: &[u8], mut acc: u32) -> u32 {
    for pair in data.chunks(2) {
        acc += u32::from(u16::from_be_bytes([pair[0], *pair.get(1).unwrap_or(&0)]));
    }
    while acc > 0xffff {
        acc = (acc & 0xffff) + (acc >> 16);
    }
    acc
}

fn checksum(data: &[u8], acc: u32) -> [u8; 2] {
    (!(sum(data, acc) as u16)).to_be_bytes()
}

/// An IPv4 datagram: header (with `options`, padded to 4 bytes) and `payload`.
#[derive(Clone, Debug)]
pub struct Ipv4 {
    pub src: Ipv4Addr,
    pub dst: Ipv4Addr,
    pub protocol: u8,
    pub id: u16,
    /// Flags and fragment offset (in 8-byte units), as in the header.
    pub fragment: u16,
    pub options: Vec<u8>,
}

impl Ipv4 {
    pub fn new(src: Ipv4Addr, dst: Ipv4Addr, protocol: u8) -> Self {
        Self { src, dst, protocol, id: 0x4d2, fragment: 0, options: Vec::new() }
    }

    pub fn datagram(&self, payload: &[u8]) -> Vec<u8> {
        let mut options = self.options.clone();
        options.resize(options.len().div_ceil(4) * 4, 0);
        let header_len = 20 + options.len();
        let mut ip = vec![0u8; header_len];
        ip[0] = 0x40 | (header_len / 4) as u8;
        ip[2..4].copy_from_slice(&((header_len + payload.len()) as u16).to_be_bytes());
        ip[4..6].copy_from_slice(&self.id.to_be_bytes());
        ip[6..8].copy_from_slice(&self.fragment.to_be_bytes());
        ip[8] = 64;
        ip[9] = self.protocol;
        ip[12..16].copy_from_slice(&self.src.octets());
        ip[16..20].copy_from_slice(&self.dst.octets());
        ip[20..].copy_from_slice(&options);
        let check = checksum(&ip, 0);
        ip[10..12].copy_from_slice(&check);
        ip.extend_from_slice(payload);
        ip
    }
}

/// A TCP segment (20-byte header, no options) from `src:sport` to
/// `dst:dport`, with its checksum over the pseudo-header.
#[allow(clippy::too_many_arguments)]
pub fn tcp(
    src: Ipv4Addr,
    dst: Ipv4Addr,
    sport: u16,
    dport: u16,
    seq: u32,
    ack: u32,
    flags: u8,
    payload: &[u8],
) -> Vec<u8> {
    let mut t = vec![0u8; 20];
    t[0..2].copy_from_slice(&sport.to_be_bytes());
    t[2..4].copy_from_slice(&dport.to_be_bytes());
    t[4..8].copy_from_slice(&seq.to_be_bytes());
    t[8..12].copy_from_slice(&ack.to_be_bytes());
    t[12] = 5 << 4;
    t[13] = flags;
    t[14..16].copy_from_slice(&64240u16.to_be_bytes());
    t.extend_from_slice(payload);
    let mut pseudo = Vec::with_capacity(12);
    pseudo.extend_from_slice(&src.octets());
    pseudo.extend_from_slice(&dst.octets());
    pseudo.extend_from_slice(&[0, 6]);
    pseudo.extend_from_slice(&(t.len() as u16).to_be_bytes());
    let check = checksum(&t, sum(&pseudo, 0));
    t[16..18].copy_from_slice(&check);
    t
}

/// An Ethernet II frame carrying IPv4.
pub fn ethernet(dst: [u8; 6], src: [u8; 6], ip: &[u8]) -> Vec<u8> {
    let mut f = Vec::with_capacity(14 + ip.len());
    f.extend_from_slice(&dst);
    f.extend_from_slice(&src);
    f.extend_from_slice(&[0x08, 0x00]);
    f.extend_from_slice(ip);
    f
}

/// A small random number generator (xorshift64*), enough for spoofed
/// ports and addresses.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Self(seed | 1)
    }

    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
}

/// An AF_PACKET socket that sends whole frames out of an interface of the
/// calling thread's network namespace.
pub struct RawSender {
    fd: OwnedFd,
    ifindex: i32,
}

impl RawSender {
    pub fn open(interface: &str) -> Self {
        let name = std::ffi::CString::new(interface).expect("interface name");
        // SAFETY: a valid NUL-terminated name.
        let ifindex = unsafe { libc::if_nametoindex(name.as_ptr()) } as i32;
        assert!(ifindex > 0, "no interface {interface}");
        // SAFETY: plain socket(2) call; the fd is owned below.
        let fd = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW, 0) };
        assert!(fd >= 0, "AF_PACKET socket: {}", std::io::Error::last_os_error());
        // SAFETY: `fd` is a fresh socket we own.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        Self { fd, ifindex }
    }

    /// Sends `frame` as it is (retrying while the device's queue is full).
    pub fn send(&self, frame: &[u8]) {
        // SAFETY: zeroed sockaddr_ll is valid; the fields set below complete it.
        let mut to: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
        to.sll_family = libc::AF_PACKET as u16;
        to.sll_ifindex = self.ifindex;
        to.sll_halen = 6;
        to.sll_addr[..6].copy_from_slice(&frame[..6]);
        loop {
            // SAFETY: the buffer and address are valid for their lengths.
            let n = unsafe {
                libc::sendto(
                    self.fd.as_raw_fd(),
                    frame.as_ptr().cast(),
                    frame.len(),
                    0,
                    (&to as *const libc::sockaddr_ll).cast(),
                    size_of::<libc::sockaddr_ll>() as libc::socklen_t,
                )
            };
            if n == frame.len() as isize {
                return;
            }
            let err = std::io::Error::last_os_error();
            assert!(err.raw_os_error() == Some(libc::ENOBUFS), "sending a raw frame: {err}");
            std::thread::yield_now();
        }
    }
}

/// The load option (type 0x9E) as a host writes it: eligible workers,
/// workers, the load (big endian), and, with `token`, the server's token
/// (big endian). Without a token, the 8-byte form of releases before tokens.
pub fn load_option(load: u32, eligible: u8, workers: u8, token: Option<u64>) -> Vec<u8> {
    let mut opt = vec![0x9E, 0, eligible, workers];
    opt.extend_from_slice(&load.to_be_bytes());
    if let Some(token) = token {
        opt.extend_from_slice(&token.to_be_bytes());
    }
    opt[1] = opt.len() as u8;
    opt
}
