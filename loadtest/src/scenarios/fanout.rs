//! `fanout`: S admin connections subscribed (`sub`) to one conversation, P publishers
//! sending into it at a total rate; measures deliveries per second and delivery latency
//! (from the `t0` the body carries), and counts what each subscriber missed. Bodies can be
//! padded to a size (`body_bytes`). While sending it also measures how busy the machine was
//! and the cores the harness and the `--edge-pid` processes used, to tell a server's limit
//! from the machine's.

use std::collections::HashMap;
use std::time::Duration;

use anyhow::{bail, Result};
use serde::Serialize;
use tokio::sync::watch;

use super::{finish_report, schedule, settle, Common, Live};
use crate::client;
use crate::machine::{CpuClock, LoadClock};
use crate::peer::Peer;
use crate::pool::{Event, PoolTask};
use crate::report::Report;
use crate::stats::{self, Rec};
use crate::worker::{tally, Fleet};

#[derive(Debug, Clone, Serialize)]
pub struct FanoutConfig {
    pub subscribers: usize,
    pub publishers: usize,
    /// Messages per second, all publishers together.
    pub rate: f64,
    #[serde(serialize_with = "crate::report::human")]
    pub duration: Duration,
    #[serde(serialize_with = "crate::report::human")]
    pub grace: Duration,
    /// Subscriber connections opened per second.
    pub connect_rate: f64,
    /// Size of each message's serialized `body`; `None`: a short fixed text.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub body_bytes: Option<usize>,
}

impl Default for FanoutConfig {
    fn default() -> Self {
        FanoutConfig {
            subscribers: 1000,
            publishers: 1,
            rate: 20.0,
            duration: Duration::from_secs(10),
            grace: Duration::from_secs(5),
            connect_rate: 1000.0,
            body_bytes: None,
        }
    }
}

pub async fn run(common: &Common, cfg: &FanoutConfig) -> Result<Report> {
    if cfg.subscribers == 0 || cfg.publishers == 0 {
        bail!("--subscribers and --publishers must be at least 1");
    }
    let api = common.api().await?;
    let tenant = api.tenant(&common.target.operator_token).await?;
    let admins = api
        .agents(
            &tenant,
            "admin",
            (cfg.subscribers / 1000).clamp(2, 10),
            1000,
        )
        .await?;
    let visitor = api.visitor(&tenant).await?;
    let (conv, _) = api.conversation(&visitor).await?;
    let tokens = api
        .connect_tokens(&tenant, &admins, cfg.subscribers.min(1000))
        .await?;

    let rec = Rec::new();
    let cpu = CpuClock::start();
    let live = Live::start("fanout", stats::DELIVER, &rec, common.progress);
    let task = PoolTask {
        edges: common.target.edges.clone(),
        tokens,
        connections: cfg.subscribers,
        offset: 0,
        rate: cfg.connect_rate,
        source: None,
        convs: vec![conv],
        connect_timeout_ms: common.connect_timeout.as_millis() as u64,
        resume_timeout_ms: 30_000,
    };
    let mut fleet = Fleet::start(task, &common.scale, &rec)?;
    let limit = Duration::from_secs_f64(cfg.subscribers as f64 / cfg.connect_rate.max(0.001))
        + common.connect_timeout
        + Duration::from_secs(10);
    let (ok, failed) = tally(
        &fleet
            .wait(|e| matches!(e, Event::Ready { .. }), limit)
            .await,
    );

    let (stop_tx, stop) = watch::channel(false);
    let mut pubs = Vec::new();
    for i in 0..cfg.publishers {
        let token = api.connect_token(&tenant, admins[i % admins.len()]).await?;
        let (ws, w, took) =
            client::connect(common.edge(i), None, &token, common.connect_timeout).await?;
        rec.record(stats::CONNECT, took);
        rec.connections(1);
        pubs.push(
            Peer::start(
                ws,
                w.principal,
                format!("p{i}-"),
                rec.clone(),
                stop.clone(),
                false,
            )
            .with_body_bytes(cfg.body_bytes),
        );
    }
    let p = pubs.len() as u64;
    let send_start = std::time::Instant::now();
    let load = LoadClock::start(&common.target.edge_pids);
    let mut harness_pids = fleet.pids();
    harness_pids.push(std::process::id());
    let harness = LoadClock::start(&harness_pids);
    schedule(cfg.rate, cfg.duration, None, &rec, |i| {
        pubs[(i % p) as usize].send(conv, i);
    })
    .await;
    let send_secs = send_start.elapsed().as_secs_f64();
    let machine_busy = load.machine_busy();
    let edge_cores = load.processes_cores();
    let harness_cores = harness.processes_cores();
    settle(cfg.grace, || {
        let t = rec.total();
        let acc = t.count(stats::ACCEPTED);
        acc + t.count(stats::ERRORS) >= t.count(stats::SENT)
            && t.count(stats::DELIVERED) >= acc * ok as u64
    })
    .await;
    stop_tx.send_replace(true);
    let mut head = 0;
    for p in pubs {
        let st = p.finish().await;
        head = head.max(st.heads.get(&conv).copied().unwrap_or(0));
    }
    let workers = fleet.workers;
    let mut cpus = fleet
        .stop(HashMap::from([(conv, head)]), Duration::from_secs(60))
        .await;
    if workers == 0 {
        // The pools ran in this process: its own figure covers them.
        cpus.clear();
    }
    cpus.insert(0, cpu.fraction());

    let (timeline, secs) = live.finish().await;
    let mut report = Report::new("fanout", stats::DELIVER, &rec.total());
    report.config = serde_json::to_value(cfg)?;
    report.rate_target = Some(cfg.rate);
    report.rate_achieved = report.accepted as f64 / send_secs.max(1e-3);
    report.deliveries_per_s = report.delivered as f64 / send_secs.max(1e-3);
    report.unanswered = report.sent.saturating_sub(report.accepted + report.errors);
    report.workers = workers;
    report.extra.insert("subscribers_ready".into(), ok as f64);
    report.extra.insert("head_seq".into(), head as f64);
    // While sending: how busy the whole machine was (0–1 of all cores; near 1, the harness
    // and the server competed for CPU), and the cores the harness's processes and the
    // `--edge-pid` processes used.
    for (name, v) in [
        ("machine_busy_while_sending", machine_busy),
        ("harness_cores_while_sending", harness_cores),
        ("edge_cores_while_sending", edge_cores),
    ] {
        if let Some(v) = v {
            report.extra.insert(name.into(), v);
        }
    }
    if failed > 0 {
        report.failures.push(format!(
            "{failed} of {} subscribers failed to connect",
            cfg.subscribers
        ));
    }
    finish_report(&mut report, common, timeline, secs, cpus);
    Ok(report)
}
