//! Tenants, agents, logins, agent status, connection tokens and widget sessions; the
//! credential lifecycle (logout, logout everywhere, password change, deactivation, API
//! keys). Whatever revokes an agent's tokens bumps `agents.credential_version` (or
//! records a logged-out session) in its transaction, then tells the edges
//! ([`crate::revoke`]).

use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::{ConnectInfo, State};
use axum::http::StatusCode;
use axum::Json;
use rand::seq::SliceRandom;
use relaydesk_shared::bus::Revoked;
use relaydesk_shared::token::{Claims, Role, AUD_API, AUD_EDGE};
use serde::Deserialize;
use serde_json::{json, Value};
use utoipa::{IntoParams, ToSchema};
use uuid::Uuid;

use super::openapi::{
    AgentBody, AgentList, ApiKeyCreated, ApiKeyList, ConnectToken, ErrorBody, LoginBody,
    TenantCreated, WidgetSessionBody,
};
use super::{ApiJson, ApiPath, ApiQuery, OptionalJson};
use crate::auth::{self, agent_role, Caller};
use crate::db;
use crate::error::{Error, Result};
use crate::{lifecycle, throttle, AppState};

#[derive(Deserialize, ToSchema)]
pub struct NewTenant {
    #[schema(min_length = 1, max_length = 200, pattern = r"\S")]
    name: String,
}

/// `POST /v1/tenants` (operator): a tenant, its `general` support type and an API key.
#[utoipa::path(post, path = "/v1/tenants", request_body = NewTenant, security(("bearer" = [])),
    responses((status = 201, body = TenantCreated), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody)))]
pub async fn create_tenant(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    ApiJson(req): ApiJson<NewTenant>,
) -> Result<(StatusCode, Json<Value>)> {
    if caller != Caller::Operator {
        return Err(Error::forbidden("needs the operator token"));
    }
    if !super::valid_name(&req.name) {
        return Err(Error::bad_request("name must be 1-200 characters"));
    }
    let name = req.name.trim();
    let id = Uuid::new_v4();
    let site_key = auth::new_site_key(id);
    let identity_secret = auth::random_hex(32);
    let key = auth::new_api_key(id);
    let mut client = state.pool.get().await?;
    let tx = db::tenant_tx(&mut client, id).await?;
    tx.execute(
        "INSERT INTO tenants (id, name, site_key, identity_secret) VALUES ($1, $2, $3, $4)",
        &[&id, &name, &site_key, &identity_secret],
    )
    .await?;
    tx.execute(
        "INSERT INTO api_keys (tenant_id, id, key_hash, prefix) VALUES ($1, $2, $3, $4)",
        &[&id, &Uuid::new_v4(), &key.hash, &key.prefix],
    )
    .await?;
    tx.execute(
        "INSERT INTO support_types (tenant_id, key, name, routing, resolution_reasons)
         VALUES ($1, 'general', 'General', 'capacity', ARRAY['solved'])",
        &[&id],
    )
    .await?;
    tx.commit().await?;
    tracing::info!(tenant = %id, "tenant created");
    Ok((
        StatusCode::CREATED,
        Json(json!({
            "tenant": {"id": id, "name": name, "site_key": site_key, "identity_secret": identity_secret},
            "api_key": key.key,
        })),
    ))
}

#[derive(Deserialize, ToSchema)]
pub struct NewAgent {
    #[schema(min_length = 1, max_length = 200, pattern = r"\S")]
    name: String,
    #[schema(pattern = "@")]
    email: String,
    #[schema(min_length = 8)]
    password: String,
    #[serde(default = "default_role")]
    #[schema(schema_with = super::openapi::role_schema)]
    role: String,
    #[serde(default = "default_kind")]
    #[schema(schema_with = super::openapi::kind_schema)]
    kind: String,
    #[serde(default = "default_max")]
    #[schema(minimum = 0, maximum = 1000)]
    max_concurrent: i32,
}

fn default_role() -> String {
    "agent".into()
}
fn default_kind() -> String {
    "human".into()
}
fn default_max() -> i32 {
    5
}

/// The columns [`agent_from_row`] reads, in its order.
const AGENT_COLUMNS: &str =
    "id, name, email, role, kind, max_concurrent, status, deactivated_at IS NULL";

/// An agent as the API shows it, from [`AGENT_COLUMNS`] (the row's first columns).
fn agent_from_row(r: &tokio_postgres::Row) -> Value {
    json!({"id": r.get::<_, Uuid>(0), "name": r.get::<_, &str>(1), "email": r.get::<_, &str>(2),
           "role": r.get::<_, &str>(3), "kind": r.get::<_, &str>(4),
           "max_concurrent": r.get::<_, i32>(5), "status": r.get::<_, &str>(6),
           "active": r.get::<_, bool>(7)})
}

/// `POST /v1/agents` (API key or admin).
#[utoipa::path(post, path = "/v1/agents", request_body = NewAgent, security(("bearer" = [])),
    responses((status = 201, body = AgentBody), (status = 409, body = ErrorBody), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody)))]
pub async fn create_agent(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    ApiJson(req): ApiJson<NewAgent>,
) -> Result<(StatusCode, Json<Value>)> {
    let tenant = caller.tenant_admin()?;
    if !matches!(req.role.as_str(), "agent" | "supervisor" | "admin") {
        return Err(Error::bad_request(
            "role must be agent, supervisor or admin",
        ));
    }
    if !matches!(req.kind.as_str(), "human" | "bot") {
        return Err(Error::bad_request("kind must be human or bot"));
    }
    if !super::valid_name(&req.name) || !req.email.contains('@') || req.password.chars().count() < 8
    {
        return Err(Error::bad_request(
            "name, a valid email and a password of at least 8 characters are required",
        ));
    }
    if !(0..=1000).contains(&req.max_concurrent) {
        return Err(Error::bad_request("max_concurrent must be 0-1000"));
    }
    let hash = auth::hash_password(req.password.clone()).await?;
    let id = Uuid::new_v4();
    let email = req.email.trim().to_lowercase();
    let mut client = state.pool.get().await?;
    let tx = db::tenant_tx(&mut client, tenant).await?;
    let inserted = tx
        .query_opt(
            &format!(
                "INSERT INTO agents (tenant_id, id, name, email, password_hash, role, kind, max_concurrent)
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8) ON CONFLICT (tenant_id, email) DO NOTHING
                 RETURNING {AGENT_COLUMNS}"
            ),
            &[&tenant, &id, &req.name.trim(), &email, &hash, &req.role, &req.kind, &req.max_concurrent],
        )
        .await?;
    let Some(row) = inserted else {
        return Err(Error::client(
            relaydesk_shared::ErrorCode::Conflict,
            "an agent with this email exists",
        ));
    };
    tx.commit().await?;
    let agent = agent_from_row(&row);
    Ok((StatusCode::CREATED, Json(json!({ "agent": agent }))))
}

#[derive(Deserialize, ToSchema)]
pub struct Login {
    tenant: Uuid,
    email: String,
    password: String,
}

/// `POST /v1/auth/login`: an agent session token. Throttled per account and per source
/// address (the peer's, or behind a trusted proxy the client's: `crate::throttle`): while either is locked out, 429 with `Retry-After`,
/// before the password is looked at. An unknown account costs the same argon2
/// verification as a wrong password and gets the same 401.
#[utoipa::path(post, path = "/v1/auth/login", request_body = Login,
    responses((status = 200, body = LoginBody), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody),
        (status = 429, body = ErrorBody, description = "too many failed logins of this account or from this address",
         headers(("Retry-After" = u64, description = "seconds until the lockout ends")))))]
pub async fn login(
    State(state): State<Arc<AppState>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: axum::http::HeaderMap,
    ApiJson(req): ApiJson<Login>,
) -> Result<Json<Value>> {
    let email = req.email.trim().to_lowercase();
    let forwarded = headers
        .get_all("x-forwarded-for")
        .iter()
        .filter_map(|v| v.to_str().ok());
    let source = throttle::client_address(peer.ip(), forwarded, &state.config.trusted_proxies);
    let subjects = throttle::Subjects::new(state.keys.prefix(), req.tenant, &email, source);
    throttle::check(&state, &subjects).await?;
    let mut client = state.pool.get().await?;
    let tx = db::tenant_tx(&mut client, req.tenant).await?;
    let row = tx
        .query_opt(
            &format!(
                "SELECT {AGENT_COLUMNS}, password_hash, credential_version
                   FROM agents WHERE tenant_id = $1 AND email = $2"
            ),
            &[&req.tenant, &email],
        )
        .await?;
    tx.commit().await?;
    drop(client);
    let hash = row.as_ref().map(|r| r.get::<_, String>(8));
    let valid = auth::verify_password(req.password, hash).await?;
    let row = match row {
        Some(row) if valid => row,
        _ => {
            throttle::failed(&state, &subjects).await?;
            return Err(Error::unauthorized());
        }
    };
    throttle::succeeded(&state, &subjects).await?;
    // A deactivated agent is refused like a wrong password, after the password check.
    if !row.get::<_, bool>(7) {
        return Err(Error::unauthorized());
    }
    let id: Uuid = row.get(0);
    let name: String = row.get(1);
    let role = agent_role(row.get(3), row.get(4));
    let mut claims = Claims::new(
        req.tenant,
        id,
        role,
        AUD_API,
        state.config.session_ttl.as_secs(),
    );
    claims.name = Some(name.clone());
    claims.ver = Some(version_of(&row, 9));
    claims.sid = Some(Uuid::new_v4());
    let token = state.signer.sign(&claims)?;
    let agent = agent_from_row(&row);
    Ok(Json(json!({"token": token, "agent": agent})))
}

/// The credential version in column `idx` of an agent row (never negative: a CHECK).
fn version_of(row: &tokio_postgres::Row, idx: usize) -> u32 {
    u32::try_from(row.get::<_, i32>(idx)).unwrap_or(0)
}

#[derive(Deserialize, ToSchema)]
pub struct Status {
    #[schema(schema_with = super::openapi::status_schema)]
    status: String,
}

/// `PUT /v1/agents/{id}/status` (the agent itself, an admin, or the API key).
#[utoipa::path(put, path = "/v1/agents/{id}/status", request_body = Status, security(("bearer" = [])),
    params(("id" = Uuid, Path, description = "agent id")),
    responses((status = 200, body = AgentBody), (status = 404, body = ErrorBody), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody)))]
pub async fn set_status(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    ApiPath(id): ApiPath<Uuid>,
    ApiJson(req): ApiJson<Status>,
) -> Result<Json<Value>> {
    let tenant = match caller {
        Caller::Agent { tenant, id: me, .. } if me == id => tenant,
        _ => caller.tenant_admin()?,
    };
    if !matches!(req.status.as_str(), "online" | "away" | "offline") {
        return Err(Error::bad_request("status must be online, away or offline"));
    }
    let mut client = state.pool.get().await?;
    let tx = db::tenant_tx(&mut client, tenant).await?;
    let row = tx
        .query_opt(
            &format!(
                "UPDATE agents SET status = $3,
                    status_changed_at = CASE WHEN status = $3 THEN status_changed_at ELSE now() END
              WHERE tenant_id = $1 AND id = $2 AND (deactivated_at IS NULL OR $3 = 'offline')
             RETURNING {AGENT_COLUMNS}"
            ),
            &[&tenant, &id, &req.status],
        )
        .await?;
    let Some(row) = row else {
        return Err(missing_or_deactivated(&tx, tenant, id).await);
    };
    tx.commit().await?;
    drop(client);
    crate::presence::announce(&state, tenant, id, &req.status).await;
    if req.status == "online" {
        lifecycle::capacity_changed(&state, tenant).await;
    }
    let agent = agent_from_row(&row);
    Ok(Json(json!({ "agent": agent })))
}

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct AgentPage {
    /// 1-200, default 100.
    #[serde(default)]
    #[param(minimum = 1, maximum = 200, nullable = false)]
    limit: Option<i64>,
    /// The last agent id of the previous page.
    #[serde(default)]
    #[param(nullable = false)]
    cursor: Option<Uuid>,
}

/// `GET /v1/agents` (supervisors, admins, API key): every agent with status and load.
#[utoipa::path(get, path = "/v1/agents", security(("bearer" = [])), params(AgentPage),
    responses((status = 200, body = AgentList), (status = 400, body = ErrorBody), (status = 403, body = ErrorBody)))]
pub async fn list_agents(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    ApiQuery(page): ApiQuery<AgentPage>,
) -> Result<Json<Value>> {
    let tenant = match caller {
        Caller::Agent { tenant, role, .. } if role.is_supervisor() => tenant,
        _ => caller.tenant_admin()?,
    };
    let limit = page.limit.unwrap_or(100);
    if !(1..=200).contains(&limit) {
        return Err(Error::bad_request("limit must be 1-200"));
    }
    let mut client = state.pool.get().await?;
    let tx = db::tenant_tx(&mut client, tenant).await?;
    let rows = tx
        .query(
            &format!(
                "SELECT {AGENT_COLUMNS}, open_count, (extract(epoch FROM last_assigned_at) * 1000)::int8
               FROM agents WHERE tenant_id = $1 AND ($2::uuid IS NULL OR id > $2)
              ORDER BY id LIMIT $3"
            ),
            &[&tenant, &page.cursor, &(limit + 1)],
        )
        .await?;
    tx.commit().await?;
    let more = rows.len() as i64 > limit;
    let rows = &rows[..rows.len().min(limit as usize)];
    let agents: Vec<Value> = rows
        .iter()
        .map(|r| {
            let mut a = agent_from_row(r);
            a["open_conversations"] = json!(r.get::<_, i32>(8));
            a["last_assigned_at"] = json!(r.get::<_, Option<i64>>(9));
            a
        })
        .collect();
    let next = more
        .then(|| rows.last().map(|r| r.get::<_, Uuid>(0)))
        .flatten();
    Ok(Json(json!({ "agents": agents, "next_cursor": next })))
}

#[derive(Deserialize, ToSchema)]
pub struct AgentUpdate {
    #[serde(default)]
    #[schema(min_length = 1, max_length = 200, pattern = r"\S")]
    name: Option<String>,
    #[serde(default)]
    #[schema(schema_with = super::openapi::role_or_null_schema)]
    role: Option<String>,
    #[serde(default)]
    #[schema(minimum = 0, maximum = 1000)]
    max_concurrent: Option<i32>,
}

/// `PATCH /v1/agents/{id}` (API key or admin): name, role, capacity. Raising capacity
/// lets the agent take queued conversations at once. A role change revokes the agent's
/// earlier tokens (sessions and connections carry the old role).
#[utoipa::path(patch, path = "/v1/agents/{id}", request_body = AgentUpdate, security(("bearer" = [])),
    params(("id" = Uuid, Path, description = "agent id")),
    responses((status = 200, body = AgentBody), (status = 404, body = ErrorBody), (status = 400, body = ErrorBody), (status = 403, body = ErrorBody)))]
pub async fn update_agent(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    ApiPath(id): ApiPath<Uuid>,
    ApiJson(req): ApiJson<AgentUpdate>,
) -> Result<Json<Value>> {
    let tenant = caller.tenant_admin()?;
    if req
        .role
        .as_deref()
        .is_some_and(|r| !matches!(r, "agent" | "supervisor" | "admin"))
    {
        return Err(Error::bad_request(
            "role must be agent, supervisor or admin",
        ));
    }
    if req.max_concurrent.is_some_and(|m| !(0..=1000).contains(&m)) {
        return Err(Error::bad_request("max_concurrent must be 0-1000"));
    }
    if req.name.as_deref().is_some_and(|n| !super::valid_name(n)) {
        return Err(Error::bad_request("name must be 1-200 characters"));
    }
    let name = req.name.as_deref().map(str::trim);
    let mut client = state.pool.get().await?;
    let tx = db::tenant_tx(&mut client, tenant).await?;
    let old: String = tx
        .query_opt(
            "SELECT role FROM agents WHERE tenant_id = $1 AND id = $2 FOR UPDATE",
            &[&tenant, &id],
        )
        .await?
        .ok_or_else(|| Error::not_found("agent"))?
        .get(0);
    let role_changed = req.role.as_deref().is_some_and(|r| r != old);
    let row = tx
        .query_one(
            &format!(
                "UPDATE agents SET name = coalesce($3, name), role = coalesce($4, role),
                    max_concurrent = coalesce($5, max_concurrent)
              WHERE tenant_id = $1 AND id = $2
             RETURNING {AGENT_COLUMNS}"
            ),
            &[&tenant, &id, &name, &req.role, &req.max_concurrent],
        )
        .await?;
    let revoked = if role_changed {
        bump_version(&tx, tenant, id).await?
    } else {
        None
    };
    tx.commit().await?;
    drop(client);
    if let Some(min) = revoked {
        revoke_below(&state, tenant, id, min).await?;
    }
    if req.max_concurrent.is_some() {
        lifecycle::capacity_changed(&state, tenant).await;
    }
    let agent = agent_from_row(&row);
    Ok(Json(json!({ "agent": agent })))
}

#[derive(Deserialize, Default, ToSchema)]
pub struct ConnectTokenRequest {
    #[serde(default)]
    agent_id: Option<Uuid>,
    #[serde(default)]
    origins: Option<Vec<String>>,
}

/// `POST /v1/connect-tokens`: a connection token for the edge.
#[utoipa::path(post, path = "/v1/connect-tokens", request_body(content = Option<ConnectTokenRequest>, description = "optional"), security(("bearer" = [])),
    responses((status = 200, body = ConnectToken), (status = 404, body = ErrorBody), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody)))]
pub async fn connect_token(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    OptionalJson(req): OptionalJson<ConnectTokenRequest>,
) -> Result<Json<Value>> {
    let tenant = caller.tenant()?;
    let (principal, agent, sid) = match (caller, req.agent_id) {
        (Caller::Agent { id, sid, .. }, None) => (id, true, sid),
        (Caller::Visitor { id, .. }, None) => (id, false, None),
        (Caller::ApiKey { .. }, Some(id)) => (id, true, None),
        (Caller::ApiKey { .. }, None) => {
            return Err(Error::bad_request("agent_id is required with an API key"))
        }
        _ => {
            return Err(Error::forbidden(
                "agent_id may be given only with the API key",
            ))
        }
    };
    let mut client = state.pool.get().await?;
    let tx = db::tenant_tx(&mut client, tenant).await?;
    let (role, name, ver) = if agent {
        let row = tx
            .query_opt(
                "SELECT role, kind, name, deactivated_at IS NULL, credential_version
                   FROM agents WHERE tenant_id = $1 AND id = $2",
                &[&tenant, &principal],
            )
            .await?
            .ok_or_else(|| Error::not_found("agent"))?;
        if !row.get::<_, bool>(3) {
            return Err(Error::forbidden("the agent is deactivated"));
        }
        (
            agent_role(row.get(0), row.get(1)),
            row.get::<_, Option<String>>(2),
            Some(version_of(&row, 4)),
        )
    } else {
        let row = tx
            .query_opt(
                "SELECT name FROM visitors WHERE tenant_id = $1 AND id = $2",
                &[&tenant, &principal],
            )
            .await?
            .ok_or_else(|| Error::not_found("visitor"))?;
        (Role::Visitor, row.get::<_, Option<String>>(0), None)
    };
    tx.commit().await?;
    let ids = TokenIds { ver, sid };
    let (token, expires_at) =
        mint_connect_token(&state, tenant, principal, role, name, req.origins, ids)?;
    Ok(Json(
        json!({"token": token, "expires_at": expires_at, "edge_url": edge_url(&state),
               "edge_urls": state.config.edge_urls}),
    ))
}

/// The credential version and session a connection token carries (agents only).
#[derive(Default)]
struct TokenIds {
    ver: Option<u32>,
    sid: Option<Uuid>,
}

fn mint_connect_token(
    state: &AppState,
    tenant: Uuid,
    principal: Uuid,
    role: Role,
    name: Option<String>,
    origins: Option<Vec<String>>,
    ids: TokenIds,
) -> Result<(String, u64)> {
    let mut claims = Claims::new(
        tenant,
        principal,
        role,
        AUD_EDGE,
        state.config.connect_token_ttl.as_secs(),
    );
    claims.name = name;
    claims.origins = origins.filter(|o| !o.is_empty());
    claims.ver = ids.ver;
    claims.sid = ids.sid;
    Ok((state.signer.sign(&claims)?, claims.exp))
}

fn edge_url(state: &AppState) -> String {
    state
        .config
        .edge_urls
        .choose(&mut rand::thread_rng())
        .cloned()
        .unwrap_or_default()
}

#[derive(Deserialize, ToSchema)]
pub struct WidgetSession {
    site_key: String,
    #[serde(default)]
    visitor: Option<VisitorIdentity>,
}

#[derive(Deserialize, ToSchema)]
pub struct VisitorIdentity {
    #[serde(default)]
    external_id: Option<String>,
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    email: Option<String>,
    #[serde(default)]
    hash: Option<String>,
    /// A JSON object: merged into a verified visitor's attributes, or stored for a new
    /// anonymous visitor.
    #[serde(default)]
    attributes: Option<Value>,
}

/// `POST /v1/widget/sessions` (public): a visitor, anonymous or verified by the tenant's
/// identity hash, with an API token and a connection token.
#[utoipa::path(post, path = "/v1/widget/sessions", request_body = WidgetSession,
    responses((status = 201, body = WidgetSessionBody), (status = 404, body = ErrorBody), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody)))]
pub async fn widget_session(
    State(state): State<Arc<AppState>>,
    headers: axum::http::HeaderMap,
    ApiJson(req): ApiJson<WidgetSession>,
) -> Result<(StatusCode, Json<Value>)> {
    let tenant =
        auth::site_key_tenant(&req.site_key).ok_or_else(|| Error::not_found("site key"))?;
    if let Some(a) = req.visitor.as_ref().and_then(|v| v.attributes.as_ref()) {
        super::visitors::attributes_object(a)?;
    }
    let user_agent = headers
        .get(axum::http::header::USER_AGENT)
        .and_then(|v| v.to_str().ok())
        .map(|ua| super::visitors::truncated(ua, super::visitors::MAX_USER_AGENT_CHARS));
    let mut client = state.pool.get().await?;
    let tx = db::tenant_tx(&mut client, tenant).await?;
    let secret: String = tx
        .query_opt(
            "SELECT identity_secret FROM tenants WHERE id = $1 AND site_key = $2",
            &[&tenant, &req.site_key],
        )
        .await?
        .ok_or_else(|| Error::not_found("site key"))?
        .get(0);
    let identity = req.visitor.unwrap_or(VisitorIdentity {
        external_id: None,
        name: None,
        email: None,
        hash: None,
        attributes: None,
    });
    let visitor: Uuid = match identity.external_id.as_deref().filter(|e| !e.is_empty()) {
        Some(external) => {
            let hash = identity.hash.as_deref().unwrap_or("");
            if !auth::identity_hash_valid(&secret, external, hash) {
                return Err(Error::unauthorized());
            }
            // Attributes merge unless the result would pass the limit (then the stored
            // ones stay: a session is never refused for what it would add).
            tx.query_one(
                "INSERT INTO visitors (tenant_id, id, external_id, name, email, verified, attributes, user_agent)
                 VALUES ($1, $2, $3, $4, $5, true, coalesce($6, '{}'::jsonb), $7)
                 ON CONFLICT (tenant_id, external_id) WHERE external_id IS NOT NULL
                 DO UPDATE SET name = coalesce(excluded.name, visitors.name), email = coalesce(excluded.email, visitors.email),
                    attributes = CASE WHEN octet_length((visitors.attributes || excluded.attributes)::text) <= $8
                                      THEN visitors.attributes || excluded.attributes ELSE visitors.attributes END,
                    user_agent = coalesce(excluded.user_agent, visitors.user_agent), last_seen_at = now()
                 RETURNING id",
                &[&tenant, &Uuid::new_v4(), &external, &identity.name, &identity.email,
                  &identity.attributes, &user_agent, &(super::visitors::MAX_ATTRIBUTES_BYTES as i32)],
            )
            .await?
            .get(0)
        }
        None => {
            let id = Uuid::new_v4();
            tx.execute(
                "INSERT INTO visitors (tenant_id, id, name, email, attributes, user_agent)
                 VALUES ($1, $2, $3, $4, coalesce($5, '{}'::jsonb), $6)",
                &[
                    &tenant,
                    &id,
                    &identity.name,
                    &identity.email,
                    &identity.attributes,
                    &user_agent,
                ],
            )
            .await?;
            id
        }
    };
    tx.commit().await?;
    let mut claims = Claims::new(
        tenant,
        visitor,
        Role::Visitor,
        AUD_API,
        state.config.session_ttl.as_secs(),
    );
    claims.name = identity.name.clone();
    let token = state.signer.sign(&claims)?;
    let (connect_token, _) = mint_connect_token(
        &state,
        tenant,
        visitor,
        Role::Visitor,
        identity.name,
        None,
        TokenIds::default(),
    )?;
    Ok((
        StatusCode::CREATED,
        Json(json!({
            "visitor": {"id": visitor},
            "token": token,
            "connect_token": connect_token,
            "edge_url": edge_url(&state),
            "edge_urls": state.config.edge_urls,
        })),
    ))
}

/// Why an agent row was not updated: it does not exist (404) or is deactivated (409).
async fn missing_or_deactivated(
    tx: &tokio_postgres::Transaction<'_>,
    tenant: Uuid,
    id: Uuid,
) -> Error {
    match tx
        .query_opt(
            "SELECT 1 FROM agents WHERE tenant_id = $1 AND id = $2",
            &[&tenant, &id],
        )
        .await
    {
        Ok(Some(_)) => Error::client(
            relaydesk_shared::ErrorCode::Conflict,
            "the agent is deactivated",
        ),
        Ok(None) => Error::not_found("agent"),
        Err(e) => e.into(),
    }
}

/// Tells the edges that every token of the agent below credential version `min` is revoked.
async fn revoke_below(state: &AppState, tenant: Uuid, agent: Uuid, min: u32) -> Result<()> {
    crate::revoke::publish(
        state,
        Revoked::Version {
            tenant,
            principal: agent,
            min,
        },
    )
    .await
}

/// Bumps the agent's credential version in `tx`, so that every token minted before is
/// revoked once `tx` commits; the new version, or `None` if there is no such agent. The
/// one place that changes `credential_version` (a role change, deactivation, a password
/// change, log-out-everywhere).
async fn bump_version(
    tx: &tokio_postgres::Transaction<'_>,
    tenant: Uuid,
    id: Uuid,
) -> Result<Option<u32>> {
    Ok(tx
        .query_opt(
            "UPDATE agents SET credential_version = credential_version + 1
              WHERE tenant_id = $1 AND id = $2
             RETURNING credential_version",
            &[&tenant, &id],
        )
        .await?
        .map(|r| version_of(&r, 0)))
}

/// `POST /v1/auth/logout` (an agent's session token): ends this session. Its token and
/// the connection tokens minted with it stop working; the agent's other sessions go on.
#[utoipa::path(post, path = "/v1/auth/logout", security(("bearer" = [])),
    responses((status = 204, description = "the session is revoked"), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody)))]
pub async fn logout(State(state): State<Arc<AppState>>, caller: Caller) -> Result<StatusCode> {
    let Caller::Agent {
        tenant, id, sid, ..
    } = caller
    else {
        return Err(Error::forbidden("needs an agent's session token"));
    };
    let Some(sid) = sid else {
        return Err(Error::bad_request(
            "this token has no session id: use /v1/auth/logout-all",
        ));
    };
    let until = crate::revoke::until_ms(&state);
    let mut client = state.pool.get().await?;
    let tx = db::tenant_tx(&mut client, tenant).await?;
    tx.execute(
        "INSERT INTO revoked_sessions (tenant_id, sid, expires_at)
         VALUES ($1, $2, to_timestamp($3::float8 / 1000)) ON CONFLICT DO NOTHING",
        &[&tenant, &sid, &(until as f64)],
    )
    .await?;
    tx.commit().await?;
    drop(client);
    crate::revoke::publish(
        &state,
        Revoked::Session {
            tenant,
            principal: id,
            sid,
        },
    )
    .await?;
    Ok(StatusCode::NO_CONTENT)
}

/// `POST /v1/auth/logout-all` (an agent's session token): revokes every token the agent
/// holds, this one included.
#[utoipa::path(post, path = "/v1/auth/logout-all", security(("bearer" = [])),
    responses((status = 204, description = "every token of the agent is revoked"), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody)))]
pub async fn logout_all(State(state): State<Arc<AppState>>, caller: Caller) -> Result<StatusCode> {
    let Caller::Agent { tenant, id, .. } = caller else {
        return Err(Error::forbidden("needs an agent's session token"));
    };
    let mut client = state.pool.get().await?;
    let tx = db::tenant_tx(&mut client, tenant).await?;
    let min = bump_version(&tx, tenant, id)
        .await?
        .ok_or_else(Error::unauthorized)?;
    tx.commit().await?;
    drop(client);
    revoke_below(&state, tenant, id, min).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Deserialize, ToSchema)]
pub struct PasswordChange {
    /// The current password: required when agents change their own.
    #[serde(default)]
    current: Option<String>,
    /// At least 8 characters.
    #[schema(min_length = 8)]
    new: String,
}

/// `PUT /v1/agents/{id}/password`: agents change their own (giving `current`); an admin
/// or the API key sets another agent's. Revokes every token the agent holds.
#[utoipa::path(put, path = "/v1/agents/{id}/password", request_body = PasswordChange, security(("bearer" = [])),
    params(("id" = Uuid, Path, description = "agent id")),
    responses((status = 204, description = "changed; the agent's tokens are revoked"), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub async fn set_password(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    ApiPath(id): ApiPath<Uuid>,
    ApiJson(req): ApiJson<PasswordChange>,
) -> Result<StatusCode> {
    let (tenant, own) = match caller {
        Caller::Agent { tenant, id: me, .. } if me == id => (tenant, true),
        _ => (caller.tenant_admin()?, false),
    };
    if req.new.chars().count() < 8 {
        return Err(Error::bad_request(
            "the new password must have at least 8 characters",
        ));
    }
    if own {
        let Some(current) = req.current else {
            return Err(Error::bad_request("current is required"));
        };
        let mut client = state.pool.get().await?;
        let tx = db::tenant_tx(&mut client, tenant).await?;
        let hash: String = tx
            .query_opt(
                "SELECT password_hash FROM agents WHERE tenant_id = $1 AND id = $2",
                &[&tenant, &id],
            )
            .await?
            .ok_or_else(|| Error::not_found("agent"))?
            .get(0);
        tx.commit().await?;
        if !auth::verify_password(current, Some(hash)).await? {
            return Err(Error::forbidden("the current password is wrong"));
        }
    }
    let hash = auth::hash_password(req.new).await?;
    let mut client = state.pool.get().await?;
    let tx = db::tenant_tx(&mut client, tenant).await?;
    let changed = tx
        .execute(
            "UPDATE agents SET password_hash = $3 WHERE tenant_id = $1 AND id = $2",
            &[&tenant, &id, &hash],
        )
        .await?;
    if changed == 0 {
        return Err(Error::not_found("agent"));
    }
    let min = bump_version(&tx, tenant, id)
        .await?
        .ok_or_else(|| Error::not_found("agent"))?;
    tx.commit().await?;
    drop(client);
    revoke_below(&state, tenant, id, min).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// `POST /v1/agents/{id}/deactivate` (API key or admin): the agent can no longer log in,
/// every token it holds is revoked (its sockets are closed with 4501), it is set offline
/// and receives no new assignments. The conversations assigned to it are routed again in
/// the same transaction (to another eligible agent, or the queue), as a handoff is.
/// Deactivating a deactivated agent changes nothing else.
#[utoipa::path(post, path = "/v1/agents/{id}/deactivate", security(("bearer" = [])),
    params(("id" = Uuid, Path, description = "agent id")),
    responses((status = 200, body = AgentBody), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn deactivate(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    ApiPath(id): ApiPath<Uuid>,
) -> Result<Json<Value>> {
    let tenant = caller.tenant_admin()?;
    let (_, by) = super::actions::by(caller)?;
    let (row, revoked, moved) =
        lifecycle::retrying(|| deactivate_once(&state, tenant, id, by)).await?;
    lifecycle::settle_committed(&state, tenant, &moved).await;
    if let Some(min) = revoked {
        revoke_below(&state, tenant, id, min).await?;
        crate::presence::announce(&state, tenant, id, "offline").await;
        tracing::info!(%tenant, agent = %id, requeued = moved.len(), "agent deactivated");
    }
    Ok(Json(json!({ "agent": agent_from_row(&row) })))
}

/// One attempt of [`deactivate`]'s transaction: the agent's conversations are taken
/// from it first (their rows are locked before the agent's), then the agent is
/// deactivated, then what was assigned to it meanwhile is taken too. Returns the agent,
/// its new credential version if it was active, and the conversations' changes.
async fn deactivate_once(
    state: &AppState,
    tenant: Uuid,
    id: Uuid,
    by: lifecycle::By,
) -> Result<(tokio_postgres::Row, Option<u32>, Vec<crate::events::Change>)> {
    let mut client = state.pool.get().await?;
    let tx = db::tenant_tx(&mut client, tenant).await?;
    let mut moved = lifecycle::release_agent(&tx, tenant, id, by).await?;
    let changed = tx
        .query_opt(
            &format!(
                "UPDATE agents SET deactivated_at = now(), status = 'offline',
                    status_changed_at = CASE WHEN status = 'offline' THEN status_changed_at ELSE now() END
              WHERE tenant_id = $1 AND id = $2 AND deactivated_at IS NULL
             RETURNING {AGENT_COLUMNS}"
            ),
            &[&tenant, &id],
        )
        .await?;
    let (row, revoked) = match changed {
        Some(row) => (row, bump_version(&tx, tenant, id).await?),
        None => (
            tx.query_opt(
                &format!("SELECT {AGENT_COLUMNS} FROM agents WHERE tenant_id = $1 AND id = $2"),
                &[&tenant, &id],
            )
            .await?
            .ok_or_else(|| Error::not_found("agent"))?,
            None,
        ),
    };
    moved.extend(lifecycle::release_agent(&tx, tenant, id, by).await?);
    tx.commit().await?;
    Ok((row, revoked, moved))
}

/// `POST /v1/agents/{id}/activate` (API key or admin): the agent may log in again (it
/// stays offline until it sets its status). The credential version is bumped once more:
/// whatever refused the deactivated agent's tokens (up to its version, see
/// `revoke::refusal`) does not refuse its next ones.
#[utoipa::path(post, path = "/v1/agents/{id}/activate", security(("bearer" = [])),
    params(("id" = Uuid, Path, description = "agent id")),
    responses((status = 200, body = AgentBody), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn activate(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    ApiPath(id): ApiPath<Uuid>,
) -> Result<Json<Value>> {
    let tenant = caller.tenant_admin()?;
    let mut client = state.pool.get().await?;
    let tx = db::tenant_tx(&mut client, tenant).await?;
    let row = tx
        .query_opt(
            &format!(
                "UPDATE agents SET deactivated_at = NULL WHERE tenant_id = $1 AND id = $2
                 RETURNING {AGENT_COLUMNS}"
            ),
            &[&tenant, &id],
        )
        .await?
        .ok_or_else(|| Error::not_found("agent"))?;
    bump_version(&tx, tenant, id).await?;
    tx.commit().await?;
    Ok(Json(json!({ "agent": agent_from_row(&row) })))
}

/// `GET /v1/api-keys` (API key or admin): the tenant's keys, without their secrets.
#[utoipa::path(get, path = "/v1/api-keys", security(("bearer" = [])),
    responses((status = 200, body = ApiKeyList), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody)))]
pub async fn list_api_keys(
    State(state): State<Arc<AppState>>,
    caller: Caller,
) -> Result<Json<Value>> {
    let tenant = caller.tenant_admin()?;
    let mut client = state.pool.get().await?;
    let tx = db::tenant_tx(&mut client, tenant).await?;
    let rows = tx
        .query(
            "SELECT id, (extract(epoch FROM created_at) * 1000)::int8, prefix
               FROM api_keys WHERE tenant_id = $1 ORDER BY created_at, id",
            &[&tenant],
        )
        .await?;
    tx.commit().await?;
    let keys: Vec<Value> = rows.iter().map(api_key_json).collect();
    Ok(Json(json!({ "api_keys": keys })))
}

fn api_key_json(r: &tokio_postgres::Row) -> Value {
    let prefix: String = r.get(2);
    json!({"id": r.get::<_, Uuid>(0), "created_at": r.get::<_, i64>(1),
           "prefix": (!prefix.is_empty()).then_some(prefix)})
}

/// `POST /v1/api-keys` (API key or admin): a new key, shown once in the answer.
#[utoipa::path(post, path = "/v1/api-keys", security(("bearer" = [])),
    responses((status = 201, body = ApiKeyCreated), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody)))]
pub async fn create_api_key(
    State(state): State<Arc<AppState>>,
    caller: Caller,
) -> Result<(StatusCode, Json<Value>)> {
    let tenant = caller.tenant_admin()?;
    let key = auth::new_api_key(tenant);
    let mut client = state.pool.get().await?;
    let tx = db::tenant_tx(&mut client, tenant).await?;
    let row = tx
        .query_one(
            "INSERT INTO api_keys (tenant_id, id, key_hash, prefix) VALUES ($1, $2, $3, $4)
             RETURNING id, (extract(epoch FROM created_at) * 1000)::int8, prefix",
            &[&tenant, &Uuid::new_v4(), &key.hash, &key.prefix],
        )
        .await?;
    tx.commit().await?;
    Ok((
        StatusCode::CREATED,
        Json(json!({"api_key": api_key_json(&row), "key": key.key})),
    ))
}

/// `DELETE /v1/api-keys/{id}` (API key or admin): the key stops working at once (a key
/// may delete itself).
#[utoipa::path(delete, path = "/v1/api-keys/{id}", security(("bearer" = [])),
    params(("id" = Uuid, Path, description = "API key id")),
    responses((status = 204, description = "deleted"), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn delete_api_key(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    ApiPath(id): ApiPath<Uuid>,
) -> Result<StatusCode> {
    let tenant = caller.tenant_admin()?;
    let mut client = state.pool.get().await?;
    let tx = db::tenant_tx(&mut client, tenant).await?;
    let n = tx
        .execute(
            "DELETE FROM api_keys WHERE tenant_id = $1 AND id = $2",
            &[&tenant, &id],
        )
        .await?;
    tx.commit().await?;
    if n == 0 {
        return Err(Error::not_found("API key"));
    }
    Ok(StatusCode::NO_CONTENT)
}

#[cfg(test)]
mod tests {
    /// Every file of core-api's sources, as text.
    fn sources(dir: &std::path::Path, out: &mut Vec<(String, String)>) {
        for entry in std::fs::read_dir(dir).unwrap().flatten() {
            let path = entry.path();
            if path.is_dir() {
                sources(&path, out);
            } else if path.extension().is_some_and(|e| e == "rs") {
                let text = std::fs::read_to_string(&path).unwrap();
                out.push((path.display().to_string(), text));
            }
        }
    }

    #[test]
    fn the_credential_version_is_bumped_in_one_place() {
        let mut files = Vec::new();
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
        sources(&root, &mut files);
        let needle = concat!("credential_version", " = ");
        let places: Vec<&str> = files
            .iter()
            .flat_map(|(path, text)| text.matches(needle).map(move |_| path.as_str()))
            .collect();
        assert_eq!(
            places.len(),
            1,
            "credential_version is written in {places:?}"
        );
        assert!(places[0].ends_with("accounts.rs"));
    }
}
