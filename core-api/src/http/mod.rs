//! The HTTP API v1 (`../shared/spec/api-v1.md`): routes, and the JSON extractor whose
//! rejections use the project's error body.

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

use axum::extract::{FromRequest, Request};
use axum::routing::{get, patch, post, put};
use axum::Router;
use serde::de::DeserializeOwned;

use crate::error::Error;
use crate::AppState;

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
        .route("/v1/auth/login", post(accounts::login))
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

/// A list's page position, `<µs>_<uuid>`: the ordering timestamp (Unix µs) and id of the
/// last row of the previous page.
pub(crate) fn parse_cursor(c: &str) -> Result<(i64, uuid::Uuid), Error> {
    let bad = || Error::bad_request("cursor is invalid");
    let (us, id) = c.split_once('_').ok_or_else(bad)?;
    Ok((
        us.parse().map_err(|_| bad())?,
        uuid::Uuid::try_parse(id).map_err(|_| bad())?,
    ))
}

/// `axum::Json`, with rejections answered as `bad_request` error bodies.
pub struct ApiJson<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for ApiJson<T> {
    type Rejection = Error;

    async fn from_request(req: Request, state: &S) -> Result<Self, Error> {
        axum::Json::<T>::from_request(req, state)
            .await
            .map(|axum::Json(v)| ApiJson(v))
            .map_err(|e| Error::bad_request(e.body_text()))
    }
}
