//! A worker kept off its core by another thread (a busy thread pinned to
//! the same CPU, as a sidecar or the load generator would be): the time it
//! waits for a CPU shows in its slot, its snapshot and its metrics, and the
//! scheduler leaves it out of the bitmap, so the kernel program places new
//! connections on the other worker. Real program, real sockets.

use std::{
    net::TcpStream,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    thread,
    time::Duration,
};

use hermes_runtime::{Builder, HermesListener, Mode};
use hermes_test_support::{ebpf, wait::eventually_snapshot_blocking};

/// The CPUs this process may run on.
fn allowed_cpus() -> Vec<usize> {
    let set = nix::sched::sched_getaffinity(nix::unistd::Pid::from_raw(0)).expect("the affinity");
    (0..nix::sched::CpuSet::count()).filter(|&c| set.is_set(c).unwrap_or(false)).collect()
}

/// Threads that spin on `cpu` until `stop` is set, at a higher priority
/// than the worker (nice -10, as a neighbour given more CPU weight would
/// run): an idle worker that wakes once a tick then waits for them each
/// time, however the kernel's fair scheduler credits its sleep.
fn spin_on(cpu: usize, threads: usize, stop: &Arc<AtomicBool>) -> Vec<thread::JoinHandle<()>> {
    (0..threads)
        .map(|_| {
            let stop = stop.clone();
            thread::spawn(move || {
                let mut set = nix::sched::CpuSet::new();
                set.set(cpu).expect("a CPU");
                nix::sched::sched_setaffinity(nix::unistd::Pid::from_raw(0), &set).expect("pin the spinner");
                // SAFETY: `gettid` and `setpriority` have no memory
                // preconditions; this names the calling thread only.
                let raised = unsafe {
                    let tid = libc::gettid() as libc::id_t;
                    libc::setpriority(libc::PRIO_PROCESS, tid, -10)
                };
                assert_eq!(raised, 0, "nice -10 for the spinner (the eBPF tests run as root)");
                while !stop.load(Ordering::Relaxed) {
                    std::hint::spin_loop();
                }
            })
        })
        .collect()
}

#[test]
fn ebpf_a_worker_kept_off_its_core_shows_its_stall_and_gets_no_new_connections() {
    if !ebpf::require_bpf("ebpf_a_worker_kept_off_its_core_shows_its_stall_and_gets_no_new_connections") {
        return;
    }
    let cpus = allowed_cpus();
    assert!(cpus.len() >= 2, "this test needs two CPUs or more: {cpus:?}");
    // Two workers pinned to the first two CPUs, as the default pins them
    // where the process was given its cores (a worker that is not pinned
    // moves to an idle CPU instead of starving).
    let server = Builder::new()
        .workers(2)
        .pin_workers(true)
        .bind("127.0.0.1:0".parse().unwrap())
        .mode(Mode::Hermes)
        .require_ebpf(true)
        .build()
        .expect("build");
    let handle = server
        .serve(|mut listener: HermesListener| async move {
            while let Some((stream, _)) = listener.accept_connection().await {
                drop(stream);
            }
        })
        .expect("serve");
    eventually_snapshot_blocking(&handle, Duration::from_secs(5), "both workers eligible", |s| {
        s.eligible == [0, 1]
    });

    // Three threads spinning on worker 0's CPU at a higher priority: the
    // worker waits for it whenever its tick wakes it.
    let stop = Arc::new(AtomicBool::new(false));
    let spinners = spin_on(cpus[0], 3, &stop);
    let starved = eventually_snapshot_blocking(&handle, Duration::from_secs(10), "worker 0 starved", |s| {
        s.workers[0].stall_permille >= 300 && s.eligible == [1]
    });
    assert!(starved.workers[0].run_delay_ns > 0, "{starved:#?}");

    // New connections go to the worker that has its core.
    let before: Vec<u64> = starved.workers.iter().map(|w| w.dispatched).collect();
    for _ in 0..50 {
        drop(TcpStream::connect(handle.local_addr()).expect("connect"));
    }
    let after = eventually_snapshot_blocking(&handle, Duration::from_secs(5), "50 connections placed", |s| {
        s.workers.iter().zip(&before).map(|(w, b)| w.dispatched - b).sum::<u64>() >= 50
    });
    let placed: Vec<u64> = after.workers.iter().zip(&before).map(|(w, b)| w.dispatched - b).collect();
    assert!(placed[1] >= 45, "new connections avoid the starved worker: {placed:?} {after:#?}");

    stop.store(true, Ordering::Relaxed);
    spinners.into_iter().for_each(|s| s.join().expect("spinner"));
    eventually_snapshot_blocking(&handle, Duration::from_secs(10), "worker 0 back in the bitmap", |s| {
        s.workers[0].stall_permille < 100 && s.eligible == [0, 1]
    });
    handle.shutdown();
}
