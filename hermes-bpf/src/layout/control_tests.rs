//! Tests of [`Control`](super::Control): the list's buffers, the locality
//! table, ownership and the publish lock.

use super::*;

#[test]
fn a_publish_puts_a_whole_list_in_force_and_keeps_the_other_buffer() {
    let c = Control::default();
    assert_eq!(c.eligible_count(), 0);
    c.publish([3, 1, 4], 10, 0);
    assert_eq!(c.eligible().collect::<Vec<_>>(), [3, 1, 4]);
    assert_eq!(c.published_ns.load(Ordering::Relaxed), 10);
    c.publish(0..1000, 11, 2);
    assert_eq!(c.eligible_count(), 1000);
    assert!(c.eligible().eq(0..1000));
    // The previous list stays intact in the other buffer until the next
    // publish: a reader of the old word reads a whole list.
    assert_eq!(
        c.lists[1].slots[..3].iter().map(|s| s.load(Ordering::Relaxed)).collect::<Vec<_>>(),
        [3, 1, 4]
    );
    assert!(!c.publish_if_newer([7], 5, 0), "an older decision never replaces a newer one");
    assert_eq!(c.eligible_count(), 1000);
}

#[test]
fn the_list_holds_at_most_max_workers_and_slots_fit_u16() {
    let c = Control::default();
    c.write(1, 0, |w| {
        for s in 0..MAX_WORKERS {
            assert!(w.push(s));
        }
        assert!(!w.push(1), "full");
        assert_eq!(w.len(), MAX_WORKERS);
    });
    c.write(2, 0, |w| assert!(!w.push(usize::from(u16::MAX) + 1), "beyond any map"));
    assert_eq!(c.eligible_count(), 0);
}

#[test]
fn the_locality_table_covers_the_cpus_set_and_no_stale_entry() {
    let c = Control::default();
    c.write(1, 0, |w| {
        w.push(5);
        w.push(9);
        w.set_local(3, 5);
        w.set_local(1, 9);
        assert_eq!(w.local(1), Some(9));
        w.set_local(1, 5);
        assert_eq!(w.local(1), Some(5), "the last one set for a CPU wins");
    });
    c.write(2, 0, |w| {
        w.push(6);
        w.set_local(0, 6);
    });
    // The buffer of the first list again: its CPU 3 entry must not leak.
    c.write(3, 0, |w| {
        w.push(7);
        w.set_local(2, 7);
    });
    assert_eq!((0..5).map(|cpu| c.local(cpu)).collect::<Vec<_>>(), [None, None, Some(7), None, None]);
    assert_eq!(c.local(MAX_CPUS + 1), None);
}

#[test]
fn only_the_owner_publishes_and_a_take_over_moves_the_list() {
    let c = Control::default();
    c.claim(1);
    assert!(c.publish_as(Some(1), 5, 0, |w| {
        w.push(0);
    }));
    assert!(!c.publish_as(Some(2), 6, 0, |_| panic!("not the owner: fill must not run")));
    c.take_over(2, 4, 64, |w| {
        w.push(64);
    });
    assert_eq!(c.owner(), 2);
    assert_eq!(c.eligible().collect::<Vec<_>>(), [64]);
    assert_eq!(c.published_ns.load(Ordering::Relaxed), 5, "a take-over never moves the time back");
    assert!(!c.publish_as(Some(1), 7, 0, |_| {}), "the old owner publishes no more");
}

/// A process that exits (killed, reaped): its pid then names none.
fn exited_pid() -> u32 {
    let mut child = std::process::Command::new("sleep").arg("30").spawn().expect("start sleep");
    child.kill().expect("kill");
    child.wait().expect("reap");
    child.id()
}

#[test]
fn a_take_over_takes_the_lock_of_a_holder_that_exited_at_once() {
    let c = Control::default();
    c.claim(1);
    let dead = exited_pid();
    // The lock as a server killed in the middle of a publish left it.
    c.publish_lock.0.store(u64::from(dead), Ordering::Relaxed);
    assert!(!c.publish_as(Some(1), 5, 0, |_| {}), "held: the publish is skipped");
    let stolen = c
        .take_over(2, 6, 64, |w| {
            w.push(64);
        })
        .expect("the lock was taken from its holder");
    assert_eq!((stolen.holder, stolen.exited), (dead, true));
    assert!(stolen.waited < TAKE_OVER_PATIENCE, "no wait for a holder that exited: {stolen:?}");
    assert_eq!((c.owner(), c.eligible().collect::<Vec<_>>()), (2, vec![64]));
    assert_eq!(c.publish_lock.0.load(Ordering::Relaxed), 0, "released after the take-over");
    assert!(c.publish_as(Some(2), 7, 64, |w| {
        w.push(65);
    }));
}

#[test]
fn a_take_over_waits_for_a_live_holder_at_most_its_patience() {
    let c = Control::default();
    let mut child = std::process::Command::new("sleep").arg("30").spawn().expect("start sleep");
    // A live process that holds the lock and never frees it (stalled).
    c.publish_lock.0.store(u64::from(child.id()), Ordering::Relaxed);
    let stolen = c.take_over(2, 6, 0, |_| {}).expect("taken once the patience ran out");
    child.kill().expect("kill");
    child.wait().expect("reap");
    assert_eq!((stolen.holder, stolen.exited), (child.id(), false));
    assert!(stolen.waited >= TAKE_OVER_PATIENCE, "{stolen:?}");
    assert_eq!(c.owner(), 2);
    // A free lock: no wait, nothing taken.
    assert_eq!(c.take_over(3, 7, 0, |_| {}), None);
}

#[test]
fn a_panicking_publish_leaves_the_lock_free() {
    let c = Control::default();
    let panicked = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        c.publish_as(None, 5, 0, |_| panic!("a fill that panics"));
    }));
    assert!(panicked.is_err());
    assert_eq!(c.publish_lock.0.load(Ordering::Relaxed), 0);
    assert!(c.publish_if_newer([1], 6, 0));
}
