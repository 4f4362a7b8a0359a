//! Through tonic over real sockets: `tonic-health` served by
//! `Server::builder().layer(HermesLayer::new())` on a worker thread, called
//! by its generated client.

use std::sync::Arc;

use hermes_test_support::{
    wait::eventually,
    worker::{WorkerServer, slot, table},
};
use hermes_tower::HermesLayer;
use tokio::sync::Notify;
use tonic::transport::{Channel, server::TcpIncoming};
use tonic_health::pb::{
    HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient,
};
use tower::util::MapFutureLayer;

#[tokio::test]
async fn a_slow_grpc_call_is_in_flight_on_its_worker_until_answered() {
    let table = table(2);
    let gate = Arc::new(Notify::new());
    let held = gate.clone();
    let server = WorkerServer::start(table.clone(), 1, move |listener, stop| async move {
        let (_reporter, health) = tonic_health::server::health_reporter();
        // Holds each call until the test opens the gate: a slow request.
        let slow = MapFutureLayer::new(move |call| {
            let gate = held.clone();
            async move {
                gate.notified().await;
                call.await
            }
        });
        tonic::transport::Server::builder()
            .layer(HermesLayer::new())
            .layer(slow)
            .add_service(health)
            .serve_with_incoming_shutdown(TcpIncoming::from(listener), async move {
                let _ = stop.await;
            })
            .await
            .expect("tonic server");
    });

    let channel = Channel::from_shared(format!("http://{}", server.addr))
        .expect("valid URI")
        .connect()
        .await
        .expect("connect to the worker");
    let mut client = HealthClient::new(channel);
    let call = tokio::spawn(async move { client.check(HealthCheckRequest { service: String::new() }).await });

    eventually("the slow call to be in flight", || slot(&table, 1).in_flight == 1).await;
    assert_eq!(slot(&table, 1).requests, 0);
    assert_eq!(slot(&table, 0).in_flight, 0);

    gate.notify_one();
    let response = call.await.expect("client task").expect("health check");
    assert_eq!(response.into_inner().status(), ServingStatus::Serving);

    eventually("the call to be finished", || slot(&table, 1).in_flight == 0).await;
    assert_eq!(slot(&table, 1).requests, 1);
}
