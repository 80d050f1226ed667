//! Edge → Redis appends: client frames as [`Ingress`] entries on the sharded ingress
//! streams, and edge-originated [`Egress::Event`]s (typing) on other edges' egress
//! streams.
//!
//! Sessions never wait on these round trips: they queue an [`Append`] and move on. One
//! task drains the queue and issues everything queued as one pipeline, then the next
//! batch while that one was filling (adaptive batching). A failed append is answered
//! ([`OnFail`]): a client frame with an `unavailable` error and `retry_after_ms` (the
//! socket stays open), a `hello` by closing with 4011; and it marks Redis as failing so
//! that sessions refuse further sends at once until it answers again. Ingress appends
//! never carry MAXLEN: core-api trims.

use std::time::Instant;

use bytes::Bytes;
use fred::prelude::{Client, StreamsInterface, Value};
use fred::types::streams::XCap;
use relaydesk_shared::bus::{
    shard_of, Egress, Ingress, Keys, FIELD_DATA, FIELD_FRAME, FIELD_HEADER,
};
use relaydesk_shared::wire::ServerFrame;
use relaydesk_shared::{CloseCode, ErrorCode};
use std::sync::Arc;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::writer::Outbound;
use crate::Ctx;

/// What a client should wait before retrying a frame refused while Redis is failing.
pub const RETRY_AFTER_MS: u64 = 1000;

/// How to answer the client whose entry could not be appended.
pub enum OnFail {
    /// Close the connection with 4011 (its `hello` cannot be answered).
    Close(Outbound),
    /// Answer with an `unavailable` error naming the frame; the connection stays open.
    Refuse {
        out: Outbound,
        id: Option<String>,
        conv: Option<Uuid>,
    },
}

impl OnFail {
    fn fail(self) {
        match self {
            OnFail::Close(out) => out.close(CloseCode::Unavailable),
            OnFail::Refuse { out, id, conv } => {
                out.send(unavailable(id, conv));
            }
        }
    }
}

/// The `error` frame refusing a client frame while Redis is failing.
pub fn unavailable(id: Option<String>, conv: Option<Uuid>) -> Bytes {
    Bytes::from(
        ServerFrame::Error {
            id,
            conv,
            code: ErrorCode::Unavailable,
            message: "the message bus is unavailable; retry later".to_owned(),
            retry_after_ms: Some(RETRY_AFTER_MS),
        }
        .to_json(),
    )
}

/// Most appends per pipeline.
const BATCH: usize = 512;
/// Approximate length bound of another edge's egress stream for edge-originated events.
const EVENT_MAXLEN: i64 = 10_000;

/// One queued XADD.
pub struct Append {
    key: String,
    fields: Vec<(&'static str, Value)>,
    maxlen: Option<i64>,
    /// Answered if the append fails.
    on_fail: Option<OnFail>,
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
    /// principal for `hello`). `on_fail` is answered if Redis refuses it.
    pub fn ingress(
        &self,
        entry: &Ingress,
        shard_id: Uuid,
        on_fail: Option<OnFail>,
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
pub(crate) async fn run_ingress(
    ctx: Arc<Ctx>,
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
        flush(&ctx, &client, batch).await;
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
        flush(&ctx, &client, batch).await;
    }
}

async fn flush(ctx: &Ctx, client: &Client, batch: Vec<Append>) {
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
            if let Some(on_fail) = on_fail {
                on_fail.fail();
            }
        }
    }
    if failures == 0 {
        ctx.redis_ok();
    } else {
        ctx.redis_failed();
        metrics::counter!("relaydesk_edge_ingress_failures_total").increment(failures as u64);
        tracing::warn!(failures, "ingress append failed");
    }
}
