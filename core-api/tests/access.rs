//! The access model (`core_api::access`, the table in ARCHITECTURE.md) over HTTP and the
//! wire: for each role and each relation it can stand in, built with real conversations
//! in one tenant, every action's HTTP answer is the rule's (allowed: neither 403 nor
//! 404; forbidden: 403; not found: 404), and the wire's `sub` answers as HTTP's read
//! does for the same principal. Another tenant's principals find nothing.

#![allow(clippy::unwrap_used)]

mod common;

use common::{uuid, Principal, Stack, Tenant, Ws};
use relaydesk_core::access::{self, Action, Answer, Relation};
use relaydesk_core::lifecycle::By;
use relaydesk_shared::token::Role;
use serde_json::{json, Value};
use uuid::Uuid;

/// The tenant and the agents the conversations are built around.
struct World {
    stack: Stack,
    t: Tenant,
    /// Holds every `held` conversation first (the only agent listed for it).
    holder: Principal,
    /// The target of assignments and transfers under test (online, free).
    helper: Principal,
}

/// Who is asked: a role, with the credentials of its principal.
struct Subject {
    label: String,
    by: By,
    principal: Option<Principal>,
}

impl Subject {
    fn token<'a>(&'a self, w: &'a World) -> &'a str {
        self.principal
            .as_ref()
            .map_or(w.t.api_key.as_str(), |p| p.token.as_str())
    }
}

impl World {
    async fn post(&self, path: &str, bearer: &str, body: Value) -> (u16, Value) {
        self.stack.post(path, bearer, body).await
    }

    async fn ok(&self, path: &str, body: Value) {
        let (status, answer) = self.post(path, &self.t.api_key, body).await;
        assert_eq!(status, 200, "{path}: {answer}");
    }

    /// A new conversation of `visitor` (a new one when `None`) of support type `st`.
    async fn open(&self, visitor: Option<&Principal>, st: &str) -> Uuid {
        let fresh;
        let v = match visitor {
            Some(v) => v,
            None => {
                fresh = self.stack.visitor(&self.t).await;
                &fresh
            }
        };
        let (status, body) = self
            .post(
                "/v1/conversations",
                &v.token,
                json!({"support_type": st, "subject": "help"}),
            )
            .await;
        assert_eq!(status, 201, "{body}");
        uuid(&body["conversation"]["id"])
    }

    /// A conversation in which `s` stands in `rel`, resolved when `resolved`.
    async fn conversation(&self, s: &Subject, rel: Relation, resolved: bool) -> Uuid {
        let me = s.principal.as_ref().map(|p| p.id);
        let conv = match rel {
            Relation::Owner => self.open(s.principal.as_ref(), "held").await,
            Relation::QueuedEligible => self.open(None, "queue").await,
            _ => self.open(None, "held").await,
        };
        let path = |action: &str| format!("/v1/conversations/{conv}/{action}");
        match (rel, me) {
            (Relation::Assignee, Some(me)) => {
                self.ok(&path("transfer"), json!({"agent_id": me})).await;
            }
            (Relation::Participant, Some(me)) => {
                self.ok(&path("participants"), json!({"agent_id": me}))
                    .await;
            }
            (Relation::Former, Some(me)) => {
                self.ok(&path("transfer"), json!({"agent_id": me})).await;
                self.ok(&path("transfer"), json!({"agent_id": self.holder.id}))
                    .await;
            }
            _ => {}
        }
        if resolved {
            self.ok(&path("resolve"), json!({"reason": "solved"})).await;
        }
        conv
    }

    /// `action` on `conv` by `s`, over HTTP: the status.
    async fn act(&self, s: &Subject, action: Action, conv: Uuid) -> u16 {
        let token = s.token(self);
        let base = format!("/v1/conversations/{conv}");
        let helper = self.helper.id;
        let me = s.principal.as_ref().map_or(helper, |p| p.id);
        let post = |tail: &str, body: Value| {
            let path = format!("{base}/{tail}");
            async move { self.post(&path, token, body).await }
        };
        let (status, body) = match action {
            Action::Read => self.stack.get(&base, token).await,
            Action::ReadMessages => self.stack.get(&format!("{base}/messages"), token).await,
            Action::Assignments => self.stack.get(&format!("{base}/assignments"), token).await,
            Action::Sub => unreachable!("the wire's sub is asked over a socket"),
            Action::Send => {
                let r = self
                    .stack
                    .http
                    .post(format!("{}{base}/messages", self.stack.core_url))
                    .bearer_auth(token)
                    .header("idempotency-key", Uuid::new_v4().simple().to_string())
                    .json(&json!({"kind": "text", "body": {"text": "hello"}}))
                    .send()
                    .await
                    .unwrap();
                let status = r.status().as_u16();
                (status, r.json().await.unwrap_or(Value::Null))
            }
            Action::Note => post("notes", json!({"text": "internal"})).await,
            Action::Take => post("assign", json!({"agent_id": me})).await,
            Action::Assign => post("assign", json!({"agent_id": helper})).await,
            Action::Transfer => post("transfer", json!({"agent_id": helper})).await,
            Action::Escalate => {
                post(
                    "escalate",
                    json!({"support_type": "general", "reason": "tier 2"}),
                )
                .await
            }
            Action::Handoff => post("handoff", json!({})).await,
            Action::Resolve => post("resolve", json!({"reason": "solved"})).await,
            Action::Reopen => post("reopen", json!({})).await,
            Action::Snooze => post("snooze", json!({})).await,
            Action::Join => post("participants", json!({"agent_id": me})).await,
            Action::Tag => post("tags", json!({"add": ["vip"]})).await,
            Action::Csat => post("csat", json!({"score": 5})).await,
        };
        assert!(status < 500, "{} {action:?}: {status} {body}", s.label);
        status
    }
}

fn matches(answer: Answer, status: u16) -> bool {
    match answer {
        Answer::Allow => status != 403 && status != 404,
        Answer::Forbidden => status == 403,
        Answer::NotFound => status == 404,
    }
}

/// The wire's answer to `sub` as an HTTP status: 200 subbed, else the error's.
async fn sub_status(ws: &mut Ws, conv: Uuid) -> u16 {
    ws.send(json!({"t": "sub", "conv": conv, "after": 0})).await;
    let f = ws
        .wait_for(|f| (f["t"] == "subbed" || f["t"] == "error") && f["conv"] == json!(conv))
        .await;
    match (f["t"].as_str(), f["code"].as_str()) {
        (Some("subbed"), _) => 200,
        (_, Some("forbidden")) => 403,
        (_, Some("not_found")) => 404,
        _ => panic!("unexpected answer to sub: {f}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_and_the_wire_follow_the_access_table() {
    let stack = Stack::start(1).await;
    let t = stack.tenant().await;
    let holder = stack.agent(&t, "agent").await;
    let helper = stack.agent(&t, "agent").await;
    // The agent eligible for the queue's support type, offline so that it stays queued.
    let waiting = stack.agent_with(&t, "agent", "human", 1000, false).await;
    for (key, agents) in [("held", vec![holder.id]), ("queue", vec![waiting.id])] {
        let (status, body) = stack
            .post(
                "/v1/support-types",
                &t.api_key,
                json!({"key": key, "name": key, "agents": agents}),
            )
            .await;
        assert_eq!(status, 201, "{body}");
    }
    let w = World {
        stack,
        t,
        holder,
        helper,
    };

    // Each role, in each relation it can stand in (its own principal per relation).
    let mut cases: Vec<(Subject, Relation)> = vec![(
        Subject {
            label: "API key".into(),
            by: By::Tenant,
            principal: None,
        },
        Relation::None,
    )];
    for (role, name) in [
        (Role::Admin, "admin"),
        (Role::Supervisor, "supervisor"),
        (Role::Agent, "agent"),
        (Role::Bot, "agent"),
        (Role::Visitor, "visitor"),
    ] {
        let template = By::Staff {
            id: Uuid::nil(),
            role,
        };
        let template = if role == Role::Visitor {
            By::Visitor { id: Uuid::nil() }
        } else {
            template
        };
        for rel in access::relations_of(template) {
            let p = match role {
                Role::Visitor => w.stack.visitor(&w.t).await,
                Role::Bot => w.stack.agent_with(&w.t, "agent", "bot", 1000, true).await,
                _ if rel == Relation::QueuedEligible => copy(&waiting),
                _ => w.stack.agent(&w.t, name).await,
            };
            let by = match role {
                Role::Visitor => By::Visitor { id: p.id },
                role => By::Staff { id: p.id, role },
            };
            cases.push((
                Subject {
                    label: format!("{role:?} {}", rel.name()),
                    by,
                    principal: Some(p),
                },
                rel,
            ));
        }
    }

    let mut checked = 0;
    for (s, rel) in &cases {
        // The wire's sub agrees with HTTP's read for the same principal.
        if let Some(p) = &s.principal {
            let conv = w.conversation(s, *rel, false).await;
            let (mut ws, _) = Ws::connect(&w.stack.edge_urls[0], &p.connect).await;
            let wire = sub_status(&mut ws, conv).await;
            let http = w.act(s, Action::Read, conv).await;
            assert_eq!(wire, http, "{}: sub answered {wire}, read {http}", s.label);
            let (status, reopenable) = access::table_state(Action::Sub, *rel);
            let view = view(status, reopenable);
            let expected = access::decide(Action::Sub, s.by, *rel, &view);
            assert!(
                matches(expected, wire),
                "{}: sub answered {wire}, the rule says {expected:?}",
                s.label
            );
            checked += 1;
        }
        for action in Action::ALL {
            if action == Action::Sub {
                continue;
            }
            let (status, reopenable) = access::table_state(action, *rel);
            let conv = w.conversation(s, *rel, status == "resolved").await;
            let expected = access::decide(action, s.by, *rel, &view(status, reopenable));
            let got = w.act(s, action, conv).await;
            assert!(
                matches(expected, got),
                "{} {action:?}: HTTP answered {got}, the rule says {expected:?}",
                s.label
            );
            checked += 1;
        }
    }
    assert!(checked > 200, "only {checked} cells walked");

    // Another tenant's principals find nothing (404), whatever they try.
    let t2 = w.stack.tenant().await;
    let foreign = [
        w.stack.visitor(&t2).await,
        w.stack.agent(&t2, "admin").await,
    ];
    let conv = w.open(None, "held").await;
    for p in &foreign {
        let s = Subject {
            label: "another tenant".into(),
            by: By::Tenant,
            principal: Some(copy(p)),
        };
        for action in [Action::Read, Action::Send, Action::Reopen, Action::Resolve] {
            assert_eq!(w.act(&s, action, conv).await, 404, "{action:?}");
        }
        let (mut ws, _) = Ws::connect(&w.stack.edge_urls[0], &p.connect).await;
        assert_eq!(sub_status(&mut ws, conv).await, 404);
    }
}

fn copy(p: &Principal) -> Principal {
    Principal {
        id: p.id,
        token: p.token.clone(),
        connect: p.connect.clone(),
    }
}

fn view(status: &str, reopenable: bool) -> access::Conv<'_> {
    access::Conv {
        id: Uuid::nil(),
        visitor: Uuid::nil(),
        assignee: None,
        status,
        participants: &[],
        reopenable,
    }
}

/// The finding this model fixes: an agent who never took part in a resolved
/// conversation cannot reopen it (nor read it), while one who did can.
#[tokio::test]
async fn only_those_who_took_part_reopen() {
    let stack = Stack::start(1).await;
    let t = stack.tenant().await;
    let agent = stack.agent(&t, "agent").await;
    let visitor = stack.visitor(&t).await;
    let (conv, assignee) = stack.conversation(&visitor).await;
    assert_eq!(assignee, Some(agent.id));
    let outsider = stack.agent(&t, "agent").await;
    let resolve = format!("/v1/conversations/{conv}/resolve");
    let (status, body) = stack
        .post(&resolve, &agent.token, json!({"reason": "solved"}))
        .await;
    assert_eq!(status, 200, "{body}");
    let reopen = format!("/v1/conversations/{conv}/reopen");
    let (status, body) = stack.post(&reopen, &outsider.token, json!({})).await;
    assert_eq!(status, 403, "{body}");
    assert!(body.to_string().contains("reopen"), "{body}");
    let (status, _) = stack
        .get(&format!("/v1/conversations/{conv}"), &outsider.token)
        .await;
    assert_eq!(status, 403);
    let (status, body) = stack.post(&reopen, &agent.token, json!({})).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["conversation"]["status"], "assigned");
}
