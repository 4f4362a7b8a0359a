//! Connection accounting, shutdown of one worker, and supervision.

use std::{
    io::Write,
    net::TcpStream,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use hermes_runtime::{
    Builder, HermesListener, Mode, ServerHandle, WorkerStatus,
    scheduler::{PassInput, Policy, WorkerSet},
};
use hermes_test_support::{
    ebpf::require_bpf,
    http::{get, read_response, send},
    server::{app, start},
    snapshot::{open_total, wait_all_eligible},
    wait::{TIMEOUT, eventually_snapshot_blocking, poll_until},
};

/// Open connections come back to zero after normal requests, handler
/// panics, clients hanging up mid-request and idle keep-alive clients.
#[test]
fn counts_return_to_zero_after_panic_and_hangup() {
    let h = start(Builder::new().workers(2).bind("127.0.0.1:0".parse().unwrap()).mode(Mode::KernelHash));
    let addr = h.local_addr();
    let mut made = 0u64;
    for _ in 0..20 {
        assert_eq!(get(addr, "/").unwrap().status, 200);
        made += 1;
    }
    for _ in 0..4 {
        // A panicking handler closes its connection only.
        assert!(get(addr, "/panic").is_err(), "a panicking handler sends no response");
        made += 1;
    }
    for _ in 0..4 {
        // Hang up in the middle of the request head.
        let mut s = TcpStream::connect(addr).unwrap();
        s.write_all(b"GET / HTTP/1.1\r\nHo").unwrap();
        made += 1;
    }
    let mut hangups = Vec::new();
    for _ in 0..3 {
        // Hang up while the handler runs.
        let mut s = TcpStream::connect(addr).unwrap();
        send(&mut s, "/sleep?ms=200", true).unwrap();
        hangups.push(s);
        made += 1;
    }
    let mut idle = Vec::new();
    for _ in 0..5 {
        let mut s = TcpStream::connect(addr).unwrap();
        send(&mut s, "/", true).unwrap();
        assert_eq!(read_response(&mut s).unwrap().status, 200);
        idle.push(s);
        made += 1;
    }
    poll_until(Duration::from_secs(5), || (open_total(&h.snapshot()) >= 8).then_some(()))
        .expect("idle and hung-up connections are counted open");
    drop(hangups);
    drop(idle);
    let s = poll_until(Duration::from_secs(10), || {
        let s = h.snapshot();
        (open_total(&s) == 0).then_some(s)
    })
    .unwrap_or_else(|| panic!("open connections never returned to zero: {:?}", h.snapshot()));
    let accepted: u64 = s.workers.iter().map(|w| w.accepted).sum();
    assert_eq!(accepted, made);
    // The workers still serve.
    assert_eq!(get(addr, "/").unwrap().status, 200);
    h.shutdown();
}

/// A policy the test steers: exactly the workers in the mask (even a hung
/// one, which a real policy must never return).
#[derive(Debug)]
struct Steered(Arc<AtomicU64>);

impl Policy for Steered {
    fn eligible(&self, input: &PassInput<'_>, out: &mut WorkerSet) {
        let mask = self.0.load(Ordering::Relaxed);
        out.extend((0..input.workers.len().min(64)).filter(|&i| mask & (1 << i) != 0));
    }
}

/// Worker 0 is blocked with 20 connections queued on its listener; shutting
/// it down migrates them to the other workers: each is answered, none is
/// reset, and worker 0's own in-progress request completes.
#[test]
fn ebpf_shutdown_worker_migrates_queued_connections() {
    if !require_bpf("ebpf_shutdown_worker_migrates_queued_connections") {
        return;
    }
    let mask = Arc::new(AtomicU64::new(0b0001));
    let h = start(
        Builder::new()
            .workers(4)
            .bind("127.0.0.1:0".parse().unwrap())
            .require_ebpf(true)
            .policy(Steered(mask.clone()))
            .drain_timeout(Duration::from_secs(10))
            // What is tested is the kernel's migration: no other worker
            // takes the blocked worker's queue first.
            .rescue_hung_queues(false),
    );
    let addr = h.local_addr();
    poll_until(Duration::from_secs(5), || (h.snapshot().eligible == [0]).then_some(()))
        .expect("list published");
    let mut blocker = TcpStream::connect(addr).unwrap();
    blocker.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    send(&mut blocker, "/", true).unwrap();
    assert_eq!(read_response(&mut blocker).unwrap().worker, Some(0));
    send(&mut blocker, "/block?ms=1500", true).unwrap();
    poll_until(Duration::from_secs(1), || (h.snapshot().workers[0].heartbeat_age_ms > 20.0).then_some(()))
        .expect("worker 0 blocks");

    let mut queued: Vec<TcpStream> = (0..20)
        .map(|_| {
            let mut s = TcpStream::connect(addr).unwrap();
            s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
            send(&mut s, "/", false).unwrap();
            s
        })
        .collect();
    let before = h.snapshot();
    assert_eq!(before.workers[0].accepted, 1, "worker 0 is blocked and accepts nothing");

    mask.store(0b1110, Ordering::Relaxed);
    h.shutdown_worker(0).unwrap();
    for (i, s) in queued.iter_mut().enumerate() {
        let r = read_response(s).unwrap_or_else(|e| panic!("queued connection {i}: {e}"));
        assert_eq!(r.status, 200);
        assert_ne!(r.worker, Some(0));
    }
    let r = read_response(&mut blocker).expect("worker 0's in-progress request completes");
    assert_eq!((r.status, r.worker), (200, Some(0)));
    let s = poll_until(Duration::from_secs(5), || {
        let s = h.snapshot();
        (s.workers[0].state == WorkerStatus::Stopped).then_some(s)
    })
    .expect("worker 0 exits after draining");
    eprintln!("after shutdown: {s:?}");
    assert!(s.migrated >= 20, "the kernel migrated the queue: {}", s.migrated);
    assert_eq!(get(addr, "/").unwrap().status, 200);
    h.shutdown();
}

/// A panic in a worker's serve future restarts that worker in its slot.
#[test]
fn panicking_serve_future_restarts_worker() {
    use std::sync::atomic::AtomicUsize;
    let calls = Arc::new(AtomicUsize::new(0));
    let server = Builder::new()
        .workers(2)
        .bind("127.0.0.1:0".parse().unwrap())
        .mode(Mode::KernelHash)
        .build()
        .unwrap();
    let addr = server.local_addr();
    let c = calls.clone();
    let h = server
        .serve(move |listener: HermesListener| {
            let first = c.fetch_add(1, Ordering::SeqCst) == 0;
            let app = app(listener.worker_id());
            async move {
                if first {
                    panic!("first serve future fails");
                }
                let _ = axum::serve(hermes_test_support::server::AxumListener(listener), app)
                    .with_graceful_shutdown(hermes_runtime::shutdown_signal())
                    .await;
            }
        })
        .unwrap();
    poll_until(Duration::from_secs(5), || (calls.load(Ordering::SeqCst) >= 3).then_some(()))
        .expect("the panicked worker was restarted");
    wait_all_eligible(&h);
    for _ in 0..20 {
        assert_eq!(get(addr, "/").unwrap().status, 200);
    }
    h.shutdown();
}

/// The shared-listener mode serves from every worker's event loop, and one
/// worker can drain while the others keep serving.
#[test]
fn shared_listener_serves_and_drains_one_worker() {
    let h = start(Builder::new().workers(3).bind("127.0.0.1:0".parse().unwrap()).mode(Mode::SharedListener));
    assert_eq!(h.mode(), Mode::SharedListener);
    let addr = h.local_addr();
    let mut seen = [0u64; 3];
    for _ in 0..60 {
        let r = get(addr, "/").unwrap();
        assert_eq!(r.status, 200);
        seen[r.worker.unwrap()] += 1;
    }
    let s = h.snapshot();
    assert_eq!(s.mode, Mode::SharedListener);
    for w in &s.workers {
        assert_eq!(w.accepted, seen[w.id]);
    }
    h.shutdown_worker(1).unwrap();
    poll_until(Duration::from_secs(5), || {
        (h.snapshot().workers[1].state == WorkerStatus::Stopped).then_some(())
    })
    .expect("worker 1 stops");
    for _ in 0..30 {
        let r = get(addr, "/").unwrap();
        assert_eq!(r.status, 200);
        assert_ne!(r.worker, Some(1));
    }
    h.shutdown();
}

/// Hermes mode: a worker whose serve future panicked is restarted with a new
/// listener in its kernel slot, and the program dispatches to it again.
#[test]
fn ebpf_panicked_worker_restarts_in_its_slot() {
    use std::sync::atomic::AtomicUsize;
    if !require_bpf("ebpf_panicked_worker_restarts_in_its_slot") {
        return;
    }
    let first = Arc::new(AtomicUsize::new(usize::MAX));
    let server =
        Builder::new().workers(4).bind("127.0.0.1:0".parse().unwrap()).require_ebpf(true).build().unwrap();
    let addr = server.local_addr();
    let f = first.clone();
    let h = server
        .serve(move |listener: HermesListener| {
            let id = listener.worker_id();
            let panics = f.compare_exchange(usize::MAX, id, Ordering::SeqCst, Ordering::SeqCst).is_ok();
            let app = app(id);
            async move {
                if panics {
                    panic!("worker {id}'s first serve future fails");
                }
                let _ = axum::serve(hermes_test_support::server::AxumListener(listener), app)
                    .with_graceful_shutdown(hermes_runtime::shutdown_signal())
                    .await;
            }
        })
        .unwrap();
    poll_until(Duration::from_secs(5), || (first.load(Ordering::SeqCst) != usize::MAX).then_some(()))
        .expect("one worker panicked");
    let restarted = first.load(Ordering::SeqCst);
    wait_all_eligible(&h);
    let before = h.snapshot().workers[restarted].dispatched;
    let mut on_restarted = 0;
    for _ in 0..200 {
        let r = get(addr, "/").unwrap();
        assert_eq!(r.status, 200);
        on_restarted += u64::from(r.worker == Some(restarted));
    }
    let after = h.snapshot().workers[restarted].dispatched;
    assert!(on_restarted > 0, "the restarted worker {restarted} takes connections again");
    assert_eq!(after - before, on_restarted, "placed by the program in slot {restarted}");
    h.shutdown();
}

/// Dropping the handle stops the server (the port refuses connections);
/// a detached one keeps serving.
#[test]
fn dropping_the_handle_stops_the_server_unless_detached() {
    let refuses = |addr| {
        poll_until(Duration::from_secs(5), || std::net::TcpStream::connect(addr).is_err().then_some(()))
            .is_some()
    };
    let h = start(Builder::new().workers(2).bind("127.0.0.1:0".parse().unwrap()).mode(Mode::KernelHash));
    let addr = h.local_addr();
    assert_eq!(get(addr, "/").expect("GET /").status, 200);
    drop(h);
    assert!(refuses(addr), "{addr} still accepts after the handle was dropped");

    let h = start(Builder::new().workers(2).bind("127.0.0.1:0".parse().unwrap()).mode(Mode::KernelHash));
    let addr = h.local_addr();
    h.detach();
    // Time for a server stopped by mistake to close its port: what is
    // checked is that nothing happens, there is no state to wait for.
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(get(addr, "/").expect("a detached server still serves").status, 200);
}

/// A snapshot source reads the live table from another thread, and does
/// not keep the server (its port) alive: after the shutdown it reads `None`
/// and the port refuses connections.
#[test]
fn a_snapshot_source_reads_the_running_server_and_not_a_stopped_one() {
    let h = start(Builder::new().workers(2).bind("127.0.0.1:0".parse().unwrap()).mode(Mode::KernelHash));
    let addr = h.local_addr();
    let source = h.snapshot_source();
    assert_eq!(get(addr, "/").expect("GET /").status, 200);
    let read = std::thread::spawn({
        let source = source.clone();
        move || source.snapshot()
    })
    .join()
    .expect("reader thread")
    .expect("a running server's snapshot");
    assert_eq!(read.workers.len(), 2);
    assert_eq!(read.workers.iter().map(|w| w.accepted).sum::<u64>(), 1, "{read:?}");
    h.shutdown();
    assert!(source.snapshot().is_none(), "a stopped server still reads");
    assert!(std::net::TcpStream::connect(addr).is_err(), "{addr} still accepts with a source alive");
}

/// Two workers on the kernel's hash with `drain` as their drain timeout,
/// one of them blocked for a minute by a handler; the blocked request's
/// connection, for the caller to hold.
fn server_with_a_blocked_worker(drain: Duration) -> (ServerHandle, TcpStream) {
    let h = start(
        Builder::new()
            .workers(2)
            .bind("127.0.0.1:0".parse().unwrap())
            .mode(Mode::KernelHash)
            .drain_timeout(drain),
    );
    let mut blocker = TcpStream::connect(h.local_addr()).unwrap();
    send(&mut blocker, "/block?ms=60000", false).unwrap();
    poll_until(Duration::from_secs(5), || (open_total(&h.snapshot()) == 1).then_some(()))
        .expect("the blocking request's connection is open");
    // The handler is blocking now: its worker's heartbeat stops (a serving
    // worker's is at most a tick, 5 ms, old).
    eventually_snapshot_blocking(&h, TIMEOUT, "a worker blocked by the handler", |s| {
        s.workers.iter().any(|w| w.heartbeat_age_ms > 200.0)
    });
    (h, blocker)
}

/// A handler blocks its worker's thread for a minute: `shutdown()` returns
/// within the drain timeout plus the grace (it abandons that worker), and the
/// other worker has stopped.
#[test]
fn shutdown_is_bounded_with_a_blocked_worker() {
    let drain = Duration::from_millis(500);
    let (h, _blocker) = server_with_a_blocked_worker(drain);
    let addr = h.local_addr();

    let (done, stopped) = std::sync::mpsc::channel();
    let started = std::time::Instant::now();
    std::thread::spawn(move || {
        h.shutdown();
        let _ = done.send(());
    });
    let bound = drain + hermes_runtime::SHUTDOWN_GRACE + Duration::from_secs(3);
    stopped.recv_timeout(bound).unwrap_or_else(|_| panic!("shutdown still waiting after {bound:?}"));
    eprintln!("shutdown returned after {:?} with a worker blocked", started.elapsed());
    assert!(std::net::TcpStream::connect(addr).is_err(), "nothing listens after the shutdown");
}

/// `join()` on a server whose workers drain (here through `shutdown_worker`)
/// is bounded like `shutdown()`: a worker blocked for a minute is abandoned
/// once the drain timeout plus the grace have passed since its drain began.
#[test]
fn join_is_bounded_once_the_workers_drain() {
    let drain = Duration::from_millis(500);
    let (h, _blocker) = server_with_a_blocked_worker(drain);

    let started = std::time::Instant::now();
    h.shutdown_worker(0).unwrap();
    h.shutdown_worker(1).unwrap();
    let (done, joined) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        h.join();
        let _ = done.send(());
    });
    let bound = drain + hermes_runtime::SHUTDOWN_GRACE + Duration::from_secs(3);
    joined.recv_timeout(bound).unwrap_or_else(|_| panic!("join still waiting after {bound:?}"));
    let took = started.elapsed();
    eprintln!("join returned after {took:?} with a worker blocked");
    assert!(took >= drain, "join returned before the drain timeout: {took:?}");
}
