//! Descriptors a process inherits by name in its environment (systemd's
//! `LISTEN_FDS`, an upgrade's `HERMES_UPGRADE_FD`) are taken by the first
//! server of the process only: a second server in the same process binds
//! its own listeners instead of owning the same descriptor a second time
//! (and closing it twice). Run in a child process started as systemd
//! starts a service: the listener as descriptor 3, `LISTEN_FDS=1`,
//! `LISTEN_PID` the child's own pid.

use std::{
    net::SocketAddr,
    os::{fd::AsRawFd, unix::process::CommandExt},
    process::Command,
};

use hermes_runtime::{Builder, HermesListener, Mode};
use socket2::{Domain, Protocol, Socket, Type};

const CHILD_ENV: &str = "HERMES_TEST_CHILD";

#[test]
fn the_descriptors_of_socket_activation_are_taken_by_one_server_of_the_process() {
    let socket = Socket::new(Domain::IPV4, Type::STREAM, Some(Protocol::TCP)).expect("socket");
    socket.set_reuse_port(true).expect("SO_REUSEPORT");
    socket.bind(&"127.0.0.1:0".parse::<SocketAddr>().unwrap().into()).expect("bind");
    socket.listen(128).expect("listen");
    let fd = socket.as_raw_fd();
    let mut child = Command::new("/bin/sh");
    child
        .arg("-c")
        .arg(r#"LISTEN_PID=$$; export LISTEN_PID; exec "$0" "$@""#)
        .arg(std::env::current_exe().expect("the test binary"))
        .args(["--ignored", "--exact", "two_servers_in_one_activated_process", "--nocapture"])
        .env("LISTEN_FDS", "1")
        .env(CHILD_ENV, "two_servers");
    // SAFETY: between fork and exec the closure only calls dup2 and fcntl,
    // which are async-signal-safe.
    unsafe {
        child.pre_exec(move || {
            if fd != 3 && libc::dup2(fd, 3) == -1 {
                return Err(std::io::Error::last_os_error());
            }
            // Descriptor 3 stays open across exec.
            if libc::fcntl(3, libc::F_SETFD, 0) == -1 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let out = child.output().expect("run the child");
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "the child failed: {}\n{text}", out.status);
    assert!(text.contains("two servers, one listener each: ok"), "{text}");
}

/// The child of the test above (run only by it): two socket-activated
/// servers in one process, started and stopped.
#[test]
#[ignore = "the child process of the socket-activation test"]
fn two_servers_in_one_activated_process() {
    if std::env::var(CHILD_ENV).as_deref() != Ok("two_servers") {
        return;
    }
    let build = || {
        Builder::new()
            .workers(1)
            .mode(Mode::KernelHash)
            .socket_activation(true)
            .bind("127.0.0.1:0".parse().unwrap())
            .build()
            .expect("build")
    };
    let (first, second) = (build(), build());
    assert_ne!(first.local_addr(), second.local_addr(), "the second server bound its own listener");
    let serve =
        |mut listener: HermesListener| async move { while listener.accept_connection().await.is_some() {} };
    let (first, second) = (first.serve(serve).expect("serve"), second.serve(serve).expect("serve"));
    first.shutdown();
    second.shutdown();
    println!("two servers, one listener each: ok");
}
