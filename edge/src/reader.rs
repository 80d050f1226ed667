//! The read side of one connection: WebSocket frames (RFC 6455) parsed from the raw
//! socket into whole messages, bounded in total size across continuation frames. Text is
//! checked as UTF-8 as it arrives, so a message fails at its first invalid byte, even in
//! the middle of a frame; binary messages are refused unless the reader was made for
//! echo mode (the protocol speaks text only).
//!
//! fastwebsockets performs the upgrade handshake; framing is read here because an idle
//! socket must hold no read buffer (fastwebsockets keeps 8 KiB per connection). The
//! session waits for readiness without a buffer, then [`Reader::next`] borrows one from a
//! per-thread pool, reads until the socket would block, and gives the buffer back as soon
//! as everything in it is consumed. Only an incomplete frame keeps a buffer, and only a
//! fragmented message keeps its assembled prefix.
//!
//! Control frames are answered through the connection's outbound queue: a ping with a
//! pong, a valid close with the echo of its code. Every frame that breaks RFC 6455 or the
//! limits ends reading with a [`FrameError`] (its close code is chosen in
//! [`crate::error`]). The reader also knows since when it holds an unfinished frame or
//! fragmented message ([`Reader::unfinished_for`]), for the session's frame timeout,
//! and can drop unread input without framing ([`Reader::discard`]) so that closing after
//! a broken frame does not reset the connection.

use std::cell::RefCell;
use std::io;

use bytes::{Buf, Bytes, BytesMut};
use relaydesk_shared::CloseCode;
use std::time::Duration;
use tokio::net::TcpStream;

use crate::error::{peer_close, FrameError};
use crate::writer::Outbound;

/// Size of a pooled read buffer: one read takes up to this much.
const READ_CHUNK: usize = 8 * 1024;
/// Buffers kept per worker thread.
const POOL_MAX: usize = 256;

/// Why reading stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum End {
    /// Close the connection with this code.
    Close(CloseCode),
    /// The peer broke the framing or the limits: close with the error's code.
    Invalid(FrameError),
    /// A close was already requested elsewhere (drain, slow consumer, Redis down, heartbeat).
    Closing,
    /// The peer sent a close frame (its echo is queued).
    PeerClosed,
    /// The socket is gone.
    Gone,
}

impl From<FrameError> for End {
    fn from(e: FrameError) -> Self {
        End::Invalid(e)
    }
}

/// What [`Reader::discard`] left.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Discard {
    /// Nothing more to read for now: wait until the socket is readable.
    Pending,
    /// The stream ended, failed, or the budget is spent: stop reading.
    Ended,
}

thread_local! {
    static POOL: RefCell<Vec<BytesMut>> = const { RefCell::new(Vec::new()) };
}

fn pooled() -> BytesMut {
    POOL.with(|p| p.borrow_mut().pop())
        .unwrap_or_else(|| BytesMut::with_capacity(READ_CHUNK))
}

fn give_back(mut buf: BytesMut) {
    // A buffer grown for a large frame is not kept.
    if buf.capacity() > 2 * READ_CHUNK {
        return;
    }
    buf.clear();
    POOL.with(|p| {
        let mut p = p.borrow_mut();
        if p.len() < POOL_MAX {
            p.push(buf);
        }
    });
}

/// A parsed frame header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Header {
    fin: bool,
    opcode: u8,
    mask: [u8; 4],
    /// Header length in bytes.
    size: usize,
    /// Payload length in bytes.
    len: usize,
}

/// Parses the header at the start of `buf`: `Ok(None)` while it is incomplete. Client
/// frames must be masked, use no reserved bit or opcode, and announce their length in
/// its shortest encoding (RFC 6455 5.2), a 64-bit one with the most significant bit clear; control frames must be final and at most 125
/// bytes; a data frame may carry at most `max` bytes.
fn parse_header(buf: &[u8], max: usize) -> Result<Option<Header>, FrameError> {
    let [b0, b1, ..] = *buf else {
        return Ok(None);
    };
    if b0 & 0x70 != 0 {
        return Err(FrameError::ReservedBits);
    }
    let fin = b0 & 0x80 != 0;
    let opcode = b0 & 0x0f;
    if !matches!(opcode, 0x0..=0x2 | 0x8..=0xA) {
        return Err(FrameError::ReservedOpcode(opcode));
    }
    if b1 & 0x80 == 0 {
        return Err(FrameError::Unmasked);
    }
    let (len, at) = match b1 & 0x7f {
        126 => match buf.get(2..4) {
            Some(b) => match u16::from_be_bytes([b[0], b[1]]) {
                n if n < 126 => return Err(FrameError::LengthNotMinimal),
                n => (u64::from(n), 4),
            },
            None => return Ok(None),
        },
        127 => match buf.get(2..10) {
            Some(b) => {
                let mut a = [0u8; 8];
                a.copy_from_slice(b);
                let len = u64::from_be_bytes(a);
                if len >> 63 != 0 {
                    return Err(FrameError::LengthTopBit);
                }
                if len <= 0xffff {
                    return Err(FrameError::LengthNotMinimal);
                }
                (len, 10)
            }
            None => return Ok(None),
        },
        n => (u64::from(n), 2),
    };
    let Some(m) = buf.get(at..at + 4) else {
        return Ok(None);
    };
    let len = if opcode & 0x8 != 0 {
        if !fin || len > 125 {
            return Err(FrameError::BadControl);
        }
        len as usize
    } else {
        match usize::try_from(len) {
            Ok(l) if l <= max => l,
            _ => return Err(FrameError::TooLarge),
        }
    };
    Ok(Some(Header {
        fin,
        opcode,
        mask: [m[0], m[1], m[2], m[3]],
        size: at + 4,
        len,
    }))
}

/// A whole message read from the peer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    /// The payload, unmasked; valid UTF-8 unless `binary`.
    pub payload: Vec<u8>,
    /// A binary message (only from a reader that accepts them).
    pub binary: bool,
}

/// The end of a text message's bytes checked so far that begins a UTF-8 sequence the
/// next bytes must complete (at most 3 bytes, none of them 0, so 0 marks a free place),
/// so that text is checked as it arrives.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Utf8Tail([u8; 3]);

impl Utf8Tail {
    fn len(&self) -> usize {
        self.0.iter().take_while(|&&b| b != 0).count()
    }

    /// Checks `data`, the next bytes of the message: `Err` at the first byte that no
    /// valid UTF-8 text can have there.
    fn feed(&mut self, mut data: &[u8]) -> Result<(), FrameError> {
        let n = self.len();
        if n > 0 {
            // The sequence's length, from its first byte (one that `from_utf8` left
            // incomplete, so 0xC2..=0xF4).
            let width = match self.0[0] {
                0xC0..=0xDF => 2,
                0xE0..=0xEF => 3,
                _ => 4,
            };
            let take = (width - n).min(data.len());
            let mut seq = [0u8; 4];
            seq[..n].copy_from_slice(&self.0[..n]);
            seq[n..n + take].copy_from_slice(&data[..take]);
            match std::str::from_utf8(&seq[..n + take]) {
                Ok(_) => *self = Utf8Tail::default(),
                Err(e) if e.error_len().is_none() => {
                    // Still incomplete, and `data` is all taken.
                    self.0[..n + take].copy_from_slice(&seq[..n + take]);
                    return Ok(());
                }
                Err(_) => return Err(FrameError::TextUtf8),
            }
            data = &data[take..];
        }
        match std::str::from_utf8(data) {
            Ok(_) => Ok(()),
            Err(e) if e.error_len().is_none() => {
                let rest = &data[e.valid_up_to()..];
                self.0[..rest.len()].copy_from_slice(rest);
                Ok(())
            }
            Err(_) => Err(FrameError::TextUtf8),
        }
    }
}

/// A message being assembled from continuation frames. Boxed in [`Reader`]: fragmented
/// messages are rare (clients send each message in one frame) and every connection's
/// state stays small.
#[derive(Debug)]
struct Partial {
    payload: Vec<u8>,
    binary: bool,
}

/// The read state of one connection.
#[derive(Debug)]
pub struct Reader {
    /// Bytes read but not yet consumed; `None` whenever everything read was consumed.
    input: Option<BytesMut>,
    /// The message being assembled from continuation frames.
    partial: Option<Box<Partial>>,
    /// Since when `input` has held an unfinished frame or `partial` a message, in ms on
    /// [`crate::writer::clock_ms`] (truncated to 32 bits, never 0); 0 while the reader
    /// holds nothing unfinished. 32-bit fields keep every connection's state small.
    since: u32,
    /// Largest whole message, in bytes.
    max: u32,
    /// Payload bytes of the frame at the front of `input` already unmasked in place (and
    /// checked, in a text message), while that frame is incomplete.
    scanned: u32,
    /// The unfinished UTF-8 sequence at the end of the text checked so far.
    utf8: Utf8Tail,
    /// Binary messages are taken (echo mode only).
    binary: bool,
}

/// [`crate::writer::clock_ms`] truncated to 32 bits (it wraps after 49 days: only
/// differences are used), never 0.
fn clock32() -> u32 {
    (crate::writer::clock_ms() as u32).max(1)
}

impl Reader {
    /// A reader of messages up to `max` bytes, text only unless `binary`; `early` is what
    /// the HTTP layer read past the upgrade request, if anything.
    pub fn new(max: usize, binary: bool, early: Bytes) -> Self {
        let input = (!early.is_empty()).then(|| {
            let mut b = pooled();
            b.extend_from_slice(&early);
            b
        });
        Reader {
            input,
            partial: None,
            since: 0,
            max: u32::try_from(max).unwrap_or(u32::MAX),
            scanned: 0,
            utf8: Utf8Tail::default(),
            binary,
        }
    }

    /// How long the reader has been holding an unfinished frame or fragmented message
    /// (since it found it unfinished), if it is.
    pub fn unfinished_for(&self) -> Option<Duration> {
        (self.since != 0)
            .then(|| Duration::from_millis(u64::from(clock32().wrapping_sub(self.since))))
    }

    /// Drops unread input, then reads and drops what the socket holds, without framing,
    /// at most `budget` bytes in all (what was dropped is taken off it). For the end of a
    /// connection whose framing broke: closing a socket with unread input resets it, and
    /// the reset can destroy the close frame before the peer reads it.
    pub fn discard(&mut self, io: &TcpStream, budget: &mut usize) -> Discard {
        self.partial = None;
        self.since = 0;
        self.scanned = 0;
        self.utf8 = Utf8Tail::default();
        let mut buf = self.input.take().unwrap_or_else(pooled);
        let end = loop {
            *budget = budget.saturating_sub(buf.len());
            buf.clear();
            if *budget == 0 {
                break Discard::Ended;
            }
            match io.try_read_buf(&mut buf) {
                Ok(0) => break Discard::Ended,
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break Discard::Pending,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => break Discard::Ended,
            }
        };
        give_back(buf);
        end
    }

    /// The next complete message, reading from `io` as needed; `Ok(None)` when the
    /// socket has nothing more for now (wait for it to be readable).
    pub fn next(&mut self, io: &TcpStream, out: &Outbound) -> Result<Option<Message>, End> {
        loop {
            if let Some(msg) = self.parse(out)? {
                return Ok(Some(msg));
            }
            let buf = self.input.get_or_insert_with(pooled);
            if buf.capacity() - buf.len() < READ_CHUNK / 4 {
                buf.reserve(READ_CHUNK);
            }
            match io.try_read_buf(buf) {
                Ok(0) => return Err(End::Gone),
                Ok(_) => out.touch(),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    if buf.is_empty() {
                        if let Some(b) = self.input.take() {
                            give_back(b);
                        }
                    }
                    if self.since == 0 && (self.input.is_some() || self.partial.is_some()) {
                        self.since = clock32();
                    }
                    return Ok(None);
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => return Err(End::Gone),
            }
        }
    }

    /// Consumes complete frames from the input; returns the first complete message. An
    /// incomplete frame is unmasked in place as far as it arrived and, in a text message,
    /// checked as UTF-8, so that invalid text fails before its frame is whole.
    fn parse(&mut self, out: &Outbound) -> Result<Option<Message>, End> {
        loop {
            let Some(buf) = self.input.as_mut() else {
                return Ok(None);
            };
            let assembled = self.partial.as_ref().map_or(0, |p| p.payload.len());
            let max = usize::try_from(self.max).unwrap_or(usize::MAX);
            let Some(h) = parse_header(buf, max.saturating_sub(assembled))? else {
                return Ok(None);
            };
            // Whether the frame carries text, known from its header: a frame out of the
            // message sequence fails before its payload arrives.
            let text = match h.opcode {
                0x1 | 0x2 if self.partial.is_some() => return Err(FrameError::Interleaved.into()),
                0x0 if self.partial.is_none() => return Err(FrameError::StrayContinuation.into()),
                0x2 if !self.binary => return Err(FrameError::Binary.into()),
                0x0 => self.partial.as_ref().is_some_and(|p| !p.binary),
                op => op == 0x1,
            };
            let scanned = self.scanned as usize;
            let have = (buf.len() - h.size).min(h.len);
            if have > scanned {
                let new = &mut buf[h.size + scanned..h.size + have];
                unmask_at(new, h.mask, scanned);
                if text {
                    self.utf8.feed(new)?;
                }
                // At most the frame's length, which the limit (a u32) bounds.
                self.scanned = have as u32;
            }
            if have < h.len {
                // Make room for the whole frame so it arrives in few reads.
                buf.reserve(h.size + h.len - buf.len());
                return Ok(None);
            }
            self.scanned = 0;
            buf.advance(h.size);
            let payload = &buf[..h.len];
            let done = match h.opcode {
                0x1 | 0x2 if h.fin => Some((payload.to_vec(), h.opcode == 0x2)),
                0x1 | 0x2 => {
                    self.partial = Some(Box::new(Partial {
                        payload: payload.to_vec(),
                        binary: h.opcode == 0x2,
                    }));
                    None
                }
                0x0 => match self.partial.as_mut() {
                    Some(msg) => {
                        msg.payload.extend_from_slice(payload);
                        if h.fin {
                            self.partial.take().map(|m| (m.payload, m.binary))
                        } else {
                            None
                        }
                    }
                    None => None,
                },
                0x8 => {
                    out.close_echo(peer_close(payload)?);
                    return Err(End::PeerClosed);
                }
                0x9 => {
                    out.pong(Bytes::copy_from_slice(payload));
                    None
                }
                // 0xA: parse_header lets no other opcode through.
                _ => None,
            };
            buf.advance(h.len);
            if buf.is_empty() {
                if let Some(b) = self.input.take() {
                    give_back(b);
                }
            }
            if let Some((payload, binary)) = done {
                self.since = 0;
                // Text must not end inside a UTF-8 sequence.
                if std::mem::take(&mut self.utf8) != Utf8Tail::default() {
                    return Err(FrameError::TextUtf8.into());
                }
                return Ok(Some(Message { payload, binary }));
            }
            // A control frame outside a fragmented message: nothing is unfinished any
            // more. A fragmented message stays unfinished, from its first frame on.
            if self.partial.is_none() {
                self.since = 0;
            }
        }
    }
}

/// Unmasks `data`, the payload bytes of a frame from offset `at` on, in place.
fn unmask_at(data: &mut [u8], mask: [u8; 4], at: usize) {
    let mut m = mask;
    m.rotate_left(at % 4);
    fastwebsockets::unmask(data, m);
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A masked client frame.
    fn frame(fin: bool, opcode: u8, payload: &[u8]) -> Vec<u8> {
        let mask = [1, 2, 3, 4];
        let mut f = vec![(u8::from(fin) << 7) | opcode];
        match payload.len() {
            n if n < 126 => f.push(0x80 | n as u8),
            n if n <= 0xffff => {
                f.push(0x80 | 126);
                f.extend_from_slice(&(n as u16).to_be_bytes());
            }
            n => {
                f.push(0x80 | 127);
                f.extend_from_slice(&(n as u64).to_be_bytes());
            }
        }
        f.extend_from_slice(&mask);
        f.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
        f
    }

    async fn pair() -> (TcpStream, TcpStream) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let client = TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let (server, _) = listener.accept().await.unwrap();
        (client, server)
    }

    /// Everything the reader makes of `bytes` (sent at once), up to its first error.
    async fn read_all(bytes: Vec<u8>, max: usize) -> (Vec<String>, Option<End>, Outbound) {
        use tokio::io::AsyncWriteExt;
        let (mut client, server) = pair().await;
        client.write_all(&bytes).await.unwrap();
        client.shutdown().await.unwrap();
        let out = Outbound::new(1 << 20);
        let mut r = Reader::new(max, false, Bytes::new());
        let mut msgs = Vec::new();
        loop {
            match r.next(&server, &out) {
                Ok(Some(m)) => msgs.push(String::from_utf8(m.payload).unwrap()),
                Ok(None) => server.readable().await.unwrap(),
                Err(End::Gone) => return (msgs, None, out),
                Err(e) => return (msgs, Some(e), out),
            }
        }
    }

    #[tokio::test]
    async fn whole_and_fragmented_messages_with_control_frames_between() {
        let mut b = frame(true, 1, b"hello");
        b.extend(frame(false, 1, b"ab"));
        b.extend(frame(true, 9, b"p"));
        b.extend(frame(false, 0, b"cd"));
        b.extend(frame(true, 0, b"ef"));
        b.extend(frame(true, 1, &vec![b'z'; 70_000]));
        let (msgs, end, out) = read_all(b, 100_000).await;
        assert_eq!(msgs.len(), 3);
        assert_eq!(msgs[..2], ["hello", "abcdef"]);
        assert_eq!(msgs[2].len(), 70_000);
        assert_eq!(end, None);
        assert!(!out.is_closing());
    }

    #[tokio::test]
    async fn the_bound_holds_across_fragments() {
        let mut b = frame(false, 1, &[b'a'; 60]);
        b.extend(frame(false, 0, &[b'b'; 60]));
        let (msgs, end, _) = read_all(b, 100).await;
        assert!(msgs.is_empty());
        assert_eq!(end, Some(End::Invalid(FrameError::TooLarge)));
        let (_, end, _) = read_all(frame(true, 1, &[b'a'; 101]), 100).await;
        assert_eq!(end, Some(End::Invalid(FrameError::TooLarge)));
    }

    #[tokio::test]
    async fn protocol_errors_are_told_apart() {
        let err = |e| Some(End::Invalid(e));
        let unmasked = vec![0x81, 0x01, b'a'];
        assert_eq!(read_all(unmasked, 100).await.1, err(FrameError::Unmasked));
        let binary = frame(true, 2, b"x");
        assert_eq!(read_all(binary, 100).await.1, err(FrameError::Binary));
        let bad_utf8 = frame(true, 1, &[0xff, 0xfe]);
        assert_eq!(read_all(bad_utf8, 100).await.1, err(FrameError::TextUtf8));
        let stray = frame(true, 0, b"x");
        let end = read_all(stray, 100).await.1;
        assert_eq!(end, err(FrameError::StrayContinuation));
        let rsv = {
            let mut f = frame(true, 1, b"x");
            f[0] |= 0x40;
            f
        };
        assert_eq!(read_all(rsv, 100).await.1, err(FrameError::ReservedBits));
        let long_ping = frame(true, 9, &[0; 126]);
        assert_eq!(
            read_all(long_ping, 1000).await.1,
            err(FrameError::BadControl)
        );
        for op in [3, 7, 0xB, 0xF] {
            let end = read_all(frame(true, op, b"x"), 100).await.1;
            assert_eq!(end, err(FrameError::ReservedOpcode(op)));
        }
        // A 64-bit length with its top bit set is malformed, not merely too large.
        let mut top = vec![0x81, 0x80 | 127];
        top.extend_from_slice(&(1u64 << 63 | 5).to_be_bytes());
        top.extend_from_slice(&[1, 2, 3, 4]);
        assert_eq!(read_all(top, 100).await.1, err(FrameError::LengthTopBit));
        // A length must use its shortest encoding: 5 in 16 bits, 300 in 64 bits.
        let mut long16 = vec![0x81, 0x80 | 126, 0, 5];
        long16.extend_from_slice(&[1, 2, 3, 4]);
        let end = read_all(long16, 100).await.1;
        assert_eq!(end, err(FrameError::LengthNotMinimal));
        let mut long64 = vec![0x81, 0x80 | 127];
        long64.extend_from_slice(&300u64.to_be_bytes());
        long64.extend_from_slice(&[1, 2, 3, 4]);
        let end = read_all(long64, 1000).await.1;
        assert_eq!(end, err(FrameError::LengthNotMinimal));
        // A new data frame inside a fragmented text message, binary or text.
        for op in [1, 2] {
            let mut b = frame(false, 1, b"ab");
            b.extend(frame(true, op, b"x"));
            assert_eq!(read_all(b, 100).await.1, err(FrameError::Interleaved));
        }
    }

    #[tokio::test]
    async fn text_is_checked_across_fragments_split_anywhere() {
        // "κόσμε" and a 4-byte character, one byte per frame.
        let text = "κόσμε 𝄞".as_bytes();
        let mut b = frame(false, 1, &text[..1]);
        for (i, byte) in text[1..].iter().enumerate() {
            b.extend(frame(i + 2 == text.len(), 0, &[*byte]));
        }
        let (msgs, end, _) = read_all(b, 100).await;
        assert_eq!((msgs, end), (vec!["κόσμε 𝄞".to_owned()], None));
        // A message must not end inside a sequence, even when each frame is fine alone.
        let mut b = frame(false, 1, b"a\xce");
        b.extend(frame(true, 0, b""));
        let end = read_all(b, 100).await.1;
        assert_eq!(end, Some(End::Invalid(FrameError::TextUtf8)));
        // U+110000 and a surrogate, each split over two frames.
        for bad in [&[0xf4, 0x90, 0x80, 0x80][..], &[0xed, 0xa0, 0x80]] {
            let mut b = frame(false, 1, &bad[..1]);
            b.extend(frame(true, 0, &bad[1..]));
            let end = read_all(b, 100).await.1;
            assert_eq!(end, Some(End::Invalid(FrameError::TextUtf8)));
        }
    }

    #[tokio::test]
    async fn invalid_text_fails_before_its_frame_is_whole() {
        use tokio::io::AsyncWriteExt;
        let (mut client, server) = pair().await;
        let out = Outbound::new(1024);
        let mut r = Reader::new(1000, false, Bytes::new());
        let mut payload = "κόσμε".as_bytes().to_vec();
        payload.extend_from_slice(&[0xf4, 0x90, 0x80, 0x80]);
        payload.extend_from_slice(&[b'x'; 200]);
        let f = frame(true, 1, &payload);
        // The header and the valid text (up to the middle of a character): no error.
        client.write_all(&f[..8 + 5]).await.unwrap();
        server.readable().await.unwrap();
        assert_eq!(r.next(&server, &out), Ok(None));
        // The invalid character, with most of the frame still to come.
        client.write_all(&f[8 + 5..8 + 13]).await.unwrap();
        let end = loop {
            server.readable().await.unwrap();
            match r.next(&server, &out) {
                Ok(None) => {}
                other => break other,
            }
        };
        assert_eq!(end, Err(End::Invalid(FrameError::TextUtf8)));
    }

    #[tokio::test]
    async fn an_echo_reader_takes_binary_messages_whole_or_fragmented() {
        use tokio::io::AsyncWriteExt;
        let (mut client, server) = pair().await;
        let mut b = frame(true, 2, &[0xff, 0x00]);
        b.extend(frame(false, 2, &[0xfe]));
        b.extend(frame(true, 9, b""));
        b.extend(frame(true, 0, &[0xfd]));
        b.extend(frame(true, 1, b"t"));
        client.write_all(&b).await.unwrap();
        client.shutdown().await.unwrap();
        let out = Outbound::new(1024);
        let mut r = Reader::new(100, true, Bytes::new());
        let mut msgs = Vec::new();
        loop {
            match r.next(&server, &out) {
                Ok(Some(m)) => msgs.push(m),
                Ok(None) => server.readable().await.unwrap(),
                Err(e) => {
                    assert_eq!(e, End::Gone);
                    break;
                }
            }
        }
        let msg = |payload: &[u8], binary| Message {
            payload: payload.to_vec(),
            binary,
        };
        let want = [
            msg(&[0xff, 0], true),
            msg(&[0xfe, 0xfd], true),
            msg(b"t", false),
        ];
        assert_eq!(msgs, want);
    }

    #[test]
    fn utf8_tails_carry_only_unfinished_sequences() {
        let mut t = Utf8Tail::default();
        // "€" (e2 82 ac) fed a byte at a time, then an ASCII byte.
        for b in [0xe2, 0x82] {
            assert_eq!(t.feed(&[b]), Ok(()));
        }
        assert_eq!(t.len(), 2);
        assert_eq!(t.feed(&[0xac, b'a']), Ok(()));
        assert_eq!(t, Utf8Tail::default());
        // An overlong encoding fails at its first byte, a bad continuation at once.
        assert_eq!(Utf8Tail::default().feed(&[0xc0]), Err(FrameError::TextUtf8));
        let mut t = Utf8Tail::default();
        assert_eq!(t.feed(&[0xe2]), Ok(()));
        assert_eq!(t.feed(&[0x41]), Err(FrameError::TextUtf8));
    }

    #[tokio::test]
    async fn a_valid_close_is_echoed_an_invalid_one_refused() {
        let (msgs, end, out) = read_all(frame(true, 8, &4000u16.to_be_bytes()), 100).await;
        assert!(msgs.is_empty());
        assert_eq!(end, Some(End::PeerClosed));
        assert_eq!(out.close_code(), Some(4000));
        let (_, end, out) = read_all(frame(true, 8, &[]), 100).await;
        assert_eq!(end, Some(End::PeerClosed));
        assert_eq!(out.close_code(), Some(1005));
        let (_, end, out) = read_all(frame(true, 8, &1005u16.to_be_bytes()), 100).await;
        assert_eq!(end, Some(End::Invalid(FrameError::InvalidCloseCode(1005))));
        assert_eq!(out.close_code(), None);
        let (_, end, _) = read_all(frame(true, 8, &[3]), 100).await;
        assert_eq!(end, Some(End::Invalid(FrameError::CloseTooShort)));
        let (_, end, _) = read_all(frame(true, 8, &[3, 232, 0xc3]), 100).await;
        assert_eq!(end, Some(End::Invalid(FrameError::CloseReasonUtf8)));
    }

    #[tokio::test]
    async fn an_unfinished_frame_or_message_is_timed_until_it_completes() {
        use tokio::io::AsyncWriteExt;
        let (mut client, server) = pair().await;
        let out = Outbound::new(1024);
        let mut r = Reader::new(100, false, Bytes::new());
        let first = frame(false, 1, b"ab");
        let ping = frame(true, 9, b"p");
        let last = frame(true, 0, b"cd");
        // Half a frame: unfinished from then on.
        client.write_all(&first[..3]).await.unwrap();
        server.readable().await.unwrap();
        assert_eq!(r.next(&server, &out).unwrap(), None);
        let since = r.since;
        assert_ne!(since, 0);
        assert!(r.unfinished_for().is_some());
        // The frame completes, but the message it begins does not, even past a ping.
        client.write_all(&first[3..]).await.unwrap();
        client.write_all(&ping).await.unwrap();
        while r.input.is_some() || r.partial.is_none() {
            server.readable().await.unwrap();
            assert_eq!(r.next(&server, &out).unwrap(), None);
        }
        assert_eq!(r.since, since);
        client.write_all(&last).await.unwrap();
        let msg = loop {
            server.readable().await.unwrap();
            if let Some(m) = r.next(&server, &out).unwrap() {
                break m;
            }
        };
        assert_eq!(msg.payload, b"abcd");
        assert_eq!(r.unfinished_for(), None);
    }

    #[tokio::test]
    async fn discard_drops_input_up_to_the_end_of_the_stream_or_the_budget() {
        use tokio::io::AsyncWriteExt;
        let (mut client, server) = pair().await;
        let out = Outbound::new(1024);
        let mut r = Reader::new(100, false, Bytes::new());
        let mut big = frame(true, 1, &[b'x'; 5000]);
        big.truncate(3000);
        client.write_all(&big).await.unwrap();
        let end = loop {
            server.readable().await.unwrap();
            match r.next(&server, &out) {
                Ok(None) => {}
                other => break other,
            }
        };
        assert_eq!(end, Err(End::Invalid(FrameError::TooLarge)));
        client.write_all(&[0; 2000]).await.unwrap();
        client.shutdown().await.unwrap();
        let mut budget = 1 << 20;
        while r.discard(&server, &mut budget) == Discard::Pending {
            server.readable().await.unwrap();
        }
        assert_eq!(budget, (1 << 20) - 5000);
        assert!(r.input.is_none());

        let (mut client, server) = pair().await;
        client.write_all(&[0; 3000]).await.unwrap();
        let mut budget = 1000;
        while r.discard(&server, &mut budget) == Discard::Pending {
            server.readable().await.unwrap();
        }
        assert_eq!(budget, 0);
    }

    #[tokio::test]
    async fn an_idle_reader_holds_no_buffer() {
        use tokio::io::AsyncWriteExt;
        let (mut client, server) = pair().await;
        let out = Outbound::new(1024);
        let mut r = Reader::new(100, false, Bytes::new());
        let f = frame(true, 1, b"hi");
        // Half a frame: the buffer is kept for the rest.
        client.write_all(&f[..3]).await.unwrap();
        server.readable().await.unwrap();
        while r.next(&server, &out).unwrap().is_some() {}
        assert!(r.input.is_some());
        client.write_all(&f[3..]).await.unwrap();
        let msg = loop {
            server.readable().await.unwrap();
            if let Some(m) = r.next(&server, &out).unwrap() {
                break m;
            }
        };
        assert_eq!(msg.payload, b"hi");
        assert!(r.next(&server, &out).unwrap().is_none());
        assert!(r.input.is_none());
    }

    mod properties {
        //! Property tests of the frame header parser (a bounded fuzz run in every
        //! `cargo xtask test`): arbitrary input never panics nor claims bytes it does not
        //! have, and every well-formed client frame parses back to what was encoded.
        use super::super::*;
        use super::frame;
        use proptest::prelude::*;

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(2_000))]

            #[test]
            fn arbitrary_bytes_never_panic_nor_overrun(
                buf in proptest::collection::vec(any::<u8>(), 0..32),
                max in 0usize..100_000,
            ) {
                if let Ok(Some(h)) = parse_header(&buf, max) {
                    prop_assert!(h.size <= buf.len());
                    prop_assert!(matches!(h.size, 6 | 8 | 14));
                    if h.opcode & 0x8 == 0 {
                        prop_assert!(h.len <= max);
                    } else {
                        prop_assert!(h.len <= 125 && h.fin);
                    }
                }
            }

            #[test]
            fn well_formed_frames_parse_back(
                fin in any::<bool>(),
                opcode in prop_oneof![Just(0u8), Just(1), Just(2)],
                len in prop_oneof![0usize..126, 126usize..70_000],
            ) {
                let f = frame(fin, opcode, &vec![b'x'; len]);
                let h = parse_header(&f, 100_000).unwrap().unwrap();
                prop_assert_eq!((h.fin, h.opcode, h.len), (fin, opcode, len));
                prop_assert_eq!(h.size + len, f.len());
                // Every proper prefix of the header is incomplete, not an error.
                for cut in 0..h.size {
                    prop_assert_eq!(parse_header(&f[..cut], 100_000), Ok(None));
                }
            }
        }
    }
}
