//! Messages in PostgreSQL: idempotent batch commit with gapless per-conversation `seq`,
//! history reads, receipts, and the access rule every path shares.
//!
//! [`commit_sends`] is where a message becomes durable. Per batch, in one transaction:
//! lock the batch's conversations (`FOR UPDATE`, in (tenant, id) order so concurrent
//! batches of several core-api processes never deadlock), look up which (conversation,
//! sender, client id) keys already exist, allocate `last_seq + 1, + 2, …` to the new
//! ones, insert them, advance `last_seq`, commit. The row lock serializes allocation, so
//! seqs are gapless and strictly increasing; the dedupe lookup runs after the lock is
//! held, so it sees every committed duplicate, whichever process committed it.

use std::collections::{BTreeMap, HashMap};

use deadpool_postgres::{Pool, Transaction};
use relaydesk_shared::token::Role;
use relaydesk_shared::wire::{self, Actor, Message};
use relaydesk_shared::ErrorCode;
use serde_json::Value;
use uuid::Uuid;

use crate::db;
use crate::error::{Error, Result};

/// A message to commit, from the wire (`send`) or the REST fallback.
#[derive(Debug, Clone)]
pub struct NewMessage {
    pub tenant: Uuid,
    pub from: Actor,
    pub conv: Uuid,
    pub client_id: String,
    pub kind: String,
    pub body: Value,
    /// Sent by the tenant to many (a blast), not a reply: it does not stop the
    /// conversation's first-response clock.
    pub broadcast: bool,
}

/// The outcome of one [`NewMessage`].
#[derive(Debug, Clone)]
pub enum Outcome {
    /// Stored (now, or earlier under the same client id: then `new` is false).
    Committed {
        message: Message,
        new: bool,
    },
    Refused {
        code: ErrorCode,
        message: String,
    },
}

/// The columns of a conversation that access decisions need.
#[derive(Debug, Clone)]
pub struct ConvRef {
    pub id: Uuid,
    pub visitor_id: Uuid,
    pub assignee_id: Option<Uuid>,
    pub status: String,
    pub last_seq: i64,
    /// Agents taking part (the assignee, supervisors who joined); not those who left.
    pub participants: Vec<Uuid>,
    /// Resolved, and still within its support type's reopen window.
    pub reopenable: bool,
}

/// Whether `who` (`role`) may read and write the conversation. Visitors learn nothing of
/// conversations that are not theirs (`not_found`); agents work on what they take part
/// in or what waits in the queue; bots only on what they hold (so a bot that handed a
/// conversation off is refused); supervisors and admins on everything.
pub fn check_access(conv: &ConvRef, who: Uuid, role: Role) -> Result<()> {
    let takes_part = conv.assignee_id == Some(who) || conv.participants.contains(&who);
    let allowed = match role {
        Role::Visitor => {
            if conv.visitor_id != who {
                return Err(Error::not_found("conversation"));
            }
            true
        }
        Role::Agent => takes_part || conv.status == "queued",
        Role::Bot => takes_part && conv.status != "resolved",
        Role::Supervisor | Role::Admin => true,
    };
    if allowed {
        Ok(())
    } else {
        Err(Error::forbidden("not a participant of this conversation"))
    }
}

/// Validates what a client may not send whatever the conversation.
fn validate(m: &NewMessage) -> Result<()> {
    if !wire::valid_client_id(&m.client_id) {
        return Err(Error::bad_request(
            "id must be 1-64 characters of [A-Za-z0-9_-]",
        ));
    }
    if !wire::client_kind_allowed(&m.kind, m.from.role) {
        return Err(Error::forbidden(format!(
            "kind {:?} is not allowed",
            m.kind
        )));
    }
    match m.body.get("text") {
        Some(Value::String(_)) => Ok(()),
        _ => Err(Error::bad_request(
            "body must be an object with a string field text",
        )),
    }
}

/// What [`conv_ref`] reads, from `conversations c` joined with `support_types s`.
const CONV_COLUMNS: &str = "c.id, c.visitor_id, c.assignee_id, c.status, c.last_seq,
    ARRAY(SELECT p.agent_id FROM participants p
           WHERE p.tenant_id = c.tenant_id AND p.conversation_id = c.id AND p.left_at IS NULL),
    c.resolved_at IS NOT NULL AND c.resolved_at + make_interval(secs => s.reopen_window_secs) > now()";
const CONV_FROM: &str = "conversations c
    JOIN support_types s ON s.tenant_id = c.tenant_id AND s.key = c.support_type";

fn conv_ref(row: &tokio_postgres::Row) -> ConvRef {
    ConvRef {
        id: row.get(0),
        visitor_id: row.get(1),
        assignee_id: row.get(2),
        status: row.get(3),
        last_seq: row.get(4),
        participants: row.get(5),
        reopenable: row.get(6),
    }
}

/// Reads one conversation for an access decision (no lock).
pub async fn conv(tx: &Transaction<'_>, tenant: Uuid, id: Uuid) -> Result<ConvRef> {
    let sql =
        format!("SELECT {CONV_COLUMNS} FROM {CONV_FROM} WHERE c.tenant_id = $1 AND c.id = $2");
    let row = tx
        .query_opt(&sql, &[&tenant, &id])
        .await?
        .ok_or_else(|| Error::not_found("conversation"))?;
    Ok(conv_ref(&row))
}

/// The result of [`commit_sends`].
#[derive(Debug, Default)]
pub struct Committed {
    /// One per input, in input order.
    pub outcomes: Vec<Outcome>,
    /// (tenant, conversation, visitor): a visitor wrote to a resolved or snoozed
    /// conversation, which `lifecycle::wake` reopens now that the message is committed.
    pub wake: Vec<(Uuid, Uuid, Uuid)>,
}

/// Commits a batch in one transaction; one [`Outcome`] per input, in input order.
pub async fn commit_sends(pool: &Pool, batch: &[NewMessage]) -> Result<Committed> {
    let mut wake = Vec::new();
    let mut outcomes: Vec<Option<Outcome>> = vec![None; batch.len()];
    let mut by_tenant: BTreeMap<Uuid, Vec<usize>> = BTreeMap::new();
    for (i, m) in batch.iter().enumerate() {
        match validate(m) {
            Ok(()) => by_tenant.entry(m.tenant).or_default().push(i),
            Err(e) => outcomes[i] = Some(refused(e)),
        }
    }
    if !by_tenant.is_empty() {
        let mut client = pool.get().await?;
        let tx = client.transaction().await?;
        let ts: i64 = tx
            .query_one("SELECT (extract(epoch FROM now()) * 1000)::int8", &[])
            .await?
            .get(0);
        for (tenant, idx) in &by_tenant {
            db::set_tenant(&tx, *tenant).await?;
            commit_tenant(&tx, *tenant, batch, idx, ts, &mut outcomes, &mut wake).await?;
        }
        tx.commit().await?;
    }
    let outcomes = outcomes
        .into_iter()
        .map(|o| o.unwrap_or_else(|| refused(Error::Internal("message left undecided".into()))))
        .collect();
    Ok(Committed { outcomes, wake })
}

fn refused(e: Error) -> Outcome {
    Outcome::Refused {
        code: e.code(),
        message: e.public_message(),
    }
}

async fn commit_tenant(
    tx: &Transaction<'_>,
    tenant: Uuid,
    batch: &[NewMessage],
    idx: &[usize],
    ts: i64,
    outcomes: &mut [Option<Outcome>],
    wake: &mut Vec<(Uuid, Uuid, Uuid)>,
) -> Result<()> {
    // 1. Lock the conversations, in id order.
    let mut conv_ids: Vec<Uuid> = idx.iter().map(|&i| batch[i].conv).collect();
    conv_ids.sort();
    conv_ids.dedup();
    let sql = format!(
        "SELECT {CONV_COLUMNS} FROM {CONV_FROM}
          WHERE c.tenant_id = $1 AND c.id = ANY($2) ORDER BY c.id FOR UPDATE OF c"
    );
    let mut convs: HashMap<Uuid, ConvRef> = tx
        .query(&sql, &[&tenant, &conv_ids])
        .await?
        .iter()
        .map(|r| (r.get(0), conv_ref(r)))
        .collect();

    // 2. Access.
    let mut admitted = Vec::with_capacity(idx.len());
    for &i in idx {
        let m = &batch[i];
        let access = match convs.get(&m.conv) {
            None => Err(Error::not_found("conversation")),
            Some(c) if c.status == "resolved" && m.from.role == Role::Visitor && !c.reopenable => {
                Err(Error::client(
                    ErrorCode::Forbidden,
                    "conversation is resolved",
                ))
            }
            Some(c) => check_access(c, m.from.id, m.from.role),
        };
        match access {
            Ok(()) => {
                // A visitor writing to a resolved (within the window) or snoozed
                // conversation reopens it once this batch has committed.
                let c = convs.get(&m.conv);
                if m.from.role == Role::Visitor
                    && c.is_some_and(|c| c.status == "resolved" || c.status == "snoozed")
                {
                    wake.push((tenant, m.conv, m.from.id));
                }
                admitted.push(i)
            }
            Err(e) => outcomes[i] = Some(refused(e)),
        }
    }
    if admitted.is_empty() {
        return Ok(());
    }

    // 3. Dedupe against what is already stored (the lock is held: nothing can slip in).
    let keys_conv: Vec<Uuid> = admitted.iter().map(|&i| batch[i].conv).collect();
    let keys_sender: Vec<Uuid> = admitted.iter().map(|&i| batch[i].from.id).collect();
    let keys_client: Vec<&str> = admitted
        .iter()
        .map(|&i| batch[i].client_id.as_str())
        .collect();
    let rows = tx
        .query(
            &format!(
                "SELECT m.conversation_id, m.client_msg_id, {MESSAGE_COLUMNS}
               FROM messages m
               JOIN unnest($2::uuid[], $3::uuid[], $4::text[]) AS k(conv, sender, client)
                 ON m.conversation_id = k.conv AND m.sender_id = k.sender AND m.client_msg_id = k.client
              WHERE m.tenant_id = $1"
            ),
            &[&tenant, &keys_conv, &keys_sender, &keys_client],
        )
        .await?;
    let mut existing: HashMap<(Uuid, Uuid, String), Message> = HashMap::new();
    for r in &rows {
        let m = message_from_row(r.get(0), r, 2);
        existing.insert((m.conv, m.from.id, r.get::<_, String>(1)), m);
    }

    // 4. Allocate seqs to the new ones, in batch order.
    let mut ins = Inserts::default();
    for &i in &admitted {
        let m = &batch[i];
        let key = (m.conv, m.from.id, m.client_id.clone());
        if let Some(found) = existing.get(&key) {
            outcomes[i] = Some(Outcome::Committed {
                message: found.clone(),
                new: false,
            });
            continue;
        }
        let Some(c) = convs.get_mut(&m.conv) else {
            continue;
        };
        c.last_seq += 1;
        let message = Message {
            conv: m.conv,
            seq: c.last_seq as u64,
            msg: Uuid::now_v7(),
            from: m.from.clone(),
            kind: m.kind.clone(),
            body: m.body.clone(),
            ts,
        };
        ins.push(m, &message);
        existing.insert(key, message.clone());
        outcomes[i] = Some(Outcome::Committed { message, new: true });
    }
    if ins.conv.is_empty() {
        return Ok(());
    }

    // 5. Insert and advance last_seq.
    tx.execute(
        "INSERT INTO messages (tenant_id, conversation_id, seq, id, sender_id, sender_role, sender_name,
                               client_msg_id, kind, body, created_at)
         SELECT $1, c, s, i, snd, r, n, cid, k, b, to_timestamp($11::float8 / 1000)
           FROM unnest($2::uuid[], $3::int8[], $4::uuid[], $5::uuid[], $6::text[], $7::text[], $8::text[],
                       $9::text[], $10::jsonb[]) AS v(c, s, i, snd, r, n, cid, k, b)",
        &[
            &tenant,
            &ins.conv,
            &ins.seq,
            &ins.id,
            &ins.sender,
            &ins.role,
            &ins.name,
            &ins.client,
            &ins.kind,
            &ins.body,
            &(ts as f64),
        ],
    )
    .await?;
    let (ids, seqs): (Vec<Uuid>, Vec<i64>) = convs
        .values()
        .filter(|c| ins.conv.contains(&c.id))
        .map(|c| (c.id, c.last_seq))
        .unzip();
    tx.execute(
        "UPDATE conversations c SET last_seq = v.s, updated_at = now()
           FROM unnest($2::uuid[], $3::int8[]) AS v(id, s)
          WHERE c.tenant_id = $1 AND c.id = v.id",
        &[&tenant, &ids, &seqs],
    )
    .await?;

    // 6. The first reply of the tenant's side starts the first-response clock's stop.
    let replied: Vec<Uuid> = ins
        .conv
        .iter()
        .zip(&ins.replies)
        .filter(|(_, reply)| **reply)
        .map(|(c, _)| *c)
        .collect();
    if !replied.is_empty() {
        let rows = tx
            .query(
                "UPDATE conversations SET first_response_at = now()
                  WHERE tenant_id = $1 AND id = ANY($2) AND first_response_at IS NULL
              RETURNING support_type, extract(epoch FROM now() - created_at)::float8",
                &[&tenant, &replied],
            )
            .await?;
        for r in rows {
            metrics::histogram!("relaydesk_core_first_response_seconds", "support_type" => r.get::<_, String>(0))
                .record(r.get::<_, f64>(1).max(0.0));
        }
    }

    // 7. `message.created` for the tenant's webhooks, in the same transaction (built in
    // SQL, and only when a webhook subscribes: nothing to do for most tenants).
    crate::events::enqueue_messages(tx, tenant, &ins.conv, &ins.seq).await?;
    Ok(())
}

/// Column arrays for one multi-row insert.
#[derive(Default)]
struct Inserts {
    conv: Vec<Uuid>,
    seq: Vec<i64>,
    id: Vec<Uuid>,
    sender: Vec<Uuid>,
    role: Vec<&'static str>,
    name: Vec<Option<String>>,
    client: Vec<String>,
    kind: Vec<String>,
    body: Vec<Value>,
    /// Counts as the first response of its conversation (a staff text, not a blast).
    replies: Vec<bool>,
}

impl Inserts {
    fn push(&mut self, m: &NewMessage, stored: &Message) {
        self.conv.push(stored.conv);
        self.seq.push(stored.seq as i64);
        self.id.push(stored.msg);
        self.sender.push(m.from.id);
        self.role.push(m.from.role.as_str());
        self.name.push(m.from.name.clone());
        self.client.push(m.client_id.clone());
        self.kind.push(m.kind.clone());
        self.body.push(m.body.clone());
        self.replies
            .push(m.from.role.is_staff() && m.kind == "text" && !m.broadcast);
    }
}

/// The columns [`message_from_row`] reads, in its order (table alias `m`).
const MESSAGE_COLUMNS: &str =
    "m.sender_id, m.seq, m.id, m.sender_role, m.sender_name, m.kind, m.body,
     (extract(epoch FROM m.created_at) * 1000)::int8";

/// Builds a [`Message`] of `conv` from [`MESSAGE_COLUMNS`], which start at column `at`.
fn message_from_row(conv: Uuid, r: &tokio_postgres::Row, at: usize) -> Message {
    let role: String = r.get(at + 3);
    Message {
        conv,
        seq: r.get::<_, i64>(at + 1) as u64,
        msg: r.get(at + 2),
        from: Actor {
            id: r.get(at),
            role: Role::parse(&role).unwrap_or(Role::Visitor),
            name: r.get(at + 4),
        },
        kind: r.get(at + 5),
        body: r.get(at + 6),
        ts: r.get(at + 7),
    }
}

/// Messages of a conversation with `seq > after`, in order, at most `limit`; notes and
/// suggestions only for staff.
pub async fn history(
    tx: &Transaction<'_>,
    tenant: Uuid,
    conv: Uuid,
    after: u64,
    limit: i64,
    staff: bool,
) -> Result<Vec<Message>> {
    let rows = tx
        .query(
            &format!(
                "SELECT {MESSAGE_COLUMNS}
               FROM messages m
              WHERE tenant_id = $1 AND conversation_id = $2 AND seq > $3
                AND ($4 OR kind NOT IN ('note', 'suggestion'))
              ORDER BY seq
              LIMIT $5"
            ),
            &[
                &tenant,
                &conv,
                &(after.min(i64::MAX as u64) as i64),
                &staff,
                &limit,
            ],
        )
        .await?;
    Ok(rows.iter().map(|r| message_from_row(conv, r, 0)).collect())
}

/// A cumulative `ack` or a `read` receipt.
#[derive(Debug, Clone)]
pub struct Receipt {
    pub tenant: Uuid,
    pub conv: Uuid,
    pub principal: Uuid,
    pub seq: u64,
    pub read: bool,
}

/// Stores receipts; positions only move forward. Receipts for conversations that do not
/// exist in the tenant are dropped.
pub async fn store_receipts(pool: &Pool, receipts: &[Receipt]) -> Result<()> {
    let mut by_tenant: BTreeMap<Uuid, Vec<&Receipt>> = BTreeMap::new();
    for r in receipts {
        by_tenant.entry(r.tenant).or_default().push(r);
    }
    let mut client = pool.get().await?;
    let tx = client.transaction().await?;
    for (tenant, rs) in by_tenant {
        db::set_tenant(&tx, tenant).await?;
        let convs: Vec<Uuid> = rs.iter().map(|r| r.conv).collect();
        let principals: Vec<Uuid> = rs.iter().map(|r| r.principal).collect();
        let seqs: Vec<i64> = rs
            .iter()
            .map(|r| r.seq.min(i64::MAX as u64) as i64)
            .collect();
        let reads: Vec<bool> = rs.iter().map(|r| r.read).collect();
        tx.execute(
            "INSERT INTO receipts AS r (tenant_id, conversation_id, principal_id, delivered_seq, read_seq)
             SELECT $1, v.c, v.p, max(v.s), max(CASE WHEN v.rd THEN v.s ELSE 0 END)
               FROM unnest($2::uuid[], $3::uuid[], $4::int8[], $5::bool[]) AS v(c, p, s, rd)
               JOIN conversations c ON c.tenant_id = $1 AND c.id = v.c AND v.s <= c.last_seq
              GROUP BY v.c, v.p
             ON CONFLICT (tenant_id, conversation_id, principal_id) DO UPDATE
                SET delivered_seq = greatest(r.delivered_seq, excluded.delivered_seq),
                    read_seq = greatest(r.read_seq, excluded.read_seq),
                    updated_at = now()",
            &[&tenant, &convs, &principals, &seqs, &reads],
        )
        .await?;
    }
    tx.commit().await?;
    Ok(())
}
