//! The CPU-spin endpoints: `/work?us=N` spins N µs of wall-clock time,
//! `/cpu?us=N` N µs of the thread's own CPU time, which costs the same CPU
//! however busy the machine is (a thread preempted during a wall-clock spin
//! uses less CPU than asked, which hides what a host can serve when its
//! cores are shared).

use std::time::{Duration, Instant};

use axum::{extract::Query, routing::MethodRouter};

use super::{Cost, MAX_WORK_US, scaled, too_large};

/// The route of a spin endpoint: `spin` for `?us=N` scaled by `scale` (400
/// above [`MAX_WORK_US`]); the response says the cost applied.
pub(crate) fn spin_route(scale: f64, spin: fn(u64)) -> MethodRouter {
    axum::routing::get(move |Query(cost): Query<Cost>| async move {
        let us = scaled(cost.us, scale);
        if us > MAX_WORK_US {
            return Err(too_large("us", MAX_WORK_US));
        }
        spin(us);
        Ok(([("x-hermes-cost", format!("us={us}"))], "worked"))
    })
}

/// Spins until `us` microseconds of wall-clock time have passed.
pub(crate) fn spin_wall(us: u64) {
    let end = Instant::now() + Duration::from_micros(us);
    while Instant::now() < end {
        std::hint::spin_loop();
    }
}

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
