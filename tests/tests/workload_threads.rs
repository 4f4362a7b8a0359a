//! The threads of the `hermes-workload` binary, as the benchmarks run it
//! (Hermes mode, workers pinned with `--pin on`, as the default pins them
//! where the process was given its cores): after keep-alive requests of a
//! route that holds its thread, which run on the workers' blocking pools,
//! only the workers are pinned to one CPU.

use std::{
    process::{Command, Stdio},
    time::Duration,
};

use hermes_test_support::{
    client::{get_h1, h1},
    cpus, ebpf,
    http::get,
    wait::poll_every,
    workload::Workload,
};
use serde_json::Value;

const BIN: &str = env!("CARGO_BIN_EXE_hermes-workload");

/// The workers' offloaded counts in `/_hermes/stats`, summed.
fn offloaded(addr: std::net::SocketAddr) -> Option<u64> {
    let resp = get(addr, "/_hermes/stats").ok()?;
    let json: Value = serde_json::from_str(&resp.body).ok()?;
    Some(json["workers"].as_array()?.iter().filter_map(|w| w["offloaded"].as_u64()).sum())
}

#[test]
fn ebpf_after_offloaded_requests_only_the_workers_are_pinned_to_one_cpu() {
    let mut args = vec!["--mode", "hermes", "--workers", "2", "--addr", "127.0.0.1:0", "--pin", "on"];
    if ebpf::required() {
        args.push("--require-ebpf");
    }
    let workload = Workload::start(Command::new(BIN).args(&args).stderr(Stdio::inherit()));
    let addr = workload.addr;
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("client runtime");
    runtime.block_on(async {
        // Keep-alive, as a client does: a connection the server asks to
        // close (an overloaded worker asks some to reconnect) is replaced.
        let mut conn = h1(addr).await;
        for i in 0..40 {
            if conn.ready().await.is_err() {
                conn = h1(addr).await;
            }
            let (status, _) = get_h1(&mut conn, addr, "/work?us=5000").await.expect("a /work request");
            assert_eq!(status, 200, "request {i}");
        }
    });
    let offloaded = poll_every(Duration::from_secs(5), Duration::from_millis(20), || {
        offloaded(addr).filter(|&n| n >= 30)
    });
    assert!(offloaded.is_some(), "the learned-heavy /work requests ran on the blocking pools");

    let threads = cpus::threads(workload.pid());
    let process = threads.iter().find(|(name, _)| name == "hermes-workload").map(|(_, c)| c.clone());
    let process = process.expect("the main thread");
    assert!(!cpus::is_one(&process), "this test needs a process allowed two CPUs or more: {process}");
    let workers: Vec<_> = threads.iter().filter(|(name, _)| name.starts_with("hermes-worker-")).collect();
    assert_eq!(workers.len(), 2, "{threads:?}");
    assert!(workers.iter().all(|(_, list)| cpus::is_one(list)), "the workers are pinned: {threads:?}");
    let pinned_others: Vec<_> = threads
        .iter()
        .filter(|(name, list)| !name.starts_with("hermes-worker-") && cpus::is_one(list))
        .collect();
    assert!(pinned_others.is_empty(), "threads other than the workers pinned to one CPU: {pinned_others:?}");
    assert!(threads.len() > 3, "the blocking pools' threads are among them: {threads:?}");
    workload.stop();
}
