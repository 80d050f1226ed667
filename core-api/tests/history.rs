//! The message path costs the same whatever a tenant's history: on a tenant with a
//! million messages that PostgreSQL has not analyzed, every hot-path statement reaches
//! rows through an index bound by the batch's keys (checked on its plans, custom and
//! generic), and a batch commits as fast as on a fresh tenant.

#![allow(clippy::unwrap_used)]

mod common;

use std::time::{Duration, Instant};

use common::{connect_db, Stack, Tenant};
use relaydesk_core::store::{self, NewMessage, Outcome};
use relaydesk_shared::token::Role;
use relaydesk_shared::wire::Actor;
use serde_json::{json, Value};
use tokio_postgres::types::ToSql;
use uuid::Uuid;

// A big tenant as support looks: many short conversations. Enough of them that a scan of
// the tenant's conversations is never the cheaper plan, so a plan that takes one is a
// plan that would stall a real tenant.
const CONVERSATIONS: i64 = 100_000;
const PER_CONVERSATION: i64 = 10;

/// A tenant with `convs` conversations, written as the owner (no API, no analyze), each
/// holding `per` messages; 20 of them are one visitor's, the others each another's.
/// Returns that visitor and their 20 conversations.
async fn seeded(stack: &Stack, convs: i64, per: i64) -> (Tenant, Uuid, Vec<Uuid>) {
    let tenant = stack.tenant().await;
    let visitor = stack.visitor(&tenant).await;
    let (first, _) = stack.conversation(&visitor).await;
    let db = stack.admin_db().await;
    // The seed only: foreign keys are checked by the API's own paths, not here.
    db.batch_execute("SET session_replication_role = replica")
        .await
        .unwrap();
    let ids: Vec<Uuid> = db
        .query(
            "INSERT INTO conversations (tenant_id, id, visitor_id, support_type, status, queued_at)
             SELECT c.tenant_id, gen_random_uuid(),
                    CASE WHEN n <= 20 THEN c.visitor_id ELSE gen_random_uuid() END,
                    c.support_type, 'queued', now()
               FROM conversations c, generate_series(2, $3::int8) AS n
              WHERE c.tenant_id = $1 AND c.id = $2
             RETURNING id, visitor_id",
            &[&tenant.id, &first, &convs],
        )
        .await
        .unwrap()
        .iter()
        .filter(|r| r.get::<_, Uuid>(1) == visitor.id)
        .map(|r| r.get(0))
        .collect();
    let mut some = vec![first];
    some.extend(ids);
    if per > 0 {
        db.execute(
            "INSERT INTO messages (tenant_id, conversation_id, seq, id, sender_id, sender_role,
                                   client_msg_id, kind, body)
             SELECT $1, c.id, s, gen_random_uuid(), $2, 'visitor', 'seed-' || s, 'text',
                    '{\"text\": \"seeded\"}'::jsonb
               FROM conversations c, generate_series(1, $3::int8) AS s
              WHERE c.tenant_id = $1",
            &[&tenant.id, &visitor.id, &per],
        )
        .await
        .unwrap();
        db.execute(
            "UPDATE conversations SET last_seq = $2 WHERE tenant_id = $1",
            &[&tenant.id, &per],
        )
        .await
        .unwrap();
    }
    (tenant, visitor.id, some)
}

/// A batch of `n` new texts from `visitor` over the first conversations of `convs`.
fn batch(tenant: Uuid, visitor: Uuid, convs: &[Uuid], n: usize, tag: &str) -> Vec<NewMessage> {
    (0..n)
        .map(|i| NewMessage {
            tenant,
            from: Actor {
                id: visitor,
                role: Role::Visitor,
                name: None,
            },
            conv: convs[i % 20],
            client_id: format!("{tag}-{i}"),
            kind: "text".into(),
            body: json!({"text": "hello"}),
            broadcast: false,
        })
        .collect()
}

/// Every scan node of a JSON plan.
fn scans<'a>(plan: &'a Value, out: &mut Vec<&'a Value>) {
    if plan.get("Relation Name").is_some() || plan.get("Index Name").is_some() {
        out.push(plan);
    }
    if let Some(children) = plan.get("Plans").and_then(Value::as_array) {
        for c in children {
            scans(c, out);
        }
    }
}

/// Fails unless every read of `messages`, `conversations` and `receipts` in `sql`'s plan
/// goes through an index condition on more than the tenant.
async fn assert_key_driven(
    db: &tokio_postgres::Client,
    name: &str,
    sql: &str,
    params: &[&(dyn ToSql + Sync)],
) {
    for mode in ["force_custom_plan", "force_generic_plan"] {
        db.batch_execute(&format!("SET plan_cache_mode = {mode}"))
            .await
            .unwrap();
        let row = db
            .query_one(&format!("EXPLAIN (FORMAT JSON) {sql}"), params)
            .await
            .unwrap_or_else(|e| panic!("EXPLAIN {name}: {e}"));
        let plan: Value = row.get(0);
        let mut nodes = Vec::new();
        scans(&plan[0]["Plan"], &mut nodes);
        assert!(!nodes.is_empty(), "{name}: no scan in {plan:#}");
        for node in nodes {
            let relation = node["Relation Name"].as_str().unwrap_or("");
            let index = node["Index Name"].as_str().unwrap_or("");
            let hot = ["messages", "conversations", "receipts"];
            let on_hot = hot.contains(&relation) || hot.iter().any(|t| index.starts_with(t));
            if !on_hot {
                continue;
            }
            let kind = node["Node Type"].as_str().unwrap_or("");
            assert_ne!(
                kind, "Seq Scan",
                "{name} ({mode}) scans {relation} sequentially: {plan:#}"
            );
            if kind == "Bitmap Heap Scan" || kind == "ModifyTable" {
                continue; // its index scans are checked as its children
            }
            let cond = node["Index Cond"].as_str().unwrap_or("");
            // Bound by a key beyond the tenant: conversation_id, id, visitor_id, …
            let bound = cond.replace("tenant_id", "").contains("id");
            assert!(
                bound,
                "{name} ({mode}) reads {relation} {index} by {cond:?}, not by the batch's keys: {plan:#}"
            );
        }
    }
}

/// Checks the plan of every hot-path statement, as the application runs them: the app
/// role, inside `big`'s scope.
async fn assert_plans(stack: &Stack, big: &Tenant, visitor: Uuid, convs: &[Uuid]) {
    let db = connect_db(&stack.env.database_url).await;
    db.batch_execute("BEGIN").await.unwrap();
    db.execute(
        "SELECT set_config('app.tenant_id', $1, true)",
        &[&big.id.to_string()],
    )
    .await
    .unwrap();
    let t = big.id;
    let some: Vec<Uuid> = convs[..20].to_vec();
    let n = 40usize;
    let conv: Vec<Uuid> = (0..n).map(|i| some[i % 20]).collect();
    let sender: Vec<Uuid> = vec![visitor; n];
    let role: Vec<&str> = vec!["visitor"; n];
    let name: Vec<Option<&str>> = vec![None; n];
    let client: Vec<String> = (0..n).map(|i| format!("seed-{}", i + 1)).collect();
    let kind: Vec<&str> = vec!["text"; n];
    let body: Vec<Value> = vec![json!({"text": "x"}); n];
    let id: Vec<Uuid> = (0..n).map(|_| Uuid::now_v7()).collect();
    let reply: Vec<bool> = vec![false; n];
    let base: Vec<i64> = vec![PER_CONVERSATION; n];
    let unanswered: Vec<bool> = vec![true; n];
    let support_type: Vec<&str> = vec!["default"; n];
    let created: Vec<f64> = vec![0.0; n];
    let event = "message.created";
    let principals = vec![visitor];
    let seqs: Vec<i64> = vec![5; n];
    let reads: Vec<bool> = vec![true; n];
    let after = 10i64;
    let staff = false;
    let limit = 500i64;
    assert_key_driven(&db, "lock", store::LOCK_SQL, &[&t, &some]).await;
    assert_key_driven(
        &db,
        "commit",
        store::COMMIT_SQL,
        &[
            &t,
            &conv,
            &sender,
            &role,
            &name,
            &client,
            &kind,
            &body,
            &id,
            &reply,
            &event,
            &base,
            &unanswered,
            &support_type,
            &created,
        ],
    )
    .await;
    assert_key_driven(
        &db,
        "receipts",
        store::RECEIPTS_SQL,
        &[&t, &conv, &sender, &seqs, &reads],
    )
    .await;
    assert_key_driven(
        &db,
        "history",
        store::HISTORY_SQL,
        &[&t, &some[0], &after, &staff, &limit],
    )
    .await;
    assert_key_driven(
        &db,
        "open of visitors",
        store::OPEN_OF_VISITORS_SQL,
        &[&t, &principals],
    )
    .await;
    assert_key_driven(
        &db,
        "open of staff",
        store::OPEN_OF_STAFF_SQL,
        &[&t, &principals],
    )
    .await;
    assert_key_driven(&db, "heads", store::HEADS_SQL, &[&t, &some]).await;
    db.batch_execute("ROLLBACK").await.unwrap();
}

#[tokio::test]
async fn hot_path_statements_are_index_driven_on_a_big_unanalyzed_tenant() {
    let stack = Stack::start_with(0, true).await;
    let started = Instant::now();
    let (big, visitor, convs) = seeded(&stack, CONVERSATIONS, PER_CONVERSATION).await;
    eprintln!(
        "seeded {} messages in {:?}",
        CONVERSATIONS * PER_CONVERSATION,
        started.elapsed()
    );

    assert_plans(&stack, &big, visitor, &convs).await;
    // And once PostgreSQL has seen the tenant: the same plans, not a scan it now prefers.
    stack
        .admin_db()
        .await
        .batch_execute("ANALYZE conversations, messages, receipts")
        .await
        .unwrap();
    assert_plans(&stack, &big, visitor, &convs).await;

    // A batch commits as fast as on a fresh tenant: rounds interleaved, medians compared.
    let (fresh, fresh_visitor, fresh_convs) = seeded(&stack, 20, 0).await;
    let pool = relaydesk_core::db::pool(&stack.env.database_url, 2).unwrap();
    let mut times = [Vec::new(), Vec::new()];
    for round in 0..31 {
        for (k, (tenant, visitor, convs)) in [
            (&big, visitor, &convs),
            (&fresh, fresh_visitor, &fresh_convs),
        ]
        .into_iter()
        .enumerate()
        {
            let b = batch(tenant.id, visitor, convs, 50, &format!("r{round}"));
            let started = Instant::now();
            let committed = store::commit_sends(&pool, &b).await.unwrap();
            times[k].push(started.elapsed());
            let refused: Vec<&Outcome> = committed
                .outcomes
                .iter()
                .filter(|o| !matches!(o, Outcome::Committed { new: true, .. }))
                .collect();
            assert!(refused.is_empty(), "{refused:?}");
        }
    }
    // A resend of the same batch is deduplicated, not stored again.
    let again = batch(big.id, visitor, &convs, 50, "r0");
    let committed = store::commit_sends(&pool, &again).await.unwrap();
    assert!(committed
        .outcomes
        .iter()
        .all(|o| matches!(o, Outcome::Committed { new: false, .. })));
    let median = |v: &mut Vec<Duration>| {
        v.sort();
        v[v.len() / 2]
    };
    let big_p50 = median(&mut times[0]);
    let fresh_p50 = median(&mut times[1]);
    eprintln!("batch of 50: big tenant p50 {big_p50:?}, fresh tenant p50 {fresh_p50:?}");
    assert!(
        big_p50.as_secs_f64() <= 1.5 * fresh_p50.as_secs_f64().max(0.001),
        "a batch on the tenant with {} messages took {big_p50:?} (p50), on a fresh one {fresh_p50:?}",
        CONVERSATIONS * PER_CONVERSATION
    );
}
