//! Where and how many: the address family a server takes clients from, and
//! its default number of workers under a CPU quota. Real sockets, real
//! cgroups, the real kernel program.

use std::{
    fs,
    net::{Ipv4Addr, Ipv6Addr, SocketAddr},
    path::{Path, PathBuf},
    process::Command,
};

use hermes_runtime::{Builder, Mode};
use hermes_test_support::{ebpf::require_bpf, http::get, server::start, snapshot::wait_all_eligible};

/// `[::]` in Hermes mode: IPv4 clients (127.0.0.1) and IPv6 clients (::1)
/// are both served, both through the dispatch program.
#[test]
fn ebpf_unspecified_ipv6_bind_serves_ipv4_and_ipv6_clients() {
    if !require_bpf("ebpf_unspecified_ipv6_bind_serves_ipv4_and_ipv6_clients") {
        return;
    }
    let h = start(Builder::new().workers(2).bind("[::]:0".parse().unwrap()).require_ebpf(true));
    assert_eq!(h.mode(), Mode::Hermes);
    wait_all_eligible(&h);
    let port = h.local_addr().port();
    for ip in [Ipv4Addr::LOCALHOST.into(), Ipv6Addr::LOCALHOST.into()] {
        for _ in 0..20 {
            let r = get(SocketAddr::new(ip, port), "/").unwrap_or_else(|e| panic!("GET / from {ip}: {e}"));
            assert_eq!((r.status, r.body.as_str()), (200, "ok"), "from {ip}");
        }
    }
    let s = h.snapshot();
    let accepted: u64 = s.workers.iter().map(|w| w.accepted).sum();
    let placed: u64 = s.workers.iter().map(|w| w.dispatched).sum::<u64>()
        + s.fallbacks.too_few
        + s.fallbacks.stale
        + s.fallbacks.no_socket;
    assert_eq!((accepted, placed), (40, 40), "both families went through the program: {s:?}");
    h.shutdown();
}

/// A cgroup with a CPU quota of one CPU, made for this test and removed by
/// `Drop`; `None` (said loudly) where no cgroup CPU controller can be written.
struct QuotaCgroup(PathBuf);

impl QuotaCgroup {
    fn one_cpu(test: &str) -> Option<Self> {
        let name = format!("hermes-test-{}", std::process::id());
        let v2 = Path::new("/sys/fs/cgroup");
        let made = if fs::read_to_string(v2.join("cgroup.controllers")).is_ok_and(|c| c.contains("cpu")) {
            let _ = fs::write(v2.join("cgroup.subtree_control"), "+cpu");
            let dir = v2.join(&name);
            fs::create_dir(&dir).and_then(|()| fs::write(dir.join("cpu.max"), "100000 100000")).map(|()| dir)
        } else {
            let v1 = ["/sys/fs/cgroup/cpu", "/sys/fs/cgroup/cpu,cpuacct"]
                .into_iter()
                .map(Path::new)
                .find(|p| p.join("cpu.cfs_quota_us").exists());
            match v1 {
                Some(root) => {
                    let dir = root.join(&name);
                    fs::create_dir(&dir)
                        .and_then(|()| fs::write(dir.join("cpu.cfs_period_us"), "100000"))
                        .and_then(|()| fs::write(dir.join("cpu.cfs_quota_us"), "100000"))
                        .map(|()| dir)
                }
                None => Err(std::io::Error::other("no cgroup v1 or v2 CPU controller mounted")),
            }
        };
        match made {
            Ok(dir) => Some(Self(dir)),
            Err(e) => {
                eprintln!("\n!!!!! SKIPPED {test}: cannot make a cgroup with a CPU quota: {e} !!!!!\n");
                None
            }
        }
    }
}

impl Drop for QuotaCgroup {
    fn drop(&mut self) {
        let _ = fs::remove_dir(&self.0);
    }
}

/// A server with the default worker count, run in a child process inside a
/// cgroup limited to one CPU on a machine with more: one worker, not one per
/// CPU of the affinity mask.
#[test]
fn default_workers_follow_the_cgroup_cpu_quota() {
    let test = "default_workers_follow_the_cgroup_cpu_quota";
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    if cpus < 2 {
        eprintln!("\n!!!!! SKIPPED {test}: needs at least 2 CPUs to tell a quota of 1 apart !!!!!\n");
        return;
    }
    let Some(cgroup) = QuotaCgroup::one_cpu(test) else { return };
    // The shell moves itself into the cgroup, then becomes the child test.
    let out = Command::new("sh")
        .arg("-c")
        .arg(r#"echo $$ > "$1/cgroup.procs" && shift && exec "$@""#)
        .arg("sh")
        .arg(&cgroup.0)
        .arg(std::env::current_exe().unwrap())
        .args(["--ignored", "--exact", "quota_child", "--nocapture", "--test-threads=1"])
        .env("HERMES_QUOTA_CHILD", "1")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "child failed:\n{stdout}\n{stderr}");
    assert!(
        stdout.contains(&format!("quota_child: workers=1 (host CPUs {cpus})")),
        "one worker under a one-CPU quota:\n{stdout}\n{stderr}"
    );
}

#[test]
#[ignore = "run by default_workers_follow_the_cgroup_cpu_quota in a child process"]
fn quota_child() {
    assert_eq!(std::env::var("HERMES_QUOTA_CHILD").as_deref(), Ok("1"), "run through the parent test");
    let h = start(Builder::new().bind("127.0.0.1:0".parse().unwrap()).mode(Mode::KernelHash));
    let workers = h.snapshot().workers.len();
    assert_eq!(get(h.local_addr(), "/").expect("GET /").status, 200);
    h.shutdown();
    let mut affinity = 0;
    // SAFETY: an all-zero cpu_set_t is the empty set; `set` is a valid out-pointer.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        if libc::sched_getaffinity(0, size_of::<libc::cpu_set_t>(), &mut set) == 0 {
            affinity = libc::CPU_COUNT(&set);
        }
    }
    println!("quota_child: workers={workers} (host CPUs {affinity})");
}

/// A second server on the port of a running one is refused with a typed
/// error; the first keeps the port's dispatch (its program places every new
/// connection).
#[test]
fn ebpf_second_server_on_a_taken_port_is_refused() {
    if !require_bpf("ebpf_second_server_on_a_taken_port_is_refused") {
        return;
    }
    let first = start(Builder::new().workers(2).bind("127.0.0.1:0".parse().unwrap()).require_ebpf(true));
    wait_all_eligible(&first);
    let addr = first.local_addr();

    let err = Builder::new().workers(2).bind(addr).require_ebpf(true).build().expect_err("the port is taken");
    assert_eq!(err.kind(), std::io::ErrorKind::AddrInUse, "{err}");
    let typed = err.get_ref().and_then(|e| e.downcast_ref::<hermes_runtime::PortInUse>());
    assert_eq!(typed, Some(&hermes_runtime::PortInUse { addr }), "typed cause: {err:?}");
    assert!(err.to_string().contains("stop the other server or bind another port"), "says what to do: {err}");

    let before: u64 = first.snapshot().workers.iter().map(|w| w.dispatched).sum();
    for _ in 0..20 {
        assert_eq!(get(addr, "/").expect("GET /").status, 200);
    }
    let after: u64 = first.snapshot().workers.iter().map(|w| w.dispatched).sum();
    assert_eq!(after - before, 20, "the first server's program placed every connection");
    first.shutdown();

    // Once the port is free again, a server binds it.
    let again = start(Builder::new().workers(1).bind(addr).mode(Mode::KernelHash));
    assert_eq!(get(addr, "/").expect("GET / on the new server").status, 200);
    again.shutdown();
}
