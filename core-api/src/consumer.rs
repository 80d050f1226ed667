//! The ingress consumer: reads edges' entries through the `core` consumer group, commits
//! them, publishes the results, and only then acknowledges them.
//!
//! # Pipeline
//! One reader task reads every ingress shard (`XREADGROUP`, and `XAUTOCLAIM` for what a
//! dead consumer left pending) and hands each entry to the commit worker that owns its
//! shard (`shard % COMMIT_WORKERS`). After a small read (fewer than [`LINGER_BELOW`]
//! entries) it waits out `INGRESS_LINGER_US` from that read's start before reading
//! again, so under load each read, and each batch, takes a few milliseconds' worth of
//! messages instead of one or two: at 2,000 msg/s this cut the CPU per message of
//! Redis by about 30% and core-api's and PostgreSQL's by about 35% (docs/bench/notes.md). A message
//! arriving when no read is waiting out the linger is read at once.
//!
//! Each worker processes its batches one after the other — commit, publish, XACK —
//! merging whatever has queued up meanwhile into one batch (group commit by batching; durability settings untouched), while the other
//! workers and the reader go on. A conversation lives in one shard, so its sends are
//! committed in the order the edges appended them; the workers' queues are bounded
//! (`QUEUE_DEPTH` reads each), so a slow database stops the reader instead of growing
//! memory or the pending lists.
//!
//! # Delivery guarantee
//! A `send` counts as accepted when its batch's transaction has committed; the
//! `accepted` frame is published after that commit, and the entry is XACKed after the
//! publish. A crash at any step loses nothing:
//! - before commit: the entry stays pending; a live core-api (or this one, restarted)
//!   reclaims it with XAUTOCLAIM once it has been idle for `claim_idle`, and commits it;
//! - after commit, before publish: the reclaimed entry hits the dedupe key, gets the
//!   stored `seq`, and is published then (`msg` to subscribers, `accepted` to the sender);
//! - after publish, before XACK: the same, so subscribers may see the `msg` twice; edges
//!   drop it by `seq`, and a sender may see `accepted` twice with the same `seq`.
//!
//! Messages committed by different processes (or workers) may reach an edge out of
//! `seq` order; the edge reorders, and repairs a persisting gap with a replay from
//! PostgreSQL.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use fred::prelude::*;
use relaydesk_shared::bus::{self, Egress, Ingress, Source, TokenCred};
use relaydesk_shared::wire::{Accepted, Actor, Message, ServerFrame};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::error::{Error, Result};
use crate::fanout::Out;
use crate::store::{self, NewMessage, Outcome, Receipt};
use crate::{auth, revoke, AppState};

/// Most messages sent in one replay chunk.
const REPLAY_CHUNK: i64 = 500;

/// Reads queued per commit worker before the reader waits.
const QUEUE_DEPTH: usize = 2;

/// A read of fewer entries than this is followed by the next one only once the linger
/// (`INGRESS_LINGER_US`) has passed since it started.
pub const LINGER_BELOW: usize = 64;

/// `sub`s of one batch answered at once (each a short read transaction).
const REPLAYS_AT_ONCE: usize = 4;

/// One entry read from an ingress stream.
struct Entry {
    stream: Arc<str>,
    /// Index of the stream among the shards.
    shard: usize,
    id: String,
    data: Option<Ingress>,
}

/// Runs until `shutdown`: the reader loop here, the commit workers beside it; reclaim
/// and trim on a timer. On shutdown the workers finish what they were handed.
pub async fn run(state: Arc<AppState>, reader: Client, shutdown: CancellationToken) {
    let streams: Vec<String> = (0..state.config.ingress_shards)
        .map(|s| state.keys.ingress(s))
        .collect();
    let names: Vec<Arc<str>> = streams.iter().map(|s| Arc::from(s.as_str())).collect();
    if let Err(e) = create_groups(&reader, &streams).await {
        tracing::error!(error = %e, "cannot create the ingress consumer groups");
    }
    let me = state.config.core_id.clone();
    let workers = state.config.commit_workers.clamp(1, streams.len());
    let mut queues = Vec::with_capacity(workers);
    let mut tasks = Vec::with_capacity(workers);
    for _ in 0..workers {
        let (tx, rx) = mpsc::channel(QUEUE_DEPTH);
        queues.push(tx);
        tasks.push(tokio::spawn(work(state.clone(), rx)));
    }
    let reclaim_every = (state.config.claim_idle / 2).max(Duration::from_millis(200));
    let mut last_reclaim = Instant::now();
    let mut last_trim = Instant::now();
    let linger = state.config.ingress_linger;
    let mut next_read: Option<tokio::time::Instant> = None;
    tracing::info!(consumer = %me, shards = streams.len(), workers, "ingress consumer started");
    while !shutdown.is_cancelled() {
        if last_reclaim.elapsed() >= reclaim_every {
            last_reclaim = Instant::now();
            if let Err(e) = reclaim(&state, &reader, &names, &me, &queues).await {
                tracing::warn!(error = %e, "reclaim failed");
            }
        }
        if last_trim.elapsed() >= Duration::from_secs(10) {
            last_trim = Instant::now();
            trim(&reader, &streams).await;
        }
        if let Some(at) = next_read.take() {
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = tokio::time::sleep_until(at) => {}
            }
        }
        let ids: Vec<&str> = vec![">"; streams.len()];
        let started = tokio::time::Instant::now();
        let read = tokio::select! {
            _ = shutdown.cancelled() => break,
            r = reader.xreadgroup::<Value, _, _, _, _>(
                bus::INGRESS_GROUP, me.as_str(), Some(state.config.batch_size), Some(500), false,
                streams.clone(), ids) => r,
        };
        let entries = match read {
            Ok(resp) => stream_entries(resp, &names),
            Err(e) => {
                tracing::warn!(error = %e, "ingress read failed");
                if e.details().contains("NOGROUP") {
                    let _ = create_groups(&reader, &streams).await;
                }
                tokio::time::sleep(Duration::from_millis(500)).await;
                continue;
            }
        };
        // With a linger, a small read is not followed at once by another: the next one
        // waits out the linger and takes what arrived meanwhile in one call.
        if !linger.is_zero() && entries.len() < LINGER_BELOW {
            next_read = Some(started + linger);
        }
        if dispatch(entries, &queues).await.is_err() {
            break;
        }
    }
    drop(queues);
    for t in tasks {
        let _ = t.await;
    }
    tracing::info!(consumer = %me, "ingress consumer stopped");
}

/// Hands each entry to the worker owning its shard (waiting while that worker's queue
/// is full). Fails only when a worker has gone.
async fn dispatch(entries: Vec<Entry>, queues: &[mpsc::Sender<Vec<Entry>>]) -> Result<()> {
    if entries.is_empty() {
        return Ok(());
    }
    let mut parts: Vec<Vec<Entry>> = (0..queues.len()).map(|_| Vec::new()).collect();
    for e in entries {
        parts[e.shard % queues.len()].push(e);
    }
    for (queue, part) in queues.iter().zip(parts) {
        if !part.is_empty() && queue.send(part).await.is_err() {
            return Err(Error::Internal("a commit worker has stopped".into()));
        }
    }
    Ok(())
}

/// One commit worker: processes its shards' batches in order, merging what queued up
/// while the previous batch committed (up to four reads' worth of entries).
async fn work(state: Arc<AppState>, mut queue: mpsc::Receiver<Vec<Entry>>) {
    let merge_max = (state.config.batch_size as usize).saturating_mul(4).max(1);
    while let Some(mut batch) = queue.recv().await {
        while batch.len() < merge_max {
            match queue.try_recv() {
                Ok(more) => batch.extend(more),
                Err(_) => break,
            }
        }
        if let Err(e) = process(&state, batch).await {
            // The entries stay pending and are reclaimed after `claim_idle`.
            tracing::warn!(error = %e, "batch failed; its entries will be reclaimed");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

async fn create_groups(reader: &Client, streams: &[String]) -> Result<()> {
    for s in streams {
        match reader
            .xgroup_create::<Value, _, _, _>(s.as_str(), bus::INGRESS_GROUP, "0", true)
            .await
        {
            Ok(_) => {}
            Err(e) if e.details().contains("BUSYGROUP") => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

/// Entries of an XREADGROUP answer (nil when a blocking read times out; an array of
/// `[stream, entries]` pairs in RESP2, a map in RESP3).
fn stream_entries(resp: Value, names: &[Arc<str>]) -> Vec<Entry> {
    let pairs: Vec<(Value, Value)> = match resp {
        Value::Array(streams) => streams
            .into_iter()
            .filter_map(|s| match s {
                Value::Array(mut kv) if kv.len() == 2 => {
                    let entries = kv.pop()?;
                    Some((kv.pop()?, entries))
                }
                _ => None,
            })
            .collect(),
        Value::Map(map) => map
            .inner()
            .into_iter()
            .map(|(k, v)| (Value::from(k), v))
            .collect(),
        _ => Vec::new(),
    };
    let mut out = Vec::new();
    for (stream, entries) in pairs {
        let Some(stream) = stream.as_string() else {
            continue;
        };
        let Some(shard) = names.iter().position(|n| **n == *stream) else {
            tracing::warn!(%stream, "entries of a stream that is not an ingress shard");
            continue;
        };
        out.extend(entries_of(&names[shard], shard, entries));
    }
    out
}

/// `[[id, [field, value, …]], …]` → entries; entries deleted meanwhile (nil fields) are
/// kept with no data so that they are acknowledged.
fn entries_of(stream: &Arc<str>, shard: usize, entries: Value) -> Vec<Entry> {
    let Value::Array(entries) = entries else {
        return Vec::new();
    };
    entries
        .into_iter()
        .filter_map(|e| {
            let Value::Array(mut parts) = e else {
                return None;
            };
            if parts.len() != 2 {
                return None;
            }
            let fields = parts.pop()?;
            let id = parts.pop()?.as_string()?;
            let mut map = HashMap::new();
            if let Value::Array(flat) = fields {
                let mut it = flat.into_iter();
                while let (Some(k), Some(v)) = (it.next(), it.next()) {
                    if let (Some(k), Some(v)) = (k.as_string(), v.as_string()) {
                        map.insert(k, v);
                    }
                }
            }
            Some(entry(stream.clone(), shard, id, &map))
        })
        .collect()
}

fn entry(stream: Arc<str>, shard: usize, id: String, fields: &HashMap<String, String>) -> Entry {
    let data = fields
        .get(bus::FIELD_DATA)
        .and_then(|d| match serde_json::from_str::<Ingress>(d) {
            Ok(i) => Some(i),
            Err(e) => {
                tracing::warn!(%stream, %id, error = %e, "dropping malformed ingress entry");
                None
            }
        });
    Entry {
        stream,
        shard,
        id,
        data,
    }
}

/// Claims entries idle longer than `claim_idle` (their consumer died or stalled) and
/// hands them to their shards' workers as if freshly read.
async fn reclaim(
    state: &AppState,
    reader: &Client,
    streams: &[Arc<str>],
    me: &str,
    queues: &[mpsc::Sender<Vec<Entry>>],
) -> Result<()> {
    let idle = state.config.claim_idle.as_millis() as u64;
    for (shard, s) in streams.iter().enumerate() {
        let mut cursor = "0-0".to_owned();
        loop {
            let answer: Value = reader
                .xautoclaim(
                    &**s,
                    bus::INGRESS_GROUP,
                    me,
                    idle,
                    cursor.as_str(),
                    Some(state.config.batch_size),
                    false,
                )
                .await?;
            // [next cursor, [entries…], [deleted ids…]]
            let Value::Array(mut parts) = answer else {
                break;
            };
            if parts.len() < 2 {
                break;
            }
            let claimed = entries_of(s, shard, parts.remove(1));
            let next = parts.remove(0).as_string().unwrap_or_default();
            if !claimed.is_empty() {
                metrics::counter!("relaydesk_core_reclaimed_total").increment(claimed.len() as u64);
                tracing::info!(stream = %s, count = claimed.len(), "reclaimed pending entries");
                dispatch(claimed, queues).await?;
            }
            if next == "0-0" || next.is_empty() {
                break;
            }
            cursor = next;
        }
    }
    Ok(())
}

/// Trims acknowledged entries: everything older than the oldest pending entry (or, with
/// none pending, than the group's last delivered id). Pending entries are never trimmed.
async fn trim(reader: &Client, streams: &[String]) {
    let mut pending_total = 0u64;
    for s in streams {
        let summary: Result<Vec<Value>, _> =
            reader.xpending(s.as_str(), bus::INGRESS_GROUP, ()).await;
        let Ok(summary) = summary else { continue };
        let count = summary.first().and_then(|v| v.as_u64()).unwrap_or(0);
        pending_total += count;
        let floor = if count > 0 {
            summary.get(1).and_then(|v| v.as_string())
        } else {
            last_delivered(reader, s).await
        };
        if let Some(floor) = floor {
            let _: Result<Value, _> = reader.xtrim(s.as_str(), ("MINID", "~", floor)).await;
        }
    }
    metrics::gauge!("relaydesk_core_ingress_pending").set(pending_total as f64);
}

async fn last_delivered(reader: &Client, stream: &str) -> Option<String> {
    let groups: Vec<HashMap<String, Value>> = reader.xinfo_groups(stream).await.ok()?;
    groups
        .iter()
        .find(|g| g.get("name").and_then(|n| n.as_string()).as_deref() == Some(bus::INGRESS_GROUP))
        .and_then(|g| g.get("last-delivered-id"))
        .and_then(|v| v.as_string())
}

/// Processes one batch: commit, publish, then XACK.
async fn process(state: &AppState, entries: Vec<Entry>) -> Result<()> {
    metrics::histogram!("relaydesk_core_batch_size").record(entries.len() as f64);
    let mut sends = Vec::new();
    let mut send_meta = Vec::new();
    let mut subs = Vec::new();
    let mut hellos = Vec::new();
    let mut receipts = Vec::new();
    let mut reads = Vec::new();
    for e in &entries {
        match &e.data {
            Some(Ingress::Send {
                src,
                id,
                conv,
                kind,
                body,
                rx_us,
            }) => {
                sends.push(NewMessage {
                    tenant: src.tenant,
                    from: Actor {
                        id: src.principal,
                        role: src.role,
                        name: src.name.clone(),
                    },
                    conv: *conv,
                    client_id: id.clone(),
                    kind: kind.clone(),
                    body: body.clone(),
                    broadcast: false,
                });
                send_meta.push((src, *rx_us));
            }
            Some(Ingress::Sub { src, conv, after }) => subs.push((src, *conv, *after)),
            Some(Ingress::Hello { src, cred }) => hellos.push((src, *cred)),
            Some(Ingress::Ack { src, conv, seq }) => {
                receipts.push(receipt(src, *conv, *seq, false))
            }
            Some(Ingress::Read { src, conv, seq }) => {
                receipts.push(receipt(src, *conv, *seq, true));
                reads.push((src, *conv, *seq));
            }
            None => {}
        }
    }

    // Sends and receipts commit in one transaction: one fsync per batch.
    let mut outs = Vec::new();
    let mut wake = Vec::new();
    if !sends.is_empty() || !receipts.is_empty() {
        let started = Instant::now();
        let committed = store::commit(&state.pool, &sends, &receipts).await?;
        metrics::histogram!("relaydesk_core_commit_seconds")
            .record(started.elapsed().as_secs_f64());
        if !sends.is_empty() {
            outs.extend(send_outputs(state, &sends, &committed.outcomes, &send_meta).await?);
        }
        wake = committed.wake;
    }
    // Each `sub` is a short read of its own; a reconnect storm brings many at once.
    for chunk in subs.chunks(REPLAYS_AT_ONCE) {
        let replays = futures::future::try_join_all(
            chunk
                .iter()
                .map(|(src, conv, after)| replay(state, src, *conv, *after)),
        )
        .await?;
        outs.extend(replays.into_iter().flatten());
    }
    // Hellos arrive in storms (every client reconnecting): answered together, with a
    // few queries per tenant rather than per connection.
    outs.extend(welcome(state, &hellos).await?);
    outs.extend(read_events(state, &reads).await?);
    state.fanout.publish(&outs).await?;
    // Reopen what visitors wrote to, before the XACK: a crash here leaves the entry
    // pending, and its reclaim (a dedupe hit on a still-resolved conversation) wakes it.
    for (tenant, conv, visitor) in wake {
        crate::lifecycle::wake(state, tenant, conv, visitor).await?;
    }
    if let Some(rx) = send_meta.iter().map(|(_, rx)| *rx).min() {
        let now_us = crate::fanout::now_ms() * 1000;
        metrics::histogram!("relaydesk_core_accept_latency_seconds")
            .record(now_us.saturating_sub(rx) as f64 / 1e6);
    }

    // XACK on the shared client (the reader's connection blocks in XREADGROUP), one
    // pipelined command per stream.
    let mut by_stream: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    for e in &entries {
        by_stream.entry(&e.stream).or_default().push(e.id.as_str());
    }
    let pipe = state.redis.pipeline();
    for (stream, ids) in by_stream {
        let () = pipe.xack(stream, bus::INGRESS_GROUP, ids).await?;
    }
    let _: Vec<Value> = pipe.all().await?;
    Ok(())
}

fn receipt(src: &Source, conv: Uuid, seq: u64, read: bool) -> Receipt {
    Receipt {
        tenant: src.tenant,
        conv,
        principal: src.principal,
        seq,
        read,
    }
}

fn reply(src: &Source, frame: &ServerFrame) -> Out {
    Out {
        edge: src.edge.to_string(),
        header: Egress::Reply { conn: src.conn },
        frame: Bytes::from(frame.to_json()),
    }
}

/// `accepted`/`error` for each sender, and `msg` for every edge with a subscriber.
async fn send_outputs(
    state: &AppState,
    sends: &[NewMessage],
    outcomes: &[Outcome],
    meta: &[(&Source, u64)],
) -> Result<Vec<Out>> {
    let committed: Vec<(Uuid, &Message)> = sends
        .iter()
        .zip(outcomes)
        .filter_map(|(m, o)| match o {
            Outcome::Committed { message, .. } => Some((m.tenant, message)),
            Outcome::Refused { .. } => None,
        })
        .collect();
    let mut outs = state.fanout.deliveries(&committed).await?;
    for ((sent, outcome), (src, _)) in sends.iter().zip(outcomes).zip(meta) {
        let frame = match outcome {
            Outcome::Committed { message, .. } => {
                ServerFrame::Accepted(accepted(&sent.client_id, message))
            }
            Outcome::Refused { code, message } => ServerFrame::Error {
                id: Some(sent.client_id.clone()),
                conv: Some(sent.conv),
                code: *code,
                message: message.clone(),
                retry_after_ms: code.retryable().then_some(500),
            },
        };
        outs.push(reply(src, &frame));
    }
    Ok(outs)
}

/// The `accepted` answer for a committed message.
pub fn accepted(client_id: &str, m: &Message) -> Accepted {
    Accepted {
        id: client_id.to_owned(),
        conv: m.conv,
        seq: m.seq,
        msg: m.msg,
        ts: m.ts,
    }
}

/// Answers a `sub`: `head`, then every visible message after `after`, in chunks.
async fn replay(state: &AppState, src: &Source, conv: Uuid, after: u64) -> Result<Vec<Out>> {
    let mut client = state.pool.get().await?;
    let tx = crate::db::tenant_tx(&mut client, src.tenant).await?;
    let found = match store::conv(&tx, src.tenant, conv).await {
        Ok(c) => store::check_access(
            &tx,
            src.tenant,
            &c,
            crate::access::Action::Sub,
            src.principal,
            src.role,
        )
        .await
        .map(|()| c),
        Err(e) => Err(e),
    };
    let c = match found {
        Ok(c) => c,
        Err(Error::Client { code, message }) => {
            let frame = ServerFrame::Error {
                id: None,
                conv: Some(conv),
                code,
                message,
                retry_after_ms: None,
            };
            return Ok(vec![reply(src, &frame)]);
        }
        Err(e) => return Err(e),
    };
    let head = c.last_seq as u64;
    let staff = src.role.is_staff();
    let mut outs = Vec::new();
    let mut cursor = after;
    loop {
        let page = store::history(&tx, src.tenant, conv, cursor, REPLAY_CHUNK, staff).await?;
        let done = (page.len() as i64) < REPLAY_CHUNK || page.last().is_some_and(|m| m.seq >= head);
        let mut frame = Vec::new();
        let mut seqs = Vec::with_capacity(page.len());
        let mut lens = Vec::with_capacity(page.len());
        for m in page {
            cursor = m.seq;
            seqs.push(m.seq);
            let json = ServerFrame::Msg(m).to_json();
            lens.push(json.len() as u32);
            frame.extend_from_slice(json.as_bytes());
        }
        outs.push(Out {
            edge: src.edge.to_string(),
            header: Egress::Replay {
                conn: src.conn,
                conv,
                head,
                seqs,
                lens,
                done,
            },
            frame: Bytes::from(frame),
        });
        if done {
            break;
        }
    }
    tx.commit().await?;
    Ok(outs)
}

/// Answers a batch's `hello`s. First the agents' tokens are checked again against
/// PostgreSQL, the truth the edges' revocation set follows (`auth::standings`, one
/// statement for the whole batch): a token no longer valid (an older credential version,
/// a deactivated agent, a logged-out session) is answered with the matching
/// `Egress::Revoke`, which closes the connection (4501) and makes its edge refuse the
/// token from then on. The others: registers each connection's edge for its principal's
/// open conversations, then reads their heads (after registering, so nothing committed
/// in between can be missed live). One transaction, two queries per tenant in the batch
/// and one Redis pipeline, however many connections said hello.
async fn welcome(state: &AppState, batch: &[(&Source, Option<TokenCred>)]) -> Result<Vec<Out>> {
    if batch.is_empty() {
        return Ok(Vec::new());
    }
    let mut client = state.pool.get().await?;
    let tx = client.transaction().await?;

    let keys: Vec<auth::TokenKey> = batch
        .iter()
        .filter_map(|(src, cred)| cred.map(|c| (src.tenant, src.principal, c.sid)))
        .collect();
    let standings = auth::standings(&tx, &keys).await?;
    let mut refused = Vec::new();
    let mut hellos: Vec<&Source> = Vec::with_capacity(batch.len());
    for (src, cred) in batch {
        let refusal = cred.and_then(|c| {
            let standing = standings.get(&(src.tenant, src.principal, c.sid));
            revoke::refusal(src.tenant, src.principal, c, standing)
        });
        match refusal {
            Some(revoked) => {
                tracing::info!(tenant = %src.tenant, agent = %src.principal, conn = src.conn,
                    "hello refused: the token is no longer valid");
                refused.push(Out {
                    edge: src.edge.to_string(),
                    header: Egress::Revoke {
                        revoked,
                        until_ms: revoke::until_ms(state),
                    },
                    frame: Bytes::new(),
                });
            }
            None => hellos.push(src),
        }
    }
    if !refused.is_empty() {
        metrics::counter!("relaydesk_core_hellos_refused_total").increment(refused.len() as u64);
    }
    let mut by_tenant: BTreeMap<Uuid, Vec<&Source>> = BTreeMap::new();
    for src in &hellos {
        by_tenant.entry(src.tenant).or_default().push(src);
    }

    // Each principal's open conversations: assigned ones for staff, unresolved ones for
    // visitors.
    let mut open: HashMap<(Uuid, Uuid), Vec<Uuid>> = HashMap::new();
    for (tenant, srcs) in &by_tenant {
        crate::db::set_tenant(&tx, *tenant).await?;
        let (staff, visitors): (Vec<&Source>, Vec<&Source>) =
            srcs.iter().partition(|s| s.role.is_staff());
        for (who, sql) in [
            (staff, store::OPEN_OF_STAFF_SQL),
            (visitors, store::OPEN_OF_VISITORS_SQL),
        ] {
            if who.is_empty() {
                continue;
            }
            let principals: Vec<Uuid> = who.iter().map(|s| s.principal).collect();
            let stmt = tx.prepare_cached(sql).await?;
            for row in tx.query(&stmt, &[tenant, &principals]).await? {
                open.entry((*tenant, row.get(0)))
                    .or_default()
                    .push(row.get(1));
            }
        }
    }

    let entries: Vec<(Uuid, Uuid, String)> = hellos
        .iter()
        .flat_map(|src| {
            let convs = open.get(&(src.tenant, src.principal));
            convs
                .into_iter()
                .flatten()
                .map(|c| (src.tenant, *c, src.edge.to_string()))
        })
        .collect();
    state.fanout.register_conv_edges(&entries).await?;
    let staff: Vec<(Uuid, Uuid)> = hellos
        .iter()
        .filter(|s| s.role.is_staff())
        .map(|s| (s.tenant, s.principal))
        .collect();
    crate::presence::seen(state, &staff).await?;

    let mut heads: HashMap<(Uuid, Uuid), u64> = HashMap::new();
    for tenant in by_tenant.keys() {
        let mut ids: Vec<Uuid> = open
            .iter()
            .filter(|((t, _), _)| t == tenant)
            .flat_map(|(_, convs)| convs.iter().copied())
            .collect();
        if ids.is_empty() {
            continue;
        }
        ids.sort();
        ids.dedup();
        crate::db::set_tenant(&tx, *tenant).await?;
        let stmt = tx.prepare_cached(store::HEADS_SQL).await?;
        let rows = tx.query(&stmt, &[tenant, &ids]).await?;
        for r in rows {
            heads.insert((*tenant, r.get(0)), r.get::<_, i64>(1) as u64);
        }
    }
    tx.commit().await?;

    Ok(refused
        .into_iter()
        .chain(hellos.iter().map(|src| {
            let subs = open
                .get(&(src.tenant, src.principal))
                .into_iter()
                .flatten()
                .filter_map(|c| heads.get(&(src.tenant, *c)).map(|h| (*c, *h)))
                .collect();
            Out {
                edge: src.edge.to_string(),
                header: Egress::Welcome {
                    conn: src.conn,
                    subs,
                },
                frame: Bytes::new(),
            }
        }))
        .collect())
}

/// `read` frames for the other participants of each conversation.
async fn read_events(state: &AppState, reads: &[(&Source, Uuid, u64)]) -> Result<Vec<Out>> {
    let registry: Vec<String> = reads
        .iter()
        .map(|(s, c, _)| state.keys.conv_edges(s.tenant, *c))
        .collect();
    let edges = state.fanout.live_edges(&registry).await?;
    let mut outs = Vec::new();
    for ((src, conv, seq), edges) in reads.iter().zip(edges) {
        let frame = ServerFrame::Read {
            conv: *conv,
            by: Actor {
                id: src.principal,
                role: src.role,
                name: src.name.clone(),
            },
            seq: *seq,
        };
        let frame = Bytes::from(frame.to_json());
        let header = Egress::Event {
            tenant: src.tenant,
            conv: *conv,
            exclude: Some(src.principal),
            agents_only: false,
        };
        for edge in edges {
            outs.push(Out {
                edge,
                header: header.clone(),
                frame: frame.clone(),
            });
        }
    }
    Ok(outs)
}
