//! One task per WebSocket connection: the read side (whole-message assembly with the
//! size bound, `hello` and authentication, then client frames), the bus side effects of
//! each frame, and the connection's lifecycle (open/close logs, metrics, cleanup).
//!
//! Everything sent to the client goes through the connection's [`Outbound`] queue,
//! drained by its writer task ([`crate::writer`]).

use std::convert::Infallible;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use fastwebsockets::{Frame, OpCode, WebSocket, WebSocketError, WebSocketRead};
use fred::prelude::HashesInterface;
use relaydesk_shared::bus::{Egress, Ingress, Source};
use relaydesk_shared::wire::{self, Actor, ClientFrame, ServerFrame};
use relaydesk_shared::{CloseCode, ErrorCode};
use tokio::io::{AsyncRead, AsyncWrite, BufWriter};
use uuid::Uuid;

use crate::writer::{run_writer, Liveness, Outbound};
use crate::Ctx;

/// Consecutive unparseable frames after which the connection is closed with 4500.
const MAX_BAD_FRAMES: u32 = 10;
/// Consecutive rate-limited `send`s after which the connection is closed with 4029.
const MAX_LIMITED: u32 = 20;
/// Socket write buffer: frames queued together leave in one write.
const WRITE_BUFFER: usize = 4 * 1024;
/// How long to wait for the peer's close frame after sending ours.
const CLOSE_WAIT: Duration = Duration::from_secs(1);
/// WebSocket close code for a protocol error at the framing level.
const WS_PROTOCOL_ERROR: u16 = 1002;

/// Why reading stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum End {
    /// Close the connection with this code.
    Close(u16),
    /// A close was already requested elsewhere (drain, slow consumer, Redis down, heartbeat).
    Closing,
    /// The peer sent a close frame (echoed by auto-close).
    PeerClosed,
    /// The socket is gone.
    Gone,
}

/// Reads whole messages: continuation frames are collected up to `max` bytes in total.
struct Reader<S> {
    ws: WebSocketRead<S>,
    partial: Option<Vec<u8>>,
    max: usize,
    out: Outbound,
    live: Arc<Liveness>,
}

impl<S: AsyncRead + Unpin> Reader<S> {
    /// The next complete text message (valid UTF-8, at most `max` bytes).
    async fn next(&mut self) -> Result<Vec<u8>, End> {
        loop {
            let out = &self.out;
            // fastwebsockets' auto-pong / auto-close answers go through the outbound queue.
            let mut obligated = |f: Frame<'_>| {
                match f.opcode {
                    OpCode::Pong => out.pong(f.payload.to_vec()),
                    OpCode::Close => out.close_echo(f.payload.to_vec()),
                    _ => {}
                }
                std::future::ready(Ok::<(), Infallible>(()))
            };
            let frame = self
                .ws
                .read_frame(&mut obligated)
                .await
                .map_err(read_error)?;
            self.live.touch();
            match frame.opcode {
                OpCode::Text => {
                    if self.partial.is_some() {
                        return Err(End::Close(WS_PROTOCOL_ERROR));
                    }
                    let data = Vec::from(frame.payload);
                    if data.len() > self.max {
                        return Err(End::Close(CloseCode::TooLarge.code()));
                    }
                    if frame.fin {
                        // fastwebsockets validated the UTF-8 of an unfragmented text frame.
                        return Ok(data);
                    }
                    self.partial = Some(data);
                }
                OpCode::Binary => return Err(End::Close(CloseCode::Unsupported.code())),
                OpCode::Continuation => {
                    let Some(buf) = self.partial.as_mut() else {
                        return Err(End::Close(WS_PROTOCOL_ERROR));
                    };
                    if buf.len().saturating_add(frame.payload.len()) > self.max {
                        return Err(End::Close(CloseCode::TooLarge.code()));
                    }
                    buf.extend_from_slice(&frame.payload);
                    if frame.fin {
                        let data = self.partial.take().unwrap_or_default();
                        if std::str::from_utf8(&data).is_err() {
                            return Err(End::Close(CloseCode::InvalidUtf8.code()));
                        }
                        return Ok(data);
                    }
                }
                OpCode::Close => return Err(End::PeerClosed),
                OpCode::Ping | OpCode::Pong => {}
            }
        }
    }
}

fn read_error(e: WebSocketError) -> End {
    match e {
        WebSocketError::FrameTooLarge => End::Close(CloseCode::TooLarge.code()),
        WebSocketError::InvalidUTF8 => End::Close(CloseCode::InvalidUtf8.code()),
        WebSocketError::UnexpectedEOF
        | WebSocketError::IoError(_)
        | WebSocketError::ConnectionClosed
        | WebSocketError::SendError(_)
        | WebSocketError::HTTPError(_) => End::Gone,
        _ => End::Close(WS_PROTOCOL_ERROR),
    }
}

/// Serves one upgraded WebSocket until it closes.
pub(crate) async fn run_session<S>(
    ctx: Arc<Ctx>,
    mut ws: WebSocket<S>,
    origin: Option<String>,
    permit: Arc<crate::accept::Admission>,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let conn = ctx.next_conn_id();
    ws.set_auto_close(true);
    ws.set_auto_pong(true);
    // fastwebsockets refuses frames of `max_message_size` bytes or more.
    ws.set_max_message_size(ctx.config.max_message_bytes.saturating_add(1));
    let (rx, tx) = ws.split(|s| {
        let (r, w) = tokio::io::split(s);
        (r, BufWriter::with_capacity(WRITE_BUFFER, w))
    });
    let out = Outbound::new(ctx.config.outbound_queue_bytes);
    let live = Arc::new(Liveness::new());
    ctx.tracker.spawn(run_writer(
        tx,
        out.clone(),
        ctx.config.heartbeat,
        live.clone(),
    ));
    ctx.session_opened(conn, out.clone());

    let mut reader = Reader {
        ws: rx,
        partial: None,
        max: ctx.config.max_message_bytes,
        out: out.clone(),
        live,
    };
    let mut session = Session {
        ctx: ctx.clone(),
        conn,
        out: out.clone(),
        src: None,
        bad: 0,
        sends: ctx.limits.connection_bucket(),
        limited: 0,
    };
    let end = session.run(&mut reader, origin.as_deref()).await;
    match end {
        End::Close(code) => out.close(code),
        End::Closing | End::PeerClosed => {}
        End::Gone => out.finish(1006),
    }
    if matches!(end, End::Close(_) | End::Closing) {
        // Our close frame is on its way: give the peer a moment to answer it.
        let _ =
            tokio::time::timeout(CLOSE_WAIT, async { while reader.next().await.is_ok() {} }).await;
    }
    if let Some(src) = &session.src {
        ctx.hub().remove(conn);
        let code = out.close_code().unwrap_or(1006);
        tracing::info!(conn, tenant = %src.tenant, principal = %src.principal, code, "connection closed");
    } else {
        tracing::debug!(
            conn,
            code = out.close_code().unwrap_or(1006),
            "unauthenticated connection closed"
        );
    }
    out.finish(1006);
    let code = out.close_code().unwrap_or(1006);
    metrics::counter!("relaydesk_edge_closes_total", "code" => code.to_string()).increment(1);
    ctx.session_closed(conn);
    drop(permit);
}

struct Session {
    ctx: Arc<Ctx>,
    conn: u64,
    out: Outbound,
    /// Set once authenticated.
    src: Option<Source>,
    /// Consecutive unparseable frames.
    bad: u32,
    /// This connection's `send` bucket.
    sends: governor::DefaultDirectRateLimiter,
    /// Consecutive `send`s refused as rate limited.
    limited: u32,
}

impl Session {
    async fn run<S: AsyncRead + Unpin>(
        &mut self,
        reader: &mut Reader<S>,
        origin: Option<&str>,
    ) -> End {
        if self.ctx.is_draining() {
            return End::Close(CloseCode::Restart.code());
        }
        let cfg = &self.ctx.config;
        let first = tokio::select! {
            r = tokio::time::timeout(cfg.hello_timeout, reader.next()) => r,
            _ = self.out.closing() => return End::Closing,
        };
        let bytes = match first {
            Err(_) => return End::Close(CloseCode::Unauthorized.code()),
            Ok(Err(end)) => return end,
            Ok(Ok(b)) => b,
        };
        metrics::counter!("relaydesk_edge_frames_in_total").increment(1);
        let Ok(ClientFrame::Hello { token }) = serde_json::from_slice::<ClientFrame>(&bytes) else {
            return End::Close(CloseCode::Unauthorized.code());
        };
        let claims = match self.ctx.verifier.verify(&token) {
            Ok(c) => c,
            Err(e) => {
                tracing::debug!(conn = self.conn, error = %e, "token refused");
                return End::Close(CloseCode::Unauthorized.code());
            }
        };
        if !claims.origin_allowed(origin) {
            tracing::debug!(conn = self.conn, origin, "origin refused");
            return End::Close(CloseCode::Unauthorized.code());
        }
        // Held for the connection's life.
        let Some(_tenant_slot) = self.ctx.limits.admit_tenant(claims.tid) else {
            tracing::info!(conn = self.conn, tenant = %claims.tid, "tenant connection cap reached");
            return End::Close(CloseCode::RateLimited.code());
        };
        let src = Source {
            edge: cfg.edge_id.clone(),
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
        if !matches!(
            tokio::time::timeout(cfg.core_timeout, registered).await,
            Ok(Ok(true))
        ) {
            return End::Close(CloseCode::Unavailable.code());
        }
        let hello = Ingress::Hello { src: src.clone() };
        if self
            .ctx
            .ingress
            .ingress(&hello, src.principal, Some(self.out.clone()))
            .is_err()
        {
            return End::Close(CloseCode::Unavailable.code());
        }
        tokio::select! {
            r = tokio::time::timeout(cfg.core_timeout, welcomed) => {
                if !matches!(r, Ok(Ok(()))) {
                    tracing::warn!(conn = self.conn, "core-api did not answer hello in time");
                    return End::Close(CloseCode::Unavailable.code());
                }
            }
            _ = self.out.closing() => return End::Closing,
        }
        tracing::info!(
            conn = self.conn,
            tenant = %src.tenant,
            principal = %src.principal,
            role = src.role.as_str(),
            "connection open"
        );
        loop {
            let next = tokio::select! {
                biased;
                _ = self.out.closing() => return End::Closing,
                r = reader.next() => r,
            };
            let bytes = match next {
                Ok(b) => b,
                Err(end) => return end,
            };
            metrics::counter!("relaydesk_edge_frames_in_total").increment(1);
            if let Some(end) = self.handle(&src, &bytes).await {
                return end;
            }
        }
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

    /// Handles one client frame after `hello`; `Some` ends the connection.
    async fn handle(&mut self, src: &Source, bytes: &[u8]) -> Option<End> {
        let frame = match serde_json::from_slice::<ClientFrame>(bytes) {
            Ok(f) => {
                self.bad = 0;
                f
            }
            Err(e) => {
                self.bad += 1;
                metrics::counter!("relaydesk_edge_bad_frames_total").increment(1);
                if self.bad >= MAX_BAD_FRAMES {
                    return Some(End::Close(CloseCode::ProtocolViolation.code()));
                }
                self.error(
                    client_id_of(bytes),
                    None,
                    ErrorCode::BadRequest,
                    &e.to_string(),
                );
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
                        return Some(End::Close(CloseCode::RateLimited.code()));
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
                } else {
                    let entry = Ingress::Send {
                        src: src.clone(),
                        id: id.clone(),
                        conv,
                        kind,
                        body,
                        rx_us: unix_micros(),
                    };
                    if ctx
                        .ingress
                        .ingress(&entry, conv, Some(self.out.clone()))
                        .is_err()
                    {
                        self.error(Some(id), Some(conv), ErrorCode::Unavailable, "edge busy");
                    }
                }
            }
            ClientFrame::Sub { conv, after } => {
                let after = after.unwrap_or(0);
                let Some(ack) = ctx.hub().begin_sub(self.conn, conv, after, Instant::now()) else {
                    return Some(End::Close(CloseCode::Unavailable.code()));
                };
                // The registry entry must exist before core-api answers the sub.
                if !matches!(
                    tokio::time::timeout(ctx.config.core_timeout, ack).await,
                    Ok(Ok(true))
                ) {
                    return Some(End::Close(CloseCode::Unavailable.code()));
                }
                let entry = Ingress::Sub {
                    src: src.clone(),
                    conv,
                    after,
                };
                if ctx
                    .ingress
                    .ingress(&entry, conv, Some(self.out.clone()))
                    .is_err()
                {
                    ctx.hub().unsub(self.conn, conv);
                    self.error(None, Some(conv), ErrorCode::Unavailable, "edge busy");
                }
            }
            ClientFrame::Unsub { conv } => ctx.hub().unsub(self.conn, conv),
            ClientFrame::Ack { conv, seq } => {
                self.receipt(
                    conv,
                    Ingress::Ack {
                        src: src.clone(),
                        conv,
                        seq,
                    },
                );
            }
            ClientFrame::Read { conv, seq } => {
                self.receipt(
                    conv,
                    Ingress::Read {
                        src: src.clone(),
                        conv,
                        seq,
                    },
                );
            }
            ClientFrame::Typing { conv, on } => {
                if !ctx.hub().is_subscribed(self.conn, conv) {
                    self.error(
                        None,
                        Some(conv),
                        ErrorCode::Forbidden,
                        "not subscribed to this conversation",
                    );
                } else {
                    typing(&ctx, src, conv, on);
                }
            }
            ClientFrame::Ping => {
                self.out.send(ctx.pong.clone());
            }
        }
        None
    }

    fn receipt(&self, conv: Uuid, entry: Ingress) {
        if !self.ctx.hub().is_subscribed(self.conn, conv) {
            self.error(
                None,
                Some(conv),
                ErrorCode::Forbidden,
                "not subscribed to this conversation",
            );
            return;
        }
        if self
            .ctx
            .ingress
            .ingress(&entry, conv, Some(self.out.clone()))
            .is_err()
        {
            self.error(None, Some(conv), ErrorCode::Unavailable, "edge busy");
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

/// The `id` of an unparseable frame, when it has a valid one, for the `error` answer.
fn client_id_of(bytes: &[u8]) -> Option<String> {
    let v: serde_json::Value = serde_json::from_slice(bytes).ok()?;
    let id = v.get("id")?.as_str()?;
    wire::valid_client_id(id).then(|| id.to_owned())
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

    #[test]
    fn ids_of_bad_frames() {
        assert_eq!(
            client_id_of(br#"{"t":"send","id":"a1"}"#),
            Some("a1".to_owned())
        );
        assert_eq!(client_id_of(br#"{"t":"send","id":"a b"}"#), None);
        assert_eq!(client_id_of(b"nope"), None);
    }

    #[test]
    fn read_errors_map_to_close_codes() {
        assert_eq!(read_error(WebSocketError::FrameTooLarge), End::Close(1009));
        assert_eq!(read_error(WebSocketError::InvalidUTF8), End::Close(1007));
        assert_eq!(read_error(WebSocketError::UnexpectedEOF), End::Gone);
        assert_eq!(
            read_error(WebSocketError::ReservedBitsNotZero),
            End::Close(1002)
        );
    }
}
