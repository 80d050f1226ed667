//! Authorization on every frame: a connection whose `sub` to a conversation is refused
//! (or not yet answered) has no effect on it and learns nothing of it, however its
//! frames are batched; a participant's receipts behind its `sub` wait for the answer.

#![allow(clippy::unwrap_used)]

mod common;

use common::{client_frame, op, RawWs, Stack, Ws};
use serde_json::{json, Value};
use uuid::Uuid;

/// Writes `frames` (JSON) as masked text frames in one TCP write.
async fn burst(ws: &mut RawWs, frames: &[Value]) {
    let mut bytes = Vec::new();
    for f in frames {
        bytes.extend(client_frame(true, op::TEXT, f.to_string().as_bytes()));
    }
    ws.send(&bytes).await;
}

/// The next text frame, as JSON.
async fn next_json(ws: &mut RawWs) -> Value {
    loop {
        match ws.next_frame().await {
            Some((op::TEXT, payload)) => return serde_json::from_slice(&payload).unwrap(),
            Some(_) => continue,
            None => panic!("the edge closed the connection"),
        }
    }
}

/// The frames `ws` receives up to the first satisfying `pred` (excluded).
async fn until(ws: &mut Ws, pred: impl Fn(&Value) -> bool) -> Vec<Value> {
    let mut seen = Vec::new();
    loop {
        let f = ws.next_frame().await;
        if pred(&f) {
            return seen;
        }
        seen.push(f);
    }
}

/// Reads up to the `pong` answering a `ping` sent now: everything queued for `ws` before.
async fn drain(ws: &mut RawWs) -> Vec<Value> {
    burst(ws, &[json!({"t": "ping"})]).await;
    let mut got = Vec::new();
    loop {
        let f = next_json(ws).await;
        if f["t"] == "pong" {
            return got;
        }
        got.push(f);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_principals_cannot_type_read_or_ack_nor_hear_a_conversation() {
    let stack = Stack::start(2).await;
    let t = stack.tenant().await;
    let agent = stack.agent(&t, "agent").await;
    let visitor = stack.visitor(&t).await;
    let (conv, assignee) = stack.conversation(&visitor).await;
    assert_eq!(assignee, Some(agent.id));
    // Outsiders: another visitor of the tenant, an agent who does not take part, and a
    // visitor of another tenant; on either edge.
    let other_visitor = stack.visitor(&t).await;
    let other_agent = stack.agent(&t, "agent").await;
    let t2 = stack.tenant().await;
    let foreign = stack.visitor(&t2).await;
    let edges = [stack.edge_addr(0), stack.edge_addr(1)];

    // The participants, on different edges, both granted the conversation.
    let (mut v, _) = Ws::connect(&stack.edge_urls[0], &visitor.connect).await;
    let (mut a, _) = Ws::connect(&stack.edge_urls[1], &agent.connect).await;
    v.sub(conv, 0).await;
    a.sub(conv, 0).await;
    let acc = v.send_message(conv, "v-1", "hello").await;
    assert_eq!(acc["t"], "accepted", "{acc}");
    a.wait_for(|f| f["t"] == "msg" && f["seq"] == 1).await;

    let outsiders = [
        (&other_visitor, &edges[0]),
        (&other_agent, &edges[1]),
        (&foreign, &edges[0]),
    ];
    let mut conns = Vec::new();
    for (who, edge) in outsiders {
        let mut ws = RawWs::hello(edge, &who.connect).await;
        // `sub` and the frames that would race its answer, in one write.
        burst(
            &mut ws,
            &[
                json!({"t": "sub", "conv": conv, "after": 0}),
                json!({"t": "typing", "conv": conv, "on": true}),
                json!({"t": "read", "conv": conv, "seq": 1}),
                json!({"t": "ack", "conv": conv, "seq": 1}),
            ],
        )
        .await;
        // core-api refuses the sub; meanwhile the typing was dropped and the receipts
        // held, and the refusal drops them.
        loop {
            let f = next_json(&mut ws).await;
            assert_ne!(
                f["t"], "subbed",
                "an outsider was granted the conversation: {f}"
            );
            assert_ne!(f["t"], "msg", "an outsider read the conversation: {f}");
            if f["t"] == "error" {
                assert_eq!(f["conv"], json!(conv), "{f}");
                assert!(
                    ["forbidden", "not_found"].contains(&f["code"].as_str().unwrap()),
                    "{f}"
                );
                break;
            }
        }
        // Refused, and refused outright afterwards.
        burst(&mut ws, &[json!({"t": "typing", "conv": conv, "on": true})]).await;
        let f = next_json(&mut ws).await;
        assert_eq!(f["t"], "error", "{f}");
        assert_eq!(f["code"], "forbidden", "{f}");
        conns.push(ws);
    }

    // The participants type, then write: each edge hands a frame to its local
    // subscribers at once, so once the other participant has it, every outsider's queue
    // would hold it too. Everything the participants receive meanwhile is kept.
    let mut seen = Vec::new();
    a.send(json!({"t": "typing", "conv": conv, "on": true}))
        .await;
    seen.extend(
        until(&mut v, |f| {
            f["t"] == "typing" && f["by"]["id"] == json!(agent.id)
        })
        .await,
    );
    v.send(json!({"t": "typing", "conv": conv, "on": true}))
        .await;
    seen.extend(
        until(&mut a, |f| {
            f["t"] == "typing" && f["by"]["id"] == json!(visitor.id)
        })
        .await,
    );
    for ws in &mut conns {
        let heard = drain(ws).await;
        assert!(
            heard.iter().all(|f| f["conv"] != json!(conv)),
            "an outsider heard the conversation: {heard:?}"
        );
    }
    v.send(json!({"t": "send", "id": "v-2", "conv": conv, "kind": "text", "body": {"text": "still here"}}))
        .await;
    seen.extend(until(&mut v, |f| f["t"] == "accepted" && f["id"] == "v-2").await);
    seen.extend(until(&mut a, |f| f["t"] == "msg" && f["seq"] == 2).await);
    let outsider_ids = [other_visitor.id, other_agent.id, foreign.id];
    for f in &seen {
        let by = f["by"]["id"].as_str().map(|s| Uuid::parse_str(s).unwrap());
        assert!(
            by.is_none_or(|id| !outsider_ids.contains(&id)),
            "a participant received an outsider's frame: {f}"
        );
    }
    // A participant's receipt written right behind its `sub` is held, not lost: it
    // takes effect once the sub is granted.
    let mut again = RawWs::hello(&edges[0], &agent.connect).await;
    burst(
        &mut again,
        &[
            json!({"t": "sub", "conv": conv, "after": 0}),
            json!({"t": "read", "conv": conv, "seq": 2}),
        ],
    )
    .await;
    let read = v.wait_for(|f| f["t"] == "read").await;
    assert_eq!(read["by"]["id"], json!(agent.id), "{read}");
    assert_eq!(read["seq"], 2, "{read}");

    let receipts: i64 = stack
        .admin_db()
        .await
        .query_one(
            "SELECT count(*) FROM receipts WHERE conversation_id = $1 AND principal_id = ANY($2)",
            &[&conv, &outsider_ids.to_vec()],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(receipts, 0, "an outsider's receipt was stored");
}
