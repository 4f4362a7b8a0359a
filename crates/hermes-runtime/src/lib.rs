//! Thread-per-core Tokio runtimes whose new connections are placed by Hermes.
#![deny(missing_docs)]

pub mod context;
