//! A small Redis-protocol (RESP2) server with `PING`, `SET`, `GET` and
//! `QUIT`, served straight from a [`HermesListener`], without Tower or
//! hyper: any Tokio server that accepts from a listener can use Hermes
//! dispatch.
//!
//! The keys live in one [`Store`] shared by every worker (an
//! `Arc<Mutex<HashMap>>`), so a `GET` sees a `SET` made on a connection that
//! landed on another worker, as with one Redis.

use std::{
    collections::HashMap,
    io,
    sync::{Arc, Mutex},
};

use hermes_runtime::{HermesListener, HermesStream, shutdown_signal};
use tokio::io::{AsyncBufRead, AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};

/// The keys and values, shared by every worker.
pub type Store = Arc<Mutex<HashMap<Vec<u8>, Vec<u8>>>>;

/// The longest bulk string accepted (larger ones close the connection).
const MAX_BULK: usize = 1 << 20;
/// The most arguments of one command.
const MAX_ARGS: usize = 1024;

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

/// Serves one connection until the client quits or leaves, or the worker
/// drains (then it closes between two commands).
///
/// # Errors
/// The connection's I/O errors and protocol errors (`InvalidData`).
pub async fn serve_connection(stream: HermesStream, store: Store) -> io::Result<()> {
    let mut stream = BufReader::new(stream);
    let mut shutdown = std::pin::pin!(shutdown_signal());
    loop {
        let command = tokio::select! {
            command = read_command(&mut stream) => command?,
            () = &mut shutdown => return Ok(()),
        };
        let Some(command) = command else { return Ok(()) };
        let (reply, quit) = execute(&command, &store);
        stream.get_mut().write_all(&reply).await?;
        if quit {
            return Ok(());
        }
    }
}

fn invalid(msg: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg.to_owned())
}

/// Reads one line without its `\r\n`; `None` at the end of the stream.
async fn read_line<R: AsyncBufRead + Unpin>(r: &mut R) -> io::Result<Option<Vec<u8>>> {
    let mut line = Vec::new();
    if (&mut *r).take(MAX_BULK as u64).read_until(b'\n', &mut line).await? == 0 {
        return Ok(None);
    }
    if !line.ends_with(b"\n") {
        return Err(invalid("line too long or cut"));
    }
    line.pop();
    if line.ends_with(b"\r") {
        line.pop();
    }
    Ok(Some(line))
}

fn parse_len(digits: &[u8], max: usize) -> io::Result<usize> {
    std::str::from_utf8(digits)
        .ok()
        .and_then(|s| s.parse::<usize>().ok())
        .filter(|&n| n <= max)
        .ok_or_else(|| invalid("bad length"))
}

/// Reads one command: a RESP array of bulk strings (what clients send) or
/// an inline command (`PING` typed into telnet). `None` at the end of the
/// stream.
///
/// # Errors
/// I/O errors, and `InvalidData` for a malformed or oversized command.
pub async fn read_command<R: AsyncBufRead + Unpin>(r: &mut R) -> io::Result<Option<Vec<Vec<u8>>>> {
    let Some(line) = read_line(r).await? else { return Ok(None) };
    let Some(count) = line.strip_prefix(b"*") else {
        let args = line.split(|b| b.is_ascii_whitespace()).filter(|a| !a.is_empty()).map(<[u8]>::to_vec);
        return Ok(Some(args.collect()));
    };
    let count = parse_len(count, MAX_ARGS)?;
    let mut args = Vec::with_capacity(count);
    for _ in 0..count {
        let header = read_line(r).await?.ok_or_else(|| invalid("cut command"))?;
        let len =
            parse_len(header.strip_prefix(b"$").ok_or_else(|| invalid("expected a bulk string"))?, MAX_BULK)?;
        let mut arg = vec![0; len + 2];
        r.read_exact(&mut arg).await?;
        if !arg.ends_with(b"\r\n") {
            return Err(invalid("bulk string without its CRLF"));
        }
        arg.truncate(len);
        args.push(arg);
    }
    Ok(Some(args))
}

fn bulk(value: &[u8]) -> Vec<u8> {
    let mut out = format!("${}\r\n", value.len()).into_bytes();
    out.extend_from_slice(value);
    out.extend_from_slice(b"\r\n");
    out
}

fn error(msg: &str) -> Vec<u8> {
    format!("-ERR {msg}\r\n").into_bytes()
}

/// Runs one command and returns its encoded reply, and whether the
/// connection should close after it.
pub fn execute(command: &[Vec<u8>], store: &Store) -> (Vec<u8>, bool) {
    let Some((name, args)) = command.split_first() else { return (Vec::new(), false) };
    let reply = match (name.to_ascii_uppercase().as_slice(), args) {
        (b"PING", []) => b"+PONG\r\n".to_vec(),
        (b"PING", [message]) => bulk(message),
        (b"SET", [key, value]) => {
            store.lock().unwrap_or_else(|e| e.into_inner()).insert(key.clone(), value.clone());
            b"+OK\r\n".to_vec()
        }
        (b"GET", [key]) => match store.lock().unwrap_or_else(|e| e.into_inner()).get(key) {
            Some(value) => bulk(value),
            None => b"$-1\r\n".to_vec(),
        },
        (b"QUIT", []) => return (b"+OK\r\n".to_vec(), true),
        (b"PING" | b"SET" | b"GET" | b"QUIT", _) => error(&format!(
            "wrong number of arguments for '{}' command",
            String::from_utf8_lossy(name).to_lowercase()
        )),
        _ => error(&format!("unknown command '{}'", String::from_utf8_lossy(name))),
    };
    (reply, false)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn reads_arrays_and_inline_commands() {
        let mut input: &[u8] = b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$5\r\nva\r\nl\r\nPING  hi\r\n";
        let set = read_command(&mut input).await.unwrap().unwrap();
        assert_eq!(set, [b"SET".to_vec(), b"k".to_vec(), b"va\r\nl".to_vec()]);
        let ping = read_command(&mut input).await.unwrap().unwrap();
        assert_eq!(ping, [b"PING".to_vec(), b"hi".to_vec()]);
        assert!(read_command(&mut input).await.unwrap().is_none());
    }

    #[tokio::test]
    async fn refuses_an_oversized_bulk_string() {
        let mut input: &[u8] = b"*1\r\n$99999999999\r\n";
        let e = read_command(&mut input).await.unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::InvalidData);
    }

    #[test]
    fn set_then_get() {
        let store = Store::default();
        let cmd = |args: &[&str]| {
            execute(&args.iter().map(|a| a.as_bytes().to_vec()).collect::<Vec<_>>(), &store).0
        };
        assert_eq!(cmd(&["GET", "k"]), b"$-1\r\n");
        assert_eq!(cmd(&["set", "k", "v"]), b"+OK\r\n");
        assert_eq!(cmd(&["GET", "k"]), b"$1\r\nv\r\n");
        assert_eq!(cmd(&["PING"]), b"+PONG\r\n");
        assert!(cmd(&["GET"]).starts_with(b"-ERR wrong number"));
        assert!(cmd(&["FLUSHALL"]).starts_with(b"-ERR unknown command"));
    }
}
