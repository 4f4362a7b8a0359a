// SPDX-License-Identifier: (MIT OR Apache-2.0) AND GPL-2.0
//
// hermes-dsr balancer: tc ingress (`dsr_balance`) or XDP (`dsr_balance_xdp`)
// on the balancer's interface, the same logic behind both. Packets for the
// VIP are forwarded at L2 to a server (destination MAC rewritten, source MAC
// set to the balancer's own so that the switch keeps learning the client
// where it is), out of the same interface; servers answer the client directly.
//
// A SYN goes to the less loaded of the flow's Maglev server and another fresh
// server drawn at random (load learned in band; ties go to the Maglev server);
// stale servers are drained; Maglev alone places it when every metric is stale
// (counted). The choice waits in dsr_syns until the client's next packet moves
// it to dsr_flows (LRU on the 5-tuple), so a SYN flood churns only dsr_syns. A
// packet neither map knows (evicted, or placed by another balancer) goes to its
// Maglev server whatever the load and leaves no state. A first fragment is
// remembered (dsr_frags) for the later ones, which carry no TCP header. Frames
// with the load option are metrics: learned when addressed to the balancer,
// over TCP or UDP, from a server's MAC with its token; dropped either way.
// Rebuild the committed object with `cargo xtask bpf`.

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

// SYNs placed, until the client's next packet confirms the connection.
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 65536);
	__type(key, struct dsr_flow_key);
	__type(value, __u32);
} dsr_syns SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 8192);
	__type(key, struct dsr_frag_key);
	__type(value, __u32);
} dsr_frags SEC(".maps");

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
// body once): counts the fresh servers, notes whether the flow's Maglev
// server is one of them, and keeps the two others with the lowest random
// priority, a uniform draw of two distinct fresh servers.
struct scan_ctx {
	__u64 now;
	__u64 max_stale;
	__u32 rnd;
	__u32 owner;
	__u32 owner_fresh;
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
	if (key == c->owner) {
		c->owner_fresh = 1;
		return 0;
	}
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

// The less loaded of servers `ka` and `kb`; `ka` on a tie. -1 if one is missing.
static __always_inline int less_loaded(__u32 ka, __u32 kb, __u32 *server)
{
	struct dsr_server *sa = bpf_map_lookup_elem(&dsr_servers, &ka);
	struct dsr_server *sb = bpf_map_lookup_elem(&dsr_servers, &kb);
	if (!sa || !sb)
		return -1;
	*server = score(sb) < score(sa) ? kb : ka;
	return 0;
}

// Picks a server for a new flow whose Maglev server is `owner`. Returns 0
// and sets *server, or -1.
static __always_inline int pick(struct dsr_lb_config *cfg, __u32 owner, __u32 *server)
{
	__u32 n = READ_ONCE(cfg->servers);
	if (n == 0 || n > DSR_MAX_SERVERS)
		return -1;
	if (READ_ONCE(cfg->policy) == DSR_POLICY_HASH) {
		count(DSR_CNT_HASHED);
		*server = owner;
		return 0;
	}
	struct scan_ctx c = {
		.now = bpf_ktime_get_ns(),
		.max_stale = READ_ONCE(cfg->max_stale_ns),
		.rnd = bpf_get_prandom_u32(),
		.owner = owner,
		.first_prio = ~0u,
		.second_prio = ~0u,
	};
	bpf_loop(n, scan_server, &c, 0);
	if (c.fresh == 0) {
		count(DSR_CNT_FALLBACK_STALE);
		*server = owner;
		return 0;
	}
	if (c.fresh < n)
		count(DSR_CNT_DRAINED);
	if (c.fresh == 1) {
		*server = c.owner_fresh ? owner : c.first;
		return 0;
	}
	// Two choices, the Maglev server first when it is fresh: it wins ties,
	// so that as many flows as load allows can be found again without state.
	return c.owner_fresh ? less_loaded(owner, c.first, server) : less_loaded(c.first, c.second, server);
}

// A metric from a host, in a frame whose first IPv4 option is ours. It is
// learned only when the frame is addressed to the balancer's MAC, carried by
// TCP or UDP (a copy of a host's packet, or its keepalive), well formed, and
// from a server's MAC with that server's token; the frame is dropped either way.
static __always_inline enum dsr_verdict learn(struct dsr_lb_config *cfg, struct ethhdr *eth,
					      struct iphdr *ip, __u8 *opt, void *data_end)
{
	__u64 dst = 0, mac = 0, token = 0;
	__builtin_memcpy(&dst, eth->h_dest, ETH_ALEN);
	if ((void *)(opt + DSR_OPT_LEN) > data_end || opt[1] != DSR_OPT_LEN ||
	    (ip->ihl & 0xF) < 5 + DSR_OPT_LEN / 4 || dst != READ_ONCE(cfg->own_mac) ||
	    (ip->protocol != IPPROTO_TCP && ip->protocol != IPPROTO_UDP)) {
		count(DSR_CNT_FEEDBACK_REJECTED);
		return DSR_DROP;
	}
	__builtin_memcpy(&mac, eth->h_source, ETH_ALEN);
	__builtin_memcpy(&token, opt + 8, sizeof(token));
	__u32 n = READ_ONCE(cfg->servers);
	for (__u32 i = 0; i < DSR_MAX_SERVERS; i++) {
		if (i >= n)
			break;
		__u32 key = i;
		struct dsr_server *s = bpf_map_lookup_elem(&dsr_servers, &key);
		if (!s || READ_ONCE(s->mac) != mac)
			continue;
		if (token != READ_ONCE(s->token)) {
			count(DSR_CNT_FEEDBACK_REJECTED);
			return DSR_DROP;
		}
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

// Sends the frame to `server`: its MAC as destination, the balancer's as source.
static __always_inline enum dsr_verdict forward(struct dsr_lb_config *cfg, struct ethhdr *eth,
						__u32 server, int new_flow)
{
	__u32 skey = server;
	struct dsr_server *s = bpf_map_lookup_elem(&dsr_servers, &skey);
	if (!s)
		return DSR_DROP;
	if (new_flow) {
		__sync_fetch_and_add(&s->new_flows, 1);
		__sync_fetch_and_add(&s->recent, 1);
	}
	__sync_fetch_and_add(&s->packets, 1);
	__u64 dst = READ_ONCE(s->mac);
	__u64 src = READ_ONCE(cfg->own_mac);
	// `eth` is still within bounds: nothing before changed the packet.
	__builtin_memcpy(eth->h_dest, &dst, ETH_ALEN);
	__builtin_memcpy(eth->h_source, &src, ETH_ALEN);
	count(DSR_CNT_FORWARDED);
	return DSR_FORWARD;
}

// The server of a TCP packet for the VIP. A SYN is placed by policy and
// kept in dsr_syns; the client's next packet moves it to dsr_flows; a
// packet neither map knows goes to its Maglev server and is not recorded.
// Returns 0 and sets *server (and *new_flow for a SYN), or -1.
static __always_inline int server_of(struct dsr_lb_config *cfg, struct dsr_flow_key *key, int syn,
				     __u32 *server, int *new_flow)
{
	if (!syn) {
		__u32 *known = bpf_map_lookup_elem(&dsr_flows, key);
		if (known) {
			*server = *known;
			return 0;
		}
		known = bpf_map_lookup_elem(&dsr_syns, key);
		if (known) {
			*server = *known;
			bpf_map_update_elem(&dsr_flows, key, server, BPF_ANY);
			bpf_map_delete_elem(&dsr_syns, key);
			count(DSR_CNT_PROMOTED);
			return 0;
		}
	}
	__u32 owner;
	if (maglev(flow_hash(key), &owner) < 0)
		return -1;
	if (!syn) {
		// Evicted, or placed by another balancer: Maglev, whatever the load.
		count(DSR_CNT_NO_FLOW);
		*server = owner;
		return 0;
	}
	// A SYN always gets a new placement: it opens a new connection, also
	// when the client reuses a port whose previous connection is still in
	// a map (a retransmitted SYN never had its SYN-ACK, so moving it is safe).
	if (pick(cfg, owner, server) < 0)
		return -1;
	bpf_map_update_elem(&dsr_syns, key, server, BPF_ANY);
	bpf_map_delete_elem(&dsr_flows, key);
	count(DSR_CNT_NEW_FLOWS);
	if (*server == owner)
		count(DSR_CNT_RECOVERABLE);
	*new_flow = 1;
	return 0;
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
	__u32 zero = 0;
	struct dsr_lb_config *cfg = bpf_map_lookup_elem(&dsr_lb_cfg, &zero);
	if (!cfg)
		return DSR_PASS;
	if (ihl > 5) {
		__u8 *opt = (void *)(ip + 1);
		if ((void *)(opt + 2) <= data_end && opt[0] == DSR_OPT_TYPE)
			return learn(cfg, eth, ip, opt, data_end);
	}
	__u32 vip = READ_ONCE(cfg->vip);
	if (ip->saddr == vip && vip != 0)
		count(DSR_CNT_REPLY_SEEN);
	if (ip->daddr != vip || vip == 0 || ip->protocol != IPPROTO_TCP) {
		count(DSR_CNT_PASSED);
		return DSR_PASS;
	}
	__u32 port = READ_ONCE(cfg->port);
	__u16 frag = bpf_ntohs(ip->frag_off);
	struct dsr_frag_key fkey = {
		.saddr = ip->saddr,
		.daddr = ip->daddr,
		.id = ip->id,
		.proto = IPPROTO_TCP,
	};
	if (frag & DSR_IP_OFFSET) {
		// Not the first fragment: no TCP header, only payload bytes.
		__u32 *first = bpf_map_lookup_elem(&dsr_frags, &fkey);
		if (!first) {
			count(DSR_CNT_FRAGMENTS_UNMATCHED);
			return port ? DSR_PASS : DSR_DROP;
		}
		count(DSR_CNT_FRAGMENTS);
		return forward(cfg, eth, *first, 0);
	}
	struct tcphdr *tcp = (void *)ip + ihl * 4;
	if ((void *)(tcp + 1) > data_end)
		return DSR_PASS;
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
	int new_flow = 0;
	if (server_of(cfg, &key, tcp->syn && !tcp->ack, &server, &new_flow) < 0)
		return DSR_DROP;
	if (frag & DSR_IP_MF)
		bpf_map_update_elem(&dsr_frags, &fkey, &server, BPF_ANY);
	return forward(cfg, eth, server, new_flow);
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
