// SPDX-License-Identifier: (MIT OR Apache-2.0) AND GPL-2.0
//
// hermes-dsr balancer: tc ingress (`dsr_balance`) or XDP (`dsr_balance_xdp`)
// on the balancer's interface, the same logic behind both. Packets for
// the VIP are forwarded at L2 to a server (destination MAC rewritten, source
// MAC set to the balancer's own so that the switch keeps learning the client
// where it is), and leave through the same interface; servers answer the
// client directly. An existing flow keeps its server (LRU map on the
// 5-tuple); a SYN gets a server by policy: the less loaded of two fresh
// servers drawn at random (load learned in band), servers whose metric is
// stale are drained, and Maglev hashing takes over when every metric is
// stale (counted). Frames carrying the load option are metrics from a host:
// learned and dropped. Rebuild the committed object with `cargo xtask bpf`.

#include "dsr.h"

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(map_flags, BPF_F_MMAPABLE);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct dsr_lb_config);
} dsr_lb_cfg SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(map_flags, BPF_F_MMAPABLE);
	__uint(max_entries, DSR_MAX_SERVERS);
	__type(key, __u32);
	__type(value, struct dsr_server);
} dsr_servers SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(map_flags, BPF_F_MMAPABLE);
	__uint(max_entries, DSR_MAGLEV_SIZE);
	__type(key, __u32);
	// u64, not u32: the kernel strides mmapable array values by 8 bytes,
	// and user space writes the table through the mapping.
	__type(value, __u64);
} dsr_maglev SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(map_flags, BPF_F_MMAPABLE);
	__uint(max_entries, DSR_CNT_LEN);
	__type(key, __u32);
	__type(value, __u64);
} dsr_lb_counters SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 65536);
	__type(key, struct dsr_flow_key);
	__type(value, __u32);
} dsr_flows SEC(".maps");

// What the balancer does with a frame; each entry point maps it to its
// own return codes (tc: TC_ACT_OK, TC_ACT_SHOT, bpf_redirect to the same
// interface; XDP: XDP_PASS, XDP_DROP, XDP_TX).
enum dsr_verdict {
	DSR_PASS,
	DSR_DROP,
	DSR_FORWARD,
};

static __always_inline void count(__u32 idx)
{
	__u64 *c = bpf_map_lookup_elem(&dsr_lb_counters, &idx);
	if (c)
		__sync_fetch_and_add(c, 1);
}

static __always_inline __u32 mix(__u32 h)
{
	h ^= h >> 16;
	h *= 0x7feb352d;
	h ^= h >> 15;
	h *= 0x846ca68b;
	h ^= h >> 16;
	return h;
}

static __always_inline __u32 flow_hash(const struct dsr_flow_key *k)
{
	__u32 h = mix(k->saddr ^ 0x9e3779b9);
	h = mix(h ^ k->daddr);
	h = mix(h ^ (((__u32)k->sport << 16) | k->dport));
	return h;
}

static __always_inline int maglev(__u32 hash, __u32 *server)
{
	__u32 slot = hash % DSR_MAGLEV_SIZE;
	__u64 *s = bpf_map_lookup_elem(&dsr_maglev, &slot);
	if (!s)
		return -1;
	*server = (__u32)READ_ONCE(*s);
	return 0;
}

// Load per eligible worker, in 1/256 requests; a host without eligible
// workers ranks last.
static __always_inline __u64 score(struct dsr_server *s)
{
	__u64 load = (__u64)READ_ONCE(s->load) + READ_ONCE(s->recent);
	__u32 eligible = READ_ONCE(s->eligible);
	if (eligible == 0)
		return ~0ULL;
	return (load << 8) / eligible;
}

// One pass over the servers (run by bpf_loop, so the verifier checks the
// body once): counts the fresh servers and keeps the two with the lowest
// random priority, a uniform draw of two distinct fresh servers.
struct scan_ctx {
	__u64 now;
	__u64 max_stale;
	__u32 rnd;
	__u32 fresh;
	__u32 first;
	__u32 second;
	__u32 first_prio;
	__u32 second_prio;
};

static long scan_server(__u64 i, void *data)
{
	struct scan_ctx *c = data;
	__u32 key = i;
	struct dsr_server *s = bpf_map_lookup_elem(&dsr_servers, &key);
	if (!s)
		return 1;
	__u64 t = READ_ONCE(s->updated_ns);
	if (t == 0)
		return 0;
	if (c->max_stale && c->now > t && c->now - t > c->max_stale)
		return 0;
	c->fresh++;
	__u32 prio = mix(c->rnd ^ (key * 0x9e3779b9u));
	if (prio < c->first_prio) {
		c->second = c->first;
		c->second_prio = c->first_prio;
		c->first = key;
		c->first_prio = prio;
	} else if (prio < c->second_prio) {
		c->second = key;
		c->second_prio = prio;
	}
	return 0;
}

// Picks a server for a new flow. Returns 0 and sets *server, or -1.
static __always_inline int pick(struct dsr_lb_config *cfg, __u32 hash, __u32 *server)
{
	__u32 n = READ_ONCE(cfg->servers);
	if (n == 0 || n > DSR_MAX_SERVERS)
		return -1;
	if (READ_ONCE(cfg->policy) == DSR_POLICY_HASH) {
		count(DSR_CNT_HASHED);
		return maglev(hash, server);
	}
	struct scan_ctx c = {
		.now = bpf_ktime_get_ns(),
		.max_stale = READ_ONCE(cfg->max_stale_ns),
		.rnd = bpf_get_prandom_u32(),
		.first_prio = ~0u,
		.second_prio = ~0u,
	};
	bpf_loop(n, scan_server, &c, 0);
	if (c.fresh == 0) {
		count(DSR_CNT_FALLBACK_STALE);
		return maglev(hash, server);
	}
	if (c.fresh < n)
		count(DSR_CNT_DRAINED);
	if (c.fresh == 1) {
		*server = c.first;
		return 0;
	}
	__u32 ka = c.first, kb = c.second;
	struct dsr_server *sa = bpf_map_lookup_elem(&dsr_servers, &ka);
	struct dsr_server *sb = bpf_map_lookup_elem(&dsr_servers, &kb);
	if (!sa || !sb)
		return -1;
	*server = score(sb) < score(sa) ? kb : ka;
	return 0;
}

// A metric from a host: the frame's source MAC names the server.
static __always_inline enum dsr_verdict learn(struct ethhdr *eth, __u8 *opt, void *data_end)
{
	if ((void *)(opt + DSR_OPT_LEN) > data_end)
		return DSR_PASS;
	if (opt[1] != DSR_OPT_LEN)
		return DSR_PASS;
	__u64 mac = 0;
	__builtin_memcpy(&mac, eth->h_source, ETH_ALEN);
	__u32 zero = 0;
	struct dsr_lb_config *cfg = bpf_map_lookup_elem(&dsr_lb_cfg, &zero);
	if (!cfg)
		return DSR_PASS;
	__u32 n = READ_ONCE(cfg->servers);
	for (__u32 i = 0; i < DSR_MAX_SERVERS; i++) {
		if (i >= n)
			break;
		__u32 key = i;
		struct dsr_server *s = bpf_map_lookup_elem(&dsr_servers, &key);
		if (!s || READ_ONCE(s->mac) != mac)
			continue;
		__u32 load = ((__u32)opt[4] << 24) | ((__u32)opt[5] << 16) | ((__u32)opt[6] << 8) | opt[7];
		WRITE_ONCE(s->load, load);
		WRITE_ONCE(s->eligible, (__u32)opt[2]);
		WRITE_ONCE(s->recent, 0);
		WRITE_ONCE(s->updated_ns, bpf_ktime_get_ns());
		__sync_fetch_and_add(&s->feedbacks, 1);
		count(DSR_CNT_FEEDBACK);
		return DSR_DROP;
	}
	count(DSR_CNT_FEEDBACK_UNKNOWN);
	return DSR_DROP;
}

static __always_inline enum dsr_verdict balance(void *data, void *data_end)
{
	struct ethhdr *eth = data;
	if ((void *)(eth + 1) > data_end || eth->h_proto != bpf_htons(ETH_P_IP))
		return DSR_PASS;
	struct iphdr *ip = (void *)(eth + 1);
	if ((void *)(ip + 1) > data_end)
		return DSR_PASS;
	__u32 ihl = ip->ihl & 0xF;
	if (ihl < 5)
		return DSR_PASS;
	if (ihl >= 7) {
		__u8 *opt = (void *)(ip + 1);
		if ((void *)(opt + 1) <= data_end && opt[0] == DSR_OPT_TYPE)
			return learn(eth, opt, data_end);
	}
	__u32 zero = 0;
	struct dsr_lb_config *cfg = bpf_map_lookup_elem(&dsr_lb_cfg, &zero);
	if (!cfg)
		return DSR_PASS;
	__u32 vip = READ_ONCE(cfg->vip);
	if (ip->saddr == vip && vip != 0)
		count(DSR_CNT_REPLY_SEEN);
	if (ip->daddr != vip || vip == 0 || ip->protocol != IPPROTO_TCP) {
		count(DSR_CNT_PASSED);
		return DSR_PASS;
	}
	struct tcphdr *tcp = (void *)ip + ihl * 4;
	if ((void *)(tcp + 1) > data_end)
		return DSR_PASS;
	__u32 port = READ_ONCE(cfg->port);
	if (port && bpf_ntohs(tcp->dest) != port) {
		count(DSR_CNT_PASSED);
		return DSR_PASS;
	}
	struct dsr_flow_key key = {
		.saddr = ip->saddr,
		.daddr = ip->daddr,
		.sport = tcp->source,
		.dport = tcp->dest,
		.proto = IPPROTO_TCP,
	};
	__u32 server;
	// A SYN always gets a new placement: it opens a new connection, also
	// when the client reuses a port whose previous connection is still in
	// the map (a retransmitted SYN never had its SYN-ACK, so moving it is safe).
	__u32 *known = tcp->syn && !tcp->ack ? NULL : bpf_map_lookup_elem(&dsr_flows, &key);
	if (known) {
		server = *known;
	} else {
		__u32 hash = flow_hash(&key);
		if (tcp->syn && !tcp->ack) {
			if (pick(cfg, hash, &server) < 0)
				return DSR_DROP;
			count(DSR_CNT_NEW_FLOWS);
		} else {
			// A flow the map forgot (evicted, or the balancer restarted):
			// Maglev keeps it where hashing would have put it.
			count(DSR_CNT_NO_FLOW);
			if (maglev(hash, &server) < 0)
				return DSR_DROP;
		}
		bpf_map_update_elem(&dsr_flows, &key, &server, BPF_ANY);
	}
	__u32 skey = server;
	struct dsr_server *s = bpf_map_lookup_elem(&dsr_servers, &skey);
	if (!s)
		return DSR_DROP;
	if (!known) {
		if (tcp->syn && !tcp->ack) {
			__sync_fetch_and_add(&s->new_flows, 1);
			__sync_fetch_and_add(&s->recent, 1);
		}
	}
	__sync_fetch_and_add(&s->packets, 1);
	__u64 dst = READ_ONCE(s->mac);
	__u64 src = READ_ONCE(cfg->own_mac);
	// `eth` is still within bounds: nothing above changed the packet.
	__builtin_memcpy(eth->h_dest, &dst, ETH_ALEN);
	__builtin_memcpy(eth->h_source, &src, ETH_ALEN);
	count(DSR_CNT_FORWARDED);
	return DSR_FORWARD;
}

SEC("classifier")
int dsr_balance(struct __sk_buff *skb)
{
	switch (balance((void *)(long)skb->data, (void *)(long)skb->data_end)) {
	case DSR_FORWARD:
		// Out of the interface it came in on.
		return bpf_redirect(skb->ifindex, 0);
	case DSR_DROP:
		return TC_ACT_SHOT;
	default:
		return TC_ACT_OK;
	}
}

// The same at XDP: forwarded frames leave with XDP_TX. On a veth, frames
// sent with XDP_TX are received by the peer only if the peer runs an XDP
// program too (`dsr_xdp_pass` below, for a bridge port).
SEC("xdp")
int dsr_balance_xdp(struct xdp_md *ctx)
{
	switch (balance((void *)(long)ctx->data, (void *)(long)ctx->data_end)) {
	case DSR_FORWARD:
		return XDP_TX;
	case DSR_DROP:
		return XDP_DROP;
	default:
		return XDP_PASS;
	}
}

// Passes every frame: attached to the peer of a veth whose other end runs
// `dsr_balance_xdp`, it lets that peer receive XDP_TX frames.
SEC("xdp")
int dsr_xdp_pass(struct xdp_md *ctx)
{
	return XDP_PASS;
}


char _license[] SEC("license") = "GPL";
