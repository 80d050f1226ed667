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
//! Locks are taken in one order: the conversation's row, then agents' rows.
//!
//! # Never behind a busy agent row
//! A transaction that takes or gives back an agent's slot holds that agent's row until
//! it commits, and every router reads the same order of candidates, so waiting for the
//! row would line all of them up behind the first agent while others are free. Routing
//! instead takes the first candidate, in the strategy's order, whose row nobody holds:
//! one statement locks it with `FOR NO KEY UPDATE SKIP LOCKED` (the lock the update takes
//! anyway, so other transactions' foreign-key checks on the agent still pass) and applies
//! the conditional update to it. A candidate passed over because its row was held is
//! recorded as `locked`; that includes a visitor's previous agent, a preference rather
//! than a promise.
//!
//! Only when every candidate with free capacity is held does routing wait, on the best of
//! them (the plain conditional update), and if that agent turns out full it tries the
//! rest again the same way; each round settles one candidate, so it ends. Waiting is right
//! there: a held row is an assignment or a release about to commit, and whether a slot
//! remains is known only then, so queueing at once would leave a conversation waiting
//! while capacity remains, and retrying without the lock would only poll for the same
//! commit. A single candidate (the support type's bot, the agent of a manual
//! assignment) is waited for directly: nobody else is preferred. A router that waits may
//! hold the row of a candidate it found full (PostgreSQL keeps the lock of a row it
//! re-checked), so two waiting routers can rarely deadlock; PostgreSQL aborts one and
//! the operation is retried (`lifecycle::retrying`; a failed drain is left to the sweep).
//!
//! # Strategies (per support type)
//! - `round_robin`: eligible online agents with free capacity, longest since their last
//!   assignment first;
//! - `capacity`: fewest open conversations first, ties to the longest idle;
//! - the visitor's previous agent first when the support type prefers it (`preferred`);
//! - a support type's bot, when it has one, takes new conversations first (`bot`).
//!
//! Nobody free: the conversation waits in the tenant's queue, ordered by priority, then
//! by how long it has waited. [`crate::lifecycle::drain`] assigns queued conversations,
//! oldest first, when capacity frees up. Every decision is written to `assignments` with
//! each candidate considered and why it was skipped.

use std::collections::{HashMap, HashSet};

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
/// Waits while another transaction holds the agent's row: for the one agent there is to
/// try (see the module docs); [`decide`] chooses among several without waiting.
pub async fn take_slot(tx: &Transaction<'_>, tenant: Uuid, agent: Uuid) -> Result<bool> {
    Ok(tx
        .execute(
            "UPDATE agents SET open_count = open_count + 1, last_assigned_at = clock_timestamp()
              WHERE tenant_id = $1 AND id = $2 AND status = 'online' AND open_count < max_concurrent",
            &[&tenant, &agent],
        )
        .await?
        == 1)
}

/// Takes a slot of the first of `agents` (in preference order) whose row no other
/// transaction holds, if it is online with free capacity: never waits. Returns who was
/// taken, and which of `agents` are online with free capacity as of the statement (those
/// passed over among them were held by another transaction).
async fn take_unlocked(
    tx: &Transaction<'_>,
    tenant: Uuid,
    agents: &[Uuid],
) -> Result<(Option<Uuid>, Vec<Uuid>)> {
    let row = tx
        .query_one(
            "WITH c AS (SELECT id, ord FROM unnest($2::uuid[]) WITH ORDINALITY AS c (id, ord)),
                  pick AS (
                      SELECT a.id FROM agents a JOIN c ON c.id = a.id
                       WHERE a.tenant_id = $1 AND a.status = 'online' AND a.open_count < a.max_concurrent
                       ORDER BY c.ord LIMIT 1
                         FOR NO KEY UPDATE OF a SKIP LOCKED),
                  took AS (
                      UPDATE agents a SET open_count = a.open_count + 1, last_assigned_at = clock_timestamp()
                        FROM pick
                       WHERE a.tenant_id = $1 AND a.id = pick.id
                         AND a.status = 'online' AND a.open_count < a.max_concurrent
                   RETURNING a.id)
             SELECT (SELECT id FROM took),
                    ARRAY(SELECT a.id FROM agents a JOIN c ON c.id = a.id
                           WHERE a.tenant_id = $1 AND a.status = 'online'
                             AND a.open_count < a.max_concurrent
                           ORDER BY c.ord)",
            &[&tenant, &agents],
        )
        .await?;
    Ok((row.get(0), row.get(1)))
}

/// Who [`take_first`] took, and why each candidate it passed over was passed over.
#[derive(Debug, Default)]
struct Taken {
    agent: Option<Uuid>,
    passed: HashMap<Uuid, &'static str>,
}

/// Takes a slot of the first of `agents` (in preference order, each online with free
/// capacity when last read) that has one. A free agent whose row nobody holds is taken
/// over waiting for a held row; only when every free agent is held does it wait, for the
/// best of them (the module docs say why).
async fn take_first(tx: &Transaction<'_>, tenant: Uuid, agents: &[Uuid]) -> Result<Taken> {
    let mut taken = Taken::default();
    let mut left = agents.to_vec();
    loop {
        let wait_for = match left.as_slice() {
            [] => return Ok(taken),
            // Nobody else to prefer: wait for its row if it is held.
            [only] => *only,
            _ => {
                let (agent, free) = take_unlocked(tx, tenant, &left).await?;
                for &a in left.iter().take_while(|a| Some(**a) != agent) {
                    let why = if free.contains(&a) {
                        "locked"
                    } else {
                        // Full or away by now: another router took the last slot meanwhile.
                        "lost_race"
                    };
                    taken.passed.insert(a, why);
                }
                if let Some(a) = agent {
                    taken.passed.remove(&a);
                    taken.agent = Some(a);
                    return Ok(taken);
                }
                // Everyone still free is held by a transaction about to commit.
                left.retain(|a| free.contains(a));
                match left.first() {
                    Some(&best) => best,
                    None => return Ok(taken),
                }
            }
        };
        if take_slot(tx, tenant, wait_for).await? {
            taken.passed.remove(&wait_for);
            taken.agent = Some(wait_for);
            return Ok(taken);
        }
        taken.passed.insert(wait_for, "lost_race");
        left.retain(|a| *a != wait_for);
    }
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
        // The one candidate first: waited for if its row is held (see the module docs).
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
    // Passed over on what the read saw; the rest are tried in order.
    let mut tried: HashSet<Uuid> = HashSet::new();
    let seen: Vec<Option<&'static str>> = rows
        .iter()
        .map(|r| {
            if req.exclude.contains(&r.id) {
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
            } else {
                None
            }
        })
        .collect();
    let open: Vec<Uuid> = rows
        .iter()
        .zip(&seen)
        .filter(|(_, why)| why.is_none())
        .map(|(r, _)| r.id)
        .collect();
    let taken = take_first(tx, tenant, &open).await?;
    let assignee = taken.agent;
    let mut reached = true;
    for (r, why) in rows.iter().zip(seen) {
        let skipped = if !reached {
            Some("not_reached")
        } else if assignee == Some(r.id) {
            reached = false;
            None
        } else {
            why.or_else(|| taken.passed.get(&r.id).copied())
                .or(Some("not_reached"))
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
