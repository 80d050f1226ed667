//! Redis → edge: the single reader of this edge's egress stream (`Keys::egress`), which
//! dispatches every entry to the hub, trims what it has processed, and the gap-repair
//! sweeper.
//!
//! Entries are read with XREAD (BLOCK 1 s, COUNT 512) from `0-0` on a dedicated Redis
//! connection (a blocking read must not stall other commands), tracking the last id.
//! An entry holds one or more (FIELD_HEADER, FIELD_FRAME) pairs, in order (core-api
//! appends a batch's frames for this edge as one entry); each pair is one [`Entry`].
//! FIELD_HEADER is parsed as an [`Egress`]; FIELD_FRAME is taken as `Bytes` without
//! copying and shared by every local recipient.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use fred::prelude::{Client, KeysInterface, StreamsInterface, Value};
use fred::types::streams::XCap;
use relaydesk_shared::bus::{Egress, Ingress, EGRESS_EXPIRE_SECS, FIELD_FRAME, FIELD_HEADER};
use tokio_util::sync::CancellationToken;

use crate::Ctx;

const READ_COUNT: u64 = 512;
const READ_BLOCK_MS: u64 = 1000;
const TRIM_EVERY: Duration = Duration::from_secs(1);
const SWEEP_EVERY: Duration = Duration::from_millis(500);

/// One (header, frame) pair of an egress entry, with the entry's id.
#[derive(Debug)]
pub struct Entry {
    pub id: String,
    pub header: Option<Bytes>,
    pub frame: Bytes,
}

/// Reads and dispatches this edge's egress stream until `shutdown`.
pub(crate) async fn run_egress(ctx: Arc<Ctx>, reader: Client, shutdown: CancellationToken) {
    let key = ctx.keys.egress(&ctx.config.edge_id);
    let mut last = String::from("0-0");
    let mut trimmed = last.clone();
    let mut last_trim = Instant::now();
    loop {
        let read = tokio::select! {
            r = reader.xread::<Value, _, _>(Some(READ_COUNT), Some(READ_BLOCK_MS), key.as_str(), last.as_str()) => r,
            _ = shutdown.cancelled() => break,
        };
        match read {
            Ok(v) => {
                ctx.redis_ok();
                let entries = parse_xread(v);
                if let Some(e) = entries.last() {
                    last = e.id.clone();
                }
                dispatch(&ctx, entries);
            }
            Err(e) => {
                tracing::warn!(error = %e, "egress read failed");
                ctx.redis_failed();
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_millis(250)) => {},
                    _ = shutdown.cancelled() => break,
                }
                continue;
            }
        }
        if last != trimmed && last_trim.elapsed() >= TRIM_EVERY {
            last_trim = Instant::now();
            trimmed = last.clone();
            // Single reader: everything before `last` has been dispatched.
            if let Ok(cap) = XCap::try_from(("MINID", "~", trimmed.as_str())) {
                let r: Result<Value, _> = ctx.redis.xtrim(key.as_str(), cap).await;
                if let Err(e) = r {
                    tracing::debug!(error = %e, "egress trim failed");
                }
            }
            let r: Result<Value, _> = ctx
                .redis
                .expire(key.as_str(), EGRESS_EXPIRE_SECS, None)
                .await;
            if let Err(e) = r {
                tracing::debug!(error = %e, "egress expire failed");
            }
        }
    }
}

/// A parsed egress entry, ready for the hub.
enum Item {
    Deliver {
        tenant: uuid::Uuid,
        conv: uuid::Uuid,
        seq: u64,
        agents_only: bool,
        frame: Bytes,
    },
    Reply {
        conn: u64,
        frame: Bytes,
    },
    Replay {
        conn: u64,
        conv: uuid::Uuid,
        head: u64,
        items: Vec<(u64, Bytes)>,
        done: bool,
    },
    Welcome {
        conn: u64,
        subs: Vec<(uuid::Uuid, u64)>,
    },
    AutoSub {
        tenant: uuid::Uuid,
        principal: uuid::Uuid,
        conv: uuid::Uuid,
        head: u64,
        frame: Bytes,
    },
    Event {
        tenant: uuid::Uuid,
        conv: uuid::Uuid,
        exclude: Option<uuid::Uuid>,
        agents_only: bool,
        frame: Bytes,
    },
    ToPrincipal {
        tenant: uuid::Uuid,
        principal: uuid::Uuid,
        unsub: Option<uuid::Uuid>,
        frame: Bytes,
    },
    Revoke {
        revoked: relaydesk_shared::bus::Revoked,
        until_ms: u64,
    },
}

fn parse_entry(e: Entry) -> Option<Item> {
    let header: Egress = match serde_json::from_slice(e.header.as_deref()?) {
        Ok(h) => h,
        Err(err) => {
            tracing::debug!(id = %e.id, error = %err, "unknown egress entry");
            return None;
        }
    };
    let frame = e.frame;
    Some(match header {
        Egress::Deliver {
            tenant,
            conv,
            seq,
            agents_only,
        } => Item::Deliver {
            tenant,
            conv,
            seq,
            agents_only,
            frame,
        },
        Egress::Reply { conn } => Item::Reply { conn, frame },
        Egress::Replay {
            conn,
            conv,
            head,
            seqs,
            lens,
            done,
        } => match split_replay(&frame, &seqs, &lens) {
            Some(items) => Item::Replay {
                conn,
                conv,
                head,
                items,
                done,
            },
            None => {
                tracing::warn!(id = %e.id, "malformed replay chunk");
                return None;
            }
        },
        Egress::Welcome { conn, subs } => Item::Welcome { conn, subs },
        Egress::AutoSub {
            tenant,
            principal,
            conv,
            head,
        } => Item::AutoSub {
            tenant,
            principal,
            conv,
            head,
            frame,
        },
        Egress::Event {
            tenant,
            conv,
            exclude,
            agents_only,
        } => Item::Event {
            tenant,
            conv,
            exclude,
            agents_only,
            frame,
        },
        Egress::ToPrincipal {
            tenant,
            principal,
            unsub,
        } => Item::ToPrincipal {
            tenant,
            principal,
            unsub,
            frame,
        },
        Egress::Revoke { revoked, until_ms } => Item::Revoke { revoked, until_ms },
    })
}

/// Parses a batch of entries, dispatches them under one hub lock, then queues repairs.
fn dispatch(ctx: &Ctx, entries: Vec<Entry>) {
    if entries.is_empty() {
        return;
    }
    metrics::counter!("relaydesk_edge_egress_entries_total").increment(entries.len() as u64);
    let items: Vec<Item> = entries.into_iter().filter_map(parse_entry).collect();
    let now = Instant::now();
    let mut repairs: Vec<Ingress> = Vec::new();
    {
        let mut hub = ctx.hub();
        for item in items {
            match item {
                Item::Deliver {
                    tenant,
                    conv,
                    seq,
                    agents_only,
                    frame,
                } => {
                    repairs.extend(hub.deliver(tenant, conv, seq, agents_only, &frame, now));
                }
                Item::Reply { conn, frame } => hub.reply(conn, frame),
                Item::Replay {
                    conn,
                    conv,
                    head,
                    items,
                    done,
                } => repairs.extend(hub.replay(conn, conv, head, &items, done, now)),
                Item::Welcome { conn, subs } => hub.welcome(conn, &subs),
                Item::AutoSub {
                    tenant,
                    principal,
                    conv,
                    head,
                    frame,
                } => {
                    hub.autosub(
                        tenant,
                        principal,
                        conv,
                        head,
                        (!frame.is_empty()).then_some(&frame),
                    );
                }
                Item::Event {
                    tenant,
                    conv,
                    exclude,
                    agents_only,
                    frame,
                } => {
                    hub.event(tenant, conv, exclude, agents_only, &frame);
                }
                Item::ToPrincipal {
                    tenant,
                    principal,
                    unsub,
                    frame,
                } => hub.to_principal(tenant, principal, unsub, &frame),
                Item::Revoke { revoked, until_ms } => {
                    ctx.revoked.apply(&revoked, until_ms);
                }
            }
        }
    }
    send_repairs(ctx, repairs);
}

/// Sends what dispatching produced: re-`sub`s repairing gaps (postponed to the next
/// sweep if the ingress queue is full), and receipts held until a `sub` was granted.
fn send_repairs(ctx: &Ctx, repairs: Vec<Ingress>) {
    for r in repairs {
        let conv = match &r {
            Ingress::Sub { conv, .. } | Ingress::Ack { conv, .. } | Ingress::Read { conv, .. } => {
                *conv
            }
            _ => continue,
        };
        if ctx.ingress.ingress(&r, conv, None).is_err() {
            tracing::debug!("ingress queue full: repair or held receipt dropped");
        }
    }
}

/// Splits a replay chunk's frame field into its `msg` frames (zero-copy).
pub fn split_replay(frame: &Bytes, seqs: &[u64], lens: &[u32]) -> Option<Vec<(u64, Bytes)>> {
    if seqs.len() != lens.len() {
        return None;
    }
    let mut items = Vec::with_capacity(seqs.len());
    let mut off = 0usize;
    for (seq, len) in seqs.iter().zip(lens) {
        let end = off.checked_add(*len as usize)?;
        if end > frame.len() {
            return None;
        }
        items.push((*seq, frame.slice(off..end)));
        off = end;
    }
    Some(items)
}

/// Every `SWEEP_EVERY`, re-subscribes subscriptions whose gap persisted.
pub(crate) async fn run_sweeper(ctx: Arc<Ctx>, shutdown: CancellationToken) {
    let mut ticker = tokio::time::interval(SWEEP_EVERY);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = ticker.tick() => {},
            _ = shutdown.cancelled() => break,
        }
        let repairs = ctx.hub().sweep(Instant::now());
        send_repairs(&ctx, repairs);
    }
}

/// Parses an XREAD answer (RESP2 arrays or RESP3 maps) for one stream into entries.
pub fn parse_xread(v: Value) -> Vec<Entry> {
    let mut out = Vec::new();
    if v.is_null() {
        return out;
    }
    // [[key, [[id, [field, value, ...]], ...]], ...] or {key: [[id, [...]], ...]}
    let streams = v.into_array();
    let mut pairs = streams.into_iter();
    let mut stream_entries: Vec<Value> = Vec::new();
    while let Some(item) = pairs.next() {
        match item {
            Value::Array(kv) => {
                // RESP2: [key, entries]
                if let Some(entries) = kv.into_iter().nth(1) {
                    stream_entries.push(entries);
                }
            }
            // RESP3 map flattened by `into_array`: key, entries, key, entries...
            _ => {
                if let Some(entries) = pairs.next() {
                    stream_entries.push(entries);
                }
            }
        }
    }
    for entries in stream_entries {
        for entry in entries.into_array() {
            let mut parts = entry.into_array().into_iter();
            let (Some(id), Some(fields)) = (parts.next(), parts.next()) else {
                continue;
            };
            let Some(id) = id.into_string() else { continue };
            // Pairs in order: a header, then its frame (a header without a frame gets
            // an empty one).
            let mut header: Option<Option<Bytes>> = None;
            let mut fields = fields.into_array().into_iter();
            while let (Some(k), Some(val)) = (fields.next(), fields.next()) {
                match k.as_str().as_deref() {
                    Some(FIELD_HEADER) => {
                        if let Some(h) = header.replace(val.into_bytes()) {
                            out.push(Entry {
                                id: id.clone(),
                                header: h,
                                frame: Bytes::new(),
                            });
                        }
                    }
                    Some(FIELD_FRAME) => out.push(Entry {
                        id: id.clone(),
                        header: header.take().flatten(),
                        frame: val.into_bytes().unwrap_or_default(),
                    }),
                    _ => {}
                }
            }
            if let Some(h) = header {
                out.push(Entry {
                    id,
                    header: h,
                    frame: Bytes::new(),
                });
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_replay_chunks() {
        let frame = Bytes::from_static(b"aaabbbbc");
        let items = split_replay(&frame, &[1, 2, 3], &[3, 4, 1]).unwrap();
        assert_eq!(
            items,
            vec![
                (1, Bytes::from_static(b"aaa")),
                (2, Bytes::from_static(b"bbbb")),
                (3, Bytes::from_static(b"c"))
            ]
        );
        assert!(split_replay(&frame, &[1], &[9]).is_none());
        assert!(split_replay(&frame, &[1, 2], &[1]).is_none());
    }

    #[test]
    fn parses_resp2_xread() {
        let v = Value::Array(vec![Value::Array(vec![
            Value::from("rd:eg:{e}"),
            Value::Array(vec![Value::Array(vec![
                Value::from("1-0"),
                Value::Array(vec![
                    Value::from("h"),
                    Value::from("{}"),
                    Value::from("f"),
                    Value::Bytes(Bytes::from_static(b"xy")),
                ]),
            ])]),
        ])]);
        let e = parse_xread(v);
        assert_eq!(e.len(), 1);
        assert_eq!(e[0].id, "1-0");
        assert_eq!(e[0].header.as_deref(), Some(&b"{}"[..]));
        assert_eq!(e[0].frame, Bytes::from_static(b"xy"));
        assert!(parse_xread(Value::Null).is_empty());
    }

    #[test]
    fn an_entry_of_several_pairs_is_several_entries_in_order() {
        let pair = |h: &'static str, f: &'static [u8]| {
            [
                Value::from("h"),
                Value::from(h),
                Value::from("f"),
                Value::Bytes(Bytes::from_static(f)),
            ]
        };
        let mut fields: Vec<Value> = pair("{\"a\":1}", b"one").into();
        fields.extend(pair("{\"a\":2}", b"two"));
        fields.extend([Value::from("h"), Value::from("{\"a\":3}")]);
        let v = Value::Array(vec![Value::Array(vec![
            Value::from("rd:eg:{e}"),
            Value::Array(vec![Value::Array(vec![
                Value::from("7-1"),
                Value::Array(fields),
            ])]),
        ])]);
        let e = parse_xread(v);
        let got: Vec<String> = e
            .iter()
            .map(|e| {
                let h = e.header.as_deref().map(String::from_utf8_lossy);
                format!("{} {h:?} {}", e.id, String::from_utf8_lossy(&e.frame))
            })
            .collect();
        assert_eq!(
            got,
            vec![
                r#"7-1 Some("{\"a\":1}") one"#,
                r#"7-1 Some("{\"a\":2}") two"#,
                r#"7-1 Some("{\"a\":3}") "#,
            ]
        );
    }
}
