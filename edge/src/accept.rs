//! The accept loop: TCP connections up to `max_connections` (a permit held by the
//! connection and, after an upgrade, by its WebSocket session), each served by hyper's
//! HTTP/1 server with a timer and a header read timeout so that slow clients are bounded.
//!
//! A connection over the edge's cap or its address's cap is refused with a canned HTTP
//! answer (503 or 429, `Retry-After`) by a small bounded task, never by hyper: at most
//! [`REFUSALS`] refusals are in flight, and past that excess connections are just closed.
//!
//! On shutdown the loop stops accepting, marks the edge draining and asks open HTTP
//! connections to finish; upgraded sockets are not hyper's any more and are drained by
//! [`crate::run`] through the session registry.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;

use crate::Ctx;

/// How long an HTTP connection may take to finish after shutdown was requested.
const HTTP_GRACE: Duration = Duration::from_secs(5);

/// Refusals answered at once; a flood past this is closed without an answer.
const REFUSALS: usize = 256;

/// How long a refused client has to send its request before the answer is written.
const REFUSAL_READ: Duration = Duration::from_millis(500);

/// Accepts connections until `shutdown` resolves; then sets the draining flag.
pub(crate) async fn serve(
    ctx: Arc<Ctx>,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) {
    let limit = Arc::new(Semaphore::new(ctx.config.max_connections));
    let refusals = Arc::new(Semaphore::new(REFUSALS));
    let stop_http = CancellationToken::new();
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        tokio::select! {
            _ = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    let Ok(permit) = limit.clone().try_acquire_owned() else {
                        metrics::counter!("relaydesk_edge_rejected_connections_total", "reason" => "edge_full").increment(1);
                        refuse(&refusals, stream, Refusal::EdgeFull);
                        continue;
                    };
                    let Some(ip) = ctx.limits.admit_ip(peer.ip()) else {
                        metrics::counter!("relaydesk_edge_rejected_connections_total", "reason" => "per_ip").increment(1);
                        refuse(&refusals, stream, Refusal::PerAddress);
                        continue;
                    };
                    let permit = Admission { _permit: permit, _ip: ip };
                    let _ = stream.set_nodelay(true);
                    ctx.tracker.spawn(serve_connection(ctx.clone(), stream, peer, permit, stop_http.clone()));
                }
                Err(e) => {
                    // Out of file descriptors and the like: back off briefly.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
        }
    }
    ctx.draining.store(true, Ordering::SeqCst);
    drop(listener);
    stop_http.cancel();
}

/// Why a connection is refused before HTTP is served.
#[derive(Debug, Clone, Copy)]
enum Refusal {
    EdgeFull,
    PerAddress,
}

impl Refusal {
    fn answer(self) -> &'static [u8] {
        match self {
            Refusal::EdgeFull => b"HTTP/1.1 503 Service Unavailable\r\nretry-after: 1\r\ncontent-type: text/plain; charset=utf-8\r\ncontent-length: 9\r\nconnection: close\r\n\r\nedge full",
            Refusal::PerAddress => b"HTTP/1.1 429 Too Many Requests\r\nretry-after: 1\r\ncontent-type: text/plain; charset=utf-8\r\ncontent-length: 38\r\nconnection: close\r\n\r\ntoo many connections from this address",
        }
    }
}

/// Answers a refused connection: reads what the client sent within [`REFUSAL_READ`] (so
/// closing does not reset the connection before the answer is read), writes the canned
/// answer and closes. Past [`REFUSALS`] refusals in flight the connection is just closed.
fn refuse(refusals: &Arc<Semaphore>, mut stream: TcpStream, why: Refusal) {
    let Ok(slot) = refusals.clone().try_acquire_owned() else {
        return;
    };
    tokio::spawn(async move {
        let _slot = slot;
        let mut buf = [0u8; 1024];
        let deadline = tokio::time::Instant::now() + REFUSAL_READ;
        // Up to the end of the request head, or whatever arrives in time.
        let mut seen = 0usize;
        while seen < buf.len() {
            match tokio::time::timeout_at(deadline, stream.read(&mut buf[seen..])).await {
                Ok(Ok(n)) if n > 0 => {
                    seen += n;
                    if buf[..seen].windows(4).any(|w| w == b"\r\n\r\n") {
                        break;
                    }
                }
                _ => break,
            }
        }
        let _ = tokio::time::timeout(REFUSAL_READ, async {
            let _ = stream.write_all(why.answer()).await;
            let _ = stream.shutdown().await;
        })
        .await;
    });
}

/// What an accepted connection holds for its whole life (through the upgrade): its
/// place under the edge's connection cap and under its source address's.
pub(crate) struct Admission {
    _permit: OwnedSemaphorePermit,
    _ip: crate::limits::Slot,
}

async fn serve_connection(
    ctx: Arc<Ctx>,
    stream: TcpStream,
    peer: SocketAddr,
    permit: Admission,
    stop: CancellationToken,
) {
    let permit = Arc::new(permit);
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(ctx.config.header_timeout)
        .keep_alive(true);
    let service = {
        let ctx = ctx.clone();
        let permit = permit.clone();
        service_fn(move |req| crate::http::handle(ctx.clone(), permit.clone(), req))
    };
    let conn = builder
        .serve_connection(TokioIo::new(stream), service)
        .with_upgrades();
    let mut conn = std::pin::pin!(conn);
    tokio::select! {
        r = conn.as_mut() => {
            if let Err(e) = r {
                tracing::debug!(peer = %peer, error = %e, "http connection ended with an error");
            }
        }
        _ = stop.cancelled() => {
            conn.as_mut().graceful_shutdown();
            let _ = tokio::time::timeout(HTTP_GRACE, conn).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::Refusal;

    #[test]
    fn refusal_answers_are_well_formed() {
        for why in [Refusal::EdgeFull, Refusal::PerAddress] {
            let text = std::str::from_utf8(why.answer()).unwrap_or_default();
            let (head, body) = text.split_once("\r\n\r\n").unwrap_or_default();
            let length = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length: "))
                .and_then(|v| v.parse::<usize>().ok());
            assert_eq!(length, Some(body.len()), "{why:?}: {text}");
        }
    }
}
