//! Conversations and their messages over HTTP, including the REST fallback for sending.

use std::sync::Arc;

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::Json;
use relaydesk_shared::token::Role;
use relaydesk_shared::wire::Actor;
use relaydesk_shared::{input, ErrorCode};
use serde::Deserialize;
use serde_json::{json, Value};
use utoipa::{IntoParams, ToSchema};
use uuid::Uuid;

use super::openapi::{AcceptedBody, ConversationBody, ErrorBody, Messages};
use super::{ApiJson, ApiPath, ApiQuery};
use crate::access::Action;
use crate::auth::Caller;
use crate::consumer::accepted;
use crate::db;
use crate::error::{Error, Result};
use crate::store::{self, NewMessage, Outcome};
use crate::AppState;
use crate::{events, lifecycle};

#[derive(Deserialize, ToSchema)]
pub struct NewConversation {
    /// A support type key; `general` when absent.
    #[serde(default)]
    support_type: Option<String>,
    #[serde(default)]
    #[schema(max_length = 500)]
    subject: Option<String>,
    /// Required with the API key: whose conversation it is.
    #[serde(default)]
    visitor_id: Option<Uuid>,
    /// Queue priority (higher first); the support type's when absent.
    #[serde(default)]
    #[schema(minimum = -100, maximum = 100)]
    priority: Option<i32>,
}

/// `POST /v1/conversations` (visitor token, or API key with `visitor_id`): creates the
/// conversation and routes it by its support type's strategy (or queues it).
#[utoipa::path(post, path = "/v1/conversations", request_body = NewConversation, security(("bearer" = [])),
    responses((status = 201, body = ConversationBody), (status = 404, body = ErrorBody), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody)))]
pub async fn create(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    ApiJson(req): ApiJson<NewConversation>,
) -> Result<(StatusCode, Json<Value>)> {
    let (tenant, visitor, staff) = match (caller, req.visitor_id) {
        (Caller::Visitor { tenant, id }, _) => (tenant, id, false),
        (Caller::ApiKey { tenant }, Some(v)) => (tenant, v, true),
        (Caller::ApiKey { .. }, None) => {
            return Err(Error::bad_request("visitor_id is required with an API key"))
        }
        _ => return Err(Error::forbidden("needs a visitor token or the API key")),
    };
    if req
        .subject
        .as_ref()
        .is_some_and(|s| s.chars().count() > 500)
    {
        return Err(Error::bad_request("subject must be at most 500 characters"));
    }
    if req.priority.is_some_and(|p| !(-100..=100).contains(&p)) {
        return Err(Error::bad_request("priority must be -100..100"));
    }
    let support_type = req.support_type.unwrap_or_else(|| "general".into());
    let created = lifecycle::create(
        &state,
        tenant,
        visitor,
        &support_type,
        req.subject.as_deref(),
        req.priority,
    )
    .await?;
    events::publish(&state, &created.changes).await;
    // As `GET /v1/conversations/{id}` shows it to the same caller.
    let id = created.conversation["id"]
        .as_str()
        .and_then(|id| Uuid::try_parse(id).ok())
        .ok_or_else(|| Error::Internal("a created conversation without an id".into()))?;
    let mut client = state.pool.get().await?;
    let tx = db::tenant_tx(&mut client, tenant).await?;
    let conversation = conversation_json(&tx, tenant, id, staff).await?;
    tx.commit().await?;
    Ok((
        StatusCode::CREATED,
        Json(json!({ "conversation": conversation })),
    ))
}

/// Who reads: the tenant, and the principal the access rule applies to (`None`: the
/// tenant's own backend, which sees everything).
fn reader(caller: Caller) -> Result<(Uuid, Option<(Uuid, Role)>)> {
    match caller {
        Caller::Operator => Err(Error::forbidden("the operator token has no tenant")),
        Caller::ApiKey { tenant } => Ok((tenant, None)),
        Caller::Agent {
            tenant, id, role, ..
        } => Ok((tenant, Some((id, role)))),
        Caller::Visitor { tenant, id } => Ok((tenant, Some((id, Role::Visitor)))),
    }
}

/// `GET /v1/conversations/{id}`.
#[utoipa::path(get, path = "/v1/conversations/{id}", security(("bearer" = [])),
    params(("id" = Uuid, Path, description = "conversation id")),
    responses((status = 200, body = ConversationBody), (status = 404, body = ErrorBody), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody)))]
pub async fn get(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    ApiPath(id): ApiPath<Uuid>,
) -> Result<Json<Value>> {
    let (tenant, who) = reader(caller)?;
    let mut client = state.pool.get().await?;
    let tx = db::tenant_tx(&mut client, tenant).await?;
    let c = store::conv(&tx, tenant, id).await?;
    if let Some((principal, role)) = who {
        store::check_access(&tx, tenant, &c, Action::Read, principal, role).await?;
    }
    let conversation =
        conversation_json(&tx, tenant, id, who.is_none_or(|(_, r)| r.is_staff())).await?;
    tx.commit().await?;
    Ok(Json(json!({ "conversation": conversation })))
}

/// The columns of a conversation's JSON (table alias `c`), in [`conversation_from_row`]'s order.
pub(super) const CONVERSATION_COLUMNS: &str =
    "c.id, c.status, c.assignee_id, c.support_type, c.subject, c.visitor_id,
    c.tags, c.last_seq, (extract(epoch FROM c.created_at) * 1000)::int8, c.priority,
    c.resolution_reason, (extract(epoch FROM c.resolved_at) * 1000)::int8,
    (extract(epoch FROM c.first_response_at) * 1000)::int8, c.csat_score, c.csat_comment,
    (extract(epoch FROM c.queued_at) * 1000)::int8, (extract(epoch FROM c.updated_at) * 1000)::int8,
    ARRAY(SELECT p.agent_id FROM participants p
           WHERE p.tenant_id = c.tenant_id AND p.conversation_id = c.id AND p.left_at IS NULL),
    (extract(epoch FROM c.updated_at) * 1000000)::int8";

/// A conversation as the API shows it; `staff` adds what visitors do not see.
pub(super) fn conversation_from_row(r: &tokio_postgres::Row, staff: bool) -> Value {
    let mut v = json!({
        "id": r.get::<_, Uuid>(0), "status": r.get::<_, String>(1), "assignee": r.get::<_, Option<Uuid>>(2),
        "support_type": r.get::<_, String>(3), "subject": r.get::<_, Option<String>>(4),
        "visitor_id": r.get::<_, Uuid>(5), "last_seq": r.get::<_, i64>(7), "created_at": r.get::<_, i64>(8),
        "resolution_reason": r.get::<_, Option<String>>(10), "resolved_at": r.get::<_, Option<i64>>(11),
        "csat": r.get::<_, Option<i32>>(13).map(|s| json!({"score": s, "comment": r.get::<_, Option<String>>(14)})),
        "updated_at": r.get::<_, i64>(16),
    });
    if staff {
        v["tags"] = json!(r.get::<_, Vec<String>>(6));
        v["priority"] = json!(r.get::<_, i32>(9));
        v["first_response_at"] = json!(r.get::<_, Option<i64>>(12));
        v["queued_at"] = json!(r.get::<_, Option<i64>>(15));
        v["participants"] = json!(r.get::<_, Vec<Uuid>>(17));
    } else {
        v["tags"] = json!([]);
    }
    v
}

pub(super) async fn conversation_json(
    tx: &deadpool_postgres::Transaction<'_>,
    tenant: Uuid,
    id: Uuid,
    staff: bool,
) -> Result<Value> {
    let row = tx
        .query_opt(
            &format!("SELECT {CONVERSATION_COLUMNS} FROM conversations c WHERE c.tenant_id = $1 AND c.id = $2"),
            &[&tenant, &id],
        )
        .await?
        .ok_or_else(|| Error::not_found("conversation"))?;
    Ok(conversation_from_row(&row, staff))
}

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct Page {
    /// Messages with a greater seq.
    #[serde(default)]
    #[param(minimum = 0, maximum = 9_223_372_036_854_775_807_i64)]
    after: u64,
    /// At most this many messages, default 100; below 1 counts as 1, above 1000 as 1000.
    #[serde(default = "default_limit")]
    limit: i64,
    /// Long-poll: with nothing after `after`, wait up to this many seconds (more than 25
    /// counts as 25) for a message before answering an empty list. The REST fallback of
    /// clients that cannot hold a WebSocket.
    #[serde(default)]
    #[param(minimum = 0)]
    wait: u64,
}

/// Longest long-poll.
const MAX_WAIT: std::time::Duration = std::time::Duration::from_secs(25);

fn default_limit() -> i64 {
    100
}

/// `GET /v1/conversations/{id}/messages?after=&limit=`: in seq order; no notes for visitors.
#[utoipa::path(get, path = "/v1/conversations/{id}/messages", security(("bearer" = [])),
    params(("id" = Uuid, Path, description = "conversation id"), Page),
    responses((status = 200, body = Messages), (status = 404, body = ErrorBody), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody)))]
pub async fn list_messages(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    ApiPath(id): ApiPath<Uuid>,
    ApiQuery(page): ApiQuery<Page>,
) -> Result<Json<Value>> {
    let (tenant, who) = reader(caller)?;
    if i64::try_from(page.after).is_err() {
        return Err(Error::bad_request("after is past the largest seq"));
    }
    let limit = page.limit.clamp(1, 1000);
    let staff = who.is_none_or(|(_, role)| role.is_staff());
    let deadline =
        tokio::time::Instant::now() + std::time::Duration::from_secs(page.wait).min(MAX_WAIT);
    let mut pause = std::time::Duration::from_millis(100);
    loop {
        let mut client = state.pool.get().await?;
        let tx = db::tenant_tx(&mut client, tenant).await?;
        let c = store::conv(&tx, tenant, id).await?;
        if let Some((principal, role)) = who {
            store::check_access(&tx, tenant, &c, Action::ReadMessages, principal, role).await?;
        }
        // Only messages this reader may see count: a note must not end a visitor's wait
        // with an empty answer, so the wait goes on until a visible one is there.
        let messages = if c.last_seq as u64 > page.after {
            store::history(&tx, tenant, id, page.after, limit, staff).await?
        } else {
            Vec::new()
        };
        tx.commit().await?;
        drop(client);
        if !messages.is_empty() || tokio::time::Instant::now() >= deadline {
            return Ok(Json(json!({ "messages": messages })));
        }
        // No connection is held while waiting.
        tokio::time::sleep(pause.min(deadline - tokio::time::Instant::now())).await;
        pause = (pause * 2).min(std::time::Duration::from_secs(1));
    }
}

#[derive(Deserialize, ToSchema)]
pub struct PostMessage {
    #[serde(default = "default_kind")]
    kind: String,
    #[schema(schema_with = super::openapi::message_body_schema)]
    body: Value,
}

fn default_kind() -> String {
    "text".into()
}

/// `POST /v1/conversations/{id}/messages` with `Idempotency-Key`: the REST fallback. The
/// same commit path as the wire `send`; the same key again gets the same answer.
#[utoipa::path(post, path = "/v1/conversations/{id}/messages", request_body = PostMessage, security(("bearer" = [])),
    params(("id" = Uuid, Path, description = "conversation id"), ("Idempotency-Key" = String, Header, description = "the client message id", pattern = "^[A-Za-z0-9_-]{1,64}$")),
    responses((status = 201, body = AcceptedBody), (status = 404, body = ErrorBody), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody)))]
pub async fn post_message(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    ApiPath(id): ApiPath<Uuid>,
    headers: HeaderMap,
    ApiJson(req): ApiJson<PostMessage>,
) -> Result<(StatusCode, Json<Value>)> {
    let (tenant, who) = reader(caller)?;
    let Some((principal, role)) = who else {
        return Err(Error::forbidden(
            "messages are posted by an agent or a visitor",
        ));
    };
    let key = headers
        .get("idempotency-key")
        .and_then(|v| v.to_str().ok())
        .ok_or_else(|| Error::bad_request("the Idempotency-Key header is required"))?;
    let stored = post_one(&state, tenant, principal, role, id, key, req.kind, req.body).await?;
    Ok((StatusCode::CREATED, Json(json!(accepted(key, &stored)))))
}

/// Commits one message posted over HTTP (a message, a note) by the same path as the wire
/// `send` (and under its size limit), reopens what a visitor's message wakes, and publishes it live.
#[allow(clippy::too_many_arguments)]
pub(super) async fn post_one(
    state: &AppState,
    tenant: Uuid,
    principal: Uuid,
    role: Role,
    conv: Uuid,
    client_id: &str,
    kind: String,
    body: Value,
) -> Result<relaydesk_shared::wire::Message> {
    if !input::body_within_limit(&body) {
        return Err(Error::client(
            ErrorCode::TooLarge,
            format!("message body over {} bytes", input::MAX_MESSAGE_BYTES),
        ));
    }
    let name = principal_name(state, tenant, principal, role).await?;
    let message = NewMessage {
        tenant,
        from: Actor {
            id: principal,
            role,
            name,
        },
        conv,
        client_id: client_id.to_owned(),
        kind,
        body,
        broadcast: false,
    };
    let committed = store::commit_sends(&state.pool, std::slice::from_ref(&message)).await?;
    for (tenant, conv, visitor) in committed.wake {
        lifecycle::wake(state, tenant, conv, visitor).await?;
    }
    match committed.outcomes.into_iter().next() {
        Some(Outcome::Committed {
            message: stored, ..
        }) => {
            let outs = state.fanout.deliveries(&[(tenant, &stored)]).await?;
            if let Err(e) = state.fanout.publish(&outs).await {
                // Committed: recipients that miss it live get it when they resume.
                tracing::warn!(error = %e, "could not publish a posted message live");
            }
            Ok(stored)
        }
        Some(Outcome::Refused { code, message }) => Err(Error::Client { code, message }),
        None => Err(Error::Internal("no outcome".into())),
    }
}

pub(super) async fn principal_name(
    state: &AppState,
    tenant: Uuid,
    id: Uuid,
    role: Role,
) -> Result<Option<String>> {
    let sql = if role.is_staff() {
        "SELECT name FROM agents WHERE tenant_id = $1 AND id = $2"
    } else {
        "SELECT name FROM visitors WHERE tenant_id = $1 AND id = $2"
    };
    let mut client = state.pool.get().await?;
    let tx = db::tenant_tx(&mut client, tenant).await?;
    let name = tx
        .query_opt(sql, &[&tenant, &id])
        .await?
        .and_then(|r| r.get(0));
    tx.commit().await?;
    Ok(name)
}
