//! Edge → Redis appends: client frames as [`Ingress`] entries on the sharded ingress
//! streams, and edge-originated [`Egress::Event`]s (typing) on other edges' egress
//! streams.
//!
//! Sessions never wait on these round trips: they queue an [`Append`] and move on. One
//! task drains the queue and issues everything queued as one pipeline, then the next
//! batch while that one was filling (adaptive batching). A failed append closes its
//! connection with 4011. Ingress appends never carry MAXLEN: core-api trims.

use std::time::Instant;

use bytes::Bytes;
use fred::prelude::{Client, StreamsInterface, Value};
use fred::types::streams::XCap;
use relaydesk_shared::bus::{
    shard_of, Egress, Ingress, Keys, FIELD_DATA, FIELD_FRAME, FIELD_HEADER,
};
use relaydesk_shared::CloseCode;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::writer::Outbound;

/// Most appends per pipeline.
const BATCH: usize = 512;
/// Approximate length bound of another edge's egress stream for edge-originated events.
const EVENT_MAXLEN: i64 = 10_000;

/// One queued XADD.
pub struct Append {
    key: String,
    fields: Vec<(&'static str, Value)>,
    maxlen: Option<i64>,
    /// Closed with 4011 if the append fails.
    on_fail: Option<Outbound>,
    /// Whether this is a client ingress entry (timed by the latency histogram).
    timed: bool,
    queued_at: Instant,
}

/// The queue is full: the edge is overloaded or Redis is slow.
#[derive(Debug, thiserror::Error)]
#[error("ingress queue full")]
pub struct Full;

/// Queues appends for the ingress task.
#[derive(Clone)]
pub struct IngressTx {
    tx: mpsc::Sender<Append>,
    keys: Keys,
    shards: u16,
}

impl IngressTx {
    pub fn channel(
        keys: Keys,
        shards: u16,
        capacity: usize,
    ) -> (IngressTx, mpsc::Receiver<Append>) {
        let (tx, rx) = mpsc::channel(capacity.max(1));
        (IngressTx { tx, keys, shards }, rx)
    }

    /// Queues `entry` on the ingress shard of `shard_id` (the conversation, or the
    /// principal for `hello`). `on_fail` is closed with 4011 if Redis refuses it.
    pub fn ingress(
        &self,
        entry: &Ingress,
        shard_id: Uuid,
        on_fail: Option<Outbound>,
    ) -> Result<(), Full> {
        let data = serde_json::to_string(entry).map_err(|_| Full)?;
        let append = Append {
            key: self.keys.ingress(shard_of(shard_id, self.shards)),
            fields: vec![(FIELD_DATA, Value::from(data))],
            maxlen: None,
            on_fail,
            timed: true,
            queued_at: Instant::now(),
        };
        self.tx.try_send(append).map_err(|_| Full)
    }

    /// Queues an edge-originated event for another edge's egress stream.
    pub fn event(&self, edge: &str, header: &Egress, frame: Bytes) -> Result<(), Full> {
        let header = serde_json::to_string(header).map_err(|_| Full)?;
        let append = Append {
            key: self.keys.egress(edge),
            fields: vec![
                (FIELD_HEADER, Value::from(header)),
                (FIELD_FRAME, Value::Bytes(frame)),
            ],
            maxlen: Some(EVENT_MAXLEN),
            on_fail: None,
            timed: false,
            queued_at: Instant::now(),
        };
        self.tx.try_send(append).map_err(|_| Full)
    }
}

/// Drains the append queue in pipelined batches until `shutdown`, then flushes what is
/// still queued.
pub async fn run_ingress(
    client: Client,
    mut rx: mpsc::Receiver<Append>,
    shutdown: CancellationToken,
) {
    loop {
        let first = tokio::select! {
            a = rx.recv() => a,
            _ = shutdown.cancelled() => None,
        };
        let Some(first) = first else { break };
        let mut batch = Vec::with_capacity(64);
        batch.push(first);
        while batch.len() < BATCH {
            match rx.try_recv() {
                Ok(a) => batch.push(a),
                Err(_) => break,
            }
        }
        flush(&client, batch).await;
    }
    loop {
        let mut batch = Vec::new();
        while batch.len() < BATCH {
            match rx.try_recv() {
                Ok(a) => batch.push(a),
                Err(_) => break,
            }
        }
        if batch.is_empty() {
            break;
        }
        flush(&client, batch).await;
    }
}

async fn flush(client: &Client, batch: Vec<Append>) {
    let pipe = client.pipeline();
    let mut meta = Vec::with_capacity(batch.len());
    for a in batch {
        let cap = match a.maxlen {
            Some(n) => XCap::try_from(("MAXLEN", "~", n)),
            None => Ok(XCap::from(None::<()>)),
        };
        let queued = match cap {
            Ok(cap) => {
                let r: Result<(), _> = pipe.xadd(a.key.as_str(), false, cap, "*", a.fields).await;
                r.is_ok()
            }
            Err(_) => false,
        };
        meta.push((queued, a.on_fail, a.timed, a.queued_at));
    }
    let results: Vec<Result<Value, _>> = pipe.try_all().await;
    // `try_all` answers each queued command in order; commands that failed to queue
    // have no answer.
    let mut answers = results.into_iter();
    let mut failures = 0usize;
    for (queued, on_fail, timed, at) in meta {
        let ok = queued && matches!(answers.next(), Some(Ok(_)));
        if timed {
            metrics::histogram!("relaydesk_edge_ingress_append_seconds")
                .record(at.elapsed().as_secs_f64());
        }
        if !ok {
            failures += 1;
            if let Some(out) = on_fail {
                out.close(CloseCode::Unavailable.code());
            }
        }
    }
    if failures > 0 {
        metrics::counter!("relaydesk_edge_ingress_failures_total").increment(failures as u64);
        tracing::warn!(failures, "ingress append failed");
    }
}
