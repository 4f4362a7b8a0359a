//! The workload as one host of a fleet behind a balancer: `--grpc` (the
//! same workload over gRPC, see `grpc`), `--orca` (ORCA load reports on
//! every response, and with `--grpc` the out-of-band service too) and
//! `--agent-port` (HAProxy's `agent-check`).

use std::{
    io,
    net::{IpAddr, SocketAddr},
    time::Duration,
};

use hermes_runtime::{Builder, ServerHandle};
use hermes_tower::{
    orca::{HaproxyAgent, OrcaFormat},
    serve::{IntoBindAddr, MinDataRate, Protocol, Serve},
};
use tonic::service::Routes;

use super::{Args, grpc::WorkloadService, millis};

/// What a host of a fleet serves for its balancer.
#[derive(Debug, clap::Args)]
pub(crate) struct FleetArgs {
    /// Serve `hermes.bench.Workload/Work` over gRPC instead of the HTTP
    /// endpoints (every mode; `--cost-scale` applies).
    #[arg(long)]
    pub(crate) grpc: bool,
    /// Hermes modes: ORCA load reports on every response (gRPC: the
    /// `endpoint-load-metrics-bin` trailer; HTTP: the
    /// `endpoint-load-metrics` header in FORMAT, `text` by default, or
    /// `json`, `bin`); with `--grpc`, the out-of-band service
    /// `xds.service.orca.v3.OpenRcaService` too.
    #[arg(long, value_name = "FORMAT", num_args = 0..=1, default_missing_value = "text")]
    pub(crate) orca: Option<OrcaFormat>,
    /// With `--grpc --orca`: the out-of-band stream's minimum interval, ms.
    #[arg(long, value_name = "N", default_value_t = 1000)]
    pub(crate) orca_min_interval_ms: u64,
    /// Hermes modes: answer HAProxy's `agent-check` on this port (of the
    /// `--addr` address; 0: any free port), printed on a second line,
    /// `agent on ADDR`.
    #[arg(long, value_name = "PORT")]
    pub(crate) agent_port: Option<u16>,
}

impl FleetArgs {
    /// Refuses the options the stock runtime cannot give.
    pub(crate) fn check_tokio(&self) -> io::Result<()> {
        if self.orca.is_some() || self.agent_port.is_some() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "--orca and --agent-port need a Hermes mode (the host's load comes from the Worker State Table)",
            ));
        }
        Ok(())
    }

    /// `serve` with the per-request reports and the agent asked for; the
    /// agent's address, when there is one.
    pub(crate) fn apply<A: IntoBindAddr, P: Protocol>(
        &self,
        mut serve: Serve<A, P>,
        ip: IpAddr,
    ) -> io::Result<(Serve<A, P>, Option<SocketAddr>)> {
        if let Some(format) = self.orca {
            serve = serve.with_orca(format);
        }
        let mut agent_addr = None;
        if let Some(port) = self.agent_port {
            let agent = HaproxyAgent::bind((ip, port))
                .map_err(|e| io::Error::new(e.kind(), format!("--agent-port {port}: {e}")))?;
            agent_addr = Some(agent.local_addr()?);
            serve = serve.with_haproxy_agent(agent);
        }
        Ok((serve, agent_addr))
    }

    /// The gRPC server of the Hermes modes on `addr`, with the out-of-band
    /// ORCA service when `--orca` is given.
    pub(crate) fn grpc(
        &self,
        addr: SocketAddr,
        scale: f64,
    ) -> hermes_tower::serve::ServeTonic<SocketAddr, impl Fn() -> Routes + Send + Sync + 'static> {
        let serve = hermes_tower::serve_tonic(addr, move || Routes::new(WorkloadService::new(scale)));
        match self.orca {
            Some(_) => serve.with_orca_service(Duration::from_millis(self.orca_min_interval_ms.max(1))),
            None => serve,
        }
    }
}

/// Starts `serve` with the builder, the timeouts and the fleet options;
/// the handle, and the HAProxy agent's address when there is one.
pub(crate) fn start<P: Protocol>(
    serve: Serve<SocketAddr, P>,
    args: &Args,
    builder: Builder,
) -> std::io::Result<(ServerHandle, Option<SocketAddr>)> {
    let serve = serve
        .with_builder(builder)
        .header_read_timeout(millis(args.header_timeout_ms))
        .idle_timeout(millis(args.idle_timeout_ms))
        .min_request_body_rate(
            (args.min_body_rate > 0)
                .then(|| MinDataRate::new(args.min_body_rate, Duration::from_millis(args.body_grace_ms))),
        );
    let (serve, agent) = args.fleet.apply(serve, args.addr.ip())?;
    Ok((serve.start()?, agent))
}
