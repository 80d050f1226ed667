//! Routing: which agent takes a conversation, decided race-free in PostgreSQL.
//!
//! # Why it is race-free
//! An agent's load is `agents.open_count` (conversations assigned or snoozed to them).
//! A conversation is given to an agent only by the conditional update
//! `UPDATE agents SET open_count = open_count + 1 WHERE … AND status = 'online' AND
//! open_count < max_concurrent`, which PostgreSQL re-evaluates under the row lock: of
//! two routers (in one process or several) racing for the last free slot, exactly one
//! matches and the other moves on to its next candidate. Every release of a slot
//! (resolve, transfer, handoff) decrements in the transaction that changes the
//! conversation, so the count never drifts from the rows. A conversation is routed only
//! while its own row is locked (`FOR UPDATE`) and queued, so it is never assigned twice.
//!
//! # Strategies (per support type)
//! - `round_robin`: eligible online agents with free capacity, longest since their last
//!   assignment first;
//! - `capacity`: fewest open conversations first, ties to the longest idle;
//! - the visitor's previous agent first when the support type prefers it (`preferred`);
//! - a support type's bot, when it has one, takes new conversations first (`bot`).
//!
//! Nobody free: the conversation waits in the tenant's queue, ordered by priority, then
//! by how long it has waited. [`drain`] assigns queued conversations, oldest first, when
//! capacity frees up. Every decision is written to `assignments` with each candidate
//! considered and why it was skipped.

use std::collections::HashSet;

use deadpool_postgres::Transaction;
use serde::Serialize;
use serde_json::json;
use uuid::Uuid;

use crate::error::{Error, Result};

/// How an assignee was chosen (the `strategy` label of `relaydesk_core_assignments_total`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Strategy {
    RoundRobin,
    Capacity,
    Preferred,
    Bot,
    /// Chosen by a person: assign, transfer.
    Manual,
}

impl Strategy {
    pub fn as_str(self) -> &'static str {
        match self {
            Strategy::RoundRobin => "round_robin",
            Strategy::Capacity => "capacity",
            Strategy::Preferred => "preferred",
            Strategy::Bot => "bot",
            Strategy::Manual => "manual",
        }
    }

    pub fn parse(s: &str) -> Option<Strategy> {
        match s {
            "round_robin" => Some(Strategy::RoundRobin),
            "capacity" => Some(Strategy::Capacity),
            _ => None,
        }
    }
}

/// A support type's routing settings.
#[derive(Debug, Clone)]
pub struct SupportType {
    pub key: String,
    pub routing: Strategy,
    pub prefer_previous_agent: bool,
    pub bot: Option<Uuid>,
    pub priority: i32,
    pub reopen_window_secs: i32,
    pub escalation_target: Option<String>,
    pub resolution_reasons: Vec<String>,
}

/// Reads a support type of `tenant`.
pub async fn support_type(tx: &Transaction<'_>, tenant: Uuid, key: &str) -> Result<SupportType> {
    let row = tx
        .query_opt(
            "SELECT key, routing, prefer_previous_agent, bot_id, priority, reopen_window_secs,
                    escalation_target, resolution_reasons
               FROM support_types WHERE tenant_id = $1 AND key = $2",
            &[&tenant, &key],
        )
        .await?
        .ok_or_else(|| Error::not_found("support type"))?;
    Ok(SupportType {
        key: row.get(0),
        routing: Strategy::parse(row.get(1)).unwrap_or(Strategy::Capacity),
        prefer_previous_agent: row.get(2),
        bot: row.get(3),
        priority: row.get(4),
        reopen_window_secs: row.get(5),
        escalation_target: row.get(6),
        resolution_reasons: row.get(7),
    })
}

/// One candidate considered, and why it was passed over (`None`: it was chosen).
#[derive(Debug, Clone, Serialize)]
pub struct Considered {
    pub agent: Uuid,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub skipped: Option<&'static str>,
}

/// The outcome of routing one conversation.
#[derive(Debug, Clone)]
pub struct Decision {
    pub assignee: Option<Uuid>,
    pub strategy: Strategy,
    pub candidates: Vec<Considered>,
    /// Eligible agents who are online: they hear about the queue.
    pub eligible_online: Vec<Uuid>,
}

/// What to route and with which preferences.
#[derive(Debug, Clone, Default)]
pub struct Request {
    /// Tried first if eligible, online and free (the visitor's previous agent).
    pub prefer: Option<Uuid>,
    /// Never chosen (the agent a conversation is being transferred away from).
    pub exclude: Vec<Uuid>,
    /// Skip the support type's bot (after a handoff).
    pub humans_only: bool,
}

struct Row {
    id: Uuid,
    status: String,
    open: i32,
    max: i32,
}

/// The eligible humans of a support type in the strategy's order: its listed agents and
/// members of its listed teams, or every human agent when it lists neither.
async fn eligible(tx: &Transaction<'_>, tenant: Uuid, st: &SupportType) -> Result<Vec<Row>> {
    let order = match st.routing {
        Strategy::RoundRobin => "a.last_assigned_at NULLS FIRST, a.id",
        _ => "a.open_count, a.last_assigned_at NULLS FIRST, a.id",
    };
    let sql = format!(
        "WITH listed AS (
             SELECT agent_id FROM support_type_agents WHERE tenant_id = $1 AND support_type = $2
             UNION
             SELECT m.agent_id FROM team_members m
               JOIN support_type_teams t ON t.tenant_id = m.tenant_id AND t.team_id = m.team_id
              WHERE t.tenant_id = $1 AND t.support_type = $2)
         SELECT a.id, a.status, a.open_count, a.max_concurrent
           FROM agents a
          WHERE a.tenant_id = $1 AND a.kind = 'human'
            AND (NOT EXISTS (SELECT 1 FROM listed) OR a.id IN (SELECT agent_id FROM listed))
          ORDER BY {order}"
    );
    Ok(tx
        .query(&sql, &[&tenant, &st.key])
        .await?
        .iter()
        .map(|r| Row {
            id: r.get(0),
            status: r.get(1),
            open: r.get(2),
            max: r.get(3),
        })
        .collect())
}

/// The eligible agents of support type `key` who are online (they hear about its queue).
pub async fn eligible_online(tx: &Transaction<'_>, tenant: Uuid, key: &str) -> Result<Vec<Uuid>> {
    let st = support_type(tx, tenant, key).await?;
    Ok(eligible(tx, tenant, &st)
        .await?
        .into_iter()
        .filter(|r| r.status == "online")
        .map(|r| r.id)
        .collect())
}

/// Takes one slot of `agent` if it is online with free capacity (the race-free step).
async fn take_slot(tx: &Transaction<'_>, tenant: Uuid, agent: Uuid) -> Result<bool> {
    Ok(tx
        .execute(
            "UPDATE agents SET open_count = open_count + 1, last_assigned_at = clock_timestamp()
              WHERE tenant_id = $1 AND id = $2 AND status = 'online' AND open_count < max_concurrent",
            &[&tenant, &agent],
        )
        .await?
        == 1)
}

/// Gives back a slot of `agent` (its conversation was resolved or moved away).
pub async fn release_slot(tx: &Transaction<'_>, tenant: Uuid, agent: Uuid) -> Result<()> {
    tx.execute(
        "UPDATE agents SET open_count = greatest(open_count - 1, 0) WHERE tenant_id = $1 AND id = $2",
        &[&tenant, &agent],
    )
    .await?;
    Ok(())
}

/// Chooses an assignee and takes its slot; `assignee: None` means nobody is free.
pub async fn decide(
    tx: &Transaction<'_>,
    tenant: Uuid,
    st: &SupportType,
    req: &Request,
) -> Result<Decision> {
    let mut candidates = Vec::new();
    if let Some(bot) = st
        .bot
        .filter(|b| !req.humans_only && !req.exclude.contains(b))
    {
        if take_slot(tx, tenant, bot).await? {
            candidates.push(Considered {
                agent: bot,
                skipped: None,
            });
            return Ok(Decision {
                assignee: Some(bot),
                strategy: Strategy::Bot,
                candidates,
                eligible_online: Vec::new(),
            });
        }
        candidates.push(Considered {
            agent: bot,
            skipped: Some("bot_unavailable"),
        });
    }
    let mut rows = eligible(tx, tenant, st).await?;
    let eligible_online: Vec<Uuid> = rows
        .iter()
        .filter(|r| r.status == "online")
        .map(|r| r.id)
        .collect();
    let mut preferred = None;
    if let Some(p) = req.prefer.filter(|_| st.prefer_previous_agent) {
        if let Some(i) = rows.iter().position(|r| r.id == p) {
            let row = rows.remove(i);
            rows.insert(0, row);
            preferred = Some(p);
        }
    }
    let mut assignee = None;
    let mut tried: HashSet<Uuid> = HashSet::new();
    for r in &rows {
        if assignee.is_some() {
            candidates.push(Considered {
                agent: r.id,
                skipped: Some("not_reached"),
            });
            continue;
        }
        let skipped = if req.exclude.contains(&r.id) {
            Some("excluded")
        } else if r.status != "online" {
            Some(if r.status == "away" {
                "away"
            } else {
                "offline"
            })
        } else if r.open >= r.max {
            Some("at_capacity")
        } else if !tried.insert(r.id) {
            Some("duplicate")
        } else if take_slot(tx, tenant, r.id).await? {
            assignee = Some(r.id);
            None
        } else {
            // Another router took the last slot, or the agent went away meanwhile.
            Some("lost_race")
        };
        candidates.push(Considered {
            agent: r.id,
            skipped,
        });
    }
    let strategy = match (assignee, preferred) {
        (Some(a), Some(p)) if a == p => Strategy::Preferred,
        _ => st.routing,
    };
    Ok(Decision {
        assignee,
        strategy,
        candidates,
        eligible_online,
    })
}

/// Why a history record is written: the action, who did it, and their reason.
#[derive(Debug, Clone, Copy)]
pub struct Why<'a> {
    /// routed, queued, dequeued, assigned, transferred, escalated, handoff, reopened,
    /// resolved, snoozed, joined.
    pub action: &'a str,
    pub actor: Option<Uuid>,
    pub reason: Option<&'a str>,
}

impl<'a> Why<'a> {
    pub fn new(action: &'a str, actor: Option<Uuid>, reason: Option<&'a str>) -> Self {
        Why {
            action,
            actor,
            reason,
        }
    }
}

/// Records a decision or a manual change in the conversation's assignment history.
pub async fn record(
    tx: &Transaction<'_>,
    tenant: Uuid,
    conv: Uuid,
    why: Why<'_>,
    strategy: Option<Strategy>,
    agent: Option<Uuid>,
    candidates: &[Considered],
) -> Result<()> {
    tx.execute(
        "INSERT INTO assignments (tenant_id, conversation_id, id, action, strategy, agent_id, actor_id, reason, candidates)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
        &[
            &tenant,
            &conv,
            &Uuid::now_v7(),
            &why.action,
            &strategy.map(Strategy::as_str),
            &agent,
            &why.actor,
            &why.reason,
            &json!(candidates),
        ],
    )
    .await?;
    Ok(())
}

/// Makes `agent` the assignee of the (locked) conversation and an active participant.
/// Returns how long it had waited in the queue, if it was queued.
pub async fn set_assignee(
    tx: &Transaction<'_>,
    tenant: Uuid,
    conv: Uuid,
    agent: Uuid,
) -> Result<Option<f64>> {
    let row = tx
        .query_one(
            "UPDATE conversations c
                SET status = 'assigned', assignee_id = $3, queued_at = NULL, snoozed_until = NULL,
                    updated_at = now()
               FROM (SELECT queued_at FROM conversations WHERE tenant_id = $1 AND id = $2) o
              WHERE c.tenant_id = $1 AND c.id = $2
          RETURNING extract(epoch FROM clock_timestamp() - o.queued_at)::float8",
            &[&tenant, &conv, &agent],
        )
        .await?;
    tx.execute(
        "INSERT INTO participants (tenant_id, conversation_id, agent_id) VALUES ($1, $2, $3)
         ON CONFLICT (tenant_id, conversation_id, agent_id)
         DO UPDATE SET left_at = NULL, left_reason = NULL, joined_at = now()",
        &[&tenant, &conv, &agent],
    )
    .await?;
    Ok(row.get(0))
}

/// Makes `agent` (whose slot is taken) the assignee of the locked conversation of
/// `support_type`, and counts the assignment and any time it waited in the queue.
pub async fn assign(
    tx: &Transaction<'_>,
    tenant: Uuid,
    conv: Uuid,
    support_type: &str,
    agent: Uuid,
    strategy: Strategy,
) -> Result<()> {
    let waited = set_assignee(tx, tenant, conv, agent).await?;
    metrics::counter!("relaydesk_core_assignments_total", "strategy" => strategy.as_str())
        .increment(1);
    if let Some(w) = waited {
        metrics::histogram!("relaydesk_core_queue_wait_seconds", "support_type" => support_type.to_owned())
            .record(w.max(0.0));
    }
    Ok(())
}

/// Puts the (locked) conversation in the queue, keeping its place if it was there.
pub async fn set_queued(tx: &Transaction<'_>, tenant: Uuid, conv: Uuid) -> Result<()> {
    tx.execute(
        "UPDATE conversations SET status = 'queued', assignee_id = NULL,
                queued_at = coalesce(queued_at, now()), updated_at = now()
          WHERE tenant_id = $1 AND id = $2",
        &[&tenant, &conv],
    )
    .await?;
    Ok(())
}

/// Marks `agent` as having left the conversation (transferred away, handed off).
pub async fn leave(
    tx: &Transaction<'_>,
    tenant: Uuid,
    conv: Uuid,
    agent: Uuid,
    reason: &str,
) -> Result<()> {
    tx.execute(
        "UPDATE participants SET left_at = now(), left_reason = $4
          WHERE tenant_id = $1 AND conversation_id = $2 AND agent_id = $3 AND left_at IS NULL",
        &[&tenant, &conv, &agent, &reason],
    )
    .await?;
    Ok(())
}

/// Routes a locked conversation: assigns it or queues it, records the decision (as
/// `why.action` when assigned, `queued` otherwise), and counts it in the routing metrics.
pub async fn route(
    tx: &Transaction<'_>,
    tenant: Uuid,
    conv: Uuid,
    st: &SupportType,
    req: &Request,
    why: Why<'_>,
) -> Result<Decision> {
    let decision = decide(tx, tenant, st, req).await?;
    match decision.assignee {
        Some(agent) => assign(tx, tenant, conv, &st.key, agent, decision.strategy).await?,
        None => set_queued(tx, tenant, conv).await?,
    }
    let why = match decision.assignee {
        Some(_) => why,
        None => Why {
            action: "queued",
            ..why
        },
    };
    record(
        tx,
        tenant,
        conv,
        why,
        Some(decision.strategy),
        decision.assignee,
        &decision.candidates,
    )
    .await?;
    Ok(decision)
}
