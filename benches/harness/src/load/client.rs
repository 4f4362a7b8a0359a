//! The HTTP client side: requests, HTTP/1.1 and HTTP/2 connections to the server, and one
//! request's exchange up to the serving worker's name.

use std::io;
use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper::Request;
use hyper::header::{CONNECTION, HOST, HeaderValue};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpStream;
use tokio::time::timeout;

use super::WORKER_HEADER;

/// The body of every request: none.
pub(super) type Body = Empty<Bytes>;

/// The sending half of an HTTP/1.1 client connection.
pub(super) type H1Sender = hyper::client::conn::http1::SendRequest<Body>;

/// The sending half of an HTTP/2 client connection.
pub(super) type H2Sender = hyper::client::conn::http2::SendRequest<Body>;

/// A GET of `path`; `h2` gives it an absolute URI, `close` asks the server to close the connection.
pub(super) fn request(addr: SocketAddr, path: &str, h2: bool, close: bool) -> Request<Body> {
    let mut builder = if h2 {
        Request::get(format!("http://{addr}{path}"))
    } else {
        Request::get(path).header(HOST, addr.to_string())
    };
    if close {
        builder = builder.header(CONNECTION, "close");
    }
    builder.body(Body::new()).expect("valid request")
}

async fn connect(addr: SocketAddr) -> io::Result<TcpStream> {
    let stream = TcpStream::connect(addr).await?;
    stream.set_nodelay(true)?;
    Ok(stream)
}

/// An HTTP/1.1 client connection.
pub(super) async fn h1_connect(addr: SocketAddr) -> Result<H1Sender, String> {
    let stream = connect(addr).await.map_err(|_| "connect".to_owned())?;
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|_| "handshake".to_owned())?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    Ok(sender)
}

/// An HTTP/2 prior-knowledge client connection.
pub(super) async fn h2_connect(addr: SocketAddr) -> Result<H2Sender, String> {
    let stream = connect(addr).await.map_err(|_| "connect".to_owned())?;
    let (sender, conn) = hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
        .await
        .map_err(|_| "h2 handshake".to_owned())?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    Ok(sender)
}

/// A keep-alive HTTP/1.1 client connection (its connection future runs as a task of its own).
#[derive(Debug)]
pub(super) struct Link {
    addr: SocketAddr,
    sender: H1Sender,
    /// Set when `send` opened a new connection (the server closed the last one, as a server that
    /// asks its clients to reconnect does); the caller takes it.
    pub(super) reopened: bool,
}

impl Link {
    pub(super) async fn open(addr: SocketAddr) -> Result<Link, String> {
        Ok(Link { addr, sender: h1_connect(addr).await?, reopened: false })
    }

    /// Sends one request once the connection is ready; returns the serving worker. When the server
    /// closed the connection after its last response (`Connection: close`), the request, not sent
    /// yet, goes on a new connection, as a pooled client (hyper-util's, reqwest) does.
    pub(super) async fn send(
        &mut self,
        req: Request<Body>,
        limit: Duration,
    ) -> Result<Option<HeaderValue>, String> {
        let work = async {
            if self.sender.ready().await.is_err() {
                self.sender = h1_connect(self.addr).await?;
                self.reopened = true;
                self.sender.ready().await.map_err(|_| "closed".to_owned())?;
            }
            exchange_untimed(self.sender.send_request(req)).await
        };
        timeout(limit, work).await.unwrap_or_else(|_| Err("timeout".to_owned()))
    }
}

/// Sends one request and reads the whole response; returns the serving worker.
pub(super) async fn exchange<F>(send: F, limit: Duration) -> Result<Option<HeaderValue>, String>
where
    F: Future<Output = hyper::Result<hyper::Response<hyper::body::Incoming>>>,
{
    match timeout(limit, exchange_untimed(send)).await {
        Ok(r) => r,
        Err(_) => Err("timeout".to_owned()),
    }
}

/// [`exchange`] without a time limit, for callers that set their own.
async fn exchange_untimed<F>(send: F) -> Result<Option<HeaderValue>, String>
where
    F: Future<Output = hyper::Result<hyper::Response<hyper::body::Incoming>>>,
{
    let resp = send.await.map_err(|_| "request".to_owned())?;
    let status = resp.status();
    let worker = resp.headers().get(WORKER_HEADER).cloned();
    resp.into_body().collect().await.map_err(|_| "body".to_owned())?;
    if status.is_success() { Ok(worker) } else { Err(format!("status {}", status.as_u16())) }
}

/// One GET on a fresh HTTP/1.1 connection, for probes and the stats endpoint; returns the body
/// and the worker that served it.
pub async fn get_once(
    addr: SocketAddr,
    path: &str,
    limit: Duration,
) -> Result<(String, Option<String>), String> {
    let work = async {
        let mut sender = h1_connect(addr).await?;
        let resp = sender.send_request(request(addr, path, false, true)).await.map_err(|e| e.to_string())?;
        let status = resp.status();
        let worker = resp.headers().get(WORKER_HEADER).and_then(|v| v.to_str().ok()).map(str::to_owned);
        let body = resp.into_body().collect().await.map_err(|e| e.to_string())?.to_bytes();
        if !status.is_success() {
            return Err(format!("status {}", status.as_u16()));
        }
        Ok((String::from_utf8(body.to_vec()).map_err(|e| e.to_string())?, worker))
    };
    timeout(limit, work).await.unwrap_or_else(|_| Err("timeout".to_owned()))
}
