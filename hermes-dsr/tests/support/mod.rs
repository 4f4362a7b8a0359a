//! Test helpers of the tier (`hermes-dsr`'s tests and `hermes-dsr-tools`'):
//! the testbed (from `hermes-dsr-tools`), the cluster the
//! end-to-end tests run on, HTTP/1.1 over plain sockets, and a raw capture.
#![allow(dead_code)]

mod cluster;
mod frames;

use std::{
    io::{Read, Write},
    net::{SocketAddr, TcpStream},
    os::fd::AsRawFd,
    time::Duration,
};

pub use cluster::*;
// Not every test binary sends raw frames.
#[allow(unused_imports)]
pub use frames::*;
pub use hermes_dsr_tools::testbed::*;
pub use hermes_test_support::netns::privileged_or_skip;

/// One HTTP/1.1 request on `conn`, returns the body (the server answers
/// with Content-Length; the connection stays open).
pub fn request(conn: &mut TcpStream, path: &str) -> String {
    try_request(conn, path).unwrap_or_else(|e| panic!("request {path}: {e}"))
}

/// As [`request`], with the error when the connection fails (reset,
/// closed, timed out) instead of a panic.
pub fn try_request(conn: &mut TcpStream, path: &str) -> std::io::Result<String> {
    let req = format!("GET {path} HTTP/1.1\r\nHost: hermes\r\n\r\n");
    conn.write_all(req.as_bytes())?;
    let mut buf = Vec::new();
    let mut byte = [0u8; 1];
    while !buf.ends_with(b"\r\n\r\n") {
        conn.read_exact(&mut byte)?;
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
    conn.read_exact(&mut body)?;
    Ok(String::from_utf8(body).expect("utf-8 body"))
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
        self.frames_both().into_iter().filter(|(out, _)| !out).map(|(_, f)| f).collect()
    }

    /// Every frame captured so far, each with whether this host sent it
    /// (`true`) or received it. Sent frames are seen after tc egress.
    pub fn frames_both(&self) -> Vec<(bool, Vec<u8>)> {
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
            out.push((from.sll_pkttype == libc::PACKET_OUTGOING, buf[..n as usize].to_vec()));
        }
    }
}
