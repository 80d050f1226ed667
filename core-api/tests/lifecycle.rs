//! The life of a conversation over HTTP and the wire: transfer, escalate, resolve,
//! reopen, bot handoff, and notes that never reach a visitor.

mod common;

use common::{uuid, Stack, Ws};
use serde_json::{json, Value};
use uuid::Uuid;

fn is_conv_event(f: &Value, conv: Uuid, event: &str) -> bool {
    f["t"] == "conv" && f["conv"] == json!(conv) && f["event"] == event
}

#[tokio::test]
async fn transfer_escalate_resolve_and_reopen() {
    let stack = Stack::start(1).await;
    let t = stack.tenant().await;
    let a = stack.agent_with(&t, "agent", "human", 5, true).await;
    let b = stack.agent_with(&t, "agent", "human", 5, true).await;
    let c = stack.agent_with(&t, "agent", "human", 5, true).await;
    for (key, agents, reasons) in [
        ("sales", vec![a.id, b.id], vec!["solved"]),
        ("billing", vec![c.id], vec!["refunded", "solved"]),
    ] {
        let (status, body) = stack
            .post(
                "/v1/support-types",
                &t.api_key,
                json!({"key": key, "name": key, "agents": agents, "resolution_reasons": reasons,
                       "escalation_target": if key == "sales" { Value::Null } else { json!("sales") }}),
            )
            .await;
        assert_eq!(status, 201, "{body}");
    }
    let visitor = stack.visitor(&t).await;
    let (mut vws, _) = Ws::connect(&stack.edge_urls[0], &visitor.connect).await;
    let (status, body) = stack
        .post(
            "/v1/conversations",
            &visitor.token,
            json!({"support_type": "sales"}),
        )
        .await;
    assert_eq!(status, 201, "{body}");
    let conv = uuid(&body["conversation"]["id"]);
    let first = uuid(&body["conversation"]["assignee"]);
    let (holder, other) = if first == a.id { (&a, &b) } else { (&b, &a) };

    // Transfer: the new agent holds it, the old one may no longer write.
    let (mut old_ws, _) = Ws::connect(&stack.edge_urls[0], &holder.connect).await;
    let (mut new_ws, _) = Ws::connect(&stack.edge_urls[0], &other.connect).await;
    let (status, body) = stack
        .post(
            &format!("/v1/conversations/{conv}/transfer"),
            &holder.token,
            json!({"agent_id": other.id, "reason": "language"}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["conversation"]["assignee"], json!(other.id));
    new_ws
        .wait_for(|f| is_conv_event(f, conv, "transferred"))
        .await;
    vws.wait_for(|f| is_conv_event(f, conv, "transferred"))
        .await;
    let refused = old_ws.send_message(conv, "late-1", "still here?").await;
    assert_eq!(refused["t"], "error", "{refused}");
    assert_eq!(refused["code"], "forbidden");
    let ok = new_ws.send_message(conv, "hi-1", "I can help").await;
    assert_eq!(ok["t"], "accepted", "{ok}");
    vws.wait_for(|f| f["t"] == "msg" && f["body"]["text"] == "I can help")
        .await;

    // Escalate: to billing, with a reason; billing's only agent takes it.
    let (status, body) = stack
        .post(
            &format!("/v1/conversations/{conv}/escalate"),
            &other.token,
            json!({"support_type": "billing", "reason": "refund request"}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["conversation"]["support_type"], "billing");
    assert_eq!(body["conversation"]["assignee"], json!(c.id));
    let (status, body) = stack
        .post(
            &format!("/v1/conversations/{conv}/escalate"),
            &c.token,
            json!({"reason": ""}),
        )
        .await;
    assert_eq!(status, 400, "{body}");

    // Resolve: only with one of the support type's reasons.
    let (status, body) = stack
        .post(
            &format!("/v1/conversations/{conv}/resolve"),
            &c.token,
            json!({"reason": "nope"}),
        )
        .await;
    assert_eq!(status, 400, "{body}");
    let (status, body) = stack
        .post(
            &format!("/v1/conversations/{conv}/resolve"),
            &c.token,
            json!({"reason": "refunded"}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["conversation"]["status"], "resolved");
    assert_eq!(body["conversation"]["resolution_reason"], "refunded");
    vws.wait_for(|f| is_conv_event(f, conv, "resolved")).await;

    // The visitor writes within the reopen window: reopened, back to the previous agent.
    let ok = vws.send_message(conv, "again-1", "one more thing").await;
    assert_eq!(ok["t"], "accepted", "{ok}");
    let reopened = stack
        .until_conversation(&t, conv, |c| c["status"] == "assigned")
        .await;
    assert_eq!(reopened["assignee"], json!(c.id));
    vws.wait_for(|f| is_conv_event(f, conv, "reopened")).await;

    // The history tells the whole story.
    let (status, body) = stack
        .get(&format!("/v1/conversations/{conv}/assignments"), &t.api_key)
        .await;
    assert_eq!(status, 200, "{body}");
    let actions: Vec<&str> = body["assignments"]
        .as_array()
        .expect("history")
        .iter()
        .filter_map(|r| r["action"].as_str())
        .collect();
    assert_eq!(
        actions,
        ["routed", "transferred", "escalated", "resolved", "reopened"]
    );
    let escalated = &body["assignments"][2];
    assert_eq!(escalated["reason"], "refund request");

    // Agents who never took part cannot act; visitors cannot resolve.
    let (status, _) = stack
        .post(
            &format!("/v1/conversations/{conv}/resolve"),
            &holder.token,
            json!({"reason": "solved"}),
        )
        .await;
    assert_eq!(status, 403);
    let (status, _) = stack
        .post(
            &format!("/v1/conversations/{conv}/resolve"),
            &visitor.token,
            json!({"reason": "solved"}),
        )
        .await;
    assert_eq!(status, 403);
}

#[tokio::test]
async fn a_bot_hands_off_to_a_human_and_is_refused_afterwards() {
    let stack = Stack::start(1).await;
    let t = stack.tenant().await;
    let bot = stack.agent_with(&t, "agent", "bot", 100, true).await;
    let human = stack.agent_with(&t, "agent", "human", 5, true).await;
    let (status, body) = stack
        .post(
            "/v1/support-types",
            &t.api_key,
            json!({"key": "botfirst", "name": "Bot first", "bot_id": bot.id, "agents": [human.id]}),
        )
        .await;
    assert_eq!(status, 201, "{body}");
    let visitor = stack.visitor(&t).await;
    let (mut vws, _) = Ws::connect(&stack.edge_urls[0], &visitor.connect).await;
    let (mut bws, welcome) = Ws::connect(&stack.edge_urls[0], &bot.connect).await;
    assert_eq!(welcome["role"], "bot");
    let (status, body) = stack
        .post(
            "/v1/conversations",
            &visitor.token,
            json!({"support_type": "botfirst"}),
        )
        .await;
    assert_eq!(status, 201, "{body}");
    let conv = uuid(&body["conversation"]["id"]);
    assert_eq!(
        body["conversation"]["assignee"],
        json!(bot.id),
        "the bot answers first"
    );
    bws.wait_for(|f| is_conv_event(f, conv, "assigned")).await;
    let ok = bws.send_message(conv, "b-1", "Hi, I am a bot").await;
    assert_eq!(ok["t"], "accepted", "{ok}");

    // A suggestion reaches agents only.
    bws.send(
        json!({"t": "send", "id": "b-s1", "conv": conv, "kind": "suggestion",
                    "body": {"text": "Try turning it off and on"}}),
    )
    .await;
    let s = bws.wait_for(|f| f["id"] == "b-s1").await;
    assert_eq!(s["t"], "accepted", "{s}");

    let (status, body) = stack
        .post(
            &format!("/v1/conversations/{conv}/handoff"),
            &bot.token,
            json!({"reason": "asked for a human"}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["conversation"]["assignee"], json!(human.id));
    let refused = bws.send_message(conv, "b-2", "still me").await;
    assert_eq!(refused["t"], "error", "{refused}");
    assert_eq!(refused["code"], "forbidden");
    let (status, _) = stack.post_text(conv, &bot.token, "b-3", "via REST").await;
    assert_eq!(status, 403);
    // A second handoff by the bot is refused too.
    let (status, _) = stack
        .post(
            &format!("/v1/conversations/{conv}/handoff"),
            &bot.token,
            json!({}),
        )
        .await;
    assert_eq!(status, 403);

    // The visitor saw the bot's text, never its suggestion.
    let (status, body) = stack
        .get(
            &format!("/v1/conversations/{conv}/messages"),
            &visitor.token,
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let kinds: Vec<&str> = body["messages"]
        .as_array()
        .expect("messages")
        .iter()
        .filter_map(|m| m["kind"].as_str())
        .collect();
    assert_eq!(kinds, ["text"]);
    let f = vws
        .wait_for(|f| {
            f["t"] == "msg"
                || is_conv_event(f, conv, "assigned") && f["assignee"] == json!(human.id)
        })
        .await;
    assert_ne!(f["kind"], "suggestion");
}

#[tokio::test]
async fn notes_never_reach_a_visitor() {
    let stack = Stack::start(2).await;
    let t = stack.tenant().await;
    let agent = stack.agent(&t, "agent").await;
    let visitor = stack.visitor(&t).await;
    let (conv, _) = stack.conversation(&visitor).await;
    let (mut vws, _) = Ws::connect(&stack.edge_urls[0], &visitor.connect).await;
    let (mut aws, _) = Ws::connect(&stack.edge_urls[1], &agent.connect).await;
    vws.sub(conv, 0).await;
    aws.sub(conv, 0).await;

    // A note over the wire, another over REST, then a text.
    aws.send(json!({"t": "send", "id": "n-1", "conv": conv, "kind": "note", "body": {"text": "secret 1"}}))
        .await;
    let n = aws.wait_for(|f| f["id"] == "n-1").await;
    assert_eq!(n["t"], "accepted", "{n}");
    let (status, body) = stack
        .post(
            &format!("/v1/conversations/{conv}/notes"),
            &agent.token,
            json!({"text": "secret 2"}),
        )
        .await;
    assert_eq!(status, 201, "{body}");
    let last = aws.send_message(conv, "t-1", "visible").await;
    assert_eq!(last["seq"], 3);

    // The visitor's next message frame is the text: both notes were skipped.
    let f = vws.wait_for(|f| f["t"] == "msg").await;
    assert_eq!(f["body"]["text"], "visible", "{f}");
    // A resume from 0 replays only the text.
    let mut fresh = Ws::connect(&stack.edge_urls[1], &visitor.connect).await.0;
    let (head, replayed) = fresh.sub(conv, 0).await;
    assert_eq!(head, 3);
    let texts: Vec<&str> = replayed
        .iter()
        .filter_map(|m| m["body"]["text"].as_str())
        .collect();
    assert!(
        !texts.iter().any(|t| t.starts_with("secret")),
        "{replayed:?}"
    );

    // Over REST: the visitor sees one message; the agent all three.
    let (_, body) = stack
        .get(
            &format!("/v1/conversations/{conv}/messages"),
            &visitor.token,
        )
        .await;
    assert_eq!(body["messages"].as_array().map(Vec::len), Some(1), "{body}");
    let (_, body) = stack
        .get(&format!("/v1/conversations/{conv}/messages"), &agent.token)
        .await;
    assert_eq!(body["messages"].as_array().map(Vec::len), Some(3), "{body}");
    // Visitors cannot write notes.
    let (status, _) = stack
        .post(
            &format!("/v1/conversations/{conv}/notes"),
            &visitor.token,
            json!({"text": "x"}),
        )
        .await;
    assert_eq!(status, 403);
}

#[tokio::test]
async fn snooze_tags_participants_and_paginated_lists() {
    let stack = Stack::start(1).await;
    let t = stack.tenant().await;
    let agent = stack.agent(&t, "agent").await;
    let sup = stack.agent(&t, "supervisor").await;
    let visitor = stack.visitor(&t).await;
    let (conv, assignee) = stack.conversation(&visitor).await;
    assert!(assignee.is_some());
    let holder = if assignee == Some(agent.id) {
        &agent
    } else {
        &sup
    };

    // Snoozed until the visitor writes.
    let (status, body) = stack
        .post(
            &format!("/v1/conversations/{conv}/snooze"),
            &holder.token,
            json!({}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["conversation"]["status"], "snoozed");
    let (mut vws, _) = Ws::connect(&stack.edge_urls[0], &visitor.connect).await;
    let ok = vws.send_message(conv, "wake-1", "any news?").await;
    assert_eq!(ok["t"], "accepted", "{ok}");
    stack
        .until_conversation(&t, conv, |c| c["status"] == "assigned")
        .await;

    // Snoozed until a time: the sweep wakes it.
    let until_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_millis() as i64
        + 1000;
    let (status, body) = stack
        .post(
            &format!("/v1/conversations/{conv}/snooze"),
            &holder.token,
            json!({"until": until_ms}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    stack
        .until_conversation(&t, conv, |c| c["status"] == "assigned")
        .await;

    // Tags: staff see them, visitors do not.
    let (status, body) = stack
        .post(
            &format!("/v1/conversations/{conv}/tags"),
            &holder.token,
            json!({"add": ["vip", "refund", "vip"]}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["tags"], json!(["refund", "vip"]));
    let (_, body) = stack
        .post(
            &format!("/v1/conversations/{conv}/tags"),
            &holder.token,
            json!({"remove": ["refund"]}),
        )
        .await;
    assert_eq!(body["tags"], json!(["vip"]));
    let (_, body) = stack
        .get(&format!("/v1/conversations/{conv}"), &visitor.token)
        .await;
    assert_eq!(body["conversation"]["tags"], json!([]));

    // A supervisor joins as a participant; an agent may not.
    let other = stack.agent(&t, "agent").await;
    let (status, _) = stack
        .post(
            &format!("/v1/conversations/{conv}/participants"),
            &other.token,
            json!({}),
        )
        .await;
    assert_eq!(status, 403);
    let boss = stack.agent(&t, "supervisor").await;
    let (status, body) = stack
        .post(
            &format!("/v1/conversations/{conv}/participants"),
            &boss.token,
            json!({}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let participants = body["conversation"]["participants"]
        .as_array()
        .expect("participants")
        .clone();
    assert!(participants.contains(&json!(boss.id)), "{participants:?}");

    // Paginated lists: five conversations of the visitor, two per page.
    for _ in 0..4 {
        stack.conversation(&visitor).await;
    }
    let mut seen = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let path = match &cursor {
            Some(c) => format!("/v1/conversations?limit=2&cursor={c}"),
            None => "/v1/conversations?limit=2".to_owned(),
        };
        let (status, body) = stack.get(&path, &visitor.token).await;
        assert_eq!(status, 200, "{body}");
        for c in body["conversations"].as_array().expect("list") {
            seen.push(uuid(&c["id"]));
        }
        match body["next_cursor"].as_str() {
            Some(c) => cursor = Some(c.to_owned()),
            None => break,
        }
    }
    let mut unique = seen.clone();
    unique.sort();
    unique.dedup();
    assert_eq!((seen.len(), unique.len()), (5, 5), "{seen:?}");
    // Another visitor sees none of them; bad input is a 400.
    let stranger = stack.visitor(&t).await;
    let (_, body) = stack.get("/v1/conversations", &stranger.token).await;
    assert_eq!(body["conversations"], json!([]));
    let (status, _) = stack.get("/v1/conversations?limit=0", &t.api_key).await;
    assert_eq!(status, 400);
    let (status, _) = stack.get("/v1/conversations?cursor=nope", &t.api_key).await;
    assert_eq!(status, 400);
    let (status, _) = stack.get("/v1/conversations?status=open", &t.api_key).await;
    assert_eq!(status, 400);
}
