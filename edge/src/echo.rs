//! Echo mode (`EDGE_ECHO_PATH`, off by default): a WebSocket route that sends every text
//! and binary message straight back, without `hello`, token or bus. It reads and writes
//! through the code every session uses ([`crate::session::Link`]: [`crate::reader`] and
//! [`crate::writer`]), so an RFC 6455 conformance suite run against it (`cargo xtask
//! conformance`, `docs/conformance/`) checks the framing the protocol rides on: parsing,
//! fragmentation, UTF-8, close codes, size bounds and timeouts. Only binary messages are
//! treated differently: the protocol refuses them (1003), echo mode returns them.

use std::sync::Arc;

use bytes::Bytes;
use relaydesk_shared::CloseCode;
use tokio::net::TcpStream;

use crate::reader::End;
use crate::session::Link;
use crate::writer::Outbound;
use crate::Ctx;

/// Starts the task echoing one upgraded WebSocket until it closes. `early` holds bytes
/// the HTTP layer read past the upgrade request.
pub(crate) fn spawn_echo(
    ctx: Arc<Ctx>,
    io: TcpStream,
    early: Bytes,
    permit: Arc<crate::accept::Admission>,
) {
    let conn = ctx.next_conn_id();
    let out = Outbound::new(ctx.config.outbound_queue_bytes);
    // Registered like a session: heartbeats and the drain reach it too.
    ctx.session_opened(conn, out.clone());
    let mut link = Link::new(io, early, ctx.config.max_message_bytes, true, out.clone());
    let tracker = ctx.tracker.clone();
    tracker.spawn(async move {
        let end = if ctx.is_draining() {
            End::Close(CloseCode::Restart)
        } else {
            echo(&ctx, &mut link, &out).await
        };
        link.end(conn, end).await;
        out.finish(1006);
        ctx.session_closed(conn);
        drop(permit);
    });
}

/// Sends each message back with its own opcode, until the connection ends.
async fn echo(ctx: &Ctx, link: &mut Link, out: &Outbound) -> End {
    loop {
        let msg = match link.next_message(ctx.config.frame_timeout).await {
            Ok(m) => m,
            Err(end) => return end,
        };
        let payload = Bytes::from(msg.payload);
        let queued = if msg.binary {
            out.send_binary(payload)
        } else {
            out.send(payload)
        };
        if !queued {
            // Closing (a close was requested, or the echo overflowed the queue: 4008).
            return End::Closing;
        }
        // A client that keeps the socket busy must not keep the worker thread.
        tokio::task::consume_budget().await;
    }
}
