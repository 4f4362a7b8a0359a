//! A tonic greeter on Hermes dispatch, with its client.
//!
//! ```text
//! cargo run --release --example greeter
//! ```
//!
//! It serves `helloworld.Greeter` on 127.0.0.1:50051 (one tonic server per
//! worker, `HermesLayer` added by `hermes_tower::serve_tonic`), calls it
//! once with the client in `hermes_examples::greeter`, prints the reply and
//! serves until ctrl-c. The test `cargo test -p hermes-tests --test
//! examples_greeter` runs the same client.

use hermes_examples::greeter::{GreeterClient, GreeterServer, HelloRequest, WorkerGreeter};
use tonic::service::Routes;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    hermes_examples::init_logging();
    let handle =
        hermes_tower::serve_tonic("127.0.0.1:50051", || Routes::new(GreeterServer::new(WorkerGreeter)))
            .start()?;
    match handle.mode_reason() {
        Some(reason) => println!("dispatch mode: {} (fallback: {reason})", handle.mode()),
        None => println!("dispatch mode: {}", handle.mode()),
    }

    let mut client = GreeterClient::connect(format!("http://{}", handle.local_addr())).await?;
    let reply = client.say_hello(HelloRequest { name: "world".into() }).await?;
    println!("reply: {}", reply.message);

    println!("serving helloworld.Greeter on {}; ctrl-c to stop", handle.local_addr());
    hermes_tower::serve::shutdown_on_signal(handle).await?;
    Ok(())
}
