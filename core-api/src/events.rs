//! Conversation state changes leave core-api two ways: as wire `conv` frames to the
//! connected participants and eligible agents (after commit, best effort: a client that
//! misses one reads the state on reconnect), and as webhook events written to the
//! transactional outbox in the same transaction as the change (delivered at least once
//! by `webhooks`).

use bytes::Bytes;
use deadpool_postgres::Transaction;
use relaydesk_shared::bus::Egress;
use relaydesk_shared::wire::{ConvEvent, ServerFrame};
use serde_json::{json, Value};
use uuid::Uuid;

use crate::error::Result;
use crate::fanout::{now_ms, Out};
use crate::AppState;

/// One committed change of a conversation, and who must hear of it.
#[derive(Debug, Clone)]
pub struct Change {
    pub tenant: Uuid,
    pub conv: Uuid,
    pub event: ConvEvent,
    pub status: String,
    pub assignee: Option<Uuid>,
    pub support_type: String,
    pub reason: Option<String>,
    /// The conversation's head when the change committed (live delivery starts after it).
    pub head: u64,
    /// Newly given the conversation: subscribed to it on every connection.
    pub gained: Option<Uuid>,
    /// No longer a participant: unsubscribed on every connection.
    pub lost: Option<Uuid>,
    /// Agents to tell though they do not take part (eligible agents, for the queue).
    pub notify: Vec<Uuid>,
}

impl Change {
    pub fn frame(&self) -> ServerFrame {
        ServerFrame::Conv {
            conv: self.conv,
            event: self.event,
            status: Some(self.status.clone()),
            assignee: self.assignee,
            support_type: Some(self.support_type.clone()),
            reason: self.reason.clone(),
        }
    }
}

/// Sends each change's `conv` frame: to the conversation's subscribers, to the agent who
/// gained it (subscribing them), to the one who lost it (unsubscribing them), and to the
/// agents in `notify`. Failures are logged, not returned: the change is committed.
pub async fn publish(state: &AppState, changes: &[Change]) {
    if let Err(e) = try_publish(state, changes).await {
        tracing::warn!(error = %e, "could not publish conversation events");
    }
}

async fn try_publish(state: &AppState, changes: &[Change]) -> Result<()> {
    if changes.is_empty() {
        return Ok(());
    }
    if let Some(c) = changes.iter().find(|c| c.status == "queued") {
        crate::presence::queued(state, c.tenant).await;
    }
    let mut keys = Vec::new();
    for c in changes {
        keys.push(state.keys.conv_edges(c.tenant, c.conv));
        let principals = c.gained.iter().chain(c.lost.iter()).chain(c.notify.iter());
        keys.extend(principals.map(|p| state.keys.principal_edges(c.tenant, *p)));
    }
    let mut edges = state.fanout.live_edges(&keys).await?.into_iter();
    let mut outs = Vec::new();
    for c in changes {
        let frame = Bytes::from(c.frame().to_json());
        let subscribers = edges.next().unwrap_or_default();
        for edge in subscribers {
            outs.push(Out {
                edge,
                header: Egress::Event {
                    tenant: c.tenant,
                    conv: c.conv,
                    exclude: c.gained,
                    agents_only: false,
                },
                frame: frame.clone(),
            });
        }
        if let Some(p) = c.gained {
            for edge in edges.next().unwrap_or_default() {
                outs.push(Out {
                    edge,
                    header: Egress::AutoSub {
                        tenant: c.tenant,
                        principal: p,
                        conv: c.conv,
                        head: c.head,
                    },
                    frame: frame.clone(),
                });
            }
        }
        let lost = c.lost.map(|p| (p, Some(c.conv)));
        let notify = c.notify.iter().map(|p| (*p, None));
        for (p, unsub) in lost.into_iter().chain(notify) {
            for edge in edges.next().unwrap_or_default() {
                outs.push(Out {
                    edge,
                    header: Egress::ToPrincipal {
                        tenant: c.tenant,
                        principal: p,
                        unsub,
                    },
                    frame: frame.clone(),
                });
            }
        }
    }
    state.fanout.publish(&outs).await
}

/// Webhook event names.
pub mod hook {
    pub const CONVERSATION_CREATED: &str = "conversation.created";
    pub const CONVERSATION_ASSIGNED: &str = "conversation.assigned";
    pub const CONVERSATION_QUEUED: &str = "conversation.queued";
    pub const CONVERSATION_TRANSFERRED: &str = "conversation.transferred";
    pub const CONVERSATION_ESCALATED: &str = "conversation.escalated";
    pub const CONVERSATION_RESOLVED: &str = "conversation.resolved";
    pub const CONVERSATION_REOPENED: &str = "conversation.reopened";
    pub const MESSAGE_CREATED: &str = "message.created";
    pub const CSAT_SUBMITTED: &str = "csat.submitted";
    /// Every event a webhook may subscribe to.
    pub const ALL: &[&str] = &[
        CONVERSATION_CREATED,
        CONVERSATION_ASSIGNED,
        CONVERSATION_QUEUED,
        CONVERSATION_TRANSFERRED,
        CONVERSATION_ESCALATED,
        CONVERSATION_RESOLVED,
        CONVERSATION_REOPENED,
        MESSAGE_CREATED,
        CSAT_SUBMITTED,
    ];
}

/// The webhook event for a conversation change.
pub fn hook_of(event: ConvEvent) -> Option<&'static str> {
    Some(match event {
        ConvEvent::Created => hook::CONVERSATION_CREATED,
        ConvEvent::Assigned => hook::CONVERSATION_ASSIGNED,
        ConvEvent::Queued => hook::CONVERSATION_QUEUED,
        ConvEvent::Transferred => hook::CONVERSATION_TRANSFERRED,
        ConvEvent::Escalated => hook::CONVERSATION_ESCALATED,
        ConvEvent::Resolved => hook::CONVERSATION_RESOLVED,
        ConvEvent::Reopened => hook::CONVERSATION_REOPENED,
        ConvEvent::Snoozed | ConvEvent::Joined | ConvEvent::Updated => return None,
    })
}

/// Writes one event to the outbox of every webhook of `tenant` subscribed to it, in the
/// caller's transaction. The event id (the same for every webhook) lets receivers dedupe.
pub async fn enqueue(tx: &Transaction<'_>, tenant: Uuid, event: &str, data: Value) -> Result<()> {
    enqueue_many(tx, tenant, event, &[data]).await
}

/// [`enqueue`] for several events of one kind, in one statement.
pub async fn enqueue_many(
    tx: &Transaction<'_>,
    tenant: Uuid,
    event: &str,
    data: &[Value],
) -> Result<()> {
    if data.is_empty() {
        return Ok(());
    }
    let created = now_ms();
    let (ids, payloads): (Vec<Uuid>, Vec<Value>) = data
        .iter()
        .map(|d| {
            let id = Uuid::now_v7();
            let payload = json!({"id": id, "event": event, "tenant": tenant, "created_at": created, "data": d});
            (id, payload)
        })
        .unzip();
    tx.execute(
        "INSERT INTO webhook_deliveries (tenant_id, webhook_id, event_id, event, payload)
         SELECT $1, w.id, v.id, $2, v.payload
           FROM webhooks w, unnest($3::uuid[], $4::jsonb[]) AS v(id, payload)
          WHERE w.tenant_id = $1 AND $2 = ANY(w.events)",
        &[&tenant, &event, &ids, &payloads],
    )
    .await?;
    Ok(())
}

/// The webhook payload of a conversation change.
pub fn conversation_data(c: &Change) -> Value {
    json!({
        "conversation": {
            "id": c.conv, "status": c.status, "assignee": c.assignee,
            "support_type": c.support_type,
        },
        "reason": c.reason,
    })
}

/// Writes the webhook event of a change (if it has one) in the change's transaction.
pub async fn enqueue_change(tx: &Transaction<'_>, c: &Change) -> Result<()> {
    match hook_of(c.event) {
        Some(event) => enqueue(tx, c.tenant, event, conversation_data(c)).await,
        None => Ok(()),
    }
}
