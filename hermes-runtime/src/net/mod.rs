//! The accept side of a worker: [`HermesListener`] (the worker's own
//! `SO_REUSEPORT` listener, or its `EPOLLEXCLUSIVE` view of the shared one)
//! and [`HermesStream`], the connection it yields.

mod listener;
mod stream;

pub use listener::HermesListener;
pub(crate) use listener::Source;
pub use stream::HermesStream;
