//! The tonic greeter through the one-line tonic entry,
//! `hermes_tower::serve_tonic`, over real sockets, called by its client.

use std::sync::Arc;

use hermes_examples::greeter::{
    Greeter, GreeterClient, GreeterServer, HelloReply, HelloRequest, WorkerGreeter,
};
use hermes_test_support::{
    server::{shutdown, two_workers},
    snapshot::{in_flight, requests},
    wait::eventually_snapshot as eventually,
};
use tokio::sync::Notify;
use tonic::{Status, service::Routes};

#[tokio::test]
async fn the_client_is_greeted_by_a_hermes_worker() {
    let handle = hermes_tower::serve_tonic("127.0.0.1:0", || Routes::new(GreeterServer::new(WorkerGreeter)))
        .with_builder(two_workers())
        .start()
        .expect("start the server");
    let mut client =
        GreeterClient::connect(format!("http://{}", handle.local_addr())).await.expect("connect");
    for _ in 0..3 {
        let reply = client.say_hello(HelloRequest { name: "world".into() }).await.expect("SayHello");
        assert!(reply.message.starts_with("Hello, world! (worker "), "{}", reply.message);
    }
    eventually(&handle, "three calls counted", |s| requests(s) == 3 && in_flight(s) == 0).await;
    shutdown(handle).await;
}

/// A greeter that answers once the test opens its gate.
struct SlowGreeter(Arc<Notify>);

impl Greeter for SlowGreeter {
    async fn say_hello(&self, request: HelloRequest) -> Result<HelloReply, Status> {
        self.0.notified().await;
        Ok(HelloReply { message: format!("Hello, {}!", request.name) })
    }
}

#[tokio::test]
async fn a_slow_call_through_serve_tonic_is_in_flight_until_answered() {
    let gate = Arc::new(Notify::new());
    let greeter = Arc::new(SlowGreeter(gate.clone()));
    let handle = hermes_tower::serve_tonic("127.0.0.1:0", move || {
        Routes::new(GreeterServer::from_arc(greeter.clone()))
    })
    .with_builder(two_workers())
    .start()
    .expect("start the server");
    let mut client =
        GreeterClient::connect(format!("http://{}", handle.local_addr())).await.expect("connect");
    let call = tokio::spawn(async move { client.say_hello(HelloRequest { name: "slow".into() }).await });

    let during = eventually(&handle, "the slow call in flight", |s| in_flight(s) == 1).await;
    assert_eq!(requests(&during), 0);
    let worker = during.workers.iter().find(|w| w.in_flight == 1).expect("a worker with the call").id;

    gate.notify_one();
    let reply = call.await.expect("client task").expect("SayHello");
    assert_eq!(reply.message, "Hello, slow!");
    let after = eventually(&handle, "the call finished", |s| in_flight(s) == 0 && requests(s) == 1).await;
    assert_eq!(after.workers[worker].requests, 1, "{after:?}");
    shutdown(handle).await;
}
