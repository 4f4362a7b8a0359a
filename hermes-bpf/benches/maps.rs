//! Cost of the userspace side of the shared maps: publishing a bitmap,
//! updating a Worker State Table slot, reading the counters.
//!
//! `cargo bench -p hermes-bpf --bench maps`. With CAP_BPF the operations
//! touch the kernel maps through their mmap (the real path); without it they
//! run on process memory of the same layout, and the bench says so.

use std::{
    hint::black_box,
    sync::{Arc, atomic::Ordering},
};

use criterion::{Criterion, criterion_group, criterion_main};
use hermes_bpf::{
    ControlRegion, CounterRegion, Counters, Dispatcher, Region, WorkerTable,
    layout::{COUNTERS_LEN, MAX_WORKERS},
};

fn regions() -> (ControlRegion, WorkerTable, CounterRegion, Option<Dispatcher>) {
    match Dispatcher::load() {
        Ok(d) => (d.control().clone(), d.table().clone(), d.counter_region().clone(), Some(d)),
        Err(e) => {
            eprintln!("*** no CAP_BPF ({e}): benchmarking process memory, not the kernel maps ***");
            (
                Arc::new(Region::in_memory(1)),
                Arc::new(Region::in_memory(MAX_WORKERS)),
                Arc::new(Region::in_memory(COUNTERS_LEN)),
                None,
            )
        }
    }
}

fn maps(c: &mut Criterion) {
    let (control, table, counters, _keep) = regions();
    let mut g = c.benchmark_group("maps");
    let mut now = 1u64;
    g.bench_function("publish_bitmap", |b| {
        b.iter(|| {
            now += 1;
            control[0].publish(black_box(0b1011), now, 3);
        })
    });
    let slot = &table[5];
    g.bench_function("slot_heartbeat_and_queue", |b| {
        b.iter(|| {
            now += 1;
            slot.heartbeat_ns.store(black_box(now), Ordering::Relaxed);
            slot.accept_queue.store(black_box(3), Ordering::Relaxed);
        })
    });
    g.bench_function("slot_connection_open_close", |b| {
        b.iter(|| {
            slot.open_conns.fetch_add(1, Ordering::Relaxed);
            slot.accepted.fetch_add(1, Ordering::Relaxed);
            black_box(slot);
            slot.open_conns.fetch_sub(1, Ordering::Relaxed);
        })
    });
    g.bench_function("read_counters", |b| b.iter(|| black_box(Counters::read(&counters))));
    g.finish();
}

criterion_group!(benches, maps);
criterion_main!(benches);
