//! `soak`: a mixed load held for a long time, sampling every edge's and core-api's memory
//! over time to show drift.
//!
//! The load is made of the other scenarios' parts: idle authenticated connections (the
//! `connect` pool; they answer the edges' heartbeat pings), the two-party conversations
//! of `chat` exchanging messages at a total rate, and a small fraction of the connections
//! subscribed to those conversations that drop and reconnect with resume (the `storm`
//! pool) every `reconnect_every`. Every `sample_every` the [`Sampler`] reads each
//! process's `/metrics` (resident memory, edge connection gauge).
//!
//! Reports the chat figures (lost, duplicated, reordered must be 0, counted for the chat
//! parties and the resuming subscribers alike), the memory samples of each process and
//! its drift: the growth from the first sample after the warm-up to the last one.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use serde::Serialize;
use tokio::sync::watch;

use super::{chat, finish_report, schedule, settle, Common, Live};
use crate::machine::CpuClock;
use crate::pool::{Command, Event, PoolTask};
use crate::report::{Drift, MemorySample, MemorySeries, Report};
use crate::setup::{self, Api, Target};
use crate::stats::{self, Rec};
use crate::worker::{tally, Fleet};

#[derive(Debug, Clone, Serialize)]
pub struct SoakConfig {
    /// Authenticated connections held idle, the resuming subscribers included.
    pub connections: usize,
    /// Two-party conversations carrying the chat traffic.
    pub conversations: usize,
    /// Messages per second, all conversations together.
    pub rate: f64,
    /// How long the chat traffic flows.
    #[serde(serialize_with = "crate::report::human")]
    pub duration: Duration,
    /// How often each process's `/metrics` is read.
    #[serde(serialize_with = "crate::report::human")]
    pub sample_every: Duration,
    /// Drift is measured from the first sample this long after the load is up.
    #[serde(serialize_with = "crate::report::human")]
    pub warmup: Duration,
    /// How often the resuming subscribers drop and resume.
    #[serde(serialize_with = "crate::report::human")]
    pub reconnect_every: Duration,
    /// Fraction of `connections` that are resuming subscribers (0: none).
    pub reconnect_fraction: f64,
    /// New connections per second while ramping up.
    pub connect_rate: f64,
    /// How long a client keeps trying to reconnect.
    #[serde(serialize_with = "crate::report::human")]
    pub resume_timeout: Duration,
    /// How long to wait for the last deliveries after sending stops.
    #[serde(serialize_with = "crate::report::human")]
    pub grace: Duration,
    /// Conversations per agent.
    pub per_agent: usize,
}

impl Default for SoakConfig {
    fn default() -> Self {
        SoakConfig {
            connections: 1000,
            conversations: 100,
            rate: 200.0,
            duration: Duration::from_secs(600),
            sample_every: Duration::from_secs(5),
            warmup: Duration::from_secs(30),
            reconnect_every: Duration::from_secs(30),
            reconnect_fraction: 0.02,
            connect_rate: 500.0,
            resume_timeout: Duration::from_secs(30),
            grace: Duration::from_secs(5),
            per_agent: 50,
        }
    }
}

impl SoakConfig {
    /// How many of the connections are resuming subscribers: at least one when the
    /// fraction is above 0.
    pub fn resumers(&self) -> usize {
        if self.reconnect_fraction <= 0.0 || self.connections == 0 {
            return 0;
        }
        ((self.connections as f64 * self.reconnect_fraction).round() as usize)
            .clamp(1, self.connections)
    }

    fn validate(&self) -> Result<()> {
        if self.conversations == 0 {
            bail!("--conversations must be at least 1");
        }
        if self.sample_every.is_zero() {
            bail!("--sample-every must be above 0");
        }
        if !(0.0..=1.0).contains(&self.reconnect_fraction) {
            bail!("--reconnect-fraction must be between 0 and 1");
        }
        if self.reconnect_fraction > 0.0 && self.reconnect_every.is_zero() {
            bail!("--reconnect-every must be above 0");
        }
        Ok(())
    }
}

/// Resume rounds of the subscribers: how many, and how many resumes passed or failed.
#[derive(Debug, Default)]
struct Rounds {
    rounds: usize,
    ok: usize,
    failed: usize,
    /// Rounds in which not every subscriber resumed.
    short: usize,
}

pub async fn run(common: &Common, cfg: &SoakConfig) -> Result<Report> {
    cfg.validate()?;
    let api = common.api().await?;
    let tenant = api.tenant(&common.target.operator_token).await?;
    // The conversations first, so that none is assigned to the agents created below.
    let world = chat::World::create(&api, &tenant, cfg.conversations, cfg.per_agent).await?;
    let convs = world.conversations();
    let n_resumers = cfg.resumers();
    let n_idle = cfg.connections - n_resumers;
    let idle_tokens = if n_idle > 0 {
        let agents = api
            .agents(&tenant, "agent", n_idle / 2000 + 1, 1000)
            .await?;
        api.connect_tokens(&tenant, &agents, n_idle.min(500))
            .await?
    } else {
        Vec::new()
    };
    let resumer_tokens = if n_resumers > 0 {
        let admins = api.agents(&tenant, "admin", 1, 1000).await?;
        api.connect_tokens(&tenant, &admins, n_resumers.min(100))
            .await?
    } else {
        Vec::new()
    };

    let rec = Rec::new();
    // The resuming subscribers measure into their own recorder, so that their deliveries
    // stay out of the chat figures; the rest of what they measured is added at the end.
    let resumer_rec = Rec::new();
    let cpu = CpuClock::start();
    let live = Live::start("soak", stats::DELIVER, &rec, common.progress);
    let started = Instant::now();
    let sampler = Sampler::start(
        api.clone(),
        common.target.clone(),
        cfg.sample_every,
        started,
    );
    let pool = |tokens: Vec<String>, connections: usize, convs: Vec<uuid::Uuid>| PoolTask {
        edges: common.target.edges.clone(),
        tokens,
        connections,
        offset: 0,
        rate: cfg.connect_rate,
        source: None,
        convs,
        connect_timeout_ms: common.connect_timeout.as_millis() as u64,
        resume_timeout_ms: cfg.resume_timeout.as_millis() as u64,
    };
    let ramp_limit = |n: usize| {
        Duration::from_secs_f64(n as f64 / cfg.connect_rate.max(0.001))
            + common.connect_timeout
            + Duration::from_secs(10)
    };
    let mut failures = Vec::new();

    let mut idle = match n_idle {
        0 => None,
        n => Some(Fleet::start(
            pool(idle_tokens, n, Vec::new()),
            &common.scale,
            &rec,
        )?),
    };
    let mut idle_ready = 0;
    if let Some(fleet) = idle.as_mut() {
        let (ok, failed) = tally(
            &fleet
                .wait(|e| matches!(e, Event::Ready { .. }), ramp_limit(n_idle))
                .await,
        );
        idle_ready = ok;
        if failed > 0 || ok < n_idle {
            failures.push(format!(
                "{} of {n_idle} idle connections failed to connect",
                n_idle - ok
            ));
        }
    }

    let (stop_tx, stop) = watch::channel(false);
    let pairs = world.connect(common, &api, &tenant, &rec, &stop).await?;

    let mut resumers = match n_resumers {
        0 => None,
        n => Some(Fleet::start(
            pool(resumer_tokens, n, convs.clone()),
            &common.scale,
            &resumer_rec,
        )?),
    };
    if let Some(fleet) = resumers.as_mut() {
        let (ok, _) = tally(
            &fleet
                .wait(|e| matches!(e, Event::Ready { .. }), ramp_limit(n_resumers))
                .await,
        );
        if ok < n_resumers {
            failures.push(format!(
                "{} of {n_resumers} resuming subscribers failed to connect",
                n_resumers - ok
            ));
        }
    }

    let load_start = started.elapsed().as_secs_f64();
    let (sending_tx, sending) = watch::channel(false);
    let send_start = Instant::now();
    let send = async {
        schedule(cfg.rate, cfg.duration, None, &rec, |i| pairs.send(i)).await;
        sending_tx.send_replace(true);
        send_start.elapsed().as_secs_f64()
    };
    let reconnect = reconnect_rounds(resumers.as_mut(), cfg, sending);
    let (send_secs, rounds) = tokio::join!(send, reconnect);
    settle(cfg.grace, || chat::settled(&rec)).await;
    // Let the subscribers receive the last messages before counting what they missed.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let memory = sampler.finish().await;

    stop_tx.send_replace(true);
    let outcome = pairs.finish(&rec).await;
    let mut workers = 0;
    let mut cpus = Vec::new();
    for (fleet, heads) in [(resumers, outcome.heads.clone()), (idle, HashMap::new())] {
        let Some(fleet) = fleet else { continue };
        let w = fleet.workers;
        let c = fleet.stop(heads, Duration::from_secs(60)).await;
        if w > 0 {
            // Pools in this process are covered by its own figure.
            workers += w;
            cpus.extend(c);
        }
    }
    cpus.insert(0, cpu.fraction());
    let mut theirs = resumer_rec.total();
    theirs.hists.remove(stats::DELIVER);
    let resumer_deliveries = theirs.counts.remove(stats::DELIVERED).unwrap_or(0);
    rec.merge(&theirs);
    let mut memory = memory?;

    let (timeline, secs) = live.finish().await;
    let total = rec.total();
    let mut report = Report::new("soak", stats::DELIVER, &total);
    report.config = serde_json::to_value(cfg)?;
    report.rate_target = Some(cfg.rate);
    report.rate_achieved = report.accepted as f64 / send_secs.max(1e-3);
    report.deliveries_per_s = report.delivered as f64 / send_secs.max(1e-3);
    report.unanswered = report.sent.saturating_sub(report.accepted + report.errors);
    report.workers = workers;
    // Pool clients the server dropped, and chat parties whose connection ended early.
    report.disconnected = total.count(stats::DISCONNECTED) + outcome.closed.len() as u64;
    if report.disconnected > 0 {
        failures.push(format!(
            "{} connections ended early{}",
            report.disconnected,
            outcome
                .closed
                .first()
                .map(|c| format!(" (first chat party: {c})"))
                .unwrap_or_default()
        ));
    }
    if rounds.short > 0 {
        failures.push(format!(
            "in {} of {} reconnect rounds not every subscriber resumed within {:?} ({} resumes failed)",
            rounds.short, rounds.rounds, cfg.resume_timeout, rounds.failed
        ));
    }
    let drift_from = load_start + cfg.warmup.as_secs_f64();
    for m in &mut memory {
        m.drift = Drift::of(&m.samples, drift_from);
        if m.samples.iter().all(|s| s.rss_bytes.is_none()) {
            report.warnings.push(format!(
                "no resident memory readable for {} (its /metrics lacks process_resident_memory_bytes)",
                m.label()
            ));
        } else if m.drift.is_none() {
            report.warnings.push(format!(
                "no drift figure for {}: fewer than two samples after the warm-up (from {drift_from:.0} s)",
                m.label()
            ));
        }
    }
    report.memory_over_time = memory;
    report.failures.extend(failures);
    for (k, v) in [
        ("agents", outcome.agents as f64),
        ("idle_connections", idle_ready as f64),
        ("resumers", n_resumers as f64),
        ("reconnect_rounds", rounds.rounds as f64),
        ("resumes_ok", rounds.ok as f64),
        ("resumer_deliveries", resumer_deliveries as f64),
        ("load_start_s", load_start),
        ("drift_from_s", drift_from),
    ] {
        report.extra.insert(k.into(), v);
    }
    finish_report(&mut report, common, timeline, secs, cpus);
    Ok(report)
}

/// Every `reconnect_every` until `sending` turns true: drops the subscribers' connections
/// and waits until they have all resumed and caught up (or given up).
async fn reconnect_rounds(
    fleet: Option<&mut Fleet>,
    cfg: &SoakConfig,
    mut sending: watch::Receiver<bool>,
) -> Rounds {
    let mut r = Rounds::default();
    let Some(fleet) = fleet else { return r };
    let expected = cfg.resumers();
    loop {
        tokio::select! {
            _ = tokio::time::sleep(cfg.reconnect_every) => {}
            _ = sending.wait_for(|done| *done) => break,
        }
        fleet.send(&Command::Drop);
        let (ok, failed) = tally(
            &fleet
                .wait(
                    |e| matches!(e, Event::Resumed { .. }),
                    cfg.resume_timeout + Duration::from_secs(10),
                )
                .await,
        );
        r.rounds += 1;
        r.ok += ok;
        r.failed += failed;
        if ok < expected {
            r.short += 1;
        }
    }
    r
}

/// Reads every edge's and core-api's `/metrics` every `every`, from now until
/// [`Sampler::finish`] (which takes one last sample).
pub struct Sampler {
    stop: watch::Sender<bool>,
    handle: tokio::task::JoinHandle<Vec<MemorySeries>>,
}

impl Sampler {
    /// Sample times are seconds since `start`.
    pub fn start(api: Api, target: Target, every: Duration, start: Instant) -> Sampler {
        let (stop, mut stopped) = watch::channel(false);
        let handle = tokio::spawn(async move {
            let mut series: Vec<MemorySeries> = target
                .edges
                .iter()
                .map(|u| ("edge", u.clone()))
                .chain([("core", target.core.clone())])
                .map(|(process, url)| MemorySeries {
                    process: process.to_owned(),
                    url,
                    ..MemorySeries::default()
                })
                .collect();
            let mut tick = tokio::time::interval(every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    _ = tick.tick() => {}
                    _ = stopped.wait_for(|s| *s) => break,
                }
                sample(&api, &target, start, &mut series).await;
            }
            sample(&api, &target, start, &mut series).await;
            series
        });
        Sampler { stop, handle }
    }

    /// Takes the last sample and returns every process's series (edges in order, then core).
    pub async fn finish(self) -> Result<Vec<MemorySeries>> {
        self.stop.send_replace(true);
        self.handle.await.context("the memory sampler failed")
    }
}

/// One sample of every process, appended to its series (edges in order, then core).
async fn sample(api: &Api, target: &Target, start: Instant, series: &mut [MemorySeries]) {
    let t = start.elapsed().as_secs_f64();
    let core_metrics = target.core_metrics_url();
    let (edges, core) = tokio::join!(
        setup::sample_edges(api, target),
        setup::scrape(api, &target.core, &core_metrics),
    );
    for (s, m) in edges.into_iter().chain([core]).zip(series.iter_mut()) {
        m.samples.push(MemorySample {
            t,
            rss_bytes: s.rss_bytes,
            connections: s.connections,
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resumers_are_a_fraction() {
        let mut c = SoakConfig::default();
        assert_eq!(c.resumers(), 20);
        c.connections = 10;
        assert_eq!(c.resumers(), 1);
        c.reconnect_fraction = 0.0;
        assert_eq!(c.resumers(), 0);
        c.reconnect_fraction = 1.0;
        assert_eq!(c.resumers(), 10);
        c.reconnect_fraction = 2.0;
        assert!(c.validate().is_err());
    }
}
