//! Several schedulers publishing into the real, kernel-mapped control map at
//! once: the publish time never moves backwards, and the list in force is
//! the one published with that time. Loads the program (names say `ebpf`);
//! without CAP_BPF it skips loudly, or fails under `HERMES_REQUIRE_BPF=1`.

use std::{
    sync::{
        Arc, Barrier,
        atomic::{AtomicBool, Ordering},
    },
    thread,
    time::{Duration, Instant},
};

use hermes_bpf::monotonic_ns;
use hermes_test_support::ebpf::dispatcher_or_skip;

#[test]
fn ebpf_racing_publishers_never_move_the_publish_time_back() {
    let Some(d) = dispatcher_or_skip("ebpf_racing_publishers_never_move_the_publish_time_back") else {
        return;
    };
    let control = d.control().clone();
    const PUBLISHERS: usize = 4;
    let start = Arc::new(Barrier::new(PUBLISHERS + 1));
    let done = Arc::new(AtomicBool::new(false));
    let deadline = Instant::now() + Duration::from_secs(2);

    let publishers: Vec<_> = (0..PUBLISHERS)
        .map(|id| {
            let (control, start, done) = (control.clone(), start.clone(), done.clone());
            thread::spawn(move || {
                // Every publisher on one CPU: they interleave only where the
                // kernel preempts one, anywhere in its publish, as on a busy host.
                pin_to(0);
                start.wait();
                let mut published = 0u64;
                while !done.load(Ordering::Relaxed) {
                    let now = monotonic_ns();
                    // The list names its own time, so a reader can tell a
                    // list from one publish paired with the time of another.
                    if control[0].publish_if_newer(time_list(now), now, id) {
                        published += 1;
                    }
                }
                published
            })
        })
        .collect();

    // The reader on another CPU (where there is one) sees each publish as it lands.
    pin_to(1);
    start.wait();
    let mut last = 0u64;
    let mut backwards = 0u64;
    let mut reads = 0u64;
    while Instant::now() < deadline {
        let t = control[0].published_ns.load(Ordering::Acquire);
        if t < last {
            backwards += 1;
        }
        last = last.max(t);
        reads += 1;
    }
    done.store(true, Ordering::Relaxed);
    let published: u64 = publishers.into_iter().map(|p| p.join().unwrap()).sum();

    assert!(published > 1000 && reads > 1000, "the race ran: {published} publishes, {reads} reads");
    assert_eq!(backwards, 0, "the publish time moved backwards {backwards} times in {reads} reads");
    let (list, time) =
        (control[0].eligible().collect::<Vec<_>>(), control[0].published_ns.load(Ordering::Relaxed));
    assert_eq!(
        list,
        time_list(time).collect::<Vec<_>>(),
        "the list in force is the one published with the time in force"
    );
    assert!(time >= last, "the final publish time is the newest one seen");
}

/// A list of slots that spells `t` (ten bits per slot), its length too.
fn time_list(t: u64) -> impl Iterator<Item = usize> {
    let len = 1 + (t % 5) as usize;
    (0..len).map(move |i| ((t >> (10 * i)) & 0x3ff) as usize)
}

/// Pins the calling thread to `cpu`, if this process may run there.
fn pin_to(cpu: usize) {
    // SAFETY: an all-zero cpu_set_t is the empty set.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    // SAFETY: `cpu` is below CPU_SETSIZE.
    unsafe { libc::CPU_SET(cpu, &mut set) };
    // SAFETY: `set` is a valid cpu_set_t of the stated size. A refused pin
    // (fewer CPUs) only makes the race less likely, not the check weaker.
    unsafe { libc::sched_setaffinity(0, size_of::<libc::cpu_set_t>(), &set) };
}
