//! `hermes-workload --grpc` in every mode, as the harness would run it: it
//! prints the same first line, serves `hermes.bench.Workload/Work` (called
//! here with tonic and hand-written prost messages of the same proto), says
//! which worker and process answered, applies `--cost-scale` to the CPU a
//! call spins, and answers `InvalidArgument` above the maximum.

use std::{
    process::Command,
    time::{Duration, Instant},
};

use hermes_test_support::{
    wait::{TIMEOUT, poll_async},
    workload::Workload,
};
use tonic::transport::Channel;
use tonic_prost::ProstCodec;

const BIN: &str = env!("CARGO_BIN_EXE_hermes-workload");

/// `hermes.bench.WorkRequest`.
#[derive(Clone, PartialEq, prost::Message)]
struct WorkRequest {
    #[prost(uint64, tag = "1")]
    spin_us: u64,
    #[prost(uint64, tag = "2")]
    block_ms: u64,
}

/// `hermes.bench.WorkReply`.
#[derive(Clone, PartialEq, prost::Message)]
struct WorkReply {
    #[prost(uint32, tag = "1")]
    worker: u32,
    #[prost(uint32, tag = "2")]
    pid: u32,
}

async fn work(channel: &Channel, spin_us: u64) -> Result<WorkReply, tonic::Status> {
    let mut grpc = tonic::client::Grpc::new(channel.clone());
    grpc.ready().await.map_err(|e| tonic::Status::unavailable(e.to_string()))?;
    let path = tonic::codegen::http::uri::PathAndQuery::from_static("/hermes.bench.Workload/Work");
    let codec = ProstCodec::<WorkRequest, WorkReply>::default();
    let request = tonic::Request::new(WorkRequest { spin_us, block_ms: 0 });
    Ok(grpc.unary(request, path, codec).await?.into_inner())
}

#[tokio::test]
async fn the_grpc_workload_serves_work_in_every_mode_with_its_cost_scale() {
    for mode in ["hermes", "hermes-local", "reuseport", "shared", "tokio"] {
        let workload = Workload::start(Command::new(BIN).args([
            "--grpc",
            "--mode",
            mode,
            "--workers",
            "2",
            "--cost-scale",
            "2",
        ]));
        assert_eq!(workload.workers, 2, "{}", workload.line);
        let endpoint = Channel::from_shared(format!("http://{}", workload.addr)).expect("URI");
        let channel = poll_async(TIMEOUT, Duration::from_millis(5), async || endpoint.connect().await.ok())
            .await
            .unwrap_or_else(|| panic!("{mode}: no gRPC connection"));
        let started = Instant::now();
        let reply = work(&channel, 5_000).await.unwrap_or_else(|e| panic!("{mode}: {e}"));
        // 5 ms of CPU scaled by 2: at least 10 ms of wall time.
        assert!(started.elapsed() >= Duration::from_millis(10), "{mode}: {:?}", started.elapsed());
        assert_eq!(reply.pid, workload.pid(), "{mode}");
        assert!(reply.worker < 2, "{mode}: {reply:?}");
        // 6 s scaled by 2 is above the 10 s maximum.
        let status = work(&channel, 6_000_000).await.expect_err("above the maximum");
        assert_eq!(status.code(), tonic::Code::InvalidArgument, "{mode}: {status:?}");
        drop(channel);
        // Stopped off the test's runtime: the channel's connection task runs
        // on it and answers the server's drain (GOAWAY and its PING).
        tokio::task::spawn_blocking(move || workload.stop()).await.expect("stop");
    }
}
