//! The life of a conversation: create, assign, transfer, escalate, hand off, resolve,
//! reopen, snooze, join, tags and CSAT.
//!
//! Each operation is one transaction that locks the conversation row first (then, through
//! `routing`, agent rows), writes the change, its assignment-history record and its
//! webhook event, and commits; only then are the wire `conv` frames published. An
//! operation that frees capacity then drains the tenant's queue ([`drain`]). Deadlocks
//! between operations that lock two agents (a transfer) are retried.

use std::future::Future;

use deadpool_postgres::Transaction;
use relaydesk_shared::token::Role;
use relaydesk_shared::wire::ConvEvent;
use serde_json::{json, Value};
use uuid::Uuid;

use crate::access::{self, Action};
use crate::db;
use crate::error::{Error, Result};
use crate::events::{self, Change};
use crate::routing::{self, Request, Strategy, Why};
use crate::AppState;

/// Who performs an operation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum By {
    /// The tenant's own backend (API key): may do everything.
    Tenant,
    Staff {
        id: Uuid,
        role: Role,
    },
    Visitor {
        id: Uuid,
    },
    /// Core-api itself (queue draining, a visitor's message reopening a conversation).
    System,
}

impl By {
    pub fn id(self) -> Option<Uuid> {
        match self {
            By::Staff { id, .. } | By::Visitor { id } => Some(id),
            By::Tenant | By::System => None,
        }
    }

    fn supervises(self) -> bool {
        match self {
            By::Tenant | By::System => true,
            By::Staff { role, .. } => role.is_supervisor(),
            By::Visitor { .. } => false,
        }
    }
}

/// A conversation row locked for an operation.
#[derive(Debug, Clone)]
pub struct Locked {
    pub id: Uuid,
    pub visitor: Uuid,
    pub assignee: Option<Uuid>,
    pub status: String,
    pub support_type: String,
    pub last_seq: i64,
    /// Resolved within its support type's reopen window.
    pub reopenable: bool,
    /// Active participants (the assignee among them).
    pub participants: Vec<Uuid>,
    /// Who had it before it was last reopened (preferred when it is routed again).
    pub previous_assignee: Option<Uuid>,
}

/// Locks a conversation of `tenant` (`FOR UPDATE`).
pub async fn lock(tx: &Transaction<'_>, tenant: Uuid, conv: Uuid) -> Result<Locked> {
    let row = tx
        .query_opt(
            "SELECT c.id, c.visitor_id, c.assignee_id, c.status, c.support_type, c.last_seq,
                    c.resolved_at IS NOT NULL
                      AND c.resolved_at + make_interval(secs => s.reopen_window_secs) > now(),
                    ARRAY(SELECT p.agent_id FROM participants p
                           WHERE p.tenant_id = c.tenant_id AND p.conversation_id = c.id
                             AND p.left_at IS NULL),
                    c.previous_assignee_id
               FROM conversations c
               JOIN support_types s ON s.tenant_id = c.tenant_id AND s.key = c.support_type
              WHERE c.tenant_id = $1 AND c.id = $2
              FOR UPDATE OF c",
            &[&tenant, &conv],
        )
        .await?
        .ok_or_else(|| Error::not_found("conversation"))?;
    Ok(Locked {
        id: row.get(0),
        visitor: row.get(1),
        assignee: row.get(2),
        status: row.get(3),
        support_type: row.get(4),
        last_seq: row.get(5),
        reopenable: row.get(6),
        participants: row.get(7),
        previous_assignee: row.get(8),
    })
}

impl Locked {
    /// What the access rule (`access`) looks at.
    fn view(&self) -> access::Conv<'_> {
        access::Conv {
            id: self.id,
            visitor: self.visitor,
            assignee: self.assignee,
            status: &self.status,
            participants: &self.participants,
            reopenable: self.reopenable,
        }
    }
}

/// Whether `by` may take `action` on the locked conversation: the one rule of `access`.
async fn may(tx: &Transaction<'_>, tenant: Uuid, c: &Locked, action: Action, by: By) -> Result<()> {
    access::check(tx, tenant, action, by, &c.view()).await
}

fn conflict(message: impl Into<String>) -> Error {
    Error::client(relaydesk_shared::ErrorCode::Conflict, message)
}

/// Operations on a live conversation refuse a resolved one.
fn not_resolved(c: &Locked) -> Result<()> {
    if c.status == "resolved" {
        return Err(conflict("the conversation is resolved; reopen it first"));
    }
    Ok(())
}

fn change(tenant: Uuid, c: &Locked, event: ConvEvent) -> Change {
    Change {
        tenant,
        conv: c.id,
        event,
        status: c.status.clone(),
        assignee: c.assignee,
        support_type: c.support_type.clone(),
        reason: None,
        head: c.last_seq.max(0) as u64,
        gained: None,
        lost: None,
        notify: Vec::new(),
    }
}

/// The change that routing `c` produced (`assigned` or `queued`).
fn routed(tenant: Uuid, c: &Locked, d: &routing::Decision, event: ConvEvent) -> Change {
    let mut ch = change(tenant, c, event);
    ch.assignee = d.assignee;
    ch.gained = d.assignee;
    match d.assignee {
        Some(_) => ch.status = "assigned".into(),
        None => {
            ch.status = "queued".into();
            if event == ConvEvent::Assigned {
                ch.event = ConvEvent::Queued;
            }
            ch.notify = d.eligible_online.clone();
        }
    }
    ch
}

/// Runs `op` (one transaction) again when PostgreSQL aborted it as a deadlock victim or
/// a serialization failure.
pub async fn retrying<T, F, Fut>(mut op: F) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T>>,
{
    let mut attempt = 0;
    loop {
        match op().await {
            Err(Error::Db(e))
                if attempt < 5
                    && e.code().is_some_and(|c| {
                        *c == tokio_postgres::error::SqlState::T_R_DEADLOCK_DETECTED
                            || *c == tokio_postgres::error::SqlState::T_R_SERIALIZATION_FAILURE
                    }) =>
            {
                attempt += 1;
            }
            other => return other,
        }
    }
}

/// A new conversation of `visitor`, routed at once (or queued).
pub struct Created {
    pub conversation: Value,
    /// `created` (subscribing the visitor), then `assigned` or `queued`.
    pub changes: Vec<Change>,
}

pub async fn create(
    state: &AppState,
    tenant: Uuid,
    visitor: Uuid,
    support_type: &str,
    subject: Option<&str>,
    priority: Option<i32>,
) -> Result<Created> {
    // Routing may wait for an agent's row (rarely a deadlock victim): try again then.
    retrying(|| create_once(state, tenant, visitor, support_type, subject, priority)).await
}

async fn create_once(
    state: &AppState,
    tenant: Uuid,
    visitor: Uuid,
    support_type: &str,
    subject: Option<&str>,
    priority: Option<i32>,
) -> Result<Created> {
    let mut client = state.pool.get().await?;
    let tx = db::tenant_tx(&mut client, tenant).await?;
    tx.query_opt(
        "SELECT 1 FROM visitors WHERE tenant_id = $1 AND id = $2",
        &[&tenant, &visitor],
    )
    .await?
    .ok_or_else(|| Error::not_found("visitor"))?;
    // The visitor's previous agent, preferred when the support type says so.
    let previous: Option<Uuid> = tx
        .query_opt(
            "SELECT assignee_id FROM conversations
              WHERE tenant_id = $1 AND visitor_id = $2 AND assignee_id IS NOT NULL
              ORDER BY created_at DESC LIMIT 1",
            &[&tenant, &visitor],
        )
        .await?
        .and_then(|r| r.get(0));
    let st = routing::support_type(&tx, tenant, support_type).await?;
    let id = Uuid::new_v4();
    let priority = priority.unwrap_or(st.priority);
    tx.execute(
        "INSERT INTO conversations (tenant_id, id, visitor_id, support_type, subject, status, priority, queued_at)
         VALUES ($1, $2, $3, $4, $5, 'queued', $6, now())",
        &[&tenant, &id, &visitor, &st.key, &subject, &priority],
    )
    .await?;
    let req = Request {
        prefer: previous,
        ..Request::default()
    };
    let d = routing::route(&tx, tenant, id, &st, &req, Why::new("routed", None, None)).await?;
    let locked = Locked {
        id,
        visitor,
        assignee: d.assignee,
        status: String::new(),
        support_type: st.key.clone(),
        last_seq: 0,
        reopenable: false,
        participants: Vec::new(),
        previous_assignee: None,
    };
    let then = routed(tenant, &locked, &d, ConvEvent::Assigned);
    let mut created = then.clone();
    created.event = ConvEvent::Created;
    created.gained = Some(visitor);
    created.notify = Vec::new();
    events::enqueue_change(&tx, &created).await?;
    events::enqueue_change(&tx, &then).await?;
    tx.commit().await?;
    let conversation = json!({
        "id": id, "status": then.status, "assignee": then.assignee, "support_type": st.key,
        "subject": subject, "visitor_id": visitor, "priority": priority, "tags": [], "last_seq": 0,
    });
    Ok(Created {
        conversation,
        changes: vec![created, then],
    })
}

/// Assigns a conversation to a chosen agent: a supervisor's decision, or an agent taking
/// a queued conversation for themself. The agent must be online with free capacity.
pub async fn assign(
    state: &AppState,
    tenant: Uuid,
    conv: Uuid,
    agent: Uuid,
    by: By,
) -> Result<Change> {
    // Supervisors (and the tenant) assign, to anyone; an agent takes a queued
    // conversation for itself.
    let self_assign = by.id() == Some(agent) && !by.supervises();
    let action = if self_assign {
        Action::Take
    } else {
        Action::Assign
    };
    let check = |c: &Locked| {
        if self_assign && c.status != "queued" {
            return Err(conflict("the conversation is not in the queue"));
        }
        Ok(())
    };
    let to = Target {
        agent,
        action: "assigned",
        reason: None,
        event: ConvEvent::Assigned,
    };
    reassign(state, tenant, conv, by, action, check, to).await
}

/// Where [`reassign`] moves a conversation, and how the move is recorded.
struct Target<'a> {
    agent: Uuid,
    action: &'a str,
    reason: Option<&'a str>,
    event: ConvEvent,
}

/// Locks the conversation, runs `check`, refuses a resolved one, moves it to the target
/// agent ([`move_to`]), commits, and publishes.
async fn reassign(
    state: &AppState,
    tenant: Uuid,
    conv: Uuid,
    by: By,
    action: Action,
    check: impl Fn(&Locked) -> Result<()>,
    to: Target<'_>,
) -> Result<Change> {
    let ch = retrying(|| async {
        let mut client = state.pool.get().await?;
        let tx = db::tenant_tx(&mut client, tenant).await?;
        let c = lock(&tx, tenant, conv).await?;
        may(&tx, tenant, &c, action, by).await?;
        check(&c)?;
        not_resolved(&c)?;
        let ch = move_to(
            &tx, tenant, &c, to.agent, by, to.action, to.reason, to.event,
        )
        .await?;
        tx.commit().await?;
        Ok(ch)
    })
    .await?;
    finish(state, tenant, ch).await
}

/// Moves the locked conversation to `agent` (manual): takes their slot, releases the
/// previous assignee's, records the decision and the webhook event.
#[allow(clippy::too_many_arguments)]
async fn move_to(
    tx: &Transaction<'_>,
    tenant: Uuid,
    c: &Locked,
    agent: Uuid,
    by: By,
    action: &str,
    reason: Option<&str>,
    event: ConvEvent,
) -> Result<Change> {
    if c.assignee == Some(agent) {
        return Err(conflict(
            "the conversation is already assigned to this agent",
        ));
    }
    let exists = tx
        .query_opt(
            "SELECT status, open_count, max_concurrent FROM agents WHERE tenant_id = $1 AND id = $2",
            &[&tenant, &agent],
        )
        .await?
        .ok_or_else(|| Error::not_found("agent"))?;
    // The one agent chosen: waits if their row is held, since only its holder's commit
    // tells whether a slot remains (routing's module docs).
    if !routing::take_slot(tx, tenant, agent).await? {
        let status: String = exists.get(0);
        return Err(conflict(if status != "online" {
            format!("the agent is {status}")
        } else {
            "the agent has no free capacity".to_owned()
        }));
    }
    let previous = c
        .assignee
        .filter(|_| c.status == "assigned" || c.status == "snoozed");
    if let Some(p) = previous {
        routing::release_slot(tx, tenant, p).await?;
        routing::leave(tx, tenant, c.id, p, action).await?;
    }
    routing::assign(tx, tenant, c.id, &c.support_type, agent, Strategy::Manual).await?;
    let considered = [routing::Considered {
        agent,
        skipped: None,
    }];
    routing::record(
        tx,
        tenant,
        c.id,
        Why::new(action, by.id(), reason),
        Some(Strategy::Manual),
        Some(agent),
        &considered,
    )
    .await?;
    let mut ch = change(tenant, c, event);
    ch.status = "assigned".into();
    ch.assignee = Some(agent);
    ch.gained = Some(agent);
    ch.lost = previous;
    ch.reason = reason.map(str::to_owned);
    if c.status == "queued" {
        // It leaves the queue: the other eligible agents' consoles drop it.
        ch.notify = routing::eligible_online(tx, tenant, &c.support_type)
            .await?
            .into_iter()
            .filter(|a| *a != agent)
            .collect();
    }
    events::enqueue_change(tx, &ch).await?;
    Ok(ch)
}

/// Transfers an assigned conversation to another agent.
pub async fn transfer(
    state: &AppState,
    tenant: Uuid,
    conv: Uuid,
    agent: Uuid,
    reason: Option<&str>,
    by: By,
) -> Result<Change> {
    let to = Target {
        agent,
        action: "transferred",
        reason,
        event: ConvEvent::Transferred,
    };
    reassign(
        state,
        tenant,
        conv,
        by,
        Action::Transfer,
        |_: &Locked| Ok(()),
        to,
    )
    .await
}

/// Releases the locked conversation's assignee (if it holds a slot) and marks them as
/// having left with `why`.
async fn release(
    tx: &Transaction<'_>,
    tenant: Uuid,
    c: &Locked,
    why: &str,
) -> Result<Option<Uuid>> {
    let holder = c
        .assignee
        .filter(|_| c.status == "assigned" || c.status == "snoozed");
    if let Some(a) = holder {
        routing::release_slot(tx, tenant, a).await?;
        routing::leave(tx, tenant, c.id, a, why).await?;
    }
    Ok(holder)
}

/// Escalates to another support type (by default the current one's escalation target):
/// the conversation leaves its assignee and is routed there.
pub async fn escalate(
    state: &AppState,
    tenant: Uuid,
    conv: Uuid,
    to: Option<&str>,
    reason: &str,
    by: By,
) -> Result<Change> {
    let ch = retrying(|| async {
        let mut client = state.pool.get().await?;
        let tx = db::tenant_tx(&mut client, tenant).await?;
        let c = lock(&tx, tenant, conv).await?;
        may(&tx, tenant, &c, Action::Escalate, by).await?;
        not_resolved(&c)?;
        let current = routing::support_type(&tx, tenant, &c.support_type).await?;
        let target_key = match to {
            Some(t) => t.to_owned(),
            None => current.escalation_target.clone().ok_or_else(|| {
                Error::bad_request(
                    "support_type is required: this support type has no escalation target",
                )
            })?,
        };
        let target = routing::support_type(&tx, tenant, &target_key).await?;
        let lost = release(&tx, tenant, &c, "escalated").await?;
        let priority = target.priority.max(current.priority);
        tx.execute(
            "UPDATE conversations SET support_type = $3, priority = greatest(priority, $4),
                    queued_at = now(), status = 'queued', assignee_id = NULL
              WHERE tenant_id = $1 AND id = $2",
            &[&tenant, &conv, &target.key, &priority],
        )
        .await?;
        let req = Request {
            exclude: lost.into_iter().collect(),
            humans_only: true,
            ..Request::default()
        };
        let d = routing::route(
            &tx,
            tenant,
            conv,
            &target,
            &req,
            Why::new("escalated", by.id(), Some(reason)),
        )
        .await?;
        let mut moved = c.clone();
        moved.support_type = target.key.clone();
        let mut ch = routed(tenant, &moved, &d, ConvEvent::Escalated);
        ch.event = ConvEvent::Escalated;
        ch.lost = lost.filter(|l| Some(*l) != d.assignee);
        ch.reason = Some(reason.to_owned());
        events::enqueue_change(&tx, &ch).await?;
        tx.commit().await?;
        Ok(ch)
    })
    .await?;
    finish(state, tenant, ch).await
}

/// A bot hands its conversation to humans: routed among the support type's human agents
/// (or queued). From then on the bot's sends to it are refused (`forbidden`).
pub async fn handoff(
    state: &AppState,
    tenant: Uuid,
    conv: Uuid,
    reason: Option<&str>,
    by: By,
) -> Result<Change> {
    let ch = retrying(|| async {
        let mut client = state.pool.get().await?;
        let tx = db::tenant_tx(&mut client, tenant).await?;
        let c = lock(&tx, tenant, conv).await?;
        may(&tx, tenant, &c, Action::Handoff, by).await?;
        let holder = c
            .assignee
            .filter(|_| c.status == "assigned")
            .ok_or_else(|| conflict("only an assigned conversation is handed off"))?;
        let req = Request {
            exclude: vec![holder],
            humans_only: true,
            ..Request::default()
        };
        let why = Why::new("handoff", Some(holder), reason);
        let ch = reroute(&tx, tenant, &c, holder, &req, why).await?;
        tx.commit().await?;
        Ok(ch)
    })
    .await?;
    finish(state, tenant, ch).await
}

/// Takes the locked, assigned conversation from `holder` and routes it again (to another
/// eligible agent, or the queue), recording `why`: a handoff, a deactivation. Inside
/// the caller's transaction; returns the change to publish.
async fn reroute(
    tx: &Transaction<'_>,
    tenant: Uuid,
    c: &Locked,
    holder: Uuid,
    req: &Request,
    why: Why<'_>,
) -> Result<Change> {
    let st = routing::support_type(tx, tenant, &c.support_type).await?;
    routing::release_slot(tx, tenant, holder).await?;
    routing::leave(tx, tenant, c.id, holder, why.action).await?;
    tx.execute(
        "UPDATE conversations SET status = 'queued', assignee_id = NULL, queued_at = now()
          WHERE tenant_id = $1 AND id = $2",
        &[&tenant, &c.id],
    )
    .await?;
    let reason = why.reason.unwrap_or(why.action).to_owned();
    let d = routing::route(tx, tenant, c.id, &st, req, why).await?;
    let mut ch = routed(tenant, c, &d, ConvEvent::Assigned);
    ch.lost = Some(holder);
    ch.reason = Some(reason);
    events::enqueue_change(tx, &ch).await?;
    Ok(ch)
}

/// Takes every conversation assigned to `agent` away from it, inside the caller's
/// transaction (a deactivation): each is locked, released and routed again among the
/// other eligible agents, or queued, as a handoff is (the events go out as for one,
/// once the caller publishes the changes with [`settle_committed`]). Conversations are
/// locked before the agent's row, the one lock order, so call it before changing the
/// agent; snoozed ones keep their assignee until they wake.
pub async fn release_agent(
    tx: &Transaction<'_>,
    tenant: Uuid,
    agent: Uuid,
    by: By,
) -> Result<Vec<Change>> {
    let held: Vec<Uuid> = tx
        .query(
            "SELECT id FROM conversations
              WHERE tenant_id = $1 AND assignee_id = $2 AND status = 'assigned' ORDER BY id",
            &[&tenant, &agent],
        )
        .await?
        .iter()
        .map(|r| r.get(0))
        .collect();
    let mut changes = Vec::with_capacity(held.len());
    for conv in held {
        let c = lock(tx, tenant, conv).await?;
        if c.assignee != Some(agent) || c.status != "assigned" {
            continue;
        }
        let req = Request {
            exclude: vec![agent],
            ..Request::default()
        };
        let why = Why::new("deactivated", by.id(), None);
        changes.push(reroute(tx, tenant, &c, agent, &req, why).await?);
    }
    Ok(changes)
}

/// Publishes changes that a caller's transaction committed (see [`release_agent`]) and
/// drains the queue if they freed capacity.
pub async fn settle_committed(state: &AppState, tenant: Uuid, changes: &[Change]) {
    settle(state, tenant, changes).await;
}

/// Resolves with one of the support type's resolution reasons; frees the assignee's slot.
pub async fn resolve(
    state: &AppState,
    tenant: Uuid,
    conv: Uuid,
    reason: &str,
    by: By,
) -> Result<Change> {
    let ch = retrying(|| async {
        let mut client = state.pool.get().await?;
        let tx = db::tenant_tx(&mut client, tenant).await?;
        let c = lock(&tx, tenant, conv).await?;
        may(&tx, tenant, &c, Action::Resolve, by).await?;
        if c.status == "resolved" {
            return Err(conflict("the conversation is already resolved",
            ));
        }
        let st = routing::support_type(&tx, tenant, &c.support_type).await?;
        if !st.resolution_reasons.iter().any(|r| r == reason) {
            return Err(Error::bad_request(format!(
                "reason must be one of: {}",
                st.resolution_reasons.join(", ")
            )));
        }
        if let Some(a) = c.assignee.filter(|_| c.status == "assigned" || c.status == "snoozed") {
            routing::release_slot(&tx, tenant, a).await?;
        }
        tx.execute(
            "UPDATE conversations SET status = 'resolved', resolution_reason = $3, resolved_at = now(),
                    queued_at = NULL, snoozed_until = NULL, updated_at = now()
              WHERE tenant_id = $1 AND id = $2",
            &[&tenant, &conv, &reason],
        )
        .await?;
        routing::record(&tx, tenant, conv, Why::new("resolved", by.id(), Some(reason)), None, c.assignee, &[])
            .await?;
        let mut ch = change(tenant, &c, ConvEvent::Resolved);
        ch.status = "resolved".into();
        ch.reason = Some(reason.to_owned());
        events::enqueue_change(&tx, &ch).await?;
        tx.commit().await?;
        Ok(ch)
    })
    .await?;
    finish(state, tenant, ch).await
}

/// Reopens a resolved conversation (or wakes a snoozed one), preferring the agent who
/// had it. Who may: `access` (supervisors any, agents one they took part in, the
/// visitor its own within the support type's reopen window, as its message does, see
/// `store::commit_sends`).
pub async fn reopen(state: &AppState, tenant: Uuid, conv: Uuid, by: By) -> Result<Change> {
    let ch = retrying(|| async {
        let mut client = state.pool.get().await?;
        let tx = db::tenant_tx(&mut client, tenant).await?;
        let c = lock(&tx, tenant, conv).await?;
        may(&tx, tenant, &c, Action::Reopen, by).await?;
        let ch = reopen_locked(&tx, tenant, &c, by).await?;
        tx.commit().await?;
        Ok(ch)
    })
    .await?;
    let ch = ch.ok_or_else(|| conflict("the conversation is neither resolved nor snoozed"))?;
    finish(state, tenant, ch).await
}

/// Reopens (resolved) or wakes (snoozed) the locked conversation; `None` when it is
/// neither.
async fn reopen_locked(
    tx: &Transaction<'_>,
    tenant: Uuid,
    c: &Locked,
    by: By,
) -> Result<Option<Change>> {
    match c.status.as_str() {
        "snoozed" => {
            let status = if c.assignee.is_some() {
                "assigned"
            } else {
                "queued"
            };
            tx.execute(
                "UPDATE conversations SET status = $3, snoozed_until = NULL, updated_at = now(),
                        queued_at = CASE WHEN $3 = 'queued' THEN now() END
                  WHERE tenant_id = $1 AND id = $2",
                &[&tenant, &c.id, &status],
            )
            .await?;
            let mut ch = change(tenant, c, ConvEvent::Reopened);
            ch.status = status.into();
            if c.assignee.is_none() {
                let st = routing::support_type(tx, tenant, &c.support_type).await?;
                let d = routing::route(
                    tx,
                    tenant,
                    c.id,
                    &st,
                    &Request::default(),
                    Why::new("reopened", by.id(), None),
                )
                .await?;
                ch = routed(tenant, c, &d, ConvEvent::Reopened);
                ch.event = ConvEvent::Reopened;
            }
            events::enqueue_change(tx, &ch).await?;
            Ok(Some(ch))
        }
        "resolved" => {
            let st = routing::support_type(tx, tenant, &c.support_type).await?;
            tx.execute(
                "UPDATE conversations SET status = 'queued', queued_at = now(), resolved_at = NULL,
                        resolution_reason = NULL, previous_assignee_id = assignee_id,
                        assignee_id = NULL, updated_at = now()
                  WHERE tenant_id = $1 AND id = $2",
                &[&tenant, &c.id],
            )
            .await?;
            let req = Request {
                prefer: c.assignee,
                ..Request::default()
            };
            let d = routing::route(
                tx,
                tenant,
                c.id,
                &st,
                &req,
                Why::new("reopened", by.id(), None),
            )
            .await?;
            let mut ch = routed(tenant, c, &d, ConvEvent::Reopened);
            ch.event = ConvEvent::Reopened;
            events::enqueue_change(tx, &ch).await?;
            Ok(Some(ch))
        }
        _ => Ok(None),
    }
}

/// A visitor wrote to a resolved (within the window) or snoozed conversation: reopen it.
pub async fn wake(state: &AppState, tenant: Uuid, conv: Uuid, visitor: Uuid) -> Result<()> {
    let ch = retrying(|| async {
        let mut client = state.pool.get().await?;
        let tx = db::tenant_tx(&mut client, tenant).await?;
        let c = lock(&tx, tenant, conv).await?;
        if c.status == "resolved" && !c.reopenable {
            return Ok(None);
        }
        let ch = reopen_locked(&tx, tenant, &c, By::Visitor { id: visitor }).await?;
        tx.commit().await?;
        Ok(ch)
    })
    .await?;
    if let Some(ch) = ch {
        settle(state, tenant, &[ch]).await;
    }
    Ok(())
}

/// Wakes a conversation snoozed until a time that has come (the sweep's timer); one
/// woken meanwhile, or snoozed again without a time, is left as it is.
pub async fn wake_due(state: &AppState, tenant: Uuid, conv: Uuid) -> Result<()> {
    let ch = retrying(|| async {
        let mut client = state.pool.get().await?;
        let tx = db::tenant_tx(&mut client, tenant).await?;
        let c = lock(&tx, tenant, conv).await?;
        let due: bool = tx
            .query_one(
                "SELECT coalesce(snoozed_until <= now(), false) FROM conversations
                  WHERE tenant_id = $1 AND id = $2",
                &[&tenant, &conv],
            )
            .await?
            .get(0);
        if c.status != "snoozed" || !due {
            return Ok(None);
        }
        let ch = reopen_locked(&tx, tenant, &c, By::System).await?;
        tx.commit().await?;
        Ok(ch)
    })
    .await?;
    if let Some(ch) = ch {
        settle(state, tenant, &[ch]).await;
    }
    Ok(())
}

/// Snoozes an assigned conversation until the visitor writes again (the assignee keeps it).
pub async fn snooze(
    state: &AppState,
    tenant: Uuid,
    conv: Uuid,
    until_ms: Option<i64>,
    by: By,
) -> Result<Change> {
    let mut client = state.pool.get().await?;
    let tx = db::tenant_tx(&mut client, tenant).await?;
    let c = lock(&tx, tenant, conv).await?;
    may(&tx, tenant, &c, Action::Snooze, by).await?;
    if until_ms.is_some_and(|u| u <= crate::fanout::now_ms() as i64) {
        return Err(Error::bad_request("until must be in the future"));
    }
    if c.status != "assigned" {
        return Err(conflict("only assigned conversations can be snoozed"));
    }
    tx.execute(
        "UPDATE conversations SET status = 'snoozed', updated_at = now(),
                snoozed_until = to_timestamp($3::float8 / 1000)
          WHERE tenant_id = $1 AND id = $2",
        &[&tenant, &conv, &until_ms.map(|m| m as f64)],
    )
    .await?;
    routing::record(
        &tx,
        tenant,
        conv,
        Why::new("snoozed", by.id(), None),
        None,
        c.assignee,
        &[],
    )
    .await?;
    let mut ch = change(tenant, &c, ConvEvent::Snoozed);
    ch.status = "snoozed".into();
    tx.commit().await?;
    drop(client);
    if let Some(until) = until_ms {
        // The sweep wakes it then; a visitor's message wakes it earlier.
        crate::presence::wake_at(state, tenant, conv, until.max(0) as u64).await?;
    }
    events::publish(state, std::slice::from_ref(&ch)).await;
    Ok(ch)
}

/// A supervisor (or an agent asked in) joins as a participant without taking it over.
pub async fn join(
    state: &AppState,
    tenant: Uuid,
    conv: Uuid,
    agent: Uuid,
    by: By,
) -> Result<Change> {
    let mut client = state.pool.get().await?;
    let tx = db::tenant_tx(&mut client, tenant).await?;
    let c = lock(&tx, tenant, conv).await?;
    may(&tx, tenant, &c, Action::Join, by).await?;
    tx.query_opt(
        "SELECT 1 FROM agents WHERE tenant_id = $1 AND id = $2",
        &[&tenant, &agent],
    )
    .await?
    .ok_or_else(|| Error::not_found("agent"))?;
    tx.execute(
        "INSERT INTO participants (tenant_id, conversation_id, agent_id) VALUES ($1, $2, $3)
         ON CONFLICT (tenant_id, conversation_id, agent_id) DO UPDATE SET left_at = NULL, left_reason = NULL",
        &[&tenant, &conv, &agent],
    )
    .await?;
    routing::record(
        &tx,
        tenant,
        conv,
        Why::new("joined", by.id(), None),
        None,
        Some(agent),
        &[],
    )
    .await?;
    let mut ch = change(tenant, &c, ConvEvent::Joined);
    ch.gained = Some(agent);
    tx.commit().await?;
    drop(client);
    events::publish(state, std::slice::from_ref(&ch)).await;
    Ok(ch)
}

/// Adds and removes tags.
pub async fn tag(
    state: &AppState,
    tenant: Uuid,
    conv: Uuid,
    add: &[String],
    remove: &[String],
    by: By,
) -> Result<Vec<String>> {
    if add
        .iter()
        .chain(remove)
        .any(|t| t.trim().is_empty() || t.chars().count() > 64)
    {
        return Err(Error::bad_request("tags must be 1-64 characters"));
    }
    let mut client = state.pool.get().await?;
    let tx = db::tenant_tx(&mut client, tenant).await?;
    let c = lock(&tx, tenant, conv).await?;
    may(&tx, tenant, &c, Action::Tag, by).await?;
    let tags: Vec<String> = tx
        .query_one(
            "UPDATE conversations SET updated_at = now(), tags = ARRAY(
                 SELECT DISTINCT t FROM unnest(tags || $3::text[]) AS t WHERE t <> ALL($4::text[]) ORDER BY t)
              WHERE tenant_id = $1 AND id = $2 RETURNING tags",
            &[&tenant, &conv, &add, &remove],
        )
        .await?
        .get(0);
    if tags.len() > 100 {
        // What the conversation already holds decides: a conflict, not a bad request.
        return Err(conflict("a conversation holds at most 100 tags"));
    }
    tx.commit().await?;
    drop(client);
    let mut ch = change(tenant, &c, ConvEvent::Updated);
    ch.reason = Some("tags".into());
    events::publish(state, std::slice::from_ref(&ch)).await;
    Ok(tags)
}

/// The visitor's rating of a resolved conversation (once; a second rating replaces it).
pub async fn csat(
    state: &AppState,
    tenant: Uuid,
    conv: Uuid,
    score: i32,
    comment: Option<&str>,
    by: By,
) -> Result<()> {
    if !(1..=5).contains(&score) {
        return Err(Error::bad_request("score must be 1-5"));
    }
    if comment.is_some_and(|c| c.len() > 2000) {
        return Err(Error::bad_request(
            "comment must be at most 2000 characters",
        ));
    }
    let mut client = state.pool.get().await?;
    let tx = db::tenant_tx(&mut client, tenant).await?;
    let c = lock(&tx, tenant, conv).await?;
    may(&tx, tenant, &c, Action::Csat, by).await?;
    if c.status != "resolved" {
        return Err(conflict("only resolved conversations are rated"));
    }
    tx.execute(
        "UPDATE conversations SET csat_score = $3, csat_comment = $4, csat_at = now()
          WHERE tenant_id = $1 AND id = $2",
        &[&tenant, &conv, &score, &comment],
    )
    .await?;
    events::enqueue(
        &tx,
        tenant,
        events::hook::CSAT_SUBMITTED,
        json!({"conversation": {"id": conv, "assignee": c.assignee, "support_type": c.support_type},
               "score": score, "comment": comment}),
    )
    .await?;
    tx.commit().await?;
    metrics::histogram!("relaydesk_core_csat_score").record(score as f64);
    Ok(())
}

/// Publishes committed changes, then drains the tenant's queue if one of them may have
/// freed capacity.
async fn settle(state: &AppState, tenant: Uuid, changes: &[Change]) {
    events::publish(state, changes).await;
    let frees = changes
        .iter()
        .any(|c| c.lost.is_some() || matches!(c.event, ConvEvent::Resolved | ConvEvent::Escalated));
    if frees {
        capacity_changed(state, tenant).await;
    }
}

/// [`settle`] for an operation's own change, which it returns.
async fn finish(state: &AppState, tenant: Uuid, change: Change) -> Result<Change> {
    settle(state, tenant, std::slice::from_ref(&change)).await;
    Ok(change)
}

/// Most queued conversations looked at per drain.
const DRAIN_SCAN: i64 = 200;

/// Assigns queued conversations of `tenant` while agents are free: highest priority
/// first, then the longest waiting. One short transaction per conversation; a support
/// type with nobody free is skipped for the rest of the pass. Returns how many were
/// assigned.
pub async fn drain(state: &AppState, tenant: Uuid) -> Result<usize> {
    let queued: Vec<(Uuid, String)> = {
        let mut client = state.pool.get().await?;
        let tx = db::tenant_tx(&mut client, tenant).await?;
        let rows = tx
            .query(
                "SELECT id, support_type FROM conversations
                  WHERE tenant_id = $1 AND status = 'queued'
                  ORDER BY priority DESC, queued_at, id LIMIT $2",
                &[&tenant, &DRAIN_SCAN],
            )
            .await?;
        tx.commit().await?;
        rows.iter().map(|r| (r.get(0), r.get(1))).collect()
    };
    let mut full: std::collections::HashSet<String> = std::collections::HashSet::new();
    let mut assigned = 0;
    for (conv, st_key) in queued {
        if full.contains(&st_key) {
            continue;
        }
        let mut client = state.pool.get().await?;
        let tx = db::tenant_tx(&mut client, tenant).await?;
        // Skip a conversation another process is routing right now.
        let Some(row) = tx
            .query_opt(
                "SELECT 1 FROM conversations WHERE tenant_id = $1 AND id = $2 AND status = 'queued'
                  FOR UPDATE SKIP LOCKED",
                &[&tenant, &conv],
            )
            .await?
        else {
            continue;
        };
        drop(row);
        let c = lock(&tx, tenant, conv).await?;
        let st = routing::support_type(&tx, tenant, &c.support_type).await?;
        let req = Request {
            prefer: c.previous_assignee,
            humans_only: true,
            ..Request::default()
        };
        let d = routing::decide(&tx, tenant, &st, &req).await?;
        let Some(agent) = d.assignee else {
            full.insert(st_key);
            tx.rollback().await?;
            continue;
        };
        routing::assign(&tx, tenant, conv, &st.key, agent, d.strategy).await?;
        routing::record(
            &tx,
            tenant,
            conv,
            Why::new("dequeued", None, None),
            Some(d.strategy),
            Some(agent),
            &d.candidates,
        )
        .await?;
        let mut ch = routed(tenant, &c, &d, ConvEvent::Assigned);
        ch.notify = d
            .eligible_online
            .into_iter()
            .filter(|a| *a != agent)
            .collect();
        events::enqueue_change(&tx, &ch).await?;
        tx.commit().await?;
        drop(client);
        events::publish(state, std::slice::from_ref(&ch)).await;
        assigned += 1;
    }
    Ok(assigned)
}

/// Drains the tenant's queue after capacity may have appeared (an agent came online,
/// capacity or eligibility changed, a conversation was released); a failure is logged
/// and left to the sweep, which drains every tenant with a queue.
pub async fn capacity_changed(state: &AppState, tenant: Uuid) {
    if let Err(e) = drain(state, tenant).await {
        tracing::warn!(error = %e, %tenant, "queue drain failed; the next sweep retries");
    }
}
