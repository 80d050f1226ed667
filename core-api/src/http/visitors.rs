//! Visitor tracking over HTTP: page views reported by the widget, the visitor profile
//! staff read (attributes, pages, conversations, whether a connection is live), the
//! visitor list, and attributes set by the tenant's backend.
//!
//! "Online" is read from the edges' principal registry (`Keys::principal_edges`): a
//! visitor is online while some edge holds a connection of theirs. PostgreSQL holds no
//! presence, so the online filter of the list checks the registry page by page.

use std::sync::Arc;

use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use deadpool_postgres::Transaction;
use serde::Deserialize;
use serde_json::{json, Value};
use utoipa::{IntoParams, ToSchema};
use uuid::Uuid;

use super::openapi::{ErrorBody, VisitorBody, VisitorList};
use super::{ApiJson, ApiPath, ApiQuery, OptionalJson};
use crate::auth::Caller;
use crate::db;
use crate::error::{Error, Result};
use crate::AppState;

/// Largest attributes object accepted in one write, and largest a visitor may hold.
pub(super) const MAX_ATTRIBUTES_BYTES: usize = 16 * 1024;
/// Page views shown in a visitor's profile.
const PAGES_SHOWN: i64 = 50;
/// Conversations shown in a visitor's profile.
const CONVERSATIONS_SHOWN: i64 = 100;
/// Most visitors examined per list request when filtering on `online`.
const ONLINE_SCAN_BUDGET: usize = 5_000;
/// Longest `User-Agent` kept.
pub(super) const MAX_USER_AGENT_CHARS: usize = 512;

/// Checks an attributes value: a JSON object of at most [`MAX_ATTRIBUTES_BYTES`].
pub(super) fn attributes_object(v: &Value) -> Result<()> {
    if !v.is_object() {
        return Err(Error::bad_request("attributes must be a JSON object"));
    }
    if v.to_string().len() > MAX_ATTRIBUTES_BYTES {
        return Err(Error::bad_request(format!(
            "attributes must be at most {MAX_ATTRIBUTES_BYTES} bytes"
        )));
    }
    Ok(())
}

/// The first `max` characters of `s`.
pub(super) fn truncated(s: &str, max: usize) -> &str {
    match s.char_indices().nth(max) {
        Some((i, _)) => &s[..i],
        None => s,
    }
}

fn length_between(v: Option<&str>, name: &str, min: usize, max: usize) -> Result<()> {
    let n = v.map_or(0, |s| s.chars().count());
    if n < min || n > max {
        return Err(Error::bad_request(if min > 0 {
            format!("{name} must be {min}-{max} characters")
        } else {
            format!("{name} must be at most {max} characters")
        }));
    }
    Ok(())
}

#[derive(Deserialize, ToSchema)]
pub struct PageViewRequest {
    #[schema(min_length = 1, max_length = 2048)]
    url: String,
    #[serde(default)]
    #[schema(max_length = 500)]
    title: Option<String>,
    #[serde(default)]
    #[schema(max_length = 2048)]
    referrer: Option<String>,
}

/// `POST /v1/widget/pageviews` (visitor token): records a page view and makes it the
/// visitor's current page.
#[utoipa::path(post, path = "/v1/widget/pageviews", request_body = PageViewRequest, security(("bearer" = [])),
    responses((status = 204), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn pageview(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    ApiJson(req): ApiJson<PageViewRequest>,
) -> Result<StatusCode> {
    let Caller::Visitor { tenant, id } = caller else {
        return Err(Error::forbidden("needs a visitor token"));
    };
    length_between(Some(&req.url), "url", 1, 2048)?;
    length_between(req.title.as_deref(), "title", 0, 500)?;
    length_between(req.referrer.as_deref(), "referrer", 0, 2048)?;
    let mut client = state.pool.get().await?;
    let tx = db::tenant_tx(&mut client, tenant).await?;
    let updated = tx
        .execute(
            "UPDATE visitors SET current_page = $3, last_seen_at = now()
              WHERE tenant_id = $1 AND id = $2",
            &[&tenant, &id, &req.url],
        )
        .await?;
    if updated == 0 {
        return Err(Error::not_found("visitor"));
    }
    tx.execute(
        "INSERT INTO page_views (tenant_id, visitor_id, id, url, title, referrer)
         VALUES ($1, $2, $3, $4, $5, $6)",
        &[
            &tenant,
            &id,
            &Uuid::now_v7(),
            &req.url,
            &req.title,
            &req.referrer,
        ],
    )
    .await?;
    tx.commit().await?;
    Ok(StatusCode::NO_CONTENT)
}

/// The tenant of a staff reader (any agent role, or the API key); visitors are refused.
fn staff_tenant(caller: Caller) -> Result<Uuid> {
    match caller {
        Caller::ApiKey { tenant } => Ok(tenant),
        Caller::Agent { tenant, role, .. } if role.is_staff() => Ok(tenant),
        _ => Err(Error::forbidden("needs an agent or the API key")),
    }
}

/// The columns of a visitor (table alias `v`), in [`visitor_from_row`]'s order; the last
/// one is the list's cursor position (`last_seen_at` in Unix µs).
const VISITOR_COLUMNS: &str = "v.id, v.external_id, v.name, v.email, v.verified, v.attributes,
    (extract(epoch FROM v.first_seen_at) * 1000)::int8, (extract(epoch FROM v.last_seen_at) * 1000)::int8,
    v.current_page, v.user_agent, (extract(epoch FROM v.last_seen_at) * 1000000)::int8";

fn visitor_from_row(r: &tokio_postgres::Row, online: bool) -> Value {
    json!({
        "id": r.get::<_, Uuid>(0), "external_id": r.get::<_, Option<String>>(1),
        "name": r.get::<_, Option<String>>(2), "email": r.get::<_, Option<String>>(3),
        "verified": r.get::<_, bool>(4), "attributes": r.get::<_, Value>(5),
        "first_seen_at": r.get::<_, i64>(6), "last_seen_at": r.get::<_, i64>(7),
        "current_page": r.get::<_, Option<String>>(8), "user_agent": r.get::<_, Option<String>>(9),
        "online": online,
    })
}

/// Whether each visitor has a live connection (one pipelined registry read).
async fn online(state: &AppState, tenant: Uuid, visitors: &[Uuid]) -> Result<Vec<bool>> {
    let keys: Vec<String> = visitors
        .iter()
        .map(|v| state.keys.principal_edges(tenant, *v))
        .collect();
    Ok(state
        .fanout
        .live_edges(&keys)
        .await?
        .iter()
        .map(|edges| !edges.is_empty())
        .collect())
}

/// A visitor's profile: the visitor, their newest page views and their conversations.
async fn profile(state: &AppState, tx: &Transaction<'_>, tenant: Uuid, id: Uuid) -> Result<Value> {
    let row = tx
        .query_opt(
            &format!(
                "SELECT {VISITOR_COLUMNS} FROM visitors v WHERE v.tenant_id = $1 AND v.id = $2"
            ),
            &[&tenant, &id],
        )
        .await?
        .ok_or_else(|| Error::not_found("visitor"))?;
    let pages = tx
        .query(
            "SELECT id, url, title, referrer, (extract(epoch FROM at) * 1000)::int8
               FROM page_views WHERE tenant_id = $1 AND visitor_id = $2
              ORDER BY id DESC LIMIT $3",
            &[&tenant, &id, &PAGES_SHOWN],
        )
        .await?;
    let conversations = tx
        .query(
            "SELECT id, status, support_type, subject, (extract(epoch FROM created_at) * 1000)::int8,
                    (extract(epoch FROM resolved_at) * 1000)::int8, csat_score
               FROM conversations WHERE tenant_id = $1 AND visitor_id = $2
              ORDER BY created_at DESC, id DESC LIMIT $3",
            &[&tenant, &id, &CONVERSATIONS_SHOWN],
        )
        .await?;
    let live = online(state, tenant, &[id])
        .await?
        .first()
        .copied()
        .unwrap_or(false);
    let mut visitor = visitor_from_row(&row, live);
    visitor["pages"] = pages
        .iter()
        .map(|p| {
            json!({
                "id": p.get::<_, Uuid>(0), "url": p.get::<_, String>(1),
                "title": p.get::<_, Option<String>>(2), "referrer": p.get::<_, Option<String>>(3),
                "at": p.get::<_, i64>(4),
            })
        })
        .collect();
    visitor["conversations"] = conversations
        .iter()
        .map(|c| {
            json!({
                "id": c.get::<_, Uuid>(0), "status": c.get::<_, String>(1),
                "support_type": c.get::<_, String>(2), "subject": c.get::<_, Option<String>>(3),
                "created_at": c.get::<_, i64>(4), "resolved_at": c.get::<_, Option<i64>>(5),
                "csat_score": c.get::<_, Option<i32>>(6),
            })
        })
        .collect();
    Ok(visitor)
}

/// `GET /v1/visitors/{id}` (agents, supervisors, admins, or the API key): the visitor,
/// whether they are connected, their last 50 page views and their conversations, newest
/// first.
#[utoipa::path(get, path = "/v1/visitors/{id}", security(("bearer" = [])),
    params(("id" = Uuid, Path, description = "visitor id")),
    responses((status = 200, body = VisitorBody), (status = 404, body = ErrorBody), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody)))]
pub async fn get(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    ApiPath(id): ApiPath<Uuid>,
) -> Result<Json<Value>> {
    let tenant = staff_tenant(caller)?;
    let mut client = state.pool.get().await?;
    let tx = db::tenant_tx(&mut client, tenant).await?;
    let visitor = profile(&state, &tx, tenant, id).await?;
    tx.commit().await?;
    Ok(Json(json!({ "visitor": visitor })))
}

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct VisitorQuery {
    /// `true`: only visitors with a live connection (a page may then hold fewer than
    /// `limit` even when more follow: keep paging while `next_cursor` is set).
    #[serde(default)]
    #[param(nullable = false)]
    online: bool,
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

fn cursor_of(r: &tokio_postgres::Row) -> String {
    format!("{}_{}", r.get::<_, i64>(10), r.get::<_, Uuid>(0))
}

/// `GET /v1/visitors?online=&limit=&cursor=` (supervisors, admins, or the API key): the
/// most recently seen first.
#[utoipa::path(get, path = "/v1/visitors", security(("bearer" = [])), params(VisitorQuery),
    responses((status = 200, body = VisitorList), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody)))]
pub async fn list(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    ApiQuery(q): ApiQuery<VisitorQuery>,
) -> Result<Json<Value>> {
    let tenant = match caller {
        Caller::ApiKey { tenant } => tenant,
        Caller::Agent { tenant, role, .. } if role.is_supervisor() => tenant,
        _ => {
            return Err(Error::forbidden(
                "needs a supervisor, an admin or the API key",
            ))
        }
    };
    let limit = q.limit.unwrap_or(50);
    if !(1..=200).contains(&limit) {
        return Err(Error::bad_request("limit must be 1-200"));
    }
    let mut position = q.cursor.as_deref().map(super::parse_cursor).transpose()?;
    // Without the filter one read of limit + 1 rows tells whether more follow; with it,
    // pages of the table are examined until `limit` live visitors are found, the table
    // ends, or the scan budget is spent.
    let batch = if q.online { 200 } else { limit + 1 };
    let sql = format!(
        "SELECT {VISITOR_COLUMNS} FROM visitors v
          WHERE v.tenant_id = $1
            AND ($2::int8 IS NULL
                 OR ((extract(epoch FROM v.last_seen_at) * 1000000)::int8, v.id) < ($2::int8, $3::uuid))
          ORDER BY v.last_seen_at DESC, v.id DESC
          LIMIT $4"
    );
    let mut client = state.pool.get().await?;
    let mut visitors = Vec::new();
    let mut scanned = 0;
    let next_cursor = loop {
        let (us, id) = position.unzip();
        let tx = db::tenant_tx(&mut client, tenant).await?;
        let rows = tx.query(&sql, &[&tenant, &us, &id, &batch]).await?;
        tx.commit().await?;
        let ids: Vec<Uuid> = rows.iter().map(|r| r.get(0)).collect();
        let live = online(&state, tenant, &ids).await?;
        if !q.online {
            let more = rows.len() as i64 > limit;
            let page = &rows[..rows.len().min(limit as usize)];
            visitors.extend(page.iter().zip(&live).map(|(r, l)| visitor_from_row(r, *l)));
            break more.then(|| page.last().map(cursor_of)).flatten();
        }
        scanned += rows.len();
        let mut filled = None;
        for (i, (r, l)) in rows.iter().zip(&live).enumerate() {
            if *l {
                visitors.push(visitor_from_row(r, true));
                if visitors.len() as i64 == limit {
                    filled = Some(i);
                    break;
                }
            }
        }
        let table_ended = (rows.len() as i64) < batch;
        match (filled, rows.last()) {
            // Full: more may follow unless this was the table's last row.
            (Some(i), _) => {
                let last_row = table_ended && i + 1 == rows.len();
                break (!last_row).then(|| cursor_of(&rows[i]));
            }
            (None, _) if table_ended => break None,
            (None, Some(last)) if scanned >= ONLINE_SCAN_BUDGET => break Some(cursor_of(last)),
            (None, Some(last)) => position = Some((last.get(10), last.get(0))),
            (None, None) => break None,
        }
    };
    Ok(Json(
        json!({ "visitors": visitors, "next_cursor": next_cursor }),
    ))
}

/// `PUT /v1/visitors/{id}/attributes` (API key or admin): the body, a JSON object, is
/// merged into the visitor's attributes (top-level keys replace the stored ones).
#[utoipa::path(put, path = "/v1/visitors/{id}/attributes", security(("bearer" = [])),
    params(("id" = Uuid, Path, description = "visitor id")),
    request_body(content = Object, description = "attributes to merge, at most 16 KiB"),
    responses((status = 200, body = VisitorBody), (status = 404, body = ErrorBody), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody)))]
pub async fn set_attributes(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    ApiPath(id): ApiPath<Uuid>,
    OptionalJson(attributes): OptionalJson<Value>,
) -> Result<Json<Value>> {
    let tenant = caller.tenant_admin()?;
    if relaydesk_shared::input::json_len(&attributes) > MAX_ATTRIBUTES_BYTES {
        return Err(Error::bad_request(format!(
            "attributes must be at most {MAX_ATTRIBUTES_BYTES} bytes"
        )));
    }
    attributes_object(&attributes)?;
    let max = MAX_ATTRIBUTES_BYTES as i32;
    let mut client = state.pool.get().await?;
    let tx = db::tenant_tx(&mut client, tenant).await?;
    let row = tx
        .query_opt(
            "SELECT octet_length((attributes || $3)::text) <= $4 FROM visitors
              WHERE tenant_id = $1 AND id = $2 FOR NO KEY UPDATE",
            &[&tenant, &id, &attributes, &max],
        )
        .await?
        .ok_or_else(|| Error::not_found("visitor"))?;
    if !row.get::<_, bool>(0) {
        return Err(Error::bad_request(format!(
            "a visitor's attributes must stay within {MAX_ATTRIBUTES_BYTES} bytes"
        )));
    }
    tx.execute(
        "UPDATE visitors SET attributes = attributes || $3 WHERE tenant_id = $1 AND id = $2",
        &[&tenant, &id, &attributes],
    )
    .await?;
    let visitor = profile(&state, &tx, tenant, id).await?;
    tx.commit().await?;
    Ok(Json(json!({ "visitor": visitor })))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn attributes_must_be_small_objects() {
        assert!(attributes_object(&json!({"plan": "pro"})).is_ok());
        assert!(attributes_object(&json!([1])).is_err());
        assert!(attributes_object(&json!("x")).is_err());
        let big = "x".repeat(MAX_ATTRIBUTES_BYTES);
        assert!(attributes_object(&json!({ "k": big })).is_err());
    }

    #[test]
    fn truncation_keeps_whole_characters() {
        assert_eq!(truncated("héllo", 2), "hé");
        assert_eq!(truncated("abc", 10), "abc");
    }

    #[test]
    fn cursors_round_trip() {
        let id = Uuid::new_v4();
        assert_eq!(
            crate::http::parse_cursor(&format!("123_{id}")).ok(),
            Some((123, id))
        );
        assert!(crate::http::parse_cursor("nope").is_err());
    }
}
