//! Wire protocol v1 client basics: connecting (optionally from a chosen loopback source
//! address), `hello` → `welcome`, and the frames the harness sends and reads back. The
//! connection that sends and audits is [`crate::peer::Peer`].
//!
//! Timestamps travel with the messages, so no shared bookkeeping is needed: the client
//! message id ends with the send time (`…x<unix nanos>`, echoed by `accepted`) and the
//! body carries it as `t0` (echoed by `msg`), with the sender's message number `n` (two
//! stored messages with the same sender and `n` are one message stored twice).

use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{anyhow, bail, Context, Result};
use futures::{SinkExt, StreamExt};
use relaydesk_shared::wire::ServerFrame;
use serde_json::{json, Value};
use tokio::net::{TcpSocket, TcpStream};
use tokio_tungstenite::tungstenite::Message as WsMessage;
use tokio_tungstenite::WebSocketStream;
use uuid::Uuid;

pub type Ws = WebSocketStream<TcpStream>;

/// Nanoseconds since the Unix epoch (the clock shared by every process of the harness).
pub fn unix_nanos() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

/// Time elapsed since a `unix_nanos` stamp.
pub fn since_nanos(t0: u64) -> Duration {
    Duration::from_nanos(unix_nanos().saturating_sub(t0))
}

/// A client message id that carries its send time.
pub fn message_id(tag: &str, n: u64, t0: u64) -> String {
    format!("{tag}{n}x{t0}")
}

/// The send time carried by a [`message_id`].
pub fn id_t0(id: &str) -> Option<u64> {
    id.rsplit_once('x')?.1.parse().ok()
}

/// The send time carried by a message body.
pub fn body_t0(body: &Value) -> Option<u64> {
    body.get("t0")?.as_u64()
}

/// The sender's message number carried by a message body.
pub fn body_n(body: &Value) -> Option<u64> {
    body.get("n")?.as_u64()
}

/// A `send` frame of message `n`, stamped now, and its client id: the timestamp is in both
/// the id and the body, the body also carries `n`. With `body_bytes`, the text is padded
/// so that the serialized `body` object (`{"text":"…","t0":…,"n":…}`) is that many bytes
/// (or as small as it can be).
pub fn stamped_send(tag: &str, n: u64, conv: Uuid, body_bytes: Option<usize>) -> (String, String) {
    let t0 = unix_nanos();
    let text = match body_bytes {
        None => "loadtest".to_owned(),
        Some(size) => {
            let bare = json!({"text": "", "t0": t0, "n": n}).to_string().len();
            "x".repeat(size.saturating_sub(bare))
        }
    };
    let id = message_id(tag, n, t0);
    let frame = json!({"t": "send", "id": id, "conv": conv, "kind": "text",
           "body": {"text": text, "t0": t0, "n": n}})
    .to_string();
    (id, frame)
}

pub fn parse(text: &str) -> Option<ServerFrame> {
    serde_json::from_str(text).ok()
}

/// What `welcome` said.
#[derive(Debug, Clone)]
pub struct Welcome {
    pub principal: Uuid,
    pub conn: String,
}

/// TCP connect (bound to `source` when given and the edge is on loopback), WebSocket
/// upgrade, `hello` → `welcome`. Returns the time all of that took.
pub async fn connect(
    url: &str,
    source: Option<IpAddr>,
    token: &str,
    timeout: Duration,
) -> Result<(Ws, Welcome, Duration)> {
    let started = Instant::now();
    tokio::time::timeout(timeout, connect_inner(url, source, token))
        .await
        .map_err(|_| anyhow!("connect timed out after {timeout:?}"))?
        .map(|(ws, w)| (ws, w, started.elapsed()))
}

/// Read buffer of a harness connection. tungstenite's default (128 KiB, filled on the
/// first read) would make the harness, not the edge, run out of memory at 200,000
/// connections; 8 KiB still takes a burst of small frames in one read.
const READ_BUFFER: usize = 8 * 1024;

fn ws_config() -> tokio_tungstenite::tungstenite::protocol::WebSocketConfig {
    tokio_tungstenite::tungstenite::protocol::WebSocketConfig::default()
        .read_buffer_size(READ_BUFFER)
}

async fn connect_inner(url: &str, source: Option<IpAddr>, token: &str) -> Result<(Ws, Welcome)> {
    let hostport = url
        .strip_prefix("ws://")
        .and_then(|r| r.split('/').next())
        .with_context(|| format!("{url}: only ws:// URLs are supported"))?;
    let addr: SocketAddr = tokio::net::lookup_host(hostport)
        .await
        .with_context(|| format!("resolving {hostport}"))?
        .next()
        .with_context(|| format!("{hostport} resolves to nothing"))?;
    let socket = if addr.is_ipv4() {
        TcpSocket::new_v4()
    } else {
        TcpSocket::new_v6()
    }?;
    if let Some(src) = source {
        if addr.ip().is_loopback() && src.is_ipv4() == addr.is_ipv4() {
            // Without this, bind() reserves an ephemeral port on `src` for any destination,
            // searching a port range that gets crowded at tens of thousands of sockets per
            // address: the search runs in the kernel, blocks the runtime thread, and pongs
            // go unanswered. With it the port is chosen at connect() per 4-tuple.
            if src.is_ipv4() {
                nix::sys::socket::setsockopt(
                    &socket,
                    nix::sys::socket::sockopt::IpBindAddressNoPort,
                    &true,
                )
                .context("setting IP_BIND_ADDRESS_NO_PORT")?;
            }
            socket
                .bind(SocketAddr::new(src, 0))
                .with_context(|| format!("binding to {src}"))?;
        }
    }
    let tcp = socket
        .connect(addr)
        .await
        .with_context(|| format!("connecting to {addr}"))?;
    tcp.set_nodelay(true)?;
    let (mut ws, _) = tokio_tungstenite::client_async_with_config(url, tcp, Some(ws_config()))
        .await
        .with_context(|| format!("upgrading {url}"))?;
    ws.send(WsMessage::Text(
        json!({"t": "hello", "token": token}).to_string().into(),
    ))
    .await?;
    loop {
        match ws.next().await {
            Some(Ok(WsMessage::Text(t))) => match parse(&t) {
                Some(ServerFrame::Welcome {
                    principal, conn, ..
                }) => return Ok((ws, Welcome { principal, conn })),
                Some(ServerFrame::Error { code, message, .. }) => {
                    bail!("hello refused: {code:?} {message}")
                }
                _ => continue,
            },
            Some(Ok(WsMessage::Close(c))) => {
                bail!("closed before welcome: {:?}", c.map(|c| u16::from(c.code)))
            }
            Some(Ok(_)) => continue,
            Some(Err(e)) => return Err(e).context("before welcome"),
            None => bail!("closed before welcome"),
        }
    }
}

/// Pauses between reconnect attempts: 50 ms doubling up to 2 s, each with up to as much
/// again of jitter (so clients dropped together do not return together).
#[derive(Debug, Clone)]
pub struct Backoff {
    base: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff { base: Self::FIRST }
    }
}

impl Backoff {
    const FIRST: Duration = Duration::from_millis(50);
    const MAX: Duration = Duration::from_secs(2);

    /// The pause before the next attempt; the one after it will be twice as long.
    pub fn pause(&mut self) -> Duration {
        let pause = self.base + Duration::from_millis(rand_ms(self.base.as_millis() as u64));
        self.base = (self.base * 2).min(Self::MAX);
        pause
    }
}

/// A small pseudo-random number below `max` (jitter) without a generator dependency.
pub fn rand_ms(max: u64) -> u64 {
    let n = unix_nanos();
    (n ^ (n >> 17)) % max.max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pads_bodies() {
        let conv = Uuid::new_v4();
        let send_frame = |tag, n, conv, size| stamped_send(tag, n, conv, size).1;
        for size in [100, 1000] {
            let f: Value = serde_json::from_str(&send_frame("p0-", 1, conv, Some(size))).unwrap();
            assert_eq!(f["body"].to_string().len(), size);
            assert!(body_t0(&f["body"]).is_some());
        }
        let f: Value = serde_json::from_str(&send_frame("p0-", 1, conv, Some(1))).unwrap();
        assert_eq!(f["body"]["text"], "");
        let f: Value = serde_json::from_str(&send_frame("p0-", 7, conv, None)).unwrap();
        assert_eq!(f["body"]["text"], "loadtest");
        assert_eq!(body_n(&f["body"]), Some(7));
    }

    #[test]
    fn ids_carry_time() {
        let id = message_id("v12-", 7, 1234567890);
        assert!(relaydesk_shared::wire::valid_client_id(&id));
        assert_eq!(id_t0(&id), Some(1234567890));
        let (id, frame) = stamped_send("v12-", 7, Uuid::new_v4(), None);
        let f: Value = serde_json::from_str(&frame).unwrap();
        assert_eq!(f["id"], id.as_str());
        assert_eq!(id_t0(&id), body_t0(&f["body"]));
    }
}
