//! A fleet of Hermes hosts behind the balancer users already run: the
//! host's load ([`hermes_runtime::HostLoad`], refreshed every tick) in the
//! forms balancers read.
//!
//! - **ORCA per request** ([`Serve::with_orca`](crate::serve::Serve::with_orca)):
//!   each gRPC call's trailers carry `endpoint-load-metrics-bin` (the
//!   serialized `xds.data.orca.v3.OrcaLoadReport`, gRFC A51), which gRPC's
//!   `weighted_round_robin` (gRFC A58; C-core, Java, Go, grpc-js) and
//!   Envoy's `client_side_weighted_round_robin` weigh hosts by; each HTTP
//!   response carries `endpoint-load-metrics` in the format Envoy parses
//!   that you choose ([`OrcaFormat`]).
//! - **ORCA out of band** ([`Serve::with_orca_service`](crate::serve::Serve::with_orca_service)):
//!   `xds.service.orca.v3.OpenRcaService/StreamCoreMetrics`
//!   ([`OpenRcaService`]) next to the application's gRPC services.
//! - **HAProxy's `agent-check`** ([`Serve::with_haproxy_agent`](crate::serve::Serve::with_haproxy_agent)):
//!   a port answering a weight from the host's headroom, `drain` when no
//!   worker is eligible ([`HaproxyAgent`]).
//!
//! A report says: `cpu_utilization` (the process's CPU share),
//! `application_utilization` (the host's utilisation as Hermes measures it,
//! which the weighted round robins prefer), `rps_fractional`, `eps`, and the
//! named metrics `in_flight`, `eligible_workers`, `queue_depth` and
//! `workers` ([`report::metric`]).
//!
//! Cost: the report is encoded once per refresh of the host's load (once
//! per tick, 5 ms by default) per worker, on the first response after it;
//! a response then costs two `arc-swap` loads and a reference-count
//! increment for its header value, without allocating or locking. A gRPC
//! call costs one more allocation: tonic boxes response bodies, and the
//! trailer needs the body wrapped.

mod agent;
mod cache;
pub(crate) mod future;
mod options;
pub mod report;
mod service;

use std::time::Duration;

pub use agent::{DRAIN_AFTER, HaproxyAgent, READY_WINDOW};
pub(crate) use cache::Reports;
pub use report::{HEADER, OrcaLoadReport, OrcaLoadReportRequest, TRAILER};
pub use service::{OpenRcaService, STREAM_CORE_METRICS};

/// A suggested minimum interval of the out-of-band stream (gRPC's servers
/// default to 30 s; a Hermes report is already aggregated per tick, so a
/// stream costs one encoding per interval).
pub const DEFAULT_MIN_INTERVAL: Duration = Duration::from_secs(1);

/// The format of the `endpoint-load-metrics` header on HTTP responses, as
/// Envoy parses it (its value starts with the format's name).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum OrcaFormat {
    /// `TEXT cpu_utilization:0.25,rps_fractional:1200,named_metrics.in_flight:3,...`
    #[default]
    Text,
    /// `JSON {"cpuUtilization":0.25,...}` (the protobuf JSON mapping).
    Json,
    /// `BIN <base64 of the serialized report>`.
    Bin,
}

impl std::str::FromStr for OrcaFormat {
    type Err = String;

    /// `text`, `json` or `bin` (any case).
    fn from_str(s: &str) -> Result<Self, String> {
        match s.to_ascii_lowercase().as_str() {
            "text" => Ok(Self::Text),
            "json" => Ok(Self::Json),
            "bin" => Ok(Self::Bin),
            _ => Err(format!("{s:?} is not an ORCA header format (text, json or bin)")),
        }
    }
}

/// Which load reports a [`Serve`](crate::serve::Serve) gives, besides the
/// application.
#[derive(Debug, Default)]
pub(crate) struct LoadReports {
    /// Per request, with the HTTP header in this format.
    pub(crate) per_request: Option<OrcaFormat>,
    /// The out-of-band service (gRPC), with this minimum interval.
    pub(crate) service_min_interval: Option<Duration>,
    /// The HAProxy agent, until it is started.
    pub(crate) agent: Option<HaproxyAgent>,
}

impl Clone for LoadReports {
    /// The settings, without the agent (which one process starts once).
    fn clone(&self) -> Self {
        Self { per_request: self.per_request, service_min_interval: self.service_min_interval, agent: None }
    }
}

impl LoadReports {
    /// Refuses a zero minimum interval (a stream asking for none would
    /// then report without pause).
    pub(crate) fn validate(&self) -> std::io::Result<()> {
        if self.service_min_interval.is_some_and(|d| d.is_zero()) {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                "with_orca_service's minimum interval must not be zero",
            ));
        }
        Ok(())
    }

    /// The current worker's per-request reports, when they are on.
    pub(crate) fn for_worker(&self) -> Option<std::sync::Arc<Reports>> {
        Reports::for_current_worker(self.per_request?)
    }

    /// The out-of-band service of the current worker's server, when on.
    pub(crate) fn service_for_worker(&self) -> Option<OpenRcaService> {
        let min = self.service_min_interval?;
        let source = hermes_runtime::context::current()?.load_source()?;
        Some(OpenRcaService::new(source, min))
    }
}
