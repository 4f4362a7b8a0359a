// SPDX-License-Identifier: (MIT OR Apache-2.0) AND GPL-2.0
//
// Hermes dispatch: picks a worker for each new connection of a SO_REUSEPORT
// group from the list of eligible workers that userspace publishes, and
// migrates the queued connections of a closing listener to an eligible worker.
// Loop-free and O(1) at any number of workers.
//
// Every layout below is mirrored by a `#[repr(C)]` type in
// `hermes-bpf/src/layout.rs`; a test checks both against this object.
// Rebuild the committed object with `cargo xtask bpf`.

#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>

// One server's workers at most: the capacity of the list of eligible workers.
#define MAX_WORKERS 1024
// CPUs the locality table covers (CPU ids at or above it get no local candidate).
#define MAX_CPUS 1024
// The maps' sizes in the object, for a server of up to 32 workers; the loader
// sizes the table, the counters and the socket array for the server it loads
// them for (two slots per worker, so that an upgrade's successor fits beside).
#define DEFAULT_SLOTS 64

// One load the compiler may not split, merge or repeat.
#define READ_ONCE(x) (*(volatile typeof(x) *)&(x))
// Makes the compiler forget what it knows of `var`'s range, so that a mask
// the verifier needs (an index below a bound it cannot follow through `%`)
// is not optimised away.
#define FORGET_RANGE(var) asm volatile("" : "+r"(var))

// Fine-filter policies (`hermes_ctl.policy`).
#define POLICY_TWO_CHOICES 0 // less loaded of two candidates drawn from the hash
#define POLICY_HASH 1        // one candidate drawn from the hash

// The counters map: a fixed block, then two counters per slot.
#define CNT_FALLBACK_TOO_FEW 0
#define CNT_FALLBACK_STALE 1
#define CNT_FALLBACK_NO_SOCKET 2
#define CNT_MIGRATED 3 // queued connections of a closing listener, however placed
#define CNT_RUNS 4
#define CNT_LOCAL 5 // connections placed on the candidate of the receiving CPU
#define CNT_FIXED 8
// Per slot: new connections placed on it, and those placed since userspace
// last sampled the worker's accept queue (userspace takes back what it saw
// with each sample). Added to the load, the second lets the fine filter see
// its own placements within a tick.
#define CNT_DISPATCHED(slot) (CNT_FIXED + 2 * (slot))
#define CNT_RECENT(slot) (CNT_FIXED + 2 * (slot) + 1)

// The list of eligible workers, as one publish wrote it.
struct hermes_list {
	__u16 slots[MAX_WORKERS]; // the eligible workers' slots: the first `count`
	__u16 local[MAX_CPUS];    // per CPU: slot + 1 of an eligible worker on it, 0 = none
};

// Settings and the list of eligible workers. Userspace writes a list into
// the buffer the program does not read (`lists[generation & 1]` is in force),
// then the word `list` (count, CPUs covered, generation) and the publish time,
// each with one atomic store; the program reads each once. A read racing with
// two publishes in a row may mix slots of both lists: a connection then goes
// to a worker of a decision a tick old, which the paper's design tolerates
// ("minor, transient inconsistencies").
struct hermes_ctl {
	__u64 list;          // count (bits 0-31) | CPUs covered (32-47) | generation (48-63)
	__u64 published_ns;  // bpf_ktime_get_ns() (CLOCK_MONOTONIC) of the publish; 0 = never
	__u64 max_stale_ns;  // older lists fall back to the kernel hash; 0 = no limit
	__u64 publisher;     // slot + 1 of the last publisher (userspace bookkeeping)
	__u32 min_candidates;// fewer workers in the list fall back to the kernel hash
	__u32 policy;        // POLICY_*
	__u32 locality;      // 1: the worker on the receiving CPU is the first candidate
	__u32 _pad;
	__u64 _line[2];
	__u64 _reserved[8];  // userspace only: publish lock, layout version, owner (layout.rs)
	struct hermes_list lists[2];
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
	__uint(max_entries, DEFAULT_SLOTS);
	__type(key, __u32);
	__type(value, struct hermes_worker_state);
} hermes_wst SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(map_flags, BPF_F_MMAPABLE);
	__uint(max_entries, CNT_FIXED + 2 * DEFAULT_SLOTS);
	__type(key, __u32);
	__type(value, __u64);
} hermes_counters SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_REUSEPORT_SOCKARRAY);
	__uint(max_entries, DEFAULT_SLOTS);
	__type(key, __u32);
	__type(value, __u32);
} hermes_sockets SEC(".maps");

// A slot beyond the sized maps finds no counter: nothing is counted.
static __always_inline void count(__u32 idx)
{
	__u64 *c = bpf_map_lookup_elem(&hermes_counters, &idx);
	if (c)
		__sync_fetch_and_add(c, 1);
}

static __always_inline __u64 load_of(__u32 slot)
{
	__u32 idx = CNT_RECENT(slot);
	struct hermes_worker_state *w = bpf_map_lookup_elem(&hermes_wst, &slot);
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

static __always_inline int try_select(struct sk_reuseport_md *ctx, __u32 slot)
{
	return bpf_sk_select_reuseport(ctx, &hermes_sockets, &slot, 0);
}

// The i-th slot of the list (i below its count, so below MAX_WORKERS; the
// mask is for the verifier).
static __always_inline __u32 slot_at(struct hermes_list *l, __u32 i)
{
	FORGET_RANGE(i);
	return READ_ONCE(l->slots[i & (MAX_WORKERS - 1)]);
}

SEC("sk_reuseport/migrate")
int hermes_dispatch(struct sk_reuseport_md *ctx)
{
	__u32 zero = 0;
	struct hermes_ctl *ctl = bpf_map_lookup_elem(&hermes_ctl, &zero);
	struct hermes_list *l;
	__u64 list, published, max_stale, now;
	__u32 n, min, i, first, second, hash, pick, other, near = 0;

	count(CNT_RUNS);
	if (ctx->migrating_sk)
		count(CNT_MIGRATED);
	if (!ctl)
		return SK_PASS;

	list = READ_ONCE(ctl->list);
	published = READ_ONCE(ctl->published_ns);
	max_stale = READ_ONCE(ctl->max_stale_ns);
	min = READ_ONCE(ctl->min_candidates);

	now = bpf_ktime_get_ns();
	if (published == 0 || (max_stale && now - published > max_stale)) {
		count(CNT_FALLBACK_STALE);
		return SK_PASS;
	}
	n = (__u32)list;
	if (n == 0 || n < min || n > MAX_WORKERS) {
		count(CNT_FALLBACK_TOO_FEW);
		return SK_PASS;
	}
	l = &ctl->lists[(list >> 48) & 1];

	// Two distinct candidates drawn from the hash: O(1) whatever the count.
	hash = ctx->hash;
	i = hash % n;
	first = slot_at(l, i);
	second = n == 1 ? first : slot_at(l, (i + 1 + (hash >> 16) % (n - 1)) % n);

	// Locality: the eligible worker on the CPU that received the
	// connection's packets becomes the first candidate (it wins ties).
	if (READ_ONCE(ctl->locality)) {
		__u32 cpu = bpf_get_smp_processor_id();
		if (cpu < ((list >> 32) & 0xffff)) {
			FORGET_RANGE(cpu);
			near = READ_ONCE(l->local[cpu & (MAX_CPUS - 1)]);
		}
		if (near) {
			near -= 1;
			if (first == near)
				first = second;
			second = first;
			first = near;
			near += 1;
		}
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
		count(CNT_DISPATCHED(pick));
		count(CNT_RECENT(pick));
		if (near && pick == near - 1)
			count(CNT_LOCAL);
		return SK_PASS;
	}
	count(CNT_FALLBACK_NO_SOCKET);
	return SK_PASS;
}

char _license[] SEC("license") = "GPL";

// The floor of the kernel cost bench (`cargo bench -p hermes-bpf --bench
// kernel_cost`): one bpf_sk_select_reuseport call on a slot drawn from the
// hash below the list's count (the bench publishes a list as long as its
// group), nothing else. The runtime never loads it; the bench compares
// hermes_dispatch against it in the same run, at the same group sizes.
SEC("sk_reuseport/migrate")
int hermes_select_floor(struct sk_reuseport_md *ctx)
{
	__u32 zero = 0, slot, n;
	struct hermes_ctl *ctl = bpf_map_lookup_elem(&hermes_ctl, &zero);

	if (!ctl)
		return SK_PASS;
	n = (__u32)READ_ONCE(ctl->list);
	slot = n ? ctx->hash % n : 0;
	bpf_sk_select_reuseport(ctx, &hermes_sockets, &slot, 0);
	return SK_PASS;
}
