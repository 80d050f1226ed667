//! A pool of receiving connections held by one process: the connections of `connect`,
//! the subscribers of `fanout` and the clients of `storm`.
//!
//! Each client connects (connect latency), optionally `sub`s to a conversation, then
//! audits every `msg` (delivery latency from the body's `t0`, duplicates, order). On
//! [`Command::Drop`] every client drops its TCP connection at once, reconnects and resumes
//! with `sub` `after` its last contiguous seq; the time from the drop until it has caught
//! up with the `head` of `subbed` is the `resume` interval. On [`Command::Stop`] each
//! client waits (up to [`STOP_GRACE`]) for the seqs up to its conversation's `head`
//! still on their way, then counts those of `1..=head` it never received as lost.
//!
//! The same code runs in-process or inside a worker process (`worker.rs`).

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::{SinkExt, StreamExt};
use relaydesk_shared::wire::ServerFrame;
use serde::{Deserialize, Serialize};
use serde_json::json;
use tokio::sync::{mpsc, watch};
use tokio_tungstenite::tungstenite::Message as WsMessage;
use uuid::Uuid;

use crate::client::{self, Ws};
use crate::stats::{self, Arrival, Rec, SeqSet};

/// How long a stopping client keeps reading for messages up to its head that are still
/// on their way (a run under load ends with a queue in flight).
pub const STOP_GRACE: Duration = Duration::from_secs(15);

/// What one pool holds.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PoolTask {
    pub edges: Vec<String>,
    /// Connection tokens, used round robin.
    pub tokens: Vec<String>,
    pub connections: usize,
    /// Index of this pool's first client among all pools (edge/token/conversation choice).
    pub offset: usize,
    /// Connection attempts per second for this pool.
    pub rate: f64,
    pub source: Option<IpAddr>,
    /// If not empty, client `i` subscribes to `convs[i % len]` from `after` 0.
    pub convs: Vec<Uuid>,
    pub connect_timeout_ms: u64,
    /// How long a client keeps trying to resume after a drop.
    pub resume_timeout_ms: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum Command {
    /// Drop every connection at once and resume.
    Drop,
    /// Count what is missing up to these heads and close.
    Stop { heads: HashMap<Uuid, u64> },
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum Event {
    /// Every client has tried to connect (and subscribe): how many made it.
    Ready { ok: usize, failed: usize },
    /// After a drop, every client has resumed and caught up, or given up.
    Resumed { ok: usize, failed: usize },
    /// Closed; own CPU use as a fraction of one core over the pool's life.
    Done { cpu: f64 },
}

#[derive(Debug, Clone, PartialEq)]
enum Phase {
    Hold,
    Drop(Instant),
    Stop(Arc<HashMap<Uuid, u64>>),
}

/// Runs a pool until [`Command::Stop`] has been handled; reports through `events`.
pub async fn run(
    task: PoolTask,
    rec: Rec,
    mut cmds: mpsc::UnboundedReceiver<Command>,
    events: mpsc::UnboundedSender<Event>,
) {
    let cpu = crate::machine::CpuClock::start();
    let task = Arc::new(task);
    let (phase_tx, phase_rx) = watch::channel(Phase::Hold);
    let ready = Arc::new(Counter::new(task.connections));
    let resumed = Arc::new(Counter::new(task.connections));
    let mut handles = Vec::with_capacity(task.connections);
    let start = tokio::time::Instant::now();
    let gap = Duration::from_secs_f64(1.0 / task.rate.max(0.001));
    let spawner = {
        let task = task.clone();
        let (ready, resumed, rec) = (ready.clone(), resumed.clone(), rec.clone());
        tokio::spawn(async move {
            for i in 0..task.connections {
                tokio::time::sleep_until(start + gap.mul_f64(i as f64)).await;
                let c = ClientCtx {
                    task: task.clone(),
                    index: task.offset + i,
                    rec: rec.clone(),
                    ready: ready.clone(),
                    resumed: resumed.clone(),
                    phase: phase_rx.clone(),
                };
                handles.push(tokio::spawn(c.run()));
            }
            handles
        })
    };
    let ev = events.clone();
    let r2 = ready.clone();
    let ready_watch = tokio::spawn(async move {
        r2.wait().await;
        let _ = ev.send(Event::Ready {
            ok: r2.ok.load(Ordering::Relaxed),
            failed: r2.failed.load(Ordering::Relaxed),
        });
    });
    let mut resume_watch = None;
    while let Some(cmd) = cmds.recv().await {
        match cmd {
            Command::Drop => {
                resumed.reset();
                phase_tx.send_replace(Phase::Drop(Instant::now()));
                let ev = events.clone();
                let r = resumed.clone();
                resume_watch = Some(tokio::spawn(async move {
                    r.wait().await;
                    let _ = ev.send(Event::Resumed {
                        ok: r.ok.load(Ordering::Relaxed),
                        failed: r.failed.load(Ordering::Relaxed),
                    });
                }));
            }
            Command::Stop { heads } => {
                phase_tx.send_replace(Phase::Stop(Arc::new(heads)));
                break;
            }
        }
    }
    // Stop (or the command channel closed): wait for every client to finish.
    if !matches!(*phase_tx.borrow(), Phase::Stop(_)) {
        phase_tx.send_replace(Phase::Stop(Arc::new(HashMap::new())));
    }
    ready_watch.abort();
    if let Some(w) = resume_watch {
        w.abort();
    }
    if let Ok(handles) = spawner.await {
        for h in handles {
            let _ = h.await;
        }
    }
    let _ = events.send(Event::Done {
        cpu: cpu.fraction(),
    });
}

/// Counts clients through a phase; wakes the waiter when all have passed.
struct Counter {
    total: usize,
    ok: AtomicUsize,
    failed: AtomicUsize,
    notify: tokio::sync::Notify,
}

impl Counter {
    fn new(total: usize) -> Counter {
        Counter {
            total,
            ok: AtomicUsize::new(0),
            failed: AtomicUsize::new(0),
            notify: tokio::sync::Notify::new(),
        }
    }
    fn reset(&self) {
        self.ok.store(0, Ordering::Relaxed);
        self.failed.store(0, Ordering::Relaxed);
    }
    fn done(&self, ok: bool) {
        if ok {
            self.ok.fetch_add(1, Ordering::Relaxed);
        } else {
            self.failed.fetch_add(1, Ordering::Relaxed);
        }
        self.notify.notify_one();
    }
    fn finished(&self) -> bool {
        self.ok.load(Ordering::Relaxed) + self.failed.load(Ordering::Relaxed) >= self.total
    }
    async fn wait(&self) {
        while !self.finished() {
            let n = self.notify.notified();
            if self.finished() {
                break;
            }
            let _ = tokio::time::timeout(Duration::from_millis(100), n).await;
        }
    }
}

struct ClientCtx {
    task: Arc<PoolTask>,
    index: usize,
    rec: Rec,
    ready: Arc<Counter>,
    resumed: Arc<Counter>,
    phase: watch::Receiver<Phase>,
}

/// How a connected stretch of a client's life ended.
enum End {
    Dropped(Instant),
    Stopped(Arc<HashMap<Uuid, u64>>),
    Lost,
}

impl ClientCtx {
    fn url(&self) -> &str {
        &self.task.edges[self.index % self.task.edges.len()]
    }
    fn token(&self) -> &str {
        &self.task.tokens[self.index % self.task.tokens.len()]
    }
    fn conv(&self) -> Option<Uuid> {
        (!self.task.convs.is_empty()).then(|| self.task.convs[self.index % self.task.convs.len()])
    }

    async fn open(&self) -> anyhow::Result<Ws> {
        let timeout = Duration::from_millis(self.task.connect_timeout_ms);
        let (ws, _, took) =
            client::connect(self.url(), self.task.source, self.token(), timeout).await?;
        self.rec.record(stats::CONNECT, took);
        self.rec.add(stats::CONNECTED, 1);
        self.rec.connections(1);
        Ok(ws)
    }

    async fn run(mut self) {
        let mut seqs = SeqSet::default();
        let mut first = true;
        let mut resuming: Option<Instant> = None;
        let mut ws = match self.open().await {
            Ok(ws) => ws,
            Err(_) => {
                self.rec.add(stats::CONNECT_FAILED, 1);
                self.ready.done(false);
                return;
            }
        };
        loop {
            match self.session(ws, &mut seqs, &mut resuming, &mut first).await {
                End::Stopped(heads) => return self.count_lost(&seqs, &heads),
                End::Lost if first => {
                    self.rec.add(stats::CONNECT_FAILED, 1);
                    self.ready.done(false);
                    let heads = self.wait_stop().await;
                    return self.count_lost(&seqs, &heads);
                }
                End::Dropped(at) => resuming = Some(at),
                End::Lost => {
                    self.rec.add(stats::DISCONNECTED, 1);
                    resuming.get_or_insert_with(Instant::now);
                }
            }
            let since = resuming.unwrap_or_else(Instant::now);
            match self.reconnect(since).await {
                Some(w) => ws = w,
                None => {
                    self.rec.add(stats::RESUME_FAILED, 1);
                    self.resumed.done(false);
                    let heads = self.wait_stop().await;
                    return self.count_lost(&seqs, &heads);
                }
            }
        }
    }

    fn count_lost(&self, seqs: &SeqSet, heads: &HashMap<Uuid, u64>) {
        if let Some(conv) = self.conv() {
            if let Some(&head) = heads.get(&conv) {
                self.rec.add(stats::LOST, seqs.missing(head));
            }
        }
    }

    /// Whether every seq up to this client's conversation's head has arrived.
    fn has_all(&self, seqs: &SeqSet, heads: &HashMap<Uuid, u64>) -> bool {
        self.conv()
            .and_then(|c| heads.get(&c))
            .is_none_or(|&head| seqs.contiguous >= head)
    }

    async fn wait_stop(&mut self) -> Arc<HashMap<Uuid, u64>> {
        loop {
            let phase = self.phase.borrow_and_update().clone();
            if let Phase::Stop(h) = phase {
                return h;
            }
            if self.phase.changed().await.is_err() {
                return Arc::new(HashMap::new());
            }
        }
    }

    /// Reconnects with backoff until the resume deadline.
    async fn reconnect(&self, since: Instant) -> Option<Ws> {
        let deadline = since + Duration::from_millis(self.task.resume_timeout_ms);
        let mut backoff = client::Backoff::default();
        loop {
            if let Ok(ws) = self.open().await {
                return Some(ws);
            }
            let pause = backoff.pause();
            if Instant::now() + pause >= deadline {
                return None;
            }
            self.rec.add(stats::CONNECT_FAILED, 1);
            tokio::time::sleep(pause).await;
        }
    }

    /// One connected stretch: subscribe, read until dropped, stopped or lost.
    async fn session(
        &mut self,
        ws: Ws,
        seqs: &mut SeqSet,
        resuming: &mut Option<Instant>,
        first: &mut bool,
    ) -> End {
        let (mut sink, mut stream) = ws.split();
        let conv = self.conv();
        let mut caught_up_at: Option<u64> = None;
        // Order is judged within the stream a `sub` starts (after its `subbed`): frames
        // delivered live before it (automatic subscription) may legitimately be replayed.
        let mut stream_last: Option<u64> = None;
        let sub_after = seqs.contiguous;
        if let Some(conv) = conv {
            let sub = json!({"t": "sub", "conv": conv, "after": sub_after}).to_string();
            if sink.send(WsMessage::Text(sub.into())).await.is_err() {
                self.rec.connections(-1);
                return End::Lost;
            }
        } else {
            self.passed(first, resuming);
        }
        // Set once stopped while messages up to the head are still on their way.
        let mut stopping: Option<(Arc<HashMap<Uuid, u64>>, tokio::time::Instant)> = None;
        let end = loop {
            let m = tokio::select! {
                m = stream.next() => m,
                r = self.phase.changed(), if stopping.is_none() => {
                    if r.is_err() { break End::Stopped(Arc::new(HashMap::new())); }
                    let phase = self.phase.borrow_and_update().clone();
                    match phase {
                        Phase::Drop(at) => break End::Dropped(at),
                        Phase::Stop(h) => {
                            if self.has_all(seqs, &h) {
                                let _ = sink.send(WsMessage::Close(None)).await;
                                break End::Stopped(h);
                            }
                            stopping = Some((h, tokio::time::Instant::now() + STOP_GRACE));
                            continue;
                        }
                        Phase::Hold => continue,
                    }
                }
                _ = tokio::time::sleep_until(stopping.as_ref().map_or_else(tokio::time::Instant::now, |s| s.1)),
                    if stopping.is_some() => {
                    let _ = sink.send(WsMessage::Close(None)).await;
                    break End::Stopped(stopping.take().map_or_else(Default::default, |s| s.0));
                }
            };
            let text = match m {
                Some(Ok(WsMessage::Text(t))) => t,
                Some(Ok(WsMessage::Close(_))) => break End::Lost,
                Some(Ok(_)) => continue,
                Some(Err(_)) => break End::Lost,
                None => break End::Lost,
            };
            match client::parse(&text) {
                Some(ServerFrame::Subbed { conv: c, head }) if Some(c) == conv => {
                    stream_last = Some(sub_after);
                    if seqs.contiguous >= head {
                        self.passed(first, resuming);
                    } else {
                        caught_up_at = Some(head);
                    }
                }
                Some(ServerFrame::Msg(m)) if Some(m.conv) == conv => {
                    let arrival = seqs.insert(m.seq);
                    match stream_last {
                        Some(last) if m.seq <= last => {
                            if arrival == Arrival::Duplicate && m.seq == last {
                                self.rec.add(stats::DUPLICATED, 1);
                            } else {
                                self.rec.add(stats::REORDERED, 1);
                            }
                        }
                        Some(_) => stream_last = Some(m.seq),
                        None => {}
                    }
                    if let Some(t0) = client::body_t0(&m.body) {
                        // Replayed history after a resume is measured by `resume`.
                        if caught_up_at.is_none() {
                            self.rec.record(stats::DELIVER, client::since_nanos(t0));
                        }
                        self.rec.add(stats::DELIVERED, 1);
                    }
                    if caught_up_at.is_some_and(|h| seqs.contiguous >= h) {
                        caught_up_at = None;
                        self.passed(first, resuming);
                    }
                    if let Some((h, _)) = stopping.as_ref().filter(|(h, _)| self.has_all(seqs, h)) {
                        let h = h.clone();
                        let _ = sink.send(WsMessage::Close(None)).await;
                        break End::Stopped(h);
                    }
                }
                Some(ServerFrame::Error { .. }) if *first => {
                    break End::Lost;
                }
                _ => {}
            }
        };
        // Dropping both halves closes the TCP connection without a close handshake.
        drop((sink, stream));
        self.rec.connections(-1);
        end
    }

    /// This client is through its current phase: first connect, or a resume.
    fn passed(&self, first: &mut bool, resuming: &mut Option<Instant>) {
        if *first {
            *first = false;
            self.ready.done(true);
        }
        if let Some(at) = resuming.take() {
            self.rec.record(stats::RESUME, at.elapsed());
            self.rec.add(stats::RESUMED, 1);
            self.resumed.done(true);
        }
    }
}
