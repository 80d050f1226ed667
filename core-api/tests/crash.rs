//! kill -9 of a core-api in the middle of a burst, with a second one running: nothing
//! accepted is lost or duplicated, and every recipient resumes without a gap.

#![allow(clippy::unwrap_used)]

mod common;

use std::collections::{BTreeMap, HashMap};
use std::process::Stdio;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::{Stack, Ws};
use futures::{SinkExt, StreamExt};
use relaydesk_shared::audit::{Audit, StoredMessage};
use serde_json::{json, Value};
use tokio::process::{Child, Command};
use tokio_tungstenite::tungstenite::Message as WsMessage;
use uuid::Uuid;

const SENDERS: usize = 20;
const PER_SENDER: usize = 500;

async fn spawn_core(stack: &Stack, addr: &str, id: &str) -> Child {
    Command::new(env!("CARGO_BIN_EXE_core-api"))
        .env("CORE_ADDR", addr)
        .env("CORE_ID", id)
        .env("DATABASE_URL", &stack.env.database_url)
        .env("DATABASE_POOL", "6")
        .env("REDIS_URL", &stack.env.redis_url)
        .env("REDIS_PREFIX", &stack.prefix)
        .env(
            "TOKEN_SIGNING_KEY",
            String::from_utf8(stack.env.signing_pem.clone()).unwrap(),
        )
        .env("OPERATOR_TOKEN", &stack.operator)
        .env("EDGE_URLS", stack.edge_urls.join(" "))
        .env("CLAIM_IDLE_MS", "1500")
        .env("BATCH_SIZE", "64")
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn core-api")
}

/// What one sender was told: client id → (seq, msg).
type Acks = HashMap<String, (u64, Uuid)>;

/// Sends `PER_SENDER` messages without waiting, then re-sends whatever is still
/// unacknowledged every two seconds (reconnecting if the socket drops), until everything
/// is accepted.
async fn sender(
    url: String,
    token: String,
    conv: Uuid,
    name: usize,
    accepted: Arc<AtomicUsize>,
) -> Acks {
    let frame = |i: usize| {
        let v = json!({"t": "send", "id": format!("s{name}-{i}"), "conv": conv, "kind": "text", "body": {"text": format!("{name}/{i}")}});
        WsMessage::Text(v.to_string().into())
    };
    let mut acks = Acks::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(180);
    'connection: loop {
        let (ws, _) = Ws::connect(&url, &token).await;
        let (mut tx, mut rx) = ws.stream.split();
        for i in (0..PER_SENDER).filter(|i| !acks.contains_key(&format!("s{name}-{i}"))) {
            tx.send(frame(i)).await.expect("send");
        }
        let mut resend = tokio::time::interval(Duration::from_secs(2));
        resend.tick().await;
        while acks.len() < PER_SENDER {
            assert!(
                tokio::time::Instant::now() < deadline,
                "sender {name}: {} of {PER_SENDER} accepted",
                acks.len()
            );
            tokio::select! {
                m = rx.next() => {
                    let t = match m {
                        Some(Ok(WsMessage::Text(t))) => t,
                        Some(Ok(_)) => continue,
                        Some(Err(_)) | None => continue 'connection,
                    };
                    let f: Value = serde_json::from_str(&t).unwrap();
                    match f["t"].as_str() {
                        Some("accepted") => {
                            let id = f["id"].as_str().unwrap().to_owned();
                            let got = (f["seq"].as_u64().unwrap(), common::uuid(&f["msg"]));
                            if let Some(prev) = acks.insert(id, got) {
                                assert_eq!(prev, got, "one id accepted twice with different seqs");
                            } else {
                                accepted.fetch_add(1, Ordering::Relaxed);
                            }
                        }
                        Some("error") => panic!("sender {name} refused: {f}"),
                        _ => {}
                    }
                }
                _ = resend.tick() => {
                    for i in (0..PER_SENDER).filter(|i| !acks.contains_key(&format!("s{name}-{i}"))) {
                        if tx.send(frame(i)).await.is_err() {
                            continue 'connection;
                        }
                    }
                }
            }
        }
        return acks;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_of_a_core_api_mid_burst_loses_and_duplicates_nothing() {
    let mut stack = Stack::start_with(2, false).await;
    let (l_a, addr_a) = common::listener().await;
    let (l_b, addr_b) = common::listener().await;
    drop((l_a, l_b));
    let mut core_a = spawn_core(&stack, &addr_a, "core-a").await;
    let _core_b = spawn_core(&stack, &addr_b, "core-b").await;
    stack.core_url = format!("http://{addr_a}");
    stack.wait_ready(&stack.core_url).await;
    stack.wait_ready(&format!("http://{addr_b}")).await;

    let t = stack.tenant().await;
    let agent = stack.agent(&t, "agent").await;
    let mut convs = Vec::new();
    let mut visitors = Vec::new();
    for _ in 0..SENDERS {
        let v = stack.visitor(&t).await;
        let (conv, assignee) = stack.conversation(&v).await;
        assert_eq!(assignee, Some(agent.id));
        convs.push(conv);
        visitors.push(v);
    }
    // The agent is the recipient of every conversation (auto-subscribed on hello).
    let (agent_ws, _) = Ws::connect(&stack.edge_urls[1], &agent.connect).await;
    let recipient = tokio::spawn(async move {
        let mut ws = agent_ws;
        let mut live: BTreeMap<Uuid, Vec<u64>> = BTreeMap::new();
        let total = SENDERS * PER_SENDER;
        let mut n = 0;
        while n < total {
            let next = tokio::time::timeout(Duration::from_secs(15), ws.stream.next()).await;
            let t = match next {
                Ok(Some(Ok(WsMessage::Text(t)))) => t,
                Ok(Some(Ok(_))) => continue,
                other => {
                    eprintln!("recipient stopped reading after {n} messages: {other:?}");
                    break;
                }
            };
            let f: Value = serde_json::from_str(&t).unwrap();
            if f["t"] == "msg" {
                live.entry(common::uuid(&f["conv"]))
                    .or_default()
                    .push(f["seq"].as_u64().unwrap());
                n += 1;
            }
        }
        (ws, live)
    });

    let accepted = Arc::new(AtomicUsize::new(0));
    let mut senders = Vec::new();
    for (i, (v, conv)) in visitors.iter().zip(&convs).enumerate() {
        let url = stack.edge_urls[i % 2].clone();
        senders.push(tokio::spawn(sender(
            url,
            v.connect.clone(),
            *conv,
            i,
            accepted.clone(),
        )));
    }
    // kill -9 core A once the burst is well under way.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
    while accepted.load(Ordering::Relaxed) < SENDERS * PER_SENDER / 5 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the burst never got going (a sender may have failed)"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    core_a.start_kill().expect("kill -9");
    let _ = core_a.wait().await;
    let killed_at = accepted.load(Ordering::Relaxed);
    assert!(
        killed_at < SENDERS * PER_SENDER,
        "the burst ended before the kill"
    );

    let mut audit = Audit::new();
    for (i, s) in senders.into_iter().enumerate() {
        for (id, (seq, msg)) in s.await.expect("sender") {
            audit.accepted(convs[i], visitors[i].id, &id, seq, msg);
        }
    }

    let db = stack.admin_db().await;
    let rows = db
        .query(
            "SELECT conversation_id, seq, id, sender_id, client_msg_id FROM messages WHERE tenant_id = $1",
            &[&t.id],
        )
        .await
        .unwrap();
    audit.stored(rows.iter().map(|r| StoredMessage {
        conv: r.get(0),
        seq: r.get::<_, i64>(1) as u64,
        msg: r.get(2),
        sender: r.get(3),
        client_id: r.get(4),
    }));

    // The recipient resumes every conversation from its last contiguous seq.
    let (mut ws, live) = recipient.await.expect("recipient");
    for conv in &convs {
        let mut seqs = live.get(conv).cloned().unwrap_or_default();
        let mut contiguous = 0;
        for s in &seqs {
            if *s == contiguous + 1 {
                contiguous = *s;
            }
        }
        let (head, replayed) = ws.sub(*conv, contiguous).await;
        assert_eq!(head, PER_SENDER as u64);
        seqs.retain(|s| *s <= contiguous);
        seqs.extend(replayed.iter().map(|f| f["seq"].as_u64().unwrap()));
        audit.received("agent", *conv, seqs, head);
    }
    let report = audit.report();
    assert!(report.is_clean(), "{report:?}");
    assert_eq!(report.accepted, SENDERS * PER_SENDER);
    assert_eq!(report.stored, SENDERS * PER_SENDER);
    eprintln!(
        "killed core-a after {killed_at} accepted; all {} accounted for",
        report.accepted
    );
}
