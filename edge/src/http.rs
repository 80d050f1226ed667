//! HTTP routes of an edge: `GET /v1/ws` (WebSocket upgrade, handing the socket to a
//! session task), `GET /healthz`, `GET /readyz` (Redis reachable and not draining),
//! `GET /metrics` (Prometheus text), and in echo mode only (`EDGE_ECHO_PATH`) the echo
//! route's upgrade ([`crate::echo`]).

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use fred::prelude::ClientLike;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::{HeaderValue, CONTENT_TYPE, ORIGIN, SEC_WEBSOCKET_KEY, SEC_WEBSOCKET_VERSION};
use hyper::{Method, Request, Response, StatusCode, Version};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

use crate::Ctx;

pub type Body = Full<Bytes>;

/// The fixed routes (the echo route, when on, is none of them).
pub const ROUTES: [&str; 4] = ["/v1/ws", "/healthz", "/readyz", "/metrics"];

/// Which task serves an upgraded WebSocket.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Serve {
    Session,
    Echo,
}

/// Answers one HTTP request.
pub(crate) async fn handle(
    ctx: Arc<Ctx>,
    permit: Arc<crate::accept::Admission>,
    req: Request<Incoming>,
) -> Result<Response<Body>, Infallible> {
    let path = req.uri().path();
    let get = req.method() == Method::GET;
    let echo = ctx.config.echo_path.as_deref() == Some(path);
    Ok(match path {
        "/v1/ws" if get => upgrade(ctx, permit, req, Serve::Session),
        _ if echo && get => upgrade(ctx, permit, req, Serve::Echo),
        "/healthz" if get => text(StatusCode::OK, "ok"),
        "/readyz" if get => {
            if ready(&ctx).await {
                text(StatusCode::OK, "ready")
            } else {
                text(StatusCode::SERVICE_UNAVAILABLE, "not ready")
            }
        }
        "/metrics" if get => match relaydesk_shared::telemetry::render() {
            Some(body) => {
                let mut r = text(StatusCode::OK, body);
                r.headers_mut().insert(
                    CONTENT_TYPE,
                    HeaderValue::from_static("text/plain; version=0.0.4"),
                );
                r
            }
            None => text(
                StatusCode::SERVICE_UNAVAILABLE,
                "metrics recorder unavailable",
            ),
        },
        _ if echo || ROUTES.contains(&path) => {
            text(StatusCode::METHOD_NOT_ALLOWED, "method not allowed")
        }
        _ => text(StatusCode::NOT_FOUND, "not found"),
    })
}

/// Ready: not draining, and Redis answers a PING within a second.
async fn ready(ctx: &Ctx) -> bool {
    if ctx.is_draining() || !ctx.redis_healthy() {
        return false;
    }
    matches!(
        tokio::time::timeout(Duration::from_secs(1), ctx.redis.ping::<String>(None)).await,
        Ok(Ok(_))
    )
}

fn upgrade(
    ctx: Arc<Ctx>,
    permit: Arc<crate::accept::Admission>,
    mut req: Request<Incoming>,
    serve: Serve,
) -> Response<Body> {
    if ctx.is_draining() {
        return text(StatusCode::SERVICE_UNAVAILABLE, "draining");
    }
    if !ctx.limits.upgrade_allowed() {
        metrics::counter!("relaydesk_edge_rejected_connections_total", "reason" => "upgrade_rate")
            .increment(1);
        let mut r = text(
            StatusCode::TOO_MANY_REQUESTS,
            "too many connection attempts",
        );
        r.headers_mut()
            .insert(hyper::header::RETRY_AFTER, HeaderValue::from_static("1"));
        return r;
    }
    if !fastwebsockets::upgrade::is_upgrade_request(&req) {
        let mut r = text(StatusCode::UPGRADE_REQUIRED, "WebSocket upgrade required");
        r.headers_mut().insert(
            hyper::header::UPGRADE,
            HeaderValue::from_static("websocket"),
        );
        return r;
    }
    if let Some(refused) = handshake_refusal(&req) {
        return refused;
    }
    // fastwebsockets does not check Origin: the session does, against the token.
    let origin = req
        .headers()
        .get(ORIGIN)
        .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned());
    let (response, fut) = match fastwebsockets::upgrade::upgrade(&mut req) {
        Ok(x) => x,
        Err(e) => return text(StatusCode::BAD_REQUEST, format!("bad upgrade request: {e}")),
    };
    let tracker = ctx.tracker.clone();
    tracker.spawn(async move {
        let ws = match fut.await {
            Ok(ws) => ws,
            Err(e) => {
                tracing::debug!(error = %e, "upgrade failed");
                return;
            }
        };
        // The session reads and writes the socket itself (see `crate::reader`): take the
        // TCP stream back, with whatever hyper read past the request.
        match ws
            .into_inner()
            .into_inner()
            .downcast::<TokioIo<TcpStream>>()
        {
            Ok(parts) => {
                let io = parts.io.into_inner();
                match serve {
                    Serve::Session => {
                        crate::session::spawn_session(ctx, io, parts.read_buf, origin, permit)
                    }
                    Serve::Echo => crate::echo::spawn_echo(ctx, io, parts.read_buf, permit),
                }
            }
            Err(_) => tracing::error!("upgraded connection is not a TCP stream"),
        }
    });
    response.map(|_| Full::new(Bytes::new()))
}

/// What fastwebsockets leaves unchecked of an upgrade request (RFC 6455 section 4.2.1):
/// HTTP/1.1, one `Sec-WebSocket-Key` that is the base64 of 16 bytes (400 otherwise), and
/// `Sec-WebSocket-Version: 13` (otherwise 426 naming the version served, section 4.4).
/// `Some` is the answer to a request that breaks them.
fn handshake_refusal(req: &Request<Incoming>) -> Option<Response<Body>> {
    if req.version() != Version::HTTP_11 {
        return Some(text(
            StatusCode::BAD_REQUEST,
            "a WebSocket upgrade needs HTTP/1.1",
        ));
    }
    let mut versions = req.headers().get_all(SEC_WEBSOCKET_VERSION).iter();
    if !matches!((versions.next(), versions.next()), (Some(v), None) if v == "13") {
        let mut r = text(
            StatusCode::UPGRADE_REQUIRED,
            "unsupported Sec-WebSocket-Version: 13 is served",
        );
        let h = r.headers_mut();
        h.insert(SEC_WEBSOCKET_VERSION, HeaderValue::from_static("13"));
        h.insert(
            hyper::header::UPGRADE,
            HeaderValue::from_static("websocket"),
        );
        return Some(r);
    }
    let mut keys = req.headers().get_all(SEC_WEBSOCKET_KEY).iter();
    match (keys.next(), keys.next()) {
        (Some(key), None) if valid_key(key.as_bytes()) => None,
        _ => Some(text(
            StatusCode::BAD_REQUEST,
            "Sec-WebSocket-Key must be the base64 of 16 bytes",
        )),
    }
}

/// Whether `key` is the (canonical, padded) base64 of 16 bytes: 22 characters of the
/// base64 alphabet, the last with its 4 unused bits clear, then `==`.
fn valid_key(key: &[u8]) -> bool {
    fn sextet(c: u8) -> Option<u8> {
        match c {
            b'A'..=b'Z' => Some(c - b'A'),
            b'a'..=b'z' => Some(c - b'a' + 26),
            b'0'..=b'9' => Some(c - b'0' + 52),
            b'+' => Some(62),
            b'/' => Some(63),
            _ => None,
        }
    }
    let [body @ .., last, b'=', b'='] = key else {
        return false;
    };
    body.len() == 21
        && body.iter().all(|&c| sextet(c).is_some())
        && sextet(*last).is_some_and(|s| s & 0x0f == 0)
}

fn text(status: StatusCode, body: impl Into<Bytes>) -> Response<Body> {
    let mut r = Response::new(Full::new(body.into()));
    *r.status_mut() = status;
    r.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r
}

#[cfg(test)]
mod tests {
    use super::valid_key;

    #[test]
    fn keys_are_the_base64_of_16_bytes() {
        assert!(valid_key(b"dGhlIHNhbXBsZSBub25jZQ=="));
        assert!(valid_key(b"AAAAAAAAAAAAAAAAAAAAAA=="));
        assert!(valid_key(b"/+//////////////////ww=="));
        for bad in [
            &b""[..],
            b"abc",
            b"dGhlIHNhbXBsZSBub25jZQ",
            b"dGhlIHNhbXBsZSBub25jZQ=",
            b"dGhlIHNhbXBsZSBub25jZQ===",
            b"dGhlIHNhbXBsZSBub25jZR==",
            b"dGhlIHNhbXBsZSBub25j*Q==",
            b"dGhlIHNhbXBsZSBub25jZSE=",
            b"dGhlIHNhbXBsZSBub25jZSEh",
            b" dGhlIHNhbXBsZSBub25jZQ==",
        ] {
            assert!(!valid_key(bad), "{}", String::from_utf8_lossy(bad));
        }
    }
}
