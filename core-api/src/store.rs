//! Messages in PostgreSQL: idempotent batch commit with gapless per-conversation `seq`,
//! history reads, receipts, and the conversation view the access rule (`access`) reads.
//!
//! [`commit`] is where a message becomes durable. Per batch, one transaction, and per
//! tenant in it two statements, each prepared once per connection: [`LOCK_SQL`] locks
//! the batch's conversations (`FOR NO KEY UPDATE`, in (tenant, id) order so concurrent
//! batches of several core-api processes never deadlock); [`COMMIT_SQL`] then looks up which
//! (conversation, sender, client id) keys already exist, allocates `last_seq + 1, + 2,
//! …` to the new ones, inserts them, advances `last_seq` and writes webhook events;
//! receipts ([`RECEIPTS_SQL`]) ride in the same transaction; commit. `BEGIN` rides
//! with the first lock and `COMMIT` with the last commit statement (pipelined: one
//! round trip per tenant plus one). The row lock
//! serializes allocation, so seqs are gapless and strictly increasing; the dedupe lookup
//! runs in a statement that starts after the lock is held, so it sees every committed
//! duplicate, whichever process committed it.
//!
//! *Every statement here reaches rows through an index bound by the batch's keys*, never
//! by a scan of the tenant's rows: their cost does not depend on the tenant's history or
//! on when PostgreSQL last analyzed it (`tests/history.rs` checks the plans on a tenant
//! with a million unanalyzed messages). One exception is not prevented: plans made while
//! the tables are still empty (a fresh database) may scan until autoanalyze first sees
//! them and invalidates them (`docs/bench/notes.md`).

use std::collections::{BTreeMap, HashMap};

use deadpool_postgres::{Pool, Transaction};
use relaydesk_shared::token::Role;
use relaydesk_shared::wire::{self, Actor, Message};
use relaydesk_shared::ErrorCode;
use serde_json::Value;
use uuid::Uuid;

use crate::access;
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

impl ConvRef {
    /// What the access rule (`access`) looks at.
    pub fn view(&self) -> access::Conv<'_> {
        access::Conv {
            id: self.id,
            visitor: self.visitor_id,
            assignee: self.assignee_id,
            status: &self.status,
            participants: &self.participants,
            reopenable: self.reopenable,
        }
    }
}

/// Whether `who` (`role`) may take `action` on the conversation: the one rule of
/// `access`, for a principal of a token.
pub async fn check_access(
    tx: &Transaction<'_>,
    tenant: Uuid,
    conv: &ConvRef,
    action: access::Action,
    who: Uuid,
    role: Role,
) -> Result<()> {
    access::check(tx, tenant, action, access::by_role(who, role), &conv.view()).await
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

/// `SELECT` of what [`conv_ref`] reads (then the columns `$extra` adds), from
/// `conversations c` joined with `support_types s` (a macro, so that statements built on
/// it are `const`).
macro_rules! conv_select {
    () => {
        conv_select!("")
    };
    ($extra:literal) => {
        concat!(
            "SELECT c.id, c.visitor_id, c.assignee_id, c.status, c.last_seq,
    ARRAY(SELECT p.agent_id FROM participants p
           WHERE p.tenant_id = c.tenant_id AND p.conversation_id = c.id AND p.left_at IS NULL),
    c.resolved_at IS NOT NULL AND c.resolved_at + make_interval(secs => s.reopen_window_secs) > now()",
            $extra,
            "
  FROM conversations c
  JOIN support_types s ON s.tenant_id = c.tenant_id AND s.key = c.support_type"
        )
    };
}

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
    let sql = tx
        .prepare_cached(concat!(
            conv_select!(),
            " WHERE c.tenant_id = $1 AND c.id = $2"
        ))
        .await?;
    let row = tx
        .query_opt(&sql, &[&tenant, &id])
        .await?
        .ok_or_else(|| Error::not_found("conversation"))?;
    Ok(conv_ref(&row))
}

/// The result of [`commit`].
#[derive(Debug, Default)]
pub struct Committed {
    /// One per input send, in input order.
    pub outcomes: Vec<Outcome>,
    /// (tenant, conversation, visitor): a visitor wrote to a resolved or snoozed
    /// conversation, which `lifecycle::wake` reopens now that the message is committed.
    pub wake: Vec<(Uuid, Uuid, Uuid)>,
}

/// Commits sends alone (the REST fallback, blasts); see [`commit`].
pub async fn commit_sends(pool: &Pool, batch: &[NewMessage]) -> Result<Committed> {
    commit(pool, batch, &[]).await
}

/// Commits a batch of sends and receipts in one transaction (one fsync); one
/// [`Outcome`] per send, in input order.
///
/// The transaction's statements are pipelined: `BEGIN` travels with the first tenant's
/// lock, each tenant's commit statement with the next tenant's lock, and `COMMIT` with
/// the last commit statement, so a batch of one tenant costs two round trips (a batch of
/// `n` tenants `n + 1`). A statement that fails aborts the transaction, and the `COMMIT`
/// queued behind it then ends it as a rollback; the outcomes count only once `COMMIT`
/// has answered.
pub async fn commit(pool: &Pool, batch: &[NewMessage], receipts: &[Receipt]) -> Result<Committed> {
    let mut wake = Vec::new();
    let mut outcomes: Vec<Option<Outcome>> = vec![None; batch.len()];
    let mut by_tenant: BTreeMap<Uuid, (Vec<usize>, Vec<&Receipt>)> = BTreeMap::new();
    for (i, m) in batch.iter().enumerate() {
        match validate(m) {
            Ok(()) => by_tenant.entry(m.tenant).or_default().0.push(i),
            Err(e) => outcomes[i] = Some(refused(e)),
        }
    }
    for r in receipts {
        by_tenant.entry(r.tenant).or_default().1.push(r);
    }
    if !by_tenant.is_empty() {
        let conn = Exclusive(Some(pool.get().await?));
        let c = conn.client()?;
        let st = Statements::prepare(c).await?;
        let mut pending: Option<Pending<'_>> = None;
        for (n, (tenant, (idx, receipts))) in by_tenant.iter().enumerate() {
            let mut conv_ids: Vec<Uuid> = idx.iter().map(|&i| batch[i].conv).collect();
            conv_ids.sort();
            conv_ids.dedup();
            let begin = async {
                if n == 0 {
                    c.batch_execute("BEGIN").await?;
                }
                Ok::<_, Error>(())
            };
            let (_, done, rows) = futures::try_join!(
                begin,
                st.finish(c, pending.as_ref()),
                st.start(c, *tenant, &conv_ids)
            )?;
            if let Some(p) = pending.take() {
                p.settle(batch, &done, &mut outcomes)?;
            }
            pending = Some(
                admit(
                    c,
                    *tenant,
                    batch,
                    idx,
                    &rows,
                    receipts,
                    &mut outcomes,
                    &mut wake,
                )
                .await?,
            );
        }
        let end = async {
            c.batch_execute("COMMIT").await?;
            Ok::<_, Error>(())
        };
        let (done, ()) = futures::try_join!(st.finish(c, pending.as_ref()), end)?;
        if let Some(p) = pending {
            p.settle(batch, &done, &mut outcomes)?;
        }
        conn.release();
    }
    let outcomes = outcomes
        .into_iter()
        .map(|o| o.unwrap_or_else(|| refused(Error::Internal("message left undecided".into()))))
        .collect();
    Ok(Committed { outcomes, wake })
}

/// A pooled connection whose transaction [`commit`] drives by hand: unless
/// [`Exclusive::release`]d after its `COMMIT` answered, it is closed instead of going
/// back to the pool (closing aborts whatever transaction it had open), so an error or a
/// cancelled commit never hands a connection inside a transaction to the next user.
struct Exclusive(Option<deadpool_postgres::Client>);

impl Exclusive {
    fn client(&self) -> Result<&deadpool_postgres::Client> {
        self.0
            .as_ref()
            .ok_or_else(|| Error::Internal("connection already released".into()))
    }

    /// Back to the pool: its transaction has ended.
    fn release(mut self) {
        self.0.take();
    }
}

impl Drop for Exclusive {
    fn drop(&mut self) {
        if let Some(c) = self.0.take() {
            drop(deadpool_postgres::Client::take(c));
        }
    }
}

/// The batch's statements, prepared once per connection (cached).
struct Statements {
    set: tokio_postgres::Statement,
    lock: tokio_postgres::Statement,
    commit: tokio_postgres::Statement,
    receipts: tokio_postgres::Statement,
}

impl Statements {
    async fn prepare(c: &deadpool_postgres::Client) -> Result<Statements> {
        Ok(Statements {
            set: c.prepare_cached(db::SET_TENANT_SQL).await?,
            lock: c.prepare_cached(LOCK_SQL).await?,
            commit: c.prepare_cached(COMMIT_SQL).await?,
            receipts: c.prepare_cached(RECEIPTS_SQL).await?,
        })
    }

    /// A tenant's first step: switch to it and lock its conversations of the batch, in id
    /// order ([`LOCK_SQL`]). Both requests leave before either answer is awaited
    /// (tokio-postgres sends a request when its future is first polled, and `try_join!`
    /// polls in order, so the server runs them in order).
    async fn start(
        &self,
        c: &deadpool_postgres::Client,
        tenant: Uuid,
        conv_ids: &Vec<Uuid>,
    ) -> Result<Vec<tokio_postgres::Row>> {
        let scope = tenant.to_string();
        let set = async {
            c.execute(&self.set, &[&scope]).await?;
            Ok::<_, Error>(())
        };
        let lock = async {
            if conv_ids.is_empty() {
                return Ok(Vec::new());
            }
            Ok::<_, Error>(c.query(&self.lock, &[&tenant, conv_ids]).await?)
        };
        let ((), rows) = futures::try_join!(set, lock)?;
        Ok(rows)
    }

    /// A tenant's second step: its commit statement ([`COMMIT_SQL`]) and its receipts
    /// ([`RECEIPTS_SQL`]); the rows of the commit statement.
    async fn finish(
        &self,
        c: &deadpool_postgres::Client,
        p: Option<&Pending<'_>>,
    ) -> Result<Vec<tokio_postgres::Row>> {
        let Some(p) = p else {
            return Ok(Vec::new());
        };
        let commit = async {
            let Some(k) = &p.cols else {
                return Ok(Vec::new());
            };
            let rows = c
                .query(
                    &self.commit,
                    &[
                        &p.tenant,
                        &k.conv,
                        &k.sender,
                        &k.role,
                        &k.name,
                        &k.client,
                        &k.kind,
                        &k.body,
                        &k.id,
                        &k.reply,
                        &crate::events::hook::MESSAGE_CREATED,
                        &k.base,
                        &k.unanswered,
                        &k.support_type,
                        &k.created,
                    ],
                )
                .await?;
            Ok::<_, Error>(rows)
        };
        let receipts = async {
            if let Some(r) = &p.receipts {
                c.execute(
                    &self.receipts,
                    &[&p.tenant, &r.conv, &r.principal, &r.seq, &r.read],
                )
                .await?;
            }
            Ok::<_, Error>(())
        };
        let (rows, ()) = futures::try_join!(commit, receipts)?;
        Ok(rows)
    }
}

/// One tenant's part of a batch between its two steps: what [`Statements::finish`]
/// sends, and how its answer maps back to the batch.
struct Pending<'a> {
    tenant: Uuid,
    /// Indexes into the batch of the sends [`COMMIT_SQL`] carries, in its order.
    admitted: Vec<usize>,
    /// (index, index of the first send with the same key): resends within the batch.
    repeats: Vec<(usize, usize)>,
    cols: Option<Columns<'a>>,
    receipts: Option<ReceiptColumns>,
}

/// Admits a tenant's sends after its lock: access (with the locked conversations as
/// read), and the batch's own duplicates (a resend within one batch: the first of each
/// key goes to the database, the others take its outcome).
#[allow(clippy::too_many_arguments)]
async fn admit<'a>(
    c: &deadpool_postgres::Client,
    tenant: Uuid,
    batch: &'a [NewMessage],
    idx: &[usize],
    rows: &[tokio_postgres::Row],
    receipts: &[&Receipt],
    outcomes: &mut [Option<Outcome>],
    wake: &mut Vec<(Uuid, Uuid, Uuid)>,
) -> Result<Pending<'a>> {
    let locked: HashMap<Uuid, (ConvRef, Head)> = rows
        .iter()
        .map(|r| {
            let head = Head {
                unanswered: r.get(7),
                support_type: r.get(8),
                created: r.get(9),
            };
            (r.get(0), (conv_ref(r), head))
        })
        .collect();
    let mut first_of: HashMap<(Uuid, Uuid, &str), usize> = HashMap::new();
    let mut admitted = Vec::with_capacity(idx.len());
    let mut repeats = Vec::new();
    for &i in idx {
        let m = &batch[i];
        let conv = locked.get(&m.conv).map(|(c, _)| c);
        let access = match conv {
            None => Err(Error::not_found("conversation")),
            Some(v) => {
                let by = access::by_role(m.from.id, m.from.role);
                access::check(c, tenant, access::Action::Send, by, &v.view()).await
            }
        };
        if let Err(e) = access {
            outcomes[i] = Some(refused(e));
            continue;
        }
        // A visitor writing to a resolved (within the window) or snoozed conversation
        // reopens it once this batch has committed.
        if m.from.role == Role::Visitor
            && conv.is_some_and(|c| c.status == "resolved" || c.status == "snoozed")
        {
            wake.push((tenant, m.conv, m.from.id));
        }
        match first_of.entry((m.conv, m.from.id, m.client_id.as_str())) {
            std::collections::hash_map::Entry::Occupied(first) => repeats.push((i, *first.get())),
            std::collections::hash_map::Entry::Vacant(v) => {
                v.insert(i);
                admitted.push(i);
            }
        }
    }
    let cols = if admitted.is_empty() {
        None
    } else {
        Some(Columns::of(batch, &admitted, &locked)?)
    };
    Ok(Pending {
        tenant,
        admitted,
        repeats,
        cols,
        receipts: ReceiptColumns::of(receipts),
    })
}

impl Pending<'_> {
    /// Records the outcomes of this tenant's sends from its commit statement's rows.
    fn settle(
        self,
        batch: &[NewMessage],
        rows: &[tokio_postgres::Row],
        outcomes: &mut [Option<Outcome>],
    ) -> Result<()> {
        for r in rows {
            let Some(ord) = r.get::<_, Option<i64>>(0) else {
                let support_type: String = r.get(9);
                metrics::histogram!("relaydesk_core_first_response_seconds", "support_type" => support_type)
                    .record(r.get::<_, f64>(10).max(0.0));
                continue;
            };
            let Some(&i) = usize::try_from(ord - 1)
                .ok()
                .and_then(|o| self.admitted.get(o))
            else {
                return Err(Error::Internal(format!("commit returned ordinal {ord}")));
            };
            let m = &batch[i];
            let new: bool = r.get(3);
            let message = if new {
                Message {
                    conv: m.conv,
                    seq: r.get::<_, i64>(1) as u64,
                    msg: r.get(2),
                    from: m.from.clone(),
                    kind: m.kind.clone(),
                    body: m.body.clone(),
                    ts: r.get(8),
                }
            } else {
                let role: String = r.get(4);
                Message {
                    conv: m.conv,
                    seq: r.get::<_, i64>(1) as u64,
                    msg: r.get(2),
                    from: Actor {
                        id: m.from.id,
                        role: Role::parse(&role).unwrap_or(Role::Visitor),
                        name: r.get(5),
                    },
                    kind: r.get(6),
                    body: r.get(7),
                    ts: r.get(8),
                }
            };
            outcomes[i] = Some(Outcome::Committed { message, new });
        }
        for (i, first) in self.repeats {
            outcomes[i] = match &outcomes[first] {
                Some(Outcome::Committed { message, .. }) => Some(Outcome::Committed {
                    message: message.clone(),
                    new: false,
                }),
                other => other.clone(),
            };
        }
        Ok(())
    }
}

fn refused(e: Error) -> Outcome {
    Outcome::Refused {
        code: e.code(),
        message: e.public_message(),
    }
}

/// Locks a tenant's conversations of a batch (statement 1 of a batch). `$2` arrives
/// sorted and deduplicated; each id is one primary-key probe (`LATERAL`), taken in the
/// array's order, so concurrent batches lock in id order and never deadlock, and no plan
/// can trade the probes for a scan of the tenant's conversations. Besides what
/// [`conv_ref`] reads, each row gives what [`COMMIT_SQL`] needs of its conversation
/// ([`Head`]), which the lock keeps as read until the batch commits.
pub const LOCK_SQL: &str = concat!(
    "SELECT l.* FROM unnest($2::uuid[]) AS k(id) CROSS JOIN LATERAL (",
    conv_select!(
        ", c.first_response_at IS NULL, c.support_type, extract(epoch FROM c.created_at)::float8"
    ),
    " WHERE c.tenant_id = $1 AND c.id = k.id FOR NO KEY UPDATE OF c) l"
);

/// What the commit needs of a locked conversation besides its [`ConvRef`] (the rest of
/// a [`LOCK_SQL`] row).
#[derive(Debug, Clone)]
struct Head {
    /// No staff reply yet: the first one stops the first-response clock.
    unanswered: bool,
    support_type: String,
    /// Seconds since the epoch.
    created: f64,
}

/// Dedupes, allocates seqs, inserts, advances `last_seq`, stops first-response clocks
/// and writes `message.created` webhook events, for one tenant's admitted sends
/// (statement 2 of a batch; its conversations are locked by [`LOCK_SQL`], so its
/// snapshot, taken after the lock, sees every committed duplicate, and the `last_seq`
/// each key carries (`$12`, with `$13`–`$15`, read by the lock) is still the true one).
///
/// Every read is driven by the batch's keys: the dedupe probe is a `LATERAL` lookup on
/// a unique index with every column bound, and the update finds its rows by primary
/// key, so a batch costs the same whatever the tenant's history or the statistics say (`tests/history.rs` checks the plans on a tenant with
/// a million unanalyzed messages). The update changes no indexed column (`updated_at`,
/// which orders the conversation list, follows messages at a 10 s resolution), so with
/// the room `conversations`' fill factor leaves on each page it is a HOT update: one
/// heap tuple, no index entries. The keys arrive deduplicated (one per (conversation,
/// sender, client id)). Rows out: one per input (`ord`, 1-based: stored columns when it
/// existed, `new` when inserted now), then one per conversation whose first staff reply
/// this was (`ord` null: support type, seconds since creation).
pub const COMMIT_SQL: &str = "WITH
k AS (
    SELECT * FROM unnest($2::uuid[], $3::uuid[], $4::text[], $5::text[], $6::text[], $7::text[],
                         $8::jsonb[], $9::uuid[], $10::bool[], $12::int8[], $13::bool[],
                         $14::text[], $15::float8[])
           WITH ORDINALITY AS k(conv, sender, role, name, client, kind, body, id, reply, base,
                                unanswered, support_type, conv_created, ord)
),
clock AS (SELECT (extract(epoch FROM now()) * 1000)::int8 AS ms),
found AS (
    SELECT k.ord, m.seq, m.id, m.sender_role, m.sender_name, m.kind, m.body,
           (extract(epoch FROM m.created_at) * 1000)::int8 AS ms
      FROM k CROSS JOIN LATERAL (
           SELECT * FROM messages m
            WHERE m.tenant_id = $1 AND m.conversation_id = k.conv
              AND m.sender_id = k.sender AND m.client_msg_id = k.client) m
),
fresh AS (
    SELECT k.*, k.base + row_number() OVER (PARTITION BY k.conv ORDER BY k.ord) AS seq
      FROM k
     WHERE k.ord NOT IN (SELECT ord FROM found)
),
inserted AS (
    INSERT INTO messages (tenant_id, conversation_id, seq, id, sender_id, sender_role, sender_name,
                          client_msg_id, kind, body, created_at)
    SELECT $1, f.conv, f.seq, f.id, f.sender, f.role, f.name, f.client, f.kind, f.body,
           to_timestamp(clock.ms::float8 / 1000)
      FROM fresh f, clock
),
heads AS (
    SELECT conv, max(seq) AS last_seq, bool_or(reply) AND bool_and(unanswered) AS first_reply,
           min(support_type) AS support_type, min(conv_created) AS conv_created
      FROM fresh GROUP BY conv
),
advanced AS (
    UPDATE conversations c
       SET last_seq = h.last_seq,
           updated_at = CASE WHEN c.updated_at < now() - interval '10 seconds' THEN now()
                             ELSE c.updated_at END,
           first_response_at = CASE WHEN h.first_reply THEN now() ELSE c.first_response_at END
      FROM heads h
     WHERE c.tenant_id = $1 AND c.id = ANY(ARRAY(SELECT conv FROM heads)) AND c.id = h.conv
),
hooks AS (
    INSERT INTO webhook_deliveries (tenant_id, webhook_id, event_id, event, payload)
    SELECT $1, w.id, f.id, $11::text,
           jsonb_build_object('id', f.id, 'event', $11::text, 'tenant', $1::uuid, 'created_at', clock.ms,
             'data', jsonb_build_object(
               'conversation', jsonb_build_object('id', f.conv),
               'message', jsonb_build_object('id', f.id, 'seq', f.seq, 'kind', f.kind, 'body', f.body,
                 'from', jsonb_build_object('id', f.sender, 'role', f.role, 'name', f.name))))
      FROM webhooks w, fresh f, clock
     WHERE w.tenant_id = $1 AND $11::text = ANY(w.events)
)
SELECT f.ord, f.seq, f.id, false AS new, f.sender_role, f.sender_name, f.kind, f.body, f.ms,
       NULL::text AS support_type, NULL::float8 AS waited
  FROM found f
UNION ALL
SELECT f.ord, f.seq, f.id, true, NULL, NULL, NULL, NULL, clock.ms, NULL, NULL
  FROM fresh f, clock
UNION ALL
SELECT NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, h.support_type,
       extract(epoch FROM now())::float8 - h.conv_created
  FROM heads h WHERE h.first_reply";

/// The column arrays of [`COMMIT_SQL`], one element per admitted send.
struct Columns<'a> {
    conv: Vec<Uuid>,
    sender: Vec<Uuid>,
    role: Vec<&'static str>,
    name: Vec<Option<&'a str>>,
    client: Vec<&'a str>,
    kind: Vec<&'a str>,
    body: Vec<&'a Value>,
    /// The new message's id, used only if it is new.
    id: Vec<Uuid>,
    /// Counts as the first response of its conversation (a staff text, not a blast).
    reply: Vec<bool>,
    /// Of the message's conversation, as locked (`last_seq`, then [`Head`]).
    base: Vec<i64>,
    unanswered: Vec<bool>,
    support_type: Vec<String>,
    created: Vec<f64>,
}

impl<'a> Columns<'a> {
    fn of(
        batch: &'a [NewMessage],
        admitted: &[usize],
        locked: &HashMap<Uuid, (ConvRef, Head)>,
    ) -> Result<Self> {
        let n = admitted.len();
        let mut k = Columns {
            conv: Vec::with_capacity(n),
            sender: Vec::with_capacity(n),
            role: Vec::with_capacity(n),
            name: Vec::with_capacity(n),
            client: Vec::with_capacity(n),
            kind: Vec::with_capacity(n),
            body: Vec::with_capacity(n),
            id: Vec::with_capacity(n),
            reply: Vec::with_capacity(n),
            base: Vec::with_capacity(n),
            unanswered: Vec::with_capacity(n),
            support_type: Vec::with_capacity(n),
            created: Vec::with_capacity(n),
        };
        for &i in admitted {
            let m = &batch[i];
            let Some((conv, head)) = locked.get(&m.conv) else {
                return Err(Error::Internal(format!(
                    "conversation {} admitted without its lock",
                    m.conv
                )));
            };
            k.base.push(conv.last_seq);
            k.unanswered.push(head.unanswered);
            k.support_type.push(head.support_type.clone());
            k.created.push(head.created);
            k.conv.push(m.conv);
            k.sender.push(m.from.id);
            k.role.push(m.from.role.as_str());
            k.name.push(m.from.name.as_deref());
            k.client.push(m.client_id.as_str());
            k.kind.push(m.kind.as_str());
            k.body.push(&m.body);
            k.id.push(Uuid::now_v7());
            k.reply
                .push(m.from.role.is_staff() && m.kind == "text" && !m.broadcast);
        }
        Ok(k)
    }
}

/// Messages of a conversation after a seq, in order, at most a limit, notes and
/// suggestions only if `$4` (staff): a range of the primary key.
pub const HISTORY_SQL: &str =
    "SELECT m.sender_id, m.seq, m.id, m.sender_role, m.sender_name, m.kind, m.body,
            (extract(epoch FROM m.created_at) * 1000)::int8
       FROM messages m
      WHERE m.tenant_id = $1 AND m.conversation_id = $2 AND m.seq > $3
        AND ($4 OR m.kind NOT IN ('note', 'suggestion'))
      ORDER BY m.seq
      LIMIT $5";

/// Builds a [`Message`] of `conv` from a row of [`HISTORY_SQL`].
fn message_from_row(conv: Uuid, r: &tokio_postgres::Row) -> Message {
    let at = 0;
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
/// suggestions only for staff; oversize bodies bounded (`relaydesk_shared::input`).
pub async fn history(
    tx: &Transaction<'_>,
    tenant: Uuid,
    conv: Uuid,
    after: u64,
    limit: i64,
    staff: bool,
) -> Result<Vec<Message>> {
    let stmt = tx.prepare_cached(HISTORY_SQL).await?;
    let rows = tx
        .query(
            &stmt,
            &[
                &tenant,
                &conv,
                &(after.min(i64::MAX as u64) as i64),
                &staff,
                &limit,
            ],
        )
        .await?;
    // A body stored before the size limit held on every ingress is read in its bounded
    // form, so no replay frame exceeds what a reader takes.
    Ok(rows
        .iter()
        .map(|r| {
            let mut m = message_from_row(conv, r);
            m.body = relaydesk_shared::input::bounded_body(std::mem::take(&mut m.body));
            m
        })
        .collect())
}

/// A `hello`'s open conversations of staff: those assigned to them (partial index on
/// the assignee).
pub const OPEN_OF_STAFF_SQL: &str = "SELECT assignee_id, id FROM conversations
     WHERE tenant_id = $1 AND assignee_id = ANY($2::uuid[]) AND status = 'assigned'";

/// A `hello`'s open conversations of visitors: their unresolved ones (index on the
/// visitor).
pub const OPEN_OF_VISITORS_SQL: &str = "SELECT visitor_id, id FROM conversations
     WHERE tenant_id = $1 AND visitor_id = ANY($2::uuid[]) AND status <> 'resolved'";

/// The newest seq of each of a tenant's conversations (by primary key).
pub const HEADS_SQL: &str =
    "SELECT id, last_seq FROM conversations WHERE tenant_id = $1 AND id = ANY($2::uuid[])";

/// A cumulative `ack` or a `read` receipt.
#[derive(Debug, Clone)]
pub struct Receipt {
    pub tenant: Uuid,
    pub conv: Uuid,
    pub principal: Uuid,
    pub seq: u64,
    pub read: bool,
}

/// Stores one tenant's receipts; positions only move forward. Receipts for
/// conversations that do not exist in the tenant, or beyond their newest message, are
/// dropped. Conversations are looked up by primary key, one probe per receipt.
pub const RECEIPTS_SQL: &str =
    "INSERT INTO receipts AS r (tenant_id, conversation_id, principal_id, delivered_seq, read_seq)
     SELECT $1, v.c, v.p, max(v.s), max(CASE WHEN v.rd THEN v.s ELSE 0 END)
       FROM unnest($2::uuid[], $3::uuid[], $4::int8[], $5::bool[]) AS v(c, p, s, rd)
       CROSS JOIN LATERAL (SELECT c.last_seq FROM conversations c
                            WHERE c.tenant_id = $1 AND c.id = v.c) c
      WHERE v.s <= c.last_seq
      GROUP BY v.c, v.p
     ON CONFLICT (tenant_id, conversation_id, principal_id) DO UPDATE
        SET delivered_seq = greatest(r.delivered_seq, excluded.delivered_seq),
            read_seq = greatest(r.read_seq, excluded.read_seq),
            updated_at = now()";

/// The column arrays of [`RECEIPTS_SQL`] for one tenant's receipts.
struct ReceiptColumns {
    conv: Vec<Uuid>,
    principal: Vec<Uuid>,
    seq: Vec<i64>,
    read: Vec<bool>,
}

impl ReceiptColumns {
    /// `None` when there are none.
    fn of(rs: &[&Receipt]) -> Option<ReceiptColumns> {
        (!rs.is_empty()).then(|| ReceiptColumns {
            conv: rs.iter().map(|r| r.conv).collect(),
            principal: rs.iter().map(|r| r.principal).collect(),
            seq: rs
                .iter()
                .map(|r| r.seq.min(i64::MAX as u64) as i64)
                .collect(),
            read: rs.iter().map(|r| r.read).collect(),
        })
    }
}
