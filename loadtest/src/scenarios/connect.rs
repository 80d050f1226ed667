//! `connect`: ramp to N authenticated idle connections at a given rate, hold them, and
//! report connect latency (TCP + upgrade + hello→welcome), failures, and each edge's
//! resident memory per connection (`/metrics`, or `/proc/<pid>/status` with `--edge-pid`).

use std::time::Duration;

use anyhow::{bail, Result};
use serde::Serialize;

use super::{finish_report, memory, Common, Live};
use crate::machine::CpuClock;
use crate::pool::{Event, PoolTask};
use crate::report::Report;
use crate::setup;
use crate::stats::{self, Rec};
use crate::worker::{tally, Fleet};

#[derive(Debug, Clone, Serialize)]
pub struct ConnectConfig {
    pub connections: usize,
    /// New connections per second.
    pub rate: f64,
    /// How long to hold them once all are up.
    #[serde(serialize_with = "crate::report::human")]
    pub hold: Duration,
}

impl Default for ConnectConfig {
    fn default() -> Self {
        ConnectConfig {
            connections: 1000,
            rate: 500.0,
            hold: Duration::from_secs(10),
        }
    }
}

pub async fn run(common: &Common, cfg: &ConnectConfig) -> Result<Report> {
    if cfg.connections == 0 {
        bail!("--connections must be at least 1");
    }
    let api = common.api().await?;
    let tenant = api.tenant(&common.target.operator_token).await?;
    let agents = api
        .agents(&tenant, "agent", cfg.connections / 2000 + 1, 1000)
        .await?;
    let tokens = api
        .connect_tokens(&tenant, &agents, cfg.connections.min(500))
        .await?;
    let before = setup::sample_edges(&api, &common.target).await;

    let rec = Rec::new();
    let cpu = CpuClock::start();
    let live = Live::start("connect", stats::CONNECT, &rec, common.progress);
    let task = PoolTask {
        edges: common.target.edges.clone(),
        tokens,
        connections: cfg.connections,
        offset: 0,
        rate: cfg.rate,
        source: None,
        convs: Vec::new(),
        connect_timeout_ms: common.connect_timeout.as_millis() as u64,
        resume_timeout_ms: 0,
    };
    let ramp_start = std::time::Instant::now();
    let mut fleet = Fleet::start(task, &common.scale, &rec)?;
    let ramp_limit = Duration::from_secs_f64(cfg.connections as f64 / cfg.rate.max(0.001))
        + common.connect_timeout
        + Duration::from_secs(10);
    let ready = fleet
        .wait(|e| matches!(e, Event::Ready { .. }), ramp_limit)
        .await;
    let ramp_secs = ramp_start.elapsed().as_secs_f64();
    let (ok, failed) = tally(&ready);
    tokio::time::sleep(cfg.hold).await;
    let mem = memory(&api, &common.target, before, ok as u64).await;
    let workers = fleet.workers;
    let mut cpus = fleet
        .stop(Default::default(), Duration::from_secs(60))
        .await;

    let (timeline, secs) = live.finish().await;
    let mut report = Report::new("connect", stats::CONNECT, &rec.total());
    report.config = serde_json::to_value(cfg)?;
    report.rate_target = Some(cfg.rate);
    report.rate_achieved = ok as f64 / ramp_secs.max(1e-3);
    report.memory = Some(mem);
    report.workers = workers;
    report.extra.insert("ramp_s".into(), ramp_secs);
    if ready.len() < fleet_pools(workers) || ok + failed < cfg.connections {
        report.warnings.push(format!(
            "only {} of {} connections were attempted before the ramp deadline",
            ok + failed,
            cfg.connections
        ));
    }
    if failed > 0 {
        report.failures.push(format!(
            "{failed} of {} connections failed",
            cfg.connections
        ));
    }
    if workers == 0 {
        cpus = vec![cpu.fraction()];
    } else {
        cpus.insert(0, cpu.fraction());
    }
    finish_report(&mut report, common, timeline, secs, cpus);
    Ok(report)
}

fn fleet_pools(workers: usize) -> usize {
    workers.max(1)
}
