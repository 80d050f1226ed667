//! Webhooks end to end: events written in the transaction of each change reach a
//! receiver signed, are retried with the same id and body after a refusal, and show as
//! delivered; the management API checks its input and keeps tenants apart.

#![allow(clippy::unwrap_used)]

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use common::Stack;
use relaydesk_core::webhooks::sign;
use serde_json::{json, Value};

const EVENTS: [&str; 5] = [
    "conversation.created",
    "conversation.assigned",
    "message.created",
    "conversation.resolved",
    "csat.submitted",
];

/// One request the receiver got, and what it answered.
#[derive(Clone)]
struct Received {
    headers: HeaderMap,
    body: Bytes,
    answered: u16,
}

impl Received {
    fn header(&self, name: &str) -> &str {
        self.headers
            .get(name)
            .unwrap_or_else(|| panic!("no {name} header"))
            .to_str()
            .unwrap()
    }
}

type Log = Arc<Mutex<Vec<Received>>>;

/// Refuses (500) the first request of each event id, accepts (200) the later ones.
async fn receive(State(log): State<Log>, headers: HeaderMap, body: Bytes) -> StatusCode {
    let mut log = log.lock().unwrap();
    let id = headers
        .get("relaydesk-event-id")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    let seen = log.iter().any(|r| {
        r.headers
            .get("relaydesk-event-id")
            .and_then(|v| v.to_str().ok())
            == Some(id)
    });
    let status = if seen {
        StatusCode::OK
    } else {
        StatusCode::INTERNAL_SERVER_ERROR
    };
    log.push(Received {
        headers,
        body,
        answered: status.as_u16(),
    });
    status
}

/// A receiving server on 127.0.0.1:0; returns its URL and its log.
async fn receiver() -> (String, Log) {
    let log = Log::default();
    let app = axum::Router::new()
        .route("/hook", axum::routing::post(receive))
        .with_state(log.clone());
    let (listener, addr) = common::listener().await;
    tokio::spawn(async move { axum::serve(listener, app).await });
    (format!("http://{addr}/hook"), log)
}

/// Polls `check` until it returns `Some`, failing after `common::WAIT`.
async fn eventually<T, F, Fut>(what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + common::WAIT * 2;
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(tokio::time::Instant::now() < deadline, "timed out: {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_are_signed_retried_and_delivered() {
    let stack = Stack::start(1).await;
    let t = stack.tenant().await;
    let agent = stack.agent(&t, "agent").await;
    let visitor = stack.visitor(&t).await;
    let (url, log) = receiver().await;

    // Input is checked.
    for bad in [
        json!({"url": "ftp://example.com/hook", "events": ["message.created"]}),
        json!({"url": "not a url", "events": ["message.created"]}),
        json!({"url": url, "events": ["conversation.exploded"]}),
        json!({"url": url, "events": []}),
    ] {
        let (status, body) = stack.post("/v1/webhooks", &t.api_key, bad.clone()).await;
        assert_eq!(status, 400, "{bad} → {body}");
        assert_eq!(body["error"]["code"], "bad_request");
    }
    let (status, _) = stack
        .post(
            "/v1/webhooks",
            &visitor.token,
            json!({"url": url, "events": ["message.created"]}),
        )
        .await;
    assert_eq!(status, 403, "visitors cannot register webhooks");

    let (status, body) = stack
        .post(
            "/v1/webhooks",
            &t.api_key,
            json!({"url": url, "events": EVENTS}),
        )
        .await;
    assert_eq!(status, 201, "{body}");
    let hook = &body["webhook"];
    let hook_id = common::uuid(&hook["id"]);
    let secret = hook["secret"].as_str().unwrap().to_owned();
    assert_eq!(secret.len(), 64, "32 random bytes, hex");
    assert_eq!(hook["events"], json!(EVENTS));
    assert!(hook["created_at"].as_i64().unwrap() > 0);
    let (status, body) = stack.get("/v1/webhooks", &t.api_key).await;
    assert_eq!(status, 200, "{body}");
    let listed = body["webhooks"].as_array().unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0]["id"], json!(hook_id));
    assert!(
        listed[0].get("secret").is_none(),
        "the secret is shown only once"
    );

    // A conversation's life: created and assigned, a message, resolved, rated.
    let (conv, assignee) = stack.conversation(&visitor).await;
    assert_eq!(assignee, Some(agent.id));
    let (status, _) = stack.post_text(conv, &visitor.token, "m-1", "hello").await;
    assert_eq!(status, 201);
    let (status, body) = stack
        .post(
            &format!("/v1/conversations/{conv}/resolve"),
            &agent.token,
            json!({"reason": "solved"}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let (status, body) = stack
        .post(
            &format!("/v1/conversations/{conv}/csat"),
            &visitor.token,
            json!({"score": 5}),
        )
        .await;
    assert_eq!(status, 200, "{body}");

    // Every kind arrives, each accepted after a refusal.
    let received = eventually("every event delivered after one refusal", || {
        let log = log.clone();
        async move {
            let log = log.lock().unwrap().clone();
            let delivered: BTreeSet<&str> = log
                .iter()
                .filter(|r| r.answered == 200)
                .map(|r| r.header("relaydesk-event"))
                .collect();
            (delivered.len() == EVENTS.len()).then_some(log)
        }
    })
    .await;

    let mut by_id: BTreeMap<String, Vec<&Received>> = BTreeMap::new();
    for r in &received {
        // Signed with the webhook's secret, recently.
        assert_eq!(r.header("content-type"), "application/json");
        let signature = r.header("relaydesk-signature");
        let (t_part, v1_part) = signature.split_once(',').unwrap();
        let ts: u64 = t_part.strip_prefix("t=").unwrap().parse().unwrap();
        let v1 = v1_part.strip_prefix("v1=").unwrap();
        assert_eq!(v1, sign(&secret, ts, &r.body), "signature of {signature}");
        assert_ne!(v1, sign("some other secret", ts, &r.body));
        assert!(unix_now().abs_diff(ts) <= 60, "stale timestamp {ts}");
        // The body is the event, naming itself like the headers do.
        let payload: Value = serde_json::from_slice(&r.body).unwrap();
        assert_eq!(payload["id"], r.header("relaydesk-event-id"));
        assert_eq!(payload["event"], r.header("relaydesk-event"));
        assert_eq!(payload["tenant"], json!(t.id));
        assert!(payload["created_at"].as_u64().unwrap() > 0);
        assert!(payload["data"].is_object());
        by_id
            .entry(r.header("relaydesk-event-id").to_owned())
            .or_default()
            .push(r);
    }
    assert_eq!(by_id.len(), EVENTS.len(), "one event id per kind");
    let mut kinds = BTreeSet::new();
    for (id, attempts) in &by_id {
        assert!(attempts.len() >= 2, "{id} was not redelivered");
        assert_eq!(attempts[0].answered, 500, "{id}: the first was refused");
        assert_eq!(attempts[1].answered, 200, "{id}: the retry was accepted");
        for a in &attempts[1..] {
            assert_eq!(a.body, attempts[0].body, "{id}: a retry has the same body");
            assert_eq!(
                a.header("relaydesk-event"),
                attempts[0].header("relaydesk-event")
            );
        }
        kinds.insert(attempts[0].header("relaydesk-event").to_owned());
    }
    assert_eq!(
        kinds,
        EVENTS
            .iter()
            .map(|e| e.to_string())
            .collect::<BTreeSet<_>>()
    );
    let created: Value = serde_json::from_slice(
        &by_id
            .values()
            .find(|a| a[0].header("relaydesk-event") == "conversation.created")
            .unwrap()[0]
            .body,
    )
    .unwrap();
    assert_eq!(created["data"]["conversation"]["id"], json!(conv));

    // The delivery log agrees: two attempts each, delivered.
    let path = format!("/v1/webhooks/{hook_id}/deliveries");
    let (s, p, key) = (&stack, &path, &t.api_key);
    let deliveries = eventually("the deliveries recorded as delivered", move || async move {
        let (status, body) = s.get(p, key).await;
        assert_eq!(status, 200, "{body}");
        let list = body["deliveries"].as_array().unwrap().clone();
        let done = list.len() == EVENTS.len() && list.iter().all(|d| !d["delivered_at"].is_null());
        done.then_some(list)
    })
    .await;
    for d in &deliveries {
        assert_eq!(d["attempts"], 2, "{d}");
        assert_eq!(d["failed"], false, "{d}");
        assert_eq!(d["last_status"], 200, "{d}");
        assert!(d["next_attempt_at"].is_null(), "{d}");
        let id = d["event_id"].as_str().unwrap();
        assert!(by_id.contains_key(id), "{id} was never received");
        assert_eq!(by_id[id][0].header("relaydesk-event"), d["event"]);
    }
    let (status, _) = stack.get(&format!("{path}?limit=0"), &t.api_key).await;
    assert_eq!(status, 400);

    // Another tenant sees none of it, and is held to 20 webhooks.
    let other = stack.tenant().await;
    let delete = |key: String| {
        let request = stack
            .http
            .delete(format!("{}/v1/webhooks/{hook_id}", stack.core_url))
            .bearer_auth(key);
        async move { request.send().await.unwrap().status().as_u16() }
    };
    assert_eq!(delete(other.api_key.clone()).await, 404);
    let (status, _) = stack.get(&path, &other.api_key).await;
    assert_eq!(status, 404);
    let (_, body) = stack.get("/v1/webhooks", &other.api_key).await;
    assert_eq!(body["webhooks"], json!([]));
    let spare = json!({"url": "http://127.0.0.1:9/never", "events": ["csat.submitted"]});
    for _ in 0..20 {
        let (status, body) = stack
            .post("/v1/webhooks", &other.api_key, spare.clone())
            .await;
        assert_eq!(status, 201, "{body}");
    }
    let (status, body) = stack.post("/v1/webhooks", &other.api_key, spare).await;
    assert_eq!(status, 409, "{body}");
    assert_eq!(body["error"]["code"], "conflict");

    // The owner deletes it; its deliveries go with it.
    assert_eq!(delete(t.api_key.clone()).await, 204);
    assert_eq!(delete(t.api_key.clone()).await, 404);
    let (status, _) = stack.get(&path, &t.api_key).await;
    assert_eq!(status, 404);
    let (_, body) = stack.get("/v1/webhooks", &t.api_key).await;
    assert_eq!(body["webhooks"], json!([]));
}
