//! The workload as a host behind `hermes-lb`: `--dsr-balancer ADDR=MAC
//! --dsr-vip VIP --dsr-token HEX` sends the host's load to the balancer in
//! band (`hermes_dsr::Agent`).

use std::{io, net::Ipv4Addr, time::Duration};

use hermes_runtime::ServerHandle;

/// What a host behind `hermes-lb` sends its balancer.
#[derive(Debug, clap::Args)]
pub(crate) struct DsrArgs {
    /// Hermes mode, on a host behind `hermes-lb`: the balancer as `ADDR=MAC`
    /// (its address and its interface's MAC). This host's load then travels
    /// to it in band (`hermes_dsr::Agent`: the feedback program at egress of
    /// `--dsr-interface`); needs `--dsr-vip`, `--dsr-token` and CAP_BPF + CAP_NET_ADMIN.
    #[arg(long, value_name = "ADDR=MAC", value_parser = parse_balancer, requires_all = ["dsr_vip", "dsr_token"])]
    dsr_balancer: Option<(Ipv4Addr, [u8; 6])>,
    /// The VIP this host serves (held on its loopback), with `--dsr-balancer`.
    #[arg(long, value_name = "ADDR", requires = "dsr_balancer")]
    dsr_vip: Option<Ipv4Addr>,
    /// The interface the host's replies leave by, with `--dsr-balancer`.
    #[arg(long, value_name = "IFACE", default_value = "eth0")]
    dsr_interface: String,
    /// This host's secret token (1 to 16 hex digits, not 0), as given to the
    /// balancer for it (`hermes-lb --server ADDR=MAC,TOKEN`), with `--dsr-balancer`.
    #[arg(long, value_name = "HEX", value_parser = hermes_dsr::parse_token, requires = "dsr_balancer")]
    dsr_token: Option<u64>,
    /// At most one metric per this many milliseconds, with `--dsr-balancer`.
    #[arg(long, value_name = "N", default_value_t = 10)]
    dsr_interval_ms: u64,
}

/// `ADDR=MAC` of `--dsr-balancer`.
fn parse_balancer(s: &str) -> Result<(Ipv4Addr, [u8; 6]), String> {
    let (addr, mac) = s.split_once('=').ok_or_else(|| format!("{s:?}: expected ADDR=MAC"))?;
    let addr = addr.parse().map_err(|e| format!("{addr:?}: {e}"))?;
    Ok((addr, hermes_dsr::parse_mac(mac)?))
}

/// Starts the in-band feedback to the balancer of `--dsr-balancer`, fed by
/// the server's snapshot; `None` without one.
pub(crate) fn start_agent(args: &DsrArgs, handle: &ServerHandle) -> io::Result<Option<hermes_dsr::Agent>> {
    let (Some((balancer_addr, balancer_mac)), Some(vip), Some(token)) =
        (args.dsr_balancer, args.dsr_vip, args.dsr_token)
    else {
        return Ok(None);
    };
    let mut settings = hermes_dsr::HostSettings::new(balancer_mac, balancer_addr, vip, token);
    settings.interval = Duration::from_millis(args.dsr_interval_ms.max(1));
    let source = handle.snapshot_source();
    let agent = hermes_dsr::Agent::start(&args.dsr_interface, settings, move || {
        source.snapshot().unwrap_or_default()
    })
    .map_err(|e| io::Error::other(format!("--dsr-balancer: {e}")))?;
    Ok(Some(agent))
}
