//! The HTTP API v1 (`../shared/spec/api-v1.md`): routes, and the JSON extractor whose
//! rejections use the project's error body.

mod accounts;
mod conversations;
mod openapi;
mod ops;

use std::sync::Arc;

use axum::extract::{FromRequest, Request};
use axum::routing::{get, post, put};
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
        .route("/v1/agents", post(accounts::create_agent))
        .route("/v1/agents/{id}/status", put(accounts::set_status))
        .route("/v1/auth/login", post(accounts::login))
        .route("/v1/connect-tokens", post(accounts::connect_token))
        .route("/v1/widget/sessions", post(accounts::widget_session))
        .route("/v1/conversations", post(conversations::create))
        .route("/v1/conversations/{id}", get(conversations::get))
        .route(
            "/v1/conversations/{id}/messages",
            get(conversations::list_messages).post(conversations::post_message),
        )
        .with_state(state)
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
