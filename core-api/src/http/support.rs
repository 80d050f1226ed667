//! Support types (how each kind of conversation is routed and closed) and teams.

use std::sync::Arc;

use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Value};
use utoipa::ToSchema;
use uuid::Uuid;

use super::openapi::{ErrorBody, SupportTypeBody, SupportTypeList, TeamBody, TeamList};
use super::{ApiJson, ApiPath};
use crate::auth::Caller;
use crate::db;
use crate::error::{Error, Result};
use crate::{lifecycle, AppState};

#[derive(Deserialize, ToSchema)]
pub struct SupportTypeRequest {
    /// `[a-z0-9_-]{1,64}`; taken from the path on update.
    #[serde(default)]
    #[schema(pattern = "^[a-z0-9_-]{1,64}$")]
    key: Option<String>,
    #[schema(min_length = 1, max_length = 200, pattern = r"\S")]
    name: String,
    /// capacity when absent.
    #[serde(default)]
    #[schema(schema_with = super::openapi::routing_or_null_schema)]
    routing: Option<String>,
    #[serde(default)]
    prefer_previous_agent: Option<bool>,
    #[serde(default)]
    #[schema(schema_with = super::openapi::reasons_schema)]
    resolution_reasons: Option<Vec<String>>,
    /// Eligible agents; with `teams` absent too, every human agent of the tenant.
    #[serde(default)]
    agents: Option<Vec<Uuid>>,
    #[serde(default)]
    teams: Option<Vec<Uuid>>,
    /// Queue priority of its conversations (higher first).
    #[serde(default)]
    #[schema(minimum = -100, maximum = 100)]
    priority: Option<i32>,
    #[serde(default)]
    tier: Option<i32>,
    /// A visitor's message reopens a resolved conversation within this window.
    #[serde(default)]
    #[schema(minimum = 0)]
    reopen_window_secs: Option<i32>,
    /// Where `escalate` sends its conversations by default.
    #[serde(default)]
    escalation_target: Option<String>,
    /// Opening hours, e.g. `{"tz":"Europe/Paris","mon":["09:00","18:00"]}` (shown to widgets).
    #[serde(default)]
    #[schema(value_type = Option<Object>)]
    business_hours: Option<Value>,
    /// A bot that takes new conversations first and hands off to humans.
    #[serde(default)]
    bot_id: Option<Uuid>,
}

fn valid_key(k: &str) -> bool {
    (1..=64).contains(&k.len())
        && k.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-')
}

const ST_COLUMNS: &str = "s.key, s.name, s.routing, s.prefer_previous_agent, s.resolution_reasons,
    s.priority, s.tier, s.reopen_window_secs, s.escalation_target, s.business_hours, s.bot_id,
    ARRAY(SELECT agent_id FROM support_type_agents a WHERE a.tenant_id = s.tenant_id AND a.support_type = s.key ORDER BY agent_id),
    ARRAY(SELECT team_id FROM support_type_teams t WHERE t.tenant_id = s.tenant_id AND t.support_type = s.key ORDER BY team_id)";

fn st_json(r: &tokio_postgres::Row) -> Value {
    json!({
        "key": r.get::<_, String>(0), "name": r.get::<_, String>(1), "routing": r.get::<_, String>(2),
        "prefer_previous_agent": r.get::<_, bool>(3), "resolution_reasons": r.get::<_, Vec<String>>(4),
        "priority": r.get::<_, i32>(5), "tier": r.get::<_, i32>(6), "reopen_window_secs": r.get::<_, i32>(7),
        "escalation_target": r.get::<_, Option<String>>(8), "business_hours": r.get::<_, Option<Value>>(9),
        "bot_id": r.get::<_, Option<Uuid>>(10), "agents": r.get::<_, Vec<Uuid>>(11), "teams": r.get::<_, Vec<Uuid>>(12),
    })
}

/// `GET /v1/support-types` (any staff).
#[utoipa::path(get, path = "/v1/support-types", security(("bearer" = [])),
    responses((status = 200, body = SupportTypeList), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody)))]
pub async fn list(State(state): State<Arc<AppState>>, caller: Caller) -> Result<Json<Value>> {
    let tenant = staff_tenant(caller)?;
    let mut client = state.pool.get().await?;
    let tx = db::tenant_tx(&mut client, tenant).await?;
    let rows = tx
        .query(
            &format!(
                "SELECT {ST_COLUMNS} FROM support_types s WHERE s.tenant_id = $1 ORDER BY s.key"
            ),
            &[&tenant],
        )
        .await?;
    tx.commit().await?;
    Ok(Json(
        json!({ "support_types": rows.iter().map(st_json).collect::<Vec<_>>() }),
    ))
}

fn staff_tenant(caller: Caller) -> Result<Uuid> {
    match caller {
        Caller::ApiKey { tenant } | Caller::Agent { tenant, .. } => Ok(tenant),
        _ => Err(Error::forbidden("needs an agent or the API key")),
    }
}

/// `POST /v1/support-types` (API key or admin): creates one.
#[utoipa::path(post, path = "/v1/support-types", request_body = SupportTypeRequest, security(("bearer" = [])),
    responses((status = 201, body = SupportTypeBody), (status = 409, body = ErrorBody), (status = 404, body = ErrorBody), (status = 400, body = ErrorBody), (status = 403, body = ErrorBody)))]
pub async fn create(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    ApiJson(req): ApiJson<SupportTypeRequest>,
) -> Result<(StatusCode, Json<Value>)> {
    let tenant = caller.tenant_admin()?;
    let key = req
        .key
        .clone()
        .ok_or_else(|| Error::bad_request("key is required"))?;
    let v = save(&state, tenant, &key, &req, true).await?;
    Ok((StatusCode::CREATED, Json(json!({ "support_type": v }))))
}

/// `PUT /v1/support-types/{key}` (API key or admin): replaces its settings; fields left
/// out keep their values.
#[utoipa::path(put, path = "/v1/support-types/{key}", request_body = SupportTypeRequest, security(("bearer" = [])),
    params(("key" = String, Path, description = "support type key")),
    responses((status = 200, body = SupportTypeBody), (status = 404, body = ErrorBody), (status = 400, body = ErrorBody), (status = 403, body = ErrorBody)))]
pub async fn update(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    ApiPath(key): ApiPath<String>,
    ApiJson(req): ApiJson<SupportTypeRequest>,
) -> Result<Json<Value>> {
    let tenant = caller.tenant_admin()?;
    let v = save(&state, tenant, &key, &req, false).await?;
    // New eligible agents may take queued conversations now.
    lifecycle::capacity_changed(&state, tenant).await;
    Ok(Json(json!({ "support_type": v })))
}

async fn save(
    state: &AppState,
    tenant: Uuid,
    key: &str,
    req: &SupportTypeRequest,
    create: bool,
) -> Result<Value> {
    if !valid_key(key) {
        return Err(Error::bad_request(
            "key must be 1-64 characters of [a-z0-9_-]",
        ));
    }
    if !super::valid_name(&req.name) {
        return Err(Error::bad_request("name must be 1-200 characters"));
    }
    let name = req.name.trim();
    if let Some(r) = &req.routing {
        if crate::routing::Strategy::parse(r).is_none() {
            return Err(Error::bad_request(
                "routing must be round_robin or capacity",
            ));
        }
    }
    if let Some(reasons) = &req.resolution_reasons {
        if reasons.is_empty() || reasons.len() > 50 || reasons.iter().any(|r| !valid_key(r)) {
            return Err(Error::bad_request(
                "resolution_reasons must be 1-50 keys of [a-z0-9_-]",
            ));
        }
    }
    if req.priority.is_some_and(|p| !(-100..=100).contains(&p)) {
        return Err(Error::bad_request("priority must be -100..100"));
    }
    if req.reopen_window_secs.is_some_and(|w| w < 0) {
        return Err(Error::bad_request("reopen_window_secs must be >= 0"));
    }
    if req.business_hours.as_ref().is_some_and(|b| !b.is_object()) {
        return Err(Error::bad_request("business_hours must be an object"));
    }
    let mut client = state.pool.get().await?;
    let tx = db::tenant_tx(&mut client, tenant).await?;
    if let Some(target) = &req.escalation_target {
        let found = tx
            .query_opt(
                "SELECT 1 FROM support_types WHERE tenant_id = $1 AND key = $2",
                &[&tenant, target],
            )
            .await?;
        if found.is_none() || target == key {
            return Err(Error::bad_request(
                "escalation_target must be another existing support type",
            ));
        }
    }
    if let Some(bot) = req.bot_id {
        let kind: Option<String> = tx
            .query_opt(
                "SELECT kind FROM agents WHERE tenant_id = $1 AND id = $2",
                &[&tenant, &bot],
            )
            .await?
            .map(|r| r.get(0));
        if kind.as_deref() != Some("bot") {
            return Err(Error::bad_request("bot_id must be a bot of the tenant"));
        }
    }
    let routing = req.routing.clone();
    let changed = if create {
        tx.execute(
            "INSERT INTO support_types (tenant_id, key, name, routing, prefer_previous_agent, resolution_reasons,
                                        priority, tier, reopen_window_secs, escalation_target, business_hours, bot_id)
             VALUES ($1, $2, $3, coalesce($4, 'capacity'), coalesce($5, true), coalesce($6, ARRAY['solved']),
                     coalesce($7, 0), coalesce($8, 1), coalesce($9, 604800), $10, $11, $12)
             ON CONFLICT (tenant_id, key) DO NOTHING",
            &[&tenant, &key, &name, &routing, &req.prefer_previous_agent, &req.resolution_reasons,
              &req.priority, &req.tier, &req.reopen_window_secs, &req.escalation_target, &req.business_hours, &req.bot_id],
        )
        .await?
    } else {
        tx.execute(
            "UPDATE support_types SET name = $3, routing = coalesce($4, routing),
                    prefer_previous_agent = coalesce($5, prefer_previous_agent),
                    resolution_reasons = coalesce($6, resolution_reasons), priority = coalesce($7, priority),
                    tier = coalesce($8, tier), reopen_window_secs = coalesce($9, reopen_window_secs),
                    escalation_target = coalesce($10, escalation_target),
                    business_hours = coalesce($11, business_hours), bot_id = coalesce($12, bot_id)
              WHERE tenant_id = $1 AND key = $2",
            &[&tenant, &key, &name, &routing, &req.prefer_previous_agent, &req.resolution_reasons,
              &req.priority, &req.tier, &req.reopen_window_secs, &req.escalation_target, &req.business_hours, &req.bot_id],
        )
        .await?
    };
    if changed == 0 {
        return Err(if create {
            Error::client(
                relaydesk_shared::ErrorCode::Conflict,
                "a support type with this key exists",
            )
        } else {
            Error::not_found("support type")
        });
    }
    if let Some(agents) = &req.agents {
        let known: i64 = tx
            .query_one(
                "SELECT count(*) FROM agents WHERE tenant_id = $1 AND id = ANY($2)",
                &[&tenant, agents],
            )
            .await?
            .get(0);
        let mut unique = agents.clone();
        unique.sort();
        unique.dedup();
        if known != unique.len() as i64 {
            // The support type exists: a 404 would say it does not.
            return Err(Error::bad_request("agents must be agents of the tenant"));
        }
        tx.execute(
            "DELETE FROM support_type_agents WHERE tenant_id = $1 AND support_type = $2",
            &[&tenant, &key],
        )
        .await?;
        tx.execute(
            "INSERT INTO support_type_agents (tenant_id, support_type, agent_id)
             SELECT $1, $2, a FROM unnest($3::uuid[]) AS a",
            &[&tenant, &key, &unique],
        )
        .await?;
    }
    if let Some(teams) = &req.teams {
        let mut unique = teams.clone();
        unique.sort();
        unique.dedup();
        let known: i64 = tx
            .query_one(
                "SELECT count(*) FROM teams WHERE tenant_id = $1 AND id = ANY($2)",
                &[&tenant, &unique],
            )
            .await?
            .get(0);
        if known != unique.len() as i64 {
            return Err(Error::bad_request("teams must be teams of the tenant"));
        }
        tx.execute(
            "DELETE FROM support_type_teams WHERE tenant_id = $1 AND support_type = $2",
            &[&tenant, &key],
        )
        .await?;
        tx.execute(
            "INSERT INTO support_type_teams (tenant_id, support_type, team_id)
             SELECT $1, $2, t FROM unnest($3::uuid[]) AS t",
            &[&tenant, &key, &unique],
        )
        .await?;
    }
    let row = tx
        .query_one(
            &format!(
                "SELECT {ST_COLUMNS} FROM support_types s WHERE s.tenant_id = $1 AND s.key = $2"
            ),
            &[&tenant, &key],
        )
        .await?;
    tx.commit().await?;
    Ok(st_json(&row))
}

#[derive(Deserialize, ToSchema)]
pub struct TeamRequest {
    #[schema(min_length = 1, max_length = 200, pattern = r"\S")]
    name: String,
    #[serde(default)]
    members: Vec<Uuid>,
}

/// `POST /v1/teams` (API key or admin).
#[utoipa::path(post, path = "/v1/teams", request_body = TeamRequest, security(("bearer" = [])),
    responses((status = 201, body = TeamBody), (status = 409, body = ErrorBody), (status = 404, body = ErrorBody), (status = 400, body = ErrorBody), (status = 403, body = ErrorBody)))]
pub async fn create_team(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    ApiJson(req): ApiJson<TeamRequest>,
) -> Result<(StatusCode, Json<Value>)> {
    let tenant = caller.tenant_admin()?;
    if !super::valid_name(&req.name) {
        return Err(Error::bad_request("name must be 1-200 characters"));
    }
    let name = req.name.trim();
    let id = Uuid::new_v4();
    let mut client = state.pool.get().await?;
    let tx = db::tenant_tx(&mut client, tenant).await?;
    let inserted = tx
        .execute(
            "INSERT INTO teams (tenant_id, id, name) VALUES ($1, $2, $3) ON CONFLICT (tenant_id, name) DO NOTHING",
            &[&tenant, &id, &name],
        )
        .await?;
    if inserted == 0 {
        return Err(Error::client(
            relaydesk_shared::ErrorCode::Conflict,
            "a team with this name exists",
        ));
    }
    let members = set_members(&tx, tenant, id, &req.members).await?;
    tx.commit().await?;
    Ok((
        StatusCode::CREATED,
        Json(json!({"team": {"id": id, "name": name, "members": members}})),
    ))
}

#[derive(Deserialize, ToSchema)]
pub struct MembersRequest {
    members: Vec<Uuid>,
}

/// `PUT /v1/teams/{id}/members` (API key or admin): replaces the members.
#[utoipa::path(put, path = "/v1/teams/{id}/members", request_body = MembersRequest, security(("bearer" = [])),
    params(("id" = Uuid, Path, description = "team id")),
    responses((status = 200, body = TeamBody), (status = 404, body = ErrorBody), (status = 400, body = ErrorBody), (status = 403, body = ErrorBody)))]
pub async fn set_team_members(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    ApiPath(id): ApiPath<Uuid>,
    ApiJson(req): ApiJson<MembersRequest>,
) -> Result<Json<Value>> {
    let tenant = caller.tenant_admin()?;
    let mut client = state.pool.get().await?;
    let tx = db::tenant_tx(&mut client, tenant).await?;
    let name: String = tx
        .query_opt(
            "SELECT name FROM teams WHERE tenant_id = $1 AND id = $2 FOR UPDATE",
            &[&tenant, &id],
        )
        .await?
        .ok_or_else(|| Error::not_found("team"))?
        .get(0);
    tx.execute(
        "DELETE FROM team_members WHERE tenant_id = $1 AND team_id = $2",
        &[&tenant, &id],
    )
    .await?;
    let members = set_members(&tx, tenant, id, &req.members).await?;
    tx.commit().await?;
    drop(client);
    lifecycle::capacity_changed(&state, tenant).await;
    Ok(Json(
        json!({"team": {"id": id, "name": name, "members": members}}),
    ))
}

async fn set_members(
    tx: &deadpool_postgres::Transaction<'_>,
    tenant: Uuid,
    team: Uuid,
    members: &[Uuid],
) -> Result<Vec<Uuid>> {
    let mut unique = members.to_vec();
    unique.sort();
    unique.dedup();
    let inserted = tx
        .execute(
            "INSERT INTO team_members (tenant_id, team_id, agent_id)
             SELECT $1, $2, a.id FROM agents a WHERE a.tenant_id = $1 AND a.id = ANY($3)",
            &[&tenant, &team, &unique],
        )
        .await?;
    if inserted != unique.len() as u64 {
        // The team exists: a 404 would say it does not.
        return Err(Error::bad_request("members must be agents of the tenant"));
    }
    Ok(unique)
}

/// `GET /v1/teams` (any staff).
#[utoipa::path(get, path = "/v1/teams", security(("bearer" = [])),
    responses((status = 200, body = TeamList), (status = 403, body = ErrorBody)))]
pub async fn list_teams(State(state): State<Arc<AppState>>, caller: Caller) -> Result<Json<Value>> {
    let tenant = staff_tenant(caller)?;
    let mut client = state.pool.get().await?;
    let tx = db::tenant_tx(&mut client, tenant).await?;
    let rows = tx
        .query(
            "SELECT t.id, t.name, ARRAY(SELECT m.agent_id FROM team_members m
                                        WHERE m.tenant_id = t.tenant_id AND m.team_id = t.id ORDER BY m.agent_id)
               FROM teams t WHERE t.tenant_id = $1 ORDER BY t.name",
            &[&tenant],
        )
        .await?;
    tx.commit().await?;
    let teams: Vec<Value> = rows
        .iter()
        .map(|r| json!({"id": r.get::<_, Uuid>(0), "name": r.get::<_, String>(1), "members": r.get::<_, Vec<Uuid>>(2)}))
        .collect();
    Ok(Json(json!({ "teams": teams })))
}
