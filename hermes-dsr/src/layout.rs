//! The `#[repr(C)]` mirrors of the maps of both kernel programs, with the
//! names and indexes shared with `bpf/dsr.h`. This module is the only place
//! these layouts are written down on the Rust side; a test parses the
//! embedded objects and checks names and value sizes against it.
//!
//! Fields are atomics because the memory is shared through `mmap` with the
//! programs, which read and write it concurrently. Every field is an
//! independent setting, gauge or counter: no reader uses one field to guard
//! another, so `Relaxed` is enough everywhere except where a method says
//! otherwise.

use std::sync::atomic::{AtomicU32, AtomicU64};

/// Most servers one balancer holds.
pub const MAX_SERVERS: usize = 16;
/// Entries of the Maglev lookup table (a prime above 100 × [`MAX_SERVERS`]).
pub const MAGLEV_SIZE: usize = 2039;
/// The load option's type: copy 1, class 0, number 30 (RFC 4727 experimental).
pub const OPTION_TYPE: u8 = 0x9E;
/// The load option's length in bytes (type, length, eligible, workers, load
/// as u32 BE, the server's token as u64 BE).
pub const OPTION_LEN: usize = 16;

/// Balancer program (C function name).
pub const LB_PROGRAM: &str = "dsr_balance";
/// The balancer's XDP program (the same logic as [`LB_PROGRAM`]).
pub const LB_XDP_PROGRAM: &str = "dsr_balance_xdp";
/// An XDP program that passes every frame, for the peer of a veth whose
/// other end runs [`LB_XDP_PROGRAM`].
pub const XDP_PASS_PROGRAM: &str = "dsr_xdp_pass";
/// Balancer settings map: one [`LbConfig`].
pub const LB_CONFIG_MAP: &str = "dsr_lb_cfg";
/// Servers map: [`MAX_SERVERS`] [`ServerSlot`]s.
pub const SERVERS_MAP: &str = "dsr_servers";
/// Maglev table map: [`MAGLEV_SIZE`] server indexes, as `u64` (the kernel
/// pads mmapable array values to 8 bytes: `u32` values could not be mapped
/// as a slice).
pub const MAGLEV_MAP: &str = "dsr_maglev";
/// Balancer counters map: [`LB_COUNTERS_LEN`] `u64`s indexed by [`lb_counter`].
pub const LB_COUNTERS_MAP: &str = "dsr_lb_counters";
/// LRU flow map: [`FlowKey`] → server index.
pub const FLOWS_MAP: &str = "dsr_flows";
/// Entries of the flow map.
pub const FLOWS_LEN: usize = 65536;
/// LRU map of SYNs placed, until the client's next packet confirms the
/// connection: [`FlowKey`] → server index.
pub const SYNS_MAP: &str = "dsr_syns";
/// Entries of the SYN map.
pub const SYNS_LEN: usize = 65536;
/// LRU map of first fragments forwarded: [`FragKey`] → server index.
pub const FRAGS_MAP: &str = "dsr_frags";
/// Entries of the fragment map.
pub const FRAGS_LEN: usize = 8192;

/// Host feedback program (C function name).
pub const HOST_PROGRAM: &str = "dsr_feedback";
/// Host settings map: one [`HostConfig`].
pub const HOST_CONFIG_MAP: &str = "dsr_host_cfg";
/// Host load map: one [`HostLoad`].
pub const HOST_LOAD_MAP: &str = "dsr_host_load";
/// Host counters map: [`HOST_COUNTERS_LEN`] `u64`s indexed by [`host_counter`].
pub const HOST_COUNTERS_MAP: &str = "dsr_host_counters";

/// New-flow policies ([`LbConfig::policy`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
#[repr(u32)]
pub enum Policy {
    /// The less loaded of the flow's Maglev server and another fresh server
    /// drawn at random (ties go to the Maglev server, so that a flow whose
    /// entry is lost is still found there); servers with a stale metric take
    /// no new flows; Maglev when every metric is stale.
    #[default]
    Load = 0,
    /// Maglev consistent hashing always (the baseline without feedback).
    Hash = 1,
}

/// Balancer settings (map [`LB_CONFIG_MAP`]).
#[repr(C)]
#[derive(Debug, Default)]
pub struct LbConfig {
    /// The virtual address, network byte order as stored in memory.
    pub vip: AtomicU32,
    /// The service port, host byte order; 0 balances every port.
    pub port: AtomicU32,
    /// Slots `0..servers` of the servers map are in use.
    pub servers: AtomicU32,
    /// A [`Policy`] discriminant.
    pub policy: AtomicU32,
    /// The balancer interface's MAC ([`mac_to_u64`]).
    pub own_mac: AtomicU64,
    /// A metric older than this drains its server; 0 = never stale.
    pub max_stale_ns: AtomicU64,
    _reserved: [u64; 4],
}

/// One server (map [`SERVERS_MAP`]): where it is and its load as last learned.
#[repr(C)]
#[derive(Debug, Default)]
pub struct ServerSlot {
    /// Its MAC ([`mac_to_u64`]): where frames go, and how metrics are recognised.
    pub mac: AtomicU64,
    /// Its IPv4 address, network byte order (bookkeeping).
    pub addr: AtomicU32,
    _pad: u32,
    /// `CLOCK_MONOTONIC` ns of the last metric; 0 = never.
    pub updated_ns: AtomicU64,
    /// Requests in flight + accept queue, summed over the host's workers.
    pub load: AtomicU32,
    /// Eligible workers on the host.
    pub eligible: AtomicU32,
    /// New flows placed since the last metric (added to the load).
    pub recent: AtomicU64,
    /// Metrics received.
    pub feedbacks: AtomicU64,
    /// New flows placed on this server.
    pub new_flows: AtomicU64,
    /// Packets forwarded to this server.
    pub packets: AtomicU64,
    /// The token its metrics must carry ([`token_to_u64`]).
    pub token: AtomicU64,
}

/// Indexes into the balancer counters map.
pub mod lb_counter {
    /// Packets forwarded to a server.
    pub const FORWARDED: usize = 0;
    /// SYNs placed by policy.
    pub const NEW_FLOWS: usize = 1;
    /// New flows hashed (Maglev) because every metric was stale.
    pub const FALLBACK_STALE: usize = 2;
    /// New flows placed while at least one server was drained for a stale metric.
    pub const DRAINED: usize = 3;
    /// Non-SYN packets of flows no map knew: sent to their Maglev server,
    /// whatever the load, and not recorded.
    pub const NO_FLOW: usize = 4;
    /// Load options received.
    pub const FEEDBACK: usize = 5;
    /// Load options from a MAC that is no server.
    pub const FEEDBACK_UNKNOWN: usize = 6;
    /// Packets from the VIP that reached the balancer (replies should not).
    pub const REPLY_SEEN: usize = 7;
    /// Packets not for the VIP, left to the stack.
    pub const PASSED: usize = 8;
    /// New flows placed by Maglev under [`Policy::Hash`](super::Policy::Hash).
    pub const HASHED: usize = 9;
    /// Load options refused: not addressed to the balancer's MAC, not over
    /// TCP or UDP, malformed, or without the server's token.
    pub const FEEDBACK_REJECTED: usize = 10;
    /// New flows placed on their Maglev server: found again without state.
    pub const RECOVERABLE: usize = 11;
    /// Non-first IPv4 fragments forwarded to their first fragment's server.
    pub const FRAGMENTS: usize = 12;
    /// Non-first IPv4 fragments whose first fragment the balancer did not forward.
    pub const FRAGMENTS_UNMATCHED: usize = 13;
    /// Flows confirmed by the client's first packet after its SYN.
    pub const PROMOTED: usize = 14;
}
/// Entries of the balancer counters map.
pub const LB_COUNTERS_LEN: usize = 16;

/// Key of the flow map.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FlowKey {
    /// Client address, network byte order.
    pub saddr: u32,
    /// VIP, network byte order.
    pub daddr: u32,
    /// Client port, network byte order.
    pub sport: u16,
    /// Service port, network byte order.
    pub dport: u16,
    /// IP protocol (6).
    pub proto: u32,
}

/// Key of the fragment map: the fields that identify one IPv4 datagram.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FragKey {
    /// Source address, network byte order.
    pub saddr: u32,
    /// Destination address (the VIP), network byte order.
    pub daddr: u32,
    /// IP identification, network byte order.
    pub id: u16,
    /// IP protocol (6).
    pub proto: u16,
}

/// Host settings (map [`HOST_CONFIG_MAP`]).
#[repr(C)]
#[derive(Debug, Default)]
pub struct HostConfig {
    /// The balancer's MAC ([`mac_to_u64`]): where metrics go.
    pub lb_mac: AtomicU64,
    /// The VIP, network byte order (counts replies).
    pub vip: AtomicU32,
    /// 0: send no metric.
    pub enabled: AtomicU32,
    /// At most one metric per interval, ns.
    pub interval_ns: AtomicU64,
    /// A host load older than this is not sent (the balancer then drains the host).
    pub max_age_ns: AtomicU64,
    /// UDP port of the agent's keepalives to the balancer (host order); 0 = none.
    pub keepalive_port: AtomicU32,
    _pad: u32,
    /// This host's token, carried in every metric ([`token_to_u64`]).
    pub token: AtomicU64,
    _reserved: [u64; 2],
}

/// The host's load as the agent stored it (map [`HOST_LOAD_MAP`]).
#[repr(C)]
#[derive(Debug, Default)]
pub struct HostLoad {
    /// `CLOCK_MONOTONIC` ns of the sample; 0 = never. Stored last, with `Release`.
    pub updated_ns: AtomicU64,
    /// Requests in flight + accept queue, summed over workers.
    pub load: AtomicU32,
    /// Eligible workers.
    pub eligible: AtomicU32,
    /// Workers.
    pub workers: AtomicU32,
    _pad: u32,
    _reserved: [u64; 5],
}

/// Indexes into the host counters map.
pub mod host_counter {
    /// IPv4 TCP packets seen leaving the host.
    pub const SEEN: usize = 0;
    /// Of which sent from the VIP (replies that go straight to clients).
    pub const REPLIES: usize = 1;
    /// Metrics sent to the balancer.
    pub const SENT: usize = 2;
    /// Metrics that failed (no room, clone refused); the interval stays open.
    pub const ERRORS: usize = 3;
    /// Due packets skipped (GSO, or already carrying options).
    pub const SKIPPED: usize = 4;
    /// Due packets with no fresh load to send.
    pub const STALE: usize = 5;
    /// `CLOCK_MONOTONIC` ns of the last metric.
    pub const LAST_NS: usize = 6;
    /// Bytes of the frames sent as metrics.
    pub const BYTES: usize = 7;
    /// Of the metrics, those carried by the agent's keepalives (idle host).
    pub const KEEPALIVES: usize = 8;
    /// Due packets with no room for the option (they fill the MTU): the
    /// next packet, or the agent's keepalive, carries the metric.
    pub const TOO_BIG: usize = 9;
}
/// Entries of the host counters map.
pub const HOST_COUNTERS_LEN: usize = 16;

/// A MAC written as six hex bytes separated by `:` (`02:00:00:00:00:11`).
///
/// # Errors
/// A message naming the text when it is not one.
pub fn parse_mac(s: &str) -> Result<[u8; 6], String> {
    let parts: Vec<&str> = s.split(':').collect();
    if parts.len() != 6 {
        return Err(format!("{s:?} is not a MAC (six hex bytes separated by ':')"));
    }
    let mut mac = [0u8; 6];
    for (byte, part) in mac.iter_mut().zip(parts) {
        *byte = u8::from_str_radix(part, 16).map_err(|_| format!("{s:?} is not a MAC"))?;
    }
    Ok(mac)
}

/// A MAC as the programs store it: its six bytes in memory order in a `u64`.
pub fn mac_to_u64(mac: [u8; 6]) -> u64 {
    let mut b = [0u8; 8];
    b[..6].copy_from_slice(&mac);
    u64::from_ne_bytes(b)
}

/// The inverse of [`mac_to_u64`].
pub fn u64_to_mac(v: u64) -> [u8; 6] {
    let b = v.to_ne_bytes();
    [b[0], b[1], b[2], b[3], b[4], b[5]]
}

/// A server's token as the programs store it: its big-endian bytes (the
/// option's) in memory order in a `u64`.
pub fn token_to_u64(token: u64) -> u64 {
    u64::from_ne_bytes(token.to_be_bytes())
}

/// A token written as 1 to 16 hex digits, optionally after `0x`
/// (`5eed0011`); 0 is refused (it would be no secret).
///
/// # Errors
/// A message naming the text when it is not one.
pub fn parse_token(s: &str) -> Result<u64, String> {
    let digits = s.strip_prefix("0x").unwrap_or(s);
    if digits.is_empty() || digits.len() > 16 || !digits.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(format!("{s:?} is not a token (1 to 16 hex digits)"));
    }
    match u64::from_str_radix(digits, 16) {
        Ok(0) | Err(_) => Err(format!("{s:?}: a token must not be 0")),
        Ok(token) => Ok(token),
    }
}

/// An IPv4 address as the programs compare it (network byte order in memory).
pub fn ipv4_to_u32(addr: std::net::Ipv4Addr) -> u32 {
    u32::from_ne_bytes(addr.octets())
}
