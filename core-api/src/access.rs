//! The access model of conversations: who may read and act on which conversation.
//!
//! One rule for every path: the HTTP reads and actions (`http/conversations.rs`,
//! `http/actions.rs` through `lifecycle`), the REST fallback, and the wire's `sub` and
//! `send` (`consumer.rs`, `store.rs`). [`decide`] is a pure function of the [`Action`],
//! the caller ([`By`]: the tenant's API key, a staff member of some role, a visitor), the
//! caller's [`Relation`] to the conversation and the conversation's state; [`check`]
//! finds the relation (reading the database only when the answer depends on it) and
//! applies [`decide`]. The answer is allow, `forbidden` (403) or `not_found` (404):
//! visitors learn nothing of conversations that are not theirs, and another tenant's
//! conversations do not exist for a caller (row-level security hides them).
//!
//! The rule, written out as the table in ARCHITECTURE.md ("Access to conversations",
//! rendered by [`table`] and kept equal to it by a unit test):
//! - the tenant's API key, admins and supervisors may do everything in their tenant
//!   (the API key posts no messages or notes, staff rate nothing: that is the visitor's);
//! - an agent acts on what it is assigned or joined; reads, writes to and takes
//!   (assigns to itself) a queued conversation of a support type it is eligible for;
//!   reopens only a conversation it took part in (also one it left);
//! - a bot only on what it holds (assigned or joined, not resolved: after a handoff it
//!   is a former participant and refused);
//! - a visitor reads and writes its own conversations (writing to a resolved one only
//!   within the reopen window), rates them, reopens them within the reopen window.

use deadpool_postgres::GenericClient;
use relaydesk_shared::token::Role;
use uuid::Uuid;

use crate::error::{Error, Result};
use crate::lifecycle::By;

/// What a caller does to a conversation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// `GET /v1/conversations/{id}`.
    Read,
    /// `GET /v1/conversations/{id}/messages`.
    ReadMessages,
    /// The wire's `sub` (and so `typing`, `read` and `ack`, which the edge admits only
    /// behind a granted `sub`).
    Sub,
    /// The wire's `send`, `POST /v1/conversations/{id}/messages`.
    Send,
    /// `POST …/notes`.
    Note,
    /// `POST …/assign` to oneself.
    Take,
    /// `POST …/assign` to another agent.
    Assign,
    Transfer,
    Escalate,
    Handoff,
    Resolve,
    Reopen,
    Snooze,
    /// `POST …/participants`.
    Join,
    /// `POST …/tags`.
    Tag,
    /// `POST …/csat`.
    Csat,
    /// `GET …/assignments`.
    Assignments,
}

impl Action {
    pub const ALL: [Action; 17] = [
        Action::Read,
        Action::ReadMessages,
        Action::Sub,
        Action::Send,
        Action::Note,
        Action::Take,
        Action::Assign,
        Action::Transfer,
        Action::Escalate,
        Action::Handoff,
        Action::Resolve,
        Action::Reopen,
        Action::Snooze,
        Action::Join,
        Action::Tag,
        Action::Csat,
        Action::Assignments,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Action::Read => "read",
            Action::ReadMessages => "read messages",
            Action::Sub => "sub (typing, read)",
            Action::Send => "send",
            Action::Note => "note",
            Action::Take => "assign to self",
            Action::Assign => "assign to another",
            Action::Transfer => "transfer",
            Action::Escalate => "escalate",
            Action::Handoff => "handoff",
            Action::Resolve => "resolve",
            Action::Reopen => "reopen",
            Action::Snooze => "snooze",
            Action::Join => "join",
            Action::Tag => "tag",
            Action::Csat => "csat",
            Action::Assignments => "assignment history",
        }
    }
}

/// The caller's relation to the conversation, the strongest that holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Relation {
    /// The visitor whose conversation it is.
    Owner,
    /// The agent it is assigned to (also once resolved).
    Assignee,
    /// An agent who joined and has not left.
    Participant,
    /// Queued, and the agent is eligible for its support type.
    QueuedEligible,
    /// An agent who took part and left (transferred, escalated or handed off away, or
    /// the assignee before a reopen).
    Former,
    /// None of these (for the tenant's API key and core-api itself, always).
    None,
}

impl Relation {
    pub const ALL: [Relation; 6] = [
        Relation::Owner,
        Relation::Assignee,
        Relation::Participant,
        Relation::QueuedEligible,
        Relation::Former,
        Relation::None,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Relation::Owner => "owner",
            Relation::Assignee => "assignee",
            Relation::Participant => "participant",
            Relation::QueuedEligible => "queued-eligible",
            Relation::Former => "former",
            Relation::None => "none",
        }
    }
}

/// The decision.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Answer {
    Allow,
    Forbidden,
    NotFound,
}

/// What of the conversation's state the rule looks at.
#[derive(Debug, Clone, Copy)]
pub struct Conv<'a> {
    pub id: Uuid,
    pub visitor: Uuid,
    pub assignee: Option<Uuid>,
    pub status: &'a str,
    pub participants: &'a [Uuid],
    /// Resolved, and still within its support type's reopen window.
    pub reopenable: bool,
}

/// The rule: `action` by `by`, standing in `rel` to a conversation in state `conv`.
pub fn decide(action: Action, by: By, rel: Relation, conv: &Conv<'_>) -> Answer {
    use Action as A;
    use Answer::{Allow, Forbidden, NotFound};
    let allow = |yes: bool| if yes { Allow } else { Forbidden };
    match by {
        By::System => Allow,
        By::Tenant => allow(!matches!(action, A::Send | A::Note)),
        By::Visitor { .. } if rel != Relation::Owner => NotFound,
        By::Visitor { .. } => match action {
            A::Read | A::ReadMessages | A::Sub | A::Csat => Allow,
            A::Send => allow(conv.status != "resolved" || conv.reopenable),
            A::Reopen => allow(conv.reopenable),
            _ => Forbidden,
        },
        By::Staff { role, .. } => match role {
            Role::Admin | Role::Supervisor => allow(action != A::Csat),
            Role::Agent => {
                let works_on = matches!(rel, Relation::Assignee | Relation::Participant);
                match action {
                    A::Read | A::ReadMessages | A::Sub | A::Send | A::Note | A::Take => {
                        allow(works_on || rel == Relation::QueuedEligible)
                    }
                    A::Transfer
                    | A::Escalate
                    | A::Resolve
                    | A::Snooze
                    | A::Tag
                    | A::Assignments => allow(works_on),
                    A::Handoff => allow(rel == Relation::Assignee),
                    A::Reopen => allow(works_on || rel == Relation::Former),
                    A::Assign | A::Join | A::Csat => Forbidden,
                }
            }
            // Bots: only what they hold, never a resolved one.
            Role::Bot | Role::Visitor => {
                let holds = matches!(rel, Relation::Assignee | Relation::Participant)
                    && conv.status != "resolved"
                    && role == Role::Bot;
                match action {
                    A::Read
                    | A::ReadMessages
                    | A::Sub
                    | A::Send
                    | A::Note
                    | A::Transfer
                    | A::Escalate
                    | A::Resolve
                    | A::Reopen
                    | A::Snooze
                    | A::Tag
                    | A::Assignments => allow(holds),
                    A::Handoff => allow(holds && rel == Relation::Assignee),
                    A::Take | A::Assign | A::Join | A::Csat => Forbidden,
                }
            }
        },
    }
}

/// [`decide`] as a `Result`.
pub fn require(action: Action, by: By, rel: Relation, conv: &Conv<'_>) -> Result<()> {
    match decide(action, by, rel, conv) {
        Answer::Allow => Ok(()),
        Answer::NotFound => Err(Error::not_found("conversation")),
        Answer::Forbidden => Err(Error::forbidden(format!(
            "{} is not allowed to {} on this conversation ({})",
            who(by),
            action.name(),
            rel.name()
        ))),
    }
}

fn who(by: By) -> &'static str {
    match by {
        By::Tenant => "the API key",
        By::System => "core-api",
        By::Visitor { .. } => "a visitor",
        By::Staff { role, .. } => match role {
            Role::Admin => "an admin",
            Role::Supervisor => "a supervisor",
            Role::Agent => "an agent",
            Role::Bot => "a bot",
            Role::Visitor => "a visitor",
        },
    }
}

/// The principal of a wire frame (or a REST message) as a performer.
pub fn by_role(id: Uuid, role: Role) -> By {
    match role {
        Role::Visitor => By::Visitor { id },
        role => By::Staff { id, role },
    }
}

/// Finds `by`'s relation to `conv` and applies [`decide`]. Reads the database (one
/// statement) only for an agent or bot that neither holds nor joined the conversation
/// and only when the answer could depend on it.
pub async fn check(
    db: &impl GenericClient,
    tenant: Uuid,
    action: Action,
    by: By,
    conv: &Conv<'_>,
) -> Result<()> {
    let rel = relation(db, tenant, by, conv).await?;
    require(action, by, rel, conv)
}

/// Whether an agent that neither holds nor joined a conversation may take it from the
/// queue, and whether it held it before (`$1` tenant, `$2` conversation, `$3` agent);
/// built once, prepared once per connection.
static RELATION_SQL: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
    format!(
        "SELECT c.status = 'queued' AND a.kind = 'human' AND {},
                c.previous_assignee_id IS NOT DISTINCT FROM $3
             OR EXISTS (SELECT 1 FROM participants p
                         WHERE p.tenant_id = $1 AND p.conversation_id = c.id
                           AND p.agent_id = $3)
           FROM conversations c, agents a
          WHERE c.tenant_id = $1 AND c.id = $2 AND a.tenant_id = $1 AND a.id = $3",
        eligible_sql("$1", "$3")
    )
});

/// The relation of `by` to `conv`.
pub async fn relation(
    db: &impl GenericClient,
    tenant: Uuid,
    by: By,
    conv: &Conv<'_>,
) -> Result<Relation> {
    Ok(match by {
        By::Visitor { id } if id == conv.visitor => Relation::Owner,
        By::Staff { id, .. } if conv.assignee == Some(id) => Relation::Assignee,
        By::Staff { id, .. } if conv.participants.contains(&id) => Relation::Participant,
        By::Staff {
            id,
            role: Role::Agent | Role::Bot,
        } => {
            let stmt = db.prepare_cached(&RELATION_SQL).await?;
            let row = db.query_opt(&stmt, &[&tenant, &conv.id, &id]).await?;
            let flag = |i: usize| {
                row.as_ref()
                    .and_then(|r| r.get::<_, Option<bool>>(i))
                    .unwrap_or(false)
            };
            if flag(0) {
                Relation::QueuedEligible
            } else if flag(1) {
                Relation::Former
            } else {
                Relation::None
            }
        }
        _ => Relation::None,
    })
}

/// SQL: whether the agent `agent` (a parameter) may take conversations of `c`'s support
/// type (tenant `tenant`): listed for it, a member of a listed team, or the support type
/// lists nobody (then it is open to every human agent). The same rule as routing's.
pub fn eligible_sql(tenant: &str, agent: &str) -> String {
    format!(
        "(NOT EXISTS (SELECT 1 FROM support_type_agents sa
                       WHERE sa.tenant_id = {tenant} AND sa.support_type = c.support_type)
          AND NOT EXISTS (SELECT 1 FROM support_type_teams st
                           WHERE st.tenant_id = {tenant} AND st.support_type = c.support_type)
       OR EXISTS (SELECT 1 FROM support_type_agents sa
                   WHERE sa.tenant_id = {tenant} AND sa.support_type = c.support_type
                     AND sa.agent_id = {agent})
       OR EXISTS (SELECT 1 FROM support_type_teams st
                    JOIN team_members m ON m.tenant_id = st.tenant_id AND m.team_id = st.team_id
                   WHERE st.tenant_id = {tenant} AND st.support_type = c.support_type
                     AND m.agent_id = {agent}))"
    )
}

/// The roles of the table's columns, as performers.
fn table_callers() -> [(&'static str, By); 6] {
    let id = Uuid::nil();
    [
        ("API key", By::Tenant),
        (
            "admin",
            By::Staff {
                id,
                role: Role::Admin,
            },
        ),
        (
            "supervisor",
            By::Staff {
                id,
                role: Role::Supervisor,
            },
        ),
        (
            "agent",
            By::Staff {
                id,
                role: Role::Agent,
            },
        ),
        (
            "bot",
            By::Staff {
                id,
                role: Role::Bot,
            },
        ),
        ("visitor", By::Visitor { id }),
    ]
}

/// The relations that can hold for a performer.
pub fn relations_of(by: By) -> Vec<Relation> {
    match by {
        By::Tenant | By::System => vec![Relation::None],
        By::Visitor { .. } => vec![Relation::Owner, Relation::None],
        By::Staff {
            role: Role::Agent, ..
        } => Relation::ALL[1..].to_vec(),
        By::Staff { .. } => vec![
            Relation::Assignee,
            Relation::Participant,
            Relation::Former,
            Relation::None,
        ],
    }
}

/// The conversation state the table assumes: open (`assigned`; `queued` for the
/// eligible relation), resolved within its reopen window for reopen and CSAT.
pub fn table_state(action: Action, rel: Relation) -> (&'static str, bool) {
    match (action, rel) {
        (Action::Reopen | Action::Csat, _) => ("resolved", true),
        (_, Relation::QueuedEligible) => ("queued", false),
        _ => ("assigned", false),
    }
}

/// The table of [`decide`] as Markdown: one row per action, one column per role, each
/// cell the relations allowed (`all` when every relation is; `–` when none is).
pub fn table() -> String {
    let callers = table_callers();
    let mut out = String::from("| action |");
    for (name, _) in &callers {
        out.push_str(&format!(" {name} |"));
    }
    out.push_str("\n|---|");
    out.push_str(&"---|".repeat(callers.len()));
    out.push('\n');
    for action in Action::ALL {
        out.push_str(&format!("| {} |", action.name()));
        for (_, by) in &callers {
            let rels = relations_of(*by);
            let allowed: Vec<&str> = rels
                .iter()
                .filter(|r| {
                    let (status, reopenable) = table_state(action, **r);
                    let conv = Conv {
                        id: Uuid::nil(),
                        visitor: Uuid::nil(),
                        assignee: None,
                        status,
                        participants: &[],
                        reopenable,
                    };
                    decide(action, *by, **r, &conv) == Answer::Allow
                })
                .map(|r| r.name())
                .collect();
            let cell = if allowed.is_empty() {
                "–".to_owned()
            } else if allowed.len() == rels.len() {
                "all".to_owned()
            } else {
                allowed.join(", ")
            };
            out.push_str(&format!(" {cell} |"));
        }
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn architecture_md_holds_the_table() {
        let doc = include_str!("../../ARCHITECTURE.md");
        let table = table();
        assert!(
            doc.contains(&table),
            "ARCHITECTURE.md's access table is out of date; it must read:\n{table}"
        );
    }

    #[test]
    fn visitors_learn_nothing_of_others() {
        let conv = Conv {
            id: Uuid::nil(),
            visitor: Uuid::nil(),
            assignee: None,
            status: "assigned",
            participants: &[],
            reopenable: false,
        };
        let v = By::Visitor { id: Uuid::nil() };
        for a in Action::ALL {
            assert_eq!(decide(a, v, Relation::None, &conv), Answer::NotFound);
        }
    }

    #[test]
    fn reopen_needs_having_taken_part() {
        let conv = Conv {
            id: Uuid::nil(),
            visitor: Uuid::nil(),
            assignee: None,
            status: "resolved",
            participants: &[],
            reopenable: true,
        };
        let agent = By::Staff {
            id: Uuid::nil(),
            role: Role::Agent,
        };
        assert_eq!(
            decide(Action::Reopen, agent, Relation::None, &conv),
            Answer::Forbidden
        );
        assert_eq!(
            decide(Action::Reopen, agent, Relation::Former, &conv),
            Answer::Allow
        );
        assert_eq!(
            decide(Action::Read, agent, Relation::Former, &conv),
            Answer::Forbidden
        );
    }
}
