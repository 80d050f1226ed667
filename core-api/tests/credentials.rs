//! Revocable credentials: a role change, deactivation, password change, logout and
//! log-out-everywhere revoke an agent's earlier tokens at once, over HTTP and on the
//! edges (open sockets closed with 4501, `hello` refused); API keys rotate.

#![allow(clippy::unwrap_used)]

mod common;

use common::{uuid, Next, Stack, Tenant, Ws};
use relaydesk_shared::token::Role;
use reqwest::Method;
use serde_json::{json, Value};
use uuid::Uuid;

const PASSWORD: &str = "correct horse";

struct Staff {
    id: Uuid,
    email: String,
    /// Session token.
    token: String,
    /// Connection token minted with `token`.
    connect: String,
}

/// An online agent of `role` with one session.
async fn staff(stack: &Stack, t: &Tenant, role: &str) -> Staff {
    let email = format!("{}@acme.test", Uuid::new_v4().simple());
    let body = json!({"name": "Ann", "email": email, "password": PASSWORD, "role": role});
    let (status, body) = stack.post("/v1/agents", &t.api_key, body).await;
    assert_eq!(status, 201, "{body}");
    assert_eq!(body["agent"]["active"], true);
    let id = uuid(&body["agent"]["id"]);
    let token = login(stack, t, &email, PASSWORD).await;
    assert_eq!(set_online(stack, id, &token).await, 200);
    let connect = connect_token(stack, &token).await;
    Staff {
        id,
        email,
        token,
        connect,
    }
}

/// A new session token (panics unless the login succeeds).
async fn login(stack: &Stack, t: &Tenant, email: &str, password: &str) -> String {
    let (status, body) = try_login(stack, t, email, password).await;
    assert_eq!(status, 200, "{body}");
    body["token"].as_str().unwrap().to_owned()
}

async fn try_login(stack: &Stack, t: &Tenant, email: &str, password: &str) -> (u16, Value) {
    stack
        .post(
            "/v1/auth/login",
            "",
            json!({"tenant": t.id, "email": email, "password": password}),
        )
        .await
}

async fn connect_token(stack: &Stack, token: &str) -> String {
    let (status, body) = stack.post("/v1/connect-tokens", token, json!({})).await;
    assert_eq!(status, 200, "{body}");
    body["token"].as_str().unwrap().to_owned()
}

/// `PUT /v1/agents/{id}/status` online with `token`: the status code (any agent may set
/// its own status, so this tells whether the token is accepted).
async fn set_online(stack: &Stack, id: Uuid, token: &str) -> u16 {
    let path = format!("/v1/agents/{id}/status");
    stack
        .send(Method::PUT, &path, token, json!({"status": "online"}))
        .await
        .0
}

/// Sends `hello` with `token` on a new connection to `url`: the close code if the edge
/// refuses it, or `None` with the connection if it is welcomed.
async fn hello(url: &str, token: &str) -> Result<(Ws, Value), Option<u16>> {
    let mut ws = Ws::open(url).await;
    ws.send(json!({"t": "hello", "token": token})).await;
    match ws.next().await {
        Next::Frame(f) if f["t"] == "welcome" => Ok((ws, f)),
        Next::Frame(f) => panic!("unexpected frame {f}"),
        Next::Closed(code) => Err(code),
    }
}

/// A revoked connection token on an edge: refused at `hello`, or (on an edge that has not
/// heard of the revocation yet: it re-reads the set every 2 s) welcomed and then closed.
async fn refused_within_reload(url: &str, token: &str) -> Option<u16> {
    match hello(url, token).await {
        Err(code) => code,
        Ok((mut ws, _)) => ws.close_code().await,
    }
}

/// Whether an open connection still answers a `ping`.
async fn alive(ws: &mut Ws) -> bool {
    ws.send(json!({"t": "ping"})).await;
    loop {
        match ws.next().await {
            Next::Frame(f) if f["t"] == "pong" => return true,
            Next::Frame(_) => continue,
            Next::Closed(_) => return false,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn demoting_an_admin_revokes_its_admin_session_at_once() {
    let stack = Stack::start(1).await;
    let t = stack.tenant().await;
    let admin = staff(&stack, &t, "admin").await;
    assert_eq!(stack.get("/v1/agents", &admin.token).await.0, 200);
    let path = format!("/v1/agents/{}", admin.id);
    // A change that is not of the role revokes nothing.
    let (status, _) = stack
        .send(Method::PATCH, &path, &t.api_key, json!({"name": "Anne"}))
        .await;
    assert_eq!(status, 200);
    assert_eq!(stack.get("/v1/agents", &admin.token).await.0, 200);

    let (status, body) = stack
        .send(Method::PATCH, &path, &t.api_key, json!({"role": "agent"}))
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(stack.get("/v1/agents", &admin.token).await.0, 401);
    let body = json!({"name": "X", "email": "x@acme.test", "password": PASSWORD});
    assert_eq!(stack.post("/v1/agents", &admin.token, body).await.0, 401);
    assert_eq!(set_online(&stack, admin.id, &admin.token).await, 401);

    // A new session works, with the stored role.
    let token = login(&stack, &t, &admin.email, PASSWORD).await;
    assert_eq!(set_online(&stack, admin.id, &token).await, 200);
    assert_eq!(stack.get("/v1/agents", &token).await.0, 403);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_demoted_supervisor_is_closed_and_its_old_connection_token_refused() {
    let stack = Stack::start(2).await;
    let t = stack.tenant().await;
    let sup = staff(&stack, &t, "supervisor").await;
    let (mut ws, welcome) = Ws::connect(&stack.edge_urls[0], &sup.connect).await;
    assert_eq!(welcome["role"], "supervisor");
    // A connection of another agent on the same edge is untouched.
    let other = staff(&stack, &t, "supervisor").await;
    let (mut bystander, _) = Ws::connect(&stack.edge_urls[0], &other.connect).await;

    let path = format!("/v1/agents/{}", sup.id);
    let (status, _) = stack
        .send(Method::PATCH, &path, &t.api_key, json!({"role": "agent"}))
        .await;
    assert_eq!(status, 200);
    assert_eq!(ws.close_code().await, Some(4501));
    // The edge that held the connection knows at once.
    assert_eq!(
        hello(&stack.edge_urls[0], &sup.connect).await.err(),
        Some(Some(4501))
    );
    // Another edge knows within its reload period.
    assert_eq!(
        refused_within_reload(&stack.edge_urls[1], &sup.connect).await,
        Some(4501)
    );
    assert!(alive(&mut bystander).await);

    // A new session's connection says the new role.
    let token = login(&stack, &t, &sup.email, PASSWORD).await;
    let (_ws, welcome) =
        Ws::connect(&stack.edge_urls[1], &connect_token(&stack, &token).await).await;
    assert_eq!(welcome["role"], "agent");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deactivated_agent_cannot_log_in_call_or_stay_connected() {
    let stack = Stack::start(1).await;
    let t = stack.tenant().await;
    let agent = staff(&stack, &t, "agent").await;
    let (mut ws, _) = Ws::connect(&stack.edge_urls[0], &agent.connect).await;

    let path = format!("/v1/agents/{}/deactivate", agent.id);
    assert_eq!(stack.post(&path, &agent.token, json!({})).await.0, 403);
    let (status, body) = stack.post(&path, &t.api_key, json!({})).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["agent"]["active"], false);
    assert_eq!(body["agent"]["status"], "offline");
    assert_eq!(ws.close_code().await, Some(4501));
    assert_eq!(set_online(&stack, agent.id, &agent.token).await, 401);
    assert_eq!(try_login(&stack, &t, &agent.email, PASSWORD).await.0, 401);
    assert_eq!(
        hello(&stack.edge_urls[0], &agent.connect).await.err(),
        Some(Some(4501))
    );
    // Nobody can put it back online or mint a connection token for it.
    assert_eq!(set_online(&stack, agent.id, &t.api_key).await, 409);
    let (status, _) = stack
        .post(
            "/v1/connect-tokens",
            &t.api_key,
            json!({"agent_id": agent.id}),
        )
        .await;
    assert_eq!(status, 403);
    // It takes no new conversation (it was the tenant's only agent).
    let visitor = stack.visitor(&t).await;
    let (_, assignee) = stack.conversation(&visitor).await;
    assert_eq!(assignee, None);

    let path = format!("/v1/agents/{}/activate", agent.id);
    let (status, body) = stack.post(&path, &t.api_key, json!({})).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["agent"]["active"], true);
    let token = login(&stack, &t, &agent.email, PASSWORD).await;
    assert_eq!(set_online(&stack, agent.id, &token).await, 200);
    // The token from before the deactivation stays revoked.
    assert_eq!(set_online(&stack, agent.id, &agent.token).await, 401);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logout_revokes_only_its_own_session() {
    let stack = Stack::start(1).await;
    let t = stack.tenant().await;
    let agent = staff(&stack, &t, "agent").await;
    let second = login(&stack, &t, &agent.email, PASSWORD).await;
    let second_connect = connect_token(&stack, &second).await;
    let (mut ws, _) = Ws::connect(&stack.edge_urls[0], &agent.connect).await;
    let (mut ws2, _) = Ws::connect(&stack.edge_urls[0], &second_connect).await;

    let (status, body) = stack.post("/v1/auth/logout", &agent.token, json!({})).await;
    assert_eq!(status, 204, "{body}");
    assert_eq!(set_online(&stack, agent.id, &agent.token).await, 401);
    assert_eq!(
        stack
            .post("/v1/connect-tokens", &agent.token, json!({}))
            .await
            .0,
        401
    );
    assert_eq!(ws.close_code().await, Some(4501));
    assert_eq!(
        hello(&stack.edge_urls[0], &agent.connect).await.err(),
        Some(Some(4501))
    );

    assert_eq!(set_online(&stack, agent.id, &second).await, 200);
    assert!(alive(&mut ws2).await);
    let (_ws3, _) = Ws::connect(&stack.edge_urls[0], &second_connect).await;
    // Visitors and API keys have no session to log out.
    assert_eq!(
        stack.post("/v1/auth/logout", &t.api_key, json!({})).await.0,
        403
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logout_all_revokes_every_session() {
    let stack = Stack::start(1).await;
    let t = stack.tenant().await;
    let agent = staff(&stack, &t, "agent").await;
    let second = login(&stack, &t, &agent.email, PASSWORD).await;
    let (mut ws, _) = Ws::connect(&stack.edge_urls[0], &agent.connect).await;
    let (mut ws2, _) =
        Ws::connect(&stack.edge_urls[0], &connect_token(&stack, &second).await).await;

    let (status, body) = stack.post("/v1/auth/logout-all", &second, json!({})).await;
    assert_eq!(status, 204, "{body}");
    assert_eq!(set_online(&stack, agent.id, &agent.token).await, 401);
    assert_eq!(set_online(&stack, agent.id, &second).await, 401);
    assert_eq!(ws.close_code().await, Some(4501));
    assert_eq!(ws2.close_code().await, Some(4501));

    let token = login(&stack, &t, &agent.email, PASSWORD).await;
    assert_eq!(set_online(&stack, agent.id, &token).await, 200);
    let (_ws, _) = Ws::connect(&stack.edge_urls[0], &connect_token(&stack, &token).await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_password_change_needs_the_current_one_and_revokes_old_sessions() {
    let stack = Stack::start(1).await;
    let t = stack.tenant().await;
    let agent = staff(&stack, &t, "agent").await;
    let (mut ws, _) = Ws::connect(&stack.edge_urls[0], &agent.connect).await;
    let path = format!("/v1/agents/{}/password", agent.id);

    let wrong = json!({"current": "not it at all", "new": "battery staple"});
    assert_eq!(
        stack.send(Method::PUT, &path, &agent.token, wrong).await.0,
        403
    );
    let missing = json!({"new": "battery staple"});
    assert_eq!(
        stack
            .send(Method::PUT, &path, &agent.token, missing)
            .await
            .0,
        400
    );
    let short = json!({"current": PASSWORD, "new": "short"});
    assert_eq!(
        stack.send(Method::PUT, &path, &agent.token, short).await.0,
        400
    );
    // Nothing changed so far.
    assert_eq!(set_online(&stack, agent.id, &agent.token).await, 200);
    assert!(alive(&mut ws).await);

    let change = json!({"current": PASSWORD, "new": "battery staple"});
    let (status, body) = stack.send(Method::PUT, &path, &agent.token, change).await;
    assert_eq!(status, 204, "{body}");
    assert_eq!(set_online(&stack, agent.id, &agent.token).await, 401);
    assert_eq!(ws.close_code().await, Some(4501));
    assert_eq!(try_login(&stack, &t, &agent.email, PASSWORD).await.0, 401);
    let token = login(&stack, &t, &agent.email, "battery staple").await;
    assert_eq!(set_online(&stack, agent.id, &token).await, 200);

    // Another agent may not set it; the API key may, without the current one.
    let other = staff(&stack, &t, "agent").await;
    let set = json!({"new": "third password"});
    assert_eq!(
        stack
            .send(Method::PUT, &path, &other.token, set.clone())
            .await
            .0,
        403
    );
    assert_eq!(stack.send(Method::PUT, &path, &t.api_key, set).await.0, 204);
    assert_eq!(set_online(&stack, agent.id, &token).await, 401);
    login(&stack, &t, &agent.email, "third password").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_keys_rotate_and_a_deleted_key_fails_at_once() {
    let stack = Stack::start(1).await;
    let t = stack.tenant().await;
    let (status, body) = stack.get("/v1/api-keys", &t.api_key).await;
    assert_eq!(status, 200, "{body}");
    let keys = body["api_keys"].as_array().unwrap();
    assert_eq!(keys.len(), 1);
    let old_id = uuid(&keys[0]["id"]);
    let prefix = keys[0]["prefix"].as_str().unwrap();
    assert!(t.api_key.contains(&prefix[3..]), "{prefix}");
    assert!(prefix.len() < 16);

    let (status, body) = stack.post("/v1/api-keys", &t.api_key, json!({})).await;
    assert_eq!(status, 201, "{body}");
    let new_key = body["key"].as_str().unwrap().to_owned();
    let new_id = uuid(&body["api_key"]["id"]);
    let (status, body) = stack.get("/v1/api-keys", &new_key).await;
    assert_eq!(status, 200);
    let listed = body.to_string();
    assert!(!listed.contains(&new_key) && !listed.contains(&t.api_key));
    assert!(listed.contains(&new_id.to_string()));
    assert_eq!(body["api_keys"].as_array().unwrap().len(), 2);

    let (status, _) = stack
        .send(
            Method::DELETE,
            &format!("/v1/api-keys/{old_id}"),
            &new_key,
            json!({}),
        )
        .await;
    assert_eq!(status, 204);
    assert_eq!(stack.get("/v1/api-keys", &t.api_key).await.0, 401);
    assert_eq!(stack.get("/v1/agents", &t.api_key).await.0, 401);
    assert_eq!(stack.get("/v1/agents", &new_key).await.0, 200);
    let (status, _) = stack
        .send(
            Method::DELETE,
            &format!("/v1/api-keys/{old_id}"),
            &new_key,
            json!({}),
        )
        .await;
    assert_eq!(status, 404);
    // Agents (not admins) may not manage keys; admins may.
    let agent = staff(
        &stack,
        &Tenant {
            api_key: new_key.clone(),
            ..t
        },
        "agent",
    )
    .await;
    assert_eq!(stack.get("/v1/api-keys", &agent.token).await.0, 403);
}

/// The one statement that checks agents' tokens (over HTTP and at `hello`) runs on a
/// pooled connection without a transaction of its own, answers for several tenants at
/// once, sees each agent only in its own tenant, and leaves the connection unscoped.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_tokens_are_checked_in_one_statement() {
    let stack = Stack::start(0).await;
    let (a, b) = (stack.tenant().await, stack.tenant().await);
    let ann = staff(&stack, &a, "supervisor").await;
    let bob = staff(&stack, &a, "agent").await;
    let bots = stack.agent_with(&b, "agent", "bot", 1, false).await;
    let path = format!("/v1/agents/{}/deactivate", bob.id);
    assert_eq!(stack.post(&path, &a.api_key, json!({})).await.0, 200);
    let sid = Uuid::new_v4();
    stack
        .admin_db()
        .await
        .execute(
            "INSERT INTO revoked_sessions (tenant_id, sid, expires_at) VALUES ($1, $2, now() + interval '1 hour')",
            &[&a.id, &sid],
        )
        .await
        .unwrap();

    let pool = relaydesk_core::db::pool(&stack.env.database_url, 1).unwrap();
    let client = pool.get().await.unwrap();
    let keys = [
        (a.id, ann.id, None),
        (a.id, bob.id, Some(sid)),
        (b.id, bots.id, Some(Uuid::new_v4())),
        (b.id, ann.id, None),
        (a.id, bots.id, None),
    ];
    let found = relaydesk_core::auth::standings(&client, &keys)
        .await
        .unwrap();
    assert_eq!(found.len(), 3, "{found:?}");
    let ann_s = found[&keys[0]];
    assert_eq!(
        (ann_s.role, ann_s.version, ann_s.active, ann_s.logged_out),
        (Role::Supervisor, 0, true, false)
    );
    assert!(ann_s.admits(0) && !ann_s.admits(1));
    let bob_s = found[&keys[1]];
    assert_eq!(
        (bob_s.version, bob_s.active, bob_s.logged_out),
        (1, false, true)
    );
    assert!(!bob_s.admits(1));
    let bot_s = found[&keys[2]];
    assert_eq!((bot_s.role, bot_s.logged_out), (Role::Bot, false));
    // No tenant scope outlived the statement, and no transaction was left open (each
    // statement then runs in a transaction of its own).
    let scope: String = client
        .query_one(
            "SELECT coalesce(current_setting('app.tenant_id', true), '')",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(scope, "");
    let started = "SELECT xact_start FROM pg_stat_activity WHERE pid = pg_backend_pid()";
    let first: std::time::SystemTime = client.query_one(started, &[]).await.unwrap().get(0);
    let second: std::time::SystemTime = client.query_one(started, &[]).await.unwrap().get(0);
    assert_ne!(first, second, "the connection is still in a transaction");
}

/// core-api checks every agent's `hello` against PostgreSQL too: revocations the edges
/// never heard of (made here behind the application's back, so nothing reaches Redis)
/// still refuse the token with 4501, while the agent's valid tokens go on working.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn core_api_refuses_at_hello_what_the_database_revoked() {
    let stack = Stack::start(1).await;
    let t = stack.tenant().await;
    let edge = &stack.edge_urls[0];
    let db = stack.admin_db().await;
    let verifier = relaydesk_shared::token::TokenVerifier::from_pem(
        &stack.env.public_pem,
        relaydesk_shared::token::AUD_EDGE,
    )
    .unwrap();

    // An older credential version.
    let ann = staff(&stack, &t, "agent").await;
    db.execute(
        "UPDATE agents SET credential_version = credential_version + 1 WHERE tenant_id = $1 AND id = $2",
        &[&t.id, &ann.id],
    )
    .await
    .unwrap();
    assert_eq!(hello(edge, &ann.connect).await.err(), Some(Some(4501)));
    let fresh = connect_token(&stack, &login(&stack, &t, &ann.email, PASSWORD).await).await;
    hello(edge, &fresh).await.unwrap();

    // A logged-out session; the agent's other session is not.
    let bob = staff(&stack, &t, "agent").await;
    let other = connect_token(&stack, &login(&stack, &t, &bob.email, PASSWORD).await).await;
    let sid = verifier.verify(&bob.connect).unwrap().sid.unwrap();
    db.execute(
        "INSERT INTO revoked_sessions (tenant_id, sid, expires_at) VALUES ($1, $2, now() + interval '1 hour')",
        &[&t.id, &sid],
    )
    .await
    .unwrap();
    assert_eq!(hello(edge, &bob.connect).await.err(), Some(Some(4501)));
    hello(edge, &other).await.unwrap();

    // A deactivated agent; once activated again, its new tokens are welcome.
    let cid = staff(&stack, &t, "agent").await;
    db.execute(
        "UPDATE agents SET deactivated_at = now() WHERE tenant_id = $1 AND id = $2",
        &[&t.id, &cid.id],
    )
    .await
    .unwrap();
    assert_eq!(hello(edge, &cid.connect).await.err(), Some(Some(4501)));
    let path = format!("/v1/agents/{}/activate", cid.id);
    assert_eq!(stack.post(&path, &t.api_key, json!({})).await.0, 200);
    let fresh = connect_token(&stack, &login(&stack, &t, &cid.email, PASSWORD).await).await;
    hello(edge, &fresh).await.unwrap();
    assert_eq!(hello(edge, &cid.connect).await.err(), Some(Some(4501)));

    // Visitors are not agents: welcomed as before.
    let visitor = stack.visitor(&t).await;
    hello(edge, &visitor.connect).await.unwrap();
}

/// Logged-out sessions are deleted by the periodic sweep once their tokens have expired,
/// without waiting for another logout; the others stay.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expired_logged_out_sessions_are_swept() {
    let stack = Stack::start(0).await;
    let t = stack.tenant().await;
    let db = stack.admin_db().await;
    let (expired, live) = (Uuid::new_v4(), Uuid::new_v4());
    db.execute(
        "INSERT INTO revoked_sessions (tenant_id, sid, expires_at)
         VALUES ($1, $2, now() - interval '1 minute'), ($1, $3, now() + interval '1 hour')",
        &[&t.id, &expired, &live],
    )
    .await
    .unwrap();
    let present = |sid: Uuid| {
        let db = &db;
        let tenant = t.id;
        async move {
            db.query_opt(
                "SELECT 1 FROM revoked_sessions WHERE tenant_id = $1 AND sid = $2",
                &[&tenant, &sid],
            )
            .await
            .unwrap()
            .is_some()
        }
    };
    let deadline = tokio::time::Instant::now() + common::WAIT;
    while present(expired).await {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the expired session was not swept"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert!(present(live).await);
}

/// Deactivating an agent routes its conversations again in the same transaction: to
/// another eligible agent while one has room (who hears of it at once), else the queue;
/// the agent's load is released.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deactivating_an_agent_routes_its_conversations_again() {
    let stack = Stack::start(1).await;
    let t = stack.tenant().await;
    let ann = staff(&stack, &t, "agent").await;
    let mut convs = Vec::new();
    for _ in 0..2 {
        let visitor = stack.visitor(&t).await;
        let (conv, assignee) = stack.conversation(&visitor).await;
        assert_eq!(assignee, Some(ann.id));
        convs.push(conv);
    }
    // Bob comes online with room for one.
    let bob = stack.agent_with(&t, "agent", "human", 1, true).await;
    let (mut bob_ws, _) = Ws::connect(&stack.edge_urls[0], &bob.connect).await;

    let path = format!("/v1/agents/{}/deactivate", ann.id);
    let (status, body) = stack.post(&path, &t.api_key, json!({})).await;
    assert_eq!(status, 200, "{body}");
    let states: Vec<Value> =
        futures::future::join_all(convs.iter().map(|c| stack.conversation_state(&t, *c))).await;
    let to_bob: Vec<&Value> = states
        .iter()
        .filter(|s| s["assignee"] == json!(bob.id))
        .collect();
    let queued: Vec<&Value> = states.iter().filter(|s| s["status"] == "queued").collect();
    assert_eq!((to_bob.len(), queued.len()), (1, 1), "{states:?}");
    assert_eq!(queued[0]["assignee"], Value::Null);
    let moved = to_bob[0]["id"].clone();
    let frame = bob_ws
        .wait_for(|f| f["t"] == "conv" && f["conv"] == moved)
        .await;
    assert_eq!(frame["assignee"], json!(bob.id), "{frame}");
    assert_eq!(frame["reason"], "deactivated", "{frame}");
    let (_, agents) = stack.get("/v1/agents", &t.api_key).await;
    let ann_row = agents["agents"]
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["id"] == json!(ann.id))
        .unwrap();
    assert_eq!(ann_row["open_conversations"], 0, "{ann_row}");
    let (_, history) = stack
        .get(
            &format!("/v1/conversations/{}/assignments", convs[0]),
            &t.api_key,
        )
        .await;
    assert!(
        history["assignments"]
            .as_array()
            .unwrap()
            .iter()
            .any(|a| a["action"] == "deactivated" || a["action"] == "queued"),
        "{history}"
    );
}
