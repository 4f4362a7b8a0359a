//! The hand-over protocol between a running server and its successor: a
//! `SOCK_SEQPACKET` socket pair, a short text header (the [`Offer`]) sent
//! with the descriptors (`SCM_RIGHTS`), and the successor's one-line answer
//! (`ready` or `refused <reason>`). The header itself is `offer`'s; what the
//! two servers do with it is the hand-over logic, in `state::handover`.

use std::{
    ffi::OsString,
    fmt,
    io::{IoSlice, IoSliceMut},
    net::TcpListener,
    os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd},
    path::PathBuf,
    process::Command,
    time::{Duration, Instant},
};

use hermes_bpf::KernelFds;
use nix::{
    poll::{PollFd, PollFlags, PollTimeout, poll},
    sys::socket::{
        AddressFamily, ControlMessage, ControlMessageOwned, MsgFlags, SockFlag, SockType, recvmsg, sendmsg,
        socketpair,
    },
};

pub(crate) use super::offer::Offer;
use super::{UPGRADE_FD_ENV, Upgrade, UpgradeError, Upgraded};

/// Most descriptors one message carries (the kernel's `SCM_MAX_FD`). An
/// offer of more listeners sends the rest in messages of their own, each
/// [`CONTINUED`] with up to this many.
const MAX_FDS: usize = 253;

/// The text of a message carrying more of the offer's listeners.
const CONTINUED: &str = "listeners";

/// The kernel objects an offer carries (program and four maps).
const KERNEL_FDS: usize = 5;

/// How many listeners the offer's first message carries (beside the
/// kernel's descriptors); the others follow in [`CONTINUED`] messages.
fn first_listeners(listeners: usize, kernel: bool) -> usize {
    listeners.min(MAX_FDS - if kernel { KERNEL_FDS } else { 0 })
}

/// The current binary's path: `/proc/self/exe`'s target, without the
/// ` (deleted)` the kernel appends once the file was replaced (an upgrade
/// wants the new file at that path).
fn current_exe() -> std::io::Result<PathBuf> {
    let exe = std::env::current_exe()?;
    let s = exe.to_string_lossy();
    Ok(match s.strip_suffix(" (deleted)") {
        Some(path) => PathBuf::from(path),
        None => exe,
    })
}

/// Sends one message with descriptors.
fn send(sock: &OwnedFd, bytes: &[u8], fds: &[RawFd]) -> Result<(), UpgradeError> {
    let iov = [IoSlice::new(bytes)];
    let cmsgs = [ControlMessage::ScmRights(fds)];
    let cmsgs: &[ControlMessage<'_>] = if fds.is_empty() { &[] } else { &cmsgs };
    sendmsg::<()>(sock.as_raw_fd(), &iov, cmsgs, MsgFlags::empty(), None)
        .map_err(|e| UpgradeError::io("sending on the hand-over socket", e))?;
    Ok(())
}

/// Waits up to `timeout` for one message; `Ok(None)` on timeout. An empty
/// message is the peer closing its end.
fn recv(sock: &OwnedFd, timeout: Duration) -> Result<Option<(String, Vec<OwnedFd>)>, UpgradeError> {
    let ms = timeout.as_millis().min(i32::MAX as u128) as i32;
    let mut pfd = [PollFd::new(std::os::fd::AsFd::as_fd(sock), PollFlags::POLLIN)];
    let ready = poll(&mut pfd, PollTimeout::try_from(ms).unwrap_or(PollTimeout::MAX))
        .map_err(|e| UpgradeError::io("waiting on the hand-over socket", e))?;
    if ready == 0 {
        return Ok(None);
    }
    let mut buf = vec![0u8; 4096];
    let mut cmsg = nix::cmsg_space!([RawFd; MAX_FDS]);
    let mut iov = [IoSliceMut::new(&mut buf)];
    let msg = match recvmsg::<()>(sock.as_raw_fd(), &mut iov, Some(&mut cmsg), MsgFlags::MSG_CMSG_CLOEXEC) {
        Ok(msg) => msg,
        // The peer closed its end with our message unread: as an empty message.
        Err(nix::errno::Errno::ECONNRESET) => return Ok(Some((String::new(), Vec::new()))),
        Err(e) => return Err(UpgradeError::io("reading the hand-over socket", e)),
    };
    let mut fds = Vec::new();
    for c in msg.cmsgs().map_err(|e| UpgradeError::io("reading the hand-over socket", e))? {
        if let ControlMessageOwned::ScmRights(raw) = c {
            // SAFETY: the kernel just installed these descriptors in this
            // process for this message; nothing else owns them.
            fds.extend(raw.into_iter().map(|fd| unsafe { OwnedFd::from_raw_fd(fd) }));
        }
    }
    let n = msg.bytes;
    Ok(Some((String::from_utf8_lossy(&buf[..n]).into_owned(), fds)))
}

/// Sends the offer: the header, the first listeners and the kernel's
/// descriptors in one message, then the other listeners, a message at most
/// [`MAX_FDS`] at a time (more than 248 workers).
fn send_offer(
    sock: &OwnedFd,
    offer: &Offer,
    listeners: &[OwnedFd],
    kernel: Option<&KernelFds>,
) -> Result<(), UpgradeError> {
    let first = first_listeners(listeners.len(), kernel.is_some());
    let mut fds: Vec<RawFd> = listeners[..first].iter().map(AsRawFd::as_raw_fd).collect();
    if let Some(k) = kernel {
        fds.extend(k.iter().map(AsRawFd::as_raw_fd));
    }
    send(sock, offer.encode().as_bytes(), &fds)?;
    for chunk in listeners[first..].chunks(MAX_FDS) {
        let fds: Vec<RawFd> = chunk.iter().map(AsRawFd::as_raw_fd).collect();
        send(sock, CONTINUED.as_bytes(), &fds)?;
    }
    Ok(())
}

/// The old server's side: starts the successor, offers it `listeners` and
/// `kernel`, and waits for its answer. Returns the successor's pid once it
/// answered `ready`.
pub(crate) fn offer(
    upgrade: Upgrade,
    offer: &Offer,
    listeners: &[OwnedFd],
    kernel: Option<&KernelFds>,
) -> Result<Upgraded, UpgradeError> {
    let (ours, theirs) = socketpair(AddressFamily::Unix, SockType::SeqPacket, None, SockFlag::SOCK_CLOEXEC)
        .map_err(|e| UpgradeError::io("creating the hand-over socket", e))?;
    let mut command = match upgrade.command {
        Some(c) => c,
        None => {
            let exe = current_exe().map_err(|e| UpgradeError::io("finding the current binary", e))?;
            let mut c = Command::new(exe);
            c.args(std::env::args_os().skip(1).collect::<Vec<OsString>>());
            c
        }
    };
    let child_fd = theirs.as_raw_fd();
    command.env(UPGRADE_FD_ENV, child_fd.to_string());
    // SAFETY: the closure runs in the child between fork and exec and only
    // calls fcntl, which is async-signal-safe; it keeps the successor's end
    // of the socket open across exec (it was made close-on-exec so that no
    // other child inherits it).
    unsafe {
        std::os::unix::process::CommandExt::pre_exec(&mut command, move || {
            if libc::fcntl(child_fd, libc::F_SETFD, 0) == -1 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let shown = format!("{command:?}");
    let mut child =
        command.spawn().map_err(|source| UpgradeError::Spawn { command: shown.clone(), source })?;
    drop(theirs);
    let pid = child.id();
    tracing::info!(successor = pid, command = %shown, "upgrade: successor started; offering the listeners and the kernel state");
    let result = (|| {
        send_offer(&ours, offer, listeners, kernel)?;
        let deadline = Instant::now() + upgrade.timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(UpgradeError::Timeout { pid, timeout: upgrade.timeout });
            }
            match recv(&ours, left.min(Duration::from_millis(50)))? {
                Some((text, _)) if text.is_empty() => {
                    // The successor closed its end: wait a moment for its status.
                    for _ in 0..100 {
                        if let Ok(Some(status)) = child.try_wait() {
                            return Err(UpgradeError::SuccessorExited { pid, status });
                        }
                        std::thread::sleep(Duration::from_millis(10));
                    }
                    return Err(UpgradeError::Protocol(format!(
                        "the successor (pid {pid}) closed the hand-over socket without an answer"
                    )));
                }
                Some((text, _)) => {
                    if let Some(rest) = text.strip_prefix("ready") {
                        let _ = rest;
                        return Ok(Upgraded { pid });
                    }
                    if let Some(reason) = text.strip_prefix("refused ") {
                        return Err(UpgradeError::Refused { pid, reason: reason.to_owned() });
                    }
                    return Err(UpgradeError::Protocol(format!("unexpected answer `{text}`")));
                }
                None => {
                    if let Ok(Some(status)) = child.try_wait() {
                        // An answer sent just before exiting is still queued.
                        if let Some((text, _)) = recv(&ours, Duration::ZERO)?
                            && let Some(reason) = text.strip_prefix("refused ")
                        {
                            return Err(UpgradeError::Refused { pid, reason: reason.to_owned() });
                        }
                        return Err(UpgradeError::SuccessorExited { pid, status });
                    }
                }
            }
        }
    })();
    match &result {
        Ok(_) => {
            // The successor lives on (it is reparented when this process exits).
            drop(child);
        }
        Err(e) => {
            // A successor that refused exits by itself: give it a moment.
            if matches!(e, UpgradeError::Refused { .. }) {
                let until = Instant::now() + Duration::from_secs(2);
                while matches!(child.try_wait(), Ok(None)) && Instant::now() < until {
                    std::thread::sleep(Duration::from_millis(10));
                }
            }
            if let Ok(None) = child.try_wait() {
                tracing::warn!(successor = pid, error = %e, "upgrade: stopping the successor");
                let _ = child.kill();
            }
            let _ = child.wait();
        }
    }
    result
}

/// What a successor received, until it takes over.
pub(crate) struct Inherited {
    pub(crate) channel: OwnedFd,
    pub(crate) offer: Offer,
    pub(crate) listeners: Vec<TcpListener>,
}

impl fmt::Debug for Inherited {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Inherited").field("offer", &self.offer).finish()
    }
}

/// The successor's end of the hand-over socket, if [`UPGRADE_FD_ENV`] names one.
/// The first server of the process to look takes it; any later one starts
/// as usual (the variable stays in the environment: unsetting it races with
/// every other thread that reads the environment).
pub(crate) fn channel_from_env() -> Result<Option<OwnedFd>, UpgradeError> {
    let Some(value) = std::env::var_os(UPGRADE_FD_ENV) else { return Ok(None) };
    if !crate::sys::take_once(&CHANNEL_TAKEN) {
        tracing::info!("{UPGRADE_FD_ENV} was taken by another server of this process; starting as usual");
        return Ok(None);
    }
    channel_from(&value)
}

/// Whether a server of this process took the descriptor of
/// [`UPGRADE_FD_ENV`] already.
static CHANNEL_TAKEN: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// The hand-over socket named by `value` (a descriptor number), taken over
/// by this process; `None` when the number is open but no hand-over socket.
fn channel_from(value: &std::ffi::OsStr) -> Result<Option<OwnedFd>, UpgradeError> {
    let fd: RawFd = value.to_str().and_then(|v| v.parse().ok()).ok_or_else(|| {
        UpgradeError::Protocol(format!("{UPGRADE_FD_ENV}={value:?} is not a descriptor number"))
    })?;
    // SAFETY: F_GETFD only reads the descriptor's flags; it fails with EBADF
    // when the number is not open.
    if unsafe { libc::fcntl(fd, libc::F_GETFD) } == -1 {
        return Err(UpgradeError::io(
            "opening the descriptor of HERMES_UPGRADE_FD",
            std::io::Error::last_os_error(),
        ));
    }
    // A process that inherited the variable from a successor (its child)
    // has no hand-over socket at that number: start as usual.
    // SAFETY: borrowed for the getsockopt only; the number is open.
    let borrowed = unsafe { std::os::fd::BorrowedFd::borrow_raw(fd) };
    let sock = socket2::SockRef::from(&borrowed);
    if sock.r#type().ok() != Some(socket2::Type::SEQPACKET)
        || sock.domain().ok() != Some(socket2::Domain::UNIX)
    {
        tracing::warn!(
            fd,
            "{UPGRADE_FD_ENV} names a descriptor that is no hand-over socket; starting as usual"
        );
        return Ok(None);
    }
    // SAFETY: the descriptor is open (checked above) and was left to this
    // process by the server that started it, for this use only; it is set
    // close-on-exec so that no child of ours inherits it.
    let fd = unsafe {
        libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC);
        OwnedFd::from_raw_fd(fd)
    };
    Ok(Some(fd))
}

/// Receives the offer on the successor's side.
pub(crate) fn receive(
    channel: OwnedFd,
    timeout: Duration,
) -> Result<(Inherited, Option<KernelFds>), (OwnedFd, UpgradeError)> {
    let (text, mut fds) = match recv(&channel, timeout) {
        Ok(Some(m)) => m,
        Ok(None) => {
            return Err((channel, UpgradeError::Protocol(format!("no offer within {timeout:?}"))));
        }
        Err(e) => return Err((channel, e)),
    };
    let offer = match Offer::decode(&text) {
        Ok(o) => o,
        Err(e) => return Err((channel, e)),
    };
    let first = first_listeners(offer.listeners, offer.kernel);
    let want = first + if offer.kernel { KERNEL_FDS } else { 0 };
    if fds.len() != want || offer.listeners == 0 {
        return Err((
            channel,
            UpgradeError::Protocol(format!(
                "the offer announced {want} descriptors in its first message ({} listeners in all), {} arrived",
                offer.listeners,
                fds.len()
            )),
        ));
    }
    let kernel = if offer.kernel {
        let k: Vec<OwnedFd> = fds.drain(first..).collect();
        let k: [OwnedFd; KERNEL_FDS] = k.try_into().expect("five checked above");
        Some(KernelFds::from_fds(k))
    } else {
        None
    };
    while fds.len() < offer.listeners {
        match recv(&channel, timeout) {
            Ok(Some((text, more)))
                if text == CONTINUED && !more.is_empty() && fds.len() + more.len() <= offer.listeners =>
            {
                fds.extend(more);
            }
            Ok(_) => {
                let e = format!("the offer announced {} listeners, {} arrived", offer.listeners, fds.len());
                return Err((channel, UpgradeError::Protocol(e)));
            }
            Err(e) => return Err((channel, e)),
        }
    }
    let listeners = fds.into_iter().map(TcpListener::from).collect();
    Ok((Inherited { channel, offer, listeners }, kernel))
}

/// Tells the old server why the successor refuses.
pub(crate) fn refuse(channel: &OwnedFd, error: &(dyn std::error::Error + 'static)) {
    let text = format!("refused {}", hermes_bpf::error_chain::chain(error));
    if let Err(e) = send(channel, text.as_bytes(), &[]) {
        tracing::warn!(error = %e, "upgrade: could not tell the running server why the hand-over is refused");
    }
}

/// Tells the old server that the successor serves.
pub(crate) fn ready(channel: &OwnedFd) -> Result<(), UpgradeError> {
    send(channel, format!("ready pid={}", std::process::id()).as_bytes(), &[])
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An offer of 600 listeners and the kernel's five descriptors: more
    /// than one message carries (`SCM_MAX_FD`), so they arrive in three,
    /// every one in order.
    #[test]
    fn an_offer_of_more_listeners_than_one_message_carries_arrives_whole() {
        let (ours, theirs) =
            socketpair(AddressFamily::Unix, SockType::SeqPacket, None, SockFlag::SOCK_CLOEXEC).unwrap();
        let listeners: Vec<TcpListener> =
            (0..600).map(|_| TcpListener::bind("127.0.0.1:0").expect("a listener")).collect();
        let ports: Vec<u16> = listeners.iter().map(|l| l.local_addr().unwrap().port()).collect();
        let owned: Vec<OwnedFd> = listeners.into_iter().map(OwnedFd::from).collect();
        let null = || OwnedFd::from(std::fs::File::open("/dev/null").unwrap());
        let kernel = KernelFds::from_fds([null(), null(), null(), null(), null()]);
        let offer = Offer {
            pid: 1,
            mode: crate::config::Mode::Hermes,
            layout: hermes_bpf::layout::LAYOUT_VERSION,
            slot_base: 0,
            workers: 600,
            listeners: 600,
            kernel: true,
            held: Vec::new(),
        };
        // The socket's buffer holds the three messages; the reader comes after.
        send_offer(&ours, &offer, &owned, Some(&kernel)).expect("sent");
        drop(owned);
        let (inherited, kernel) =
            receive(theirs, Duration::from_secs(5)).map_err(|(_, e)| e).expect("received");
        assert!(kernel.is_some());
        let got: Vec<u16> = inherited.listeners.iter().map(|l| l.local_addr().unwrap().port()).collect();
        assert_eq!(got, ports, "every listener, in order");
    }

    #[test]
    fn only_a_hand_over_socket_is_taken_from_the_environment() {
        use std::os::fd::IntoRawFd;
        let (ours, theirs) =
            socketpair(AddressFamily::Unix, SockType::SeqPacket, None, SockFlag::SOCK_CLOEXEC).unwrap();
        let raw = theirs.into_raw_fd();
        let taken =
            channel_from(std::ffi::OsStr::new(&raw.to_string())).unwrap().expect("a hand-over socket");
        assert_eq!(taken.as_raw_fd(), raw);
        // A descriptor of another kind (inherited variable, reused number).
        let tcp = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let n = tcp.as_raw_fd().to_string();
        assert!(channel_from(std::ffi::OsStr::new(&n)).unwrap().is_none());
        drop((ours, tcp));
        assert!(matches!(channel_from(std::ffi::OsStr::new("nope")), Err(UpgradeError::Protocol(_))));
        assert!(matches!(channel_from(std::ffi::OsStr::new("999999")), Err(UpgradeError::Io { .. })));
    }
}
