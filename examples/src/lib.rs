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
//! `prometheus`, `tls`). `hello` and `prometheus` take another address as
//! their argument ([`addr_arg`]).
#![deny(missing_docs)]

pub mod greeter;
pub mod resp;
pub mod tls;

/// Installs a log subscriber printing `info` and above, or what `RUST_LOG`
/// asks for, on stderr (the examples' own output stays on stdout), in colour
/// only when stderr is a terminal (a redirected log has no escape codes).
pub fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .try_init();
}

/// The address given as the example's first argument, or `default`: `cargo
/// run --release --example hello -- 0.0.0.0:8080` (port 0: the kernel picks
/// one, and the example prints it).
///
/// # Errors
/// When the argument is not an address, naming it.
pub fn addr_arg(default: &str) -> std::io::Result<std::net::SocketAddr> {
    let arg = std::env::args().nth(1).unwrap_or_else(|| default.to_owned());
    arg.parse().map_err(|e| {
        std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            format!("{arg:?} is not an address (IP:PORT): {e}"),
        )
    })
}
