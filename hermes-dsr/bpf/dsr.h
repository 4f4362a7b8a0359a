// SPDX-License-Identifier: (MIT OR Apache-2.0) AND GPL-2.0
//
// Layouts shared by the balancer program (dsr_lb.bpf.c) and the host
// feedback program (dsr_host.bpf.c). Every struct here is mirrored by a
// `#[repr(C)]` type in `hermes-dsr/src/layout.rs`; a test checks both
// against the objects.

#ifndef HERMES_DSR_H
#define HERMES_DSR_H

#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/in.h>
#include <linux/ip.h>
#include <linux/tcp.h>
#include <linux/udp.h>
#include <linux/pkt_cls.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

#define READ_ONCE(x) (*(volatile typeof(x) *)&(x))
#define WRITE_ONCE(x, v) (*(volatile typeof(x) *)&(x) = (v))

#define DSR_MAX_SERVERS 16
#define DSR_MAGLEV_SIZE 2039 // prime, > 100 x DSR_MAX_SERVERS

// The load option: an experimental IPv4 option (RFC 4727: copy 1, class 0,
// number 30 = 0x9E), 16 bytes: type, length, eligible workers, workers,
// load (big endian: requests in flight + accept queue, summed over workers),
// and the server's token (8 bytes, big endian), a secret the host and the
// balancer share: a metric without its server's token is not learned.
#define DSR_OPT_TYPE 0x9E
#define DSR_OPT_LEN 16

// Fragment field of an IPv4 header (host byte order).
#define DSR_IP_MF 0x2000     // more fragments follow
#define DSR_IP_OFFSET 0x1FFF // offset in 8-byte units: not 0 = not the first fragment

// Balancer settings (map dsr_lb_cfg, one entry).
struct dsr_lb_config {
	__u32 vip;          // network byte order
	__u32 port;         // host byte order; 0 = every port
	__u32 servers;      // slots 0..servers of dsr_servers are in use
	__u32 policy;       // DSR_POLICY_*
	__u64 own_mac;      // the balancer interface's MAC, bytes in memory order
	__u64 max_stale_ns; // a metric older than this drains its server; 0 = never stale
	__u64 _reserved[4];
};

#define DSR_POLICY_LOAD 0 // two choices among fresh servers; Maglev when none is fresh
#define DSR_POLICY_HASH 1 // Maglev always (baseline)

// One server (map dsr_servers): its address, and its load as last learned.
struct dsr_server {
	__u64 mac;         // bytes in memory order
	__u32 addr;        // network byte order (bookkeeping)
	__u32 _pad;
	__u64 updated_ns;  // bpf_ktime_get_ns() of the last metric; 0 = never
	__u32 load;        // requests in flight + accept queue
	__u32 eligible;    // eligible workers
	__u64 recent;      // new flows placed since the last metric
	__u64 feedbacks;   // metrics received
	__u64 new_flows;   // new flows placed on this server
	__u64 packets;     // packets forwarded to this server
	__u64 token;       // the token its metrics carry: bytes in memory order (the option's)
};

// Balancer counters (map dsr_lb_counters).
#define DSR_CNT_FORWARDED 0      // packets forwarded to a server
#define DSR_CNT_NEW_FLOWS 1      // SYNs placed by policy
#define DSR_CNT_FALLBACK_STALE 2 // new flows hashed because every metric was stale
#define DSR_CNT_DRAINED 3        // new flows placed while some server was stale (skipped)
#define DSR_CNT_NO_FLOW 4        // non-SYN packets of unknown flows (Maglev, not recorded)
#define DSR_CNT_FEEDBACK 5       // load options received
#define DSR_CNT_FEEDBACK_UNKNOWN 6 // load options from an unknown MAC
#define DSR_CNT_REPLY_SEEN 7     // packets from the VIP that reached the balancer
#define DSR_CNT_PASSED 8         // packets not for the VIP, left to the stack
#define DSR_CNT_HASHED 9         // new flows placed by Maglev under DSR_POLICY_HASH
#define DSR_CNT_FEEDBACK_REJECTED 10 // load options not to the balancer, not TCP/UDP, malformed or without the token
#define DSR_CNT_RECOVERABLE 11   // new flows placed on their Maglev server (a lookup miss still finds it)
#define DSR_CNT_FRAGMENTS 12     // non-first fragments forwarded with their first fragment
#define DSR_CNT_FRAGMENTS_UNMATCHED 13 // non-first fragments whose first fragment was not forwarded
#define DSR_CNT_PROMOTED 14      // flows confirmed by the client's first packet after its SYN
#define DSR_CNT_LEN 16

struct dsr_flow_key {
	__u32 saddr;
	__u32 daddr;
	__u16 sport;
	__u16 dport;
	__u32 proto;
};

// The fragments of one IPv4 datagram: its first fragment's server (map dsr_frags).
struct dsr_frag_key {
	__u32 saddr;
	__u32 daddr;
	__u16 id;           // network byte order
	__u16 proto;
};

// Host settings (map dsr_host_cfg, one entry).
struct dsr_host_config {
	__u64 lb_mac;       // the balancer's MAC, bytes in memory order
	__u32 vip;          // network byte order (counts replies)
	__u32 enabled;      // 0: send nothing
	__u64 interval_ns;  // at most one metric per interval
	__u64 max_age_ns;   // a host load older than this is not sent
	__u32 keepalive_port; // UDP port of the agent's keepalives to the balancer; 0 = none
	__u32 _pad;
	__u64 token;        // this server's token, bytes in memory order (the option's)
	__u64 _reserved[2];
};

// The host's load, stored by the agent (map dsr_host_load, one entry).
struct dsr_host_load {
	__u64 updated_ns;   // CLOCK_MONOTONIC of the sample; 0 = never
	__u32 load;
	__u32 eligible;
	__u32 workers;
	__u32 _pad;
	__u64 _reserved[5];
};

// Host counters (map dsr_host_counters).
#define DSR_HCNT_SEEN 0       // IPv4 TCP packets seen leaving
#define DSR_HCNT_REPLIES 1    // of which from the VIP
#define DSR_HCNT_SENT 2       // metrics sent to the balancer
#define DSR_HCNT_ERRORS 3     // metrics that failed (room, clone); the interval stays open
#define DSR_HCNT_SKIPPED 4    // due packets skipped (GSO or with options)
#define DSR_HCNT_STALE 5      // due packets with no fresh load to send
#define DSR_HCNT_LAST_NS 6    // bpf_ktime_get_ns() of the last metric
#define DSR_HCNT_BYTES 7      // bytes of the frames sent as metrics
#define DSR_HCNT_KEEPALIVES 8 // of the metrics, those carried by keepalives
#define DSR_HCNT_TOO_BIG 9    // due packets with no room for the option (left to the next packet)
#define DSR_HCNT_LEN 16

#endif
