//! Routing and assignment against real PostgreSQL and Redis: each strategy, the queue
//! draining in order, capacity under concurrent routers in several core-api processes,
//! choosing around a held agent row, and the availability grace period.

mod common;

use std::collections::HashMap;
use std::time::Duration;

use common::{uuid, Principal, Stack, Tenant, Ws, WAIT};
use serde_json::{json, Value};
use uuid::Uuid;

async fn support_type(stack: &Stack, t: &Tenant, body: Value) {
    let (status, body) = stack.post("/v1/support-types", &t.api_key, body).await;
    assert_eq!(status, 201, "{body}");
}

/// A new conversation of a new visitor in `st`: (id, assignee, status).
async fn open(
    stack: &Stack,
    t: &Tenant,
    st: &str,
    priority: Option<i32>,
) -> (Uuid, Option<Uuid>, String) {
    let v = stack.visitor(t).await;
    open_for(stack, &v, st, priority).await
}

async fn open_for(
    stack: &Stack,
    v: &Principal,
    st: &str,
    priority: Option<i32>,
) -> (Uuid, Option<Uuid>, String) {
    let mut body = json!({"support_type": st, "subject": "help"});
    if let Some(p) = priority {
        body["priority"] = json!(p);
    }
    let (status, body) = stack.post("/v1/conversations", &v.token, body).await;
    assert_eq!(status, 201, "{body}");
    let c = &body["conversation"];
    (
        uuid(&c["id"]),
        c["assignee"]
            .as_str()
            .map(|s| Uuid::parse_str(s).expect("uuid")),
        c["status"].as_str().expect("status").to_owned(),
    )
}

async fn resolve(stack: &Stack, bearer: &str, id: Uuid) {
    let (status, body) = stack
        .post(
            &format!("/v1/conversations/{id}/resolve"),
            bearer,
            json!({"reason": "solved"}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
}

async fn history(stack: &Stack, t: &Tenant, id: Uuid) -> Vec<Value> {
    let (status, body) = stack
        .get(&format!("/v1/conversations/{id}/assignments"), &t.api_key)
        .await;
    assert_eq!(status, 200, "{body}");
    body["assignments"].as_array().expect("assignments").clone()
}

#[tokio::test]
async fn round_robin_cycles_through_the_eligible_agents() {
    let stack = Stack::start(1).await;
    let t = stack.tenant().await;
    let mut agents = Vec::new();
    for _ in 0..3 {
        agents.push(stack.agent_with(&t, "agent", "human", 10, true).await.id);
    }
    // Not listed for the support type: never chosen.
    let outsider = stack.agent_with(&t, "agent", "human", 10, true).await.id;
    support_type(
        &stack,
        &t,
        json!({"key": "rr", "name": "Round robin", "routing": "round_robin", "agents": agents}),
    )
    .await;
    let mut order = Vec::new();
    for _ in 0..6 {
        let (_, assignee, status) = open(&stack, &t, "rr", None).await;
        assert_eq!(status, "assigned");
        order.push(assignee.expect("assignee"));
    }
    assert!(!order.contains(&outsider));
    assert_eq!(
        &order[..3],
        &order[3..],
        "round robin repeats its cycle: {order:?}"
    );
    let distinct: std::collections::HashSet<_> = order[..3].iter().collect();
    assert_eq!(distinct.len(), 3, "each agent once per cycle: {order:?}");
}

#[tokio::test]
async fn capacity_routing_prefers_the_least_loaded_and_the_previous_agent() {
    let stack = Stack::start(1).await;
    let t = stack.tenant().await;
    let a = stack.agent_with(&t, "agent", "human", 5, true).await;
    let b = stack.agent_with(&t, "agent", "human", 5, true).await;
    support_type(
        &stack,
        &t,
        json!({"key": "cap", "name": "Capacity", "routing": "capacity", "agents": [a.id, b.id],
               "prefer_previous_agent": false}),
    )
    .await;
    let mut load: HashMap<Uuid, Vec<Uuid>> = HashMap::new();
    for _ in 0..4 {
        let (id, assignee, _) = open(&stack, &t, "cap", None).await;
        load.entry(assignee.expect("assigned"))
            .or_default()
            .push(id);
    }
    assert_eq!(load[&a.id].len(), 2, "{load:?}");
    assert_eq!(load[&b.id].len(), 2, "{load:?}");
    // A frees one: the next goes to A, the less loaded.
    resolve(&stack, &a.token, load[&a.id][0]).await;
    let (next, assignee, _) = open(&stack, &t, "cap", None).await;
    assert_eq!(assignee, Some(a.id));
    let h = history(&stack, &t, next).await;
    assert_eq!(h[0]["strategy"], "capacity", "{h:?}");
    assert_eq!(
        h[0]["candidates"].as_array().map(Vec::len),
        Some(2),
        "{h:?}"
    );

    // Preferred: a returning visitor goes back to their previous agent when free, even
    // though the other is less loaded.
    support_type(
        &stack,
        &t,
        json!({"key": "pref", "name": "Preferred", "routing": "capacity", "agents": [a.id, b.id],
               "prefer_previous_agent": true}),
    )
    .await;
    let v = stack.visitor(&t).await;
    let (first, first_agent, _) = open_for(&stack, &v, "pref", None).await;
    let first_agent = first_agent.expect("assigned");
    resolve(&stack, &t.api_key, first).await;
    let (second, again, _) = open_for(&stack, &v, "pref", None).await;
    assert_eq!(again, Some(first_agent));
    let h = history(&stack, &t, second).await;
    assert_eq!(h[0]["strategy"], "preferred", "{h:?}");
}

#[tokio::test]
async fn the_queue_drains_by_priority_then_age_as_capacity_frees() {
    let stack = Stack::start(1).await;
    let t = stack.tenant().await;
    let a = stack.agent_with(&t, "agent", "human", 1, true).await;
    support_type(
        &stack,
        &t,
        json!({"key": "one", "name": "One seat", "agents": [a.id]}),
    )
    .await;
    let (c1, assignee, _) = open(&stack, &t, "one", None).await;
    assert_eq!(assignee, Some(a.id));
    let (c2, _, s2) = open(&stack, &t, "one", None).await;
    let (c3, _, s3) = open(&stack, &t, "one", None).await;
    let (c4, _, s4) = open(&stack, &t, "one", Some(10)).await;
    assert_eq!(
        (s2.as_str(), s3.as_str(), s4.as_str()),
        ("queued", "queued", "queued")
    );
    let (status, q) = stack.get("/v1/queue", &a.token).await;
    assert_eq!(status, 200, "{q}");
    let order: Vec<Uuid> = q["conversations"]
        .as_array()
        .expect("queue")
        .iter()
        .map(|c| uuid(&c["id"]))
        .collect();
    assert_eq!(order, vec![c4, c2, c3], "priority first, then the oldest");

    // Each resolve frees the one seat: the next in queue order takes it.
    let mut current = c1;
    for next in [c4, c2, c3] {
        resolve(&stack, &a.token, current).await;
        stack
            .until_conversation(&t, next, |c| c["status"] == "assigned")
            .await;
        current = next;
    }
    let h = history(&stack, &t, c3).await;
    let actions: Vec<&str> = h.iter().filter_map(|r| r["action"].as_str()).collect();
    assert_eq!(actions, ["queued", "dequeued"], "{h:?}");

    // Coming online and raising capacity drain too.
    let b = stack.agent_with(&t, "agent", "human", 1, false).await;
    support_type(
        &stack,
        &t,
        json!({"key": "two", "name": "Two", "agents": [b.id]}),
    )
    .await;
    let (w1, _, s) = open(&stack, &t, "two", None).await;
    let (w2, _, _) = open(&stack, &t, "two", None).await;
    assert_eq!(s, "queued");
    let r = stack
        .send(
            reqwest::Method::PUT,
            &format!("/v1/agents/{}/status", b.id),
            &b.token,
            json!({"status": "online"}),
        )
        .await;
    assert_eq!(r.0, 200, "{}", r.1);
    stack
        .until_conversation(&t, w1, |c| c["assignee"] == json!(b.id))
        .await;
    let r = stack
        .send(
            reqwest::Method::PATCH,
            &format!("/v1/agents/{}", b.id),
            &t.api_key,
            json!({"max_concurrent": 2}),
        )
        .await;
    assert_eq!(r.0, 200, "{}", r.1);
    stack
        .until_conversation(&t, w2, |c| c["assignee"] == json!(b.id))
        .await;
}

/// Several core-api processes route and drain the same tenant at once: no agent ever
/// holds more than `max_concurrent`, and no conversation is assigned twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_routers_never_exceed_capacity_or_double_assign() {
    let stack = Stack::start(1).await;
    let mut cores = vec![stack.core_url.clone()];
    let stop = tokio_util::sync::CancellationToken::new();
    for _ in 0..2 {
        let (l, addr) = common::listener().await;
        let mut config =
            Stack::core_config(&stack.env, &stack.prefix, &stack.operator, &stack.edge_urls);
        config.database_pool = 8;
        let s = stop.clone();
        tokio::spawn(async move {
            let _ = relaydesk_core::run(l, config, async move { s.cancelled().await }).await;
        });
        let url = format!("http://{addr}");
        stack.wait_ready(&url).await;
        cores.push(url);
    }
    let _stop_guard = stop.clone().drop_guard();
    let t = stack.tenant().await;
    const MAX: i64 = 3;
    let mut agents = Vec::new();
    for _ in 0..4 {
        agents.push(
            stack
                .agent_with(&t, "agent", "human", MAX as i32, true)
                .await,
        );
    }
    let ids: Vec<Uuid> = agents.iter().map(|a| a.id).collect();
    support_type(
        &stack,
        &t,
        json!({"key": "race", "name": "Race", "agents": ids}),
    )
    .await;
    let mut visitors = Vec::new();
    for _ in 0..40 {
        visitors.push(stack.visitor(&t).await);
    }
    // 40 conversations opened at once through three core-apis.
    let http = stack.http.clone();
    let opened = futures::future::join_all(visitors.iter().enumerate().map(|(i, v)| {
        let url = format!("{}/v1/conversations", cores[i % cores.len()]);
        let http = http.clone();
        let token = v.token.clone();
        async move {
            let r = http
                .post(url)
                .bearer_auth(token)
                .json(&json!({"support_type": "race"}))
                .send()
                .await
                .expect("create");
            assert_eq!(r.status().as_u16(), 201);
            let body: Value = r.json().await.expect("json");
            uuid(&body["conversation"]["id"])
        }
    }))
    .await;
    let db = stack.admin_db().await;
    let check = |rows: Vec<tokio_postgres::Row>| {
        for r in rows {
            let (agent, assigned, open_count): (Uuid, i64, i32) = (r.get(0), r.get(1), r.get(2));
            assert!(assigned <= MAX, "agent {agent} holds {assigned} > {MAX}");
            assert_eq!(
                assigned, open_count as i64,
                "open_count drifted for {agent}"
            );
        }
    };
    let load_sql = "SELECT a.id, (SELECT count(*) FROM conversations c WHERE c.tenant_id = a.tenant_id
                        AND c.assignee_id = a.id AND c.status IN ('assigned', 'snoozed')), a.open_count
                      FROM agents a WHERE a.tenant_id = $1";
    check(db.query(load_sql, &[&t.id]).await.expect("load"));
    let assigned: i64 = db
        .query_one(
            "SELECT count(*) FROM conversations WHERE tenant_id = $1 AND status = 'assigned'",
            &[&t.id],
        )
        .await
        .expect("count")
        .get(0);
    assert_eq!(assigned, 4 * MAX, "every seat is taken, the rest waits");

    // Resolve every assigned conversation through the three cores at once, repeatedly,
    // so drains race each other, until the queue is empty.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
    loop {
        let rows = db
            .query(
                "SELECT id FROM conversations WHERE tenant_id = $1 AND status = 'assigned'",
                &[&t.id],
            )
            .await
            .expect("assigned");
        if rows.is_empty() {
            break;
        }
        futures::future::join_all(rows.iter().enumerate().map(|(i, r)| {
            let id: Uuid = r.get(0);
            let url = format!("{}/v1/conversations/{id}/resolve", cores[i % cores.len()]);
            let http = http.clone();
            let key = t.api_key.clone();
            async move {
                let r = http
                    .post(url)
                    .bearer_auth(key)
                    .json(&json!({"reason": "solved"}))
                    .send()
                    .await
                    .expect("resolve");
                // 409: another core resolved it first; anything else is a failure.
                assert!(matches!(r.status().as_u16(), 200 | 409), "{}", r.status());
            }
        }))
        .await;
        check(db.query(load_sql, &[&t.id]).await.expect("load"));
        assert!(
            tokio::time::Instant::now() < deadline,
            "the queue never drained"
        );
    }
    let queued: i64 = db
        .query_one(
            "SELECT count(*) FROM conversations WHERE tenant_id = $1 AND status <> 'resolved'",
            &[&t.id],
        )
        .await
        .expect("count")
        .get(0);
    assert_eq!(queued, 0);
    // Every conversation was given to an agent exactly once.
    let given: Vec<(Uuid, i64)> = db
        .query(
            "SELECT conversation_id, count(*) FROM assignments
              WHERE tenant_id = $1 AND agent_id IS NOT NULL AND action IN ('routed', 'dequeued')
              GROUP BY conversation_id",
            &[&t.id],
        )
        .await
        .expect("assignments")
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    assert_eq!(given.len(), opened.len());
    assert!(
        given.iter().all(|(_, n)| *n == 1),
        "assigned twice: {given:?}"
    );
}

/// Choosing an agent never waits behind another transaction's lock on an agent row
/// while another candidate is free, and waits (rather than queueing) when every free
/// candidate is held.
#[tokio::test]
async fn routing_skips_a_held_agent_row_and_waits_only_when_all_are_held() {
    let stack = Stack::start(1).await;
    let t = stack.tenant().await;
    let mut pair = [
        stack.agent_with(&t, "agent", "human", 2, true).await.id,
        stack.agent_with(&t, "agent", "human", 2, true).await.id,
    ];
    // Equal load and never assigned: capacity routing prefers the lower id.
    pair.sort();
    let [a, b] = pair;
    support_type(
        &stack,
        &t,
        json!({"key": "held", "name": "Held", "routing": "capacity", "agents": [a, b],
               "prefer_previous_agent": false}),
    )
    .await;
    // A transaction holding A's row as an assignment in flight does (`UPDATE` takes
    // `FOR NO KEY UPDATE`).
    let holder = stack.admin_db().await;
    let holder_pid: i32 = holder
        .query_one("SELECT pg_backend_pid()", &[])
        .await
        .expect("pid")
        .get(0);
    let hold = |agent: Uuid| {
        let holder = &holder;
        let tenant = t.id;
        async move {
            holder
                .execute(
                    "SELECT 1 FROM agents WHERE tenant_id = $1 AND id = $2 FOR NO KEY UPDATE",
                    &[&tenant, &agent],
                )
                .await
                .expect("lock agent row")
        }
    };
    holder.batch_execute("BEGIN").await.expect("begin");
    assert_eq!(hold(a).await, 1);

    // A is held: the create goes to B at once instead of queueing behind A's row.
    let (first, assignee, status) =
        tokio::time::timeout(Duration::from_secs(10), open(&stack, &t, "held", None))
            .await
            .expect("the create waited behind agent A's held row");
    assert_eq!((assignee, status.as_str()), (Some(b), "assigned"));
    let h = history(&stack, &t, first).await;
    assert_eq!(
        h[0]["candidates"],
        json!([{"agent": a, "skipped": "locked"}, {"agent": b}]),
        "{h:?}"
    );

    // Both held: the create waits for the better one (A, less loaded) instead of
    // queueing, and takes it when its holder commits.
    assert_eq!(hold(b).await, 1);
    let watcher = stack.admin_db().await;
    let release = async {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let waiting: i64 = watcher
                .query_one(
                    "SELECT count(*) FROM pg_stat_activity WHERE $1 = ANY(pg_blocking_pids(pid))",
                    &[&holder_pid],
                )
                .await
                .expect("blocked backends")
                .get(0);
            if waiting > 0 {
                break;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "the create never waited for the held rows"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        holder.batch_execute("COMMIT").await.expect("commit");
    };
    let ((second, assignee, status), ()) = tokio::join!(
        async {
            tokio::time::timeout(WAIT, open(&stack, &t, "held", None))
                .await
                .expect("the create never finished")
        },
        release
    );
    assert_eq!((assignee, status.as_str()), (Some(a), "assigned"));
    let h = history(&stack, &t, second).await;
    assert_eq!(h[0]["action"], "routed", "{h:?}");
    assert_eq!(
        h[0]["candidates"],
        json!([{"agent": a}, {"agent": b, "skipped": "not_reached"}]),
        "{h:?}"
    );
}

#[tokio::test]
async fn an_agent_whose_consoles_are_gone_past_the_grace_goes_away() {
    let stack = Stack::start_core_tuned(1, |c| c.away_grace = Duration::from_millis(1500)).await;
    let t = stack.tenant().await;
    let a = stack.agent_with(&t, "agent", "human", 5, true).await;
    let status = |body: &Value| {
        body["agents"]
            .as_array()
            .and_then(|l| l.iter().find(|x| x["id"] == json!(a.id)))
            .map(|x| x["status"].as_str().unwrap_or("").to_owned())
            .unwrap_or_default()
    };

    // Flapping within the grace changes nothing.
    // `welcome` comes after core-api has recorded the connection.
    let (ws, _) = Ws::connect(&stack.edge_urls[0], &a.connect).await;
    drop(ws);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (ws, _) = Ws::connect(&stack.edge_urls[0], &a.connect).await;
    tokio::time::sleep(Duration::from_millis(3000)).await;
    let (_, body) = stack.get("/v1/agents", &t.api_key).await;
    assert_eq!(
        status(&body),
        "online",
        "a reconnect within the grace keeps the agent online"
    );

    // Gone for good: away after the grace, and no new work.
    drop(ws);
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let (_, body) = stack.get("/v1/agents", &t.api_key).await;
        if status(&body) == "away" {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "never went away: {body}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (_, assignee, status) = open(&stack, &t, "general", None).await;
    assert_eq!((assignee, status.as_str()), (None, "queued"));
}

#[tokio::test]
async fn routing_metrics_are_exported() {
    let stack = Stack::start(1).await;
    let t = stack.tenant().await;
    let a = stack.agent_with(&t, "agent", "human", 5, false).await;
    support_type(
        &stack,
        &t,
        json!({"key": "metered", "name": "Metered", "agents": [a.id]}),
    )
    .await;
    let (conv, _, status) = open(&stack, &t, "metered", None).await;
    assert_eq!(status, "queued");
    let metrics = || async {
        stack
            .http
            .get(format!("{}/metrics", stack.core_url))
            .send()
            .await
            .expect("metrics")
            .text()
            .await
            .expect("text")
    };
    // The sweep publishes the queue's depth per support type.
    let deadline = tokio::time::Instant::now() + WAIT;
    while common::metric_sum(
        &metrics().await,
        "relaydesk_core_queue_depth{support_type=\"metered\"}",
    ) < 1.0
    {
        assert!(
            tokio::time::Instant::now() < deadline,
            "queue depth never published"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let r = stack
        .send(
            reqwest::Method::PUT,
            &format!("/v1/agents/{}/status", a.id),
            &a.token,
            json!({"status": "online"}),
        )
        .await;
    assert_eq!(r.0, 200);
    stack
        .until_conversation(&t, conv, |c| c["status"] == "assigned")
        .await;
    let (status, _) = stack.post_text(conv, &a.token, "first", "hello").await;
    assert_eq!(status, 201);
    let text = metrics().await;
    for series in [
        "relaydesk_core_queue_wait_seconds_count{support_type=\"metered\"}",
        "relaydesk_core_first_response_seconds_count{support_type=\"metered\"}",
        "relaydesk_core_assignments_total{strategy=\"capacity\"}",
    ] {
        assert!(
            common::metric_sum(&text, series) >= 1.0,
            "{series} missing:\n{text}"
        );
    }
}
