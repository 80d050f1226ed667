//! `POST /v1/blasts`: one message to every visitor of a segment (the rules live in
//! `blast`; this handler checks the caller and the input).

use std::sync::Arc;

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Value};
use utoipa::ToSchema;

use super::openapi::{BlastBody, ErrorBody};
use super::ApiJson;
use crate::auth::Caller;
use crate::blast::{self, Segment};
use crate::error::{Error, Result};
use crate::AppState;

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewBlast {
    /// The message text (sent as a `text` message).
    #[schema(min_length = 1, max_length = 16384, pattern = r"\S")]
    text: String,
    #[schema(schema_with = super::openapi::segment_schema)]
    segment: Segment,
}

/// `POST /v1/blasts` (API key or admin): sends `text` to every visitor of `segment`, in
/// their newest unresolved conversation or a new snoozed one, live to those connected.
/// At most 50,000 recipients. With an `Idempotency-Key`, a retry is the same blast and
/// stores nothing twice.
#[utoipa::path(post, path = "/v1/blasts", request_body = NewBlast, security(("bearer" = [])),
    params(("Idempotency-Key" = Option<String>, Header, description = "names the blast: a retry completes it, storing nothing twice", pattern = "^[!-~]([ -~]{0,198}[!-~])?$")),
    responses((status = 201, body = BlastBody), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub async fn create(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    headers: HeaderMap,
    ApiJson(req): ApiJson<NewBlast>,
) -> Result<(StatusCode, Json<Value>)> {
    let tenant = caller.tenant_admin()?;
    let sender = match caller {
        Caller::Agent { id, .. } => id,
        _ => tenant,
    };
    let key = match headers.get("idempotency-key") {
        None => None,
        Some(v) => Some(
            v.to_str()
                .ok()
                .filter(|k| !k.is_empty() && k.len() <= 200)
                .ok_or_else(|| {
                    Error::bad_request("Idempotency-Key must be 1-200 visible characters")
                })?,
        ),
    };
    let sent = blast::send(&state, tenant, sender, key, &req.text, &req.segment).await?;
    Ok((
        StatusCode::CREATED,
        Json(json!({"blast": {"id": sent.id, "recipients": sent.recipients}})),
    ))
}
