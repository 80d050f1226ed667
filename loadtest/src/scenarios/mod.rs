//! The scenarios, each a library function taking its config and returning a
//! [`Report`](crate::report::Report): [`connect`], [`chat`], [`fanout`], [`storm`],
//! [`soak`], [`route`].
//! Shared here: the settings every scenario takes ([`Common`]), the open-loop send
//! schedule (which measures its own lag), and the live sampler (timeline + progress line).

pub mod chat;
pub mod connect;
pub mod disturb;
pub mod fanout;
pub mod route;
pub mod soak;
pub mod storm;

use std::time::Duration;

use anyhow::Result;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use tokio::sync::watch;
use tokio::time::Instant;

use crate::report::Report;
use crate::setup::{self, Api, Target};
use crate::slo::Gate;
use crate::stats::{self, Point, Rec, Timeline};
use crate::worker::Scale;

/// What every scenario takes besides its own knobs.
#[derive(Debug, Clone)]
pub struct Common {
    pub target: Target,
    pub scale: Scale,
    pub slo: Vec<Gate>,
    /// Show the live progress line (stderr).
    pub progress: bool,
    pub connect_timeout: Duration,
}

impl Common {
    pub fn new(target: Target) -> Common {
        Common {
            target,
            scale: Scale::default(),
            slo: Vec::new(),
            progress: false,
            connect_timeout: Duration::from_secs(30),
        }
    }

    /// Checks the target and that core-api is ready.
    pub async fn api(&self) -> Result<Api> {
        self.target.validate()?;
        crate::machine::raise_nofile();
        let api = Api::new(&self.target)?;
        api.ready().await?;
        Ok(api)
    }

    /// Edge `i` (round robin).
    pub fn edge(&self, i: usize) -> &str {
        &self.target.edges[i % self.target.edges.len()]
    }
}

/// Sends on an open-loop schedule: call `f(i)` for send `i` at `start + i / rate`, until
/// `duration` has passed or `stop` turns true. Records how late each call was (`lag`).
/// Returns how many sends were scheduled.
pub async fn schedule(
    rate: f64,
    duration: Duration,
    mut stop: Option<watch::Receiver<bool>>,
    rec: &Rec,
    mut f: impl FnMut(u64),
) -> u64 {
    let start = Instant::now();
    let end = start + duration;
    let gap = 1.0 / rate.max(0.001);
    let mut i: u64 = 0;
    loop {
        let due = start + Duration::from_secs_f64(i as f64 * gap);
        if due >= end {
            break;
        }
        if stop.as_mut().is_some_and(|s| *s.borrow()) {
            break;
        }
        let now = Instant::now();
        if due > now {
            tokio::time::sleep_until(due).await;
        }
        rec.record(stats::LAG, Instant::now().saturating_duration_since(due));
        f(i);
        i += 1;
    }
    i
}

/// Polls `done` every 20 ms until it holds or `grace` passes.
pub async fn settle(grace: Duration, mut done: impl FnMut() -> bool) {
    let until = Instant::now() + grace;
    while !done() && Instant::now() < until {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Samples the recorder every second: the timeline and the progress line.
pub struct Live {
    stop: watch::Sender<bool>,
    handle: tokio::task::JoinHandle<Timeline>,
    started: std::time::Instant,
}

impl Live {
    pub fn start(scenario: &'static str, main: &'static str, rec: &Rec, progress: bool) -> Live {
        let (stop, mut stopped) = watch::channel(false);
        let rec = rec.clone();
        let bar = if progress {
            let b = ProgressBar::with_draw_target(None, ProgressDrawTarget::stderr());
            b.set_style(
                ProgressStyle::with_template("{spinner} {msg}")
                    .unwrap_or_else(|_| ProgressStyle::default_spinner()),
            );
            b
        } else {
            ProgressBar::hidden()
        };
        let handle = tokio::spawn(async move {
            let mut tl = Timeline::new(main);
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            tick.tick().await;
            loop {
                tokio::select! {
                    _ = tick.tick() => {}
                    _ = stopped.wait_for(|s| *s) => break,
                }
                let p = tl.sample(&rec);
                bar.set_message(line(scenario, main, &p, &rec));
                bar.tick();
            }
            tl.sample(&rec);
            bar.finish_and_clear();
            tl
        });
        Live {
            stop,
            handle,
            started: std::time::Instant::now(),
        }
    }

    /// Stops sampling; returns the timeline and the seconds since the start.
    pub async fn finish(self) -> (Vec<Point>, f64) {
        self.stop.send_replace(true);
        let secs = self.started.elapsed().as_secs_f64();
        (
            self.handle.await.map(|t| t.points).unwrap_or_default(),
            secs,
        )
    }
}

fn line(scenario: &str, main: &str, p: &Point, rec: &Rec) -> String {
    let lag = rec.lock().total.summary(stats::LAG).map_or(0.0, |s| s.p99);
    format!(
        "[{scenario} {:>4.0}s] conns {} | sent {:.0}/s acc {:.0}/s deliv {:.0}/s | {main} p50 {:.2} p99 {:.2} max {:.2} ms | lag p99 {:.2} ms",
        p.t, p.connections, p.sent, p.accepted, p.delivered, p.p50, p.p99, p.max, lag
    )
}

/// Fills in what every scenario reports the same way.
pub fn finish_report(
    report: &mut Report,
    common: &Common,
    timeline: Vec<Point>,
    duration_s: f64,
    own_cpu: Vec<f64>,
) {
    report.timeline = timeline;
    report.duration_s = duration_s;
    report.own_cpu = own_cpu;
    report.conclude(&common.slo);
}

/// Edge samples before/after and bytes per connection.
pub async fn memory(
    api: &Api,
    target: &Target,
    before: Vec<setup::EdgeSample>,
    connections: u64,
) -> crate::report::Memory {
    let after = setup::sample_edges(api, target).await;
    let sum = |v: &[setup::EdgeSample]| -> Option<u64> { v.iter().map(|s| s.rss_bytes).sum() };
    let bytes_per_connection = match (sum(&before), sum(&after)) {
        (Some(b), Some(a)) if connections > 0 => Some((a as f64 - b as f64) / connections as f64),
        _ => None,
    };
    crate::report::Memory {
        before,
        after,
        bytes_per_connection,
    }
}
