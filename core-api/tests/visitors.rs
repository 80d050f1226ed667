//! Visitor tracking (page views, attributes, presence in the profile and the list) and
//! blasts (one request reaching every visitor of a segment live through the edges).

#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use common::{Principal, Stack, Tenant, Ws, WAIT};
use futures::StreamExt;
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::Message as WsMessage;
use uuid::Uuid;

async fn put(stack: &Stack, path: &str, bearer: &str, body: &Value) -> (u16, Value) {
    let r = stack
        .http
        .put(format!("{}{path}", stack.core_url))
        .bearer_auth(bearer)
        .json(body)
        .send()
        .await
        .unwrap();
    (r.status().as_u16(), r.json().await.unwrap_or(Value::Null))
}

async fn blast(stack: &Stack, bearer: &str, key: Option<&str>, body: &Value) -> (u16, Value) {
    let mut req = stack
        .http
        .post(format!("{}/v1/blasts", stack.core_url))
        .bearer_auth(bearer)
        .json(body);
    if let Some(k) = key {
        req = req.header("idempotency-key", k);
    }
    let r = req.send().await.unwrap();
    (r.status().as_u16(), r.json().await.unwrap_or(Value::Null))
}

/// Polls `GET path` until `done` holds for the body; returns that body.
async fn poll(stack: &Stack, path: &str, bearer: &str, done: impl Fn(&Value) -> bool) -> Value {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let (status, body) = stack.get(path, bearer).await;
        assert_eq!(status, 200, "{body}");
        if done(&body) {
            return body;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{path} never reached the expected state: {body}"
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

fn ids(list: &Value) -> Vec<Uuid> {
    list.as_array()
        .unwrap()
        .iter()
        .map(|v| common::uuid(&v["id"]))
        .collect()
}

/// A tenant created by hand, for its identity secret.
async fn tenant_with_secret(stack: &Stack) -> (Tenant, String) {
    let (status, body) = stack
        .post("/v1/tenants", &stack.operator, json!({"name": "Globex"}))
        .await;
    assert_eq!(status, 201, "{body}");
    let t = Tenant {
        id: common::uuid(&body["tenant"]["id"]),
        api_key: body["api_key"].as_str().unwrap().to_owned(),
        site_key: body["tenant"]["site_key"].as_str().unwrap().to_owned(),
    };
    (
        t,
        body["tenant"]["identity_secret"]
            .as_str()
            .unwrap()
            .to_owned(),
    )
}

fn identity_hash(secret: &str, external_id: &str) -> String {
    use hmac::{Mac, SimpleHmac};
    let mut mac = SimpleHmac::<sha2::Sha256>::new_from_slice(secret.as_bytes()).unwrap();
    mac.update(external_id.as_bytes());
    hex::encode(mac.finalize().into_bytes())
}

/// A widget session sent with a `User-Agent`; returns the visitor id.
async fn session(stack: &Stack, body: Value) -> (u16, Value) {
    let r = stack
        .http
        .post(format!("{}/v1/widget/sessions", stack.core_url))
        .header("user-agent", "Mozilla/5.0 (relaydesk test)")
        .json(&body)
        .send()
        .await
        .unwrap();
    (r.status().as_u16(), r.json().await.unwrap_or(Value::Null))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn page_views_attributes_and_presence_show_in_the_profile() {
    let stack = Stack::start(1).await;
    let t = stack.tenant().await;
    let agent = stack.agent(&t, "agent").await;
    let supervisor = stack.agent(&t, "supervisor").await;
    let visitor = stack.visitor(&t).await;
    let other = stack.visitor(&t).await;

    // Page views: validated, newest first, the last one is the current page.
    for (url, title) in [
        ("https://acme.test/pricing", "Pricing"),
        ("https://acme.test/docs", "Docs"),
    ] {
        let (status, body) = stack
            .post(
                "/v1/widget/pageviews",
                &visitor.token,
                json!({"url": url, "title": title, "referrer": "https://search.test/"}),
            )
            .await;
        assert_eq!(status, 204, "{body}");
    }
    for bad in [
        json!({"url": ""}),
        json!({"url": "x".repeat(2049)}),
        json!({"url": "https://acme.test/", "title": "t".repeat(501)}),
        json!({"url": "https://acme.test/", "referrer": "r".repeat(2049)}),
        json!({"title": "no url"}),
    ] {
        let (status, _) = stack
            .post("/v1/widget/pageviews", &visitor.token, bad)
            .await;
        assert_eq!(status, 400);
    }
    let (status, _) = stack
        .post(
            "/v1/widget/pageviews",
            &agent.token,
            json!({"url": "https://acme.test/"}),
        )
        .await;
    assert_eq!(status, 403, "page views come from visitors");

    // Attributes: merged objects only, bounded, set by the API key or an admin.
    let path = format!("/v1/visitors/{}/attributes", visitor.id);
    let (status, body) = put(
        &stack,
        &path,
        &t.api_key,
        &json!({"plan": "pro", "seats": 3}),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let (status, body) = put(&stack, &path, &t.api_key, &json!({"seats": 5})).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        body["visitor"]["attributes"],
        json!({"plan": "pro", "seats": 5})
    );
    for bad in [
        json!([1, 2]),
        json!("pro"),
        json!({"k": "x".repeat(16 * 1024)}),
    ] {
        let (status, _) = put(&stack, &path, &t.api_key, &bad).await;
        assert_eq!(status, 400, "{bad:.40}");
    }
    let (status, _) = put(&stack, &path, &agent.token, &json!({"plan": "free"})).await;
    assert_eq!(status, 403, "agents do not set attributes");

    // The profile, with `online` following the visitor's connection.
    let (conv, _) = stack.conversation(&visitor).await;
    let profile_path = format!("/v1/visitors/{}", visitor.id);
    let (status, body) = stack.get(&profile_path, &agent.token).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["visitor"]["online"], false);
    let (mut ws, _) = Ws::connect(&stack.edge_urls[0], &visitor.connect).await;
    let body = poll(&stack, &profile_path, &agent.token, |b| {
        b["visitor"]["online"] == true
    })
    .await;
    let v = &body["visitor"];
    assert_eq!(v["id"], json!(visitor.id));
    assert_eq!(v["verified"], false);
    assert_eq!(v["attributes"], json!({"plan": "pro", "seats": 5}));
    assert_eq!(v["current_page"], "https://acme.test/docs");
    let urls: Vec<&str> = v["pages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["url"].as_str().unwrap())
        .collect();
    assert_eq!(
        urls,
        ["https://acme.test/docs", "https://acme.test/pricing"]
    );
    assert_eq!(v["pages"][0]["title"], "Docs");
    assert_eq!(v["pages"][0]["referrer"], "https://search.test/");
    assert!(v["pages"][0]["at"].as_i64().unwrap() > 0);
    assert!(v["last_seen_at"].as_i64().unwrap() >= v["first_seen_at"].as_i64().unwrap());
    assert_eq!(ids(&v["conversations"]), [conv]);
    assert_eq!(v["conversations"][0]["subject"], "help");
    assert_eq!(v["conversations"][0]["csat_score"], Value::Null);
    let (status, by_key) = stack.get(&profile_path, &t.api_key).await;
    assert_eq!(status, 200);
    assert_eq!(by_key["visitor"]["id"], json!(visitor.id));

    // Nobody else reads it: not another visitor, not another tenant.
    let (status, _) = stack.get(&profile_path, &other.token).await;
    assert!(status == 403 || status == 404, "{status}");
    let (status, _) = stack.get(&profile_path, &visitor.token).await;
    assert!(status == 403 || status == 404, "{status}");
    let (t2, secret) = tenant_with_secret(&stack).await;
    let (status, body) = stack.get(&profile_path, &t2.api_key).await;
    assert_eq!(status, 404, "{body}");
    let (status, _) = put(&stack, &path, &t2.api_key, &json!({"plan": "stolen"})).await;
    assert_eq!(status, 404);

    // The list: supervisors and the key; `online` keeps only connected visitors.
    let (status, _) = stack.get("/v1/visitors", &agent.token).await;
    assert_eq!(status, 403, "the list is for supervisors");
    let (status, body) = stack
        .get("/v1/visitors?online=true", &supervisor.token)
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(ids(&body["visitors"]), [visitor.id]);
    assert_eq!(body["visitors"][0]["online"], true);
    assert_eq!(body["next_cursor"], Value::Null);
    let (status, body) = stack.get("/v1/visitors", &t.api_key).await;
    assert_eq!(status, 200, "{body}");
    let all = ids(&body["visitors"]);
    assert_eq!(all.len(), 2);
    assert_eq!(all[0], visitor.id, "the most recently seen first");
    // One per page: the cursor walks through both, then ends.
    let (_, first) = stack.get("/v1/visitors?limit=1", &t.api_key).await;
    let cursor = first["next_cursor"].as_str().unwrap().to_owned();
    let (_, second) = stack
        .get(&format!("/v1/visitors?limit=1&cursor={cursor}"), &t.api_key)
        .await;
    assert_eq!(ids(&first["visitors"]), [visitor.id]);
    assert_eq!(ids(&second["visitors"]), [other.id]);
    assert_eq!(second["next_cursor"], Value::Null);
    for bad in ["/v1/visitors?limit=0", "/v1/visitors?cursor=nope"] {
        let (status, _) = stack.get(bad, &t.api_key).await;
        assert_eq!(status, 400, "{bad}");
    }

    // The API document describes the new routes.
    let (_, doc) = stack.get("/v1/openapi.json", "").await;
    for p in [
        "/v1/widget/pageviews",
        "/v1/visitors",
        "/v1/visitors/{id}",
        "/v1/visitors/{id}/attributes",
        "/v1/blasts",
    ] {
        assert!(doc["paths"][p].is_object(), "{p} is not documented");
    }

    // Gone offline once the connection closes.
    ws.stream.close(None).await.unwrap();
    poll(&stack, &profile_path, &agent.token, |b| {
        b["visitor"]["online"] == false
    })
    .await;

    // Widget sessions record the user agent; attributes are stored for new anonymous
    // visitors and merged for verified ones.
    let (status, body) = session(
        &stack,
        json!({"site_key": t.site_key, "visitor": {"attributes": {"source": "ad"}}}),
    )
    .await;
    assert_eq!(status, 201, "{body}");
    let anon = common::uuid(&body["visitor"]["id"]);
    let (_, body) = stack.get(&format!("/v1/visitors/{anon}"), &t.api_key).await;
    assert_eq!(body["visitor"]["attributes"], json!({"source": "ad"}));
    assert_eq!(
        body["visitor"]["user_agent"],
        "Mozilla/5.0 (relaydesk test)"
    );
    let (status, _) = session(
        &stack,
        json!({"site_key": t.site_key, "visitor": {"attributes": ["not", "an", "object"]}}),
    )
    .await;
    assert_eq!(status, 400);
    let hash = identity_hash(&secret, "user-42");
    let mut verified = Uuid::nil();
    for attributes in [json!({"plan": "pro"}), json!({"seats": 7})] {
        let identity = json!({"external_id": "user-42", "hash": hash, "name": "Eve", "attributes": attributes});
        let (status, body) = session(
            &stack,
            json!({"site_key": t2.site_key, "visitor": identity}),
        )
        .await;
        assert_eq!(status, 201, "{body}");
        for field in ["token", "connect_token", "edge_url"] {
            assert!(body[field].is_string(), "{field} missing: {body}");
        }
        assert_eq!(
            body["visitor"].as_object().unwrap().len(),
            1,
            "the visitor is still only its id: {body}"
        );
        verified = common::uuid(&body["visitor"]["id"]);
    }
    let (_, body) = stack
        .get(&format!("/v1/visitors/{verified}"), &t2.api_key)
        .await;
    assert_eq!(body["visitor"]["verified"], true);
    assert_eq!(body["visitor"]["external_id"], "user-42");
    assert_eq!(
        body["visitor"]["attributes"],
        json!({"plan": "pro", "seats": 7})
    );
    assert_eq!(
        body["visitor"]["user_agent"],
        "Mozilla/5.0 (relaydesk test)"
    );
}

/// The first text frame `ws` receives within `wait`, if any (pings do not count).
async fn silent_for(ws: &mut Ws, wait: Duration) -> Option<String> {
    let deadline = tokio::time::Instant::now() + wait;
    loop {
        match tokio::time::timeout_at(deadline, ws.stream.next()).await {
            Err(_) => return None,
            Ok(Some(Ok(WsMessage::Text(t)))) => return Some(t.to_string()),
            Ok(Some(Ok(_))) => continue,
            Ok(other) => panic!("connection ended: {other:?}"),
        }
    }
}

async fn with_plan(stack: &Stack, t: &Tenant, plan: &str) -> Principal {
    let v = stack.visitor(t).await;
    let (status, body) = put(
        stack,
        &format!("/v1/visitors/{}/attributes", v.id),
        &t.api_key,
        &json!({ "plan": plan }),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    v
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_blast_reaches_its_segment_live_and_a_reply_reopens_it() {
    let stack = Stack::start(1).await;
    let t = stack.tenant().await;
    let agent = stack.agent(&t, "agent").await;
    let pro_with = with_plan(&stack, &t, "pro").await;
    let pro_new = with_plan(&stack, &t, "pro").await;
    let free = with_plan(&stack, &t, "free").await;
    let (existing, _) = stack.conversation(&pro_with).await;
    let url = &stack.edge_urls[0];
    let (mut ws_with, _) = Ws::connect(url, &pro_with.connect).await;
    let (mut ws_new, _) = Ws::connect(url, &pro_new.connect).await;
    let (mut ws_free, _) = Ws::connect(url, &free.connect).await;

    // Refused: no criterion, everyone without `all`, unknown fields, the wrong callers.
    for bad in [
        json!({"text": "x", "segment": {}}),
        json!({"text": "x", "segment": {"attributes": {}}}),
        json!({"text": "x", "segment": {"atributes": {"plan": "pro"}}}),
        json!({"text": "", "segment": {"attributes": {"plan": "pro"}}}),
        json!({"text": "x", "segment": {"attributes": ["pro"]}}),
    ] {
        let (status, body) = blast(&stack, &t.api_key, None, &bad).await;
        assert_eq!(status, 400, "{bad} → {body}");
    }
    let request = json!({"text": "maintenance at 9", "segment": {"attributes": {"plan": "pro"}}});
    for who in [&agent.token, &pro_new.token] {
        let (status, _) = blast(&stack, who, None, &request).await;
        assert_eq!(status, 403);
    }

    let (status, body) = blast(&stack, &t.api_key, Some("nightly-1"), &request).await;
    assert_eq!(status, 201, "{body}");
    assert_eq!(body["blast"]["recipients"], 2);
    let blast_id = body["blast"]["id"].clone();

    // The visitor with a conversation gets the message in it.
    let got = ws_with
        .wait_for(|f| f["t"] == "msg" && f["conv"] == json!(existing))
        .await;
    assert_eq!(got["body"]["text"], "maintenance at 9");
    assert_eq!(got["from"]["role"], "admin");
    assert_eq!(got["from"]["name"], "Acme");

    // The other is first subscribed to a new conversation, then gets the message.
    let first = ws_new
        .wait_for(|f| f["t"] == "msg" || (f["t"] == "conv" && f["event"] == "created"))
        .await;
    assert_eq!(
        first["t"], "conv",
        "the conversation is announced first: {first}"
    );
    assert_eq!(first["status"], "snoozed");
    let conv = common::uuid(&first["conv"]);
    let got = ws_new
        .wait_for(|f| f["t"] == "msg" && f["conv"] == json!(conv))
        .await;
    assert_eq!(got["body"]["text"], "maintenance at 9");
    assert_eq!(got["seq"], 1);
    let (status, body) = stack
        .get(&format!("/v1/conversations/{conv}"), &pro_new.token)
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["conversation"]["status"], "snoozed");
    assert_eq!(
        body["conversation"]["assignee"],
        Value::Null,
        "no agent until they answer"
    );

    // The free visitor got nothing, live or stored.
    let (status, body) = stack.get("/v1/conversations", &free.token).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["conversations"], json!([]));
    assert_eq!(
        silent_for(&mut ws_free, Duration::from_millis(500)).await,
        None
    );

    // The same blast again (a retry) stores nothing twice; a different one under the
    // same key is refused.
    let (status, body) = blast(&stack, &t.api_key, Some("nightly-1"), &request).await;
    assert_eq!(status, 201, "{body}");
    assert_eq!(body["blast"]["id"], blast_id);
    assert_eq!(body["blast"]["recipients"], 2);
    for c in [existing, conv] {
        let (_, body) = stack
            .get(&format!("/v1/conversations/{c}/messages"), &t.api_key)
            .await;
        let blasts = body["messages"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|m| m["body"]["text"] == "maintenance at 9")
            .count();
        assert_eq!(blasts, 1, "{body}");
    }
    let changed = json!({"text": "maintenance at 10", "segment": {"attributes": {"plan": "pro"}}});
    let (status, _) = blast(&stack, &t.api_key, Some("nightly-1"), &changed).await;
    assert_eq!(status, 409);

    // Answering over the wire wakes the blast conversation: it is routed like any other.
    let acc = ws_new
        .send_message(conv, "reply-1", "what maintenance?")
        .await;
    assert_eq!(acc["t"], "accepted", "{acc}");
    let body = poll(
        &stack,
        &format!("/v1/conversations/{conv}"),
        &pro_new.token,
        |b| b["conversation"]["status"] == "assigned" || b["conversation"]["status"] == "queued",
    )
    .await;
    let status = body["conversation"]["status"].as_str().unwrap();
    assert!(status == "assigned" || status == "queued", "{body}");

    // Still nothing for the free visitor.
    assert_eq!(
        silent_for(&mut ws_free, Duration::from_millis(200)).await,
        None
    );
}
