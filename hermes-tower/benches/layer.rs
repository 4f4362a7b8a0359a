//! Overhead of `HermesLayer` per request against the bare service.
//!
//! Run: `cargo bench -p hermes-tower --bench layer`
//!
//! Each iteration calls the service and polls its (immediately ready)
//! response future once, on a thread with a Hermes worker entered, so the
//! difference between `bare` and `hermes/*` is what the layer adds to every
//! request: the worker lookup, the slot updates and, for measured requests,
//! the clock.
//!
//! One run on the 2-core KVM build machine (shared with other builds, load
//! average about 3), medians: bare 2.1 ns; service time off 11.1 ns
//! (+9.0 ns); default, one request in 64 timed, 11.9 ns (+9.8 ns); every
//! request timed 72.4 ns (+70 ns); outside a worker 8.5 ns. Earlier runs on
//! the same machine put the first two overheads at 7.3 to 9.8 ns: treat
//! differences under 2 ns as noise here.

use std::{
    convert::Infallible,
    future::{Future, Ready, ready},
    hint::black_box,
    pin::pin,
    sync::Arc,
    task::{Context, Poll, Waker},
    time::Duration,
};

use criterion::{Criterion, criterion_group, criterion_main};
use hermes_bpf::{Region, layout::WorkerState};
use hermes_runtime::{
    Builder, Mode, ServerHandle,
    context::{self, WorkerRef},
};
use hermes_tower::{Hermes, Place, SampleRate};
use tower::{Service, service_fn};

fn bare()
-> impl Service<u64, Response = u64, Error = Infallible, Future = Ready<Result<u64, Infallible>>> + Clone {
    service_fn(|n: u64| ready(Ok(n)))
}

/// One request: call, then poll the response future to completion.
#[inline(always)]
fn request<S>(svc: &mut S, cx: &mut Context<'_>, n: u64) -> u64
where
    S: Service<u64, Response = u64, Error = Infallible>,
{
    let fut = pin!(svc.call(n));
    match fut.poll(cx) {
        Poll::Ready(Ok(n)) => n,
        Poll::Ready(Err(never)) => match never {},
        Poll::Pending => unreachable!("the bare service is always ready"),
    }
}

fn bench_layer(c: &mut Criterion) {
    let table = Arc::new(Region::<WorkerState>::in_memory(8));
    let mut cx = Context::from_waker(Waker::noop());

    let mut group = c.benchmark_group("per_request");
    // The worker lookup alone (`hermes_runtime::context::current`), outside
    // and inside a worker: a thread-local read, and inside a worker one
    // reference-count increment and decrement on the handle.
    group.bench_function("context_current/outside_worker", |b| b.iter(|| black_box(context::current())));
    {
        let worker = WorkerRef::new(3, table.clone());
        let _entered = worker.enter();
        group.bench_function("context_current/inside_worker", |b| b.iter(|| black_box(context::current())));
    }

    let mut run = |name: &str, svc: &mut dyn FnMut(&mut Context<'_>, u64) -> u64| {
        group.bench_function(name, |b| {
            let mut n = 0u64;
            b.iter(|| {
                n = n.wrapping_add(1);
                black_box(svc(&mut cx, black_box(n)))
            })
        });
    };

    // Outside a worker: the layer only looks the worker up.
    let mut svc = Hermes::new(bare());
    run("hermes/outside_worker", &mut |cx, n| request(&mut svc, cx, n));

    let worker = WorkerRef::new(3, table.clone());
    let _entered = worker.enter();

    let mut svc = bare();
    run("bare", &mut |cx, n| request(&mut svc, cx, n));
    let mut svc = Hermes::with_service_time(bare(), SampleRate::OFF);
    run("hermes/service_time_off", &mut |cx, n| request(&mut svc, cx, n));
    let mut svc = Hermes::new(bare());
    run("hermes/default_one_in_64", &mut |cx, n| request(&mut svc, cx, n));
    let mut svc = Hermes::with_service_time(bare(), SampleRate::EVERY_REQUEST);
    run("hermes/every_request", &mut |cx, n| request(&mut svc, cx, n));
    // Bare again, to see the run-to-run noise of the baseline.
    let mut svc = bare();
    run("bare_again", &mut |cx, n| request(&mut svc, cx, n));
    group.finish();

    assert_eq!(table[3].in_flight.load(std::sync::atomic::Ordering::Relaxed), 0);
}

fn bare_http() -> impl Service<
    http::Request<()>,
    Response = http::Response<()>,
    Error = Infallible,
    Future = Ready<Result<http::Response<()>, Infallible>>,
> + Clone
+ Send
+ 'static {
    service_fn(|_: http::Request<()>| ready(Ok(http::Response::new(()))))
}

/// One HTTP request through `svc` (a request to `/`, no headers: building
/// it allocates nothing).
#[inline(always)]
fn http_request<S>(svc: &mut S, cx: &mut Context<'_>) -> u16
where
    S: Service<http::Request<()>, Response = http::Response<()>, Error = Infallible>,
{
    let fut = pin!(svc.call(http::Request::new(())));
    match fut.poll(cx) {
        Poll::Ready(Ok(r)) => r.status().as_u16(),
        Poll::Ready(Err(never)) => match never {},
        Poll::Pending => unreachable!("the bare service is always ready"),
    }
}

/// A one-worker server (the kernel's hash, nothing to load) and a handle on
/// its worker, to enter on the bench's thread: the placement decisions then
/// read a real server's table and learned costs.
fn server_worker() -> (ServerHandle, WorkerRef) {
    let (tx, rx) = std::sync::mpsc::channel();
    let server = Builder::new()
        .workers(1)
        .mode(Mode::KernelHash)
        .bind("127.0.0.1:0".parse().expect("an address"))
        .build()
        .expect("build the server");
    let handle = server
        .serve(move |_listener| {
            let _ = tx.send(context::current().expect("on a Hermes worker"));
            hermes_runtime::shutdown_signal()
        })
        .expect("start the server");
    (handle, rx.recv().expect("the worker's handle"))
}

/// `Place` on the local path (the common case: nothing costly in flight, so
/// the request stays), with and without the counting layer inside it.
fn bench_place(c: &mut Criterion) {
    let (server, worker) = server_worker();
    let _entered = worker.enter();
    let mut cx = Context::from_waker(Waker::noop());
    let mut group = c.benchmark_group("per_http_request");
    let mut svc = bare_http();
    group.bench_function("bare", |b| b.iter(|| black_box(http_request(&mut svc, &mut cx))));
    let mut svc = Hermes::new(bare_http());
    group.bench_function("hermes", |b| b.iter(|| black_box(http_request(&mut svc, &mut cx))));
    let mut svc = Place::new(bare_http());
    group.bench_function("place", |b| b.iter(|| black_box(http_request(&mut svc, &mut cx))));
    let mut svc = Place::new(Hermes::new(bare_http()));
    group.bench_function("place_hermes", |b| b.iter(|| black_box(http_request(&mut svc, &mut cx))));
    group.finish();
    drop(_entered);
    assert_eq!(server.snapshot().workers[0].in_flight, 0);
    server.shutdown();
}

criterion_group! {
    name = benches;
    config = Criterion::default().warm_up_time(Duration::from_secs(1)).measurement_time(Duration::from_secs(3));
    targets = bench_layer, bench_place
}
criterion_main!(benches);
