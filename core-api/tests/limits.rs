//! Per-connection and per-tenant limits at the edge: answered `rate_limited` with
//! `retry_after_ms`, then 4029 for a client that persists; other tenants unaffected.

#![allow(clippy::unwrap_used)]

mod common;

use common::{Stack, Ws};
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flooding_connection_is_limited_then_closed_4029() {
    let stack = Stack::start_custom(1, true, |c| {
        c.conn_msgs_per_sec = 5;
        c.tenant_max_connections = 2;
    })
    .await;
    let t = stack.tenant().await;
    let _agent = stack.agent(&t, "agent").await;
    let v = stack.visitor(&t).await;
    let (conv, _) = stack.conversation(&v).await;
    let (mut ws, _) = Ws::connect(&stack.edge_urls[0], &v.connect).await;

    // Within the bucket: accepted.
    for i in 0..5 {
        let a = ws.send_message(conv, &format!("ok-{i}"), "fine").await;
        assert_eq!(a["t"], "accepted", "{a}");
    }
    // Past it: refused with a hint, nothing stored.
    let e = ws.send_message(conv, "over-1", "too much").await;
    assert_eq!(e["t"], "error", "{e}");
    assert_eq!(e["code"], "rate_limited");
    assert!(e["retry_after_ms"].as_u64().unwrap() > 0);

    // A second connection of the same tenant fits under the cap of 2; a third does not.
    let (_second, _) = Ws::connect(&stack.edge_urls[0], &v.connect).await;
    let mut third = Ws::open(&stack.edge_urls[0]).await;
    third.send(json!({"t": "hello", "token": v.connect})).await;
    assert_eq!(third.close_code().await, Some(4029));

    // Another tenant is not affected by this tenant's cap.
    let other = stack.tenant().await;
    let ov = stack.visitor(&other).await;
    let (_o, welcome) = Ws::connect(&stack.edge_urls[0], &ov.connect).await;
    assert_eq!(welcome["t"], "welcome");

    // Persisting: closed with 4029.
    for i in 0..50 {
        ws.send(
            json!({"t": "send", "id": format!("flood-{i}"), "conv": conv, "body": {"text": "x"}}),
        )
        .await;
    }
    assert_eq!(ws.close_code().await, Some(4029));

    let db = stack.admin_db().await;
    let n: i64 = db
        .query_one(
            "SELECT count(*) FROM messages WHERE tenant_id = $1 AND client_msg_id LIKE 'over-%'",
            &[&t.id],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 0, "a refused message was stored");
}
