//! Cost of the userspace side of the shared maps: publishing the list of
//! eligible workers (64, 256 and 1024 of them), updating a Worker State
//! Table slot, reading the counters.
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
    layout::{MAX_WORKERS, counter, slots_for},
};

fn regions() -> (ControlRegion, WorkerTable, CounterRegion, Option<Dispatcher>) {
    match Dispatcher::load_for(MAX_WORKERS) {
        Ok(d) => (d.control().clone(), d.table().clone(), d.counter_region().clone(), Some(d)),
        Err(e) => {
            eprintln!("*** no CAP_BPF ({e}): benchmarking process memory, not the kernel maps ***");
            (
                Arc::new(Region::in_memory(1)),
                Arc::new(Region::in_memory(slots_for(MAX_WORKERS))),
                Arc::new(Region::in_memory(counter::len(slots_for(MAX_WORKERS)))),
                None,
            )
        }
    }
}

fn maps(c: &mut Criterion) {
    let (control, table, counters, _keep) = regions();
    let mut g = c.benchmark_group("maps");
    let mut now = 1u64;
    // What the old bitmap publish was (two stores): a list of 3, as a
    // 4-worker server publishes it, without the lock.
    g.bench_function("publish_list_3", |b| {
        b.iter(|| {
            now += 1;
            control[0].publish(black_box([0, 1, 3]), now, 3);
        })
    });
    // What a server's pass publishes: under the publish lock and the owner
    // check, every worker of 64, 256 and 1024 with a locality table of two
    // CPUs.
    for n in [64usize, 256, MAX_WORKERS] {
        g.bench_function(format!("publish_as_list_{n}"), |b| {
            b.iter(|| {
                now += 1;
                control[0].publish_as(None, now, 3, |w| {
                    for slot in 0..black_box(n) {
                        w.push(slot);
                    }
                    w.set_local(0, 0);
                    w.set_local(1, n - 1);
                });
            })
        });
    }
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
