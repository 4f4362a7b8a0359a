// SPDX-License-Identifier: (MIT OR Apache-2.0) AND GPL-2.0
//
// hermes-dsr host feedback: tc egress on each server host's interface. At
// most once per interval, an outgoing IPv4 TCP packet (one the host sends
// anyway, typically a reply going straight to a client) is copied to the
// balancer with the host's load and its token in an IPv4 option (type 0x9E,
// RFC 4727 experimental): the option is inserted, the destination MAC set to the
// balancer's, the packet cloned out of the same interface, and the original
// restored byte for byte before it continues to the client. Replies bypass
// the balancer, so the copy is how the metric reaches it; clients never
// receive the option. The load comes from the map dsr_host_load, which the
// agent in the Hermes server stores from its Worker State Table. A packet
// with no room for the option (one that fills the MTU) is passed over and
// the interval stays open for the next one: the interval is spent, and the
// time of the last metric written, only when a copy left.
//
// A host that sends nothing (idle) has no packet to carry its metric: its
// agent then sends a one-byte UDP keepalive to the balancer, and the option
// goes in that datagram itself (no copy). Without a fresh load, or when
// disabled, keepalives are dropped here, so the balancer drains the host.
// Rebuild the committed object with `cargo xtask bpf`.

#include "dsr.h"

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(map_flags, BPF_F_MMAPABLE);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct dsr_host_config);
} dsr_host_cfg SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(map_flags, BPF_F_MMAPABLE);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct dsr_host_load);
} dsr_host_load SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(map_flags, BPF_F_MMAPABLE);
	__uint(max_entries, DSR_HCNT_LEN);
	__type(key, __u32);
	__type(value, __u64);
} dsr_host_counters SEC(".maps");

static __always_inline __u64 *counter(__u32 idx)
{
	return bpf_map_lookup_elem(&dsr_host_counters, &idx);
}

static __always_inline void count(__u32 idx, __u64 n)
{
	__u64 *c = counter(idx);
	if (c)
		__sync_fetch_and_add(c, n);
}

// IPv4 header with the load option: 20 + 16 bytes.
struct ip_with_opt {
	struct iphdr ip;
	__u8 opt[DSR_OPT_LEN];
};

static __always_inline __u16 ip_checksum(const void *hdr)
{
	const __u16 *w = hdr;
	__u32 sum = 0;
	for (int i = 0; i < (int)(sizeof(struct ip_with_opt) / 2); i++)
		sum += w[i];
	sum = (sum & 0xFFFF) + (sum >> 16);
	sum = (sum & 0xFFFF) + (sum >> 16);
	return (__u16)~sum;
}

// The header of a metric: `ip` with the load option, checksummed.
static __always_inline void metric_header(struct ip_with_opt *fb, const struct iphdr *ip,
					  struct dsr_host_config *cfg, struct dsr_host_load *hl)
{
	__builtin_memset(fb, 0, sizeof(*fb));
	fb->ip = *ip;
	fb->ip.ihl = 5 + DSR_OPT_LEN / 4;
	fb->ip.tot_len = bpf_htons(bpf_ntohs(ip->tot_len) + DSR_OPT_LEN);
	fb->ip.check = 0;
	__u32 load = READ_ONCE(hl->load);
	__u32 eligible = READ_ONCE(hl->eligible);
	__u32 workers = READ_ONCE(hl->workers);
	fb->opt[0] = DSR_OPT_TYPE;
	fb->opt[1] = DSR_OPT_LEN;
	fb->opt[2] = eligible > 255 ? 255 : eligible;
	fb->opt[3] = workers > 255 ? 255 : workers;
	fb->opt[4] = load >> 24;
	fb->opt[5] = load >> 16;
	fb->opt[6] = load >> 8;
	fb->opt[7] = load;
	__u64 token = READ_ONCE(cfg->token);
	__builtin_memcpy(&fb->opt[8], &token, sizeof(token));
	fb->ip.check = ip_checksum(fb);
}

static __always_inline int fresh_load(struct dsr_host_config *cfg, struct dsr_host_load *hl, __u64 now)
{
	__u64 updated = READ_ONCE(hl->updated_ns);
	__u64 max_age = READ_ONCE(cfg->max_age_ns);
	return updated != 0 && !(max_age && now > updated && now - updated > max_age);
}

// The agent's keepalive (UDP to the keepalive port, never a fragment): the
// metric goes in the datagram itself. Other UDP passes untouched.
static __always_inline int keepalive(struct __sk_buff *skb, struct dsr_host_config *cfg,
				     struct dsr_host_load *hl, __u64 *last)
{
	void *data = (void *)(long)skb->data;
	void *data_end = (void *)(long)skb->data_end;
	struct ethhdr *eth = data;
	struct iphdr *ip = (void *)(eth + 1);
	if ((void *)(ip + 1) > data_end || (ip->ihl & 0xF) != 5 ||
	    (bpf_ntohs(ip->frag_off) & (DSR_IP_MF | DSR_IP_OFFSET)))
		return TC_ACT_OK;
	struct udphdr *udp = (void *)(ip + 1);
	if ((void *)(udp + 1) > data_end)
		return TC_ACT_OK;
	__u32 port = READ_ONCE(cfg->keepalive_port);
	if (port == 0 || bpf_ntohs(udp->dest) != port)
		return TC_ACT_OK;
	__u64 now = bpf_ktime_get_ns();
	if (!READ_ONCE(cfg->enabled) || !fresh_load(cfg, hl, now)) {
		count(DSR_HCNT_STALE, 1);
		return TC_ACT_SHOT;
	}
	struct iphdr ip_orig = *ip;
	__u64 lb_mac = READ_ONCE(cfg->lb_mac);
	struct ip_with_opt fb;
	metric_header(&fb, &ip_orig, cfg, hl);
	__u32 len = skb->len;
	if (bpf_skb_adjust_room(skb, DSR_OPT_LEN, BPF_ADJ_ROOM_NET, 0) != 0 ||
	    bpf_skb_store_bytes(skb, 0, &lb_mac, ETH_ALEN, 0) != 0 ||
	    bpf_skb_store_bytes(skb, sizeof(struct ethhdr), &fb, sizeof(fb), 0) != 0) {
		count(DSR_HCNT_ERRORS, 1);
		return TC_ACT_SHOT;
	}
	WRITE_ONCE(*last, now);
	count(DSR_HCNT_SENT, 1);
	count(DSR_HCNT_KEEPALIVES, 1);
	count(DSR_HCNT_BYTES, len + DSR_OPT_LEN);
	return TC_ACT_OK;
}

SEC("classifier")
int dsr_feedback(struct __sk_buff *skb)
{
	if (skb->protocol != bpf_htons(ETH_P_IP))
		return TC_ACT_OK;
	void *data = (void *)(long)skb->data;
	void *data_end = (void *)(long)skb->data_end;
	struct ethhdr *eth = data;
	struct iphdr *ip = (void *)(eth + 1);
	if ((void *)(ip + 1) > data_end || eth->h_proto != bpf_htons(ETH_P_IP))
		return TC_ACT_OK;
	if (ip->protocol != IPPROTO_TCP && ip->protocol != IPPROTO_UDP)
		return TC_ACT_OK;
	__u32 zero = 0;
	struct dsr_host_config *cfg = bpf_map_lookup_elem(&dsr_host_cfg, &zero);
	struct dsr_host_load *hl = bpf_map_lookup_elem(&dsr_host_load, &zero);
	__u64 *last = counter(DSR_HCNT_LAST_NS);
	if (!cfg || !hl || !last)
		return TC_ACT_OK;
	if (ip->protocol == IPPROTO_UDP)
		return keepalive(skb, cfg, hl, last);
	// Our own copy on its way out (the clone passes this hook again).
	if ((ip->ihl & 0xF) != 5) {
		__u8 *opt = (void *)(ip + 1);
		if ((void *)(opt + 1) <= data_end && opt[0] == DSR_OPT_TYPE)
			return TC_ACT_OK;
	}
	count(DSR_HCNT_SEEN, 1);
	if (ip->saddr == READ_ONCE(cfg->vip))
		count(DSR_HCNT_REPLIES, 1);
	if (!READ_ONCE(cfg->enabled))
		return TC_ACT_OK;
	__u64 now = bpf_ktime_get_ns();
	__u64 prev = READ_ONCE(*last);
	if (now - prev < READ_ONCE(cfg->interval_ns))
		return TC_ACT_OK;
	if (!fresh_load(cfg, hl, now)) {
		count(DSR_HCNT_STALE, 1);
		return TC_ACT_OK;
	}
	if ((ip->ihl & 0xF) != 5 || skb->gso_segs > 1) {
		count(DSR_HCNT_SKIPPED, 1);
		return TC_ACT_OK;
	}
	// A packet that fills the MTU has no room for the option: the next
	// packet (or the agent's keepalive) carries the metric.
	__u32 mtu_len = 0;
	if (bpf_check_mtu(skb, 0, &mtu_len, DSR_OPT_LEN, 0) != BPF_MTU_CHK_RET_SUCCESS) {
		count(DSR_HCNT_TOO_BIG, 1);
		return TC_ACT_OK;
	}
	// One sender per interval: whoever swaps the time first. A sender that
	// fails gives the interval back (the time it swapped in is swapped out).
	if (__sync_val_compare_and_swap(last, prev, now) != prev)
		return TC_ACT_OK;

	struct ethhdr eth_orig;
	struct iphdr ip_orig;
	__builtin_memcpy(&eth_orig, eth, sizeof(eth_orig));
	__builtin_memcpy(&ip_orig, ip, sizeof(ip_orig));

	struct ethhdr eth_fb = eth_orig;
	__u64 lb_mac = READ_ONCE(cfg->lb_mac);
	__builtin_memcpy(eth_fb.h_dest, &lb_mac, ETH_ALEN);
	struct ip_with_opt fb;
	metric_header(&fb, &ip_orig, cfg, hl);

	__u32 len = skb->len;
	if (bpf_skb_adjust_room(skb, DSR_OPT_LEN, BPF_ADJ_ROOM_NET, 0) != 0) {
		__sync_val_compare_and_swap(last, now, prev);
		count(DSR_HCNT_ERRORS, 1);
		return TC_ACT_OK;
	}
	if (bpf_skb_store_bytes(skb, 0, &eth_fb, sizeof(eth_fb), 0) != 0 ||
	    bpf_skb_store_bytes(skb, sizeof(eth_fb), &fb, sizeof(fb), 0) != 0 ||
	    bpf_clone_redirect(skb, skb->ifindex, 0) != 0) {
		__sync_val_compare_and_swap(last, now, prev);
		count(DSR_HCNT_ERRORS, 1);
	} else {
		count(DSR_HCNT_SENT, 1);
		count(DSR_HCNT_BYTES, len + DSR_OPT_LEN);
	}
	// Restore the original: the option out, the headers back as they were.
	if (bpf_skb_adjust_room(skb, -DSR_OPT_LEN, BPF_ADJ_ROOM_NET, 0) != 0 ||
	    bpf_skb_store_bytes(skb, 0, &eth_orig, sizeof(eth_orig), 0) != 0 ||
	    bpf_skb_store_bytes(skb, sizeof(eth_orig), &ip_orig, sizeof(ip_orig), 0) != 0) {
		// Never send a half-restored packet: TCP retransmits it.
		count(DSR_HCNT_ERRORS, 1);
		return TC_ACT_SHOT;
	}
	return TC_ACT_OK;
}

char _license[] SEC("license") = "GPL";
