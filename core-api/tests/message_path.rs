//! The message path end to end: edge → Redis Streams → core-api → PostgreSQL → edge.

#![allow(clippy::unwrap_used)]

mod common;

use common::{Stack, Ws};
use serde_json::json;
use uuid::Uuid;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn visitor_and_agent_on_different_edges_talk_both_ways() {
    let stack = Stack::start(2).await;
    let t = stack.tenant().await;
    let agent = stack.agent(&t, "agent").await;
    let visitor = stack.visitor(&t).await;
    let (conv, assignee) = stack.conversation(&visitor).await;
    assert_eq!(
        assignee,
        Some(agent.id),
        "the only online agent gets the conversation"
    );

    let (mut v, welcome) = Ws::connect(&stack.edge_urls[0], &visitor.connect).await;
    assert_eq!(welcome["role"], "visitor");
    assert_eq!(welcome["tenant"], json!(t.id));
    let (mut a, _) = Ws::connect(&stack.edge_urls[1], &agent.connect).await;
    let db = stack.admin_db().await;

    // Visitor → agent; the row exists when `accepted` arrives.
    let acc = v.send_message(conv, "v-1", "hello, I need help").await;
    assert_eq!(acc["t"], "accepted", "{acc}");
    assert_eq!(acc["seq"], 1);
    let rows = db
        .query(
            "SELECT id FROM messages WHERE tenant_id = $1 AND conversation_id = $2 AND seq = 1",
            &[&t.id, &conv],
        )
        .await
        .unwrap();
    assert_eq!(rows.len(), 1, "accepted before commit");
    assert_eq!(rows[0].get::<_, Uuid>(0), common::uuid(&acc["msg"]));
    let got = a.wait_for(|f| f["t"] == "msg").await;
    assert_eq!(got["body"]["text"], "hello, I need help");
    assert_eq!(got["from"]["id"], json!(visitor.id));
    assert_eq!(got["seq"], 1);

    // Agent → visitor.
    let acc = a.send_message(conv, "a-1", "hi, how can I help?").await;
    assert_eq!(acc["seq"], 2, "{acc}");
    let got = v.wait_for(|f| f["t"] == "msg" && f["seq"] == 2).await;
    assert_eq!(got["body"]["text"], "hi, how can I help?");
    assert_eq!(got["from"]["role"], "agent");

    // Typing and read receipts reach the other side.
    a.send(json!({"t": "typing", "conv": conv, "on": true}))
        .await;
    let typing = v.wait_for(|f| f["t"] == "typing").await;
    assert_eq!(typing["by"]["id"], json!(agent.id));
    v.send(json!({"t": "read", "conv": conv, "seq": 2})).await;
    let read = a.wait_for(|f| f["t"] == "read").await;
    assert_eq!(read["seq"], 2);

    // The REST history agrees.
    let (status, body) = stack
        .get(
            &format!("/v1/conversations/{conv}/messages"),
            &visitor.token,
        )
        .await;
    assert_eq!(status, 200);
    let seqs: Vec<u64> = body["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["seq"].as_u64().unwrap())
        .collect();
    assert_eq!(seqs, vec![1, 2]);

    // Both kinds of process expose what happened on /metrics, and the API its document.
    let core_metrics = stack
        .http
        .get(format!("{}/metrics", stack.core_url))
        .send()
        .await
        .unwrap();
    let core_metrics = core_metrics.text().await.unwrap();
    for name in [
        "relaydesk_core_commit_seconds",
        "relaydesk_core_accept_latency_seconds",
        "relaydesk_core_batch_size",
    ] {
        assert!(core_metrics.contains(name), "core /metrics lacks {name}");
    }
    let edge_base = stack.edge_urls[0]
        .replace("ws://", "http://")
        .replace("/v1/ws", "");
    let edge_metrics = stack
        .http
        .get(format!("{edge_base}/metrics"))
        .send()
        .await
        .unwrap();
    let edge_metrics = edge_metrics.text().await.unwrap();
    for name in [
        "relaydesk_edge_connections",
        "relaydesk_edge_ingress_append_seconds",
        "process_resident_memory_bytes",
    ] {
        assert!(edge_metrics.contains(name), "edge /metrics lacks {name}");
    }
    let (status, doc) = stack.get("/v1/openapi.json", "").await;
    assert_eq!(status, 200);
    assert!(doc["paths"]["/v1/conversations/{id}/messages"].is_object());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resending_a_client_id_anywhere_stores_nothing_new() {
    let stack = Stack::start(2).await;
    let t = stack.tenant().await;
    let _agent = stack.agent(&t, "agent").await;
    let visitor = stack.visitor(&t).await;
    let (conv, _) = stack.conversation(&visitor).await;

    let (mut first, _) = Ws::connect(&stack.edge_urls[0], &visitor.connect).await;
    let a1 = first.send_message(conv, "same-id", "once").await;
    assert_eq!(a1["t"], "accepted");
    drop(first);

    let (mut second, _) = Ws::connect(&stack.edge_urls[1], &visitor.connect).await;
    let a2 = second.send_message(conv, "same-id", "once").await;
    assert_eq!(
        (a2["seq"].clone(), a2["msg"].clone()),
        (a1["seq"].clone(), a1["msg"].clone())
    );

    // The REST fallback under the same key: the same answer.
    let (status, a3) = stack
        .post_text(conv, &visitor.token, "same-id", "once")
        .await;
    assert_eq!(status, 201);
    assert_eq!(
        (a3["seq"].clone(), a3["msg"].clone()),
        (a1["seq"].clone(), a1["msg"].clone())
    );

    // A new key through REST is a new message, delivered live over the socket.
    let (status, _) = stack
        .post_text(conv, &visitor.token, "rest-2", "via rest")
        .await;
    assert_eq!(status, 201);
    let live = second.wait_for(|f| f["t"] == "msg" && f["seq"] == 2).await;
    assert_eq!(live["body"]["text"], "via rest");

    let db = stack.admin_db().await;
    let n: i64 = db
        .query_one(
            "SELECT count(*) FROM messages WHERE tenant_id = $1 AND conversation_id = $2",
            &[&t.id, &conv],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resuming_client_gets_every_missed_message_once_in_order() {
    let stack = Stack::start(2).await;
    let t = stack.tenant().await;
    let agent = stack.agent(&t, "agent").await;
    let visitor = stack.visitor(&t).await;
    let (conv, _) = stack.conversation(&visitor).await;

    let (mut v, _) = Ws::connect(&stack.edge_urls[0], &visitor.connect).await;
    let (mut a, _) = Ws::connect(&stack.edge_urls[1], &agent.connect).await;
    for i in 1..=3 {
        a.send_message(conv, &format!("a-{i}"), &format!("m{i}"))
            .await;
    }
    let third = v.wait_for(|f| f["t"] == "msg" && f["seq"] == 3).await;
    assert_eq!(third["body"]["text"], "m3");
    drop(v);

    for i in 4..=30 {
        let acc = a
            .send_message(conv, &format!("a-{i}"), &format!("m{i}"))
            .await;
        assert_eq!(acc["seq"], i);
    }

    let (mut v, _) = Ws::connect(&stack.edge_urls[1], &visitor.connect).await;
    let (head, replayed) = v.sub(conv, 3).await;
    assert_eq!(head, 30);
    let seqs: Vec<u64> = replayed
        .iter()
        .map(|f| f["seq"].as_u64().unwrap())
        .collect();
    assert_eq!(seqs, (4..=30).collect::<Vec<_>>());

    // Live after the replay, without a duplicate.
    a.send_message(conv, "a-31", "m31").await;
    let next = v.wait_for(|f| f["t"] == "msg").await;
    assert_eq!(next["seq"], 31);

    // A full-history sub from 0 on a new connection.
    let (mut v2, _) = Ws::connect(&stack.edge_urls[0], &visitor.connect).await;
    let (head, all) = v2.sub(conv, 0).await;
    assert_eq!(head, 31);
    assert_eq!(all.len(), 31);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tenants_cannot_reach_each_other() {
    let stack = Stack::start(1).await;
    let a = stack.tenant().await;
    let b = stack.tenant().await;
    let _agent_a = stack.agent(&a, "agent").await;
    let visitor_a = stack.visitor(&a).await;
    let (conv_a, _) = stack.conversation(&visitor_a).await;
    let admin_b = stack.agent(&b, "admin").await;
    let visitor_b = stack.visitor(&b).await;

    // Wire: neither B's admin nor B's visitor can subscribe or send to A's conversation.
    for token in [&admin_b.connect, &visitor_b.connect] {
        let (mut ws, _) = Ws::connect(&stack.edge_urls[0], token).await;
        ws.send(json!({"t": "sub", "conv": conv_a, "after": 0}))
            .await;
        let e = ws
            .wait_for(|f| f["t"] == "error" || f["t"] == "subbed")
            .await;
        assert_eq!(e["t"], "error", "{e}");
        assert_eq!(e["code"], "not_found");
        let e = ws.send_message(conv_a, "x-1", "intrusion").await;
        assert_eq!(e["t"], "error", "{e}");
        assert_eq!(e["code"], "not_found");
    }
    // REST: 404, not 403.
    for token in [&admin_b.token, &visitor_b.token, &b.api_key] {
        let (status, _) = stack
            .get(&format!("/v1/conversations/{conv_a}"), token)
            .await;
        assert_eq!(status, 404);
        let (status, _) = stack
            .get(&format!("/v1/conversations/{conv_a}/messages"), token)
            .await;
        assert_eq!(status, 404);
    }

    // Row-level security alone, with the application's checks bypassed: B's transaction
    // running a query with no tenant filter sees none of A's rows.
    let app = common::connect_db(&stack.env.database_url).await;
    for table in [
        "conversations",
        "visitors",
        "agents",
        "api_keys",
        "support_types",
        "tenants",
    ] {
        let sql = format!(
            "SELECT count(*) FROM {table} WHERE {} = $1",
            if table == "tenants" {
                "id"
            } else {
                "tenant_id"
            }
        );
        app.batch_execute(&format!(
            "BEGIN; SELECT set_config('app.tenant_id', '{}', true)",
            b.id
        ))
        .await
        .unwrap();
        let n: i64 = app.query_one(&sql, &[&a.id]).await.unwrap().get(0);
        app.batch_execute("COMMIT").await.unwrap();
        assert_eq!(n, 0, "{table}: RLS let tenant B see tenant A's rows");
        let unset: i64 = app.query_one(&sql, &[&a.id]).await.unwrap().get(0);
        assert_eq!(unset, 0, "{table}: rows visible without a tenant");
    }
    // …while A's own transaction does see them (the check can fail).
    app.batch_execute(&format!(
        "BEGIN; SELECT set_config('app.tenant_id', '{}', true)",
        a.id
    ))
    .await
    .unwrap();
    let n: i64 = app
        .query_one(
            "SELECT count(*) FROM conversations WHERE id = $1",
            &[&conv_a],
        )
        .await
        .unwrap()
        .get(0);
    app.batch_execute("COMMIT").await.unwrap();
    assert_eq!(n, 1);
}
