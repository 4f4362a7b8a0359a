//! [`PortInUse`]: the typed cause of a refused bind.

use std::{fmt, net::SocketAddr};

/// Another socket already listens on the address a server was asked to bind
/// (the cause inside the `io::Error` of kind `AddrInUse` that
/// [`Builder::build`](crate::Builder::build) returns).
///
/// A Hermes server never joins a `SO_REUSEPORT` group it did not create: the
/// dispatch program it attaches would replace the one the other group's
/// server uses, and take over the placement of every new connection on the
/// port, the other server's included.
///
/// ```
/// use hermes_runtime::{Builder, Mode, PortInUse};
///
/// let taken = std::net::TcpListener::bind("127.0.0.1:0")?;
/// let err = Builder::new()
///     .bind(taken.local_addr()?)
///     .mode(Mode::KernelHash)
///     .build()
///     .unwrap_err();
/// assert_eq!(err.kind(), std::io::ErrorKind::AddrInUse);
/// assert!(err.get_ref().and_then(|e| e.downcast_ref::<PortInUse>()).is_some());
/// # Ok::<(), std::io::Error>(())
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PortInUse {
    /// The address asked for.
    pub addr: SocketAddr,
}

impl fmt::Display for PortInUse {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "another socket already listens on {}: a Hermes server does not join a SO_REUSEPORT group it \
             did not create (its dispatch program would take over the other server's connections); stop \
             the other server or bind another port",
            self.addr
        )
    }
}

impl std::error::Error for PortInUse {}
