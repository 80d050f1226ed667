//! The OpenAPI 3.1 document of HTTP API v1, served at `GET /v1/openapi.json`.
//!
//! Paths come from the handlers' `#[utoipa::path]` annotations; the response shapes
//! below describe the JSON the handlers build.

use axum::Json;
use serde::Serialize;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi, ToSchema};
use uuid::Uuid;

use super::{accounts, conversations};

#[derive(OpenApi)]
#[openapi(
    info(title = "Relaydesk HTTP API", version = "1"),
    paths(
        accounts::create_tenant,
        accounts::create_agent,
        accounts::set_status,
        accounts::login,
        accounts::connect_token,
        accounts::widget_session,
        conversations::create,
        conversations::get,
        conversations::list_messages,
        conversations::post_message,
    ),
    components(schemas(ErrorBody, ErrorDetail)),
    modifiers(&Bearer)
)]
pub struct ApiDoc;

struct Bearer;

impl Modify for Bearer {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
    }
}

pub async fn document() -> Json<utoipa::openapi::OpenApi> {
    Json(ApiDoc::openapi())
}

/// Every error: `{"error":{"code","message"}}`.
#[derive(Serialize, ToSchema)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

#[derive(Serialize, ToSchema)]
pub struct ErrorDetail {
    /// bad_request, unauthorized, forbidden, not_found, conflict, rate_limited, too_large,
    /// unavailable or internal.
    #[schema(value_type = String, example = "not_found")]
    pub code: relaydesk_shared::ErrorCode,
    pub message: String,
}

#[derive(Serialize, ToSchema)]
pub struct Tenant {
    pub id: Uuid,
    pub name: String,
    pub site_key: String,
    /// Secret for visitors' identity hashes (HMAC-SHA256 of `external_id`).
    pub identity_secret: String,
}

#[derive(Serialize, ToSchema)]
pub struct TenantCreated {
    pub tenant: Tenant,
    /// Shown once; stored only as a hash.
    pub api_key: String,
}

#[derive(Serialize, ToSchema)]
pub struct Agent {
    pub id: Uuid,
    pub name: String,
    pub email: String,
    pub role: String,
    pub kind: String,
    pub max_concurrent: i32,
    pub status: String,
}

#[derive(Serialize, ToSchema)]
pub struct AgentBody {
    pub agent: Agent,
}

#[derive(Serialize, ToSchema)]
pub struct LoginBody {
    pub token: String,
    pub agent: Agent,
}

#[derive(Serialize, ToSchema)]
pub struct ConnectToken {
    pub token: String,
    /// Unix seconds.
    pub expires_at: u64,
    pub edge_url: String,
}

#[derive(Serialize, ToSchema)]
pub struct VisitorRef {
    pub id: Uuid,
}

#[derive(Serialize, ToSchema)]
pub struct WidgetSessionBody {
    pub visitor: VisitorRef,
    pub token: String,
    pub connect_token: String,
    pub edge_url: String,
}

#[derive(Serialize, ToSchema)]
pub struct Conversation {
    pub id: Uuid,
    pub status: String,
    pub assignee: Option<Uuid>,
    pub support_type: String,
    pub subject: Option<String>,
    pub visitor_id: Uuid,
    pub tags: Vec<String>,
    pub last_seq: i64,
}

#[derive(Serialize, ToSchema)]
pub struct ConversationBody {
    pub conversation: Conversation,
}

#[derive(Serialize, ToSchema)]
pub struct Sender {
    pub id: Uuid,
    pub role: String,
    pub name: Option<String>,
}

/// A message, shaped like the wire `msg` frame without `t`.
#[derive(Serialize, ToSchema)]
pub struct MessageView {
    pub conv: Uuid,
    pub seq: u64,
    pub msg: Uuid,
    pub from: Sender,
    pub kind: String,
    pub body: serde_json::Value,
    pub ts: i64,
}

#[derive(Serialize, ToSchema)]
pub struct Messages {
    pub messages: Vec<MessageView>,
}

/// Shaped like the wire `accepted` frame without `t`.
#[derive(Serialize, ToSchema)]
pub struct AcceptedBody {
    pub id: String,
    pub conv: Uuid,
    pub seq: u64,
    pub msg: Uuid,
    pub ts: i64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn documents_every_v1_route() {
        let doc = serde_json::to_value(ApiDoc::openapi()).unwrap();
        let paths = doc["paths"].as_object().unwrap();
        for p in [
            "/v1/tenants",
            "/v1/agents",
            "/v1/agents/{id}/status",
            "/v1/auth/login",
            "/v1/connect-tokens",
            "/v1/widget/sessions",
            "/v1/conversations",
            "/v1/conversations/{id}",
            "/v1/conversations/{id}/messages",
        ] {
            assert!(
                paths.contains_key(p),
                "{p} missing from the OpenAPI document"
            );
        }
        assert!(doc["openapi"].as_str().unwrap().starts_with("3.1"));
    }
}
