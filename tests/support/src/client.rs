//! hyper clients for tests that hold a connection and send their requests
//! on it one by one: a keep-alive HTTP/1.1 connection ([`h1`]) or an HTTP/2
//! one with prior knowledge ([`h2`]), over plain TCP or any stream (TLS).
//! Each connection is driven by a task of its own.

use std::net::SocketAddr;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper::client::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::{
    io::{AsyncRead, AsyncWrite},
    net::TcpStream,
};

/// The sending half of a keep-alive HTTP/1.1 connection.
pub type H1 = http1::SendRequest<Empty<Bytes>>;

/// The sending half of an HTTP/2 connection (clone it for concurrent streams).
pub type H2 = http2::SendRequest<Empty<Bytes>>;

/// An HTTP/1.1 handshake over `io`.
///
/// # Panics
/// When the handshake fails.
pub async fn h1_over<IO>(io: IO) -> H1
where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (sender, conn) = http1::handshake(TokioIo::new(io)).await.expect("HTTP/1 handshake");
    tokio::spawn(async move {
        let _ = conn.await;
    });
    sender
}

/// An HTTP/2 handshake over `io`.
///
/// # Panics
/// When the handshake fails.
pub async fn h2_over<IO>(io: IO) -> H2
where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (sender, conn) =
        http2::handshake(TokioExecutor::new(), TokioIo::new(io)).await.expect("HTTP/2 handshake");
    tokio::spawn(async move {
        let _ = conn.await;
    });
    sender
}

/// A keep-alive HTTP/1.1 connection to `addr`.
///
/// # Panics
/// When the connection or the handshake fails.
pub async fn h1(addr: SocketAddr) -> H1 {
    h1_over(TcpStream::connect(addr).await.expect("connect")).await
}

/// An HTTP/2 connection to `addr`, with prior knowledge.
///
/// # Panics
/// When the connection or the handshake fails.
pub async fn h2(addr: SocketAddr) -> H2 {
    h2_over(TcpStream::connect(addr).await.expect("connect")).await
}

/// A `GET` of `path` on the server at `addr`.
///
/// # Panics
/// When the request cannot be built (a malformed path).
pub fn get_request(addr: SocketAddr, path: &str) -> http::Request<Empty<Bytes>> {
    http::Request::get(format!("http://{addr}{path}")).body(Empty::new()).expect("request")
}

/// `GET path` on a connection once it is ready: the status and the body.
///
/// # Errors
/// The connection's (closed, reset, or the server dropped it).
pub async fn get_h1(sender: &mut H1, addr: SocketAddr, path: &str) -> Result<(u16, String), hyper::Error> {
    sender.ready().await?;
    let response = sender.send_request(get_request(addr, path)).await?;
    let status = response.status().as_u16();
    let body = response.into_body().collect().await?.to_bytes();
    Ok((status, String::from_utf8_lossy(&body).into_owned()))
}

/// `GET path` as a stream of an HTTP/2 connection: the body of its `200`.
///
/// # Panics
/// When the stream fails or the status is not 200.
pub async fn get_h2(mut sender: H2, addr: SocketAddr, path: &str) -> String {
    let response = sender.send_request(get_request(addr, path)).await.expect("stream");
    assert_eq!(response.status(), 200);
    let body = response.into_body().collect().await.expect("body").to_bytes();
    String::from_utf8_lossy(&body).into_owned()
}
