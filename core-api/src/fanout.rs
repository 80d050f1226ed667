//! Publishing to edges: registry look-ups and egress appends.
//!
//! Each committed message is serialized once into its `msg` frame; that one buffer is
//! appended to the egress stream of every edge that has a live subscriber of the
//! conversation (bounded with `MAXLEN ~`, and expiring once its edge is gone). What one
//! publish sends to one edge goes as one entry of up to [`PAIRS_PER_ENTRY`] (header,
//! frame) pairs in order, so a batch costs Redis one XADD per edge, not one per frame.

use std::collections::HashMap;
use std::time::{SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use fred::prelude::*;
use relaydesk_shared::bus::{self, Egress, Keys};
use relaydesk_shared::wire::{self, Message, ServerFrame};
use uuid::Uuid;

use crate::error::Result;

/// At most this many (header, frame) pairs go in one egress entry.
pub const PAIRS_PER_ENTRY: usize = 64;

/// One egress append: a header and the frame bytes, for one edge.
#[derive(Debug, Clone)]
pub struct Out {
    pub edge: String,
    pub header: Egress,
    pub frame: Bytes,
}

/// Appends to edges' egress streams.
#[derive(Clone)]
pub struct Fanout {
    redis: Client,
    keys: Keys,
    maxlen: u64,
}

pub(crate) fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

impl Fanout {
    pub fn new(redis: Client, keys: Keys, maxlen: u64) -> Self {
        Fanout {
            redis,
            keys,
            maxlen,
        }
    }

    /// Live edges of each registry key (one pipelined round trip for all of them).
    pub async fn live_edges(&self, registry_keys: &[String]) -> Result<Vec<Vec<String>>> {
        if registry_keys.is_empty() {
            return Ok(Vec::new());
        }
        // Concurrent commands share one connection: fred pipelines them.
        let maps: Vec<HashMap<String, u64>> = futures::future::try_join_all(
            registry_keys
                .iter()
                .map(|k| self.redis.hgetall::<HashMap<String, u64>, _>(k.as_str())),
        )
        .await?;
        let now = now_ms();
        Ok(maps
            .into_iter()
            .map(|m| {
                m.into_iter()
                    .filter(|(_, exp)| *exp > now)
                    .map(|(e, _)| e)
                    .collect()
            })
            .collect())
    }

    /// Registers `edge` as interested in (tenant, conv), on behalf of an edge whose
    /// connection is being auto-subscribed (the edge keeps it fresh from then on).
    pub async fn register_conv_edges(&self, entries: &[(Uuid, Uuid, String)]) -> Result<()> {
        if entries.is_empty() {
            return Ok(());
        }
        let expiry = now_ms() + bus::REGISTRY_TTL_MS;
        let pipe = self.redis.pipeline();
        for (tenant, conv, edge) in entries {
            let key = self.keys.conv_edges(*tenant, *conv);
            let () = pipe.hset(key.as_str(), (edge.as_str(), expiry)).await?;
            let () = pipe
                .pexpire(key.as_str(), 2 * bus::REGISTRY_TTL_MS as i64, None)
                .await?;
        }
        let _: Vec<Value> = pipe.all().await?;
        Ok(())
    }

    /// `msg` appends for committed messages: each frame serialized once, then shared by
    /// every edge that has a live subscriber of its conversation.
    pub async fn deliveries(&self, committed: &[(Uuid, &Message)]) -> Result<Vec<Out>> {
        let mut convs: Vec<(Uuid, Uuid)> = committed.iter().map(|(t, m)| (*t, m.conv)).collect();
        convs.sort();
        convs.dedup();
        let registry: Vec<String> = convs
            .iter()
            .map(|(t, c)| self.keys.conv_edges(*t, *c))
            .collect();
        let edges: HashMap<(Uuid, Uuid), Vec<String>> = convs
            .into_iter()
            .zip(self.live_edges(&registry).await?)
            .collect();
        let mut outs = Vec::new();
        for (tenant, m) in committed {
            let Some(targets) = edges.get(&(*tenant, m.conv)).filter(|e| !e.is_empty()) else {
                continue;
            };
            let frame = Bytes::from(ServerFrame::Msg((*m).clone()).to_json());
            let header = Egress::Deliver {
                tenant: *tenant,
                conv: m.conv,
                seq: m.seq,
                agents_only: wire::agents_only(&m.kind),
            };
            for edge in targets {
                outs.push(Out {
                    edge: edge.clone(),
                    header: header.clone(),
                    frame: frame.clone(),
                });
            }
        }
        Ok(outs)
    }

    /// Appends every `Out` in one pipeline: per edge, in order, entries of up to
    /// [`PAIRS_PER_ENTRY`] pairs (and refreshes each edge stream's expiry once).
    pub async fn publish(&self, outs: &[Out]) -> Result<()> {
        if outs.is_empty() {
            return Ok(());
        }
        let mut by_edge: Vec<(&str, Vec<&Out>)> = Vec::new();
        for out in outs {
            match by_edge.iter_mut().find(|(e, _)| *e == out.edge) {
                Some((_, list)) => list.push(out),
                None => by_edge.push((&out.edge, vec![out])),
            }
        }
        let pipe = self.redis.pipeline();
        for (edge, list) in &by_edge {
            let key = self.keys.egress(edge);
            for chunk in list.chunks(PAIRS_PER_ENTRY) {
                let mut fields: Vec<(&str, Value)> = Vec::with_capacity(2 * chunk.len());
                for out in chunk {
                    let header = serde_json::to_string(&out.header)
                        .map_err(|e| crate::Error::Internal(e.to_string()))?;
                    fields.push((bus::FIELD_HEADER, Value::from(header)));
                    fields.push((bus::FIELD_FRAME, Value::Bytes(out.frame.clone())));
                }
                let () = pipe
                    .xadd(
                        key.as_str(),
                        false,
                        ("MAXLEN", "~", self.maxlen as i64),
                        "*",
                        fields,
                    )
                    .await?;
            }
            let () = pipe
                .expire(key.as_str(), bus::EGRESS_EXPIRE_SECS, None)
                .await?;
        }
        let _: Vec<Value> = pipe.all().await?;
        metrics::counter!("relaydesk_core_egress_appends_total").increment(outs.len() as u64);
        Ok(())
    }
}
