//! The outbound path of one connection: a queue bounded in bytes ([`Outbound`], shared by
//! the hub, the session and the egress dispatcher) and the writer task ([`run_writer`])
//! that drains it into the socket, coalescing everything queued before one flush, and
//! sends heartbeat pings.
//!
//! Exceeding the byte bound closes the connection with 4008 (slow consumer). A close
//! frame is always the last frame written; after it the writer stops.

use std::collections::VecDeque;
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use bytes::Bytes;
use fastwebsockets::{Frame, OpCode, Payload, WebSocketError, WebSocketWrite};
use relaydesk_shared::CloseCode;
use tokio::io::AsyncWrite;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

/// How long an in-flight write may still take once a close was requested.
const CLOSE_GRACE: Duration = Duration::from_secs(2);

/// One item of the outbound queue.
#[derive(Debug)]
enum Out {
    Text(Bytes),
    Ping,
    Pong(Vec<u8>),
}

#[derive(Debug, Default)]
struct State {
    queue: VecDeque<Out>,
    /// Bytes of text frames queued or being written.
    bytes: usize,
    /// Payload of the close frame to write once the queue is empty.
    close: Option<Vec<u8>>,
    /// The close code of this connection (sent by us, or echoed from the peer).
    code: Option<u16>,
    /// The session ended: write nothing more than a pending close.
    finished: bool,
}

struct Inner {
    state: Mutex<State>,
    notify: Notify,
    limit: usize,
    closing: CancellationToken,
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

impl Outbound {
    /// A queue that holds at most `limit` bytes of text frames.
    pub fn new(limit: usize) -> Self {
        Outbound {
            inner: Arc::new(Inner {
                state: Mutex::new(State::default()),
                notify: Notify::new(),
                limit,
                closing: CancellationToken::new(),
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
        let mut s = self.lock();
        if s.close.is_some() || s.finished {
            return false;
        }
        if s.bytes.saturating_add(frame.len()) > self.inner.limit {
            drop(s);
            metrics::counter!("relaydesk_edge_slow_consumer_closes_total").increment(1);
            self.close_discarding(CloseCode::SlowConsumer.code());
            return false;
        }
        s.bytes += frame.len();
        s.queue.push_back(Out::Text(frame));
        drop(s);
        self.inner.notify.notify_one();
        true
    }

    /// Queues a WebSocket ping.
    pub fn ping(&self) {
        self.push_control(Out::Ping);
    }

    /// Queues a pong answering a ping (fastwebsockets' auto-pong).
    pub fn pong(&self, payload: Vec<u8>) {
        self.push_control(Out::Pong(payload));
    }

    fn push_control(&self, item: Out) {
        let mut s = self.lock();
        if s.close.is_some() || s.finished {
            return;
        }
        s.queue.push_back(item);
        drop(s);
        self.inner.notify.notify_one();
    }

    /// Closes after everything already queued has been written.
    pub fn close(&self, code: u16) {
        self.set_close(code, close_payload(code), false);
    }

    /// Closes now: drops everything queued, then writes the close frame.
    pub fn close_discarding(&self, code: u16) {
        self.set_close(code, close_payload(code), true);
    }

    /// Echoes the peer's close frame (fastwebsockets' auto-close).
    pub fn close_echo(&self, payload: Vec<u8>) {
        let code = match payload.get(..2) {
            Some(b) => u16::from_be_bytes([b[0], b[1]]),
            None => 1005,
        };
        self.set_close(code, payload, false);
    }

    fn set_close(&self, code: u16, payload: Vec<u8>, discard: bool) {
        let mut s = self.lock();
        if s.code.is_none() {
            s.code = Some(code);
        }
        if s.close.is_none() && !s.finished {
            if discard {
                s.queue.clear();
            }
            s.close = Some(payload);
        }
        drop(s);
        self.inner.closing.cancel();
        self.inner.notify.notify_one();
    }

    /// The session is over (the peer is gone or the close handshake ended): the writer
    /// writes a pending close frame, if any, and stops.
    pub fn finish(&self, code_if_unset: u16) {
        let mut s = self.lock();
        if s.code.is_none() {
            s.code = Some(code_if_unset);
        }
        s.finished = true;
        s.queue.clear();
        drop(s);
        self.inner.closing.cancel();
        self.inner.notify.notify_one();
    }

    /// The close code, once a close was requested or received.
    pub fn close_code(&self) -> Option<u16> {
        self.lock().code
    }

    /// Whether a close was requested (by us or the peer) or the session ended.
    pub fn is_closing(&self) -> bool {
        self.inner.closing.is_cancelled()
    }

    /// Resolves once a close was requested or the session ended.
    pub fn closing(&self) -> impl Future<Output = ()> + Send + 'static {
        let token = self.inner.closing.clone();
        async move { token.cancelled().await }
    }

    /// Bytes of text frames queued or being written.
    pub fn queued_bytes(&self) -> usize {
        self.lock().bytes
    }

    fn written(&self, n: usize) {
        let mut s = self.lock();
        s.bytes = s.bytes.saturating_sub(n);
    }

    /// Takes everything queued: frames, then the close payload once nothing precedes it.
    fn take(&self) -> (Vec<Out>, Option<Vec<u8>>, bool) {
        let mut s = self.lock();
        let items: Vec<Out> = s.queue.drain(..).collect();
        let close = s.close.take();
        if close.is_some() {
            // Remember that the close is being written: nothing may follow it.
            s.finished = true;
        }
        (items, close, s.finished)
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

fn close_payload(code: u16) -> Vec<u8> {
    code.to_be_bytes().to_vec()
}

/// When the peer last sent anything (any frame, pongs included).
#[derive(Debug)]
pub struct Liveness {
    start: Instant,
    last_ms: AtomicU64,
}

impl Liveness {
    pub fn new() -> Self {
        Liveness {
            start: Instant::now(),
            last_ms: AtomicU64::new(0),
        }
    }

    /// Records that the peer sent a frame.
    pub fn touch(&self) {
        let ms = u64::try_from(self.start.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.last_ms.store(ms, Ordering::Relaxed);
    }

    /// Time since the peer last sent anything.
    pub fn silent_for(&self) -> Duration {
        let last = Duration::from_millis(self.last_ms.load(Ordering::Relaxed));
        self.start.elapsed().saturating_sub(last)
    }
}

impl Default for Liveness {
    fn default() -> Self {
        Self::new()
    }
}

/// Writes `out` into the socket until a close frame was written or the session ended.
/// Sends a ping every `heartbeat`; closes (1001) a peer silent for two intervals.
pub async fn run_writer<S>(
    mut ws: WebSocketWrite<S>,
    out: Outbound,
    heartbeat: Duration,
    live: Arc<Liveness>,
) where
    S: AsyncWrite + Unpin,
{
    let heartbeat_loop = {
        let out = out.clone();
        async move {
            let mut ticker =
                tokio::time::interval_at(tokio::time::Instant::now() + heartbeat, heartbeat);
            ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                ticker.tick().await;
                if live.silent_for() >= heartbeat.saturating_mul(2) {
                    out.close(CloseCode::GoingAway.code());
                    break;
                }
                out.ping();
            }
            std::future::pending::<()>().await;
        }
    };
    let write_loop = async {
        loop {
            let (items, close, finished) = loop {
                let (items, close, finished) = out.take();
                if !items.is_empty() || close.is_some() || finished {
                    break (items, close, finished);
                }
                out.inner.notify.notified().await;
            };
            let mut texts = 0u64;
            for item in items {
                let (ok, len) = match item {
                    Out::Text(b) => {
                        texts += 1;
                        let ok =
                            guarded(ws.write_frame(Frame::text(Payload::Borrowed(&b))), &out).await;
                        (ok, b.len())
                    }
                    Out::Ping => (
                        guarded(
                            ws.write_frame(Frame::new(
                                true,
                                OpCode::Ping,
                                None,
                                Payload::Borrowed(&[]),
                            )),
                            &out,
                        )
                        .await,
                        0,
                    ),
                    Out::Pong(p) => (
                        guarded(ws.write_frame(Frame::pong(Payload::Owned(p))), &out).await,
                        0,
                    ),
                };
                if len > 0 {
                    out.written(len);
                }
                if !ok {
                    return;
                }
            }
            if texts > 0 {
                metrics::counter!("relaydesk_edge_frames_out_total").increment(texts);
            }
            if let Some(payload) = close {
                let _ = tokio::time::timeout(CLOSE_GRACE, async {
                    if ws
                        .write_frame(Frame::close_raw(Payload::Owned(payload)))
                        .await
                        .is_ok()
                    {
                        let _ = ws.flush().await;
                    }
                })
                .await;
                return;
            }
            if !guarded(ws.flush(), &out).await || finished {
                return;
            }
        }
    };
    tokio::select! {
        _ = write_loop => {},
        _ = heartbeat_loop => {},
    }
}

/// Runs a socket write; once a close is requested the write gets [`CLOSE_GRACE`] more.
async fn guarded<F>(fut: F, out: &Outbound) -> bool
where
    F: Future<Output = Result<(), WebSocketError>>,
{
    let mut fut = std::pin::pin!(fut);
    if !out.is_closing() {
        tokio::select! {
            r = &mut fut => return r.is_ok(),
            _ = out.closing() => {},
        }
    }
    matches!(tokio::time::timeout(CLOSE_GRACE, fut).await, Ok(Ok(())))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn over_the_bound_closes_with_4008_and_drops_the_queue() {
        let out = Outbound::new(10);
        assert!(out.send(Bytes::from_static(b"12345")));
        assert!(out.send(Bytes::from_static(b"12345")));
        assert!(!out.send(Bytes::from_static(b"1")));
        assert_eq!(out.close_code(), Some(4008));
        assert!(out.is_closing());
        let (items, close, _) = out.take();
        assert!(items.is_empty());
        assert_eq!(close, Some(4008u16.to_be_bytes().to_vec()));
        assert!(!out.send(Bytes::from_static(b"x")));
    }

    #[test]
    fn graceful_close_keeps_queued_frames_first() {
        let out = Outbound::new(100);
        assert!(out.send(Bytes::from_static(b"a")));
        out.close(4501);
        out.close(1000);
        assert_eq!(out.close_code(), Some(4501));
        let (items, close, _) = out.take();
        assert_eq!(items.len(), 1);
        assert_eq!(close, Some(4501u16.to_be_bytes().to_vec()));
    }
}
