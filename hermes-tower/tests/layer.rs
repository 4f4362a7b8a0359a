//! The layer against mock services (`tower-test`): what it writes to the
//! worker's slot on completion, cancellation, errors and panics, and that
//! it does nothing outside a worker.

use std::{
    convert::Infallible,
    future::Ready,
    panic::{AssertUnwindSafe, catch_unwind},
    task::{Context, Poll},
    time::Duration,
};

use hermes_runtime::context::WorkerRef;
use hermes_test_support::worker::{Slot, slot, table, untouched};
use hermes_tower::{Hermes, HermesLayer, SampleRate};
use tower::{Service, ServiceExt, service_fn};
use tower_test::mock;

#[tokio::test]
async fn in_flight_goes_up_on_call_and_down_on_completion() {
    let table = table(2);
    let _entered = WorkerRef::new(1, table.clone()).enter();
    let (mut svc, mut handle) = mock::spawn_layer::<&str, &str, _>(HermesLayer::new());

    assert!(svc.poll_ready().is_ready());
    let fut = svc.call("hello");
    assert_eq!(slot(&table, 1).in_flight, 1);
    assert_eq!(slot(&table, 1).requests, 0);
    assert_eq!(
        slot(&table, 0),
        Slot { in_flight: 0, requests: 0, service_ns: 0 },
        "other slots are not touched"
    );

    let (req, respond) = handle.next_request().await.expect("request reached the inner service");
    assert_eq!(req, "hello");
    assert_eq!(slot(&table, 1).in_flight, 1, "still in flight until the response is ready");
    respond.send_response("world");

    assert_eq!(fut.await.expect("response"), "world");
    assert_eq!(slot(&table, 1).in_flight, 0);
    assert_eq!(slot(&table, 1).requests, 1);
}

#[tokio::test]
async fn in_flight_goes_down_when_the_response_future_is_dropped() {
    let table = table(1);
    let _entered = WorkerRef::new(0, table.clone()).enter();
    let (mut svc, mut handle) = mock::spawn_layer::<(), (), _>(HermesLayer::new());

    assert!(svc.poll_ready().is_ready());
    let fut = svc.call(());
    let _pending = handle.next_request().await.expect("request");
    assert_eq!(slot(&table, 0).in_flight, 1);

    drop(fut); // the client went away: the request is cancelled
    assert_eq!(slot(&table, 0).in_flight, 0);
    assert_eq!(slot(&table, 0).requests, 1);
}

#[tokio::test]
async fn an_error_is_passed_through_and_counted_as_finished() {
    let table = table(1);
    let _entered = WorkerRef::new(0, table.clone()).enter();
    let (mut svc, mut handle) = mock::spawn_layer::<(), (), _>(HermesLayer::new());

    assert!(svc.poll_ready().is_ready());
    let fut = svc.call(());
    let (_, respond) = handle.next_request().await.expect("request");
    respond.send_error("backend down");

    let err = fut.await.expect_err("the inner error comes back");
    assert_eq!(err.to_string(), "backend down");
    assert_eq!(slot(&table, 0).in_flight, 0);
    assert_eq!(slot(&table, 0).requests, 1);
}

#[tokio::test]
async fn readiness_is_the_inner_service_readiness() {
    let table = table(1);
    let _entered = WorkerRef::new(0, table.clone()).enter();
    let (mut svc, mut handle) = mock::spawn_layer::<(), (), _>(HermesLayer::new());

    handle.allow(0);
    assert!(svc.poll_ready().is_pending());
    handle.allow(1);
    assert!(svc.poll_ready().is_ready());
    assert!(untouched(&table), "readiness alone counts nothing");
}

#[test]
fn in_flight_goes_down_when_the_inner_future_panics() {
    let table = table(1);
    let _entered = WorkerRef::new(0, table.clone()).enter();
    let svc = Hermes::new(service_fn(|()| async {
        panic!("handler bug");
        #[allow(unreachable_code)]
        Ok::<(), Infallible>(())
    }));

    let fut = svc.oneshot(());
    let caught = catch_unwind(AssertUnwindSafe(|| futures::executor::block_on(fut)));
    assert!(caught.is_err(), "the panic reaches the caller unchanged");
    assert_eq!(slot(&table, 0).in_flight, 0, "unwinding dropped the guard");
    assert_eq!(slot(&table, 0).requests, 1);
}

/// A service whose `call` itself panics, before any future exists.
#[derive(Clone)]
struct PanicsInCall;

impl Service<()> for PanicsInCall {
    type Response = ();
    type Error = Infallible;
    type Future = Ready<Result<(), Infallible>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, (): ()) -> Self::Future {
        panic!("routing bug")
    }
}

#[test]
fn in_flight_does_not_leak_when_the_inner_call_panics() {
    let table = table(1);
    let _entered = WorkerRef::new(0, table.clone()).enter();
    let mut svc = Hermes::new(PanicsInCall);

    let caught = catch_unwind(AssertUnwindSafe(|| svc.call(())));
    assert!(caught.is_err());
    assert_eq!(slot(&table, 0).in_flight, 0);
}

#[tokio::test]
async fn requests_and_service_time_are_recorded() {
    let table = table(1);
    let _entered = WorkerRef::new(0, table.clone()).enter();
    let svc = Hermes::with_service_time(
        service_fn(|ms: u64| async move {
            // The service time under test, not a wait.
            tokio::time::sleep(Duration::from_millis(ms)).await;
            Ok::<_, Infallible>(ms)
        }),
        SampleRate::EVERY_REQUEST,
    );

    for ms in [2, 3] {
        assert_eq!(svc.clone().oneshot(ms).await, Ok(ms));
    }
    let s = slot(&table, 0);
    assert_eq!((s.in_flight, s.requests), (0, 2));
    assert!(s.service_ns >= 5_000_000, "5 ms of sleeping recorded, got {} ns", s.service_ns);
    assert!(s.service_ns < 5_000_000_000, "no absurd total, got {} ns", s.service_ns);
}

#[tokio::test]
async fn sampled_service_time_measures_one_request_in_n_and_scales_it() {
    let table = table(1);
    let _entered = WorkerRef::new(0, table.clone()).enter();
    let one_in_4 = SampleRate::one_in(4).expect("power of two");
    // Requests 0 and 4 are measured: 0 sleeps 2 ms, 4 sleeps 3 ms, the rest none.
    let svc = Hermes::with_service_time(
        service_fn(|seq: u64| async move {
            let ms = match seq {
                0 => 2,
                4 => 3,
                _ => 0,
            };
            // The service time under test, not a wait.
            tokio::time::sleep(Duration::from_millis(ms)).await;
            Ok::<_, Infallible>(())
        }),
        one_in_4,
    );

    for seq in 0..8 {
        svc.clone().oneshot(seq).await.expect("infallible");
    }
    let s = slot(&table, 0);
    assert_eq!((s.in_flight, s.requests), (0, 8));
    assert!(s.service_ns >= 4 * 5_000_000, "(2 + 3) ms counted 4 times each, got {} ns", s.service_ns);
    assert!(s.service_ns < 4 * 1_000_000_000, "got {} ns", s.service_ns);
}

#[tokio::test]
async fn service_time_off_counts_requests_only() {
    let table = table(1);
    let _entered = WorkerRef::new(0, table.clone()).enter();
    let svc = Hermes::with_service_time(
        service_fn(|()| async {
            // Service time that must not be counted, not a wait.
            tokio::time::sleep(Duration::from_millis(1)).await;
            Ok::<_, Infallible>(())
        }),
        SampleRate::OFF,
    );
    for _ in 0..3 {
        svc.clone().oneshot(()).await.expect("infallible");
    }
    assert_eq!(slot(&table, 0), Slot { in_flight: 0, requests: 3, service_ns: 0 });
}

#[tokio::test]
async fn outside_a_worker_nothing_is_counted_and_requests_pass_through() {
    let table = table(2);
    assert!(hermes_runtime::context::current().is_none());
    let (mut svc, mut handle) = mock::spawn_layer::<u8, u8, _>(HermesLayer::new());

    assert!(svc.poll_ready().is_ready());
    let fut = svc.call(7);
    let (req, respond) = handle.next_request().await.expect("request");
    respond.send_response(req * 6);
    assert_eq!(fut.await.expect("response"), 42);
    assert!(untouched(&table));
}

#[tokio::test]
async fn a_request_is_settled_on_the_worker_it_started_on() {
    let table = table(2);
    let (mut svc, mut handle) = mock::spawn_layer::<(), (), _>(HermesLayer::new());

    let fut = {
        let _on_0 = WorkerRef::new(0, table.clone()).enter();
        assert!(svc.poll_ready().is_ready());
        svc.call(())
    };
    let _on_1 = WorkerRef::new(1, table.clone()).enter();
    let (_, respond) = handle.next_request().await.expect("request");
    respond.send_response(());
    fut.await.expect("response");

    assert_eq!(slot(&table, 0), Slot { in_flight: 0, requests: 1, service_ns: slot(&table, 0).service_ns });
    assert_eq!(slot(&table, 1), Slot { in_flight: 0, requests: 0, service_ns: 0 });
}

#[test]
fn a_response_future_finished_on_another_thread_settles_its_own_slot() {
    let table = table(1);
    let _entered = WorkerRef::new(0, table.clone()).enter();
    let mut svc = Hermes::new(service_fn(|()| async { Ok::<_, Infallible>(()) }));
    let response = svc.call(());
    assert_eq!(slot(&table, 0).in_flight, 1);
    std::thread::spawn(move || futures::executor::block_on(response).expect("infallible"))
        .join()
        .expect("thread");
    assert_eq!(slot(&table, 0), Slot { in_flight: 0, requests: 1, service_ns: slot(&table, 0).service_ns });
}

#[test]
fn sample_rates_must_be_powers_of_two() {
    assert_eq!(SampleRate::one_in(1), Ok(SampleRate::EVERY_REQUEST));
    assert_eq!(SampleRate::one_in(1024).map(|s| s.rate()), Ok(Some(1024)));
    assert_eq!(SampleRate::OFF.rate(), None);
    assert_eq!(SampleRate::default().rate(), Some(SampleRate::DEFAULT_ONE_IN));
    for bad in [0, 3, 100, u32::MAX] {
        let err = SampleRate::one_in(bad).expect_err("not a power of two");
        assert_eq!(err.requested(), bad);
        assert!(err.to_string().contains(&format!("not one in {bad}")), "{err}");
    }
}

#[test]
fn the_service_and_layer_are_cheap_to_clone_and_thread_safe() {
    fn assert_traits<T: Clone + Send + Sync + 'static>() {}
    assert_traits::<HermesLayer>();
    assert_traits::<Hermes<tower::util::BoxCloneSyncService<(), (), Infallible>>>();
    fn assert_send<T: Send>(_: &T) {}
    let mut svc = Hermes::new(service_fn(|()| async { Ok::<_, Infallible>(()) }));
    assert_send(&svc.call(()));
    assert!(std::mem::size_of::<HermesLayer>() <= 8);
}
