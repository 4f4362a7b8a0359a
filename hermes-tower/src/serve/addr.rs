//! [`IntoBindAddr`]: what the one-line entry points accept as "where to
//! listen".

use std::{
    io,
    net::{IpAddr, SocketAddr, ToSocketAddrs},
};

/// Where a Hermes server listens: an address, or a listener whose address is
/// taken over.
///
/// Implemented for [`SocketAddr`], `(IpAddr, u16)`, `&str` and [`String`]
/// (`"127.0.0.1:3000"`, or a host name resolved once, first address wins),
/// and for [`tokio::net::TcpListener`] and [`std::net::TcpListener`].
///
/// # Taking over a listener
///
/// Each Hermes worker needs its own `SO_REUSEPORT` socket, which must be set
/// before `bind`; an already bound listener cannot gain it. So a listener
/// passed here is read for its address (with the port resolved, so
/// `127.0.0.1:0` works) and closed, and the workers then bind that same
/// address. Between the close and the workers' bind (a few microseconds,
/// inside [`Serve::start`](crate::serve::Serve::start)) the port is free: a
/// connection arriving then is refused, a connection that was queued on the
/// closed listener is reset, and another process could take the port (the
/// start then fails with `AddrInUse`). Pass an address instead to avoid the
/// window.
///
/// ```
/// use hermes_tower::serve::IntoBindAddr;
///
/// let addr = "127.0.0.1:3000".into_bind_addr()?;
/// assert_eq!(addr.port(), 3000);
///
/// let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
/// let port = listener.local_addr()?.port();
/// assert_eq!(listener.into_bind_addr()?.port(), port);
/// # Ok::<(), std::io::Error>(())
/// ```
pub trait IntoBindAddr {
    /// The address to bind, closing `self` if it is a listener.
    ///
    /// # Errors
    /// When a string does not resolve to an address, or a listener cannot
    /// report its address.
    fn into_bind_addr(self) -> io::Result<SocketAddr>;
}

impl IntoBindAddr for SocketAddr {
    fn into_bind_addr(self) -> io::Result<SocketAddr> {
        Ok(self)
    }
}

impl IntoBindAddr for (IpAddr, u16) {
    fn into_bind_addr(self) -> io::Result<SocketAddr> {
        Ok(SocketAddr::from(self))
    }
}

impl IntoBindAddr for &str {
    fn into_bind_addr(self) -> io::Result<SocketAddr> {
        self.to_socket_addrs()?.next().ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("{self:?} resolves to no address to listen on"),
            )
        })
    }
}

impl IntoBindAddr for String {
    fn into_bind_addr(self) -> io::Result<SocketAddr> {
        self.as_str().into_bind_addr()
    }
}

impl IntoBindAddr for std::net::TcpListener {
    fn into_bind_addr(self) -> io::Result<SocketAddr> {
        let addr = self.local_addr()?;
        drop(self);
        Ok(addr)
    }
}

impl IntoBindAddr for tokio::net::TcpListener {
    fn into_bind_addr(self) -> io::Result<SocketAddr> {
        let addr = self.local_addr()?;
        drop(self);
        Ok(addr)
    }
}
