//! `--grpc`: the workload over gRPC, so that gRPC is measured like HTTP.
//! `hermes.bench.Workload/Work` from this proto, written by hand with
//! tonic's `codegen` helpers and `tonic-prost` (what `tonic-prost-build`
//! would generate, without `protoc`):
//!
//! ```proto
//! syntax = "proto3";
//! package hermes.bench;
//! service Workload { rpc Work(WorkRequest) returns (WorkReply); }
//! message WorkRequest { uint64 spin_us = 1; uint64 block_ms = 2; }
//! message WorkReply { uint32 worker = 1; uint32 pid = 2; }
//! ```
//!
//! A call spins `spin_us` of its thread's CPU time (as `/cpu` does, so a
//! call costs the same CPU however busy the machine), then blocks its
//! thread for `block_ms` (both scaled by `--cost-scale`, with the maxima of
//! `/work` and `/block`: `InvalidArgument` above them), and answers which
//! worker and process served it.

use std::{convert::Infallible, time::Duration};

use tonic::{
    Status,
    codegen::{BoxFuture, Context, Poll, Service, http},
    server::NamedService,
};
use tonic_prost::ProstCodec;

use super::{MAX_BLOCK_MS, MAX_WORK_US, scaled, worker_id};

/// The method's path.
pub(crate) const WORK: &str = "/hermes.bench.Workload/Work";

/// `hermes.bench.WorkRequest`.
#[derive(Clone, PartialEq, prost::Message)]
pub(crate) struct WorkRequest {
    /// CPU to spin, µs (before the cost scale).
    #[prost(uint64, tag = "1")]
    pub(crate) spin_us: u64,
    /// Time to block the thread, ms (before the cost scale).
    #[prost(uint64, tag = "2")]
    pub(crate) block_ms: u64,
}

/// `hermes.bench.WorkReply`.
#[derive(Clone, PartialEq, prost::Message)]
pub(crate) struct WorkReply {
    /// The worker that served the call.
    #[prost(uint32, tag = "1")]
    pub(crate) worker: u32,
    /// The process that served it.
    #[prost(uint32, tag = "2")]
    pub(crate) pid: u32,
}

/// The `hermes.bench.Workload` service, its costs scaled by `scale`.
#[derive(Debug, Clone, Copy)]
pub(crate) struct WorkloadService {
    scale: f64,
}

impl WorkloadService {
    pub(crate) fn new(scale: f64) -> Self {
        Self { scale }
    }

    /// One call: spin, block, say who answered.
    fn work(self, request: WorkRequest) -> Result<WorkReply, Status> {
        let us = scaled(request.spin_us, self.scale);
        let ms = scaled(request.block_ms, self.scale);
        if us > MAX_WORK_US {
            return Err(Status::invalid_argument(format!("spin_us is above its maximum, {MAX_WORK_US}")));
        }
        if ms > MAX_BLOCK_MS {
            return Err(Status::invalid_argument(format!("block_ms is above its maximum, {MAX_BLOCK_MS}")));
        }
        super::cpu::spin_cpu(us);
        if ms > 0 {
            // Blocks the thread, as a stuck handler would.
            std::thread::sleep(Duration::from_millis(ms));
        }
        Ok(WorkReply { worker: u32::try_from(worker_id()).unwrap_or(u32::MAX), pid: std::process::id() })
    }
}

impl NamedService for WorkloadService {
    const NAME: &'static str = "hermes.bench.Workload";
}

impl Service<http::Request<tonic::body::Body>> for WorkloadService {
    type Response = http::Response<tonic::body::Body>;
    type Error = Infallible;
    type Future = BoxFuture<Self::Response, Self::Error>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: http::Request<tonic::body::Body>) -> Self::Future {
        let this = *self;
        Box::pin(async move {
            if request.uri().path() != WORK {
                return Ok(Status::unimplemented(format!("no method {}", request.uri().path())).into_http());
            }
            let mut grpc = tonic::server::Grpc::new(ProstCodec::<WorkReply, WorkRequest>::default());
            Ok(grpc.unary(Work(this), request).await)
        })
    }
}

struct Work(WorkloadService);

impl tonic::server::UnaryService<WorkRequest> for Work {
    type Response = WorkReply;
    type Future = BoxFuture<tonic::Response<WorkReply>, Status>;

    fn call(&mut self, request: tonic::Request<WorkRequest>) -> Self::Future {
        let service = self.0;
        Box::pin(async move { service.work(request.into_inner()).map(tonic::Response::new) })
    }
}

/// Mode `tokio`: tonic's own server on the stock multi-thread runtime, one
/// listener, until `signal`.
pub(crate) async fn serve_tokio(
    listener: tokio::net::TcpListener,
    scale: f64,
    signal: impl Future<Output = ()>,
) -> std::io::Result<()> {
    tonic::transport::Server::builder()
        .add_service(WorkloadService::new(scale))
        .serve_with_incoming_shutdown(
            tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true)),
            signal,
        )
        .await
        .map_err(std::io::Error::other)
}
