//! `storm`: N connected clients, each subscribed to one of a few conversations that keep
//! receiving messages, drop at once and reconnect with resume (`sub` `after` their last
//! contiguous seq). Measures the time from the drop until each client has caught up
//! (`resume`), the time until all have, and any gap, duplicate or reordering.

use std::collections::HashMap;
use std::time::Duration;

use anyhow::{bail, Result};
use serde::Serialize;
use tokio::sync::watch;

use super::{finish_report, schedule, settle, Common, Live};
use crate::client;
use crate::machine::CpuClock;
use crate::peer::Peer;
use crate::pool::{Command, Event, PoolTask};
use crate::report::Report;
use crate::stats::{self, Rec};
use crate::worker::{tally, Fleet};

#[derive(Debug, Clone, Serialize)]
pub struct StormConfig {
    pub connections: usize,
    pub conversations: usize,
    /// Background messages per second (all conversations) throughout the storm.
    pub rate: f64,
    /// Initial connections per second.
    pub connect_rate: f64,
    /// Messages flow this long before the drop.
    #[serde(serialize_with = "crate::report::human")]
    pub warmup: Duration,
    /// How long a client keeps trying to resume.
    #[serde(serialize_with = "crate::report::human")]
    pub resume_timeout: Duration,
    #[serde(serialize_with = "crate::report::human")]
    pub grace: Duration,
}

impl Default for StormConfig {
    fn default() -> Self {
        StormConfig {
            connections: 2000,
            conversations: 20,
            rate: 100.0,
            connect_rate: 1000.0,
            warmup: Duration::from_secs(2),
            resume_timeout: Duration::from_secs(60),
            grace: Duration::from_secs(3),
        }
    }
}

pub async fn run(common: &Common, cfg: &StormConfig) -> Result<Report> {
    if cfg.connections == 0 || cfg.conversations == 0 {
        bail!("--connections and --conversations must be at least 1");
    }
    let api = common.api().await?;
    let tenant = api.tenant(&common.target.operator_token).await?;
    let admins = api
        .agents(
            &tenant,
            "admin",
            (cfg.connections / 2000).clamp(2, 10),
            1000,
        )
        .await?;
    let convs: Vec<_> = api
        .conversations(&tenant, cfg.conversations)
        .await?
        .into_iter()
        .map(|(_, c, _)| c)
        .collect();
    let tokens = api
        .connect_tokens(&tenant, &admins, cfg.connections.min(1000))
        .await?;

    let rec = Rec::new();
    let cpu = CpuClock::start();
    let live = Live::start("storm", stats::RESUME, &rec, common.progress);
    let task = PoolTask {
        edges: common.target.edges.clone(),
        tokens,
        connections: cfg.connections,
        offset: 0,
        rate: cfg.connect_rate,
        source: None,
        convs: convs.clone(),
        connect_timeout_ms: common.connect_timeout.as_millis() as u64,
        resume_timeout_ms: cfg.resume_timeout.as_millis() as u64,
    };
    let mut fleet = Fleet::start(task, &common.scale, &rec)?;
    let limit = Duration::from_secs_f64(cfg.connections as f64 / cfg.connect_rate.max(0.001))
        + common.connect_timeout
        + Duration::from_secs(10);
    let (ok, failed) = tally(
        &fleet
            .wait(|e| matches!(e, Event::Ready { .. }), limit)
            .await,
    );

    // One publisher keeps every conversation moving through the whole storm.
    let (stop_tx, stop) = watch::channel(false);
    let token = api.connect_token(&tenant, admins[0]).await?;
    let (ws, w, _) = client::connect(common.edge(0), None, &token, common.connect_timeout).await?;
    rec.connections(1);
    let publisher = std::sync::Arc::new(Peer::start(
        ws,
        w.principal,
        "s-".into(),
        rec.clone(),
        stop.clone(),
        false,
    ));
    let (send_stop_tx, send_stop) = watch::channel(false);
    let sender = {
        let (rec, convs, publisher) = (rec.clone(), convs.clone(), publisher.clone());
        let rate = cfg.rate;
        tokio::spawn(async move {
            let k = convs.len() as u64;
            schedule(
                rate,
                Duration::from_secs(24 * 3600),
                Some(send_stop),
                &rec,
                |i| {
                    publisher.send(convs[(i % k) as usize], i);
                },
            )
            .await
        })
    };
    tokio::time::sleep(cfg.warmup).await;

    let dropped = std::time::Instant::now();
    fleet.send(&Command::Drop);
    let resumed = fleet
        .wait(
            |e| matches!(e, Event::Resumed { .. }),
            cfg.resume_timeout + Duration::from_secs(10),
        )
        .await;
    let all_resumed = dropped.elapsed().as_secs_f64();
    let (resumed_ok, resumed_failed) = tally(&resumed);
    tokio::time::sleep(Duration::from_secs(1)).await;
    send_stop_tx.send_replace(true);
    let _ = sender.await;
    settle(cfg.grace, || {
        let t = rec.total();
        t.count(stats::ACCEPTED) + t.count(stats::ERRORS) >= t.count(stats::SENT)
    })
    .await;
    // The clients wait for what is still on its way before counting what is missing.
    stop_tx.send_replace(true);
    let heads: HashMap<_, _> = match std::sync::Arc::try_unwrap(publisher) {
        Ok(p) => p.finish().await.heads,
        Err(_) => HashMap::new(),
    };
    let workers = fleet.workers;
    let mut cpus = fleet.stop(heads, Duration::from_secs(60)).await;
    if workers == 0 {
        // The pools ran in this process: its own figure covers them.
        cpus.clear();
    }
    cpus.insert(0, cpu.fraction());

    let (timeline, secs) = live.finish().await;
    let mut report = Report::new("storm", stats::RESUME, &rec.total());
    report.config = serde_json::to_value(cfg)?;
    report.workers = workers;
    report.rate_achieved = resumed_ok as f64 / all_resumed.max(1e-3);
    report.unanswered = report.sent.saturating_sub(report.accepted + report.errors);
    report.extra.insert("all_resumed_s".into(), all_resumed);
    report.extra.insert("clients_ready".into(), ok as f64);
    if failed > 0 {
        report.failures.push(format!(
            "{failed} of {} clients failed to connect",
            cfg.connections
        ));
    }
    if resumed_failed > 0 || resumed_ok < ok {
        report.failures.push(format!(
            "{} of {ok} clients did not resume within {:?}",
            ok.saturating_sub(resumed_ok),
            cfg.resume_timeout
        ));
    }
    finish_report(&mut report, common, timeline, secs, cpus);
    Ok(report)
}
