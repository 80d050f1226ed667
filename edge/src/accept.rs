//! The accept loop: TCP connections up to `max_connections` (a permit held by the
//! connection and, after an upgrade, by its WebSocket session), each served by hyper's
//! HTTP/1 server with a timer and a header read timeout so that slow clients are bounded.
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
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;

use crate::Ctx;

/// How long an HTTP connection may take to finish after shutdown was requested.
const HTTP_GRACE: Duration = Duration::from_secs(5);

/// Accepts connections until `shutdown` resolves; then sets the draining flag.
pub(crate) async fn serve(
    ctx: Arc<Ctx>,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) {
    let limit = Arc::new(Semaphore::new(ctx.config.max_connections));
    let stop_http = CancellationToken::new();
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        tokio::select! {
            _ = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    let Ok(permit) = limit.clone().try_acquire_owned() else {
                        metrics::counter!("relaydesk_edge_rejected_connections_total", "reason" => "edge_full").increment(1);
                        drop(stream);
                        continue;
                    };
                    let Some(ip) = ctx.limits.admit_ip(peer.ip()) else {
                        metrics::counter!("relaydesk_edge_rejected_connections_total", "reason" => "per_ip").increment(1);
                        drop(stream);
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
