//! Blasts: one message from the tenant to every visitor of a segment, in one request.
//!
//! A segment selects visitors by jsonb containment on their attributes and, optionally,
//! by having a live connection (the edges' principal registry). Each recipient gets the
//! message in their newest unresolved conversation, or in a new one created `snoozed`
//! with no assignee: it reaches no agent until the visitor answers, and then
//! `lifecycle::wake` routes it like any other reopened conversation.
//!
//! Recipients are handled in chunks of [`CHUNK`]: one transaction finds or creates their
//! conversations, the `created` events subscribe their live connections, then the
//! messages commit through `store::commit_sends` (the one commit path) and fan out to
//! the edges in one pipeline. Every message of a blast has the client id
//! `blast-<blast id>`, so a blast run again under the same id (the request's
//! `Idempotency-Key`) completes what a failed run left undone and stores nothing twice.

use std::collections::HashMap;

use relaydesk_shared::token::Role;
use relaydesk_shared::wire::{Actor, ConvEvent};
use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};
use sha2::{Digest, Sha256};
use utoipa::ToSchema;
use uuid::Uuid;

use crate::db;
use crate::error::{Error, Result};
use crate::events::{self, Change};
use crate::store::{self, NewMessage, Outcome};
use crate::AppState;

/// Most recipients of one blast.
pub const MAX_RECIPIENTS: usize = 50_000;
/// Recipients per transaction and per fan-out pipeline.
const CHUNK: usize = 500;
/// Visitors read per page while selecting recipients.
const SCAN_PAGE: i64 = 5_000;
/// Most visitors examined for an `online` segment before it counts as too broad.
const MAX_SCANNED: usize = 1_000_000;
/// Longest blast text, in characters (its message must also stay within
/// `input::MAX_MESSAGE_BYTES` serialized, else 413).
pub const MAX_TEXT_CHARS: usize = 16 * 1024;
/// Largest `attributes` criterion, in bytes.
const MAX_CRITERION_BYTES: usize = 16 * 1024;
/// The support type of conversations a blast creates.
const SUPPORT_TYPE: &str = "general";

/// Who receives a blast.
#[derive(Debug, Clone, Default, Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Segment {
    /// Visitors whose attributes contain this object (jsonb `@>`). `{}` matches every
    /// visitor and needs `all`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    pub attributes: Option<Map<String, Value>>,
    /// Only visitors with a live connection.
    #[serde(default)]
    pub online: bool,
    /// Confirms that the segment may be every visitor (of the other criteria).
    #[serde(default)]
    pub all: bool,
}

impl Segment {
    /// A segment needs a criterion; everyone only when asked for explicitly.
    pub fn validate(&self) -> Result<()> {
        let narrowed = self.attributes.as_ref().is_some_and(|a| !a.is_empty());
        if !(narrowed || self.online || self.all) {
            return Err(Error::bad_request(
                "segment needs attributes or online; `\"all\": true` sends to every visitor",
            ));
        }
        if let Some(a) = &self.attributes {
            if Value::Object(a.clone()).to_string().len() > MAX_CRITERION_BYTES {
                return Err(Error::bad_request(format!(
                    "segment attributes must be at most {MAX_CRITERION_BYTES} bytes"
                )));
            }
        }
        Ok(())
    }

    fn containment(&self) -> Value {
        Value::Object(self.attributes.clone().unwrap_or_default())
    }
}

/// The result of [`send`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sent {
    pub id: Uuid,
    /// Visitors whose conversation holds the message.
    pub recipients: u64,
}

/// The id of a blast: derived from the caller's idempotency key (so a retry is the same
/// blast), or new.
pub fn blast_id(tenant: Uuid, idempotency_key: Option<&str>) -> Uuid {
    match idempotency_key {
        Some(key) => {
            let digest = Sha256::new()
                .chain_update(tenant.as_bytes())
                .chain_update(b"blast:")
                .chain_update(key.as_bytes())
                .finalize();
            let mut bytes = [0u8; 16];
            bytes.copy_from_slice(&digest[..16]);
            uuid::Builder::from_custom_bytes(bytes).into_uuid()
        }
        None => Uuid::now_v7(),
    }
}

/// What every chunk of one blast shares.
struct Blast {
    id: Uuid,
    from: Actor,
    client_id: String,
    body: Value,
    support_type: String,
    priority: i32,
}

/// Sends `text` to every visitor of `segment` on behalf of `sender` (an admin's agent
/// id, or the tenant id for the API key).
pub async fn send(
    state: &AppState,
    tenant: Uuid,
    sender: Uuid,
    idempotency_key: Option<&str>,
    text: &str,
    segment: &Segment,
) -> Result<Sent> {
    if text.trim().is_empty() || text.chars().count() > MAX_TEXT_CHARS {
        return Err(Error::bad_request(format!(
            "text must be 1-{MAX_TEXT_CHARS} characters"
        )));
    }
    if !relaydesk_shared::input::body_within_limit(&serde_json::json!({ "text": text })) {
        return Err(Error::client(
            relaydesk_shared::ErrorCode::TooLarge,
            "the blast's message is over the message size limit",
        ));
    }
    segment.validate()?;
    let (tenant_name, st) = {
        let mut client = state.pool.get().await?;
        let tx = db::tenant_tx(&mut client, tenant).await?;
        let name: String = tx
            .query_opt("SELECT name FROM tenants WHERE id = $1", &[&tenant])
            .await?
            .ok_or_else(|| Error::not_found("tenant"))?
            .get(0);
        let st = crate::routing::support_type(&tx, tenant, SUPPORT_TYPE).await?;
        tx.commit().await?;
        (name, st)
    };
    let recipients = select(state, tenant, segment).await?;

    let id = blast_id(tenant, idempotency_key);
    let body = json!({ "text": text });
    let segment_json = serde_json::to_value(segment).map_err(|e| Error::Internal(e.to_string()))?;
    record(state, tenant, id, &body, &segment_json).await?;
    let blast = Blast {
        id,
        from: Actor {
            id: sender,
            role: Role::Admin,
            name: Some(tenant_name),
        },
        client_id: format!("blast-{}", id.simple()),
        body,
        support_type: st.key,
        priority: st.priority,
    };
    let mut stored = 0;
    for chunk in recipients.chunks(CHUNK) {
        stored += send_chunk(state, tenant, &blast, chunk).await?;
    }
    {
        let mut client = state.pool.get().await?;
        let tx = db::tenant_tx(&mut client, tenant).await?;
        tx.execute(
            "UPDATE blasts SET recipients = $3 WHERE tenant_id = $1 AND id = $2",
            &[&tenant, &id, &(stored as i32)],
        )
        .await?;
        tx.commit().await?;
    }
    tracing::info!(%tenant, blast = %id, recipients = stored, "blast sent");
    Ok(Sent {
        id,
        recipients: stored,
    })
}

/// The visitors of a segment, in id order; refused past [`MAX_RECIPIENTS`].
async fn select(state: &AppState, tenant: Uuid, segment: &Segment) -> Result<Vec<Uuid>> {
    let containment = segment.containment();
    let mut client = state.pool.get().await?;
    let mut recipients = Vec::new();
    let mut after: Option<Uuid> = None;
    let mut scanned = 0;
    loop {
        let tx = db::tenant_tx(&mut client, tenant).await?;
        let page: Vec<Uuid> = tx
            .query(
                "SELECT id FROM visitors
                  WHERE tenant_id = $1 AND attributes @> $2 AND ($3::uuid IS NULL OR id > $3)
                  ORDER BY id LIMIT $4",
                &[&tenant, &containment, &after, &SCAN_PAGE],
            )
            .await?
            .iter()
            .map(|r| r.get(0))
            .collect();
        tx.commit().await?;
        scanned += page.len();
        if segment.online {
            for chunk in page.chunks(CHUNK) {
                let keys: Vec<String> = chunk
                    .iter()
                    .map(|v| state.keys.principal_edges(tenant, *v))
                    .collect();
                let live = state.fanout.live_edges(&keys).await?;
                recipients.extend(
                    chunk
                        .iter()
                        .zip(live)
                        .filter(|(_, edges)| !edges.is_empty())
                        .map(|(v, _)| *v),
                );
            }
        } else {
            recipients.extend_from_slice(&page);
        }
        if recipients.len() > MAX_RECIPIENTS {
            return Err(Error::bad_request(format!(
                "the segment has more than {MAX_RECIPIENTS} visitors; narrow it"
            )));
        }
        if (page.len() as i64) < SCAN_PAGE {
            return Ok(recipients);
        }
        if scanned >= MAX_SCANNED {
            return Err(Error::bad_request(format!(
                "the segment matches more than {MAX_SCANNED} visitors before the online filter; narrow it"
            )));
        }
        after = page.last().copied();
    }
}

/// Stores the blast row; a blast run again under the same id must be the same blast.
async fn record(
    state: &AppState,
    tenant: Uuid,
    id: Uuid,
    body: &Value,
    segment: &Value,
) -> Result<()> {
    let mut client = state.pool.get().await?;
    let tx = db::tenant_tx(&mut client, tenant).await?;
    let inserted = tx
        .execute(
            "INSERT INTO blasts (tenant_id, id, body, segment) VALUES ($1, $2, $3, $4)
             ON CONFLICT (tenant_id, id) DO NOTHING",
            &[&tenant, &id, body, segment],
        )
        .await?;
    if inserted == 0 {
        let same: bool = tx
            .query_one(
                "SELECT body = $3 AND segment = $4 FROM blasts WHERE tenant_id = $1 AND id = $2",
                &[&tenant, &id, body, segment],
            )
            .await?
            .get(0);
        if !same {
            return Err(Error::client(
                relaydesk_shared::ErrorCode::Conflict,
                "this Idempotency-Key was used for a different blast",
            ));
        }
    }
    tx.commit().await?;
    Ok(())
}

/// Delivers the blast to up to [`CHUNK`] visitors; returns how many hold it now.
async fn send_chunk(
    state: &AppState,
    tenant: Uuid,
    blast: &Blast,
    visitors: &[Uuid],
) -> Result<u64> {
    // 1. Each visitor's newest unresolved conversation, or a new snoozed one. The visitor
    //    rows are locked so that two blasts never both create one for the same visitor.
    let mut targets: Vec<Uuid> = Vec::with_capacity(visitors.len());
    let mut created: Vec<Change> = Vec::new();
    {
        let mut client = state.pool.get().await?;
        let tx = db::tenant_tx(&mut client, tenant).await?;
        let locked: Vec<Uuid> = tx
            .query(
                "SELECT id FROM visitors WHERE tenant_id = $1 AND id = ANY($2)
                  ORDER BY id FOR NO KEY UPDATE",
                &[&tenant, &visitors],
            )
            .await?
            .iter()
            .map(|r| r.get(0))
            .collect();
        let open: HashMap<Uuid, Uuid> = tx
            .query(
                "SELECT DISTINCT ON (visitor_id) visitor_id, id FROM conversations
                  WHERE tenant_id = $1 AND visitor_id = ANY($2) AND status <> 'resolved'
                  ORDER BY visitor_id, created_at DESC, id DESC",
                &[&tenant, &locked],
            )
            .await?
            .iter()
            .map(|r| (r.get(0), r.get(1)))
            .collect();
        let (mut new_ids, mut new_visitors) = (Vec::new(), Vec::new());
        for v in &locked {
            match open.get(v) {
                Some(conv) => targets.push(*conv),
                None => {
                    let conv = Uuid::new_v4();
                    targets.push(conv);
                    new_ids.push(conv);
                    new_visitors.push(*v);
                    created.push(Change {
                        tenant,
                        conv,
                        event: ConvEvent::Created,
                        status: "snoozed".into(),
                        assignee: None,
                        support_type: blast.support_type.clone(),
                        reason: Some("blast".into()),
                        head: 0,
                        gained: Some(*v),
                        lost: None,
                        notify: Vec::new(),
                    });
                }
            }
        }
        if !new_ids.is_empty() {
            tx.execute(
                "INSERT INTO conversations (tenant_id, id, visitor_id, support_type, status, priority)
                 SELECT $1, v.id, v.visitor, $4, 'snoozed', $5
                   FROM unnest($2::uuid[], $3::uuid[]) AS v(id, visitor)",
                &[&tenant, &new_ids, &new_visitors, &blast.support_type, &blast.priority],
            )
            .await?;
            let hooks: Vec<Value> = created.iter().map(events::conversation_data).collect();
            events::enqueue_many(&tx, tenant, events::hook::CONVERSATION_CREATED, &hooks).await?;
        }
        tx.commit().await?;
    }

    // 2. Subscribe the new conversations' visitors on every live connection, before the
    //    message follows in the same egress streams.
    if !created.is_empty() {
        if let Err(e) = register_new(state, &created).await {
            tracing::warn!(error = %e, blast = %blast.id, "could not register new blast conversations");
        }
        events::publish(state, &created).await;
    }

    // 3. Commit, then 4. fan out what is new.
    let batch: Vec<NewMessage> = targets
        .iter()
        .map(|conv| NewMessage {
            tenant,
            from: blast.from.clone(),
            conv: *conv,
            client_id: blast.client_id.clone(),
            kind: "text".into(),
            body: blast.body.clone(),
            broadcast: true,
        })
        .collect();
    let committed = store::commit_sends(&state.pool, &batch).await?;
    let mut stored = 0;
    let mut fresh = Vec::new();
    for outcome in &committed.outcomes {
        match outcome {
            Outcome::Committed { message, new } => {
                stored += 1;
                if *new {
                    fresh.push((tenant, message));
                }
            }
            Outcome::Refused { code, message } => {
                tracing::warn!(blast = %blast.id, ?code, message, "a blast message was refused");
            }
        }
    }
    metrics::counter!("relaydesk_core_blast_messages_total").increment(fresh.len() as u64);
    let published = async {
        let outs = state.fanout.deliveries(&fresh).await?;
        state.fanout.publish(&outs).await
    };
    if let Err(e) = published.await {
        // Committed: visitors who miss it live read it when they resume.
        tracing::warn!(error = %e, blast = %blast.id, "could not publish blast messages live");
    }
    Ok(stored)
}

/// Registers, on behalf of the edges holding the new conversations' visitors, those
/// edges as subscribers of the conversations: the `msg` that follows is then routed to
/// them without waiting for the edges' own registry writes (they keep it fresh after).
async fn register_new(state: &AppState, created: &[Change]) -> Result<()> {
    let keys: Vec<String> = created
        .iter()
        .filter_map(|c| c.gained.map(|v| state.keys.principal_edges(c.tenant, v)))
        .collect();
    let edges = state.fanout.live_edges(&keys).await?;
    let entries: Vec<(Uuid, Uuid, String)> = created
        .iter()
        .zip(edges)
        .flat_map(|(c, edges)| edges.into_iter().map(move |e| (c.tenant, c.conv, e)))
        .collect();
    state.fanout.register_conv_edges(&entries).await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn segment(v: Value) -> Segment {
        serde_json::from_value(v).unwrap_or_else(|e| panic!("{e}"))
    }

    #[test]
    fn a_segment_needs_a_criterion() {
        assert!(segment(json!({})).validate().is_err());
        assert!(segment(json!({"attributes": {}})).validate().is_err());
        assert!(segment(json!({"attributes": {}, "all": true}))
            .validate()
            .is_ok());
        assert!(segment(json!({"attributes": {"plan": "pro"}}))
            .validate()
            .is_ok());
        assert!(segment(json!({"online": true})).validate().is_ok());
        assert!(serde_json::from_value::<Segment>(json!({"atributes": {}})).is_err());
        assert!(serde_json::from_value::<Segment>(json!({"attributes": [1]})).is_err());
    }

    #[test]
    fn idempotency_keys_name_one_blast_per_tenant() {
        let (a, b) = (Uuid::new_v4(), Uuid::new_v4());
        assert_eq!(blast_id(a, Some("k")), blast_id(a, Some("k")));
        assert_ne!(blast_id(a, Some("k")), blast_id(b, Some("k")));
        assert_ne!(blast_id(a, Some("k")), blast_id(a, Some("l")));
        assert_ne!(blast_id(a, None), blast_id(a, None));
    }
}
