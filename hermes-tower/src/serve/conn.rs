//! [`Connection`]: an accepted connection, plain or TLS, with its timer.

use std::{
    fmt, io,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
};

use hermes_runtime::HermesStream;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use super::timeouts::{Activity, Timeouts, Timer};

/// An accepted connection, plain or TLS, counted as open on the worker that
/// accepted it (see [`HermesStream`]).
pub struct Connection {
    inner: Stream,
    /// The header read and idle timeouts; `None` when both are off.
    timer: Option<Timer>,
}

enum Stream {
    Plain(HermesStream),
    // Boxed: a TLS session is about a kilobyte, a plain stream two words.
    #[cfg(feature = "tls")]
    Tls(Box<tokio_rustls::server::TlsStream<HermesStream>>),
}

impl fmt::Debug for Connection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Connection")
            .field("worker", &self.worker_id())
            .field("tls", &self.is_tls())
            .field("tcp", self.tcp())
            .finish()
    }
}

impl Connection {
    pub(crate) fn plain(stream: HermesStream) -> Self {
        Self { inner: Stream::Plain(stream), timer: None }
    }

    #[cfg(feature = "tls")]
    pub(crate) fn tls(stream: tokio_rustls::server::TlsStream<HermesStream>) -> Self {
        Self { inner: Stream::Tls(Box::new(stream)), timer: None }
    }

    /// Starts the connection's timer (none when both timeouts are off).
    pub(crate) fn with_timer(mut self, timeouts: Timeouts) -> Self {
        if timeouts.any() {
            self.timer = Some(Timer::new(timeouts, Arc::default()));
        }
        self
    }

    /// What the connection's service reports its requests to, when the
    /// connection has timeouts.
    pub(crate) fn activity(&self) -> Option<Arc<Activity>> {
        self.timer.as_ref().map(|t| t.activity.clone())
    }

    fn hermes(&self) -> &HermesStream {
        match &self.inner {
            Stream::Plain(s) => s,
            #[cfg(feature = "tls")]
            Stream::Tls(s) => s.get_ref().0,
        }
    }

    /// The worker that accepted the connection.
    pub fn worker_id(&self) -> usize {
        self.hermes().worker_id()
    }

    /// The TCP stream under the connection.
    pub fn tcp(&self) -> &tokio::net::TcpStream {
        self.hermes().get_ref()
    }

    /// Whether the connection is TLS.
    pub fn is_tls(&self) -> bool {
        match &self.inner {
            Stream::Plain(_) => false,
            #[cfg(feature = "tls")]
            Stream::Tls(_) => true,
        }
    }

    /// The TLS session (negotiated ALPN protocol, SNI name, client
    /// certificates), or `None` for plain HTTP.
    #[cfg(feature = "tls")]
    pub fn tls_session(&self) -> Option<&rustls::ServerConnection> {
        match &self.inner {
            Stream::Plain(_) => None,
            Stream::Tls(s) => Some(s.get_ref().1),
        }
    }
}

impl tonic::transport::server::Connected for Connection {
    type ConnectInfo = tonic::transport::server::TcpConnectInfo;

    /// The TCP addresses, as tonic gives them to `Request::remote_addr`.
    fn connect_info(&self) -> Self::ConnectInfo {
        self.tcp().connect_info()
    }
}

macro_rules! delegate {
    ($self:ident, $s:ident => $e:expr) => {
        match &mut $self.inner {
            Stream::Plain($s) => {
                let $s = Pin::new($s);
                $e
            }
            #[cfg(feature = "tls")]
            Stream::Tls($s) => {
                let $s = Pin::new(&mut **$s);
                $e
            }
        }
    };
}

impl AsyncRead for Connection {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let result = delegate!(this, s => s.poll_read(cx, buf));
        let Some(timer) = &mut this.timer else { return result };
        match result {
            Poll::Ready(Ok(())) if buf.filled().len() > before => timer.on_read(&buf.filled()[before..], cx),
            Poll::Pending => {
                if let Some(what) = timer.poll_expired(cx) {
                    tracing::debug!(worker = this.worker_id(), "{what}: closing the connection");
                    return Poll::Ready(Err(io::Error::new(io::ErrorKind::TimedOut, what)));
                }
            }
            Poll::Ready(_) => {}
        }
        result
    }
}

impl AsyncWrite for Connection {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let result = delegate!(this, s => s.poll_write(cx, buf));
        if let (Some(timer), Poll::Ready(Ok(n))) = (&mut this.timer, &result)
            && *n > 0
        {
            timer.on_write();
        }
        result
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        delegate!(this, s => s.poll_flush(cx))
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        delegate!(this, s => s.poll_shutdown(cx))
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let result = delegate!(this, s => s.poll_write_vectored(cx, bufs));
        if let (Some(timer), Poll::Ready(Ok(n))) = (&mut this.timer, &result)
            && *n > 0
        {
            timer.on_write();
        }
        result
    }

    fn is_write_vectored(&self) -> bool {
        match &self.inner {
            Stream::Plain(s) => s.is_write_vectored(),
            #[cfg(feature = "tls")]
            Stream::Tls(s) => s.is_write_vectored(),
        }
    }
}
