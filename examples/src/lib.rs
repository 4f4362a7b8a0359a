//! Code shared by the examples in this folder and their tests: the tonic
//! greeter ([`greeter`]), the Redis-protocol server ([`resp`]) and the
//! `tls` example's application and self-signed certificate ([`tls`]).
//!
//! Modules:
//!
//! - [`greeter`]: the `helloworld.Greeter` gRPC service;
//! - [`resp`]: the Redis-protocol (RESP2) server on a `HermesListener`.
//!
//! Each example says in its first lines how to run it; from the workspace
//! root: `cargo run --release --example hello` (or `greeter`, `redis`,
//! `prometheus`, `tls`).
#![deny(missing_docs)]

pub mod greeter;
pub mod resp;
pub mod tls;

/// Installs a log subscriber printing `info` and above, or what `RUST_LOG`
/// asks for.
pub fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt().with_env_filter(filter).try_init();
}
