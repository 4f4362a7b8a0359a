//! Accept path: accepting a queued loopback connection and closing it, with
//! the bare Tokio stream versus the same stream wrapped in `HermesStream` (which counts
//! it in the worker's slot).
//!
//! `cargo bench -p hermes-runtime --bench accept`

use std::{hint::black_box, sync::Arc};

use criterion::{BatchSize, Criterion, criterion_group, criterion_main};
use hermes_bpf::{Region, layout::MAX_WORKERS};
use hermes_runtime::{HermesStream, context::WorkerRef};

fn bench(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let listener = rt.block_on(tokio::net::TcpListener::bind("127.0.0.1:0")).unwrap();
    let addr = listener.local_addr().unwrap();
    let worker = WorkerRef::new(0, Arc::new(Region::in_memory(MAX_WORKERS)));
    let mut group = c.benchmark_group("accept");
    // The client connects in the untimed setup, so each timed iteration is
    // the accept (a connection already queued), the optional wrap, and the close.
    let connect = || std::net::TcpStream::connect(addr).unwrap();
    group.bench_function("bare", |b| {
        b.iter_batched(
            connect,
            |client| {
                let (stream, _) = rt.block_on(listener.accept()).unwrap();
                drop(black_box(stream));
                client
            },
            BatchSize::NumIterations(128),
        )
    });
    group.bench_function("wrapped", |b| {
        b.iter_batched(
            connect,
            |client| {
                let (stream, _) = rt.block_on(listener.accept()).unwrap();
                drop(black_box(HermesStream::new(stream, &worker)));
                client
            },
            BatchSize::NumIterations(128),
        )
    });
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
