//! A small Redis-protocol (RESP2) server served straight from a
//! [`HermesListener`], without Tower or hyper: any Tokio server that accepts
//! from a listener can use Hermes dispatch.
//!
//! Frames are read and written by [`tokio_util::codec::Framed`] with the
//! RESP2 codec of the `redis-protocol` crate ([`Codec`] adds Redis' inline
//! commands, such as `PING` typed into telnet or redis-benchmark's
//! `PING_INLINE`). Commands: `PING`, `ECHO`, `SET`, `GET`, `INCR`, `DEL`,
//! `QUIT`, `CONFIG GET` (the two settings redis-benchmark asks for) and
//! `DEBUG SLEEP seconds` (which, unlike Redis, sleeps this connection only).
//!
//! - Pipelining: every command already read is answered before the replies
//!   are flushed, so the replies of one read batch leave in one write.
//! - Errors: an unknown command, a wrong number of arguments or a frame that
//!   is well-formed RESP but not a command is answered with a RESP error
//!   and the connection is kept; a malformed frame (or one over
//!   [`MAX_REQUEST`] bytes) is answered with `-ERR Protocol error: ...`
//!   and the connection is closed, as Redis does, since the byte stream
//!   cannot be resynchronised.
//! - Load signal: each command runs inside a
//!   [`hermes_runtime::context::InFlight`] guard, so the worker's
//!   `in_flight`, `requests` and `service_ns` count commands as the Tower
//!   layer counts HTTP requests.
//!
//! The keys live in one [`Store`] shared by every worker (an
//! `Arc<Mutex<HashMap>>`), so a `GET` sees a `SET` made on a connection that
//! landed on another worker, as with one Redis.

use std::{
    borrow::Cow,
    collections::HashMap,
    io,
    sync::{Arc, Mutex},
    time::Duration,
};

use bytes::{Buf, Bytes, BytesMut};
use futures::{FutureExt, SinkExt, StreamExt};
use hermes_runtime::{HermesListener, HermesStream, context, shutdown_signal};
use redis_protocol::{
    codec::Resp2,
    resp2::types::{BorrowedFrame, BytesFrame},
};
use tokio_util::codec::{Decoder, Encoder, Framed};

/// The keys and values, shared by every worker.
pub type Store = Arc<Mutex<HashMap<Bytes, Bytes>>>;

/// The largest request accepted, in bytes: a frame still incomplete past
/// this size is a protocol error (so a client announcing a huge bulk string
/// cannot make the server buffer without bound).
pub const MAX_REQUEST: usize = 16 << 20;
/// The longest inline command line, as in Redis.
const MAX_INLINE: usize = 64 << 10;
/// The longest `DEBUG SLEEP`.
const MAX_SLEEP: Duration = Duration::from_secs(60);

/// Accepts connections on `listener` until the worker drains and serves
/// each on its own task of the worker. Pass it to
/// [`hermes_runtime::Server::serve`].
pub async fn serve(mut listener: HermesListener, store: Store) {
    while let Some((stream, _peer)) = listener.accept_connection().await {
        let store = store.clone();
        tokio::task::spawn_local(async move {
            if let Err(e) = serve_connection(stream, store).await {
                tracing::debug!(error = %e, "redis connection ended");
            }
        });
    }
}

/// One request read from a client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Request {
    /// A command: its name and arguments (empty for an empty array or line,
    /// which is ignored, as Redis does).
    Command(Vec<Bytes>),
    /// A well-formed RESP frame that is not an array of bulk strings;
    /// answered with an error, the connection kept.
    NotACommand,
}

/// A reply, encoded by [`Codec`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reply {
    /// `+...`
    Simple(&'static str),
    /// `$n ...`
    Bulk(Bytes),
    /// `$-1`
    Null,
    /// `:n`
    Integer(i64),
    /// `*n` of bulk strings.
    Array(Vec<Bytes>),
    /// `-...` (the message includes its prefix, such as `ERR`).
    Error(Cow<'static, str>),
}

/// The RESP2 codec of `redis-protocol`, plus Redis' inline commands and a
/// bound on the size of one request.
#[derive(Debug, Default)]
pub struct Codec {
    resp: Resp2,
}

fn invalid(msg: impl Into<Box<dyn std::error::Error + Send + Sync>>) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg)
}

impl Decoder for Codec {
    type Item = Request;
    type Error = io::Error;

    fn decode(&mut self, src: &mut BytesMut) -> io::Result<Option<Request>> {
        let Some(&first) = src.first() else { return Ok(None) };
        // As in Redis: an array is a command in RESP, anything else an
        // inline command (a line of words).
        if first != b'*' {
            return decode_inline(src);
        }
        match self.resp.decode(src) {
            Ok(Some(BytesFrame::Array(items))) => {
                let mut args = Vec::with_capacity(items.len());
                for item in items {
                    match item {
                        BytesFrame::BulkString(arg) | BytesFrame::SimpleString(arg) => args.push(arg),
                        _ => return Ok(Some(Request::NotACommand)),
                    }
                }
                Ok(Some(Request::Command(args)))
            }
            // `*-1`, a null array: nothing to run.
            Ok(Some(BytesFrame::Null)) => Ok(Some(Request::Command(Vec::new()))),
            Ok(Some(_)) => Ok(Some(Request::NotACommand)),
            Ok(None) if src.len() > MAX_REQUEST => Err(invalid(format!("request over {MAX_REQUEST} bytes"))),
            Ok(None) => Ok(None),
            Err(e) => Err(invalid(e.details().to_owned())),
        }
    }
}

/// An inline command: one line of words separated by spaces.
fn decode_inline(src: &mut BytesMut) -> io::Result<Option<Request>> {
    let Some(end) = src.iter().position(|&b| b == b'\n') else {
        return if src.len() > MAX_INLINE { Err(invalid("too big inline request")) } else { Ok(None) };
    };
    let mut line = src.split_to(end + 1).freeze();
    line.truncate(end);
    if line.last() == Some(&b'\r') {
        line.truncate(end - 1);
    }
    let mut args = Vec::new();
    let mut rest = line;
    while !rest.is_empty() {
        let start = rest.iter().position(|b| !b.is_ascii_whitespace()).unwrap_or(rest.len());
        rest.advance(start);
        let len = rest.iter().position(u8::is_ascii_whitespace).unwrap_or(rest.len());
        if len > 0 {
            args.push(rest.split_to(len));
        }
    }
    Ok(Some(Request::Command(args)))
}

impl Encoder<&Reply> for Codec {
    type Error = io::Error;

    fn encode(&mut self, reply: &Reply, dst: &mut BytesMut) -> io::Result<()> {
        let array: Vec<BorrowedFrame<'_>>;
        let frame = match reply {
            Reply::Simple(s) => BorrowedFrame::SimpleString(s.as_bytes()),
            Reply::Bulk(b) => BorrowedFrame::BulkString(b),
            Reply::Null => BorrowedFrame::Null,
            Reply::Integer(n) => BorrowedFrame::Integer(*n),
            Reply::Array(items) => {
                array = items.iter().map(|b| BorrowedFrame::BulkString(b)).collect();
                BorrowedFrame::Array(&array)
            }
            Reply::Error(msg) => BorrowedFrame::Error(msg),
        };
        self.resp.encode(frame, dst).map_err(|e| io::Error::other(e.details().to_owned()))
    }
}

/// What the connection does after a command.
#[derive(Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Write this reply and go on.
    Reply(Reply),
    /// Write this reply, flush, and close the connection (`QUIT`).
    Close(Reply),
    /// Sleep this long, then reply `+OK` (`DEBUG SLEEP`).
    Sleep(Duration),
    /// Nothing to answer (an empty command).
    Nothing,
}

/// Serves one connection until the client quits or leaves, or the worker
/// drains (then it closes once the commands it has read are answered).
///
/// # Errors
/// The connection's I/O errors, and protocol errors (`InvalidData`, after
/// the client was sent the error).
pub async fn serve_connection(stream: HermesStream, store: Store) -> io::Result<()> {
    // The worker serving this connection (the task runs on its thread); each
    // command opens a guard on it.
    let worker = context::current();
    let mut framed = Framed::new(stream, Codec::default());
    let mut shutdown = std::pin::pin!(shutdown_signal());
    loop {
        // The next request from what was already read, if a whole one is
        // there (`now_or_never` polls once; reading the socket then returns
        // `WouldBlock`). Otherwise the batch is over: write its replies in
        // one go, then wait for more.
        let request = match framed.next().now_or_never() {
            Some(request) => request,
            None => {
                framed.flush().await?;
                tokio::select! {
                    request = framed.next() => request,
                    () = &mut shutdown => return Ok(()),
                }
            }
        };
        let request = match request {
            None => return framed.flush().await,
            Some(Ok(request)) => request,
            Some(Err(e)) if e.kind() == io::ErrorKind::InvalidData => {
                // Malformed: say why and close; what follows cannot be framed.
                let reply = Reply::Error(
                    format!("ERR Protocol error: {}", printable(e.to_string().as_bytes())).into(),
                );
                framed.send(&reply).await?;
                return Err(e);
            }
            Some(Err(e)) => return Err(e),
        };
        // One command, one guard: in flight from here until its reply is
        // queued, whether it completes, the task is cancelled, or it panics.
        let _in_flight = worker.as_ref().map(context::WorkerRef::request);
        let outcome = match request {
            Request::Command(args) => execute(&args, &store),
            Request::NotACommand => {
                Outcome::Reply(Reply::Error("ERR Protocol error: expected an array of bulk strings".into()))
            }
        };
        match outcome {
            Outcome::Reply(reply) => framed.feed(&reply).await?,
            Outcome::Sleep(duration) => {
                tokio::time::sleep(duration).await;
                framed.feed(&Reply::Simple("OK")).await?;
            }
            Outcome::Close(reply) => {
                framed.send(&reply).await?;
                return Ok(());
            }
            Outcome::Nothing => {}
        }
    }
}

/// A client's bytes made safe for an error line: no CR/LF, at most 128
/// characters.
fn printable(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).chars().take(128).map(|c| if c.is_control() { ' ' } else { c }).collect()
}

fn wrong_args(name: &[u8]) -> Outcome {
    let name = printable(name).to_lowercase();
    Outcome::Reply(Reply::Error(format!("ERR wrong number of arguments for '{name}' command").into()))
}

fn lock(store: &Store) -> std::sync::MutexGuard<'_, HashMap<Bytes, Bytes>> {
    store.lock().unwrap_or_else(|e| e.into_inner())
}

/// Runs one command (name and arguments) against `store`.
pub fn execute(command: &[Bytes], store: &Store) -> Outcome {
    let Some((name, args)) = command.split_first() else { return Outcome::Nothing };
    let is = |cmd: &str| name.eq_ignore_ascii_case(cmd.as_bytes());
    let reply = if is("PING") {
        match args {
            [] => Reply::Simple("PONG"),
            [message] => Reply::Bulk(message.clone()),
            _ => return wrong_args(name),
        }
    } else if is("ECHO") {
        let [message] = args else { return wrong_args(name) };
        Reply::Bulk(message.clone())
    } else if is("SET") {
        let [key, value] = args else { return wrong_args(name) };
        // Copied: the frame's bytes share the connection's read buffer,
        // which a stored slice would keep alive.
        lock(store).insert(Bytes::copy_from_slice(key), Bytes::copy_from_slice(value));
        Reply::Simple("OK")
    } else if is("GET") {
        let [key] = args else { return wrong_args(name) };
        lock(store).get(key).map_or(Reply::Null, |v| Reply::Bulk(v.clone()))
    } else if is("INCR") {
        let [key] = args else { return wrong_args(name) };
        let mut map = lock(store);
        let current = match map.get(key) {
            None => Some(0),
            Some(v) => std::str::from_utf8(v).ok().and_then(|s| s.parse::<i64>().ok()),
        };
        match current.and_then(|n| n.checked_add(1)) {
            Some(n) => {
                map.insert(Bytes::copy_from_slice(key), Bytes::from(n.to_string()));
                Reply::Integer(n)
            }
            None => Reply::Error("ERR value is not an integer or out of range".into()),
        }
    } else if is("DEL") {
        if args.is_empty() {
            return wrong_args(name);
        }
        let mut map = lock(store);
        Reply::Integer(args.iter().filter(|key| map.remove(*key).is_some()).count() as i64)
    } else if is("QUIT") {
        return Outcome::Close(Reply::Simple("OK"));
    } else if is("CONFIG") {
        match args {
            [sub, param] if sub.eq_ignore_ascii_case(b"GET") => {
                let value: &'static [u8] = if param.eq_ignore_ascii_case(b"save") {
                    b""
                } else if param.eq_ignore_ascii_case(b"appendonly") {
                    b"no"
                } else {
                    return Outcome::Reply(Reply::Array(Vec::new()));
                };
                Reply::Array(vec![param.clone(), Bytes::from_static(value)])
            }
            _ => Reply::Error("ERR only CONFIG GET save|appendonly is supported".into()),
        }
    } else if is("DEBUG") {
        match args {
            [sub, secs] if sub.eq_ignore_ascii_case(b"SLEEP") => {
                match std::str::from_utf8(secs)
                    .ok()
                    .and_then(|s| Duration::try_from_secs_f64(s.parse().ok()?).ok())
                {
                    Some(d) if d <= MAX_SLEEP => return Outcome::Sleep(d),
                    _ => Reply::Error("ERR DEBUG SLEEP takes 0 to 60 seconds".into()),
                }
            }
            _ => Reply::Error("ERR only DEBUG SLEEP is supported".into()),
        }
    } else {
        Reply::Error(format!("ERR unknown command '{}'", printable(name)).into())
    };
    Outcome::Reply(reply)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decode_all(input: &[u8]) -> (Vec<Request>, io::Result<Option<Request>>) {
        let mut codec = Codec::default();
        let mut buf = BytesMut::from(input);
        let mut out = Vec::new();
        loop {
            match codec.decode(&mut buf) {
                Ok(Some(r)) => out.push(r),
                other => return (out, other),
            }
        }
    }

    fn cmd(args: &[&str]) -> Request {
        Request::Command(args.iter().map(|a| Bytes::copy_from_slice(a.as_bytes())).collect())
    }

    #[test]
    fn reads_arrays_inline_commands_and_non_commands() {
        let (requests, end) = decode_all(
            b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$5\r\nva\r\nl\r\nPING  hi\r\n*1\r\n:1\r\n\r\n*2\r\n$3\r\nGE",
        );
        assert_eq!(
            requests,
            [cmd(&["SET", "k", "va\r\nl"]), cmd(&["PING", "hi"]), Request::NotACommand, cmd(&[])]
        );
        assert!(matches!(end, Ok(None)), "a cut frame waits for more: {end:?}");
    }

    #[test]
    fn refuses_malformed_and_oversized_frames() {
        let (_, end) = decode_all(b"*1\r\n$x\r\n");
        assert_eq!(end.unwrap_err().kind(), io::ErrorKind::InvalidData);
        let mut huge = b"*1\r\n$99999999999\r\n".to_vec();
        huge.resize(MAX_REQUEST + 1, b'a');
        let (_, end) = decode_all(&huge);
        assert_eq!(end.unwrap_err().kind(), io::ErrorKind::InvalidData);
        let (_, end) = decode_all(&vec![b'a'; MAX_INLINE + 1]);
        assert_eq!(end.unwrap_err().kind(), io::ErrorKind::InvalidData);
    }

    #[test]
    fn encodes_replies() {
        let mut codec = Codec::default();
        let mut buf = BytesMut::new();
        for reply in [
            Reply::Simple("OK"),
            Reply::Bulk(Bytes::from_static(b"v")),
            Reply::Null,
            Reply::Integer(-3),
            Reply::Array(vec![Bytes::from_static(b"save"), Bytes::new()]),
            Reply::Error("ERR nope".into()),
        ] {
            codec.encode(&reply, &mut buf).unwrap();
        }
        assert_eq!(&buf[..], b"+OK\r\n$1\r\nv\r\n$-1\r\n:-3\r\n*2\r\n$4\r\nsave\r\n$0\r\n\r\n-ERR nope\r\n");
    }

    #[test]
    fn commands() {
        let store = Store::default();
        let run = |args: &[&str]| {
            let args: Vec<Bytes> = args.iter().map(|a| Bytes::copy_from_slice(a.as_bytes())).collect();
            execute(&args, &store)
        };
        let reply = |r: Reply| Outcome::Reply(r);
        assert_eq!(run(&["GET", "k"]), reply(Reply::Null));
        assert_eq!(run(&["set", "k", "v"]), reply(Reply::Simple("OK")));
        assert_eq!(run(&["GET", "k"]), reply(Reply::Bulk(Bytes::from_static(b"v"))));
        assert_eq!(run(&["PING"]), reply(Reply::Simple("PONG")));
        assert_eq!(run(&["INCR", "n"]), reply(Reply::Integer(1)));
        assert_eq!(run(&["incr", "n"]), reply(Reply::Integer(2)));
        assert!(
            matches!(run(&["INCR", "k"]), Outcome::Reply(Reply::Error(e)) if e.contains("not an integer"))
        );
        assert_eq!(run(&["DEL", "k", "n", "missing"]), reply(Reply::Integer(2)));
        assert!(
            matches!(run(&["GET"]), Outcome::Reply(Reply::Error(e)) if e.starts_with("ERR wrong number"))
        );
        assert!(
            matches!(run(&["FLUSH\r\nALL"]), Outcome::Reply(Reply::Error(e)) if e == "ERR unknown command 'FLUSH  ALL'")
        );
        assert_eq!(run(&["DEBUG", "SLEEP", "0.25"]), Outcome::Sleep(Duration::from_millis(250)));
        assert_eq!(run(&["QUIT"]), Outcome::Close(Reply::Simple("OK")));
        assert_eq!(run(&[]), Outcome::Nothing);
    }
}
