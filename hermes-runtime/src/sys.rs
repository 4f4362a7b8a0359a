//! The Linux calls the runtime makes beyond `std`: listeners with
//! `SO_REUSEPORT` (socket2), the listeners systemd passes (sd-notify), CPU
//! affinity, `shutdown` of a listener and the per-worker epoll set of the
//! shared-listener mode (nix), and the calls none of them wraps: `TCP_INFO`
//! on a listening socket, a process's pidfd (`pidfd_open`), which tells
//! when that very process exits, whatever reuses its pid later, and the
//! process's CPU time and CPU quota (cgroup).

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
use std::sync::atomic::{AtomicBool, Ordering};

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
///
/// The first server of the process to look takes them; a later one binds
/// its own (two servers owning one descriptor would close it twice). The
/// variables stay in the environment: unsetting them races with every
/// other thread that reads the environment.
pub(crate) fn listen_fds() -> io::Result<Option<Vec<TcpListener>>> {
    let invalid = |msg: String| io::Error::new(io::ErrorKind::InvalidInput, msg);
    let fds = sd_notify::listen_fds().map_err(|e| invalid(format!("socket activation: {e}")))?;
    if fds.len() == 0 {
        return Ok(None);
    }
    if !take_once(&LISTEN_FDS_TAKEN) {
        tracing::info!(
            "socket activation: the passed listeners were taken by another server of this process"
        );
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

/// Whether a server of this process took the `LISTEN_FDS` descriptors.
static LISTEN_FDS_TAKEN: AtomicBool = AtomicBool::new(false);

/// Takes what `taken` guards, once per process: `true` for the first
/// caller only. AcqRel: a lone flag; the swap alone decides who takes.
pub(crate) fn take_once(taken: &AtomicBool) -> bool {
    !taken.swap(true, Ordering::AcqRel)
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

/// Whether this process may run on only some of the machine's online CPUs:
/// an operator gave it cores (taskset, a cpuset, a container's
/// `--cpuset-cpus`, Kubernetes' static CPU manager). `false` when it may run
/// on all of them, or when either count is unknown.
pub(crate) fn given_a_cpu_subset() -> bool {
    let online = nix::unistd::sysconf(nix::unistd::SysconfVar::_NPROCESSORS_ONLN)
        .ok()
        .flatten()
        .and_then(|n| usize::try_from(n).ok())
        .unwrap_or(0);
    let allowed = allowed_cpus().len();
    allowed > 0 && allowed < online
}

/// Pins the calling thread to `cpu`.
pub(crate) fn pin_to(cpu: usize) -> io::Result<()> {
    run_on(&[cpu])
}

/// Lets the calling thread run on `cpus` (and no other CPU).
pub(crate) fn run_on(cpus: &[usize]) -> io::Result<()> {
    let mut set = CpuSet::new();
    for &cpu in cpus {
        set.set(cpu).map_err(io::Error::from)?;
    }
    sched_setaffinity(Pid::from_raw(0), &set).map_err(io::Error::from)
}

/// The kernel's scheduler statistics of one thread
/// (`/proc/thread-self/schedstat`, kept open: one `pread` a reading).
#[derive(Debug)]
pub(crate) struct SchedStat(std::fs::File);

impl SchedStat {
    /// The calling thread's statistics.
    pub(crate) fn of_this_thread() -> io::Result<Self> {
        std::fs::File::open("/proc/thread-self/schedstat").map(Self)
    }

    /// Total nanoseconds the thread was runnable but waiting for a CPU (the
    /// second of the file's three numbers: time on the CPU, time waiting on
    /// a run queue, time slices run).
    pub(crate) fn run_delay_ns(&self) -> io::Result<u64> {
        use std::os::unix::fs::FileExt;
        let mut buf = [0u8; 96];
        let n = self.0.read_at(&mut buf, 0)?;
        let text = std::str::from_utf8(&buf[..n]).map_err(io::Error::other)?;
        text.split_ascii_whitespace()
            .nth(1)
            .and_then(|v| v.parse().ok())
            .ok_or_else(|| io::Error::other(format!("unexpected schedstat {text:?}")))
    }
}

/// Asks the kernel's fair scheduler (EEVDF, Linux 6.12 and later) for time
/// slices of `slice` for the calling thread (`sched_setattr` with
/// `sched_runtime`, clamped by the kernel to 0.1 to 100 ms; no privilege
/// needed): a thread with a shorter slice has earlier virtual deadlines, so
/// on waking it preempts threads that asked for longer ones sooner, at the
/// price of more preemptions. Its share of the CPU does not change. An
/// older kernel ignores the request or refuses it.
pub(crate) fn request_slice(slice: std::time::Duration) -> io::Result<()> {
    /// `struct sched_attr` of `sched_setattr(2)`.
    #[repr(C)]
    #[derive(Default)]
    struct SchedAttr {
        size: u32,
        policy: u32,
        flags: u64,
        nice: i32,
        priority: u32,
        runtime: u64,
        deadline: u64,
        period: u64,
        util_min: u32,
        util_max: u32,
    }
    let mut attr = SchedAttr { size: size_of::<SchedAttr>() as u32, ..SchedAttr::default() };
    // SAFETY: `attr` is a valid `sched_attr` of the size it states; 0 is the
    // calling thread.
    let got = unsafe { libc::syscall(libc::SYS_sched_getattr, 0, &raw mut attr, attr.size, 0) };
    if got != 0 {
        return Err(io::Error::last_os_error());
    }
    attr.runtime = u64::try_from(slice.as_nanos()).unwrap_or(u64::MAX);
    // SAFETY: as above; the policy and nice value are the thread's own.
    let set = unsafe { libc::syscall(libc::SYS_sched_setattr, 0, &raw const attr, 0) };
    if set != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
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

/// The CPU time of the whole process (every thread: the workers, their
/// blocking pools), in nanoseconds: `clock_gettime(CLOCK_PROCESS_CPUTIME_ID)`.
pub(crate) fn process_cpu_ns() -> io::Result<u64> {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: `ts` is a valid, writable timespec for the call's duration.
    if unsafe { libc::clock_gettime(libc::CLOCK_PROCESS_CPUTIME_ID, &mut ts) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(u64::try_from(ts.tv_sec).unwrap_or(0) * 1_000_000_000 + u64::try_from(ts.tv_nsec).unwrap_or(0))
}

/// The CPU quota of the process's cgroups in cores (`cpu.max` on cgroup v2,
/// `cpu.cfs_quota_us / cpu.cfs_period_us` on v1; the smallest along the
/// path to the root), or `None` when there is none. Reads a few files: not
/// for a per-request path.
pub(crate) fn cpu_quota_cores() -> Option<f64> {
    cpu_quota_of("self")
}

/// [`cpu_quota_cores`] of process `pid` (`self`: this one).
fn cpu_quota_of(pid: &str) -> Option<f64> {
    let cgroups = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).ok()?;
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
    let mut quota: Option<f64> = None;
    for line in mounts.lines() {
        // `ID PARENT DEV ROOT MOUNTPOINT OPTS... - FSTYPE SOURCE SUPEROPTS`
        let Some((head, tail)) = line.split_once(" - ") else { continue };
        let head: Vec<&str> = head.split(' ').collect();
        let tail: Vec<&str> = tail.split(' ').collect();
        let (Some(root), Some(mountpoint), Some(fstype)) = (head.get(3), head.get(4), tail.first()) else {
            continue;
        };
        let v1_cpu = *fstype == "cgroup" && tail.get(2).is_some_and(|o| o.split(',').any(|o| o == "cpu"));
        let v2 = *fstype == "cgroup2";
        if !v1_cpu && !v2 {
            continue;
        }
        // The process's path in that hierarchy.
        let path = cgroups.lines().find_map(|l| {
            let mut f = l.splitn(3, ':');
            let (id, controllers, path) = (f.next()?, f.next()?, f.next()?);
            let mine = if v2 {
                id == "0" && controllers.is_empty()
            } else {
                controllers.split(',').any(|c| c == "cpu")
            };
            mine.then_some(path)
        });
        let Some(path) = path else { continue };
        let relative = path.strip_prefix(root).unwrap_or(path).trim_start_matches('/');
        let mut dir = std::path::Path::new(mountpoint).join(relative);
        loop {
            if let Some(cores) = if v2 { cpu_max(&dir) } else { cfs_quota(&dir) } {
                quota = Some(quota.map_or(cores, |q| q.min(cores)));
            }
            if dir.as_os_str() == *mountpoint || !dir.pop() {
                break;
            }
        }
    }
    quota
}

/// A v2 cgroup's `cpu.max` (`QUOTA PERIOD` or `max PERIOD`) in cores.
fn cpu_max(dir: &std::path::Path) -> Option<f64> {
    let text = std::fs::read_to_string(dir.join("cpu.max")).ok()?;
    let mut f = text.split_whitespace();
    let (quota, period) = (f.next()?.parse::<f64>().ok()?, f.next()?.parse::<f64>().ok()?);
    (quota > 0.0 && period > 0.0).then(|| quota / period)
}

/// A v1 cgroup's `cpu.cfs_quota_us / cpu.cfs_period_us` in cores (-1: none).
fn cfs_quota(dir: &std::path::Path) -> Option<f64> {
    let read = |f: &str| std::fs::read_to_string(dir.join(f)).ok()?.trim().parse::<f64>().ok();
    let (quota, period) = (read("cpu.cfs_quota_us")?, read("cpu.cfs_period_us")?);
    (quota > 0.0 && period > 0.0).then(|| quota / period)
}

#[cfg(test)]
mod tests {
    use std::{path::PathBuf, process::Command};

    /// A child in a cgroup of its own with a quarter of a core: its quota
    /// reads 0.25 (v2 `cpu.max` where the cpu controller is on v2, else v1).
    /// Skipped where no cgroup can be made (not root, read-only).
    #[test]
    fn the_quota_of_a_process_in_a_limited_cgroup_is_read_in_cores() {
        let v2 = std::fs::read_to_string("/sys/fs/cgroup/cgroup.controllers")
            .is_ok_and(|c| c.split_whitespace().any(|c| c == "cpu"));
        let base = if v2 { PathBuf::from("/sys/fs/cgroup") } else { PathBuf::from("/sys/fs/cgroup/cpu") };
        let dir = base.join(format!("hermes-quota-test-{}", std::process::id()));
        if std::fs::create_dir(&dir).is_err() {
            eprintln!("SKIPPED: no cgroup can be made under {}", base.display());
            return;
        }
        let limited = if v2 {
            std::fs::write(dir.join("cpu.max"), "25000 100000")
        } else {
            std::fs::write(dir.join("cpu.cfs_period_us"), "100000")
                .and_then(|()| std::fs::write(dir.join("cpu.cfs_quota_us"), "25000"))
        };
        let mut child = Command::new("sleep").arg("30").spawn().expect("spawn sleep");
        let moved = limited.and_then(|()| std::fs::write(dir.join("cgroup.procs"), child.id().to_string()));
        let quota = super::cpu_quota_of(&child.id().to_string());
        let _ = child.kill();
        let _ = child.wait();
        let _ = std::fs::remove_dir(&dir);
        moved.expect("limit the cgroup and move the child into it");
        assert_eq!(quota, Some(0.25));
    }
}
