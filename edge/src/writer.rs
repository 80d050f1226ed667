//! The outbound path of one connection: a queue bounded in bytes ([`Outbound`], shared by
//! the hub, the session and the egress dispatcher), the coalescing socket writer
//! ([`Writer`]) the session task drives, and the edge-wide heartbeat ([`run_heartbeats`]).
//!
//! Frames are queued as shared `Bytes` (serialized once for every local recipient); the
//! writer encodes the few header bytes of each on the stack and writes everything queued
//! with one vectored write, so a connection costs one syscall per burst, not per frame.
//! Exceeding the byte bound closes the connection with 4008 (slow consumer). A close frame
//! is always the last frame written.
//!
//! Heartbeats are one task per edge, not a timer per socket: each tick pings a slice of
//! the connections and closes (1001) those silent for two intervals.

use std::collections::VecDeque;
use std::io::{self, IoSlice};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant};

use bytes::Bytes;
use relaydesk_shared::CloseCode;
use std::task::{Context, Poll};

use futures::task::AtomicWaker;
use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;

use crate::Ctx;

/// WebSocket opcodes the edge writes.
const OP_TEXT: u8 = 0x1;
const OP_BINARY: u8 = 0x2;
const OP_CLOSE: u8 = 0x8;
const OP_PING: u8 = 0x9;
const OP_PONG: u8 = 0xA;
/// Frames per vectored write (two slices each; well under `IOV_MAX`).
const FRAMES_PER_WRITE: usize = 64;
/// Frames per vectored write when that few are queued (the common case).
const SMALL_BATCH: usize = 4;
/// Vectored writes per [`Writer::flush`] call before yielding to other connections.
const WRITES_PER_FLUSH: usize = 16;
/// Longest frame header (2 + 8 length bytes) plus room for a close code.
const HEADER_MAX: usize = 12;

/// One item of the outbound queue.
#[derive(Debug)]
enum Out {
    Text(Bytes),
    /// Only in echo mode (`crate::echo`): the protocol speaks text.
    Binary(Bytes),
    Ping,
    Pong(Bytes),
    /// The close frame with this code: always last.
    Close(u16),
}

impl Out {
    /// Writes the frame header (and a close frame's code) into `buf`; returns its length
    /// and the payload that follows it.
    fn encode<'a>(&'a self, buf: &mut [u8; HEADER_MAX]) -> (usize, &'a [u8]) {
        match self {
            Out::Text(b) => (header(OP_TEXT, b.len(), buf), b),
            Out::Binary(b) => (header(OP_BINARY, b.len(), buf), b),
            Out::Ping => (header(OP_PING, 0, buf), &[]),
            Out::Pong(b) => (header(OP_PONG, b.len(), buf), b),
            Out::Close(code) => {
                let n = header(OP_CLOSE, 2, buf);
                buf[n..n + 2].copy_from_slice(&code.to_be_bytes());
                (n + 2, &[])
            }
        }
    }
}

/// An unmasked, final server frame header for `len` payload bytes.
fn header(opcode: u8, len: usize, buf: &mut [u8; HEADER_MAX]) -> usize {
    buf[0] = 0x80 | opcode;
    if len < 126 {
        buf[1] = len as u8;
        2
    } else if let Ok(len) = u16::try_from(len) {
        buf[1] = 126;
        buf[2..4].copy_from_slice(&len.to_be_bytes());
        4
    } else {
        buf[1] = 127;
        buf[2..10].copy_from_slice(&(len as u64).to_be_bytes());
        10
    }
}

#[derive(Debug, Default)]
struct State {
    queue: VecDeque<Out>,
    /// Bytes of data frames queued or being written.
    bytes: usize,
    /// The close frame to write once the queue is empty.
    close: Option<u16>,
    /// The close code of this connection (sent by us, or echoed from the peer).
    code: Option<u16>,
    /// The queue was dropped for a close: the writer drops what it holds too.
    discard: bool,
    /// The session ended: write nothing more than a pending close.
    finished: bool,
}

struct Inner {
    state: Mutex<State>,
    /// The connection's task, woken when something was queued or a close was requested
    /// (`woken` says so until the task sees it). No waiting future holds state.
    waker: AtomicWaker,
    woken: AtomicBool,
    /// A close was requested or the session ended.
    closing: AtomicBool,
    /// When the peer last sent anything, in ms on [`clock_ms`].
    seen_ms: AtomicU64,
    limit: usize,
}

/// Handle on the outbound queue of one connection. Cheap to clone.
#[derive(Clone)]
pub struct Outbound {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Outbound {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Outbound")
            .field("limit", &self.inner.limit)
            .finish()
    }
}

/// Milliseconds since the first call in this process: a cheap clock for liveness.
pub(crate) fn clock_ms() -> u64 {
    static START: OnceLock<Instant> = OnceLock::new();
    let start = START.get_or_init(Instant::now);
    u64::try_from(start.elapsed().as_millis()).unwrap_or(u64::MAX)
}

impl Outbound {
    /// A queue that holds at most `limit` bytes of data frames.
    pub fn new(limit: usize) -> Self {
        Outbound {
            inner: Arc::new(Inner {
                state: Mutex::new(State::default()),
                waker: AtomicWaker::new(),
                woken: AtomicBool::new(false),
                closing: AtomicBool::new(false),
                seen_ms: AtomicU64::new(clock_ms()),
                limit,
            }),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding this lock cannot leave the queue inconsistent.
        self.inner.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Queues a text frame (already serialized JSON). Returns false when the connection
    /// is closing; closes it with 4008 when the bound would be exceeded.
    pub fn send(&self, frame: Bytes) -> bool {
        self.push_data(Out::Text(frame))
    }

    /// Queues a binary frame, like [`Outbound::send`] (echo mode only).
    pub fn send_binary(&self, frame: Bytes) -> bool {
        self.push_data(Out::Binary(frame))
    }

    fn push_data(&self, item: Out) -> bool {
        let (Out::Text(frame) | Out::Binary(frame)) = &item else {
            return false;
        };
        let len = frame.len();
        let mut s = self.lock();
        if s.close.is_some() || s.finished {
            return false;
        }
        if s.bytes.saturating_add(len) > self.inner.limit {
            drop(s);
            metrics::counter!("relaydesk_edge_slow_consumer_closes_total").increment(1);
            self.close_discarding(CloseCode::SlowConsumer);
            return false;
        }
        s.bytes += len;
        let wake = s.queue.is_empty();
        s.queue.push_back(item);
        drop(s);
        if wake {
            self.wake();
        }
        true
    }

    /// Queues a WebSocket ping.
    pub fn ping(&self) {
        self.push_control(Out::Ping);
    }

    /// Queues a pong answering a ping.
    pub fn pong(&self, payload: Bytes) {
        self.push_control(Out::Pong(payload));
    }

    fn push_control(&self, item: Out) {
        let mut s = self.lock();
        if s.close.is_some() || s.finished {
            return;
        }
        s.queue.push_back(item);
        drop(s);
        self.wake();
    }

    /// Closes after everything already queued has been written.
    pub fn close(&self, code: CloseCode) {
        self.set_close(code.code(), code.code(), false);
    }

    /// Closes now: drops everything queued, then writes the close frame.
    pub fn close_discarding(&self, code: CloseCode) {
        self.set_close(code.code(), code.code(), true);
    }

    /// Answers the peer's close frame with its code, which the reader checked
    /// (`crate::error::peer_close`), or 1000 when it gave none. The connection's code is
    /// the peer's (1005, "no status", when it gave none: recorded, never sent).
    pub fn close_echo(&self, code: Option<u16>) {
        let send = code.unwrap_or(CloseCode::Normal.code());
        self.set_close(code.unwrap_or(1005), send, false);
    }

    /// Records `code` as the connection's close code (unless one is set) and queues a
    /// close frame carrying `send`.
    fn set_close(&self, code: u16, send: u16, discard: bool) {
        let mut s = self.lock();
        if s.code.is_none() {
            s.code = Some(code);
        }
        if s.close.is_none() && !s.finished {
            if discard {
                s.queue.clear();
                s.bytes = 0;
                s.discard = true;
            }
            s.close = Some(send);
        }
        drop(s);
        self.inner.closing.store(true, Ordering::Release);
        self.wake();
    }

    /// The session is over (the peer is gone or the close handshake ended): nothing more
    /// is queued.
    pub fn finish(&self, code_if_unset: u16) {
        let mut s = self.lock();
        if s.code.is_none() {
            s.code = Some(code_if_unset);
        }
        s.finished = true;
        s.queue.clear();
        s.bytes = 0;
        drop(s);
        self.inner.closing.store(true, Ordering::Release);
        self.wake();
    }

    /// The close code, once a close was requested or received.
    pub fn close_code(&self) -> Option<u16> {
        self.lock().code
    }

    /// Whether a close was requested (by us or the peer) or the session ended.
    pub fn is_closing(&self) -> bool {
        self.inner.closing.load(Ordering::Acquire)
    }

    fn wake(&self) {
        self.inner.woken.store(true, Ordering::Release);
        self.inner.waker.wake();
    }

    /// Ready when something was queued or a close was requested since it was last ready.
    /// Only the connection's own task polls it.
    pub fn poll_woken(&self, cx: &mut Context<'_>) -> Poll<()> {
        if self.inner.woken.swap(false, Ordering::AcqRel) {
            return Poll::Ready(());
        }
        self.inner.waker.register(cx.waker());
        if self.inner.woken.swap(false, Ordering::AcqRel) {
            return Poll::Ready(());
        }
        Poll::Pending
    }

    /// Bytes of text frames queued or being written.
    #[cfg(test)]
    pub fn queued_bytes(&self) -> usize {
        self.lock().bytes
    }

    /// Records that the peer sent something.
    pub fn touch(&self) {
        self.inner.seen_ms.store(clock_ms(), Ordering::Relaxed);
    }

    /// Time since the peer last sent anything.
    pub fn silent_for(&self) -> Duration {
        let seen = self.inner.seen_ms.load(Ordering::Relaxed);
        Duration::from_millis(clock_ms().saturating_sub(seen))
    }

    /// Moves everything queued to the end of `into`, the close frame last once nothing
    /// precedes it. Returns true when the queue had been discarded since the last call.
    fn take_into(&self, into: &mut VecDeque<Out>) -> bool {
        let mut s = self.lock();
        let discard = std::mem::take(&mut s.discard);
        if into.is_empty() {
            // Hand over the allocation instead of copying; the queue starts empty again.
            std::mem::swap(into, &mut s.queue);
        } else {
            into.extend(s.queue.drain(..));
        }
        if let Some(code) = s.close.take() {
            into.push_back(Out::Close(code));
            s.finished = true;
        }
        discard
    }

    fn written(&self, n: usize) {
        if n > 0 {
            let mut s = self.lock();
            s.bytes = s.bytes.saturating_sub(n);
        }
    }

    /// Test helper: the text frames queued so far, removed from the queue.
    #[cfg(test)]
    pub fn drain_texts(&self) -> Vec<Bytes> {
        let mut s = self.lock();
        let mut out = Vec::new();
        for item in s.queue.drain(..) {
            if let Out::Text(b) = item {
                out.push(b);
            }
        }
        s.bytes = 0;
        out
    }
}

/// What a [`Writer::flush`] left.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flushed {
    /// Everything queued is written.
    Idle,
    /// More is queued: call again (after letting others run).
    More,
    /// The socket is full: wait until it is writable.
    Blocked,
    /// The close frame is written: nothing more will be.
    Closed,
}

/// The write side of one connection, driven by its session task. Holds frames only while
/// they are being written; an idle connection's writer owns no allocation.
#[derive(Debug, Default)]
pub struct Writer {
    pending: VecDeque<Out>,
    /// Bytes of `pending[0]`'s encoded frame already written.
    head: usize,
}

impl Writer {
    /// Writes what is queued on `out` with as few (vectored) writes as possible.
    pub fn flush(&mut self, io: &TcpStream, out: &Outbound) -> io::Result<Flushed> {
        for _ in 0..WRITES_PER_FLUSH {
            if out.take_into(&mut self.pending) {
                // The queue was dropped for a close: so is what this writer holds, but a
                // frame already partly on the wire is finished, or the stream breaks.
                let keep = usize::from(self.head > 0);
                let mut i = 0;
                self.pending.retain(|o| {
                    i += 1;
                    i <= keep || matches!(o, Out::Close(_))
                });
            }
            if self.pending.is_empty() {
                // Give back the queue's allocation while idle.
                self.pending = VecDeque::new();
                return Ok(Flushed::Idle);
            }
            // Stack arrays sized for the batch: most flushes carry a frame or two, and a
            // 64-frame set of arrays would be zeroed for each of them.
            let done = if self.pending.len() <= SMALL_BATCH {
                self.write_batch::<SMALL_BATCH, { SMALL_BATCH * 2 }>(io, out)?
            } else {
                self.write_batch::<FRAMES_PER_WRITE, { FRAMES_PER_WRITE * 2 }>(io, out)?
            };
            if let Some(flushed) = done {
                return Ok(flushed);
            }
        }
        Ok(Flushed::More)
    }

    /// One vectored write of up to `N` queued frames (`S` = 2 `N` slices), then drops
    /// what was written from the queue. `Some` when the flush ends here.
    fn write_batch<const N: usize, const S: usize>(
        &mut self,
        io: &TcpStream,
        out: &Outbound,
    ) -> io::Result<Option<Flushed>> {
        let n = self.pending.len().min(N);
        // Encoded frame lengths, kept past the write (the slices borrow the queue).
        let mut lens = [0usize; N];
        let written = {
            let mut headers = [[0u8; HEADER_MAX]; N];
            let mut parts: [(usize, &[u8]); N] = [(0, &[]); N];
            for (i, item) in self.pending.iter().take(n).enumerate() {
                parts[i] = item.encode(&mut headers[i]);
                lens[i] = parts[i].0 + parts[i].1.len();
            }
            let mut slices = [IoSlice::new(&[]); S];
            let mut k = 0;
            let mut skip = self.head;
            for (i, (hlen, payload)) in parts.iter().take(n).enumerate() {
                let hdr = &headers[i][..*hlen];
                let h = skip.min(hdr.len());
                if h < hdr.len() {
                    slices[k] = IoSlice::new(&hdr[h..]);
                    k += 1;
                }
                skip -= h;
                let p = skip.min(payload.len());
                if p < payload.len() {
                    slices[k] = IoSlice::new(&payload[p..]);
                    k += 1;
                }
                skip -= p;
            }
            io.try_write_vectored(&slices[..k])
        };
        let mut wrote = match written {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(w) => w,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(Some(Flushed::Blocked)),
            Err(e) => return Err(e),
        };
        let mut texts = 0u64;
        let mut text_bytes = 0usize;
        let mut closed = false;
        for len in lens.iter().take(n) {
            let left = len - self.head;
            if wrote < left {
                self.head += wrote;
                break;
            }
            wrote -= left;
            self.head = 0;
            match self.pending.pop_front() {
                Some(Out::Close(_)) => {
                    closed = true;
                    break;
                }
                Some(Out::Text(b) | Out::Binary(b)) => {
                    texts += 1;
                    text_bytes += b.len();
                }
                _ => {}
            }
        }
        out.written(text_bytes);
        if texts > 0 {
            metrics::counter!("relaydesk_edge_frames_out_total").increment(texts);
        }
        Ok(closed.then_some(Flushed::Closed))
    }
}

/// Ticks per heartbeat interval: each tick serves one slice of the connections.
const HEARTBEAT_SLICES: u64 = 50;

/// Pings every connection once per `heartbeat`, spread evenly over the interval, and
/// closes (1001) connections whose peer has been silent for two intervals.
pub(crate) async fn run_heartbeats(ctx: Arc<Ctx>, stop: CancellationToken) {
    let heartbeat = ctx.config.heartbeat;
    let tick = (heartbeat / HEARTBEAT_SLICES as u32).max(Duration::from_millis(10));
    let mut ticker = tokio::time::interval(tick);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut slice = 0u64;
    loop {
        tokio::select! {
            _ = ticker.tick() => {}
            _ = stop.cancelled() => return,
        }
        slice = (slice + 1) % HEARTBEAT_SLICES;
        let mut silent = 0u64;
        ctx.each_session(|conn, out| {
            if conn % HEARTBEAT_SLICES != slice {
                return;
            }
            if out.silent_for() >= heartbeat.saturating_mul(2) {
                silent += 1;
                out.close(CloseCode::GoingAway);
            } else {
                out.ping();
            }
        });
        if silent > 0 {
            metrics::counter!("relaydesk_edge_heartbeat_closes_total").increment(silent);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn taken(out: &Outbound) -> Vec<String> {
        let mut q = VecDeque::new();
        out.take_into(&mut q);
        q.iter()
            .map(|o| match o {
                Out::Text(b) => String::from_utf8_lossy(b).into_owned(),
                Out::Binary(b) => format!("binary {}", b.len()),
                Out::Ping => "ping".into(),
                Out::Pong(_) => "pong".into(),
                Out::Close(c) => format!("close {c}"),
            })
            .collect()
    }

    #[test]
    fn over_the_bound_closes_with_4008_and_drops_the_queue() {
        let out = Outbound::new(10);
        assert!(out.send(Bytes::from_static(b"12345")));
        assert!(out.send(Bytes::from_static(b"12345")));
        assert!(!out.send(Bytes::from_static(b"1")));
        assert_eq!(out.close_code(), Some(4008));
        assert!(out.is_closing());
        assert_eq!(taken(&out), ["close 4008"]);
        assert!(!out.send(Bytes::from_static(b"x")));
    }

    #[test]
    fn graceful_close_keeps_queued_frames_first() {
        let out = Outbound::new(100);
        assert!(out.send(Bytes::from_static(b"a")));
        out.close(CloseCode::Unauthorized);
        out.close(CloseCode::Normal);
        assert_eq!(out.close_code(), Some(4501));
        assert_eq!(taken(&out), ["a", "close 4501"]);
        assert!(taken(&out).is_empty());
    }

    #[test]
    fn headers_follow_rfc_6455_lengths() {
        let mut buf = [0u8; HEADER_MAX];
        assert_eq!(header(OP_TEXT, 125, &mut buf), 2);
        assert_eq!(buf[..2], [0x81, 125]);
        assert_eq!(header(OP_TEXT, 126, &mut buf), 4);
        assert_eq!(buf[..4], [0x81, 126, 0, 126]);
        assert_eq!(header(OP_TEXT, 70_000, &mut buf), 10);
        assert_eq!(buf[..10], [0x81, 127, 0, 0, 0, 0, 0, 1, 0x11, 0x70]);
        let close = Out::Close(4008);
        let (n, payload) = close.encode(&mut buf);
        assert_eq!(buf[..n], [0x88, 2, 0x0f, 0xa8]);
        assert!(payload.is_empty());
    }

    #[tokio::test]
    async fn a_burst_leaves_in_one_write_and_a_full_socket_resumes_mid_frame() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let client = TcpStream::connect(addr).await.unwrap();
        let (server, _) = listener.accept().await.unwrap();
        let out = Outbound::new(64 << 20);
        let mut w = Writer::default();
        // Far more than the socket buffers hold: the writer must stop and resume.
        let body = Bytes::from(vec![b'x'; 1000]);
        let frames = 20_000;
        for _ in 0..frames {
            assert!(out.send(body.clone()));
        }
        out.close(CloseCode::Normal);
        let reader = tokio::spawn(async move {
            use tokio::io::AsyncReadExt;
            let mut client = client;
            let mut all = Vec::new();
            client.read_to_end(&mut all).await.unwrap();
            all
        });
        loop {
            match w.flush(&server, &out).unwrap() {
                Flushed::Closed => break,
                Flushed::Blocked => server.writable().await.unwrap(),
                Flushed::More | Flushed::Idle => tokio::task::yield_now().await,
            }
        }
        drop(server);
        let all = reader.await.unwrap();
        let frame = 4 + 1000;
        assert_eq!(all.len(), frames * frame + 4);
        for i in 0..frames {
            assert_eq!(all[i * frame..i * frame + 4], [0x81, 126, 0x03, 0xe8]);
        }
        assert_eq!(all[frames * frame..], [0x88, 2, 0x03, 0xe8]);
        assert_eq!(out.queued_bytes(), 0);
    }
}
