//! Wire protocol v1 client: connecting (optionally from a chosen loopback source address),
//! `hello` → `welcome`, and [`Peer`], a connection that sends scheduled messages and
//! checks everything it receives (latency, duplicates, order).
//!
//! Timestamps travel with the messages, so no shared bookkeeping is needed: the client
//! message id ends with the send time (`…x<unix nanos>`, echoed by `accepted`) and the
//! body carries it as `t0` (echoed by `msg`).

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{anyhow, bail, Context, Result};
use futures::{SinkExt, StreamExt};
use relaydesk_shared::wire::ServerFrame;
use serde_json::{json, Value};
use tokio::net::{TcpSocket, TcpStream};
use tokio::sync::{mpsc, watch};
use tokio_tungstenite::tungstenite::Message as WsMessage;
use tokio_tungstenite::WebSocketStream;
use uuid::Uuid;

use crate::stats::{self, Arrival, Rec, SeqSet};

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

/// A `send` frame with the timestamp in both the id and the body. With `body_bytes`, the
/// text is padded so that the serialized `body` object (`{"text":"…","t0":…}`) is that
/// many bytes (or as small as it can be).
pub fn send_frame(tag: &str, n: u64, conv: Uuid, body_bytes: Option<usize>) -> String {
    let t0 = unix_nanos();
    let text = match body_bytes {
        None => "loadtest".to_owned(),
        Some(size) => {
            let bare = json!({"text": "", "t0": t0}).to_string().len();
            "x".repeat(size.saturating_sub(bare))
        }
    };
    json!({"t": "send", "id": message_id(tag, n, t0), "conv": conv, "kind": "text",
           "body": {"text": text, "t0": t0}})
    .to_string()
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
    let (mut ws, _) = tokio_tungstenite::client_async(url, tcp)
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

/// What a [`Peer`] saw, returned when it stops.
#[derive(Debug, Default)]
pub struct PeerState {
    pub principal: Uuid,
    /// Per conversation, every seq received.
    pub seen: HashMap<Uuid, SeqSet>,
    /// (conversation, seq) of this peer's own accepted sends.
    pub accepted: Vec<(Uuid, u64)>,
    /// Highest accepted seq per conversation.
    pub heads: HashMap<Uuid, u64>,
    /// Why the connection ended early, if it did.
    pub closed: Option<String>,
}

/// Instructions to a peer's writer.
#[derive(Debug)]
pub enum Out {
    /// Send message number `n` of this peer into `conv` (body size: [`send_frame`]).
    Send {
        conv: Uuid,
        n: u64,
        body_bytes: Option<usize>,
    },
    /// Any other frame.
    Raw(String),
}

/// A connection that sends what it is told and audits what it receives.
pub struct Peer {
    tx: mpsc::UnboundedSender<Out>,
    rec: Rec,
    body_bytes: Option<usize>,
    reader: tokio::task::JoinHandle<PeerState>,
    writer: tokio::task::JoinHandle<()>,
}

impl Peer {
    /// Starts the reader and writer tasks; they run until `stop` becomes true. With
    /// `deliveries` false, `msg` frames are checked for order but not counted as deliveries
    /// (a publisher that happens to be subscribed).
    pub fn start(
        ws: Ws,
        principal: Uuid,
        tag: String,
        rec: Rec,
        stop: watch::Receiver<bool>,
        deliveries: bool,
    ) -> Peer {
        let (mut sink, mut stream) = ws.split();
        let (tx, mut rx) = mpsc::unbounded_channel::<Out>();
        let wrec = rec.clone();
        let mut wstop = stop.clone();
        let writer = tokio::spawn(async move {
            let frame = |o: Out| match o {
                Out::Send {
                    conv,
                    n,
                    body_bytes,
                } => WsMessage::Text(send_frame(&tag, n, conv, body_bytes).into()),
                Out::Raw(s) => WsMessage::Text(s.into()),
            };
            loop {
                let first = tokio::select! {
                    biased;
                    o = rx.recv() => o,
                    _ = wstop.wait_for(|s| *s) => None,
                };
                let Some(o) = first else { break };
                if sink.feed(frame(o)).await.is_err() {
                    break;
                }
                while let Ok(o) = rx.try_recv() {
                    if sink.feed(frame(o)).await.is_err() {
                        return;
                    }
                }
                if sink.flush().await.is_err() {
                    return;
                }
            }
            let _ = sink.send(WsMessage::Close(None)).await;
        });
        let mut rstop = stop;
        let reader = tokio::spawn(async move {
            let mut st = PeerState {
                principal,
                ..PeerState::default()
            };
            loop {
                let m = tokio::select! {
                    m = stream.next() => m,
                    _ = rstop.wait_for(|s| *s) => break,
                };
                match m {
                    Some(Ok(WsMessage::Text(t))) => {
                        if let Some(f) = parse(&t) {
                            handle(&mut st, &rec, f, deliveries);
                        }
                    }
                    Some(Ok(WsMessage::Close(c))) => {
                        if !*rstop.borrow() {
                            st.closed = Some(format!("closed {:?}", c.map(|c| u16::from(c.code))));
                        }
                        break;
                    }
                    Some(Ok(_)) => {}
                    Some(Err(e)) => {
                        st.closed = Some(e.to_string());
                        break;
                    }
                    None => {
                        st.closed = Some("connection ended".into());
                        break;
                    }
                }
            }
            rec.connections(-1);
            st
        });
        Peer {
            tx,
            rec: wrec,
            body_bytes: None,
            reader,
            writer,
        }
    }

    /// From now on, pads each message's `body` to `bytes` (see [`send_frame`]).
    pub fn with_body_bytes(mut self, bytes: Option<usize>) -> Peer {
        self.body_bytes = bytes;
        self
    }

    /// Queues message `n` for `conv`; counted as sent now, stamped when written.
    pub fn send(&self, conv: Uuid, n: u64) {
        self.rec.add(stats::SENT, 1);
        let _ = self.tx.send(Out::Send {
            conv,
            n,
            body_bytes: self.body_bytes,
        });
    }

    pub fn raw(&self, frame: String) {
        let _ = self.tx.send(Out::Raw(frame));
    }

    /// Waits for both tasks (after `stop` was set) and returns what the reader saw.
    pub async fn finish(self) -> PeerState {
        let _ = self.writer.await;
        self.reader.await.unwrap_or_default()
    }
}

fn handle(st: &mut PeerState, rec: &Rec, f: ServerFrame, deliveries: bool) {
    match f {
        ServerFrame::Accepted(a) => {
            if let Some(t0) = id_t0(&a.id) {
                rec.record(stats::ACCEPT, since_nanos(t0));
            }
            rec.add(stats::ACCEPTED, 1);
            st.accepted.push((a.conv, a.seq));
            let h = st.heads.entry(a.conv).or_default();
            *h = (*h).max(a.seq);
        }
        ServerFrame::Error { id: Some(_), .. } => rec.add(stats::ERRORS, 1),
        ServerFrame::Msg(m) => {
            match st.seen.entry(m.conv).or_default().insert(m.seq) {
                Arrival::New => {}
                Arrival::Duplicate => rec.add(stats::DUPLICATED, 1),
                Arrival::Reordered => rec.add(stats::REORDERED, 1),
            }
            if deliveries && m.from.id != st.principal {
                if let Some(t0) = body_t0(&m.body) {
                    rec.record(stats::DELIVER, since_nanos(t0));
                    rec.add(stats::DELIVERED, 1);
                }
            }
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pads_bodies() {
        let conv = Uuid::new_v4();
        for size in [100, 1000] {
            let f: Value = serde_json::from_str(&send_frame("p0-", 1, conv, Some(size))).unwrap();
            assert_eq!(f["body"].to_string().len(), size);
            assert!(body_t0(&f["body"]).is_some());
        }
        let f: Value = serde_json::from_str(&send_frame("p0-", 1, conv, Some(1))).unwrap();
        assert_eq!(f["body"]["text"], "");
        let f: Value = serde_json::from_str(&send_frame("p0-", 1, conv, None)).unwrap();
        assert_eq!(f["body"]["text"], "loadtest");
    }

    #[test]
    fn ids_carry_time() {
        let id = message_id("v12-", 7, 1234567890);
        assert!(relaydesk_shared::wire::valid_client_id(&id));
        assert_eq!(id_t0(&id), Some(1234567890));
    }
}
