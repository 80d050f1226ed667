//! Registry maintenance: this edge's entries in the two Redis registries
//! (`Keys::conv_edges`, `Keys::principal_edges`), whose fields are edge ids and whose
//! values are expiry times (Unix ms).
//!
//! The hub decides *when* an entry exists (first local subscriber / connection: set;
//! last one gone: delete) and sends [`RegOp`]s in that order through one channel; the
//! single registry task applies them in order, pipelined, and re-sets every live entry
//! every [`REGISTRY_REFRESH_MS`] so it never expires while needed.

use std::collections::HashSet;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use fred::prelude::{Client, HashesInterface, KeysInterface, Value};
use relaydesk_shared::bus::{Keys, REGISTRY_REFRESH_MS, REGISTRY_TTL_MS};
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

/// Most operations applied in one pipeline.
const BATCH: usize = 512;

/// One registry entry of this edge.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RegKey {
    Conv { tenant: Uuid, conv: Uuid },
    Principal { tenant: Uuid, principal: Uuid },
}

impl RegKey {
    fn redis_key(&self, keys: &Keys) -> String {
        match *self {
            RegKey::Conv { tenant, conv } => keys.conv_edges(tenant, conv),
            RegKey::Principal { tenant, principal } => keys.principal_edges(tenant, principal),
        }
    }
}

/// A change of this edge's registry entries.
#[derive(Debug)]
pub enum RegOp {
    /// HSET (and PEXPIRE) the entry; the sender, if any, learns whether it succeeded.
    Set(RegKey, Option<oneshot::Sender<bool>>),
    /// HDEL the entry.
    Del(RegKey),
}

/// Sends registry operations to the registry task, in order.
#[derive(Debug, Clone)]
pub struct Registrar {
    tx: mpsc::UnboundedSender<RegOp>,
}

impl Registrar {
    pub fn channel() -> (Registrar, mpsc::UnboundedReceiver<RegOp>) {
        let (tx, rx) = mpsc::unbounded_channel();
        (Registrar { tx }, rx)
    }

    pub fn set(&self, key: RegKey) {
        let _ = self.tx.send(RegOp::Set(key, None));
    }

    /// Sets the entry; the receiver resolves to whether the write succeeded.
    pub fn set_acked(&self, key: RegKey) -> oneshot::Receiver<bool> {
        let (tx, rx) = oneshot::channel();
        let _ = self.tx.send(RegOp::Set(key, Some(tx)));
        rx
    }

    pub fn del(&self, key: RegKey) {
        let _ = self.tx.send(RegOp::Del(key));
    }
}

pub(crate) fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Applies registry operations in order and refreshes live entries until `shutdown`;
/// then applies what is still queued and deletes every entry left.
pub async fn run_registry(
    client: Client,
    keys: Keys,
    edge_id: String,
    mut rx: mpsc::UnboundedReceiver<RegOp>,
    shutdown: CancellationToken,
) {
    let mut live: HashSet<RegKey> = HashSet::new();
    let period = Duration::from_millis(REGISTRY_REFRESH_MS);
    let mut refresh = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
    refresh.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            op = rx.recv() => {
                let Some(op) = op else { break };
                let mut batch = vec![op];
                while batch.len() < BATCH {
                    match rx.try_recv() {
                        Ok(op) => batch.push(op),
                        Err(_) => break,
                    }
                }
                apply(&client, &keys, &edge_id, &mut live, batch).await;
            }
            _ = refresh.tick() => refresh_all(&client, &keys, &edge_id, &live).await,
            _ = shutdown.cancelled() => break,
        }
    }
    let mut rest = Vec::new();
    while let Ok(op) = rx.try_recv() {
        rest.push(op);
    }
    while !rest.is_empty() {
        let ops: Vec<RegOp> = rest.drain(..rest.len().min(BATCH)).collect();
        apply(&client, &keys, &edge_id, &mut live, ops).await;
    }
    let left: Vec<RegOp> = live.iter().map(|k| RegOp::Del(*k)).collect();
    if !left.is_empty() {
        apply(&client, &keys, &edge_id, &mut live, left).await;
    }
}

async fn apply(
    client: &Client,
    keys: &Keys,
    edge_id: &str,
    live: &mut HashSet<RegKey>,
    ops: Vec<RegOp>,
) {
    let expiry = now_ms() + REGISTRY_TTL_MS;
    let pipe = client.pipeline();
    let mut acks: Vec<(usize, oneshot::Sender<bool>)> = Vec::new();
    let mut index = 0usize;
    let mut queued_ok = true;
    for op in ops {
        match op {
            RegOp::Set(key, ack) => {
                live.insert(key);
                let k = key.redis_key(keys);
                let a: Result<(), _> = pipe.hset(k.as_str(), (edge_id, expiry)).await;
                let b: Result<(), _> = pipe
                    .pexpire(k.as_str(), 2 * REGISTRY_TTL_MS as i64, None)
                    .await;
                queued_ok &= a.is_ok() && b.is_ok();
                if let Some(ack) = ack {
                    acks.push((index, ack));
                }
                index += 2;
            }
            RegOp::Del(key) => {
                live.remove(&key);
                let k = key.redis_key(keys);
                let a: Result<(), _> = pipe.hdel(k.as_str(), edge_id).await;
                queued_ok &= a.is_ok();
                index += 1;
            }
        }
    }
    let results: Vec<Result<Value, _>> = pipe.try_all().await;
    if results.iter().any(|r| r.is_err()) || !queued_ok {
        tracing::warn!(
            errors = results.iter().filter(|r| r.is_err()).count(),
            "registry update failed"
        );
    }
    for (i, ack) in acks {
        let ok = queued_ok && matches!(results.get(i), Some(Ok(_)));
        let _ = ack.send(ok);
    }
}

async fn refresh_all(client: &Client, keys: &Keys, edge_id: &str, live: &HashSet<RegKey>) {
    let all: Vec<RegKey> = live.iter().copied().collect();
    let expiry = now_ms() + REGISTRY_TTL_MS;
    for chunk in all.chunks(BATCH) {
        let pipe = client.pipeline();
        for key in chunk {
            let k = key.redis_key(keys);
            let _: Result<(), _> = pipe.hset(k.as_str(), (edge_id, expiry)).await;
            let _: Result<(), _> = pipe
                .pexpire(k.as_str(), 2 * REGISTRY_TTL_MS as i64, None)
                .await;
        }
        if let Err(e) = pipe.all::<Value>().await {
            tracing::warn!(error = %e, "registry refresh failed");
        }
    }
}
