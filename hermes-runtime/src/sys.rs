//! The few Linux calls the runtime makes that the standard library and
//! socket2 do not wrap: TCP_INFO on a listener, CPU pinning, shutting a
//! listener down, and the per-worker epoll set of the shared-listener mode.

use std::{
    io,
    net::{SocketAddr, TcpListener},
    os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd},
};

use socket2::{Domain, Protocol, Socket, Type};

fn cvt(ret: libc::c_int) -> io::Result<libc::c_int> {
    if ret < 0 { Err(io::Error::last_os_error()) } else { Ok(ret) }
}

/// A nonblocking listening socket on `addr`, with `SO_REUSEPORT` set before
/// `bind` when `reuseport` is true (so every worker's listener joins one group).
/// An IPv6 socket is dual-stack whatever `net.ipv6.bindv6only` says, so `[::]`
/// serves IPv4 clients as std's listener does by default.
pub(crate) fn listener(addr: SocketAddr, reuseport: bool, backlog: u32) -> io::Result<TcpListener> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    socket.set_reuse_address(true)?;
    if reuseport {
        socket.set_reuse_port(true)?;
    }
    if addr.is_ipv6() {
        socket.set_only_v6(false)?;
    }
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    socket.listen(i32::try_from(backlog).unwrap_or(i32::MAX))?;
    Ok(socket.into())
}

/// Fails with [`crate::PortInUse`] (kind `AddrInUse`) when a socket already
/// listens on `addr`: a probe bound without `SO_REUSEPORT` (and with
/// `SO_REUSEADDR`, so that connections in `TIME_WAIT` do not count) is
/// refused by any listener, whatever group it belongs to. Port 0 is never
/// in use. The probe is closed before returning.
pub(crate) fn refuse_taken_port(addr: SocketAddr) -> io::Result<()> {
    if addr.port() == 0 {
        return Ok(());
    }
    let probe = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    probe.set_reuse_address(true)?;
    if addr.is_ipv6() {
        probe.set_only_v6(false)?;
    }
    match probe.bind(&addr.into()) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::AddrInUse => {
            Err(io::Error::new(io::ErrorKind::AddrInUse, crate::PortInUse { addr }))
        }
        Err(e) => Err(e),
    }
}

/// The listening sockets passed by systemd's socket activation (the
/// `sd_listen_fds` protocol): `LISTEN_FDS` descriptors from 3, when
/// `LISTEN_PID` is this process (a child that inherited the variables is
/// not meant). `Ok(None)` without them. Each must be a listening TCP socket
/// with `SO_REUSEPORT` (systemd's `ReusePort=yes`) and all on one address;
/// they are made close-on-exec and nonblocking.
pub(crate) fn listen_fds() -> io::Result<Option<Vec<TcpListener>>> {
    let (Some(pid), Some(n)) = (std::env::var_os("LISTEN_PID"), std::env::var_os("LISTEN_FDS")) else {
        return Ok(None);
    };
    if pid.to_str().and_then(|p| p.parse::<u32>().ok()) != Some(std::process::id()) {
        return Ok(None);
    }
    let invalid = |msg: String| io::Error::new(io::ErrorKind::InvalidInput, msg);
    let n: RawFd = n
        .to_str()
        .and_then(|v| v.parse().ok())
        .filter(|&n| n > 0)
        .ok_or_else(|| invalid(format!("LISTEN_FDS={n:?} is not a positive number")))?;
    let mut listeners = Vec::new();
    for fd in 3..3 + n {
        // SAFETY: F_GETFD only reads flags; it fails on a closed number.
        if unsafe { libc::fcntl(fd, libc::F_GETFD) } == -1 {
            return Err(invalid(format!("socket activation: descriptor {fd} of LISTEN_FDS={n} is not open")));
        }
        // SAFETY: systemd passed this descriptor to this process (LISTEN_PID
        // checked above) for it to own; it is open.
        let socket = unsafe { Socket::from_raw_fd(fd) };
        socket.set_cloexec(true)?;
        let listening = socket.is_listener().unwrap_or(false);
        if !listening || socket.r#type().ok() != Some(Type::STREAM) {
            return Err(invalid(format!(
                "socket activation: descriptor {fd} is not a listening TCP socket (ListenStream= in the .socket unit)"
            )));
        }
        if !socket.reuse_port()? {
            return Err(invalid(format!(
                "socket activation: descriptor {fd} lacks SO_REUSEPORT; each worker needs its own listener in \
                 one SO_REUSEPORT group, so set ReusePort=yes in the .socket unit"
            )));
        }
        socket.set_nonblocking(true)?;
        listeners.push(TcpListener::from(socket));
    }
    let addr = listeners[0].local_addr()?;
    for l in &listeners[1..] {
        if l.local_addr()? != addr {
            return Err(invalid(format!(
                "socket activation: the sockets listen on {addr} and {}; one address per server",
                l.local_addr()?
            )));
        }
    }
    Ok(Some(listeners))
}

/// The accept-queue length of a listening socket: for a socket in LISTEN
/// state the kernel reports it in `tcpi_unacked` (and the limit in `tcpi_sacked`).
pub(crate) fn accept_queue(fd: RawFd) -> io::Result<u32> {
    // SAFETY: an all-zero tcp_info is a valid value (plain integers).
    let mut info: libc::tcp_info = unsafe { std::mem::zeroed() };
    let mut len = size_of::<libc::tcp_info>() as libc::socklen_t;
    // SAFETY: `info` and `len` are valid out-pointers of the stated size.
    cvt(unsafe {
        libc::getsockopt(fd, libc::IPPROTO_TCP, libc::TCP_INFO, (&raw mut info).cast(), &mut len)
    })?;
    Ok(info.tcpi_unacked)
}

/// Stops a listening socket, whichever descriptors still refer to it:
/// `shutdown(SHUT_RD)` on a listener takes the same kernel path as its last
/// close (the socket leaves its `SO_REUSEPORT` group and the kernel's socket
/// array, and its queued connections migrate), and wakes every task waiting
/// to accept on it.
pub(crate) fn stop_listening(fd: RawFd) -> io::Result<()> {
    // SAFETY: plain syscall on a descriptor the caller owns.
    cvt(unsafe { libc::shutdown(fd, libc::SHUT_RD) }).map(drop)
}

/// The CPUs this thread may run on, in order.
pub(crate) fn allowed_cpus() -> Vec<usize> {
    // SAFETY: an all-zero cpu_set_t is the empty set.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    // SAFETY: `set` is a valid out-pointer of the stated size.
    if unsafe { libc::sched_getaffinity(0, size_of::<libc::cpu_set_t>(), &mut set) } != 0 {
        return Vec::new();
    }
    (0..libc::CPU_SETSIZE as usize)
        // SAFETY: `cpu` is below CPU_SETSIZE.
        .filter(|&cpu| unsafe { libc::CPU_ISSET(cpu, &set) })
        .collect()
}

/// Pins the calling thread to `cpu`.
pub(crate) fn pin_to(cpu: usize) -> io::Result<()> {
    // SAFETY: an all-zero cpu_set_t is the empty set.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    // SAFETY: the caller passes a CPU from `allowed_cpus`, below CPU_SETSIZE.
    unsafe { libc::CPU_SET(cpu, &mut set) };
    // SAFETY: `set` is a valid cpu_set_t of the stated size.
    cvt(unsafe { libc::sched_setaffinity(0, size_of::<libc::cpu_set_t>(), &set) }).map(drop)
}

/// One worker's epoll set in the shared-listener mode: the shared listener
/// registered with `EPOLLEXCLUSIVE` (so one new connection wakes one worker,
/// as nginx does), and an eventfd that wakes this worker when it drains.
#[derive(Debug)]
pub(crate) struct ExclusiveEpoll {
    epoll: OwnedFd,
    wake: OwnedFd,
}

impl ExclusiveEpoll {
    pub(crate) fn new(listener: RawFd) -> io::Result<Self> {
        // SAFETY: plain syscalls; each returned descriptor is owned at once.
        let epoll = unsafe { OwnedFd::from_raw_fd(cvt(libc::epoll_create1(libc::EPOLL_CLOEXEC))?) };
        // SAFETY: as above.
        let wake =
            unsafe { OwnedFd::from_raw_fd(cvt(libc::eventfd(0, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK))?) };
        let add = |fd: RawFd, events: u32| {
            let mut ev = libc::epoll_event { events, u64: fd as u64 };
            // SAFETY: both descriptors are open; `ev` is a valid event.
            cvt(unsafe { libc::epoll_ctl(epoll.as_raw_fd(), libc::EPOLL_CTL_ADD, fd, &mut ev) })
        };
        add(listener, (libc::EPOLLIN | libc::EPOLLEXCLUSIVE) as u32)?;
        add(wake.as_raw_fd(), libc::EPOLLIN as u32)?;
        Ok(Self { epoll, wake })
    }

    /// A second handle on the wake eventfd, for the worker's drain request.
    pub(crate) fn waker(&self) -> io::Result<OwnedFd> {
        self.wake.try_clone()
    }
}

/// Writes to an eventfd made by [`ExclusiveEpoll::waker`].
pub(crate) fn wake_eventfd(fd: RawFd) {
    let one: u64 = 1;
    // SAFETY: writes 8 bytes from a valid u64 to an eventfd.
    unsafe { libc::write(fd, (&raw const one).cast(), 8) };
}

impl AsRawFd for ExclusiveEpoll {
    fn as_raw_fd(&self) -> RawFd {
        self.epoll.as_raw_fd()
    }
}

/// Accepts one connection from a nonblocking listener (`accept4` with
/// `SOCK_NONBLOCK | SOCK_CLOEXEC`).
pub(crate) fn accept_nonblocking(listener: RawFd) -> io::Result<(std::net::TcpStream, SocketAddr)> {
    // SAFETY: the caller's listener outlives this borrow.
    let fd = unsafe { std::os::fd::BorrowedFd::borrow_raw(listener) };
    let sock = socket2::SockRef::from(&fd);
    let (conn, addr) = sock.accept()?;
    conn.set_nonblocking(true)?;
    let addr = addr.as_socket().ok_or_else(|| io::Error::other("accepted a non-IP connection"))?;
    Ok((conn.into(), addr))
}
