//! Operational endpoints: liveness, readiness and Prometheus metrics.

use std::sync::Arc;

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use fred::prelude::*;

use crate::AppState;

pub async fn healthz() -> &'static str {
    "ok"
}

/// Ready when PostgreSQL answers with the migrations applied and Redis answers.
pub async fn readyz(State(state): State<Arc<AppState>>) -> impl IntoResponse {
    let pg = async {
        let client = state.pool.get().await.ok()?;
        let row = client
            .query_one(
                "SELECT coalesce(max(version), 0) FROM refinery_schema_history",
                &[],
            )
            .await
            .ok()?;
        Some(row.get::<_, i32>(0) >= crate::db::latest_migration())
    };
    let redis = async { state.redis.ping::<String>(None).await.is_ok() };
    let (pg, redis) = tokio::join!(pg, redis);
    match (pg, redis) {
        (Some(true), true) => (StatusCode::OK, "ready"),
        (Some(false), _) => (StatusCode::SERVICE_UNAVAILABLE, "migrations not applied"),
        (None, _) => (StatusCode::SERVICE_UNAVAILABLE, "postgres unreachable"),
        (_, false) => (StatusCode::SERVICE_UNAVAILABLE, "redis unreachable"),
    }
}

pub async fn metrics() -> impl IntoResponse {
    match relaydesk_shared::telemetry::render() {
        Some(body) => (StatusCode::OK, body),
        None => (
            StatusCode::SERVICE_UNAVAILABLE,
            String::from("metrics recorder unavailable"),
        ),
    }
}
