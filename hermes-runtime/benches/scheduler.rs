//! One scheduler pass (default policy, then publishing the list) over 8,
//! 64, 256 and 1024 workers. The target: a pass at 1024 workers under 20 µs.
//!
//! `cargo bench -p hermes-runtime --bench scheduler`

use std::{hint::black_box, sync::atomic::Ordering};

use criterion::{Criterion, criterion_group, criterion_main};
use hermes_bpf::{
    Region,
    layout::{Control, WorkerPhase, WorkerState},
    monotonic_ns,
};
use hermes_runtime::scheduler::{LeastLoaded, PassInput, WorkerSet, pass};

fn bench(c: &mut Criterion) {
    let mut group = c.benchmark_group("scheduler_pass");
    for n in [8usize, 64, 256, 1024] {
        let table: Region<WorkerState> = Region::in_memory(n);
        let now = monotonic_ns();
        for (i, w) in table.iter().enumerate() {
            w.set_phase(WorkerPhase::Serving);
            w.heartbeat_ns.store(now, Ordering::Relaxed);
            w.open_conns.store((i * 7 % 13) as u32, Ordering::Relaxed);
            w.accept_queue.store((i % 3) as u32, Ordering::Relaxed);
        }
        // One hung worker.
        table[n / 2].heartbeat_ns.store(1, Ordering::Relaxed);
        let control: Region<Control> = Region::in_memory(1);
        let policy = LeastLoaded::default();
        let mut out = WorkerSet::with_capacity(n);
        group.bench_function(format!("{n}_workers"), |b| {
            b.iter(|| {
                let input = PassInput {
                    workers: &table,
                    now_ns: monotonic_ns(),
                    hang_threshold_ns: 10_000_000,
                    min_candidates: 2,
                };
                black_box(pass(&policy, black_box(&input), &control[0], 0, &mut out))
            })
        });
    }
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
