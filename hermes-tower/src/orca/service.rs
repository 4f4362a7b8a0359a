//! [`OpenRcaService`]: ORCA out of band, the
//! `xds.service.orca.v3.OpenRcaService/StreamCoreMetrics` stream gRPC
//! clients open to a backend for its load (gRFC A51; gRPC's
//! `weighted_round_robin` with `enableOobLoadReport`), written by hand with
//! tonic's `codegen` helpers and `tonic-prost` as the generated code would
//! be.
//!
//! As gRPC's own servers do (`orca.ServiceOptions.MinReportingInterval` in
//! Go, `ServiceOptions::set_min_report_duration` in C++), the stream honours
//! the interval the client asks for, but never reports more often than the
//! server's minimum; an interval not given, or zero, is the minimum. The
//! first report goes out at once. The stream ends when the server stops or
//! the connection's worker drains.

use std::{convert::Infallible, fmt, pin::Pin, time::Duration};

use futures_util::{Stream, stream};
use hermes_runtime::LoadSource;
use tonic::{
    Status,
    codegen::{BoxFuture, Context, Poll, Service, http},
    server::NamedService,
};
use tonic_prost::ProstCodec;

use super::report::{OrcaLoadReport, OrcaLoadReportRequest};

/// The method's path.
pub const STREAM_CORE_METRICS: &str = "/xds.service.orca.v3.OpenRcaService/StreamCoreMetrics";

/// The ORCA out-of-band service of one Hermes server: a stream of the
/// host's load reports per client, at the interval it asks for, no more
/// often than `min_interval`. [`Serve::with_orca_service`](crate::serve::Serve::with_orca_service)
/// adds it next to the application's services; a server started with the
/// plain builder adds it itself:
///
/// ```no_run
/// # fn f(source: hermes_runtime::LoadSource) {
/// use std::time::Duration;
/// use hermes_tower::orca::OpenRcaService;
///
/// let routes = tonic::service::Routes::new(OpenRcaService::new(source, Duration::from_secs(1)));
/// # }
/// ```
#[derive(Clone)]
pub struct OpenRcaService {
    source: LoadSource,
    min_interval: Duration,
}

impl fmt::Debug for OpenRcaService {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OpenRcaService").field("min_interval", &self.min_interval).finish()
    }
}

impl OpenRcaService {
    /// Reports `source`'s load, at most once per `min_interval` per stream.
    pub fn new(source: LoadSource, min_interval: Duration) -> Self {
        Self { source, min_interval }
    }

    /// The stream's interval for a request: the client's, raised to the
    /// minimum.
    fn interval(&self, request: &OrcaLoadReportRequest) -> Duration {
        let asked = request.report_interval.map(|d| d.to_std()).unwrap_or_default();
        asked.max(self.min_interval)
    }
}

impl NamedService for OpenRcaService {
    const NAME: &'static str = "xds.service.orca.v3.OpenRcaService";
}

type ReportStream = Pin<Box<dyn Stream<Item = Result<OrcaLoadReport, Status>> + Send>>;

impl Service<http::Request<tonic::body::Body>> for OpenRcaService {
    type Response = http::Response<tonic::body::Body>;
    type Error = Infallible;
    type Future = BoxFuture<Self::Response, Self::Error>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: http::Request<tonic::body::Body>) -> Self::Future {
        let this = self.clone();
        Box::pin(async move {
            if request.uri().path() != STREAM_CORE_METRICS {
                return Ok(Status::unimplemented(format!("no method {}", request.uri().path())).into_http());
            }
            let mut grpc =
                tonic::server::Grpc::new(ProstCodec::<OrcaLoadReport, OrcaLoadReportRequest>::default());
            Ok(grpc.server_streaming(StreamCoreMetrics(this), request).await)
        })
    }
}

struct StreamCoreMetrics(OpenRcaService);

impl tonic::server::ServerStreamingService<OrcaLoadReportRequest> for StreamCoreMetrics {
    type Response = OrcaLoadReport;
    type ResponseStream = ReportStream;
    type Future = BoxFuture<tonic::Response<ReportStream>, Status>;

    fn call(&mut self, request: tonic::Request<OrcaLoadReportRequest>) -> Self::Future {
        let interval = self.0.interval(request.get_ref());
        let source = self.0.source.clone();
        Box::pin(async move { Ok(tonic::Response::new(reports(source, interval))) })
    }
}

/// Where a stream is: before its first report, or waiting for the next one
/// (until its worker drains).
enum Next {
    First(LoadSource),
    After(LoadSource, Pin<Box<dyn Future<Output = ()> + Send>>),
}

/// One report now, then one per `interval`, until the server is gone or
/// the worker polling the stream (its connection's) drains.
fn reports(source: LoadSource, interval: Duration) -> ReportStream {
    Box::pin(stream::unfold(Next::First(source), move |next| async move {
        let (source, drain) = match next {
            // Polled by the connection's task, on its worker: that worker's
            // drain ends the stream.
            Next::First(source) => (source, Box::pin(hermes_runtime::shutdown_signal()) as Pin<Box<_>>),
            Next::After(source, mut drain) => {
                tokio::select! {
                    () = tokio::time::sleep(interval) => {}
                    () = &mut drain => return None,
                }
                (source, drain)
            }
        };
        let load = source.current()?;
        Some((Ok(OrcaLoadReport::from_load(&load)), Next::After(source, drain)))
    }))
}
