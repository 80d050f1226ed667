//! The HTTP API v1 (`../shared/spec/api-v1.md`): routes, and the extractors every
//! handler takes its input through, so that every refusal — a bad body, path or query,
//! an unknown route or method — is answered with the project's error body.
//!
//! Request bodies ([`ApiJson`], [`OptionalJson`]): at most [`MAX_BODY_BYTES`] (413
//! `too_large`, judged from `Content-Length` before any byte is read, so a client
//! waiting on `Expect: 100-continue` is answered without sending its body), read within
//! `Config::body_timeout` (408 `timeout`), then the string rule of
//! `relaydesk_shared::input` (no NUL, no unpaired surrogate), then a JSON object (an
//! array or scalar where an object is expected is `bad_request`), then the type.
//! Path segments and query values ([`ApiPath`], [`ApiQuery`]) are refused when they
//! fail to parse or carry an encoded NUL (`%00`).

mod accounts;
mod actions;
mod blasts;
mod conversations;
mod openapi;
mod ops;
mod support;
mod visitors;
mod web;
mod webhooks;

use std::sync::Arc;

use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::request::Parts;
use axum::http::{header, HeaderMap};
use axum::routing::{get, patch, post, put};
use axum::Router;
use bytes::{Bytes, BytesMut};
use futures::StreamExt;
use relaydesk_shared::{input, ErrorCode};
use serde::de::DeserializeOwned;

use crate::error::Error;
use crate::AppState;

/// Largest request body; past it 413 `too_large`. (A message's own limit is smaller:
/// `relaydesk_shared::input::MAX_MESSAGE_BYTES`.)
pub const MAX_BODY_BYTES: usize = 1024 * 1024;

/// Latest instant a timestamp in a request may name (Unix ms): 9999-12-31T23:59:59.999Z,
/// well inside what PostgreSQL's `timestamptz` holds.
pub const MAX_UNIX_MS: i64 = 253_402_300_799_999;

pub fn router(state: Arc<AppState>) -> Router {
    Router::new()
        .route("/healthz", get(ops::healthz))
        .route("/readyz", get(ops::readyz))
        .route("/metrics", get(ops::metrics))
        .route("/v1/openapi.json", get(openapi::document))
        .route("/v1/tenants", post(accounts::create_tenant))
        .route(
            "/v1/agents",
            post(accounts::create_agent).get(accounts::list_agents),
        )
        .route("/v1/agents/{id}", patch(accounts::update_agent))
        .route(
            "/v1/support-types",
            get(support::list).post(support::create),
        )
        .route("/v1/support-types/{key}", put(support::update))
        .route(
            "/v1/teams",
            get(support::list_teams).post(support::create_team),
        )
        .route("/v1/teams/{id}/members", put(support::set_team_members))
        .route("/v1/agents/{id}/status", put(accounts::set_status))
        .route("/v1/agents/{id}/password", put(accounts::set_password))
        .route("/v1/agents/{id}/deactivate", post(accounts::deactivate))
        .route("/v1/agents/{id}/activate", post(accounts::activate))
        .route("/v1/auth/login", post(accounts::login))
        .route("/v1/auth/logout", post(accounts::logout))
        .route("/v1/auth/logout-all", post(accounts::logout_all))
        .route(
            "/v1/api-keys",
            get(accounts::list_api_keys).post(accounts::create_api_key),
        )
        .route(
            "/v1/api-keys/{id}",
            axum::routing::delete(accounts::delete_api_key),
        )
        .route("/v1/connect-tokens", post(accounts::connect_token))
        .route("/v1/widget/sessions", post(accounts::widget_session))
        .route(
            "/v1/conversations",
            post(conversations::create).get(actions::list),
        )
        .route("/v1/conversations/{id}", get(conversations::get))
        .route(
            "/v1/conversations/{id}/messages",
            get(conversations::list_messages).post(conversations::post_message),
        )
        .route("/v1/conversations/{id}/assign", post(actions::assign))
        .route("/v1/conversations/{id}/transfer", post(actions::transfer))
        .route("/v1/conversations/{id}/escalate", post(actions::escalate))
        .route("/v1/conversations/{id}/handoff", post(actions::handoff))
        .route("/v1/conversations/{id}/resolve", post(actions::resolve))
        .route("/v1/conversations/{id}/reopen", post(actions::reopen))
        .route("/v1/conversations/{id}/snooze", post(actions::snooze))
        .route("/v1/conversations/{id}/participants", post(actions::join))
        .route("/v1/conversations/{id}/notes", post(actions::note))
        .route("/v1/conversations/{id}/tags", post(actions::tags))
        .route("/v1/conversations/{id}/csat", post(actions::csat))
        .route(
            "/v1/conversations/{id}/assignments",
            get(actions::assignments),
        )
        .route("/v1/queue", get(actions::queue))
        .route("/v1/webhooks", post(webhooks::create).get(webhooks::list))
        .route("/v1/webhooks/{id}", axum::routing::delete(webhooks::delete))
        .route("/v1/webhooks/{id}/deliveries", get(webhooks::deliveries))
        .route("/v1/widget/pageviews", post(visitors::pageview))
        .route("/v1/visitors", get(visitors::list))
        .route("/v1/visitors/{id}", get(visitors::get))
        .route(
            "/v1/visitors/{id}/attributes",
            put(visitors::set_attributes),
        )
        .route("/v1/blasts", post(blasts::create))
        .route("/v1/widget/config", get(web::widget_config))
        .route("/console", get(web::console_index))
        .route("/console/", get(web::console_index))
        .route("/console/{*path}", get(web::console_file))
        .route("/client/{*path}", get(web::client_file))
        .route("/widget.js", get(web::widget))
        .route("/demo", get(web::demo))
        .fallback(|| async { Error::not_found("route") })
        .method_not_allowed_fallback(|| async {
            Error::client(
                ErrorCode::MethodNotAllowed,
                "method not allowed on this route",
            )
        })
        // Widgets call the API from tenants' own sites; credentials are bearer tokens,
        // never cookies, so any origin may call.
        .layer(
            tower_http::cors::CorsLayer::new()
                .allow_origin(tower_http::cors::Any)
                .allow_methods(tower_http::cors::Any)
                .allow_headers([
                    axum::http::header::AUTHORIZATION,
                    axum::http::header::CONTENT_TYPE,
                    axum::http::HeaderName::from_static("idempotency-key"),
                ])
                .max_age(std::time::Duration::from_secs(3600)),
        )
        .with_state(state)
}

/// A name as the API takes it: 1-200 characters, not all whitespace (stored trimmed).
pub(crate) fn valid_name(name: &str) -> bool {
    !name.trim().is_empty() && name.chars().count() <= 200
}

/// A list's page position, `<µs>_<uuid>`: the ordering timestamp (Unix µs, from 0 to
/// [`MAX_UNIX_MS`]) and id of the last row of the previous page.
pub(crate) fn parse_cursor(c: &str) -> Result<(i64, uuid::Uuid), Error> {
    let bad = || Error::bad_request("cursor is invalid");
    let (us, id) = c.split_once('_').ok_or_else(bad)?;
    let us: i64 = us.parse().map_err(|_| bad())?;
    if !(0..=MAX_UNIX_MS.saturating_mul(1000)).contains(&us) {
        return Err(bad());
    }
    Ok((us, uuid::Uuid::try_parse(id).map_err(|_| bad())?))
}

/// A JSON object body: `axum::Json` with this module's limits and string rule, and
/// rejections answered as error bodies. Needs `Content-Type: application/json`.
pub struct ApiJson<T>(pub T);

impl<T: DeserializeOwned> FromRequest<Arc<AppState>> for ApiJson<T> {
    type Rejection = Error;

    async fn from_request(req: Request, state: &Arc<AppState>) -> Result<Self, Error> {
        if !json_content_type(req.headers()) {
            return Err(Error::bad_request(
                "expected a request with `Content-Type: application/json`",
            ));
        }
        let body = read_body(req, state).await?;
        decode(&body).map(ApiJson)
    }
}

/// Like [`ApiJson`], but an empty body or a JSON `null` means `T::default()`, and any
/// content type is taken.
pub struct OptionalJson<T>(pub T);

impl<T: DeserializeOwned + Default> FromRequest<Arc<AppState>> for OptionalJson<T> {
    type Rejection = Error;

    async fn from_request(req: Request, state: &Arc<AppState>) -> Result<Self, Error> {
        let body = read_body(req, state).await?;
        let text = body.trim_ascii();
        if text.is_empty() || text == b"null" {
            return Ok(OptionalJson(T::default()));
        }
        decode(&body).map(OptionalJson)
    }
}

fn json_content_type(headers: &HeaderMap) -> bool {
    let Some(ct) = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
    else {
        return false;
    };
    let essence = ct.split(';').next().unwrap_or_default().trim();
    essence.eq_ignore_ascii_case("application/json")
        || essence
            .rsplit_once('+')
            .is_some_and(|(_, suffix)| suffix.eq_ignore_ascii_case("json"))
}

fn too_large() -> Error {
    Error::client(
        ErrorCode::TooLarge,
        format!("request body over {MAX_BODY_BYTES} bytes"),
    )
}

/// The whole body, within [`MAX_BODY_BYTES`] and the configured body timeout.
async fn read_body(req: Request, state: &AppState) -> Result<Bytes, Error> {
    let declared = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok());
    if declared.is_some_and(|n| n > MAX_BODY_BYTES as u64) {
        // Before the body is polled: no `100 Continue` is sent, nothing is left unread.
        return Err(too_large());
    }
    let read = async {
        let mut stream = req.into_body().into_data_stream();
        let mut buf = BytesMut::new();
        while let Some(chunk) = stream.next().await {
            let chunk =
                chunk.map_err(|_| Error::bad_request("the request body could not be read"))?;
            if buf.len() + chunk.len() > MAX_BODY_BYTES {
                return Err(too_large());
            }
            buf.extend_from_slice(&chunk);
        }
        Ok(buf.freeze())
    };
    tokio::time::timeout(state.config.body_timeout, read)
        .await
        .map_err(|_| {
            Error::client(
                ErrorCode::Timeout,
                "the request body did not arrive in time",
            )
        })?
}

/// A body's value: the string rule, a JSON object, then `T`, where a number with a zero
/// fraction (`5.0`) counts as the integer it equals, as JSON Schema's `integer` has it.
fn decode<T: DeserializeOwned>(body: &[u8]) -> Result<T, Error> {
    input::check_json_strings(body).map_err(|e| Error::bad_request(e.to_string()))?;
    if body.iter().find(|b| !b.is_ascii_whitespace()) != Some(&b'{') {
        return Err(Error::bad_request("the body must be a JSON object"));
    }
    let invalid = |e: serde_json::Error| Error::bad_request(format!("invalid JSON body: {e}"));
    let mut value: serde_json::Value = serde_json::from_slice(body).map_err(invalid)?;
    integral_floats_as_integers(&mut value);
    serde_json::from_value(value).map_err(invalid)
}

/// Rewrites every float with a zero fraction within the range of `i64` as that integer.
fn integral_floats_as_integers(value: &mut serde_json::Value) {
    use serde_json::Value;
    match value {
        Value::Number(n) if n.is_f64() => {
            let f = n.as_f64().unwrap_or(f64::NAN);
            // -2^63 and 2^63 are exact in f64: every f64 from one up to the other fits.
            let min = i64::MIN as f64;
            if f.fract() == 0.0 && (min..-min).contains(&f) {
                *value = Value::from(f as i64);
            }
        }
        Value::Array(items) => items.iter_mut().for_each(integral_floats_as_integers),
        Value::Object(fields) => fields.values_mut().for_each(integral_floats_as_integers),
        _ => {}
    }
}

/// Refuses an encoded NUL in a path or query (the decoded string would hold it).
fn no_encoded_nul(raw: Option<&str>) -> Result<(), Error> {
    if raw.is_some_and(|r| r.contains("%00")) {
        return Err(Error::bad_request(input::StringError::Nul.to_string()));
    }
    Ok(())
}

/// `axum::extract::Path`, with rejections answered as error bodies.
pub struct ApiPath<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned + Send> FromRequestParts<S> for ApiPath<T> {
    type Rejection = Error;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Error> {
        no_encoded_nul(Some(parts.uri.path()))?;
        match axum::extract::Path::<T>::from_request_parts(parts, state).await {
            Ok(axum::extract::Path(v)) => Ok(ApiPath(v)),
            Err(e) if e.status().is_server_error() => Err(Error::Internal(e.body_text())),
            Err(e) => Err(Error::bad_request(e.body_text())),
        }
    }
}

/// `axum::extract::Query`, with rejections answered as error bodies.
pub struct ApiQuery<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequestParts<S> for ApiQuery<T> {
    type Rejection = Error;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Error> {
        no_encoded_nul(parts.uri.query())?;
        axum::extract::Query::<T>::from_request_parts(parts, state)
            .await
            .map(|axum::extract::Query(v)| ApiQuery(v))
            .map_err(|e| Error::bad_request(e.body_text()))
    }
}
