//! `chat`: C two-party conversations (a visitor and its assigned agent, on different edges
//! when there are several), messages at a total rate alternating between both sides;
//! measures send→`accepted` and send→delivered (the other party's `msg`), and counts
//! lost (accepted, never delivered to the other party), duplicated and reordered; and,
//! from the servers' `/metrics` read before sending and after the last deliveries, their
//! stage latencies and CPU per persisted message ([`crate::stages`]).
//!
//! The parties survive their edges: closed with a reconnect code (a draining edge's 1012,
//! 1001, 4008, …) or cut off, a party reconnects to the next edge, resumes its
//! conversations from its last contiguous seq and resends what was not yet accepted with
//! the same client ids ([`Peer::start_resilient`]), so a rolling restart of every edge
//! under this load must still lose, duplicate and reorder nothing; the report counts the
//! `reconnects`, and a party that could not reconnect as `disconnected`.
//!
//! Its parts — the conversations ([`World`]), their connected parties ([`Pairs`]) and
//! the end-of-run audit ([`Pairs::finish`]) — also carry the chat traffic of `soak`.

use std::collections::HashMap;
use std::time::Duration;

use anyhow::{bail, Result};
use serde::Serialize;
use tokio::sync::watch;
use uuid::Uuid;

use super::disturb::{Noisy, Stalled};
use super::{finish_report, memory, schedule, settle, Common, Live};
use crate::client;
use crate::machine::CpuClock;
use crate::peer::{Peer, PeerState, Redial};
use crate::report::Report;
use crate::setup::{self, Api, Tenant, Visitor};
use crate::stats::{self, Rec};

#[derive(Debug, Clone, Serialize)]
pub struct ChatConfig {
    pub conversations: usize,
    /// Messages per second, all conversations together.
    pub rate: f64,
    #[serde(serialize_with = "crate::report::human")]
    pub duration: Duration,
    /// How long to wait for the last deliveries after sending stops.
    #[serde(serialize_with = "crate::report::human")]
    pub grace: Duration,
    /// Conversations per agent (agents are created to match).
    pub per_agent: usize,
    /// Messages per second sent meanwhile by another tenant, far over its limit (0: none);
    /// see [`super::disturb::Noisy`].
    pub noisy_rate: f64,
    /// Extra connections of this run's agents that never read (see
    /// [`super::disturb::Stalled`]).
    pub stalled: usize,
}

impl Default for ChatConfig {
    fn default() -> Self {
        ChatConfig {
            conversations: 200,
            rate: 2000.0,
            duration: Duration::from_secs(10),
            grace: Duration::from_secs(5),
            per_agent: 50,
            noisy_rate: 0.0,
            stalled: 0,
        }
    }
}

pub async fn run(common: &Common, cfg: &ChatConfig) -> Result<Report> {
    run_with(common, cfg, || {}).await
}

/// Like [`run`], calling `on_load` once every party is connected, as the send schedule
/// starts: a test can then disturb the stack under load (restart edges, …).
pub async fn run_with(common: &Common, cfg: &ChatConfig, on_load: impl FnOnce()) -> Result<Report> {
    if cfg.conversations == 0 {
        bail!("--conversations must be at least 1");
    }
    let api = common.api().await?;
    let tenant = api.tenant(&common.target.operator_token).await?;
    let world = World::create(&api, &tenant, cfg.conversations, cfg.per_agent).await?;
    // With stalled clients, the edges' memory before them (for their cost per socket).
    let stalled = match cfg.stalled {
        0 => None,
        n => {
            let before = setup::sample_edges(&api, &common.target).await;
            let s = Stalled::open(common, &api, &tenant, world.agents(), n).await?;
            Some((s, before))
        }
    };
    let noisy = match cfg.noisy_rate {
        r if r > 0.0 => Some(Noisy::start(common, &api, r).await?),
        _ => None,
    };

    let rec = Rec::new();
    let cpu = CpuClock::start();
    let live = Live::start("chat", stats::DELIVER, &rec, common.progress);
    let (stop_tx, stop) = watch::channel(false);
    let pairs = world.connect(common, &api, &tenant, &rec, &stop).await?;

    on_load();
    let stages_before = crate::stages::snapshot(&api, &common.target).await;
    let send_start = std::time::Instant::now();
    schedule(cfg.rate, cfg.duration, None, &rec, |i| pairs.send(i)).await;
    let send_secs = send_start.elapsed().as_secs_f64();
    settle(cfg.grace, || settled(&rec)).await;
    let stages_after = crate::stages::snapshot(&api, &common.target).await;
    // Persisted in the window: every `accepted` follows its commit, and sends happen only
    // inside the window.
    let persisted = rec.total().count(stats::ACCEPTED);
    let memory = match stalled {
        Some((s, before)) => {
            let m = memory(&api, &common.target, before, s.len() as u64).await;
            drop(s);
            Some(m)
        }
        None => None,
    };
    stop_tx.send_replace(true);
    let outcome = pairs.finish(&rec).await;
    let noisy = match noisy {
        Some(n) => Some(n.finish().await),
        None => None,
    };

    let (timeline, secs) = live.finish().await;
    let total = rec.total();
    let mut report = Report::new("chat", stats::DELIVER, &total);
    report.config = serde_json::to_value(cfg)?;
    report.rate_target = Some(cfg.rate);
    report.rate_achieved = report.accepted as f64 / send_secs.max(1e-3);
    report.deliveries_per_s = report.delivered as f64 / send_secs.max(1e-3);
    report.unanswered = report.sent.saturating_sub(report.accepted + report.errors);
    report.disconnected = outcome.closed.len() as u64;
    if let Some(first) = outcome.closed.first() {
        report.warnings.push(format!(
            "{} connections ended early (first: {first})",
            outcome.closed.len()
        ));
    }
    report.extra.insert("agents".into(), outcome.agents as f64);
    report.stages = crate::stages::between(&stages_before, &stages_after);
    report.cpu = crate::stages::cpu_per_message(&stages_before, &stages_after, persisted);
    report
        .extra
        .insert("persisted_in_window".into(), persisted as f64);
    report.stage_span = Some(crate::stages::span(&stages_before, &stages_after));
    if let Some(m) = memory {
        report.memory = Some(m);
        report.extra.insert("stalled".into(), cfg.stalled as f64);
        report.extra.insert(
            "slow_consumer_closes".into(),
            crate::stages::edge_counter(
                &stages_before,
                &stages_after,
                "relaydesk_edge_slow_consumer_closes_total",
            ),
        );
    }
    if let Some(n) = noisy {
        if !report.cpu.is_empty() {
            report.warnings.push(format!(
                "server CPU per message includes the noisy tenant's work ({} messages accepted) but counts only this run's messages",
                n.accepted
            ));
        }
        report.extra.insert("noisy_sent".into(), n.sent as f64);
        report
            .extra
            .insert("noisy_accepted".into(), n.accepted as f64);
        report
            .extra
            .insert("noisy_refused".into(), n.refused as f64);
        report
            .extra
            .insert("noisy_reconnects".into(), n.reconnects as f64);
    }
    finish_report(&mut report, common, timeline, secs, vec![cpu.fraction()]);
    Ok(report)
}

/// Every send answered (`accepted` or `error`) and every accepted message delivered.
pub fn settled(rec: &Rec) -> bool {
    let t = rec.total();
    let sent = t.count(stats::SENT);
    let acc = t.count(stats::ACCEPTED);
    acc + t.count(stats::ERRORS) >= sent && t.count(stats::DELIVERED) >= acc
}

/// The conversations of a run, created through the HTTP API: one visitor each, assigned
/// to one of this run's online agents.
pub struct World {
    agents: Vec<Uuid>,
    /// (visitor, conversation, assigned agent).
    convs: Vec<(Visitor, Uuid, Uuid)>,
}

impl World {
    /// Creates `conversations / per_agent` agents (rounded up), then the conversations.
    /// Create other online agents only afterwards, or conversations may go to them.
    pub async fn create(
        api: &Api,
        tenant: &Tenant,
        conversations: usize,
        per_agent: usize,
    ) -> Result<World> {
        if conversations == 0 {
            bail!("--conversations must be at least 1");
        }
        let n_agents = conversations.div_ceil(per_agent.max(1));
        let agents = api.agents(tenant, "agent", n_agents, 1000).await?;
        let mut convs = Vec::with_capacity(conversations);
        for (v, c, a) in api.conversations(tenant, conversations).await? {
            match a {
                Some(a) if agents.contains(&a) => convs.push((v, c, a)),
                _ => bail!("conversation {c} was not assigned to one of this run's online agents"),
            }
        }
        Ok(World { agents, convs })
    }

    pub fn agents(&self) -> &[Uuid] {
        &self.agents
    }

    pub fn conversations(&self) -> Vec<Uuid> {
        self.convs.iter().map(|(_, c, _)| *c).collect()
    }

    /// Connects both sides: agents to the second edge (auto-subscribed at hello to what is
    /// assigned to them), visitors to the first. They run until `stop` turns true,
    /// reconnecting to the next edge whenever theirs closes them with a reconnect code or
    /// is lost (giving up after `common.connect_timeout` without an edge accepting).
    pub async fn connect(
        self,
        common: &Common,
        api: &Api,
        tenant: &Tenant,
        rec: &Rec,
        stop: &watch::Receiver<bool>,
    ) -> Result<Pairs> {
        let edges = &common.target.edges;
        let redial = |edge: usize, token: String, convs: Vec<Uuid>| Redial {
            edges: edges.clone(),
            edge: edge % edges.len().max(1),
            token,
            convs,
            connect_timeout: common.connect_timeout,
            give_up: common.connect_timeout,
        };
        let mut agent_peers: HashMap<Uuid, Peer> = HashMap::new();
        for (i, a) in self.agents.iter().enumerate() {
            let token = api.connect_token(tenant, *a).await?;
            let (ws, w, took) =
                client::connect(common.edge(1), None, &token, common.connect_timeout).await?;
            rec.record(stats::CONNECT, took);
            rec.add(stats::CONNECTED, 1);
            rec.connections(1);
            let convs = self
                .convs
                .iter()
                .filter(|(_, _, assignee)| assignee == a)
                .map(|(_, c, _)| *c)
                .collect();
            agent_peers.insert(
                *a,
                Peer::start_resilient(
                    ws,
                    w.principal,
                    format!("a{i}-"),
                    rec.clone(),
                    stop.clone(),
                    redial(1, token, convs),
                ),
            );
        }
        let mut visitor_peers = Vec::with_capacity(self.convs.len());
        for (i, (v, c, _)) in self.convs.iter().enumerate() {
            let (ws, w, took) =
                client::connect(common.edge(0), None, &v.connect, common.connect_timeout).await?;
            rec.record(stats::CONNECT, took);
            rec.add(stats::CONNECTED, 1);
            rec.connections(1);
            visitor_peers.push(Peer::start_resilient(
                ws,
                w.principal,
                format!("v{i}-"),
                rec.clone(),
                stop.clone(),
                redial(0, v.connect.clone(), vec![*c]),
            ));
        }
        Ok(Pairs {
            convs: self.convs.iter().map(|(_, c, _)| *c).collect(),
            assignee: self.convs.iter().map(|(_, _, a)| *a).collect(),
            agent_peers,
            visitor_peers,
        })
    }
}

/// Both parties of every conversation, connected and auditing what they receive.
pub struct Pairs {
    convs: Vec<Uuid>,
    assignee: Vec<Uuid>,
    agent_peers: HashMap<Uuid, Peer>,
    visitor_peers: Vec<Peer>,
}

/// What the parties saw, once stopped.
#[derive(Debug, Default)]
pub struct Outcome {
    pub agents: usize,
    /// Why connections ended early, one entry per connection that did.
    pub closed: Vec<String>,
    /// Highest accepted seq of each conversation.
    pub heads: HashMap<Uuid, u64>,
}

impl Pairs {
    /// Send number `i`: conversation `i mod C`, the visitor and the agent taking turns
    /// from one pass over the conversations to the next.
    pub fn send(&self, i: u64) {
        let c = self.convs.len() as u64;
        let k = (i % c) as usize;
        let conv = self.convs[k];
        if (i / c).is_multiple_of(2) {
            self.visitor_peers[k].send(conv, i);
        } else if let Some(p) = self.agent_peers.get(&self.assignee[k]) {
            p.send(conv, i);
        }
    }

    /// Waits for every party (after `stop` turned true), adds the lost messages (accepted
    /// for one side, never received by the other) to `rec`, and says what they saw.
    pub async fn finish(self, rec: &Rec) -> Outcome {
        let mut agent_states: HashMap<Uuid, PeerState> = HashMap::new();
        for (a, p) in self.agent_peers {
            agent_states.insert(a, p.finish().await);
        }
        let mut visitor_states = Vec::with_capacity(self.visitor_peers.len());
        for p in self.visitor_peers {
            visitor_states.push(p.finish().await);
        }
        let conv_index: HashMap<Uuid, usize> = self
            .convs
            .iter()
            .enumerate()
            .map(|(i, c)| (*c, i))
            .collect();
        let mut lost = 0u64;
        let has = |st: &PeerState, conv: &Uuid, seq: u64| {
            st.seen.get(conv).is_some_and(|s| s.contains(seq))
        };
        for (k, v) in visitor_states.iter().enumerate() {
            let agent = agent_states.get(&self.assignee[k]);
            for (conv, seq) in &v.accepted {
                if !agent.is_some_and(|a| has(a, conv, *seq)) {
                    lost += 1;
                }
            }
        }
        for a in agent_states.values() {
            for (conv, seq) in &a.accepted {
                let v = conv_index.get(conv).and_then(|&k| visitor_states.get(k));
                if !v.is_some_and(|v| has(v, conv, *seq)) {
                    lost += 1;
                }
            }
        }
        rec.add(stats::LOST, lost);
        let mut heads: HashMap<Uuid, u64> = HashMap::new();
        for st in visitor_states.iter().chain(agent_states.values()) {
            for (conv, seq) in &st.heads {
                let h = heads.entry(*conv).or_default();
                *h = (*h).max(*seq);
            }
        }
        Outcome {
            agents: agent_states.len(),
            closed: visitor_states
                .iter()
                .chain(agent_states.values())
                .filter_map(|s| s.closed.clone())
                .collect(),
            heads,
        }
    }
}
