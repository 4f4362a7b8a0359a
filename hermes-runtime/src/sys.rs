//! The Linux calls the runtime makes beyond `std`: listeners with
//! `SO_REUSEPORT` (socket2), the listeners systemd passes (sd-notify), CPU
//! affinity, `shutdown` of a listener and the per-worker epoll set of the
//! shared-listener mode (nix), and the calls none of them wraps: `TCP_INFO`
//! on a listening socket, and a process's pidfd (`pidfd_open`), which tells
//! when that very process exits, whatever reuses its pid later.

use std::{
    io,
    net::{SocketAddr, TcpListener},
    os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd},
};

use nix::{
    sched::{CpuSet, sched_getaffinity, sched_setaffinity},
    sys::{
        epoll::{Epoll, EpollCreateFlags, EpollEvent, EpollFlags},
        eventfd::{EfdFlags, EventFd},
        socket::{Shutdown, shutdown},
    },
    unistd::Pid,
};
use socket2::{Domain, Protocol, Socket, Type};

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

/// Fails with [`PortInUse`](crate::error::PortInUse) (kind `AddrInUse`) when a socket already
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
            Err(io::Error::new(io::ErrorKind::AddrInUse, crate::error::PortInUse { addr }))
        }
        Err(e) => Err(e),
    }
}

/// The listening sockets passed by systemd's socket activation (read with
/// `sd_notify::listen_fds`, which checks `LISTEN_PID` and sets them
/// close-on-exec); `Ok(None)` without them. Each must be a listening TCP
/// socket with `SO_REUSEPORT` (systemd's `ReusePort=yes`), and all on one
/// address; they are made nonblocking.
pub(crate) fn listen_fds() -> io::Result<Option<Vec<TcpListener>>> {
    let invalid = |msg: String| io::Error::new(io::ErrorKind::InvalidInput, msg);
    let fds = sd_notify::listen_fds().map_err(|e| invalid(format!("socket activation: {e}")))?;
    if fds.len() == 0 {
        return Ok(None);
    }
    let mut listeners = Vec::with_capacity(fds.len());
    for fd in fds {
        // SAFETY: F_GETFD only reads flags; it fails on a closed number.
        if unsafe { libc::fcntl(fd, libc::F_GETFD) } == -1 {
            return Err(invalid(format!("socket activation: descriptor {fd} of LISTEN_FDS is not open")));
        }
        // SAFETY: systemd passed this descriptor to this process (LISTEN_PID
        // checked by `listen_fds`) for it to own; it is open.
        let socket = unsafe { Socket::from_raw_fd(fd) };
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
/// state the kernel reports it in `tcpi_unacked` (and the limit in
/// `tcpi_sacked`). Neither socket2 nor nix reads `TCP_INFO`.
pub(crate) fn accept_queue(fd: RawFd) -> io::Result<u32> {
    // SAFETY: an all-zero tcp_info is a valid value (plain integers).
    let mut info: libc::tcp_info = unsafe { std::mem::zeroed() };
    let mut len = size_of::<libc::tcp_info>() as libc::socklen_t;
    // SAFETY: `info` and `len` are valid out-pointers of the stated size.
    let ret =
        unsafe { libc::getsockopt(fd, libc::IPPROTO_TCP, libc::TCP_INFO, (&raw mut info).cast(), &mut len) };
    if ret < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(info.tcpi_unacked)
}

/// Stops a listening socket, whichever descriptors still refer to it:
/// `shutdown(SHUT_RD)` on a listener takes the same kernel path as its last
/// close (the socket leaves its `SO_REUSEPORT` group and the kernel's socket
/// array, and its queued connections migrate), and wakes every task waiting
/// to accept on it.
pub(crate) fn stop_listening(fd: RawFd) -> io::Result<()> {
    shutdown(fd, Shutdown::Read).map_err(io::Error::from)
}

/// A pidfd of process `pid` (`pidfd_open`): it refers to that process for
/// as long as it is open, and becomes readable once the process exits.
/// `Ok(None)` when no such process runs (`ESRCH`).
pub(crate) fn pidfd_open(pid: u32) -> io::Result<Option<OwnedFd>> {
    let pid = libc::pid_t::try_from(pid).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    // SAFETY: pidfd_open takes a pid and flags and returns a new descriptor.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    if fd < 0 {
        let e = io::Error::last_os_error();
        return if e.raw_os_error() == Some(libc::ESRCH) { Ok(None) } else { Err(e) };
    }
    // SAFETY: a new descriptor that nothing else owns; pidfds are close-on-exec.
    Ok(Some(unsafe { OwnedFd::from_raw_fd(fd as RawFd) }))
}

/// Whether the process behind `pidfd` has exited (its pidfd is readable).
pub(crate) fn has_exited(pidfd: BorrowedFd<'_>) -> bool {
    let mut pfd = [nix::poll::PollFd::new(pidfd, nix::poll::PollFlags::POLLIN)];
    // A failed poll reads as "still running": the slots stay held.
    matches!(nix::poll::poll(&mut pfd, nix::poll::PollTimeout::ZERO), Ok(n) if n > 0)
}

/// The CPUs this thread may run on, in order.
pub(crate) fn allowed_cpus() -> Vec<usize> {
    match sched_getaffinity(Pid::from_raw(0)) {
        Ok(set) => (0..CpuSet::count()).filter(|&cpu| set.is_set(cpu).unwrap_or(false)).collect(),
        Err(_) => Vec::new(),
    }
}

/// Pins the calling thread to `cpu`.
pub(crate) fn pin_to(cpu: usize) -> io::Result<()> {
    let mut set = CpuSet::new();
    set.set(cpu).map_err(io::Error::from)?;
    sched_setaffinity(Pid::from_raw(0), &set).map_err(io::Error::from)
}

/// One worker's epoll set in the shared-listener mode: the shared listener
/// registered with `EPOLLEXCLUSIVE` (so one new connection wakes one worker,
/// as nginx does), and an eventfd that wakes this worker when it drains.
#[derive(Debug)]
pub(crate) struct ExclusiveEpoll {
    epoll: Epoll,
    wake: EventFd,
}

impl ExclusiveEpoll {
    pub(crate) fn new(listener: BorrowedFd<'_>) -> io::Result<Self> {
        let epoll = Epoll::new(EpollCreateFlags::EPOLL_CLOEXEC)?;
        let wake = EventFd::from_flags(EfdFlags::EFD_CLOEXEC | EfdFlags::EFD_NONBLOCK)?;
        epoll.add(listener, EpollEvent::new(EpollFlags::EPOLLIN | EpollFlags::EPOLLEXCLUSIVE, 0))?;
        epoll.add(wake.as_fd(), EpollEvent::new(EpollFlags::EPOLLIN, 1))?;
        Ok(Self { epoll, wake })
    }

    /// A second handle on the wake eventfd, for the worker's drain request.
    pub(crate) fn waker(&self) -> io::Result<Waker> {
        // SAFETY: the duplicate refers to this set's eventfd.
        Ok(Waker(unsafe { EventFd::from_owned_fd(self.wake.as_fd().try_clone_to_owned()?) }))
    }
}

impl AsRawFd for ExclusiveEpoll {
    fn as_raw_fd(&self) -> RawFd {
        self.epoll.0.as_raw_fd()
    }
}

/// Wakes the worker whose [`ExclusiveEpoll`] it was made from.
#[derive(Debug)]
pub(crate) struct Waker(EventFd);

impl Waker {
    pub(crate) fn wake(&self) {
        // A full counter (2^64 - 2 wake-ups unread) still wakes the worker.
        let _ = self.0.write(1);
    }
}

/// Accepts one connection from a nonblocking listener (`accept4` with
/// `SOCK_CLOEXEC`), made nonblocking.
pub(crate) fn accept_nonblocking(listener: BorrowedFd<'_>) -> io::Result<(std::net::TcpStream, SocketAddr)> {
    let sock = socket2::SockRef::from(&listener);
    let (conn, addr) = sock.accept()?;
    conn.set_nonblocking(true)?;
    let addr = addr.as_socket().ok_or_else(|| io::Error::other("accepted a non-IP connection"))?;
    Ok((conn.into(), addr))
}
