//! One task per WebSocket connection: it reads client messages ([`crate::reader`]),
//! writes whatever the connection's [`Outbound`] queue holds ([`crate::writer`]), handles
//! `hello` and authentication, then client frames and their bus side effects, and runs
//! the connection's lifecycle (open/close logs, metrics, cleanup).
//!
//! An idle connection is this task parked on its socket's readiness and its queue's
//! notification: no read buffer, no write buffer, no timer (heartbeats are edge-wide).

use std::future::Future;
use std::sync::Arc;
use std::task::Poll;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use fred::prelude::HashesInterface;
use relaydesk_shared::bus::{Egress, Ingress, Source, TokenCred};
use relaydesk_shared::token::Role;
use relaydesk_shared::wire::{self, Actor, ClientFrame, ServerFrame};
use relaydesk_shared::{CloseCode, ErrorCode};
use tokio::net::TcpStream;
use tokio::sync::oneshot;
use uuid::Uuid;

use crate::error::FrameError;
use crate::hub::Gate;
use crate::ingress::{self, OnFail};
use crate::reader::{Discard, End, Message, Reader};
use crate::writer::{Flushed, Outbound, Writer};
use crate::Ctx;

/// Consecutive unparseable frames after which the connection is closed with 4500.
const MAX_BAD_FRAMES: u32 = 10;
/// Consecutive rate-limited `send`s after which the connection is closed with 4029.
const MAX_LIMITED: u32 = 20;
/// How long the last writes (up to our close frame) may take once the session ended.
const CLOSE_GRACE: Duration = Duration::from_secs(2);
/// How long to wait for the peer's close frame after sending ours.
const CLOSE_WAIT: Duration = Duration::from_secs(1);
/// Input read and dropped after our close frame, at most: what a peer was still sending
/// (an oversized frame, say) is read so that closing does not reset the connection.
const CLOSE_DISCARD: usize = 1 << 20;

/// The socket of one connection with its read and write state. Only the connection's
/// task touches it (a session's, or an echo connection's: `crate::echo`).
pub(crate) struct Link {
    io: TcpStream,
    reader: Reader,
    writer: Writer,
    out: Outbound,
    /// The socket was full: wait until it is writable before flushing again.
    blocked: bool,
    /// The last flush stopped with more to write.
    more: bool,
    /// Our close frame is written.
    closed: bool,
}

impl Link {
    /// A connection reading messages up to `max` bytes, text only unless `binary`.
    pub(crate) fn new(
        io: TcpStream,
        early: Bytes,
        max: usize,
        binary: bool,
        out: Outbound,
    ) -> Self {
        Link {
            io,
            reader: Reader::new(max, binary, early),
            writer: Writer::default(),
            out,
            blocked: false,
            more: false,
            closed: false,
        }
    }

    /// Writes what is queued, as far as the socket takes it.
    fn flush(&mut self) -> Result<(), End> {
        if self.blocked || self.closed {
            return Ok(());
        }
        match self.writer.flush(&self.io, &self.out) {
            Ok(Flushed::Idle) => {}
            Ok(Flushed::More) => self.more = true,
            Ok(Flushed::Blocked) => self.blocked = true,
            Ok(Flushed::Closed) => self.closed = true,
            Err(_) => return Err(End::Gone),
        }
        Ok(())
    }

    /// Waits until there is something to do: frames queued (or a close requested), the
    /// full socket writable again, or (when `read`) input. Polls readiness directly, so
    /// a parked connection's future holds no waiter state.
    fn wait(&mut self, read: bool) -> impl Future<Output = Result<(), End>> + '_ {
        let mut yield_first = std::mem::take(&mut self.more);
        std::future::poll_fn(move |cx| {
            if yield_first {
                // More to write: let other connections run first.
                yield_first = false;
                cx.waker().wake_by_ref();
                return Poll::Pending;
            }
            if self.out.poll_woken(cx).is_ready() {
                return Poll::Ready(Ok(()));
            }
            if self.blocked {
                match self.io.poll_write_ready(cx) {
                    Poll::Ready(Ok(())) => {
                        self.blocked = false;
                        return Poll::Ready(Ok(()));
                    }
                    Poll::Ready(Err(_)) => return Poll::Ready(Err(End::Gone)),
                    Poll::Pending => {}
                }
            }
            if read {
                match self.io.poll_read_ready(cx) {
                    Poll::Ready(Ok(())) => return Poll::Ready(Ok(())),
                    Poll::Ready(Err(_)) => return Poll::Ready(Err(End::Gone)),
                    Poll::Pending => {}
                }
            }
            Poll::Pending
        })
    }

    /// The next client message, writing queued frames meanwhile. Ends as soon as a close
    /// was requested, or when a frame (or fragmented message), once begun, is not
    /// complete within `frame_timeout`.
    pub(crate) async fn next_message(&mut self, frame_timeout: Duration) -> Result<Message, End> {
        loop {
            if self.out.is_closing() {
                return Err(End::Closing);
            }
            self.flush()?;
            if let Some(msg) = self.reader.next(&self.io, &self.out)? {
                return Ok(msg);
            }
            match self.reader.unfinished_for() {
                None => self.wait(true).await?,
                // Boxed: only a connection in the middle of a frame needs room for a timer.
                Some(elapsed) => {
                    let left = frame_timeout.saturating_sub(elapsed);
                    Box::pin(self.wait_until(tokio::time::Instant::now() + left)).await?
                }
            }
        }
    }

    /// [`Link::wait`] for input, up to `deadline`: past it the unfinished frame stalled.
    async fn wait_until(&mut self, deadline: tokio::time::Instant) -> Result<(), End> {
        match tokio::time::timeout_at(deadline, self.wait(true)).await {
            Ok(r) => r,
            Err(_) => Err(FrameError::Stalled.into()),
        }
    }

    /// Runs `fut` (not reading meanwhile, so client frames keep their order), writing
    /// queued frames; ends early when a close was requested.
    async fn during<F: Future>(&mut self, fut: F) -> Result<F::Output, End> {
        let mut fut = std::pin::pin!(fut);
        loop {
            if self.out.is_closing() {
                return Err(End::Closing);
            }
            self.flush()?;
            tokio::select! {
                biased;
                r = &mut fut => return Ok(r),
                w = self.wait(false) => w?,
            }
        }
    }

    /// Closes the connection as `end` says (unless the socket is gone): our close frame
    /// with the code it names, then [`Link::finish`].
    pub(crate) async fn end(&mut self, conn: u64, end: End) {
        match end {
            End::Close(code) => self.out.close(code),
            End::Invalid(e) => {
                tracing::debug!(conn, error = %e, "frame refused");
                self.out.close(e.close_code());
            }
            End::Closing | End::PeerClosed => {}
            End::Gone => self.out.finish(1006),
        }
        if end != End::Gone {
            let broken = matches!(end, End::Invalid(_));
            self.finish(end == End::PeerClosed, broken).await;
        }
    }

    /// After the session: writes what is left up to our close frame, then (unless the
    /// peer closed first) ends our side of the stream and reads until the peer's close
    /// frame or the end of its stream, within [`CLOSE_WAIT`] and [`CLOSE_DISCARD`] bytes,
    /// so that the socket is not closed on unread input (which would reset it, and a
    /// reset can destroy the close frame before the peer reads it). After a framing error
    /// (`broken`) frames cannot be told apart: the input is dropped unparsed.
    async fn finish(&mut self, peer_closed: bool, broken: bool) {
        let written = tokio::time::timeout(CLOSE_GRACE, async {
            while !self.closed {
                if self.flush().is_err() {
                    return false;
                }
                if !self.closed && self.wait(false).await.is_err() {
                    return false;
                }
            }
            true
        })
        .await;
        if peer_closed || !matches!(written, Ok(true)) {
            return;
        }
        // Our close frame is the last thing we send: a peer that waits for the end of
        // the stream before closing its own gets it now.
        let _ = tokio::io::AsyncWriteExt::shutdown(&mut self.io).await;
        let mut framed = !broken;
        let mut budget = CLOSE_DISCARD;
        let _ = tokio::time::timeout(CLOSE_WAIT, async {
            loop {
                if framed {
                    match self.reader.next(&self.io, &self.out) {
                        Ok(Some(msg)) => {
                            budget = budget.saturating_sub(msg.payload.len());
                            if budget == 0 {
                                return;
                            }
                            continue;
                        }
                        Ok(None) => {}
                        Err(End::Invalid(_)) => {
                            framed = false;
                            continue;
                        }
                        Err(_) => return,
                    }
                } else if self.reader.discard(&self.io, &mut budget) == Discard::Ended {
                    return;
                }
                if self.io.readable().await.is_err() {
                    return;
                }
            }
        })
        .await;
    }
}

/// Starts the task serving one upgraded WebSocket until it closes. `early` holds bytes
/// the HTTP layer read past the upgrade request.
pub(crate) fn spawn_session(
    ctx: Arc<Ctx>,
    io: TcpStream,
    early: Bytes,
    origin: Option<String>,
    permit: Arc<crate::accept::Admission>,
) {
    let conn = ctx.next_conn_id();
    let out = Outbound::new(ctx.config.outbound_queue_bytes);
    ctx.session_opened(conn, out.clone());
    let mut link = Link::new(io, early, ctx.config.max_message_bytes, false, out.clone());
    let mut session = Session {
        ctx: ctx.clone(),
        conn,
        out,
        src: None,
        revocable: false,
        origin,
        bad: 0,
        sends: ctx.limits.connection_bucket(),
        limited: 0,
        _permit: permit,
    };
    // An async block, not an async fn taking `link` and `session`: its captures are
    // used in place, where an async fn's arguments would be stored twice in the task.
    ctx.tracker.spawn(async move {
        let end = session.run(&mut link).await;
        // Boxed: only closing connections need room for it.
        Box::pin(finish_session(link, session, end)).await;
    });
}

/// Closes the socket (unless gone), then removes the connection everywhere.
async fn finish_session(mut link: Link, session: Session, end: End) {
    let (ctx, conn, out) = (session.ctx.clone(), session.conn, session.out.clone());
    link.end(conn, end).await;
    if let Some(src) = &session.src {
        ctx.hub().remove(conn);
        let code = out.close_code().unwrap_or(1006);
        tracing::debug!(conn, tenant = %src.tenant, principal = %src.principal, code, "connection closed");
    } else {
        tracing::debug!(
            conn,
            code = out.close_code().unwrap_or(1006),
            "unauthenticated connection closed"
        );
    }
    if let Some(src) = session.src.as_ref().filter(|_| session.revocable) {
        ctx.revoked.forget(conn, (src.tenant, src.principal));
    }
    out.finish(1006);
    let code = out.close_code().unwrap_or(1006);
    metrics::counter!("relaydesk_edge_closes_total", "code" => code.to_string()).increment(1);
    ctx.session_closed(conn);
    // The session's admission permit goes last.
    drop(session);
}

/// What a client frame asks of the session loop beyond its immediate handling.
enum Step {
    End(End),
    /// A `sub` waiting for its registry entry.
    Sub {
        conv: Uuid,
        after: u64,
        ack: oneshot::Receiver<bool>,
    },
}

struct Session {
    ctx: Arc<Ctx>,
    conn: u64,
    out: Outbound,
    /// Set once authenticated.
    src: Option<Source>,
    /// Recorded for revocation under `src`'s principal (agents; visitors are not).
    revocable: bool,
    /// The upgrade request's `Origin`, until `hello` checked it against the token.
    origin: Option<String>,
    /// This connection's place under the edge's and its address's connection caps.
    _permit: Arc<crate::accept::Admission>,
    /// Consecutive unparseable frames.
    bad: u32,
    /// This connection's `send` bucket.
    sends: governor::DefaultDirectRateLimiter,
    /// Consecutive `send`s refused as rate limited.
    limited: u32,
}

impl Session {
    async fn run(&mut self, link: &mut Link) -> End {
        if self.ctx.is_draining() {
            return End::Close(CloseCode::Restart);
        }
        // Boxed: the hello phase's state is freed once the connection is open.
        let _tenant_slot = match Box::pin(self.hello(link)).await {
            Ok(slot) => slot,
            Err(end) => return end,
        };
        loop {
            let bytes = match link.next_message(self.ctx.config.frame_timeout).await {
                Ok(m) => m.payload,
                Err(end) => return end,
            };
            metrics::counter!("relaydesk_edge_frames_in_total").increment(1);
            match self.handle(&bytes) {
                None => {}
                Some(Step::End(end)) => return end,
                Some(Step::Sub { conv, after, ack }) => {
                    // Boxed: a parked connection's future need not hold room for this.
                    if let Some(end) = Box::pin(self.sub(link, conv, after, ack)).await {
                        return end;
                    }
                }
            }
            // A client that keeps the socket busy must not keep the worker thread.
            tokio::task::consume_budget().await;
        }
    }

    /// `hello` within the hello timeout, the token, origin and tenant cap, registration,
    /// and core-api's `welcome`. Sets the connection's identity; returns its tenant slot,
    /// held for the connection's life.
    async fn hello(&mut self, link: &mut Link) -> Result<crate::limits::Slot, End> {
        let origin = self.origin.take();
        let origin = origin.as_deref();
        let cfg = &self.ctx.config;
        let next = link.next_message(cfg.frame_timeout);
        let bytes = match tokio::time::timeout(cfg.hello_timeout, next).await {
            Err(_) => return Err(End::Close(CloseCode::Unauthorized)),
            Ok(r) => r?.payload,
        };
        metrics::counter!("relaydesk_edge_frames_in_total").increment(1);
        let Ok(ClientFrame::Hello { token }) = ClientFrame::decode(&bytes) else {
            return Err(End::Close(CloseCode::Unauthorized));
        };
        let claims = match self.ctx.verifier.verify(&token) {
            Ok(c) => c,
            Err(e) => {
                tracing::debug!(conn = self.conn, error = %e, "token refused");
                return Err(End::Close(CloseCode::Unauthorized));
            }
        };
        if !claims.origin_allowed(origin) {
            tracing::debug!(conn = self.conn, origin, "origin refused");
            return Err(End::Close(CloseCode::Unauthorized));
        }
        let Some(tenant_slot) = self.ctx.limits.admit_tenant(claims.tid) else {
            tracing::info!(conn = self.conn, tenant = %claims.tid, "tenant connection cap reached");
            return Err(End::Close(CloseCode::RateLimited));
        };
        // From here on a revocation that arrives closes this connection.
        if !self.ctx.revoked.admit(self.conn, &claims, &self.out) {
            tracing::debug!(conn = self.conn, principal = %claims.sub, "revoked token refused");
            return Err(End::Close(CloseCode::Unauthorized));
        }
        self.revocable = claims.role != Role::Visitor;
        let src = Source {
            edge: self.ctx.edge_id.clone(),
            conn: self.conn,
            tenant: claims.tid,
            principal: claims.sub,
            role: claims.role,
            name: claims.name.clone(),
        };
        let welcome = ServerFrame::Welcome {
            conn: self.conn.to_string(),
            tenant: src.tenant,
            principal: src.principal,
            role: src.role,
            heartbeat_ms: u64::try_from(cfg.heartbeat.as_millis()).unwrap_or(u64::MAX),
            max_message: cfg.max_message_bytes,
        };
        let (welcomed, registered) = self.ctx.hub().register(
            src.clone(),
            self.out.clone(),
            Bytes::from(welcome.to_json()),
        );
        self.src = Some(src.clone());
        let registered = link
            .during(tokio::time::timeout(cfg.core_timeout, registered))
            .await?;
        if !matches!(registered, Ok(Ok(true))) {
            return Err(End::Close(CloseCode::Unavailable));
        }
        let cred = (claims.role != Role::Visitor).then(|| TokenCred {
            ver: claims.version(),
            sid: claims.sid,
        });
        let hello = Ingress::Hello {
            src: src.clone(),
            cred,
        };
        if self
            .ctx
            .ingress
            .ingress(&hello, src.principal, Some(OnFail::Close(self.out.clone())))
            .is_err()
        {
            return Err(End::Close(CloseCode::Unavailable));
        }
        let welcomed = link
            .during(tokio::time::timeout(cfg.core_timeout, welcomed))
            .await?;
        if !matches!(welcomed, Ok(Ok(()))) {
            tracing::warn!(conn = self.conn, "core-api did not answer hello in time");
            return Err(End::Close(CloseCode::Unavailable));
        }
        tracing::debug!(
            conn = self.conn,
            tenant = %src.tenant,
            principal = %src.principal,
            role = src.role.as_str(),
            "connection open"
        );
        Ok(tenant_slot)
    }

    fn send(&self, frame: &ServerFrame) {
        self.out.send(Bytes::from(frame.to_json()));
    }

    fn error(&self, id: Option<String>, conv: Option<Uuid>, code: ErrorCode, message: &str) {
        let retry_after_ms = code.retryable().then_some(500);
        self.send(&ServerFrame::Error {
            id,
            conv,
            code,
            message: message.to_owned(),
            retry_after_ms,
        });
    }

    /// Handles one client frame after `hello`; `Some` ends the connection or asks for
    /// the wait of a `sub`.
    fn handle(&mut self, bytes: &[u8]) -> Option<Step> {
        let src = self.src.as_ref()?;
        let frame = match ClientFrame::decode(bytes) {
            Ok(f) => {
                self.bad = 0;
                f
            }
            Err(e) => {
                self.bad += 1;
                metrics::counter!("relaydesk_edge_bad_frames_total").increment(1);
                if self.bad >= MAX_BAD_FRAMES {
                    return Some(Step::End(End::Close(CloseCode::ProtocolViolation)));
                }
                self.error(client_id_of(bytes), None, e.code(), &e.to_string());
                return None;
            }
        };
        let ctx = self.ctx.clone();
        match frame {
            ClientFrame::Hello { .. } => {
                self.error(None, None, ErrorCode::BadRequest, "already authenticated")
            }
            ClientFrame::Send {
                id,
                conv,
                kind,
                body,
            } => {
                if let Err(limited) = ctx.limits.send(&self.sends, src.tenant) {
                    self.limited += 1;
                    metrics::counter!("relaydesk_edge_rate_limited_total").increment(1);
                    if self.limited > MAX_LIMITED {
                        return Some(Step::End(End::Close(CloseCode::RateLimited)));
                    }
                    let retry_after_ms = u64::try_from(limited.retry_after.as_millis())
                        .unwrap_or(u64::MAX)
                        .max(1);
                    self.send(&ServerFrame::Error {
                        id: Some(id),
                        conv: Some(conv),
                        code: ErrorCode::RateLimited,
                        message: "too many messages; retry later".to_owned(),
                        retry_after_ms: Some(retry_after_ms),
                    });
                    return None;
                }
                self.limited = 0;
                if !wire::valid_client_id(&id) {
                    self.error(
                        Some(id),
                        Some(conv),
                        ErrorCode::BadRequest,
                        "id must be 1-64 characters of [A-Za-z0-9_-]",
                    );
                } else if !wire::client_kind_allowed(&kind, src.role) {
                    self.error(
                        Some(id),
                        Some(conv),
                        ErrorCode::Forbidden,
                        "message kind not allowed",
                    );
                } else if !ctx.redis_healthy() {
                    self.out.send(ingress::unavailable(Some(id), Some(conv)));
                } else {
                    let entry = Ingress::Send {
                        src: src.clone(),
                        id: id.clone(),
                        conv,
                        kind,
                        body,
                        rx_us: unix_micros(),
                    };
                    let on_fail = OnFail::Refuse {
                        out: self.out.clone(),
                        id: Some(id.clone()),
                        conv: Some(conv),
                    };
                    if ctx.ingress.ingress(&entry, conv, Some(on_fail)).is_err() {
                        self.error(Some(id), Some(conv), ErrorCode::Unavailable, "edge busy");
                    }
                }
            }
            ClientFrame::Sub { conv, after } => {
                let after = after.unwrap_or(0);
                let Some(ack) = ctx.hub().begin_sub(self.conn, conv, after, Instant::now()) else {
                    return Some(Step::End(End::Close(CloseCode::Unavailable)));
                };
                return Some(Step::Sub { conv, after, ack });
            }
            ClientFrame::Unsub { conv } => ctx.hub().unsub(self.conn, conv),
            ClientFrame::Ack { conv, seq } => {
                let entry = Ingress::Ack {
                    src: src.clone(),
                    conv,
                    seq,
                };
                self.receipt(conv, seq, false, entry);
            }
            ClientFrame::Read { conv, seq } => {
                let entry = Ingress::Read {
                    src: src.clone(),
                    conv,
                    seq,
                };
                self.receipt(conv, seq, true, entry);
            }
            ClientFrame::Typing { conv, on } => {
                let gate = ctx.hub().gate(self.conn, conv);
                match gate {
                    Gate::Granted => typing(&ctx, src, conv, on),
                    // Ephemeral: dropped rather than raced ahead of core-api's answer.
                    Gate::Pending => {
                        metrics::counter!("relaydesk_edge_typing_dropped_total").increment(1);
                    }
                    Gate::Refused => self.error(
                        None,
                        Some(conv),
                        ErrorCode::Forbidden,
                        "not subscribed to this conversation",
                    ),
                }
            }
            ClientFrame::Ping => {
                self.out.send(ctx.pong.clone());
            }
        }
        None
    }

    /// Completes a `sub` once this edge's registry entry for the conversation exists
    /// (core-api must find it before answering); `Some` ends the connection.
    async fn sub(
        &mut self,
        link: &mut Link,
        conv: Uuid,
        after: u64,
        ack: oneshot::Receiver<bool>,
    ) -> Option<End> {
        let ctx = self.ctx.clone();
        match link
            .during(tokio::time::timeout(ctx.config.core_timeout, ack))
            .await
        {
            Ok(Ok(Ok(true))) => {}
            Ok(_) => {
                // Redis did not take the registry entry: the client may retry.
                ctx.hub().unsub(self.conn, conv);
                self.out.send(ingress::unavailable(None, Some(conv)));
                return None;
            }
            Err(end) => return Some(end),
        }
        let src = self.src.clone()?;
        let entry = Ingress::Sub { src, conv, after };
        let on_fail = self.refuse(conv);
        if ctx.ingress.ingress(&entry, conv, Some(on_fail)).is_err() {
            ctx.hub().unsub(self.conn, conv);
            self.error(None, Some(conv), ErrorCode::Unavailable, "edge busy");
        }
        None
    }

    /// An `ack` or `read` (`entry`, at `seq`): sent on if the conversation is granted,
    /// held until core-api answers a pending `sub`, refused otherwise.
    fn receipt(&self, conv: Uuid, seq: u64, read: bool, entry: Ingress) {
        let gate = self.ctx.hub().gate_receipt(self.conn, conv, seq, read);
        match gate {
            Gate::Granted => {}
            Gate::Pending => return,
            Gate::Refused => {
                self.error(
                    None,
                    Some(conv),
                    ErrorCode::Forbidden,
                    "not subscribed to this conversation",
                );
                return;
            }
        }
        if self
            .ctx
            .ingress
            .ingress(&entry, conv, Some(self.refuse(conv)))
            .is_err()
        {
            self.error(None, Some(conv), ErrorCode::Unavailable, "edge busy");
        }
    }

    /// Answers a frame about `conv` that Redis did not take.
    fn refuse(&self, conv: Uuid) -> OnFail {
        OnFail::Refuse {
            out: self.out.clone(),
            id: None,
            conv: Some(conv),
        }
    }
}

/// Typing: delivered at once to the other local subscribers, and (best effort, dropped
/// under load) to the other edges registered for the conversation.
fn typing(ctx: &Arc<Ctx>, src: &Source, conv: Uuid, on: bool) {
    let by = Actor {
        id: src.principal,
        role: src.role,
        name: src.name.clone(),
    };
    let frame = Bytes::from(ServerFrame::Typing { conv, by, on }.to_json());
    ctx.hub()
        .event(src.tenant, conv, Some(src.principal), false, &frame);
    let Ok(permit) = ctx.typing_permits.clone().try_acquire_owned() else {
        metrics::counter!("relaydesk_edge_typing_dropped_total").increment(1);
        return;
    };
    let ctx = ctx.clone();
    let (tenant, principal) = (src.tenant, src.principal);
    tokio::spawn(async move {
        let _permit = permit;
        let key = ctx.keys.conv_edges(tenant, conv);
        let edges: std::collections::HashMap<String, String> =
            match ctx.redis.hgetall(key.as_str()).await {
                Ok(m) => m,
                Err(e) => {
                    tracing::debug!(error = %e, "typing fan-out: registry read failed");
                    return;
                }
            };
        let now = crate::registry::now_ms();
        let header = Egress::Event {
            tenant,
            conv,
            exclude: Some(principal),
            agents_only: false,
        };
        for (edge, expiry) in edges {
            let live = expiry.trim().parse::<u64>().is_ok_and(|e| e > now);
            if live
                && edge != ctx.config.edge_id
                && ctx.ingress.event(&edge, &header, frame.clone()).is_err()
            {
                metrics::counter!("relaydesk_edge_typing_dropped_total").increment(1);
            }
        }
    });
}

/// The `id` of a refused frame, when it has a valid one, for the `error` answer. Only
/// `id` is decoded (the rest is skipped unchecked), so a frame refused for what another
/// field holds still names the send it refuses.
fn client_id_of(bytes: &[u8]) -> Option<String> {
    #[derive(serde::Deserialize)]
    struct Id {
        id: String,
    }
    let Id { id } = serde_json::from_slice(bytes).ok()?;
    wire::valid_client_id(&id).then_some(id)
}

fn unix_micros() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The per-connection state an idle socket keeps inside its task (see
    /// docs/benchmarks.md for the whole breakdown): growing it costs every connection.
    #[test]
    fn per_connection_state_stays_small() {
        assert!(
            std::mem::size_of::<Link>() <= 152,
            "{}",
            std::mem::size_of::<Link>()
        );
        assert!(
            std::mem::size_of::<Session>() <= 232,
            "{}",
            std::mem::size_of::<Session>()
        );
    }

    #[test]
    fn ids_of_bad_frames() {
        assert_eq!(
            client_id_of(br#"{"t":"send","id":"a1"}"#),
            Some("a1".to_owned())
        );
        assert_eq!(client_id_of(br#"{"t":"send","id":"a b"}"#), None);
        assert_eq!(client_id_of(b"nope"), None);
        assert_eq!(
            client_id_of(br#"{"t":"send","id":"a2","body":{"text":"\ud800"}}"#),
            Some("a2".to_owned())
        );
    }
}
