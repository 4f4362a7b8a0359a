//! `SO_REUSEPORT` groups on loopback port 0, client connections and accept
//! counting, for the dispatch program's own tests.

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
/// sets the policy and publishes `bitmap` now.
///
/// # Panics
/// When a map update or the attach fails.
pub fn steer(d: &mut Dispatcher, listeners: &[TcpListener], min: u32, bitmap: u64) {
    for (i, l) in listeners.iter().enumerate() {
        d.insert(i, l).unwrap();
    }
    d.attach(&listeners[0]).unwrap();
    d.settings().configure(min, 0, Default::default());
    d.settings().publish(bitmap, monotonic_ns(), 0);
}
