//! The `metrics` export: per-worker values with a `worker` label, and the mode.

use std::{
    collections::HashMap,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use hermes_runtime::{Builder, Mode};
use hermes_test_support::{http::get, server::start, wait::poll_until};
use metrics::{Counter, Gauge, Histogram, Key, KeyName, Metadata, Recorder, SharedString, Unit};

/// Keeps every counter and gauge in an atomic, by `name{label=value,...}`.
#[derive(Debug, Default, Clone)]
struct Captured(Arc<Mutex<HashMap<String, Arc<AtomicU64>>>>);

impl Captured {
    fn slot(&self, key: &Key) -> Arc<AtomicU64> {
        let mut labels: Vec<String> = key.labels().map(|l| format!("{}={}", l.key(), l.value())).collect();
        labels.sort();
        let name = format!("{}{{{}}}", key.name(), labels.join(","));
        self.0.lock().unwrap().entry(name).or_default().clone()
    }

    fn get(&self, name: &str) -> Option<u64> {
        self.0.lock().unwrap().get(name).map(|v| v.load(Ordering::Relaxed))
    }
}

impl Recorder for Captured {
    fn describe_counter(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
    fn describe_gauge(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
    fn describe_histogram(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
    fn register_counter(&self, key: &Key, _: &Metadata<'_>) -> Counter {
        Counter::from_arc(self.slot(key))
    }
    fn register_gauge(&self, key: &Key, _: &Metadata<'_>) -> Gauge {
        Gauge::from_arc(self.slot(key))
    }
    fn register_histogram(&self, _: &Key, _: &Metadata<'_>) -> Histogram {
        Histogram::noop()
    }
}

#[test]
fn metrics_exported_with_worker_label() {
    let captured = Captured::default();
    metrics::set_global_recorder(captured.clone()).unwrap();
    let h = start(Builder::new().workers(2).bind("127.0.0.1:0".parse().unwrap()).mode(Mode::KernelHash));
    for _ in 0..6 {
        assert_eq!(get(h.local_addr(), "/").unwrap().status, 200);
    }
    poll_until(Duration::from_secs(5), || {
        let accepted = captured.get("hermes_accepted_total{worker=0}")?
            + captured.get("hermes_accepted_total{worker=1}")?;
        (accepted == 6).then_some(())
    })
    .unwrap_or_else(|| {
        panic!("accepted counters: {:?}", captured.0.lock().unwrap().keys().collect::<Vec<_>>())
    });
    let mode = captured.get("hermes_mode{mode=kernel-hash,reason=}").expect("mode gauge");
    assert_eq!(f64::from_bits(mode), 1.0);
    assert!(captured.get("hermes_open_connections{worker=1}").is_some());
    assert!(captured.get("hermes_eligible{worker=0}").is_some());
    h.shutdown();
}
