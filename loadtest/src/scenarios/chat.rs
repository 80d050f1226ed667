//! `chat`: C two-party conversations (a visitor and its assigned agent, on different edges
//! when there are several), messages at a total rate alternating between both sides;
//! measures send→`accepted` and send→delivered (the other party's `msg`), and counts
//! lost (accepted, never delivered to the other party), duplicated and reordered.

use std::collections::HashMap;
use std::time::Duration;

use anyhow::{bail, Result};
use serde::Serialize;
use tokio::sync::watch;
use uuid::Uuid;

use super::{finish_report, schedule, settle, Common, Live};
use crate::client::{self, Peer, PeerState};
use crate::machine::CpuClock;
use crate::report::Report;
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
}

impl Default for ChatConfig {
    fn default() -> Self {
        ChatConfig {
            conversations: 200,
            rate: 2000.0,
            duration: Duration::from_secs(10),
            grace: Duration::from_secs(5),
            per_agent: 50,
        }
    }
}

pub async fn run(common: &Common, cfg: &ChatConfig) -> Result<Report> {
    if cfg.conversations == 0 {
        bail!("--conversations must be at least 1");
    }
    let api = common.api().await?;
    let tenant = api.tenant(&common.target.operator_token).await?;
    let n_agents = cfg.conversations.div_ceil(cfg.per_agent.max(1));
    let agents = api.agents(&tenant, "agent", n_agents, 1000).await?;
    let convs = api.conversations(&tenant, cfg.conversations).await?;
    let mut assignee = Vec::with_capacity(convs.len());
    for (_, c, a) in &convs {
        match a {
            Some(a) if agents.contains(a) => assignee.push(*a),
            _ => bail!("conversation {c} was not assigned to one of this run's online agents"),
        }
    }

    let rec = Rec::new();
    let cpu = CpuClock::start();
    let live = Live::start("chat", stats::DELIVER, &rec, common.progress);
    let (stop_tx, stop) = watch::channel(false);
    // Agents on the second edge (auto-subscribed at hello to what is assigned to them),
    // visitors on the first.
    let mut agent_peers: HashMap<Uuid, Peer> = HashMap::new();
    for (i, a) in agents.iter().enumerate() {
        let token = api.connect_token(&tenant, *a).await?;
        let (ws, w, took) =
            client::connect(common.edge(1), None, &token, common.connect_timeout).await?;
        rec.record(stats::CONNECT, took);
        rec.add(stats::CONNECTED, 1);
        rec.connections(1);
        agent_peers.insert(
            *a,
            Peer::start(
                ws,
                w.principal,
                format!("a{i}-"),
                rec.clone(),
                stop.clone(),
                true,
            ),
        );
    }
    let mut visitor_peers = Vec::with_capacity(convs.len());
    for (i, (v, _, _)) in convs.iter().enumerate() {
        let (ws, w, took) =
            client::connect(common.edge(0), None, &v.connect, common.connect_timeout).await?;
        rec.record(stats::CONNECT, took);
        rec.add(stats::CONNECTED, 1);
        rec.connections(1);
        visitor_peers.push(Peer::start(
            ws,
            w.principal,
            format!("v{i}-"),
            rec.clone(),
            stop.clone(),
            true,
        ));
    }

    let c = convs.len() as u64;
    let send_start = std::time::Instant::now();
    schedule(cfg.rate, cfg.duration, None, &rec, |i| {
        let k = (i % c) as usize;
        let conv = convs[k].1;
        if (i / c).is_multiple_of(2) {
            visitor_peers[k].send(conv, i);
        } else if let Some(p) = agent_peers.get(&assignee[k]) {
            p.send(conv, i);
        }
    })
    .await;
    let send_secs = send_start.elapsed().as_secs_f64();
    settle(cfg.grace, || {
        let t = rec.total();
        let sent = t.count(stats::SENT);
        let acc = t.count(stats::ACCEPTED);
        acc + t.count(stats::ERRORS) >= sent && t.count(stats::DELIVERED) >= acc
    })
    .await;
    stop_tx.send_replace(true);

    let mut agent_states: HashMap<Uuid, PeerState> = HashMap::new();
    for (a, p) in agent_peers {
        agent_states.insert(a, p.finish().await);
    }
    let mut visitor_states = Vec::with_capacity(visitor_peers.len());
    for p in visitor_peers {
        visitor_states.push(p.finish().await);
    }
    // Lost: accepted for one side, never received by the other.
    let conv_index: HashMap<Uuid, usize> = convs
        .iter()
        .enumerate()
        .map(|(i, (_, c, _))| (*c, i))
        .collect();
    let mut lost = 0u64;
    let has =
        |st: &PeerState, conv: &Uuid, seq: u64| st.seen.get(conv).is_some_and(|s| s.contains(seq));
    for (k, v) in visitor_states.iter().enumerate() {
        let agent = agent_states.get(&assignee[k]);
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
    let closed: Vec<String> = visitor_states
        .iter()
        .chain(agent_states.values())
        .filter_map(|s| s.closed.clone())
        .collect();

    let (timeline, secs) = live.finish().await;
    let total = rec.total();
    let mut report = Report::new("chat", stats::DELIVER, &total);
    report.config = serde_json::to_value(cfg)?;
    report.rate_target = Some(cfg.rate);
    report.rate_achieved = report.accepted as f64 / send_secs.max(1e-3);
    report.deliveries_per_s = report.delivered as f64 / send_secs.max(1e-3);
    report.unanswered = report.sent.saturating_sub(report.accepted + report.errors);
    report.disconnected = closed.len() as u64;
    if let Some(first) = closed.first() {
        report.warnings.push(format!(
            "{} connections ended early (first: {first})",
            closed.len()
        ));
    }
    report.extra.insert("agents".into(), agents.len() as f64);
    finish_report(&mut report, common, timeline, secs, vec![cpu.fraction()]);
    Ok(report)
}
