//! The OpenAPI 3.1 document of HTTP API v1, served at `GET /v1/openapi.json`.
//!
//! Paths come from the handlers' `#[utoipa::path]` annotations; the response shapes
//! below describe the JSON the handlers build. The refusals every route shares through
//! the extractors of `http/mod.rs` (400 for a bad body, path or query, 413 and 408 for a
//! body too large or too slow) are added to every operation by one modifier
//! ([`InputRefusals`]), so no annotation can forget them.

use axum::Json;
use serde::Serialize;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi, ToSchema};
use uuid::Uuid;

use super::{accounts, actions, conversations, support};

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
        super::visitors::pageview,
        super::visitors::get,
        super::visitors::list,
        super::visitors::set_attributes,
        super::blasts::create,
        conversations::create,
        conversations::get,
        conversations::list_messages,
        conversations::post_message,
        super::webhooks::create,
        super::webhooks::list,
        super::webhooks::delete,
        super::webhooks::deliveries,
        actions::list,
        actions::assign,
        actions::transfer,
        actions::escalate,
        actions::handoff,
        actions::resolve,
        actions::reopen,
        actions::snooze,
        actions::join,
        actions::note,
        actions::tags,
        actions::csat,
        actions::queue,
        actions::assignments,
        super::web::widget_config,
        accounts::list_agents,
        accounts::update_agent,
        accounts::logout,
        accounts::logout_all,
        accounts::set_password,
        accounts::deactivate,
        accounts::activate,
        accounts::list_api_keys,
        accounts::create_api_key,
        accounts::delete_api_key,
        support::list,
        support::create,
        support::update,
        support::create_team,
        support::set_team_members,
        support::list_teams,
    ),
    components(schemas(ErrorBody, ErrorDetail)),
    modifiers(&Bearer, &InputRefusals, &AccessAnswers, &Unauthenticated)
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

/// Adds the input refusals of `http/mod.rs` to every operation that can meet them: 400
/// where there is a body or a parameter, 413 and 408 where there is a body.
struct InputRefusals;

impl Modify for InputRefusals {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let error = error_response;
        for item in openapi.paths.paths.values_mut() {
            let shared_params = item.parameters.as_ref().is_some_and(|p| !p.is_empty());
            for op in operations(item) {
                let body = op.request_body.is_some();
                let params = shared_params || op.parameters.as_ref().is_some_and(|p| !p.is_empty());
                let responses = &mut op.responses.responses;
                if body || params {
                    responses.entry("400".into()).or_insert_with(|| {
                        error("bad_request: a malformed body, path or query value, a string with NUL or an unpaired surrogate, or a JSON array or scalar where an object is expected").into()
                    });
                }
                if body {
                    responses.entry("413".into()).or_insert_with(|| {
                        error("too_large: a request body over 1 MiB, or a message body over 64 KiB").into()
                    });
                    responses.entry("408".into()).or_insert_with(|| {
                        error("timeout: the request body did not arrive within BODY_TIMEOUT_MS")
                            .into()
                    });
                }
            }
        }
    }
}

/// Gives every operation on one conversation (`/v1/conversations/{id}…`) the answers
/// of the access rule (`crate::access`, the table in ARCHITECTURE.md): 403 when the
/// caller's role and relation to the conversation do not allow the action, 404 when
/// there is no such conversation in the caller's tenant or a visitor asks about one not
/// its own.
struct AccessAnswers;

impl Modify for AccessAnswers {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let error = error_response;
        for (path, item) in openapi.paths.paths.iter_mut() {
            if !path.starts_with("/v1/conversations/{id}") {
                continue;
            }
            for op in [&mut item.get, &mut item.post].into_iter().flatten() {
                let responses = &mut op.responses.responses;
                responses.insert(
                    "403".into(),
                    error("forbidden: the access rule does not allow this action to the caller's role in its relation to the conversation (assignee, participant, queued and eligible, former participant, none; ARCHITECTURE.md, \"Access to conversations\")").into(),
                );
                responses.insert(
                    "404".into(),
                    error("not_found: no such conversation in the caller's tenant, or a visitor's request about a conversation not its own").into(),
                );
            }
        }
    }
}

/// Every operation of a path.
fn operations(
    item: &mut utoipa::openapi::path::PathItem,
) -> impl Iterator<Item = &mut utoipa::openapi::path::Operation> {
    [
        &mut item.get,
        &mut item.put,
        &mut item.post,
        &mut item.delete,
        &mut item.patch,
    ]
    .into_iter()
    .flatten()
}

/// Gives every operation that takes a credential the extractor's answer to a missing,
/// malformed, unknown, expired or revoked one (`crate::auth::Caller`): 401.
struct Unauthenticated;

impl Modify for Unauthenticated {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        for item in openapi.paths.paths.values_mut() {
            for op in operations(item) {
                if op.security.as_ref().is_none_or(Vec::is_empty) {
                    continue;
                }
                op.responses.responses.entry("401".into()).or_insert_with(|| {
                    error_response("unauthorized: a missing, malformed, unknown, expired or revoked credential").into()
                });
            }
        }
    }
}

/// A response with the error body.
fn error_response(description: &str) -> utoipa::openapi::Response {
    use utoipa::openapi::{ContentBuilder, Ref, ResponseBuilder};
    ResponseBuilder::new()
        .description(description)
        .content(
            "application/json",
            ContentBuilder::new()
                .schema(Some(Ref::from_schema_name("ErrorBody")))
                .build(),
        )
        .build()
}

/// An agent's roles.
const ROLES: &[&str] = &["agent", "supervisor", "admin"];

/// A string schema that takes one of `values` (for `schema_with`).
fn one_of(values: &[&str]) -> utoipa::openapi::schema::Object {
    use utoipa::openapi::schema::{ObjectBuilder, Type};
    ObjectBuilder::new()
        .schema_type(Type::String)
        .enum_values(Some(values.iter().copied()))
        .build()
}

/// [`one_of`], or `null` (an optional field: `null` counts as absent).
fn one_of_or_null(values: &[&str]) -> utoipa::openapi::schema::Object {
    use utoipa::openapi::schema::{ObjectBuilder, SchemaType, Type};
    let values = values
        .iter()
        .map(|v| serde_json::Value::from(*v))
        .chain([serde_json::Value::Null]);
    ObjectBuilder::new()
        .schema_type(SchemaType::from_iter([Type::String, Type::Null]))
        .enum_values(Some(values))
        .build()
}

/// The enums of request fields, for `schema_with`: an agent's role (or `null` where it
/// is optional), kind and status, and a support type's routing (or `null`).
pub(super) fn role_schema() -> utoipa::openapi::schema::Object {
    one_of(ROLES)
}
pub(super) fn role_or_null_schema() -> utoipa::openapi::schema::Object {
    one_of_or_null(ROLES)
}
pub(super) fn kind_schema() -> utoipa::openapi::schema::Object {
    one_of(&["human", "bot"])
}
pub(super) fn status_schema() -> utoipa::openapi::schema::Object {
    one_of(&["online", "away", "offline"])
}
pub(super) fn routing_or_null_schema() -> utoipa::openapi::schema::Object {
    one_of_or_null(&["round_robin", "capacity"])
}

/// Resolution reasons: 1-50 keys of `[a-z0-9_-]{1,64}`.
pub(super) fn reasons_schema() -> utoipa::openapi::schema::Array {
    use utoipa::openapi::schema::{ArrayBuilder, ObjectBuilder, Type};
    ArrayBuilder::new()
        .items(
            ObjectBuilder::new()
                .schema_type(Type::String)
                .pattern(Some("^[a-z0-9_-]{1,64}$")),
        )
        .min_items(Some(1))
        .max_items(Some(50))
        .build()
}

/// Tags: each 1-64 characters, not all whitespace.
pub(super) fn tags_schema() -> utoipa::openapi::schema::Array {
    use utoipa::openapi::schema::{ArrayBuilder, ObjectBuilder, Type};
    ArrayBuilder::new()
        .items(
            ObjectBuilder::new()
                .schema_type(Type::String)
                .min_length(Some(1))
                .max_length(Some(64))
                .pattern(Some(r"\S")),
        )
        .build()
}

/// A message's body: an object with a string `text` (and whatever else the client adds).
pub(super) fn message_body_schema() -> utoipa::openapi::schema::Object {
    use utoipa::openapi::schema::{ObjectBuilder, Type};
    ObjectBuilder::new()
        .schema_type(Type::Object)
        .property("text", ObjectBuilder::new().schema_type(Type::String))
        .required("text")
        .build()
}

/// Webhook events: at least one of `events::hook::ALL`.
pub(super) fn events_schema() -> utoipa::openapi::schema::Array {
    use utoipa::openapi::schema::ArrayBuilder;
    ArrayBuilder::new()
        .items(one_of(crate::events::hook::ALL))
        .min_items(Some(1))
        .build()
}

/// A blast's segment (`blast::Segment`): at least one criterion, `attributes` a
/// non-empty object, `online` or `all` true.
pub(super) fn segment_schema() -> utoipa::openapi::schema::Schema {
    use utoipa::openapi::schema::{AllOfBuilder, AnyOfBuilder, ObjectBuilder, SchemaType, Type};
    let flag = || ObjectBuilder::new().schema_type(Type::Boolean);
    let shape = ObjectBuilder::new()
        .schema_type(Type::Object)
        .property(
            "attributes",
            ObjectBuilder::new()
                .schema_type(SchemaType::from_iter([Type::Object, Type::Null]))
                .description(Some("visitors whose attributes contain this object")),
        )
        .property(
            "online",
            flag().description(Some("only visitors connected now")),
        )
        .property(
            "all",
            flag().description(Some("every visitor (of the other criteria)")),
        )
        .additional_properties(Some(
            utoipa::openapi::schema::AdditionalProperties::FreeForm(false),
        ));
    let criterion = |name: &str, schema: ObjectBuilder| {
        ObjectBuilder::new().property(name, schema).required(name)
    };
    let criteria = AnyOfBuilder::new()
        .item(criterion(
            "attributes",
            ObjectBuilder::new()
                .schema_type(Type::Object)
                .min_properties(Some(1)),
        ))
        .item(criterion("online", flag().enum_values(Some([true]))))
        .item(criterion("all", flag().enum_values(Some([true]))));
    AllOfBuilder::new()
        .item(shape)
        .item(criteria)
        .build()
        .into()
}

/// A conversation's status.
pub(super) fn conversation_status_schema() -> utoipa::openapi::schema::Object {
    one_of(&["queued", "assigned", "resolved", "snoozed"])
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
    /// unavailable, internal, or (HTTP only) method_not_allowed or timeout.
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
    /// False once deactivated: the agent cannot log in and its tokens are refused.
    pub active: bool,
}

#[derive(Serialize, ToSchema)]
pub struct ApiKey {
    pub id: Uuid,
    /// Unix ms.
    pub created_at: i64,
    /// `rk_` and the first 8 hex digits of the key's secret; null for keys made before
    /// prefixes were stored.
    pub prefix: Option<String>,
}

#[derive(Serialize, ToSchema)]
pub struct ApiKeyList {
    pub api_keys: Vec<ApiKey>,
}

#[derive(Serialize, ToSchema)]
pub struct ApiKeyCreated {
    pub api_key: ApiKey,
    /// The key itself: shown once, stored only as a hash.
    pub key: String,
}

#[derive(Serialize, ToSchema)]
pub struct AgentBody {
    pub agent: Agent,
}

#[derive(Serialize, ToSchema)]
pub struct AgentList {
    /// Each with `open_conversations` and `last_assigned_at` besides the agent fields.
    pub agents: Vec<Agent>,
    pub next_cursor: Option<Uuid>,
}

#[derive(Serialize, ToSchema)]
pub struct SupportType {
    pub key: String,
    pub name: String,
    /// round_robin or capacity.
    pub routing: String,
    pub prefer_previous_agent: bool,
    pub resolution_reasons: Vec<String>,
    pub priority: i32,
    pub tier: i32,
    pub reopen_window_secs: i32,
    pub escalation_target: Option<String>,
    #[schema(value_type = Option<Object>)]
    pub business_hours: Option<serde_json::Value>,
    pub bot_id: Option<Uuid>,
    /// Eligible agents (with `teams` both empty: every human agent).
    pub agents: Vec<Uuid>,
    pub teams: Vec<Uuid>,
}

#[derive(Serialize, ToSchema)]
pub struct SupportTypeBody {
    pub support_type: SupportType,
}

#[derive(Serialize, ToSchema)]
pub struct SupportTypeList {
    pub support_types: Vec<SupportType>,
}

#[derive(Serialize, ToSchema)]
pub struct Team {
    pub id: Uuid,
    pub name: String,
    pub members: Vec<Uuid>,
}

#[derive(Serialize, ToSchema)]
pub struct TeamBody {
    pub team: Team,
}

#[derive(Serialize, ToSchema)]
pub struct TeamList {
    pub teams: Vec<Team>,
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
    /// An edge to connect to (chosen at random).
    pub edge_url: String,
    /// Every edge: clients fail over to another when one is unreachable.
    pub edge_urls: Vec<String>,
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
    pub edge_urls: Vec<String>,
}

#[derive(Serialize, ToSchema)]
pub struct Conversation {
    pub id: Uuid,
    /// queued, assigned, resolved or snoozed.
    pub status: String,
    pub assignee: Option<Uuid>,
    pub support_type: String,
    pub subject: Option<String>,
    pub visitor_id: Uuid,
    /// Empty for visitors.
    pub tags: Vec<String>,
    pub last_seq: i64,
    /// Unix ms.
    pub created_at: i64,
    pub updated_at: i64,
    pub resolution_reason: Option<String>,
    pub resolved_at: Option<i64>,
    pub csat: Option<Csat>,
    /// Staff only: queue priority (higher first).
    pub priority: Option<i32>,
    /// Staff only.
    pub first_response_at: Option<i64>,
    /// Staff only: when it entered the queue, while queued.
    pub queued_at: Option<i64>,
    /// Staff only: agents taking part.
    pub participants: Option<Vec<Uuid>>,
}

#[derive(Serialize, ToSchema)]
pub struct Csat {
    pub score: i32,
    pub comment: Option<String>,
}

#[derive(Serialize, ToSchema)]
pub struct ConversationBody {
    pub conversation: Conversation,
}

#[derive(Serialize, ToSchema)]
pub struct ConversationList {
    pub conversations: Vec<Conversation>,
    /// Pass as `cursor` for the next page; null on the last page.
    pub next_cursor: Option<String>,
}

#[derive(Serialize, ToSchema)]
pub struct QueueDepth {
    pub key: String,
    pub depth: i64,
    pub oldest_wait_ms: i64,
}

#[derive(Serialize, ToSchema)]
pub struct QueueBody {
    /// In assignment order: priority, then waiting longest.
    pub conversations: Vec<Conversation>,
    pub support_types: Vec<QueueDepth>,
}

#[derive(Serialize, ToSchema)]
pub struct TagsBody {
    pub tags: Vec<String>,
}

/// A candidate considered by a routing decision.
#[derive(Serialize, ToSchema)]
pub struct Candidate {
    pub agent: Uuid,
    /// Why it was passed over (offline, away, at_capacity, excluded, lost_race, locked,
    /// not_reached, bot_unavailable); absent for the chosen one.
    pub skipped: Option<String>,
}

#[derive(Serialize, ToSchema)]
pub struct AssignmentRecord {
    pub id: Uuid,
    pub at: i64,
    /// routed, queued, dequeued, assigned, transferred, escalated, handoff, reopened,
    /// resolved, snoozed or joined.
    pub action: String,
    /// round_robin, capacity, preferred, bot or manual.
    pub strategy: Option<String>,
    pub agent: Option<Uuid>,
    pub actor: Option<Uuid>,
    pub reason: Option<String>,
    pub candidates: Vec<Candidate>,
}

#[derive(Serialize, ToSchema)]
pub struct Assignments {
    pub assignments: Vec<AssignmentRecord>,
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

/// A webhook as listed (the secret is shown only when it is created).
#[derive(Serialize, ToSchema)]
pub struct Webhook {
    pub id: Uuid,
    pub url: String,
    pub events: Vec<String>,
    /// Unix ms.
    pub created_at: i64,
}

/// A webhook just created, with its signing secret.
#[derive(Serialize, ToSchema)]
pub struct NewWebhook {
    pub id: Uuid,
    pub url: String,
    pub events: Vec<String>,
    /// Key of the `Relaydesk-Signature` HMAC-SHA256; shown only here.
    pub secret: String,
    /// Unix ms.
    pub created_at: i64,
}

#[derive(Serialize, ToSchema)]
pub struct WebhookCreated {
    pub webhook: NewWebhook,
}

#[derive(Serialize, ToSchema)]
pub struct WebhookList {
    pub webhooks: Vec<Webhook>,
}

/// One event for one webhook, and how its delivery went.
#[derive(Serialize, ToSchema)]
pub struct WebhookDelivery {
    /// The `Relaydesk-Event-Id` header: the same on every attempt.
    pub event_id: Uuid,
    pub event: String,
    /// Attempts made so far.
    pub attempts: i32,
    /// Unix ms of the 2xx answer; null until then.
    pub delivered_at: Option<i64>,
    /// True once every attempt was refused.
    pub failed: bool,
    /// HTTP status of the last attempt, if it got an answer.
    pub last_status: Option<i32>,
    pub last_error: Option<String>,
    /// Unix ms of the next attempt while one is due.
    pub next_attempt_at: Option<i64>,
    /// Unix ms.
    pub created_at: i64,
}

#[derive(Serialize, ToSchema)]
pub struct WebhookDeliveries {
    /// Newest first.
    pub deliveries: Vec<WebhookDelivery>,
}

/// A page view reported by the widget.
#[derive(Serialize, ToSchema)]
pub struct PageView {
    pub id: Uuid,
    pub url: String,
    pub title: Option<String>,
    pub referrer: Option<String>,
    /// Unix ms.
    pub at: i64,
}

/// One of a visitor's conversations, as their profile lists it.
#[derive(Serialize, ToSchema)]
pub struct VisitorConversation {
    pub id: Uuid,
    pub status: String,
    pub support_type: String,
    pub subject: Option<String>,
    /// Unix ms.
    pub created_at: i64,
    pub resolved_at: Option<i64>,
    pub csat_score: Option<i32>,
}

#[derive(Serialize, ToSchema)]
pub struct Visitor {
    pub id: Uuid,
    pub external_id: Option<String>,
    pub name: Option<String>,
    pub email: Option<String>,
    /// Identified by the tenant's identity hash.
    pub verified: bool,
    /// Set by the tenant (API key, or a verified widget session).
    pub attributes: serde_json::Value,
    /// Unix ms.
    pub first_seen_at: i64,
    pub last_seen_at: i64,
    pub current_page: Option<String>,
    pub user_agent: Option<String>,
    /// Holds a live connection to an edge.
    pub online: bool,
    /// Profile only: the last 50 page views, newest first.
    pub pages: Option<Vec<PageView>>,
    /// Profile only: newest first.
    pub conversations: Option<Vec<VisitorConversation>>,
}

#[derive(Serialize, ToSchema)]
pub struct VisitorBody {
    pub visitor: Visitor,
}

#[derive(Serialize, ToSchema)]
pub struct VisitorList {
    /// Most recently seen first.
    pub visitors: Vec<Visitor>,
    /// Pass as `cursor` for the next page; null on the last page.
    pub next_cursor: Option<String>,
}

#[derive(Serialize, ToSchema)]
pub struct BlastRef {
    pub id: Uuid,
    /// Visitors whose conversation holds the message.
    pub recipients: u64,
}

#[derive(Serialize, ToSchema)]
pub struct BlastBody {
    pub blast: BlastRef,
}

/// What the widget shows before a visitor writes.
#[derive(Serialize, ToSchema)]
pub struct WidgetConfig {
    pub tenant: WidgetTenant,
    /// Whether a human agent is online now.
    pub online: bool,
    pub agents_online: i64,
}

#[derive(Serialize, ToSchema)]
pub struct WidgetTenant {
    pub name: String,
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
            "/v1/conversations/{id}/assign",
            "/v1/conversations/{id}/transfer",
            "/v1/conversations/{id}/escalate",
            "/v1/conversations/{id}/handoff",
            "/v1/conversations/{id}/resolve",
            "/v1/conversations/{id}/reopen",
            "/v1/conversations/{id}/snooze",
            "/v1/conversations/{id}/participants",
            "/v1/conversations/{id}/notes",
            "/v1/conversations/{id}/tags",
            "/v1/conversations/{id}/csat",
            "/v1/conversations/{id}/assignments",
            "/v1/queue",
            "/v1/agents/{id}",
            "/v1/support-types",
            "/v1/support-types/{key}",
            "/v1/teams",
            "/v1/teams/{id}/members",
        ] {
            assert!(
                paths.contains_key(p),
                "{p} missing from the OpenAPI document"
            );
        }
        assert!(doc["openapi"].as_str().unwrap().starts_with("3.1"));
    }

    #[test]
    fn documents_401_and_puts_query_parameters_in_the_query() {
        let doc = serde_json::to_value(ApiDoc::openapi()).unwrap();
        let get = &doc["paths"]["/v1/agents"]["get"];
        assert!(get["responses"].get("401").is_some(), "{get}");
        let params = get["parameters"].as_array().unwrap();
        assert!(!params.is_empty());
        for p in params {
            assert_eq!(p["in"], "query", "{p}");
        }
        let login = &doc["paths"]["/v1/auth/login"]["post"]["responses"];
        assert!(login.get("401").is_some(), "{login}");
        let config = &doc["paths"]["/v1/widget/config"]["get"];
        assert!(config["responses"].get("401").is_none(), "public: {config}");
    }

    #[test]
    fn documents_the_input_refusals() {
        let doc = serde_json::to_value(ApiDoc::openapi()).unwrap();
        let post = &doc["paths"]["/v1/conversations/{id}/messages"]["post"]["responses"];
        for status in ["400", "408", "413"] {
            assert_eq!(
                post[status]["content"]["application/json"]["schema"]["$ref"],
                "#/components/schemas/ErrorBody",
                "{status}: {post}"
            );
        }
        let get = &doc["paths"]["/v1/conversations/{id}"]["get"]["responses"];
        assert!(get.get("400").is_some(), "{get}");
        assert!(get.get("413").is_none(), "{get}");
    }
}
