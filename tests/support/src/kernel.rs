//! `SO_REUSEPORT` groups on loopback port 0, client connections and accept
//! counting, the descriptor limit and thread pinning, for the dispatch
//! program's own tests.

use std::{
    io::{self, Read, Write},
    net::{SocketAddr, TcpListener, TcpStream},
    time::{Duration, Instant},
};

use hermes_bpf::{Dispatcher, monotonic_ns};
use socket2::{Domain, Protocol, Socket, Type};

/// `n` listeners in one `SO_REUSEPORT` group on 127.0.0.1 with a
/// kernel-chosen port, non-blocking, with room in their accept queues.
///
/// # Panics
/// When a socket cannot be made, bound or listened on.
pub fn reuseport_group(n: usize) -> (Vec<TcpListener>, SocketAddr) {
    let mut addr = SocketAddr::from(([127, 0, 0, 1], 0));
    let mut listeners = Vec::with_capacity(n);
    for _ in 0..n {
        let s = Socket::new(Domain::IPV4, Type::STREAM, Some(Protocol::TCP)).unwrap();
        s.set_reuse_port(true).unwrap();
        s.bind(&addr.into()).unwrap();
        s.listen(1024).unwrap();
        s.set_nonblocking(true).unwrap();
        let l: TcpListener = s.into();
        addr = l.local_addr().unwrap();
        listeners.push(l);
    }
    (listeners, addr)
}

/// The listeners as references, for [`accept_all`].
pub fn refs(listeners: &[TcpListener]) -> Vec<&TcpListener> {
    listeners.iter().collect()
}

/// Opens `count` connections to `addr`, each on a fresh source port.
///
/// # Panics
/// When a connection fails.
pub fn connect(addr: SocketAddr, count: usize) -> Vec<TcpStream> {
    (0..count)
        .map(|_| {
            let s = TcpStream::connect_timeout(&addr, Duration::from_secs(5)).unwrap();
            s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
            s
        })
        .collect()
}

/// Accepts from every listener until `expected` connections were accepted
/// in all, or 5 s passed. Returns the accepted streams per listener.
///
/// # Panics
/// On an accept error other than `WouldBlock`.
pub fn accept_all(listeners: &[&TcpListener], expected: usize) -> Vec<Vec<TcpStream>> {
    let mut out: Vec<Vec<TcpStream>> = listeners.iter().map(|_| Vec::new()).collect();
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut total = 0;
    while total < expected && Instant::now() < deadline {
        let mut progressed = false;
        for (i, l) in listeners.iter().enumerate() {
            match l.accept() {
                Ok((s, _)) => {
                    s.set_nonblocking(false).unwrap();
                    out[i].push(s);
                    total += 1;
                    progressed = true;
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => panic!("accept on listener {i}: {e}"),
            }
        }
        if !progressed {
            std::thread::sleep(Duration::from_millis(2));
        }
    }
    out
}

/// Number of connections accepted per listener.
pub fn counts(accepted: &[Vec<TcpStream>]) -> Vec<usize> {
    accepted.iter().map(Vec::len).collect()
}

/// Proves a connection is alive end to end: the server side writes a byte
/// and the client reads it (a reset would fail the read).
///
/// # Errors
/// The write's and the read's.
pub fn round_trip(server: &mut TcpStream, client: &mut TcpStream) -> io::Result<()> {
    server.write_all(b"h")?;
    let mut b = [0u8; 1];
    client.read_exact(&mut b)?;
    assert_eq!(&b, b"h");
    Ok(())
}

/// Places each listener in its slot, attaches the program to the group,
/// sets the policy and publishes the list `eligible` (slots) now.
///
/// # Panics
/// When a map update or the attach fails.
pub fn steer(d: &mut Dispatcher, listeners: &[TcpListener], min: u32, eligible: &[usize]) {
    for (i, l) in listeners.iter().enumerate() {
        d.insert(i, l).unwrap();
    }
    d.attach(&listeners[0]).unwrap();
    d.settings().configure(min, 0, Default::default());
    d.settings().publish(eligible.iter().copied(), monotonic_ns(), 0);
}

/// Raises this process's soft `RLIMIT_NOFILE` to at least `n` descriptors
/// (at most the hard limit): groups of a thousand listeners and the
/// connections to them need more than a default 1024.
pub fn raise_nofile(n: u64) {
    let mut lim = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: `lim` is a valid out-pointer; RLIMIT_NOFILE exists.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } == 0 && lim.rlim_cur < n {
        lim.rlim_cur = n.min(lim.rlim_max);
        // SAFETY: a valid rlimit, at most the hard limit.
        unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &lim) };
    }
}

/// Pins the calling thread to `cpu`; `false` when this process may not run
/// there.
pub fn pin_thread(cpu: usize) -> bool {
    // SAFETY: an all-zero cpu_set_t is the empty set.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    if cpu >= 8 * size_of::<libc::cpu_set_t>() {
        return false;
    }
    // SAFETY: `cpu` is below CPU_SETSIZE (checked above).
    unsafe { libc::CPU_SET(cpu, &mut set) };
    // SAFETY: `set` is a valid cpu_set_t of the stated size.
    unsafe { libc::sched_setaffinity(0, size_of::<libc::cpu_set_t>(), &set) == 0 }
}

/// The CPUs this thread may run on.
pub fn allowed_cpus() -> Vec<usize> {
    // SAFETY: an all-zero cpu_set_t is the empty set; the call fills it.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    // SAFETY: `set` is a valid out-pointer of the stated size.
    if unsafe { libc::sched_getaffinity(0, size_of::<libc::cpu_set_t>(), &mut set) } != 0 {
        return Vec::new();
    }
    // SAFETY: reading bits of a filled set, below CPU_SETSIZE.
    (0..8 * size_of::<libc::cpu_set_t>()).filter(|&c| unsafe { libc::CPU_ISSET(c, &set) }).collect()
}
