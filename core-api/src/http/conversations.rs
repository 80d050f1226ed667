//! Conversations and their messages over HTTP, including the REST fallback for sending.

use std::sync::Arc;

use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::Json;
use bytes::Bytes;
use relaydesk_shared::bus::Egress;
use relaydesk_shared::token::Role;
use relaydesk_shared::wire::{Actor, ConvEvent, ServerFrame};
use serde::Deserialize;
use serde_json::{json, Value};
use utoipa::{IntoParams, ToSchema};
use uuid::Uuid;

use super::openapi::{AcceptedBody, ConversationBody, ErrorBody, Messages};
use super::ApiJson;
use crate::auth::Caller;
use crate::consumer::accepted;
use crate::db;
use crate::error::{Error, Result};
use crate::fanout::Out;
use crate::store::{self, NewMessage, Outcome};
use crate::AppState;

#[derive(Deserialize, ToSchema)]
pub struct NewConversation {
    #[serde(default)]
    support_type: Option<String>,
    #[serde(default)]
    subject: Option<String>,
    #[serde(default)]
    visitor_id: Option<Uuid>,
}

/// `POST /v1/conversations` (visitor token, or API key with `visitor_id`): creates the
/// conversation and assigns it to an online agent with free capacity, if any.
#[utoipa::path(post, path = "/v1/conversations", request_body = NewConversation, security(("bearer" = [])),
    responses((status = 201, body = ConversationBody), (status = 404, body = ErrorBody), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody)))]
pub async fn create(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    ApiJson(req): ApiJson<NewConversation>,
) -> Result<(StatusCode, Json<Value>)> {
    let (tenant, visitor) = match (caller, req.visitor_id) {
        (Caller::Visitor { tenant, id }, _) => (tenant, id),
        (Caller::ApiKey { tenant }, Some(v)) => (tenant, v),
        (Caller::ApiKey { .. }, None) => {
            return Err(Error::bad_request("visitor_id is required with an API key"))
        }
        _ => return Err(Error::forbidden("needs a visitor token or the API key")),
    };
    let support_type = req.support_type.unwrap_or_else(|| "general".into());
    let id = Uuid::new_v4();
    let mut client = state.pool.get().await?;
    let tx = db::tenant_tx(&mut client, tenant).await?;
    if tx
        .query_opt(
            "SELECT 1 FROM visitors WHERE tenant_id = $1 AND id = $2",
            &[&tenant, &visitor],
        )
        .await?
        .is_none()
    {
        return Err(Error::not_found("visitor"));
    }
    if tx
        .query_opt(
            "SELECT 1 FROM support_types WHERE tenant_id = $1 AND key = $2",
            &[&tenant, &support_type],
        )
        .await?
        .is_none()
    {
        return Err(Error::not_found("support type"));
    }
    // The agent row lock serializes capacity decisions for that agent.
    let assignee: Option<Uuid> = tx
        .query_opt(
            "SELECT a.id FROM agents a
              WHERE a.tenant_id = $1 AND a.status = 'online'
                AND a.max_concurrent > (SELECT count(*) FROM conversations c
                                         WHERE c.tenant_id = a.tenant_id AND c.assignee_id = a.id
                                           AND c.status = 'assigned')
              ORDER BY random() LIMIT 1
              FOR UPDATE OF a",
            &[&tenant],
        )
        .await?
        .map(|r| r.get(0));
    let status = if assignee.is_some() {
        "assigned"
    } else {
        "queued"
    };
    tx.execute(
        "INSERT INTO conversations (tenant_id, id, visitor_id, support_type, subject, status, assignee_id)
         VALUES ($1, $2, $3, $4, $5, $6, $7)",
        &[&tenant, &id, &visitor, &support_type, &req.subject, &status, &assignee],
    )
    .await?;
    tx.commit().await?;
    drop(client);

    let mut targets = vec![(visitor, ConvEvent::Created)];
    if let Some(agent) = assignee {
        targets.push((agent, ConvEvent::Assigned));
    }
    if let Err(e) = auto_subscribe(&state, tenant, id, status, assignee, &targets).await {
        // The conversation exists; clients that missed the event find it on reconnect.
        tracing::warn!(error = %e, conv = %id, "could not notify connected participants");
    }
    let conversation = json!({
        "id": id, "status": status, "assignee": assignee, "support_type": support_type,
        "subject": req.subject, "visitor_id": visitor, "tags": [], "last_seq": 0,
    });
    Ok((
        StatusCode::CREATED,
        Json(json!({ "conversation": conversation })),
    ))
}

/// Subscribes every connection of each principal to `conv`, live from its head, and sends
/// each the `conv` event. The edges are registered before the head is read, so nothing
/// committed in between is missed.
async fn auto_subscribe(
    state: &AppState,
    tenant: Uuid,
    conv: Uuid,
    status: &str,
    assignee: Option<Uuid>,
    targets: &[(Uuid, ConvEvent)],
) -> Result<()> {
    let keys: Vec<String> = targets
        .iter()
        .map(|(p, _)| state.keys.principal_edges(tenant, *p))
        .collect();
    let edges = state.fanout.live_edges(&keys).await?;
    let registrations: Vec<(Uuid, Uuid, String)> = edges
        .iter()
        .flatten()
        .map(|e| (tenant, conv, e.clone()))
        .collect();
    if registrations.is_empty() {
        return Ok(());
    }
    state.fanout.register_conv_edges(&registrations).await?;
    let mut client = state.pool.get().await?;
    let tx = db::tenant_tx(&mut client, tenant).await?;
    let head = store::conv(&tx, tenant, conv).await?.last_seq as u64;
    tx.commit().await?;
    let mut outs = Vec::new();
    for ((principal, event), edges) in targets.iter().zip(edges) {
        let frame = ServerFrame::Conv {
            conv,
            event: *event,
            status: Some(status.to_owned()),
            assignee,
        };
        let frame = Bytes::from(frame.to_json());
        for edge in edges {
            outs.push(Out {
                edge,
                header: Egress::AutoSub {
                    tenant,
                    principal: *principal,
                    conv,
                    head,
                },
                frame: frame.clone(),
            });
        }
    }
    state.fanout.publish(&outs).await
}

/// Who reads: the tenant, and the principal the access rule applies to (`None`: the
/// tenant's own backend, which sees everything).
fn reader(caller: Caller) -> Result<(Uuid, Option<(Uuid, Role)>)> {
    match caller {
        Caller::Operator => Err(Error::forbidden("the operator token has no tenant")),
        Caller::ApiKey { tenant } => Ok((tenant, None)),
        Caller::Agent { tenant, id, role } => Ok((tenant, Some((id, role)))),
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
    Path(id): Path<Uuid>,
) -> Result<Json<Value>> {
    let (tenant, who) = reader(caller)?;
    let mut client = state.pool.get().await?;
    let tx = db::tenant_tx(&mut client, tenant).await?;
    let c = store::conv(&tx, tenant, id).await?;
    if let Some((principal, role)) = who {
        store::check_access(&c, principal, role)?;
    }
    let row = tx
        .query_one(
            "SELECT support_type, subject, (extract(epoch FROM created_at) * 1000)::int8
               FROM conversations WHERE tenant_id = $1 AND id = $2",
            &[&tenant, &id],
        )
        .await?;
    tx.commit().await?;
    let conversation = json!({
        "id": c.id, "status": c.status, "assignee": c.assignee_id, "support_type": row.get::<_, String>(0),
        "subject": row.get::<_, Option<String>>(1), "visitor_id": c.visitor_id, "tags": [],
        "last_seq": c.last_seq, "created_at": row.get::<_, i64>(2),
    });
    Ok(Json(json!({ "conversation": conversation })))
}

#[derive(Deserialize, IntoParams)]
pub struct Page {
    #[serde(default)]
    after: u64,
    #[serde(default = "default_limit")]
    limit: i64,
}

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
    Path(id): Path<Uuid>,
    Query(page): Query<Page>,
) -> Result<Json<Value>> {
    let (tenant, who) = reader(caller)?;
    let limit = page.limit.clamp(1, 1000);
    let mut client = state.pool.get().await?;
    let tx = db::tenant_tx(&mut client, tenant).await?;
    let c = store::conv(&tx, tenant, id).await?;
    if let Some((principal, role)) = who {
        store::check_access(&c, principal, role)?;
    }
    let staff = who.is_none_or(|(_, role)| role.is_staff());
    let messages = store::history(&tx, tenant, id, page.after, limit, staff).await?;
    tx.commit().await?;
    Ok(Json(json!({ "messages": messages })))
}

#[derive(Deserialize, ToSchema)]
pub struct PostMessage {
    #[serde(default = "default_kind")]
    kind: String,
    body: Value,
}

fn default_kind() -> String {
    "text".into()
}

/// `POST /v1/conversations/{id}/messages` with `Idempotency-Key`: the REST fallback. The
/// same commit path as the wire `send`; the same key again gets the same answer.
#[utoipa::path(post, path = "/v1/conversations/{id}/messages", request_body = PostMessage, security(("bearer" = [])),
    params(("id" = Uuid, Path, description = "conversation id"), ("Idempotency-Key" = String, Header, description = "the client message id")),
    responses((status = 201, body = AcceptedBody), (status = 404, body = ErrorBody), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody)))]
pub async fn post_message(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    Path(id): Path<Uuid>,
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
    let name = principal_name(&state, tenant, principal, role).await?;
    let message = NewMessage {
        tenant,
        from: Actor {
            id: principal,
            role,
            name,
        },
        conv: id,
        client_id: key.to_owned(),
        kind: req.kind,
        body: req.body,
    };
    let outcome = store::commit_sends(&state.pool, std::slice::from_ref(&message))
        .await?
        .pop();
    match outcome {
        Some(Outcome::Committed {
            message: stored, ..
        }) => {
            let outs = state.fanout.deliveries(&[(tenant, &stored)]).await?;
            if let Err(e) = state.fanout.publish(&outs).await {
                // Committed: recipients that miss it live get it when they resume.
                tracing::warn!(error = %e, "could not publish a REST message live");
            }
            Ok((StatusCode::CREATED, Json(json!(accepted(key, &stored)))))
        }
        Some(Outcome::Refused { code, message }) => Err(Error::Client { code, message }),
        None => Err(Error::Internal("no outcome".into())),
    }
}

async fn principal_name(
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
