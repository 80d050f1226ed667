//! Conversation lifecycle over HTTP: assign, transfer, escalate, hand off, resolve,
//! reopen, snooze, join, notes, tags and CSAT; the conversation list, the queue, and
//! the assignment history. The rules live in `lifecycle` and, for who may act, in
//! `access`; these handlers check input.

use std::sync::Arc;

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::Json;
use relaydesk_shared::token::Role;
use serde::Deserialize;
use serde_json::{json, Value};
use utoipa::{IntoParams, ToSchema};
use uuid::Uuid;

use super::conversations::{conversation_from_row, CONVERSATION_COLUMNS};
use super::openapi::{
    AcceptedBody, Assignments, ConversationBody, ConversationList, ErrorBody, QueueBody, TagsBody,
};
use super::{ApiJson, ApiPath, ApiQuery, OptionalJson};
use crate::access::{self, Action};
use crate::auth::Caller;
use crate::db;
use crate::error::{Error, Result};
use crate::lifecycle::{self, By};
use crate::store;
use crate::AppState;

/// The tenant and the performer of an operation.
pub(super) fn by(caller: Caller) -> Result<(Uuid, By)> {
    match caller {
        Caller::Operator => Err(Error::forbidden("the operator token has no tenant")),
        Caller::ApiKey { tenant } => Ok((tenant, By::Tenant)),
        Caller::Agent {
            tenant, id, role, ..
        } => Ok((tenant, By::Staff { id, role })),
        Caller::Visitor { tenant, id } => Ok((tenant, By::Visitor { id })),
    }
}

/// Staff (or the tenant) only: visitors get `forbidden`.
fn staff(caller: Caller) -> Result<(Uuid, By)> {
    let (tenant, by) = by(caller)?;
    if matches!(by, By::Visitor { .. }) {
        return Err(Error::forbidden("needs an agent"));
    }
    Ok((tenant, by))
}

/// The conversation after an operation, as the caller may see it.
async fn answer(state: &AppState, tenant: Uuid, conv: Uuid, by: By) -> Result<Json<Value>> {
    let mut client = state.pool.get().await?;
    let tx = db::tenant_tx(&mut client, tenant).await?;
    let staff = !matches!(by, By::Visitor { .. });
    let conversation = super::conversations::conversation_json(&tx, tenant, conv, staff).await?;
    tx.commit().await?;
    Ok(Json(json!({ "conversation": conversation })))
}

#[derive(Deserialize, ToSchema)]
pub struct AssignRequest {
    agent_id: Uuid,
}

/// `POST /v1/conversations/{id}/assign`: a supervisor assigns to anyone online with free
/// capacity; an agent may take a queued conversation for themself.
#[utoipa::path(post, path = "/v1/conversations/{id}/assign", request_body = AssignRequest, security(("bearer" = [])),
    params(("id" = Uuid, Path, description = "conversation id")),
    responses((status = 200, body = ConversationBody), (status = 409, body = ErrorBody), (status = 404, body = ErrorBody), (status = 400, body = ErrorBody), (status = 403, body = ErrorBody)))]
pub async fn assign(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    ApiPath(id): ApiPath<Uuid>,
    ApiJson(req): ApiJson<AssignRequest>,
) -> Result<Json<Value>> {
    let (tenant, by) = by(caller)?;
    lifecycle::assign(&state, tenant, id, req.agent_id, by).await?;
    answer(&state, tenant, id, by).await
}

#[derive(Deserialize, ToSchema)]
pub struct TransferRequest {
    agent_id: Uuid,
    #[serde(default)]
    #[schema(max_length = 500)]
    reason: Option<String>,
}

/// `POST /v1/conversations/{id}/transfer`: to another agent (online, with free capacity).
#[utoipa::path(post, path = "/v1/conversations/{id}/transfer", request_body = TransferRequest, security(("bearer" = [])),
    params(("id" = Uuid, Path, description = "conversation id")),
    responses((status = 200, body = ConversationBody), (status = 409, body = ErrorBody), (status = 404, body = ErrorBody), (status = 400, body = ErrorBody), (status = 403, body = ErrorBody)))]
pub async fn transfer(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    ApiPath(id): ApiPath<Uuid>,
    ApiJson(req): ApiJson<TransferRequest>,
) -> Result<Json<Value>> {
    let (tenant, by) = by(caller)?;
    let reason = bounded(req.reason.as_deref(), "reason", 500)?;
    lifecycle::transfer(&state, tenant, id, req.agent_id, reason, by).await?;
    answer(&state, tenant, id, by).await
}

#[derive(Deserialize, ToSchema)]
pub struct EscalateRequest {
    /// Target support type; the current one's escalation target when absent.
    #[serde(default)]
    support_type: Option<String>,
    #[schema(min_length = 1, max_length = 500, pattern = r"\S")]
    reason: String,
}

/// `POST /v1/conversations/{id}/escalate`: to another support type or tier, with a reason.
#[utoipa::path(post, path = "/v1/conversations/{id}/escalate", request_body = EscalateRequest, security(("bearer" = [])),
    params(("id" = Uuid, Path, description = "conversation id")),
    responses((status = 200, body = ConversationBody), (status = 409, body = ErrorBody), (status = 404, body = ErrorBody), (status = 400, body = ErrorBody), (status = 403, body = ErrorBody)))]
pub async fn escalate(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    ApiPath(id): ApiPath<Uuid>,
    ApiJson(req): ApiJson<EscalateRequest>,
) -> Result<Json<Value>> {
    let (tenant, by) = by(caller)?;
    let reason = bounded(Some(&req.reason), "reason", 500)?
        .filter(|r| !r.trim().is_empty())
        .ok_or_else(|| Error::bad_request("reason is required"))?;
    lifecycle::escalate(&state, tenant, id, req.support_type.as_deref(), reason, by).await?;
    answer(&state, tenant, id, by).await
}

#[derive(Deserialize, ToSchema, Default)]
pub struct HandoffRequest {
    #[serde(default)]
    #[schema(max_length = 500)]
    reason: Option<String>,
}

/// `POST /v1/conversations/{id}/handoff` (the bot holding it): reassigned to humans (or
/// queued); the bot's later sends to it are refused `forbidden`. `409` when it is not
/// assigned.
#[utoipa::path(post, path = "/v1/conversations/{id}/handoff", request_body(content = Option<HandoffRequest>, description = "optional"), security(("bearer" = [])),
    params(("id" = Uuid, Path, description = "conversation id")),
    responses((status = 200, body = ConversationBody), (status = 409, body = ErrorBody), (status = 404, body = ErrorBody), (status = 403, body = ErrorBody)))]
pub async fn handoff(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    ApiPath(id): ApiPath<Uuid>,
    OptionalJson(req): OptionalJson<HandoffRequest>,
) -> Result<Json<Value>> {
    let (tenant, by) = by(caller)?;
    let reason = bounded(req.reason.as_deref(), "reason", 500)?;
    lifecycle::handoff(&state, tenant, id, reason, by).await?;
    answer(&state, tenant, id, by).await
}

#[derive(Deserialize, ToSchema)]
pub struct ResolveRequest {
    /// One of the support type's resolution reasons.
    reason: String,
}

/// `POST /v1/conversations/{id}/resolve`.
#[utoipa::path(post, path = "/v1/conversations/{id}/resolve", request_body = ResolveRequest, security(("bearer" = [])),
    params(("id" = Uuid, Path, description = "conversation id")),
    responses((status = 200, body = ConversationBody), (status = 409, body = ErrorBody), (status = 404, body = ErrorBody), (status = 400, body = ErrorBody), (status = 403, body = ErrorBody)))]
pub async fn resolve(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    ApiPath(id): ApiPath<Uuid>,
    ApiJson(req): ApiJson<ResolveRequest>,
) -> Result<Json<Value>> {
    let (tenant, by) = by(caller)?;
    lifecycle::resolve(&state, tenant, id, &req.reason, by).await?;
    answer(&state, tenant, id, by).await
}

/// `POST /v1/conversations/{id}/reopen` (staff; the visitor within the reopen window).
#[utoipa::path(post, path = "/v1/conversations/{id}/reopen", security(("bearer" = [])),
    params(("id" = Uuid, Path, description = "conversation id")),
    responses((status = 200, body = ConversationBody), (status = 409, body = ErrorBody), (status = 404, body = ErrorBody), (status = 403, body = ErrorBody)))]
pub async fn reopen(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    ApiPath(id): ApiPath<Uuid>,
) -> Result<Json<Value>> {
    let (tenant, by) = by(caller)?;
    lifecycle::reopen(&state, tenant, id, by).await?;
    answer(&state, tenant, id, by).await
}

#[derive(Deserialize, ToSchema, Default)]
pub struct SnoozeRequest {
    /// Unix ms, in the future and at most 9999-12-31; until the visitor writes when
    /// absent.
    #[serde(default)]
    #[schema(maximum = 253_402_300_799_999_i64)]
    until: Option<i64>,
}

/// `POST /v1/conversations/{id}/snooze`: set aside until the visitor writes again.
#[utoipa::path(post, path = "/v1/conversations/{id}/snooze", request_body(content = Option<SnoozeRequest>, description = "optional"), security(("bearer" = [])),
    params(("id" = Uuid, Path, description = "conversation id")),
    responses((status = 200, body = ConversationBody), (status = 409, body = ErrorBody), (status = 404, body = ErrorBody), (status = 403, body = ErrorBody)))]
pub async fn snooze(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    ApiPath(id): ApiPath<Uuid>,
    OptionalJson(req): OptionalJson<SnoozeRequest>,
) -> Result<Json<Value>> {
    if req.until.is_some_and(|u| u > super::MAX_UNIX_MS) {
        return Err(Error::bad_request(
            "until must be a Unix ms time no later than 9999-12-31",
        ));
    }
    let (tenant, by) = by(caller)?;
    lifecycle::snooze(&state, tenant, id, req.until, by).await?;
    answer(&state, tenant, id, by).await
}

#[derive(Deserialize, ToSchema)]
pub struct JoinRequest {
    /// The agent joining; the caller when absent.
    #[serde(default)]
    agent_id: Option<Uuid>,
}

/// `POST /v1/conversations/{id}/participants` (supervisors): join without taking over.
#[utoipa::path(post, path = "/v1/conversations/{id}/participants", request_body = JoinRequest, security(("bearer" = [])),
    params(("id" = Uuid, Path, description = "conversation id")),
    responses((status = 200, body = ConversationBody), (status = 404, body = ErrorBody), (status = 403, body = ErrorBody)))]
pub async fn join(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    ApiPath(id): ApiPath<Uuid>,
    ApiJson(req): ApiJson<JoinRequest>,
) -> Result<Json<Value>> {
    let (tenant, by) = by(caller)?;
    let agent = req
        .agent_id
        .or(by.id())
        .ok_or_else(|| Error::bad_request("agent_id is required with the API key"))?;
    lifecycle::join(&state, tenant, id, agent, by).await?;
    answer(&state, tenant, id, by).await
}

#[derive(Deserialize, ToSchema)]
pub struct NoteRequest {
    #[schema(min_length = 1, max_length = 20000, pattern = r"\S")]
    text: String,
}

/// `POST /v1/conversations/{id}/notes`: a private note (agents only, never shown to the
/// visitor). `Idempotency-Key` works as for messages.
#[utoipa::path(post, path = "/v1/conversations/{id}/notes", request_body = NoteRequest, security(("bearer" = [])),
    params(("id" = Uuid, Path, description = "conversation id"), ("Idempotency-Key" = Option<String>, Header, description = "client id of the note", pattern = "^[A-Za-z0-9_-]{1,64}$")),
    responses((status = 201, body = AcceptedBody), (status = 404, body = ErrorBody), (status = 400, body = ErrorBody), (status = 403, body = ErrorBody)))]
pub async fn note(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    ApiPath(id): ApiPath<Uuid>,
    headers: HeaderMap,
    ApiJson(req): ApiJson<NoteRequest>,
) -> Result<(StatusCode, Json<Value>)> {
    let (tenant, by) = by(caller)?;
    let By::Staff { id: me, role } = by else {
        // The same answer as the rule's: 404 for a visitor's look at another's.
        let mut client = state.pool.get().await?;
        let tx = db::tenant_tx(&mut client, tenant).await?;
        let c = store::conv(&tx, tenant, id).await?;
        access::check(&tx, tenant, Action::Note, by, &c.view()).await?;
        return Err(Error::forbidden("notes are written by agents"));
    };
    if req.text.trim().is_empty() || req.text.chars().count() > 20_000 {
        return Err(Error::bad_request("text must be 1-20000 characters"));
    }
    let key = match headers.get("idempotency-key") {
        Some(v) => v
            .to_str()
            .map_err(|_| Error::bad_request("Idempotency-Key must be ASCII"))?
            .to_owned(),
        None => format!("note-{}", Uuid::now_v7().simple()),
    };
    let stored = super::conversations::post_one(
        &state,
        tenant,
        me,
        role,
        id,
        &key,
        "note".into(),
        json!({"text": req.text}),
    )
    .await?;
    Ok((
        StatusCode::CREATED,
        Json(json!(crate::consumer::accepted(&key, &stored))),
    ))
}

#[derive(Deserialize, ToSchema)]
pub struct TagsRequest {
    /// Each 1-64 characters, not all whitespace; a conversation holds at most 100
    /// (more: 409).
    #[serde(default)]
    #[schema(schema_with = super::openapi::tags_schema)]
    add: Vec<String>,
    #[serde(default)]
    #[schema(schema_with = super::openapi::tags_schema)]
    remove: Vec<String>,
}

/// `POST /v1/conversations/{id}/tags`: add and remove tags; answers the tags now set.
#[utoipa::path(post, path = "/v1/conversations/{id}/tags", request_body = TagsRequest, security(("bearer" = [])),
    params(("id" = Uuid, Path, description = "conversation id")),
    responses((status = 200, body = TagsBody), (status = 409, body = ErrorBody, description = "the conversation would hold more than 100 tags"), (status = 404, body = ErrorBody), (status = 400, body = ErrorBody), (status = 403, body = ErrorBody)))]
pub async fn tags(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    ApiPath(id): ApiPath<Uuid>,
    ApiJson(req): ApiJson<TagsRequest>,
) -> Result<Json<Value>> {
    let (tenant, by) = by(caller)?;
    let tags = lifecycle::tag(&state, tenant, id, &req.add, &req.remove, by).await?;
    Ok(Json(json!({ "tags": tags })))
}

#[derive(Deserialize, ToSchema)]
pub struct CsatRequest {
    /// 1 (bad) to 5 (great).
    #[schema(minimum = 1, maximum = 5)]
    score: i32,
    #[serde(default)]
    comment: Option<String>,
}

/// `POST /v1/conversations/{id}/csat` (the visitor, once resolved).
#[utoipa::path(post, path = "/v1/conversations/{id}/csat", request_body = CsatRequest, security(("bearer" = [])),
    params(("id" = Uuid, Path, description = "conversation id")),
    responses((status = 200, body = ConversationBody), (status = 409, body = ErrorBody), (status = 404, body = ErrorBody), (status = 400, body = ErrorBody), (status = 403, body = ErrorBody)))]
pub async fn csat(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    ApiPath(id): ApiPath<Uuid>,
    ApiJson(req): ApiJson<CsatRequest>,
) -> Result<Json<Value>> {
    let (tenant, by) = by(caller)?;
    lifecycle::csat(&state, tenant, id, req.score, req.comment.as_deref(), by).await?;
    answer(&state, tenant, id, by).await
}

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ListQuery {
    #[serde(default)]
    #[param(nullable = false, schema_with = super::openapi::conversation_status_schema)]
    status: Option<String>,
    /// Only this agent's (`me`: the caller's): an agent id or `me`.
    #[serde(default)]
    #[param(
        nullable = false,
        pattern = "^(me|[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12})$"
    )]
    assignee: Option<String>,
    #[serde(default)]
    #[param(nullable = false)]
    support_type: Option<String>,
    #[serde(default)]
    #[param(nullable = false)]
    visitor_id: Option<Uuid>,
    /// 1-200, default 50.
    #[serde(default)]
    #[param(minimum = 1, maximum = 200, nullable = false)]
    limit: Option<i64>,
    /// `next_cursor` of the previous page.
    #[serde(default)]
    #[param(
        nullable = false,
        pattern = "^[0-9]{1,17}_[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$"
    )]
    cursor: Option<String>,
}

/// `GET /v1/conversations`: newest activity first, paginated. Visitors see their own;
/// agents theirs, those they take part in, and the queue; supervisors everything.
#[utoipa::path(get, path = "/v1/conversations", security(("bearer" = [])), params(ListQuery),
    responses((status = 200, body = ConversationList), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody)))]
pub async fn list(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    ApiQuery(q): ApiQuery<ListQuery>,
) -> Result<Json<Value>> {
    let (tenant, by) = by(caller)?;
    let limit = q.limit.unwrap_or(50);
    if !(1..=200).contains(&limit) {
        return Err(Error::bad_request("limit must be 1-200"));
    }
    if let Some(s) = &q.status {
        if !matches!(s.as_str(), "queued" | "assigned" | "resolved" | "snoozed") {
            return Err(Error::bad_request(
                "status must be queued, assigned, resolved or snoozed",
            ));
        }
    }
    let assignee: Option<Uuid> = match q.assignee.as_deref() {
        None => None,
        Some("me") => Some(
            by.id()
                .ok_or_else(|| Error::bad_request("`me` needs an agent"))?,
        ),
        Some(a) => Some(
            Uuid::try_parse(a)
                .map_err(|_| Error::bad_request("assignee must be an agent id or me"))?,
        ),
    };
    let cursor = q.cursor.as_deref().map(super::parse_cursor).transpose()?;
    // Who may see what (`access`, the read rule): a visitor only theirs; an agent what
    // it takes part in and the queue of its support types; a bot what it takes part in.
    let (only_visitor, only_agent) = match by {
        By::Visitor { id } => (Some(id), None),
        By::Staff { id, role } if !role.is_supervisor() => (None, Some(id)),
        _ => (None, None),
    };
    let queue_visible = match by {
        By::Staff {
            role: Role::Agent, ..
        } => format!(
            "(c.status = 'queued' AND {})",
            access::eligible_sql("$1", "$6")
        ),
        _ => "false".to_owned(),
    };
    let visitor = only_visitor.or(q.visitor_id);
    let (cursor_ms, cursor_id) = cursor.unzip();
    let sql = format!(
        "SELECT {CONVERSATION_COLUMNS}
           FROM conversations c
          WHERE c.tenant_id = $1
            AND ($2::text IS NULL OR c.status = $2)
            AND ($3::uuid IS NULL OR c.assignee_id = $3)
            AND ($4::text IS NULL OR c.support_type = $4)
            AND ($5::uuid IS NULL OR c.visitor_id = $5)
            AND ($6::uuid IS NULL OR {queue_visible} OR c.assignee_id = $6
                 OR EXISTS (SELECT 1 FROM participants p WHERE p.tenant_id = c.tenant_id
                             AND p.conversation_id = c.id AND p.agent_id = $6 AND p.left_at IS NULL))
            AND ($7::int8 IS NULL
                 OR (c.updated_at, c.id) < (timestamptz 'epoch' + $7::int8 * interval '1 microsecond', $8::uuid))
          ORDER BY c.updated_at DESC, c.id DESC
          LIMIT $9"
    );
    let mut client = state.pool.get().await?;
    let tx = db::tenant_tx(&mut client, tenant).await?;
    let rows = tx
        .query(
            &sql,
            &[
                &tenant,
                &q.status,
                &assignee,
                &q.support_type,
                &visitor,
                &only_agent,
                &cursor_ms,
                &cursor_id,
                &(limit + 1),
            ],
        )
        .await?;
    tx.commit().await?;
    let staff = !matches!(by, By::Visitor { .. });
    let more = rows.len() as i64 > limit;
    let page = &rows[..rows.len().min(limit as usize)];
    let next = more
        .then(|| page.last())
        .flatten()
        .map(|r| format!("{}_{}", r.get::<_, i64>(18), r.get::<_, Uuid>(0)));
    let conversations: Vec<Value> = page
        .iter()
        .map(|r| conversation_from_row(r, staff))
        .collect();
    Ok(Json(
        json!({ "conversations": conversations, "next_cursor": next }),
    ))
}

/// `GET /v1/queue` (staff): queued conversations in the order they will be assigned
/// (priority, then waiting longest), and depth and longest wait per support type. An
/// agent sees the conversations of the support types it may take (the read rule of
/// `access`); supervisors and admins all of them.
#[utoipa::path(get, path = "/v1/queue", security(("bearer" = [])),
    responses((status = 200, body = QueueBody), (status = 403, body = ErrorBody)))]
pub async fn queue(State(state): State<Arc<AppState>>, caller: Caller) -> Result<Json<Value>> {
    let (tenant, by) = staff(caller)?;
    let only: Option<Uuid> = match by {
        By::Staff { id, role } if !role.is_supervisor() => Some(id),
        _ => None,
    };
    let mut client = state.pool.get().await?;
    let tx = db::tenant_tx(&mut client, tenant).await?;
    let rows = tx
        .query(
            &format!(
                "SELECT {CONVERSATION_COLUMNS} FROM conversations c
                  WHERE c.tenant_id = $1 AND c.status = 'queued'
                    AND ($2::uuid IS NULL OR {})
                  ORDER BY c.priority DESC, c.queued_at, c.id LIMIT 500",
                access::eligible_sql("$1", "$2")
            ),
            &[&tenant, &only],
        )
        .await?;
    let stats = tx
        .query(
            "SELECT s.key, count(c.id),
                    coalesce(extract(epoch FROM now() - min(c.queued_at)) * 1000, 0)::int8
               FROM support_types s
               LEFT JOIN conversations c ON c.tenant_id = s.tenant_id AND c.support_type = s.key
                                        AND c.status = 'queued'
              WHERE s.tenant_id = $1
              GROUP BY s.key ORDER BY s.key",
            &[&tenant],
        )
        .await?;
    tx.commit().await?;
    let conversations: Vec<Value> = rows
        .iter()
        .map(|r| conversation_from_row(r, true))
        .collect();
    let support_types: Vec<Value> = stats
        .iter()
        .map(|r| json!({"key": r.get::<_, String>(0), "depth": r.get::<_, i64>(1), "oldest_wait_ms": r.get::<_, i64>(2)}))
        .collect();
    Ok(Json(
        json!({ "conversations": conversations, "support_types": support_types }),
    ))
}

/// `GET /v1/conversations/{id}/assignments` (staff): every routing decision and manual
/// change, oldest first, with the candidates considered and why each was skipped.
#[utoipa::path(get, path = "/v1/conversations/{id}/assignments", security(("bearer" = [])),
    params(("id" = Uuid, Path, description = "conversation id")),
    responses((status = 200, body = Assignments), (status = 404, body = ErrorBody), (status = 403, body = ErrorBody)))]
pub async fn assignments(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    ApiPath(id): ApiPath<Uuid>,
) -> Result<Json<Value>> {
    let (tenant, by) = by(caller)?;
    let mut client = state.pool.get().await?;
    let tx = db::tenant_tx(&mut client, tenant).await?;
    let c = store::conv(&tx, tenant, id).await?;
    access::check(&tx, tenant, Action::Assignments, by, &c.view()).await?;
    let rows = tx
        .query(
            "SELECT id, (extract(epoch FROM at) * 1000)::int8, action, strategy, agent_id, actor_id, reason, candidates
               FROM assignments WHERE tenant_id = $1 AND conversation_id = $2 ORDER BY id",
            &[&tenant, &id],
        )
        .await?;
    tx.commit().await?;
    let list: Vec<Value> = rows
        .iter()
        .map(|r| {
            json!({
                "id": r.get::<_, Uuid>(0), "at": r.get::<_, i64>(1), "action": r.get::<_, String>(2),
                "strategy": r.get::<_, Option<String>>(3), "agent": r.get::<_, Option<Uuid>>(4),
                "actor": r.get::<_, Option<Uuid>>(5), "reason": r.get::<_, Option<String>>(6),
                "candidates": r.get::<_, Value>(7),
            })
        })
        .collect();
    Ok(Json(json!({ "assignments": list })))
}

fn bounded<'a>(s: Option<&'a str>, name: &str, max: usize) -> Result<Option<&'a str>> {
    match s {
        Some(v) if v.chars().count() > max => Err(Error::bad_request(format!(
            "{name} must be at most {max} characters"
        ))),
        other => Ok(other),
    }
}
