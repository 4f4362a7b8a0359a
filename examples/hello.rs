//! An axum hello service on Hermes dispatch: the README's main command.
//!
//! ```text
//! cargo run --release --example hello               # on 127.0.0.1:3000
//! curl http://127.0.0.1:3000/
//! curl http://127.0.0.1:3000/_hermes/stats
//! cargo run --release -p hermes-top -- http://127.0.0.1:3000/_hermes/stats
//! cargo run --release --example hello -- 0.0.0.0:8080   # another address
//! ```
//!
//! Loading the dispatch program needs root or CAP_BPF; without it the
//! server runs with plain `SO_REUSEPORT` hashing and prints why. Stop it
//! with ctrl-c: the workers drain gracefully.

use axum::{Router, routing::get};

async fn hello() -> String {
    match hermes_runtime::context::current() {
        Some(worker) => format!("Hello from Hermes worker {}\n", worker.id()),
        None => "Hello\n".to_owned(),
    }
}

#[tokio::main]
async fn main() -> std::io::Result<()> {
    hermes_examples::init_logging();
    let app = Router::new().route("/", get(hello));

    let addr = hermes_examples::addr_arg("127.0.0.1:3000")?;
    // The one-line form is `hermes_tower::serve(addr, app).await`;
    // `start()` returns the handle first, to print the mode.
    let handle = hermes_tower::serve(addr, app).with_stats().start()?;
    match handle.mode_reason() {
        Some(reason) => println!("dispatch mode: {} (fallback: {reason})", handle.mode()),
        None => println!("dispatch mode: {}", handle.mode()),
    }
    println!("listening on http://{}/", handle.local_addr());
    println!("per-worker stats: http://{}/_hermes/stats", handle.local_addr());
    println!("watch them: cargo run --release -p hermes-top -- http://{}/_hermes/stats", handle.local_addr());
    hermes_tower::serve::shutdown_on_signal(handle).await
}
