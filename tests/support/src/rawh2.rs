//! A raw HTTP/2 client for the tests that need frames a real client never
//! sends alone: a connection that only pings, a header block left open, a
//! preface and nothing after. Blocking, over any `Read + Write` (a TCP
//! stream, a rustls `StreamOwned`); the caller sets the read timeout.

use std::{
    collections::VecDeque,
    io::{self, ErrorKind, Read, Write},
    time::{Duration, Instant},
};

/// The client connection preface (RFC 9113, section 3.4).
pub const PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// Frame types used here.
pub mod kind {
    /// DATA.
    pub const DATA: u8 = 0x0;
    /// HEADERS.
    pub const HEADERS: u8 = 0x1;
    /// SETTINGS.
    pub const SETTINGS: u8 = 0x4;
    /// PING.
    pub const PING: u8 = 0x6;
    /// CONTINUATION.
    pub const CONTINUATION: u8 = 0x9;
}

/// ACK, on SETTINGS and PING.
pub const ACK: u8 = 0x1;
/// END_STREAM, on HEADERS and DATA.
pub const END_STREAM: u8 = 0x1;
/// END_HEADERS, on HEADERS and CONTINUATION.
pub const END_HEADERS: u8 = 0x4;

/// `:method GET`, `:scheme http`, `:path /` as an HPACK block of
/// static-table entries: a request head hyper accepts (with END_HEADERS).
pub const GET_ROOT: [u8; 3] = [0x82, 0x86, 0x84];

/// `:method GET`, `:scheme http` and `:path` as an HPACK block (the path a
/// literal without indexing, at most 127 bytes).
pub fn get_block(path: &str) -> Vec<u8> {
    let len = u8::try_from(path.len()).ok().filter(|l| *l < 0x80).expect("a path of at most 127 bytes");
    let mut block = vec![0x82, 0x86, 0x04, len];
    block.extend_from_slice(path.as_bytes());
    block
}

/// One frame: its 9-byte header and `payload`.
pub fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let len = u32::try_from(payload.len()).expect("a frame's payload fits in 24 bits");
    let mut f = Vec::with_capacity(9 + payload.len());
    f.extend_from_slice(&len.to_be_bytes()[1..]);
    f.extend_from_slice(&[kind, flags]);
    f.extend_from_slice(&(stream & 0x7fff_ffff).to_be_bytes());
    f.extend_from_slice(payload);
    f
}

/// A frame read from the server.
#[derive(Debug)]
pub struct Frame {
    /// Its type.
    pub kind: u8,
    /// Its flags.
    pub flags: u8,
    /// Its stream.
    pub stream: u32,
    /// Its payload.
    pub payload: Vec<u8>,
}

/// Whether `e` says the server closed (or reset) the connection, rather
/// than that the read timed out.
pub fn is_closed(e: &io::Error) -> bool {
    !matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut)
}

/// A blocking HTTP/2 client connection that sends what the test says.
#[derive(Debug)]
pub struct RawH2<S> {
    io: S,
    /// Bytes read, short of a whole frame (kept across read timeouts).
    partial: Vec<u8>,
    /// Frames read while waiting for a PING's ACK, for [`RawH2::read_frame`].
    held: VecDeque<Frame>,
}

/// How long the handshake and a PING's answer may take, over read timeouts
/// (a loaded test machine is slow, not closed).
const PATIENCE: Duration = Duration::from_secs(10);

impl<S: Read + Write> RawH2<S> {
    /// A connection over `io` with nothing sent yet (not even the preface).
    pub fn new(io: S) -> Self {
        Self { io, partial: Vec::new(), held: VecDeque::new() }
    }

    /// Sends the preface and an empty SETTINGS frame, reads the server's
    /// frames up to its SETTINGS (over read timeouts, up to 10 s) and
    /// acknowledges them: an HTTP/2 connection with no stream open.
    ///
    /// # Errors
    /// The reads' and writes' (`UnexpectedEof` when the server closes).
    pub fn handshake(mut io: S) -> io::Result<Self> {
        io.write_all(PREFACE)?;
        io.write_all(&frame(kind::SETTINGS, 0, 0, &[]))?;
        let mut conn = Self::new(io);
        loop {
            let f = conn.read_patiently()?;
            if f.kind == kind::SETTINGS && f.flags & ACK == 0 {
                conn.send(&frame(kind::SETTINGS, ACK, 0, &[]))?;
                return Ok(conn);
            }
        }
    }

    /// The stream under the connection.
    pub fn get_ref(&self) -> &S {
        &self.io
    }

    /// The stream under the connection, to change its settings.
    pub fn get_mut(&mut self) -> &mut S {
        &mut self.io
    }

    /// Sends `bytes` as they are (frames, or part of one).
    ///
    /// # Errors
    /// The write's.
    pub fn send(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.io.write_all(bytes)?;
        self.io.flush()
    }

    /// Reads the next frame (those a [`RawH2::ping`] read past first),
    /// within one read timeout of the stream; a frame cut by the timeout is
    /// kept for the next read.
    ///
    /// # Errors
    /// The read's: `UnexpectedEof` when the server closed the connection,
    /// `WouldBlock` or `TimedOut` when the read timeout passed.
    pub fn read_frame(&mut self) -> io::Result<Frame> {
        if let Some(f) = self.held.pop_front() {
            return Ok(f);
        }
        self.read_wire()
    }

    fn read_wire(&mut self) -> io::Result<Frame> {
        loop {
            if let Some(f) = self.take_frame() {
                return Ok(f);
            }
            let mut buf = [0u8; 4096];
            match self.io.read(&mut buf)? {
                0 => return Err(ErrorKind::UnexpectedEof.into()),
                n => self.partial.extend_from_slice(&buf[..n]),
            }
        }
    }

    /// Reads from the wire over read timeouts, up to [`PATIENCE`].
    fn read_patiently(&mut self) -> io::Result<Frame> {
        let start = Instant::now();
        loop {
            match self.read_wire() {
                Err(e) if !is_closed(&e) && start.elapsed() < PATIENCE => {}
                other => return other,
            }
        }
    }

    /// The first whole frame of the bytes read, if there is one.
    fn take_frame(&mut self) -> Option<Frame> {
        let head: [u8; 9] = self.partial.get(..9)?.try_into().ok()?;
        let len = u32::from_be_bytes([0, head[0], head[1], head[2]]) as usize;
        let payload = self.partial.get(9..9 + len)?.to_vec();
        self.partial.drain(..9 + len);
        let stream = u32::from_be_bytes([head[5], head[6], head[7], head[8]]) & 0x7fff_ffff;
        Some(Frame { kind: head[3], flags: head[4], stream, payload })
    }

    /// Sends a PING and reads frames up to its ACK (over read timeouts, up
    /// to 10 s); the others are kept for [`RawH2::read_frame`].
    ///
    /// # Errors
    /// As [`RawH2::read_frame`], but for read timeouts within those 10 s.
    pub fn ping(&mut self) -> io::Result<()> {
        let data = *b"hermes!!";
        self.send(&frame(kind::PING, 0, 0, &data))?;
        loop {
            let f = self.read_patiently()?;
            if f.kind == kind::PING && f.flags & ACK != 0 && f.payload == data {
                return Ok(());
            }
            self.held.push_back(f);
        }
    }

    /// Pings, each ping answered before the next and one read timeout of
    /// the stream apart, until the server closes the connection or `limit`
    /// passes; how long after `since` it closed, or `None` when still open.
    /// A close between pings is seen at once (the wait is a read).
    pub fn ping_until_closed(&mut self, limit: Duration, since: Instant) -> Option<Duration> {
        while since.elapsed() < limit {
            if let Err(e) = self.ping() {
                return is_closed(&e).then(|| since.elapsed());
            }
            // Waits a read timeout for anything but the ping's answer: a close.
            match self.read_frame() {
                Err(e) if is_closed(&e) => return Some(since.elapsed()),
                _ => {}
            }
        }
        None
    }

    /// Reads (and drops) frames until the server closes the connection or
    /// `limit` passes; how long after `since` it closed, or `None`.
    pub fn closed_within(&mut self, limit: Duration, since: Instant) -> Option<Duration> {
        while since.elapsed() < limit {
            match self.read_frame() {
                Err(e) if is_closed(&e) => return Some(since.elapsed()),
                _ => {}
            }
        }
        None
    }
}
