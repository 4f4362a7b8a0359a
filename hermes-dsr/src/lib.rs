//! The cross-host tier of Hermes: a load-aware Direct Server Return (DSR)
//! L4 balancer, fed in band by each host's Hermes Worker State Table.
//!
//! - On the balancer, [`Balancer`] attaches `dsr_balance` (tc ingress; or
//!   `dsr_balance_xdp`, the same logic at XDP: [`Datapath`]) to the
//!   interface that receives the VIP's traffic. An existing flow keeps its
//!   server (LRU map on the 5-tuple, entered when the client's packet after
//!   its SYN confirms the connection); a SYN goes to the less loaded of its
//!   Maglev server and another server drawn at random among those with a
//!   fresh metric (ties go to the Maglev server); servers with a stale
//!   metric take no new flows; when every metric is stale, Maglev hashing
//!   places the flow and the fallback is counted. A packet of a flow the
//!   map does not know goes to its Maglev server, whatever the load, and
//!   leaves no state. Packets leave through the same interface with the
//!   server's MAC: servers hold the VIP on loopback and answer the client
//!   directly.
//! - On every server host, [`Agent`] attaches `dsr_feedback` (tc egress) and
//!   samples the Hermes server (in flight + accept queue, eligible workers)
//!   every 5 ms. At most once per interval, the program copies one packet
//!   the host sends anyway to the balancer with the load and the host's
//!   secret token in an IPv4 option (type 0x9E, RFC 4727 experimental); the
//!   original leaves unchanged, so clients never see the option. The
//!   balancer learns the load when the token is the server's, and drops the
//!   copy. No polling request, no extra process.
//!
//! Layouts shared with the programs are in [`layout`]. The `hermes-lb` and
//! `dsr-bench` programs, and the network-namespace testbed the tier's tests
//! run on, are in the `hermes-dsr-tools` package (`hermes-dsr/tools`).
#![deny(missing_docs)]

mod balancer;
mod error;
mod host;
pub mod layout;
mod loader;
pub mod maglev;

pub use balancer::{
    Backend, Balancer, BalancerSettings, Datapath, LB_OBJECT, LbCounters, ServerStats, XdpPass,
};
pub use error::Error;
/// The kernel's run statistics of a program ([`Balancer::program_stats`],
/// [`FeedbackHost::program_stats`]): `hermes-bpf`'s, shared by every
/// program of the workspace.
pub use hermes_bpf::ProgramStats;
pub use host::{AGENT_TICK, Agent, FeedbackHost, HOST_OBJECT, HostCounters, HostSettings, LoadSample};
pub use layout::{Policy, parse_mac, parse_token};
