//! [`Peer`]: one party's connection that sends what it is told and audits everything it
//! receives (latency, duplicates, order; loss is judged at the end from [`PeerState`]).
//!
//! A peer started with a [`Redial`] survives its connection. When the edge closes it with a
//! code that invites a reconnect (1001, 1012 draining, 4008 slow consumer, 4011, 4029:
//! `CloseCode::should_reconnect`) or the TCP connection ends, the peer reconnects after a
//! jittered backoff (50–100 ms, doubling up to 2 s) to the next edge of the list that
//! accepts, sends `hello` with the same token, resumes every conversation it is in with
//! `sub` `after` its last contiguous seq, and resends, in the order first written and with
//! the same client ids (the server dedupes by id), its messages not yet answered. What it is
//! told to send meanwhile waits in its queue. Each success counts in `reconnects`; time from
//! the close until every conversation is caught up with its `subbed` head is `resume`. Any
//! other close, or no edge accepting within [`Redial::give_up`], ends the peer and is
//! reported in [`PeerState::closed`]. A peer without a `Redial` ends on any close.
//!
//! Accounting across resumes:
//! - A seq received again because a resume replayed it (at-least-once redelivery) is
//!   dropped by seq: not a delivery, not a duplicate.
//! - `duplicated`: one client message stored twice — two seqs whose bodies carry the same
//!   message number `n` of the same sender — or one seq received twice within one
//!   connection's stream of a conversation (no resume in between).
//! - `reordered`: a seq lower than one before it within one connection's stream. A stream
//!   starts with the connection (live from the automatic subscription) or, on a resumed
//!   connection, at the `subbed` of its `sub`; frames that arrive before that `subbed` are
//!   not judged, as the protocol allows them to come again in the replay.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use futures::{SinkExt, StreamExt};
use relaydesk_shared::close::CloseCode;
use relaydesk_shared::wire::{Message, ServerFrame};
use serde_json::json;
use tokio::sync::{mpsc, watch};
use tokio_tungstenite::tungstenite::{self, Message as WsMessage, Utf8Bytes};
use uuid::Uuid;

use crate::client::{self, Ws};
use crate::stats::{self, Arrival, Rec, SeqSet};

/// What a [`Peer`] saw, returned when it stops.
#[derive(Debug, Default)]
pub struct PeerState {
    pub principal: Uuid,
    /// Per conversation, every seq received (over every connection of the peer).
    pub seen: HashMap<Uuid, SeqSet>,
    /// (conversation, seq) of this peer's own accepted sends.
    pub accepted: Vec<(Uuid, u64)>,
    /// Highest accepted seq per conversation.
    pub heads: HashMap<Uuid, u64>,
    /// Why the peer ended early (a close it does not reconnect after, or no reconnect).
    pub closed: Option<String>,
}

/// Instructions to a peer.
#[derive(Debug)]
pub enum Out {
    /// Send message number `n` of this peer into `conv` (body: [`client::stamped_send`]).
    Send {
        conv: Uuid,
        n: u64,
        body_bytes: Option<usize>,
    },
}

/// How a peer reconnects after its connection is closed or lost.
#[derive(Debug, Clone)]
pub struct Redial {
    /// The target's edges; reconnects go to the next one after the current edge.
    pub edges: Vec<String>,
    /// Index in `edges` of the edge the peer's first connection is on.
    pub edge: usize,
    /// The token `hello` sends again.
    pub token: String,
    /// Conversations the peer is in: resumed even before anything arrived in them.
    pub convs: Vec<Uuid>,
    /// Limit of one connection attempt (TCP, upgrade, `hello` → `welcome`).
    pub connect_timeout: Duration,
    /// How long the peer keeps trying before it gives up (and ends as disconnected).
    pub give_up: Duration,
}

/// A connection that sends what it is told and audits what it receives.
pub struct Peer {
    tx: mpsc::UnboundedSender<Out>,
    rec: Rec,
    body_bytes: Option<usize>,
    task: tokio::task::JoinHandle<PeerState>,
}

impl Peer {
    /// Starts the peer's task on a connection (counted open in `rec` by the caller); it runs
    /// until `stop` becomes true, or until the connection ends. With `deliveries` false,
    /// `msg` frames are checked for order but not counted as deliveries (a publisher that
    /// happens to be subscribed).
    pub fn start(
        ws: Ws,
        principal: Uuid,
        tag: String,
        rec: Rec,
        stop: watch::Receiver<bool>,
        deliveries: bool,
    ) -> Peer {
        Peer::spawn(ws, principal, tag, rec, stop, deliveries, None)
    }

    /// Like [`Peer::start`] (deliveries counted), for a party that reconnects and resumes
    /// as `redial` says when its connection is closed or lost.
    pub fn start_resilient(
        ws: Ws,
        principal: Uuid,
        tag: String,
        rec: Rec,
        stop: watch::Receiver<bool>,
        redial: Redial,
    ) -> Peer {
        Peer::spawn(ws, principal, tag, rec, stop, true, Some(redial))
    }

    fn spawn(
        ws: Ws,
        principal: Uuid,
        tag: String,
        rec: Rec,
        stop: watch::Receiver<bool>,
        deliveries: bool,
        redial: Option<Redial>,
    ) -> Peer {
        let (tx, rx) = mpsc::unbounded_channel::<Out>();
        let party = Party::new(principal, tag, rec.clone(), deliveries, redial, rx, stop);
        Peer {
            tx,
            rec,
            body_bytes: None,
            task: tokio::spawn(party.run(ws)),
        }
    }

    /// From now on, pads each message's `body` to `bytes` (see [`client::stamped_send`]).
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

    /// Waits for the peer's task (after `stop` was set) and returns what it saw.
    pub async fn finish(self) -> PeerState {
        self.task.await.unwrap_or_default()
    }
}

/// How one connection of a peer ended.
enum End {
    /// `stop` turned true.
    Stopped,
    /// Closed by the edge or lost; `resumable` when a client should reconnect.
    Ended { reason: String, resumable: bool },
}

impl End {
    /// The TCP connection (or the WebSocket on it) failed: a client reconnects.
    fn lost(reason: String) -> End {
        End::Ended {
            reason,
            resumable: true,
        }
    }
}

/// A send written but not yet answered (`accepted` or `error`).
struct Unanswered {
    /// Position in the order sends were first written.
    order: u64,
    conv: Uuid,
    frame: Utf8Bytes,
}

/// One connection's delivery stream of one conversation: what order and repeats are
/// judged against.
struct Stream {
    /// False until the `subbed` of a resume's `sub` (frames before it are not judged).
    judged: bool,
    /// Highest seq of the stream so far (the `sub`'s `after` at its start).
    last: u64,
    /// Seqs this stream delivered.
    got: SeqSet,
}

impl Stream {
    /// Live from the connection's start (automatic subscription).
    fn live() -> Stream {
        Stream::after(0, true)
    }

    fn after(after: u64, judged: bool) -> Stream {
        Stream {
            judged,
            last: after,
            got: SeqSet::default(),
        }
    }

    fn arrive(&mut self, seq: u64) -> Option<Arrival> {
        if !self.judged {
            return None;
        }
        if self.got.contains(seq) {
            return Some(Arrival::Duplicate);
        }
        self.got.insert(seq);
        if seq <= self.last {
            return Some(Arrival::Reordered);
        }
        self.last = seq;
        Some(Arrival::New)
    }
}

/// A resume in progress: since when, and what is still awaited.
struct Resuming {
    /// When the connection was lost (the first loss, if several follow each other).
    since: Instant,
    /// Conversations whose `subbed` has not arrived yet.
    subs: HashSet<Uuid>,
    /// Conversations not caught up yet with the head their `subbed` announced.
    heads: HashMap<Uuid, u64>,
}

/// The state of a peer's task.
struct Party {
    tag: String,
    rec: Rec,
    deliveries: bool,
    redial: Option<Redial>,
    /// Index in `redial.edges` of the current edge.
    edge: usize,
    st: PeerState,
    /// Own sends not answered yet, by client id: resent after a reconnect.
    unanswered: HashMap<String, Unanswered>,
    /// Sends written so far (orders [`Unanswered`]).
    written: u64,
    /// Messages of other senders by (sender, message number `n`): the (conversation, seq)
    /// first received for it. A second seq for the same key is a duplicate store.
    stored: HashMap<(Uuid, u64), (Uuid, u64)>,
    /// The current connection's stream of each conversation.
    streams: HashMap<Uuid, Stream>,
    resuming: Option<Resuming>,
    rx: mpsc::UnboundedReceiver<Out>,
    /// False once every sender of `rx` is gone.
    rx_open: bool,
    stop: watch::Receiver<bool>,
}

impl Party {
    fn new(
        principal: Uuid,
        tag: String,
        rec: Rec,
        deliveries: bool,
        redial: Option<Redial>,
        rx: mpsc::UnboundedReceiver<Out>,
        stop: watch::Receiver<bool>,
    ) -> Party {
        Party {
            tag,
            rec,
            deliveries,
            edge: redial.as_ref().map_or(0, |r| r.edge),
            redial,
            st: PeerState {
                principal,
                ..PeerState::default()
            },
            unanswered: HashMap::new(),
            written: 0,
            stored: HashMap::new(),
            streams: HashMap::new(),
            resuming: None,
            rx,
            rx_open: true,
            stop,
        }
    }

    async fn run(mut self, mut ws: Ws) -> PeerState {
        loop {
            let end = self.connection(&mut ws).await;
            self.rec.connections(-1);
            let reason = match end {
                End::Stopped => break,
                End::Ended { reason, resumable } if resumable && self.redial.is_some() => reason,
                End::Ended { reason, .. } => {
                    self.st.closed = Some(reason);
                    break;
                }
            };
            let since = self
                .resuming
                .as_ref()
                .map_or_else(Instant::now, |r| r.since);
            match self.reconnect(&reason).await {
                Ok(Some(new)) => {
                    ws = new;
                    self.rec.add(stats::RECONNECTS, 1);
                    self.rec.connections(1);
                    // A failed write surfaces as the next connection's end.
                    let _ = self.resume(&mut ws, since).await;
                }
                Ok(None) => break,
                Err(why) => {
                    self.st.closed = Some(why);
                    break;
                }
            }
        }
        self.st
    }

    /// Serves one connection until it ends or `stop` turns true.
    async fn connection(&mut self, ws: &mut Ws) -> End {
        loop {
            tokio::select! {
                biased;
                _ = stopped(&mut self.stop) => {
                    let _ = tokio::time::timeout(
                        Duration::from_secs(1),
                        ws.send(WsMessage::Close(None)),
                    )
                    .await;
                    return End::Stopped;
                }
                o = self.rx.recv(), if self.rx_open => match o {
                    Some(o) => {
                        if let Err(e) = self.write(ws, o).await {
                            return End::lost(format!("write failed: {e}"));
                        }
                    }
                    None => self.rx_open = false,
                },
                m = ws.next() => match m {
                    Some(Ok(WsMessage::Text(t))) => {
                        if let Some(f) = client::parse(&t) {
                            self.handle(f);
                        }
                    }
                    Some(Ok(WsMessage::Close(c))) => {
                        let code = c.map(|c| u16::from(c.code));
                        return End::Ended {
                            reason: format!("closed {code:?}"),
                            resumable: code.is_some_and(reconnect_after),
                        };
                    }
                    Some(Ok(_)) => {}
                    Some(Err(e)) => return End::lost(e.to_string()),
                    None => return End::lost("connection ended".into()),
                },
            }
        }
    }

    /// Writes `first` and whatever else is queued, then flushes.
    async fn write(&mut self, ws: &mut Ws, first: Out) -> Result<(), tungstenite::Error> {
        let text = self.frame(first);
        ws.feed(WsMessage::Text(text)).await?;
        while let Ok(o) = self.rx.try_recv() {
            let text = self.frame(o);
            ws.feed(WsMessage::Text(text)).await?;
        }
        ws.flush().await
    }

    /// The frame for `o`; a send is stamped now and kept until it is answered.
    fn frame(&mut self, o: Out) -> Utf8Bytes {
        match o {
            Out::Send {
                conv,
                n,
                body_bytes,
            } => {
                let (id, frame) = client::stamped_send(&self.tag, n, conv, body_bytes);
                let frame = Utf8Bytes::from(frame);
                self.written += 1;
                self.unanswered.insert(
                    id,
                    Unanswered {
                        order: self.written,
                        conv,
                        frame: frame.clone(),
                    },
                );
                frame
            }
        }
    }

    fn handle(&mut self, f: ServerFrame) {
        match f {
            ServerFrame::Msg(m) => self.msg(&m),
            ServerFrame::Accepted(a) => {
                // An answer to nothing unanswered (a repeat) is ignored: the sender's
                // figures count each message once.
                if self.unanswered.remove(&a.id).is_none() {
                    return;
                }
                if let Some(t0) = client::id_t0(&a.id) {
                    self.rec.record(stats::ACCEPT, client::since_nanos(t0));
                }
                self.rec.add(stats::ACCEPTED, 1);
                self.st.accepted.push((a.conv, a.seq));
                let h = self.st.heads.entry(a.conv).or_default();
                *h = (*h).max(a.seq);
            }
            ServerFrame::Error { id: Some(id), .. } => self.refused(&id),
            ServerFrame::Subbed { conv, head } => self.subbed(conv, head),
            _ => {}
        }
    }

    /// An `error` answering one of this peer's sends (counted once per send).
    fn refused(&mut self, id: &str) {
        if self.unanswered.remove(id).is_some() {
            self.rec.add(stats::ERRORS, 1);
        }
    }

    fn msg(&mut self, m: &Message) {
        let seen = self.st.seen.entry(m.conv).or_default();
        let first_time = seen.insert(m.seq) != Arrival::Duplicate;
        let contiguous = seen.contiguous;
        match self
            .streams
            .entry(m.conv)
            .or_insert_with(Stream::live)
            .arrive(m.seq)
        {
            Some(Arrival::Duplicate) => self.rec.add(stats::DUPLICATED, 1),
            Some(Arrival::Reordered) => self.rec.add(stats::REORDERED, 1),
            Some(Arrival::New) | None => {}
        }
        if self.resuming.is_some() {
            self.caught_up(m.conv, contiguous);
        }
        if !first_time {
            // Redelivered by a resume: already counted when it first arrived.
            return;
        }
        if self.deliveries && m.from.id != self.st.principal {
            if let Some(n) = client::body_n(&m.body) {
                let at = (m.conv, m.seq);
                if let Some(first) = self.stored.insert((m.from.id, n), at) {
                    if first != at {
                        self.rec.add(stats::DUPLICATED, 1);
                    }
                }
            }
            if let Some(t0) = client::body_t0(&m.body) {
                self.rec.record(stats::DELIVER, client::since_nanos(t0));
                self.rec.add(stats::DELIVERED, 1);
            }
        }
    }

    /// A resume's `sub` is answered: its stream is judged from here, and the conversation
    /// is caught up once every seq up to `head` has arrived.
    fn subbed(&mut self, conv: Uuid, head: u64) {
        if let Some(s) = self.streams.get_mut(&conv) {
            s.judged = true;
        }
        let contiguous = self.st.seen.get(&conv).map_or(0, |s| s.contiguous);
        if let Some(r) = self.resuming.as_mut() {
            if r.subs.remove(&conv) && contiguous < head {
                r.heads.insert(conv, head);
            }
        }
        self.caught_up(conv, contiguous);
    }

    /// Notes that `conv` has every seq up to `contiguous`; records `resume` once every
    /// conversation has answered its `sub` and caught up.
    fn caught_up(&mut self, conv: Uuid, contiguous: u64) {
        let Some(r) = self.resuming.as_mut() else {
            return;
        };
        if r.heads.get(&conv).is_some_and(|&h| contiguous >= h) {
            r.heads.remove(&conv);
        }
        if r.subs.is_empty() && r.heads.is_empty() {
            self.rec.record(stats::RESUME, r.since.elapsed());
            self.resuming = None;
        }
    }

    /// Tries the next edges with backoff until one accepts. `Ok(None)`: `stop` turned
    /// true meanwhile; `Err`: none accepted within [`Redial::give_up`].
    async fn reconnect(&mut self, reason: &str) -> Result<Option<Ws>, String> {
        let Some(r) = self.redial.as_ref() else {
            return Err(reason.to_owned());
        };
        let deadline = Instant::now() + r.give_up;
        let mut backoff = client::Backoff::default();
        let mut last = reason.to_owned();
        loop {
            let pause = backoff.pause();
            if Instant::now() + pause >= deadline {
                return Err(format!(
                    "no edge accepted a reconnect within {:?} (last: {last})",
                    r.give_up
                ));
            }
            tokio::select! {
                _ = tokio::time::sleep(pause) => {}
                _ = stopped(&mut self.stop) => return Ok(None),
            }
            self.edge = (self.edge + 1) % r.edges.len().max(1);
            let Some(url) = r.edges.get(self.edge) else {
                return Err(format!("{reason}; no edge to reconnect to"));
            };
            let attempt = tokio::select! {
                a = client::connect(url, None, &r.token, r.connect_timeout) => a,
                _ = stopped(&mut self.stop) => return Ok(None),
            };
            match attempt {
                Ok((ws, _, _)) => return Ok(Some(ws)),
                Err(e) => last = format!("{url}: {e:#}"),
            }
        }
    }

    /// On a new connection: `sub` each conversation after its last contiguous seq, then
    /// resend every unanswered message in the order it was first written.
    async fn resume(&mut self, ws: &mut Ws, since: Instant) -> Result<(), tungstenite::Error> {
        for f in self.resume_frames(since) {
            ws.feed(WsMessage::Text(f)).await?;
        }
        ws.flush().await
    }

    /// The frames of [`Party::resume`]; from now on each conversation's stream is judged
    /// from its `subbed`, and `resume` is timed from `since`.
    fn resume_frames(&mut self, since: Instant) -> Vec<Utf8Bytes> {
        let mut convs: HashSet<Uuid> = self
            .redial
            .iter()
            .flat_map(|r| r.convs.iter().copied())
            .collect();
        convs.extend(self.st.seen.keys().copied());
        convs.extend(self.st.heads.keys().copied());
        convs.extend(self.unanswered.values().map(|u| u.conv));
        self.streams.clear();
        let mut frames = Vec::with_capacity(convs.len() + self.unanswered.len());
        for &conv in &convs {
            let after = self.st.seen.get(&conv).map_or(0, |s| s.contiguous);
            self.streams.insert(conv, Stream::after(after, false));
            frames.push(Utf8Bytes::from(
                json!({"t": "sub", "conv": conv, "after": after}).to_string(),
            ));
        }
        self.resuming = Some(Resuming {
            since,
            subs: convs,
            heads: HashMap::new(),
        });
        let mut resend: Vec<&Unanswered> = self.unanswered.values().collect();
        resend.sort_by_key(|u| u.order);
        frames.extend(resend.into_iter().map(|u| u.frame.clone()));
        frames
    }
}

/// Resolves once `stop` is true (or its sender is gone).
async fn stopped(stop: &mut watch::Receiver<bool>) {
    let _ = stop.wait_for(|s| *s).await;
}

/// Whether a close with `code` invites a reconnect and resume: the protocol's own
/// classification of its close codes (`CloseCode::should_reconnect`).
fn reconnect_after(code: u16) -> bool {
    [
        CloseCode::Normal,
        CloseCode::GoingAway,
        CloseCode::ProtocolError,
        CloseCode::Unsupported,
        CloseCode::InvalidUtf8,
        CloseCode::PolicyViolation,
        CloseCode::TooLarge,
        CloseCode::Restart,
        CloseCode::SlowConsumer,
        CloseCode::Unavailable,
        CloseCode::RateLimited,
        CloseCode::ProtocolViolation,
        CloseCode::Unauthorized,
        CloseCode::Forbidden,
    ]
    .iter()
    .any(|c| c.code() == code && c.should_reconnect())
}

#[cfg(test)]
mod tests {
    use relaydesk_shared::token::Role;
    use relaydesk_shared::wire::{Accepted, Actor};

    use super::*;

    fn party(convs: Vec<Uuid>) -> (Party, Rec) {
        let rec = Rec::new();
        let (_, rx) = mpsc::unbounded_channel();
        let (_, stop) = watch::channel(false);
        let redial = Redial {
            edges: vec!["ws://127.0.0.1:1/v1/ws".into()],
            edge: 0,
            token: "t".into(),
            convs,
            connect_timeout: Duration::from_secs(1),
            give_up: Duration::from_secs(1),
        };
        let p = Party::new(
            Uuid::new_v4(),
            "v0-".into(),
            rec.clone(),
            true,
            Some(redial),
            rx,
            stop,
        );
        (p, rec)
    }

    /// Message `n` of `from` stored as `seq` of `conv`.
    fn msg(conv: Uuid, seq: u64, from: Uuid, n: u64) -> ServerFrame {
        ServerFrame::Msg(Message {
            conv,
            seq,
            msg: Uuid::new_v4(),
            from: Actor {
                id: from,
                role: Role::Agent,
                name: None,
            },
            kind: "text".into(),
            body: json!({"text": "x", "t0": client::unix_nanos(), "n": n}),
            ts: 0,
        })
    }

    fn counts(rec: &Rec) -> [u64; 3] {
        [stats::DELIVERED, stats::DUPLICATED, stats::REORDERED].map(|c| rec.count(c))
    }

    #[test]
    fn a_resume_resubscribes_resends_and_drops_redeliveries() {
        let conv = Uuid::new_v4();
        let agent = Uuid::new_v4();
        let (mut p, rec) = party(vec![conv]);
        p.handle(msg(conv, 1, agent, 1));
        p.handle(msg(conv, 2, agent, 2));
        // Two sends written; the first is accepted, the second is not when the connection ends.
        let first = p.frame(Out::Send {
            conv,
            n: 10,
            body_bytes: None,
        });
        let second = p.frame(Out::Send {
            conv,
            n: 11,
            body_bytes: None,
        });
        let id = |f: &Utf8Bytes| -> String {
            let v: serde_json::Value = serde_json::from_str(f.as_str()).unwrap();
            v["id"].as_str().unwrap().to_owned()
        };
        p.handle(ServerFrame::Accepted(Accepted {
            id: id(&first),
            conv,
            seq: 3,
            msg: Uuid::new_v4(),
            ts: 0,
        }));
        p.handle(msg(conv, 3, p.st.principal, 10));

        let frames = p.resume_frames(Instant::now());
        let texts: Vec<&str> = frames.iter().map(Utf8Bytes::as_str).collect();
        let sub: serde_json::Value = serde_json::from_str(texts[0]).unwrap();
        assert_eq!(sub, json!({"t": "sub", "conv": conv, "after": 3}));
        assert_eq!(
            texts[1..],
            [second.as_str()],
            "the unanswered send, same id"
        );

        // Live before `subbed` (not judged), then the replay repeats it: no duplicate.
        p.handle(msg(conv, 5, agent, 5));
        p.handle(ServerFrame::Subbed { conv, head: 5 });
        p.handle(msg(conv, 4, agent, 4));
        p.handle(msg(conv, 5, agent, 5));
        p.handle(msg(conv, 6, agent, 6));
        assert_eq!(counts(&rec), [5, 0, 0]);
        assert_eq!(rec.total().summary(stats::RESUME).map(|s| s.count), Some(1));
        assert_eq!(rec.count(stats::ACCEPTED), 1);
        assert_eq!(p.st.seen[&conv].contiguous, 6);
    }

    #[test]
    fn duplicates_are_stores_twice_or_repeats_on_one_connection() {
        let conv = Uuid::new_v4();
        let agent = Uuid::new_v4();
        let (mut p, rec) = party(vec![conv]);
        p.handle(msg(conv, 1, agent, 1));
        p.handle(msg(conv, 2, agent, 2));
        // The same seq again on the same connection, no resume in between.
        p.handle(msg(conv, 2, agent, 2));
        assert_eq!(counts(&rec), [2, 1, 0]);
        // Message 2 stored a second time, under another seq.
        p.handle(msg(conv, 4, agent, 2));
        assert_eq!(counts(&rec), [3, 2, 0]);
        // Lower than one before it on this connection.
        p.handle(msg(conv, 3, agent, 3));
        assert_eq!(counts(&rec), [4, 2, 1]);
    }

    #[test]
    fn reconnects_on_restart_codes_only() {
        for code in [1001, 1012, 4008] {
            assert!(reconnect_after(code), "{code}");
        }
        for code in [1000, 1003, 1007, 1009, 4001, 4500, 4501, 4503] {
            assert!(!reconnect_after(code), "{code}");
        }
    }

    #[test]
    fn streams_judge_order_and_repeats() {
        let mut live = Stream::live();
        assert_eq!(live.arrive(3), Some(Arrival::New));
        assert_eq!(live.arrive(4), Some(Arrival::New));
        assert_eq!(live.arrive(4), Some(Arrival::Duplicate));
        assert_eq!(live.arrive(2), Some(Arrival::Reordered));

        // A resumed stream judges nothing before its `subbed`, then starts after `after`.
        let mut resumed = Stream::after(10, false);
        assert_eq!(resumed.arrive(15), None);
        resumed.judged = true;
        assert_eq!(resumed.arrive(11), Some(Arrival::New));
        assert_eq!(resumed.arrive(15), Some(Arrival::New));
        assert_eq!(resumed.arrive(10), Some(Arrival::Reordered));
    }
}
