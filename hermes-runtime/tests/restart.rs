//! Workers that fail and restart: the dispatch program survives a restart
//! of every worker at once, and a failure outside the serve future (the
//! worker's housekeeping) neither kills the worker nor leaves a listener in
//! the group that nobody accepts from. Real sockets, the real program.

use std::{
    net::TcpStream,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use hermes_runtime::{
    Builder, HermesListener, Mode, WorkerStatus,
    scheduler::{LeastLoaded, PassInput, Policy, WorkerSet},
};
use hermes_test_support::{
    ebpf::require_bpf,
    http::{get, read_response, send},
    server::{app, start},
    snapshot::wait_all_eligible,
    wait::{TIMEOUT, eventually_snapshot_blocking, poll_until},
};

/// One worker, so its restart closes every listener of the group: the serve
/// future panics 300 ms in, once. After the restart new connections still go
/// through the program (its per-worker count grows with each one).
#[test]
fn ebpf_program_survives_the_restart_of_every_worker() {
    if !require_bpf("ebpf_program_survives_the_restart_of_every_worker") {
        return;
    }
    let runs = Arc::new(AtomicUsize::new(0));
    let server = Builder::new()
        .workers(1)
        .bind("127.0.0.1:0".parse().unwrap())
        .require_ebpf(true)
        .build()
        .expect("build");
    let counted = runs.clone();
    let h = server
        .serve(move |listener: HermesListener| {
            let first = counted.fetch_add(1, Ordering::SeqCst) == 0;
            let app = app(listener.worker_id());
            async move {
                let serve = axum::serve(hermes_test_support::server::AxumListener(listener), app).with_graceful_shutdown(hermes_runtime::shutdown_signal());
                if first {
                    // The serve future fails 300 ms in: the scenario, not a wait.
                    tokio::select! {
                        _ = serve => {}
                        () = tokio::time::sleep(Duration::from_millis(300)) => panic!("serve future panic requested by the test"),
                    }
                } else {
                    let _ = serve.await;
                }
            }
        })
        .expect("serve");
    assert_eq!(h.mode(), Mode::Hermes);
    wait_all_eligible(&h);
    poll_until(Duration::from_secs(5), || (runs.load(Ordering::SeqCst) >= 2).then_some(()))
        .expect("the worker restarted");
    wait_all_eligible(&h);

    let before = h.snapshot().workers[0].dispatched;
    for _ in 0..20 {
        assert_eq!(get(h.local_addr(), "/").expect("GET / after the restart").status, 200);
    }
    let s = h.snapshot();
    assert_eq!(s.mode, Mode::Hermes);
    assert_eq!(
        s.workers[0].dispatched - before,
        20,
        "every connection after the restart went through the program: {s:?}"
    );
    h.shutdown();
}

/// The default policy, except that worker 1's housekeeping panics in its
/// scheduler pass once `armed` is set (once only).
#[derive(Debug, Default)]
struct Trigger {
    armed: AtomicBool,
    panicked: AtomicBool,
}

#[derive(Debug)]
struct PanicsOnce(Arc<Trigger>);

impl Policy for PanicsOnce {
    fn eligible(&self, input: &PassInput<'_>, out: &mut WorkerSet) {
        if std::thread::current().name() == Some("hermes-worker-1")
            && self.0.armed.load(Ordering::SeqCst)
            && !self.0.panicked.swap(true, Ordering::SeqCst)
        {
            panic!("policy panic requested by the test");
        }
        LeastLoaded::default().eligible(input, out);
    }
}

/// Two workers on the kernel's hash; worker 1's housekeeping panics. Every
/// one of 40 new connections is then answered (none waits in the queue of a
/// listener nobody accepts from), and worker 1 serves again.
#[test]
fn housekeeping_panic_restarts_the_worker_and_leaves_no_dead_listener() {
    let policy = Arc::new(Trigger::default());
    let h = start(
        Builder::new()
            .workers(2)
            .bind("127.0.0.1:0".parse().unwrap())
            .mode(Mode::KernelHash)
            .policy(PanicsOnce(policy.clone())),
    );
    wait_all_eligible(&h);
    policy.armed.store(true, Ordering::SeqCst);
    poll_until(Duration::from_secs(5), || policy.panicked.load(Ordering::SeqCst).then_some(()))
        .expect("the policy panicked");
    // The worker restarts 100 ms after the panic, and its heartbeat is stale
    // meanwhile: its last one came from the tick that panicked. A heartbeat
    // more than 50 ms younger than the panic comes from the restarted worker.
    let panicked = Instant::now();
    eventually_snapshot_blocking(&h, TIMEOUT, "a heartbeat of the restarted worker 1", |s| {
        s.workers[1].heartbeat_age_ms + 50.0 < panicked.elapsed().as_secs_f64() * 1e3
    });
    wait_all_eligible(&h);

    let accepted_before = h.snapshot().workers[1].accepted;
    let mut unanswered = 0;
    for _ in 0..40 {
        let mut s = TcpStream::connect(h.local_addr()).expect("connect");
        s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
        let answered = send(&mut s, "/", false).and_then(|()| read_response(&mut s));
        if !matches!(answered, Ok(ref r) if r.status == 200) {
            unanswered += 1;
        }
    }
    let s = h.snapshot();
    assert_eq!(unanswered, 0, "connections left unanswered after the panic: {s:?}");
    assert!(s.workers[1].accepted > accepted_before, "worker 1 restarted and accepts again: {s:?}");
    assert_eq!(s.workers[1].state, WorkerStatus::Serving, "{s:?}");
    h.shutdown();
}

/// Two workers on the kernel's hash; worker 1 has a blocking task that
/// holds a thread of its pool for a minute (an offloaded handler that
/// holds its thread) when its housekeeping panics. Its runtime shuts down
/// with a bound instead of waiting for that task, so the worker restarts in
/// the usual time and serves again.
#[test]
fn a_worker_restarts_after_a_panic_while_its_blocking_pool_is_held() {
    let policy = Arc::new(Trigger::default());
    let holding = Arc::new(AtomicBool::new(false));
    let mut builder = Builder::new();
    builder
        .workers(2)
        .bind("127.0.0.1:0".parse().unwrap())
        .mode(Mode::KernelHash)
        .policy(PanicsOnce(policy.clone()));
    let server = builder.build().expect("build");
    let started = holding.clone();
    let h = server
        .serve(move |listener: HermesListener| {
            let id = listener.worker_id();
            if id == 1 && !started.swap(true, Ordering::SeqCst) {
                // Held for a minute: the runtime must not wait for it.
                tokio::task::spawn_blocking(|| std::thread::sleep(Duration::from_secs(60)));
            }
            let app = app(id);
            async move {
                let serve = axum::serve(hermes_test_support::server::AxumListener(listener), app)
                    .with_graceful_shutdown(hermes_runtime::shutdown_signal());
                let _ = serve.await;
            }
        })
        .expect("serve");
    wait_all_eligible(&h);
    assert!(holding.load(Ordering::SeqCst), "worker 1's pool holds a thread");
    policy.armed.store(true, Ordering::SeqCst);
    poll_until(Duration::from_secs(5), || policy.panicked.load(Ordering::SeqCst).then_some(()))
        .expect("the policy panicked");
    let panicked = Instant::now();
    // The runtime gives its blocking tasks 1 s, then the worker restarts
    // 100 ms later: a heartbeat younger than the panic comes within seconds.
    eventually_snapshot_blocking(&h, Duration::from_secs(10), "a heartbeat of the restarted worker 1", |s| {
        s.workers[1].heartbeat_age_ms + 50.0 < panicked.elapsed().as_secs_f64() * 1e3
    });
    wait_all_eligible(&h);
    assert_eq!(h.snapshot().workers[1].state, WorkerStatus::Serving);
    h.shutdown();
}
