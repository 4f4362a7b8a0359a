//! HTTP/1.1 over real loopback sockets: a whole response read async
//! ([`get_path`]), or parsed on a blocking socket ([`get`], [`send`],
//! [`read_response`]) for keep-alive connections held by the test.

use std::{
    io::{self, Read, Write},
    net::{SocketAddr, TcpStream},
    time::Duration,
};

use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Sends `GET path` on a new connection (`Connection: close`) and returns the
/// whole response, head and body.
///
/// # Panics
/// When the connection, the write or the read fails.
pub async fn get_path(addr: SocketAddr, path: &str) -> String {
    let mut conn = tokio::net::TcpStream::connect(addr).await.expect("connect to the server");
    let request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    conn.write_all(request.as_bytes()).await.expect("send request");
    let mut response = String::new();
    conn.read_to_string(&mut response).await.expect("read response");
    response
}

/// A parsed response.
#[derive(Debug)]
pub struct Resp {
    /// The status code.
    pub status: u16,
    /// The `x-hermes-worker` header, when present.
    pub worker: Option<usize>,
    /// The body (by `Content-Length`).
    pub body: String,
    /// Every header, names lowercased, in the order received.
    pub headers: Vec<(String, String)>,
}

impl Resp {
    /// The first value of header `name` (lowercase).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
    }
}

/// Sends a GET of `path` on `stream`.
///
/// # Errors
/// The write's.
pub fn send(stream: &mut TcpStream, path: &str, keep_alive: bool) -> io::Result<()> {
    let conn = if keep_alive { "keep-alive" } else { "close" };
    write!(stream, "GET {path} HTTP/1.1\r\nHost: test\r\nConnection: {conn}\r\n\r\n")
}

/// Reads one response (headers, then a `Content-Length` body).
///
/// # Errors
/// The read's, `UnexpectedEof` when the connection closes first, and a bad
/// status line.
pub fn read_response(stream: &mut TcpStream) -> io::Result<Resp> {
    let mut buf = Vec::new();
    let mut byte = [0u8; 1];
    while !buf.ends_with(b"\r\n\r\n") {
        if stream.read(&mut byte)? == 0 {
            return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "connection closed before a response"));
        }
        buf.push(byte[0]);
    }
    let head = String::from_utf8_lossy(&buf).to_string();
    let mut lines = head.split("\r\n");
    let status = lines
        .next()
        .and_then(|l| l.split(' ').nth(1))
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| io::Error::other(format!("bad status line in {head:?}")))?;
    let mut worker = None;
    let mut len = 0usize;
    let mut headers = Vec::new();
    for l in lines {
        if let Some((k, v)) = l.split_once(':') {
            let (k, v) = (k.to_ascii_lowercase(), v.trim());
            match k.as_str() {
                "x-hermes-worker" => worker = v.parse().ok(),
                "content-length" => len = v.parse().unwrap_or(0),
                _ => {}
            }
            headers.push((k, v.to_owned()));
        }
    }
    let mut body = vec![0u8; len];
    stream.read_exact(&mut body)?;
    Ok(Resp { status, worker, body: String::from_utf8_lossy(&body).into(), headers })
}

/// One GET on a fresh blocking connection, with a 10 s read timeout.
///
/// # Errors
/// The connection's, the write's and [`read_response`]'s.
pub fn get(addr: SocketAddr, path: &str) -> io::Result<Resp> {
    get_within(addr, path, Duration::from_secs(10))
}

/// One GET on a fresh blocking connection, whose reads time out after
/// `timeout` (a `WouldBlock` or `TimedOut` error then).
///
/// # Errors
/// The connection's, the write's and [`read_response`]'s.
pub fn get_within(addr: SocketAddr, path: &str, timeout: Duration) -> io::Result<Resp> {
    let mut s = TcpStream::connect(addr)?;
    s.set_read_timeout(Some(timeout))?;
    send(&mut s, path, false)?;
    read_response(&mut s)
}

/// `/_hermes/stats` of the server at `addr`, parsed; `None` when the
/// request fails or is not answered 200 (under load, a request placed on a
/// worker's blocking pool answers 503: ask again).
///
/// # Panics
/// When a 200 answer is not JSON.
pub fn stats(addr: SocketAddr) -> Option<serde_json::Value> {
    let resp = get(addr, "/_hermes/stats").ok()?;
    (resp.status == 200).then(|| serde_json::from_str(&resp.body).expect("stats JSON"))
}
