//! CPU work that costs the same CPU however busy the machine is: a spin on
//! the thread's own CPU clock. (`/work`'s spin is on the wall clock: a
//! thread preempted while it spins uses less CPU than asked, which hides
//! what a host can serve when its cores are shared.)

use std::time::Duration;

/// The CPU time the calling thread has used.
fn thread_cpu() -> Duration {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: `ts` is a valid, writable timespec for the call's duration.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    assert_eq!(rc, 0, "CLOCK_THREAD_CPUTIME_ID is always there on Linux");
    Duration::new(u64::try_from(ts.tv_sec).unwrap_or(0), u32::try_from(ts.tv_nsec).unwrap_or(0))
}

/// Spins until this thread has used `us` microseconds of CPU.
pub(crate) fn spin_cpu(us: u64) {
    let end = thread_cpu() + Duration::from_micros(us);
    while thread_cpu() < end {
        for _ in 0..64 {
            std::hint::spin_loop();
        }
    }
}
