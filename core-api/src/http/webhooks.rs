//! Webhooks over HTTP (the tenant's API key or an admin): register, list and delete
//! them, and read a webhook's recent deliveries. Sending lives in `crate::webhooks`.

use std::sync::Arc;

use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Value};
use utoipa::{IntoParams, ToSchema};
use uuid::Uuid;

use super::openapi::{ErrorBody, WebhookCreated, WebhookDeliveries, WebhookList};
use super::{ApiJson, ApiPath, ApiQuery};
use crate::auth::Caller;
use crate::db;
use crate::error::{Error, Result};
use crate::events::hook;
use crate::webhook_target;
use crate::AppState;

/// Webhooks a tenant may have.
pub const MAX_WEBHOOKS: i64 = 20;
/// Longest webhook URL.
pub const MAX_URL_LEN: usize = 2048;

#[derive(Deserialize, ToSchema)]
pub struct CreateWebhook {
    /// Where events are POSTed: an `http` or `https` URL whose host is public (a name
    /// is resolved at creation).
    #[schema(max_length = 2048, pattern = "^[Hh][Tt][Tt][Pp][Ss]?://[A-Za-z0-9]")]
    url: String,
    /// The events to send, e.g. `conversation.created`, `message.created`.
    #[schema(schema_with = super::openapi::events_schema)]
    events: Vec<String>,
}

/// The URL, checked: absolute, `http` or `https`, with a host that is not a literal
/// non-public address (unless `allow_private`; names are resolved by [`create`]).
fn valid_url(url: &str, allow_private: bool) -> Result<reqwest::Url> {
    if url.chars().count() > MAX_URL_LEN {
        return Err(Error::bad_request(format!(
            "url must be at most {MAX_URL_LEN} characters"
        )));
    }
    let parsed = reqwest::Url::parse(url.trim())
        .map_err(|e| Error::bad_request(format!("url is invalid: {e}")))?;
    if !matches!(parsed.scheme(), "http" | "https") {
        return Err(Error::bad_request("url must be http or https"));
    }
    match parsed.host_str() {
        Some(host) if !host.is_empty() => {}
        _ => return Err(Error::bad_request("url needs a host")),
    }
    if !allow_private {
        webhook_target::check_literal(&parsed).map_err(refused)?;
    }
    Ok(parsed)
}

fn refused(e: webhook_target::TargetError) -> Error {
    Error::bad_request(format!(
        "url must reach a public address: {e} (WEBHOOK_ALLOW_PRIVATE allows others)"
    ))
}

/// The events, checked against [`hook::ALL`], without repeats, in the order given.
fn valid_events(events: &[String]) -> Result<Vec<String>> {
    if events.is_empty() {
        return Err(Error::bad_request("events must name at least one event"));
    }
    let mut out: Vec<String> = Vec::new();
    for e in events {
        if !hook::ALL.contains(&e.as_str()) {
            return Err(Error::bad_request(format!(
                "unknown event {e:?}; one of: {}",
                hook::ALL.join(", ")
            )));
        }
        if !out.contains(e) {
            out.push(e.clone());
        }
    }
    Ok(out)
}

/// `POST /v1/webhooks`: registers a webhook; its signing secret is in the answer (and
/// only there and in nothing else the API returns). The URL must reach a public address
/// (`crate::webhook_target`): a literal non-public address, or a name resolving to one,
/// is a 400.
#[utoipa::path(post, path = "/v1/webhooks", request_body = CreateWebhook, security(("bearer" = [])),
    responses((status = 201, body = WebhookCreated),
        (status = 400, body = ErrorBody, description = "invalid input, or a url whose host is (or resolves to) a private, loopback, link-local, metadata or other non-public address"),
        (status = 403, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub async fn create(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    ApiJson(req): ApiJson<CreateWebhook>,
) -> Result<(StatusCode, Json<Value>)> {
    let tenant = caller.tenant_admin()?;
    let allow_private = state.config.webhook_allow_private;
    let url = valid_url(&req.url, allow_private)?;
    let events = valid_events(&req.events)?;
    if !allow_private {
        webhook_target::check_at_creation(&url)
            .await
            .map_err(refused)?;
    }
    let url = url.to_string();
    let id = Uuid::now_v7();
    let secret = crate::auth::random_hex(32);
    let mut client = state.pool.get().await?;
    let tx = db::tenant_tx(&mut client, tenant).await?;
    // Serializes concurrent creations of one tenant, so the count below holds.
    tx.execute(
        "SELECT pg_advisory_xact_lock(hashtextextended('relaydesk.webhooks.' || $1::uuid::text, 0))",
        &[&tenant],
    )
    .await?;
    let count: i64 = tx
        .query_one(
            "SELECT count(*) FROM webhooks WHERE tenant_id = $1",
            &[&tenant],
        )
        .await?
        .try_get(0)?;
    if count >= MAX_WEBHOOKS {
        return Err(Error::client(
            relaydesk_shared::ErrorCode::Conflict,
            format!("a tenant has at most {MAX_WEBHOOKS} webhooks"),
        ));
    }
    let row = tx
        .query_one(
            "INSERT INTO webhooks (tenant_id, id, url, events, secret) VALUES ($1, $2, $3, $4, $5)
             RETURNING (extract(epoch FROM created_at) * 1000)::int8",
            &[&tenant, &id, &url, &events, &secret],
        )
        .await?;
    let created_at: i64 = row.try_get(0)?;
    tx.commit().await?;
    let webhook = json!({
        "id": id, "url": url, "events": events, "secret": secret, "created_at": created_at,
    });
    Ok((StatusCode::CREATED, Json(json!({ "webhook": webhook }))))
}

/// `GET /v1/webhooks`: the tenant's webhooks, oldest first, without their secrets.
#[utoipa::path(get, path = "/v1/webhooks", security(("bearer" = [])),
    responses((status = 200, body = WebhookList), (status = 403, body = ErrorBody)))]
pub async fn list(State(state): State<Arc<AppState>>, caller: Caller) -> Result<Json<Value>> {
    let tenant = caller.tenant_admin()?;
    let mut client = state.pool.get().await?;
    let tx = db::tenant_tx(&mut client, tenant).await?;
    let rows = tx
        .query(
            "SELECT id, url, events, (extract(epoch FROM created_at) * 1000)::int8
               FROM webhooks WHERE tenant_id = $1 ORDER BY created_at, id",
            &[&tenant],
        )
        .await?;
    tx.commit().await?;
    let webhooks = rows
        .iter()
        .map(|r| {
            Ok(json!({
                "id": r.try_get::<_, Uuid>(0)?,
                "url": r.try_get::<_, String>(1)?,
                "events": r.try_get::<_, Vec<String>>(2)?,
                "created_at": r.try_get::<_, i64>(3)?,
            }))
        })
        .collect::<Result<Vec<Value>>>()?;
    Ok(Json(json!({ "webhooks": webhooks })))
}

/// `DELETE /v1/webhooks/{id}`: removes the webhook and its undelivered events.
#[utoipa::path(delete, path = "/v1/webhooks/{id}", security(("bearer" = [])),
    params(("id" = Uuid, Path, description = "webhook id")),
    responses((status = 204), (status = 404, body = ErrorBody), (status = 403, body = ErrorBody)))]
pub async fn delete(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    ApiPath(id): ApiPath<Uuid>,
) -> Result<StatusCode> {
    let tenant = caller.tenant_admin()?;
    let mut client = state.pool.get().await?;
    let tx = db::tenant_tx(&mut client, tenant).await?;
    let deleted = tx
        .execute(
            "DELETE FROM webhooks WHERE tenant_id = $1 AND id = $2",
            &[&tenant, &id],
        )
        .await?;
    tx.commit().await?;
    if deleted == 0 {
        return Err(Error::not_found("webhook"));
    }
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct DeliveriesQuery {
    /// 1-200, default 50.
    #[serde(default)]
    #[param(minimum = 1, maximum = 200, nullable = false)]
    limit: Option<i64>,
}

/// `GET /v1/webhooks/{id}/deliveries`: the webhook's most recent events, newest first,
/// with how their delivery went.
#[utoipa::path(get, path = "/v1/webhooks/{id}/deliveries", security(("bearer" = [])),
    params(("id" = Uuid, Path, description = "webhook id"), DeliveriesQuery),
    responses((status = 200, body = WebhookDeliveries), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody), (status = 403, body = ErrorBody)))]
pub async fn deliveries(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    ApiPath(id): ApiPath<Uuid>,
    ApiQuery(q): ApiQuery<DeliveriesQuery>,
) -> Result<Json<Value>> {
    let tenant = caller.tenant_admin()?;
    let limit = q.limit.unwrap_or(50);
    if !(1..=200).contains(&limit) {
        return Err(Error::bad_request("limit must be 1-200"));
    }
    let mut client = state.pool.get().await?;
    let tx = db::tenant_tx(&mut client, tenant).await?;
    let exists = tx
        .query_opt(
            "SELECT 1 FROM webhooks WHERE tenant_id = $1 AND id = $2",
            &[&tenant, &id],
        )
        .await?
        .is_some();
    if !exists {
        return Err(Error::not_found("webhook"));
    }
    let rows = tx
        .query(
            "SELECT event_id, event, attempts, (extract(epoch FROM delivered_at) * 1000)::int8,
                    failed, last_status, last_error,
                    CASE WHEN delivered_at IS NULL AND NOT failed
                         THEN (extract(epoch FROM next_attempt_at) * 1000)::int8 END,
                    (extract(epoch FROM created_at) * 1000)::int8
               FROM webhook_deliveries
              WHERE tenant_id = $1 AND webhook_id = $2
              ORDER BY created_at DESC, event_id DESC
              LIMIT $3",
            &[&tenant, &id, &limit],
        )
        .await?;
    tx.commit().await?;
    let deliveries = rows
        .iter()
        .map(|r| {
            Ok(json!({
                "event_id": r.try_get::<_, Uuid>(0)?,
                "event": r.try_get::<_, String>(1)?,
                "attempts": r.try_get::<_, i32>(2)?,
                "delivered_at": r.try_get::<_, Option<i64>>(3)?,
                "failed": r.try_get::<_, bool>(4)?,
                "last_status": r.try_get::<_, Option<i32>>(5)?,
                "last_error": r.try_get::<_, Option<String>>(6)?,
                "next_attempt_at": r.try_get::<_, Option<i64>>(7)?,
                "created_at": r.try_get::<_, i64>(8)?,
            }))
        })
        .collect::<Result<Vec<Value>>>()?;
    Ok(Json(json!({ "deliveries": deliveries })))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_are_http_or_https_with_a_host() {
        assert!(valid_url("https://hooks.example.com/relaydesk", false).is_ok());
        assert!(valid_url("http://127.0.0.1:9000/x", true).is_ok());
        assert!(valid_url("http://127.0.0.1:9000/x", false).is_err());
        assert!(valid_url("http://[fd00:ec2::254]/x", false).is_err());
        assert!(valid_url("ftp://example.com/", true).is_err());
        assert!(valid_url("not a url", true).is_err());
        assert!(valid_url("/relative", true).is_err());
        assert!(valid_url(&format!("https://e.com/{}", "a".repeat(MAX_URL_LEN)), true).is_err());
    }

    #[test]
    fn events_must_be_known() {
        let ok = valid_events(&["message.created".into(), "message.created".into()]);
        assert_eq!(ok.ok(), Some(vec!["message.created".to_owned()]));
        assert!(valid_events(&[]).is_err());
        assert!(valid_events(&["conversation.exploded".into()]).is_err());
    }
}
