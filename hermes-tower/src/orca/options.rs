//! The options of [`Serve`] that put the host's load where balancers read
//! it: [`Serve::with_orca`], [`Serve::with_orca_service`] and
//! [`Serve::with_haproxy_agent`].

use std::time::Duration;

use super::{HaproxyAgent, OrcaFormat};
use crate::serve::{Grpc, Serve};

impl<A, P> Serve<A, P> {
    /// ORCA load reports on every response, for the balancers that weigh
    /// hosts by them (gRPC's `weighted_round_robin`, Envoy's
    /// `client_side_weighted_round_robin`): gRPC calls carry the
    /// `endpoint-load-metrics-bin` trailer (what gRPC clients read), HTTP
    /// responses the `endpoint-load-metrics` header in `format` (what
    /// Envoy reads). The report comes from the host's load of the last
    /// tick (see [`crate::orca`]); a `5xx` response or a gRPC status other
    /// than `OK` counts in its error rate. Default: off.
    ///
    /// ```no_run
    /// use hermes_tower::orca::OrcaFormat;
    /// use tonic::service::Routes;
    ///
    /// # async fn run(app: axum::Router) -> std::io::Result<()> {
    /// hermes_tower::serve("0.0.0.0:8080", app).with_orca(OrcaFormat::Text).await?;
    /// hermes_tower::serve_tonic("0.0.0.0:50051", || Routes::new(tonic_health::server::health_reporter().1))
    ///     .with_orca(OrcaFormat::Bin)
    ///     .await
    /// # }
    /// ```
    pub fn with_orca(mut self, format: OrcaFormat) -> Self {
        self.settings.reports.per_request = Some(format);
        self
    }

    /// Answers HAProxy's `agent-check` on `agent`'s port from the host's
    /// load: `up` with a weight from its headroom, `drain` when no worker is
    /// eligible for new connections (see [`HaproxyAgent`]). The agent runs
    /// on a thread of its own, reports on every address served, and stops
    /// with the servers. Default: off.
    pub fn with_haproxy_agent(mut self, agent: HaproxyAgent) -> Self {
        self.settings.reports.agent = Some(agent);
        self
    }
}

impl<A, F, L> Serve<A, Grpc<F, L>> {
    /// Serves ORCA out of band next to the application's services:
    /// `xds.service.orca.v3.OpenRcaService/StreamCoreMetrics`, one report
    /// per interval the client asks for, but never more often than
    /// `min_interval` (as gRPC's own servers do; see
    /// [`DEFAULT_MIN_INTERVAL`](super::DEFAULT_MIN_INTERVAL)), for gRPC
    /// clients with `enableOobLoadReport` and Envoy's
    /// `enable_oob_load_report`. Default: off.
    ///
    /// ```no_run
    /// use hermes_tower::orca::DEFAULT_MIN_INTERVAL;
    /// use tonic::service::Routes;
    ///
    /// # async fn run() -> std::io::Result<()> {
    /// hermes_tower::serve_tonic("0.0.0.0:50051", || Routes::new(tonic_health::server::health_reporter().1))
    ///     .with_orca_service(DEFAULT_MIN_INTERVAL)
    ///     .await
    /// # }
    /// ```
    pub fn with_orca_service(mut self, min_interval: Duration) -> Self {
        self.settings.reports.service_min_interval = Some(min_interval);
        self
    }
}
