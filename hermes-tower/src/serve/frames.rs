//! What a connection's timer reads of the bytes it receives ([`Wire`]):
//! whether the connection speaks HTTP/2 (its first 24 bytes are the
//! preface, which is how hyper decides too, with prior knowledge or after
//! ALPN `h2`), and then, frame by frame, whether a header block is open:
//! from the first byte of a HEADERS frame to the end of the frame that
//! carries END_HEADERS (RFC 9113, sections 3.4, 4.1 and 6.10). It looks at
//! each frame's 9-byte header and skips its payload, so it costs a few
//! instructions per frame, not per byte.

use tokio::time::Instant;

/// The HTTP/2 connection preface (RFC 9113, section 3.4).
pub(crate) const PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

const HEADERS: u8 = 0x1;
const CONTINUATION: u8 = 0x9;
const END_HEADERS: u8 = 0x4;

/// The protocol of a connection's bytes, as far as read.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Wire {
    /// Every byte so far (this many) was the HTTP/2 preface's.
    Sniffing(u8),
    /// HTTP/1: its heads are found by the requests they make.
    Http1,
    /// HTTP/2, after its preface.
    Http2(Frames),
}

impl Wire {
    pub(crate) fn new() -> Self {
        Self::Sniffing(0)
    }

    /// Takes bytes read at `now`.
    pub(crate) fn read(&mut self, mut bytes: &[u8], now: Instant) {
        if let Self::Sniffing(n) = self {
            let matched = usize::from(*n);
            let want = &PREFACE[matched..];
            let take = want.len().min(bytes.len());
            if bytes[..take] != want[..take] {
                *self = Self::Http1;
                return;
            }
            bytes = &bytes[take..];
            *self = if matched + take == PREFACE.len() {
                Self::Http2(Frames::default())
            } else {
                // `take` is below 24 here.
                Self::Sniffing(*n + take as u8)
            };
        }
        if let Self::Http2(frames) = self {
            frames.read(bytes, now);
        }
    }

    /// Whether the connection speaks HTTP/2 (its preface is complete).
    pub(crate) fn is_http2(&self) -> bool {
        matches!(self, Self::Http2(_))
    }

    /// When the header block open now began (HTTP/2).
    pub(crate) fn block_since(&self) -> Option<Instant> {
        match self {
            Self::Http2(frames) => frames.block_since,
            _ => None,
        }
    }
}

/// Where an HTTP/2 connection's bytes are: in a frame's header or its
/// payload, and whether a header block is open.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct Frames {
    /// Bytes of the current frame's 9-byte header read so far.
    header_read: u8,
    /// The current frame's length, type and flags, as read so far.
    length: u32,
    kind: u8,
    flags: u8,
    /// Payload bytes of the current frame still to come.
    payload_left: u32,
    /// When the current frame's first byte arrived.
    frame_began: Option<Instant>,
    /// When the header block open now began: the first byte of its HEADERS.
    block_since: Option<Instant>,
}

impl Frames {
    fn read(&mut self, mut bytes: &[u8], now: Instant) {
        while let Some((&first, rest)) = bytes.split_first() {
            if self.header_read < 9 {
                if self.header_read == 0 {
                    self.frame_began = Some(now);
                }
                match self.header_read {
                    0..=2 => self.length = (self.length << 8) | u32::from(first),
                    3 => {
                        self.kind = first;
                        // A request (or trailers) begins: the block is open
                        // from its frame's first byte.
                        if first == HEADERS && self.block_since.is_none() {
                            self.block_since = self.frame_began;
                        }
                    }
                    4 => self.flags = first,
                    _ => {}
                }
                self.header_read += 1;
                bytes = rest;
                if self.header_read == 9 {
                    self.header_done();
                }
            } else {
                // `payload_left` is at least 1 here.
                let skip = bytes.len().min(self.payload_left as usize);
                bytes = &bytes[skip..];
                self.payload_left -= skip as u32;
                if self.payload_left == 0 {
                    self.frame_done();
                }
            }
        }
    }

    fn header_done(&mut self) {
        self.payload_left = self.length;
        if self.payload_left == 0 {
            self.frame_done();
        }
    }

    fn frame_done(&mut self) {
        if matches!(self.kind, HEADERS | CONTINUATION) && self.flags & END_HEADERS != 0 {
            self.block_since = None;
        }
        *self = Self { block_since: self.block_since, ..Self::default() };
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use tokio::time::Instant;

    use super::{PREFACE, Wire};

    fn frame(kind: u8, flags: u8, payload: &[u8]) -> Vec<u8> {
        let mut f = (payload.len() as u32).to_be_bytes()[1..].to_vec();
        f.extend_from_slice(&[kind, flags, 0, 0, 0, 1]);
        f.extend_from_slice(payload);
        f
    }

    #[test]
    fn the_preface_makes_a_connection_http2_across_reads_and_anything_else_http1() {
        let now = Instant::now();
        let mut wire = Wire::new();
        wire.read(&PREFACE[..18], now);
        assert!(!wire.is_http2(), "the preface's own empty line is not its end");
        wire.read(&PREFACE[18..], now);
        assert!(wire.is_http2());
        let mut wire = Wire::new();
        wire.read(b"PRI * HTTP/1.1\r\n", now);
        assert!(matches!(wire, Wire::Http1));
        let mut wire = Wire::new();
        wire.read(b"GET / HTTP/1.1\r\n", now);
        assert!(matches!(wire, Wire::Http1));
    }

    #[test]
    fn a_header_block_is_open_from_its_headers_first_byte_to_the_end_of_its_last_frame() {
        let t0 = Instant::now();
        let t1 = t0 + Duration::from_millis(1);
        let mut wire = Wire::new();
        let mut bytes = PREFACE.to_vec();
        bytes.extend(frame(0x4, 0, &[]));
        bytes.extend(frame(0x6, 0, &[0; 8]));
        wire.read(&bytes, t0);
        assert_eq!(wire.block_since(), None, "SETTINGS and PING open no block");
        // HEADERS without END_HEADERS, its header split across reads.
        let headers = frame(0x1, 0x1, &[0x82, 0x86, 0x84]);
        wire.read(&headers[..2], t0);
        wire.read(&headers[2..], t1);
        assert_eq!(wire.block_since(), Some(t0), "open from the frame's first byte");
        // A CONTINUATION with END_HEADERS closes it once its payload is read.
        let continuation = frame(0x9, 0x4, &[0x87, 0x88]);
        wire.read(&continuation[..10], t1);
        assert_eq!(wire.block_since(), Some(t0), "the last frame's payload is not all read");
        wire.read(&continuation[10..], t1);
        assert_eq!(wire.block_since(), None);
        // HEADERS with END_HEADERS, then DATA in the same read.
        let mut both = frame(0x1, 0x4, &[0x82]);
        both.extend(frame(0x0, 0x1, b"body"));
        wire.read(&both, t1);
        assert_eq!(wire.block_since(), None);
        wire.read(&frame(0x1, 0x0, &[])[..5], t1);
        assert_eq!(wire.block_since(), Some(t1));
    }
}
