//! The web front ends, served by core-api from files compiled into the binary (`web/`):
//! the agent console (`/console`), the visitor widget (`/widget.js`), the protocol
//! client both use (`/client/relaydesk.js`) and a demo page (`/demo`). Plain ES
//! modules: nothing to build besides core-api itself. Also the widget's public status
//! endpoint.

use std::sync::Arc;

use axum::extract::State;
use axum::http::{header, HeaderValue};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Value};
use utoipa::IntoParams;

use super::openapi::{ErrorBody, WidgetConfig};
use super::{ApiPath, ApiQuery};
use crate::error::{Error, Result};
use crate::{auth, db, AppState};

#[derive(rust_embed::Embed)]
#[folder = "../web/"]
#[exclude = "*.test.mjs"]
#[exclude = "*.md"]
#[exclude = "node_modules/*"]
struct Assets;

fn content_type(path: &str) -> &'static str {
    match path.rsplit('.').next() {
        Some("html") => "text/html; charset=utf-8",
        Some("js" | "mjs") => "text/javascript; charset=utf-8",
        Some("css") => "text/css; charset=utf-8",
        Some("svg") => "image/svg+xml",
        Some("png") => "image/png",
        Some("json") => "application/json",
        _ => "application/octet-stream",
    }
}

/// One embedded file, or 404.
fn asset(path: &str) -> Response {
    match Assets::get(path) {
        Some(file) => {
            let mut r = file.data.into_owned().into_response();
            let h = r.headers_mut();
            h.insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static(content_type(path)),
            );
            // Revalidate each load: a new core-api version serves new front ends at once.
            h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
            if let Ok(etag) = HeaderValue::from_str(&format!(
                "\"{}\"",
                hex::encode(&file.metadata.sha256_hash()[..12])
            )) {
                h.insert(header::ETAG, etag);
            }
            r
        }
        None => Error::not_found("file").into_response(),
    }
}

pub async fn console_index() -> Response {
    asset("console/index.html")
}

pub async fn console_file(ApiPath(path): ApiPath<String>) -> Response {
    asset(&format!("console/{path}"))
}

pub async fn client_file(ApiPath(path): ApiPath<String>) -> Response {
    asset(&format!("client/{path}"))
}

pub async fn widget() -> Response {
    asset("widget/widget.js")
}

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct SiteKey {
    /// The tenant's public site key.
    #[serde(default)]
    site_key: Option<String>,
}

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct WidgetConfigQuery {
    /// The tenant's public site key.
    site_key: String,
}

/// `/demo?site_key=…`: a product page with the tenant's widget on it.
pub async fn demo(ApiQuery(q): ApiQuery<SiteKey>) -> Response {
    let Some(file) = Assets::get("demo/index.html") else {
        return Error::not_found("file").into_response();
    };
    let page = String::from_utf8_lossy(&file.data).into_owned();
    // Only a well-formed key is written into the page.
    let page = match q.site_key.filter(|k| auth::site_key_tenant(k).is_some()) {
        Some(key) => page.replace("__SITE_KEY__", &key),
        None => page,
    };
    let mut r = page.into_response();
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    r
}

/// `GET /v1/widget/config?site_key=` (public): what the widget shows before a visitor
/// writes — the tenant's name and whether agents are online now.
#[utoipa::path(get, path = "/v1/widget/config", params(WidgetConfigQuery),
    responses((status = 200, body = WidgetConfig), (status = 404, body = ErrorBody)))]
pub async fn widget_config(
    State(state): State<Arc<AppState>>,
    ApiQuery(q): ApiQuery<WidgetConfigQuery>,
) -> Result<Json<Value>> {
    let key = q.site_key;
    let tenant = auth::site_key_tenant(&key).ok_or_else(|| Error::not_found("site key"))?;
    let mut client = state.pool.get().await?;
    let tx = db::tenant_tx(&mut client, tenant).await?;
    let name: String = tx
        .query_opt(
            "SELECT name FROM tenants WHERE id = $1 AND site_key = $2",
            &[&tenant, &key],
        )
        .await?
        .ok_or_else(|| Error::not_found("site key"))?
        .get(0);
    let online: i64 = tx
        .query_one(
            "SELECT count(*) FROM agents WHERE tenant_id = $1 AND status = 'online' AND kind = 'human'",
            &[&tenant],
        )
        .await?
        .get(0);
    tx.commit().await?;
    Ok(Json(json!({
        "tenant": {"name": name},
        "online": online > 0,
        "agents_online": online,
    })))
}
