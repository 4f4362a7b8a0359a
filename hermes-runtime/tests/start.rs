//! Start-up: a worker that never starts does not keep the others out of the
//! bitmap. The real program when it loads, the kernel's hash otherwise.

use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use hermes_runtime::{Builder, Mode, WorkerStatus};
use hermes_test_support::{
    ebpf,
    server::start,
    wait::{eventually_snapshot_blocking, poll_until},
};

/// Worker 1's start hook does not return until the test lets it: the
/// server stops waiting for it after its start-up wait (10 s) and publishes
/// a bitmap of worker 0, which serves. Before, no bitmap was published until
/// every worker started, so new connections were left to the kernel's hash,
/// the stuck worker's listener included.
#[test]
fn ebpf_a_worker_that_never_starts_does_not_stop_the_bitmap() {
    if !ebpf::require_bpf("ebpf_a_worker_that_never_starts_does_not_stop_the_bitmap") {
        return;
    }
    let release = Arc::new(AtomicBool::new(false));
    let hold = release.clone();
    let mut builder = Builder::new();
    builder
        .workers(2)
        .bind("127.0.0.1:0".parse().unwrap())
        .mode(Mode::Hermes)
        .require_ebpf(true)
        .drain_timeout(Duration::from_secs(1))
        .on_worker_start(move |id| {
            if id == 1 {
                // Stuck in start-up until released (a minute at most).
                poll_until(Duration::from_secs(60), || hold.load(Ordering::SeqCst).then_some(()));
            }
        });
    // Returns after the start-up wait, with worker 1 still in its hook.
    let handle = start(&builder);
    let snapshot = eventually_snapshot_blocking(
        &handle,
        Duration::from_secs(5),
        "a bitmap of the serving worker",
        |s| s.eligible == [0],
    );
    assert_eq!(snapshot.workers[0].state, WorkerStatus::Serving, "{snapshot:#?}");
    assert_eq!(snapshot.workers[1].state, WorkerStatus::Starting, "{snapshot:#?}");
    release.store(true, Ordering::SeqCst);
    eventually_snapshot_blocking(&handle, Duration::from_secs(5), "both workers in the bitmap", |s| {
        s.eligible == [0, 1]
    });
    handle.shutdown();
}
