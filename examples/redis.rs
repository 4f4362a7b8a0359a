//! A Redis-protocol server (PING, ECHO, SET, GET, INCR, DEL, QUIT, CONFIG
//! GET, DEBUG SLEEP) on Hermes dispatch, without Tower: each worker accepts
//! from its `HermesListener` directly.
//!
//! ```text
//! cargo run --release --example redis
//! redis-cli -p 6380 PING
//! redis-cli -p 6380 SET greeting hello
//! redis-cli -p 6380 GET greeting
//! redis-benchmark -p 6380 -c 50 -n 100000 -P 16 -t ping,set,get,incr
//! ```
//!
//! (`redis-cli` and `redis-benchmark` are in Debian's `redis-tools`.) Frames
//! go through `tokio_util::codec::Framed` with the `redis-protocol` crate's
//! RESP2 codec; pipelined commands are answered in one write per read batch;
//! each command runs inside a `hermes_runtime::context::InFlight` guard, so
//! `/_hermes/stats`-style snapshots show commands in flight. The keys are in
//! one map shared by all workers (`Arc<Mutex<HashMap>>`). This is the plain
//! `hermes_runtime::Builder` path: any Tokio server can use it. Compare it
//! with Debian's `redis-server`:
//! `cargo run --release -p hermes-examples --example redis_bench`.

use hermes_examples::resp::{self, Store};
use hermes_runtime::{Builder, HermesListener};

#[tokio::main]
async fn main() -> std::io::Result<()> {
    hermes_examples::init_logging();
    let server = Builder::new().bind("127.0.0.1:6380".parse().expect("a valid address")).build()?;
    match server.mode_reason() {
        Some(reason) => println!("dispatch mode: {} (fallback: {reason})", server.mode()),
        None => println!("dispatch mode: {}", server.mode()),
    }
    println!(
        "redis protocol on {}; try `redis-cli -p {} PING`",
        server.local_addr(),
        server.local_addr().port()
    );
    let store = Store::default();
    let handle = server.serve(move |listener: HermesListener| resp::serve(listener, store.clone()))?;
    hermes_tower::serve::shutdown_on_signal(handle).await
}
