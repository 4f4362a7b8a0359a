// SPDX-License-Identifier: (MIT OR Apache-2.0) AND GPL-2.0
//
// Hermes dispatch: picks a worker for each new connection of a SO_REUSEPORT
// group from the candidate bitmap that userspace publishes, and migrates the
// queued connections of a closing listener to an eligible worker.
//
// Every layout below is mirrored by a `#[repr(C)]` type in
// `hermes-bpf/src/layout.rs`; a test checks both against this object.
// Rebuild the committed object with `cargo xtask bpf`.

#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>

#define MAX_WORKERS 64

// One load the compiler may not split, merge or repeat.
#define READ_ONCE(x) (*(volatile typeof(x) *)&(x))

// Fine-filter policies (`hermes_ctl.policy`).
#define POLICY_TWO_CHOICES 0 // less loaded of two candidates drawn from the hash
#define POLICY_HASH 1        // one candidate drawn from the hash

// Indexes into the counters map after the per-worker dispatch counts.
#define CNT_FALLBACK_TOO_FEW (MAX_WORKERS + 0)
#define CNT_FALLBACK_STALE (MAX_WORKERS + 1)
#define CNT_FALLBACK_NO_SOCKET (MAX_WORKERS + 2)
#define CNT_MIGRATED (MAX_WORKERS + 3) // queued connections of a closing listener, however placed
#define CNT_RUNS (MAX_WORKERS + 4)
// Per worker: connections placed since userspace last sampled the worker's
// accept queue (userspace stores 0 with each sample). Added to the load, it
// lets the fine filter see its own placements within a tick.
#define CNT_RECENT (MAX_WORKERS + 8)
#define CNT_LEN (2 * MAX_WORKERS + 8)

// Settings and the candidate bitmap. Userspace writes each field with a
// single atomic store through the mmap; the program reads each field once.
// Fields may be read from different publishes: a torn read costs at most one
// connection dispatched by a slightly older decision, which the paper's design
// tolerates ("minor, transient inconsistencies").
struct hermes_ctl {
	__u64 bitmap;        // bit i set: worker i may take new connections
	__u64 published_ns;  // bpf_ktime_get_ns() (CLOCK_MONOTONIC) of the publish; 0 = never
	__u64 max_stale_ns;  // older bitmaps fall back to the kernel hash; 0 = no limit
	__u64 publisher;     // worker id + 1 of the last publisher (userspace bookkeeping)
	__u32 min_candidates;// fewer set bits fall back to the kernel hash
	__u32 policy;        // POLICY_*
	__u64 _reserved[3];  // userspace only: publish lock, layout version, owner (layout.rs)
};

// Two cache lines per worker, written only by that worker (the first one is
// what the program reads).
struct hermes_worker_state {
	__u64 heartbeat_ns;  // CLOCK_MONOTONIC of the worker's last loop turn
	__u64 busy_ns;       // total time the worker's runtime was not parked
	__u64 accepted;      // connections accepted in total
	__u64 requests;      // requests completed in total
	__u32 open_conns;    // connections open now
	__u32 in_flight;     // requests being served now
	__u32 accept_queue;  // listener accept-queue length at the last sample
	__u32 state;         // 0 empty, 1 starting, 2 serving, 3 draining
	__u64 service_ns;    // total time spent serving completed requests
	__u32 expected_us;   // learned thread time of the requests in flight, microseconds
	__u32 util_permille; // share of the last ticks the worker's thread was busy, per mille
	__u64 run_delay_ns;  // total time the worker's thread was runnable, waiting for a CPU
	__u32 stall_permille;// share of the last ticks the worker's thread waited for a CPU, per mille
	__u32 _pad;
	__u64 _reserved[6];  // the rest of the second cache line
};

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(map_flags, BPF_F_MMAPABLE);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct hermes_ctl);
} hermes_ctl SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(map_flags, BPF_F_MMAPABLE);
	__uint(max_entries, MAX_WORKERS);
	__type(key, __u32);
	__type(value, struct hermes_worker_state);
} hermes_wst SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(map_flags, BPF_F_MMAPABLE);
	__uint(max_entries, CNT_LEN);
	__type(key, __u32);
	__type(value, __u64);
} hermes_counters SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_REUSEPORT_SOCKARRAY);
	__uint(max_entries, MAX_WORKERS);
	__type(key, __u32);
	__type(value, __u32);
} hermes_sockets SEC(".maps");

static __always_inline void count(__u32 idx)
{
	__u64 *c = bpf_map_lookup_elem(&hermes_counters, &idx);
	if (c)
		__sync_fetch_and_add(c, 1);
}

static __always_inline __u32 popcount64(__u64 x)
{
	x = x - ((x >> 1) & 0x5555555555555555ULL);
	x = (x & 0x3333333333333333ULL) + ((x >> 2) & 0x3333333333333333ULL);
	x = (x + (x >> 4)) & 0x0f0f0f0f0f0f0f0fULL;
	return (__u32)((x * 0x0101010101010101ULL) >> 56);
}

// Index of the n-th (0-based) set bit of x; x has more than n set bits.
// Loop-free binary search on popcounts, so the verifier sees six steps.
static __always_inline __u32 nth_set_bit(__u64 x, __u32 n)
{
	__u32 pos = 0, c;

	c = popcount64(x & 0xffffffffULL);
	if (n >= c) { n -= c; pos += 32; x >>= 32; }
	c = popcount64(x & 0xffffULL);
	if (n >= c) { n -= c; pos += 16; x >>= 16; }
	c = popcount64(x & 0xffULL);
	if (n >= c) { n -= c; pos += 8; x >>= 8; }
	c = popcount64(x & 0xfULL);
	if (n >= c) { n -= c; pos += 4; x >>= 4; }
	c = popcount64(x & 0x3ULL);
	if (n >= c) { n -= c; pos += 2; x >>= 2; }
	c = (__u32)(x & 1);
	if (n >= c) { pos += 1; }
	return pos & (MAX_WORKERS - 1);
}

static __always_inline __u64 load_of(__u32 worker)
{
	__u32 idx = CNT_RECENT + (worker & (MAX_WORKERS - 1));
	struct hermes_worker_state *w = bpf_map_lookup_elem(&hermes_wst, &worker);
	__u64 *recent = bpf_map_lookup_elem(&hermes_counters, &idx);
	if (!w || !recent)
		return ~0ULL;
	// Single reads of fields each worker stores atomically. Expected work
	// and utilisation count as connections (about one per millisecond of
	// work in flight, up to eight for a worker busy all the time), so a
	// worker holding heavy requests stops looking light.
	return (__u64)READ_ONCE(w->open_conns) + READ_ONCE(w->in_flight) +
	       READ_ONCE(w->accept_queue) + READ_ONCE(*recent) +
	       (READ_ONCE(w->expected_us) >> 10) + (READ_ONCE(w->util_permille) >> 7);
}

static __always_inline int try_select(struct sk_reuseport_md *ctx, __u32 worker)
{
	return bpf_sk_select_reuseport(ctx, &hermes_sockets, &worker, 0);
}

SEC("sk_reuseport/migrate")
int hermes_dispatch(struct sk_reuseport_md *ctx)
{
	__u32 zero = 0;
	struct hermes_ctl *ctl = bpf_map_lookup_elem(&hermes_ctl, &zero);
	__u64 bitmap, published, max_stale, now;
	__u32 n, min, first, second, hash, pick, other;

	count(CNT_RUNS);
	if (ctx->migrating_sk)
		count(CNT_MIGRATED);
	if (!ctl)
		return SK_PASS;

	bitmap = READ_ONCE(ctl->bitmap);
	published = READ_ONCE(ctl->published_ns);
	max_stale = READ_ONCE(ctl->max_stale_ns);
	min = READ_ONCE(ctl->min_candidates);

	now = bpf_ktime_get_ns();
	if (published == 0 || (max_stale && now - published > max_stale)) {
		count(CNT_FALLBACK_STALE);
		return SK_PASS;
	}
	n = popcount64(bitmap);
	if (n == 0 || n < min) {
		count(CNT_FALLBACK_TOO_FEW);
		return SK_PASS;
	}

	hash = ctx->hash;
	first = nth_set_bit(bitmap, hash % n);
	if (n == 1) {
		second = first;
	} else {
		// A second candidate, distinct from the first.
		__u32 i = hash % n;
		__u32 j = (i + 1 + (hash >> 16) % (n - 1)) % n;
		second = nth_set_bit(bitmap, j);
	}

	pick = first;
	other = second;
	if (READ_ONCE(ctl->policy) == POLICY_TWO_CHOICES && load_of(second) < load_of(first)) {
		pick = second;
		other = first;
	}

	// A listener that is closing has already left the socket array, so a
	// failed select means "not this one": try the other candidate, then
	// leave the choice to the kernel's hash over the remaining listeners.
	if (try_select(ctx, pick) == 0 || (other != pick && try_select(ctx, (pick = other)) == 0)) {
		count(pick);
		count(CNT_RECENT + pick);
		return SK_PASS;
	}
	count(CNT_FALLBACK_NO_SOCKET);
	return SK_PASS;
}

char _license[] SEC("license") = "GPL";

// The floor of the kernel cost bench (`cargo bench -p hermes-bpf --bench
// kernel_cost`): one bpf_sk_select_reuseport call on a slot drawn from the
// hash, nothing else. The runtime never loads it; the bench compares
// hermes_dispatch against it in the same run.
SEC("sk_reuseport/migrate")
int hermes_select_floor(struct sk_reuseport_md *ctx)
{
	__u32 slot = ctx->hash & 3;

	bpf_sk_select_reuseport(ctx, &hermes_sockets, &slot, 0);
	return SK_PASS;
}
