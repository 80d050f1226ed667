//! The result of a run: [`Report`] (what the JSON holds), its verdict (correctness, SLO
//! gates, trustworthiness), the end-of-run table, and the self-contained HTML page with
//! SVG plots (plotters) of latency, throughput and connections over time, and, for
//! `soak`, of each process's resident memory over time ([`MemorySeries`], [`Drift`]).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;

use anyhow::{Context, Result};
use plotters::prelude::*;
use serde::{Deserialize, Serialize};

use crate::machine::Machine;
use crate::setup::EdgeSample;
use crate::slo::{self, Gate, Verdict};
use crate::stats::{self, Point, Summary, Window};

/// Schedule lag p99 above this makes a run untrustworthy (the harness was late).
pub const MAX_LAG_P99_MS: f64 = 5.0;
/// Own CPU above this fraction of one core (per process) makes a run untrustworthy.
pub const MAX_CPU: f64 = 0.9;

/// Edge memory around a run.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Memory {
    pub before: Vec<EdgeSample>,
    pub after: Vec<EdgeSample>,
    /// (Σ rss_after − Σ rss_before) / connections, when every edge's RSS was readable.
    pub bytes_per_connection: Option<f64>,
}

/// One process's `/metrics` read at one moment of a `soak`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct MemorySample {
    /// Seconds since the start of the run.
    pub t: f64,
    pub rss_bytes: Option<u64>,
    /// `relaydesk_edge_connections` (edges only).
    pub connections: Option<f64>,
}

/// Resident memory growth of one process over the steady part of a run.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Drift {
    /// The first sample at or after the end of the warm-up, and the last one.
    pub from_t: f64,
    pub to_t: f64,
    pub from_bytes: u64,
    pub to_bytes: u64,
    /// `to_bytes - from_bytes` (negative when memory shrank).
    pub bytes: i64,
    pub bytes_per_min: f64,
}

impl Drift {
    /// From the first sample with a known RSS at `t >= from_t` to the last sample with a
    /// known RSS; `None` unless those are two different samples.
    pub fn of(samples: &[MemorySample], from_t: f64) -> Option<Drift> {
        let known = || samples.iter().filter_map(|s| s.rss_bytes.map(|b| (s.t, b)));
        let (t0, b0) = known().find(|(t, _)| *t >= from_t)?;
        let (t1, b1) = known().next_back()?;
        if t1 <= t0 {
            return None;
        }
        let bytes = b1 as i64 - b0 as i64;
        Some(Drift {
            from_t: t0,
            to_t: t1,
            from_bytes: b0,
            to_bytes: b1,
            bytes,
            bytes_per_min: bytes as f64 * 60.0 / (t1 - t0),
        })
    }
}

/// One process's memory over a `soak`: every sample and the drift.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct MemorySeries {
    /// `edge` or `core`.
    pub process: String,
    /// The edge's WebSocket URL or core-api's base URL.
    pub url: String,
    pub samples: Vec<MemorySample>,
    pub drift: Option<Drift>,
}

impl MemorySeries {
    /// `edge ws://…` or `core http://…`.
    pub fn label(&self) -> String {
        format!("{} {}", self.process, self.url)
    }
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Report {
    pub scenario: String,
    /// The interval the latency gates and the headline use.
    pub main_interval: String,
    pub version: String,
    pub command: String,
    pub machine: Machine,
    pub started_at: String,
    pub duration_s: f64,
    pub config: serde_json::Value,

    #[serde(skip_serializing_if = "Option::is_none")]
    pub connect: Option<Summary>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub accept: Option<Summary>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub deliver: Option<Summary>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub resume: Option<Summary>,
    /// How late scheduled sends left (the harness's health).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub lag: Option<Summary>,

    pub sent: u64,
    pub accepted: u64,
    pub delivered: u64,
    pub lost: u64,
    pub duplicated: u64,
    pub reordered: u64,
    /// `error` frames answering sends.
    pub errors: u64,
    /// Sends with neither `accepted` nor `error` by the end.
    pub unanswered: u64,
    pub connected: u64,
    pub connect_failed: u64,
    pub disconnected: u64,
    /// Chat parties that reconnected and resumed after their connection was closed with
    /// a reconnect code (e.g. 1012 from a draining edge) or lost.
    #[serde(default)]
    pub reconnects: u64,
    pub resumed: u64,
    pub resume_failed: u64,
    /// Accepted messages per second (connect: connections per second of the ramp;
    /// storm: resumed clients per second).
    pub rate_achieved: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rate_target: Option<f64>,
    pub deliveries_per_s: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub memory: Option<Memory>,
    /// Each process's memory over time (`soak`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub memory_over_time: Vec<MemorySeries>,
    /// Scenario-specific figures.
    pub extra: BTreeMap<String, f64>,
    /// The server's own stage latencies over the run (`chat`), from its `/metrics`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub stages: Vec<crate::stages::Stage>,
    /// Each edge's and core-api's CPU per persisted message over the same window
    /// (`chat`), from their `process_cpu_seconds_total`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub cpu: Vec<crate::stages::ProcessCpu>,
    /// When the stage and CPU figures' window began and ended (`chat`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stage_span: Option<crate::stages::Span>,

    /// Own CPU (fraction of a core) of each harness process.
    pub own_cpu: Vec<f64>,
    pub workers: usize,
    pub trustworthy: bool,
    pub warnings: Vec<String>,
    pub slo: Vec<Verdict>,
    /// Why the run failed, if it did.
    pub failures: Vec<String>,
    pub passed: bool,
    pub timeline: Vec<Point>,
}

impl Report {
    /// A report with every figure of `total` filled in.
    pub fn new(scenario: &str, main: &str, total: &Window) -> Report {
        Report {
            scenario: scenario.to_owned(),
            main_interval: main.to_owned(),
            version: env!("CARGO_PKG_VERSION").to_owned(),
            command: command_line(),
            machine: Machine::detect(),
            started_at: humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string(),
            connect: total.summary(stats::CONNECT),
            accept: total.summary(stats::ACCEPT),
            deliver: total.summary(stats::DELIVER),
            resume: total.summary(stats::RESUME),
            lag: total.summary(stats::LAG),
            sent: total.count(stats::SENT),
            accepted: total.count(stats::ACCEPTED),
            delivered: total.count(stats::DELIVERED),
            lost: total.count(stats::LOST),
            duplicated: total.count(stats::DUPLICATED),
            reordered: total.count(stats::REORDERED),
            errors: total.count(stats::ERRORS),
            connected: total.count(stats::CONNECTED),
            connect_failed: total.count(stats::CONNECT_FAILED),
            disconnected: total.count(stats::DISCONNECTED),
            reconnects: total.count(stats::RECONNECTS),
            resumed: total.count(stats::RESUMED),
            resume_failed: total.count(stats::RESUME_FAILED),
            trustworthy: true,
            ..Report::default()
        }
    }

    pub fn main_summary(&self) -> Option<&Summary> {
        match self.main_interval.as_str() {
            stats::CONNECT => self.connect.as_ref(),
            stats::ACCEPT => self.accept.as_ref(),
            stats::RESUME => self.resume.as_ref(),
            _ => self.deliver.as_ref(),
        }
    }

    /// Decides: correctness (nothing lost, duplicated or reordered), the SLO gates, and
    /// whether the harness itself kept up.
    pub fn conclude(&mut self, gates: &[Gate]) {
        if let Some(lag) = &self.lag {
            if lag.p99 > MAX_LAG_P99_MS {
                self.trustworthy = false;
                self.warnings.push(format!(
                    "schedule lag p99 {:.2} ms > {MAX_LAG_P99_MS} ms: the harness could not keep its send schedule",
                    lag.p99
                ));
            }
        }
        for (i, cpu) in self.own_cpu.iter().enumerate() {
            if *cpu > MAX_CPU {
                self.trustworthy = false;
                self.warnings.push(format!(
                    "harness process {i} used {:.0}% of a core (> {:.0}%): figures may measure the harness, not the server",
                    cpu * 100.0,
                    MAX_CPU * 100.0
                ));
            }
        }
        if !self.trustworthy {
            self.warnings
                .push("result not trustworthy as a server figure".to_owned());
        }
        for (what, n) in [
            ("lost", self.lost),
            ("duplicated", self.duplicated),
            ("reordered", self.reordered),
        ] {
            if n > 0 {
                self.failures.push(format!("{n} messages {what}"));
            }
        }
        self.slo = slo::evaluate(self, gates);
        for v in &self.slo {
            if !v.passed {
                let actual = v
                    .actual
                    .map_or_else(|| "no value".to_owned(), |a| format!("{a:.3}"));
                self.failures
                    .push(format!("SLO gate failed: {} (actual {actual})", v.gate));
            }
        }
        self.passed = self.failures.is_empty();
    }

    pub fn write_json(&self, path: &Path) -> Result<()> {
        let text = serde_json::to_string_pretty(self)?;
        std::fs::write(path, text).with_context(|| format!("writing {}", path.display()))
    }

    pub fn write_html(&self, path: &Path) -> Result<()> {
        std::fs::write(path, self.html()?).with_context(|| format!("writing {}", path.display()))
    }

    /// The end-of-run table.
    pub fn table(&self) -> String {
        let mut s = String::new();
        let _ = writeln!(
            s,
            "\n{} — {} (loadtest {})",
            self.scenario,
            if self.passed { "PASS" } else { "FAIL" },
            self.version
        );
        let _ = writeln!(
            s,
            "{:<10} {:>10} {:>10} {:>10} {:>10} {:>10} {:>10}",
            "interval", "count", "p50 ms", "p90 ms", "p99 ms", "p99.9 ms", "max ms"
        );
        for (name, sum) in self.intervals() {
            let _ = writeln!(
                s,
                "{:<10} {:>10} {:>10.3} {:>10.3} {:>10.3} {:>10.3} {:>10.3}",
                name, sum.count, sum.p50, sum.p90, sum.p99, sum.p999, sum.max
            );
        }
        if !self.stages.is_empty() {
            let _ = writeln!(
                s,
                "\n{:<64} {:>10} {:>10} {:>10}",
                "server stage (its own /metrics, bucket-interpolated)", "count", "p50 ms", "p99 ms"
            );
            for st in &self.stages {
                let _ = writeln!(
                    s,
                    "{:<64} {:>10} {:>10} {:>10}",
                    st.what,
                    st.count,
                    ms(st.p50_ms),
                    ms(st.p99_ms)
                );
            }
        }
        if !self.cpu.is_empty() {
            let _ = writeln!(
                s,
                "\n{:<64} {:>10} {:>21}",
                "server CPU (process_cpu_seconds_total)", "CPU s", "µs per message"
            );
            for (label, cpu_s, per) in self.cpu_rows() {
                let _ = writeln!(s, "{label:<64} {cpu_s:>10.2} {per:>21}");
            }
        }
        let _ = writeln!(s);
        for (k, v) in self.figures() {
            let _ = writeln!(s, "  {k:<22} {v}");
        }
        if !self.slo.is_empty() {
            let _ = writeln!(s, "\n  SLO gates:");
            for v in &self.slo {
                let _ = writeln!(
                    s,
                    "    {:<4} {:<20} actual {}",
                    if v.passed { "ok" } else { "FAIL" },
                    v.gate,
                    v.actual
                        .map_or_else(|| "—".to_owned(), |a| format!("{a:.3}"))
                );
            }
        }
        for w in &self.warnings {
            let _ = writeln!(s, "  warning: {w}");
        }
        for f in &self.failures {
            let _ = writeln!(s, "  FAILED: {f}");
        }
        s
    }

    /// The CPU table's rows: each process, then the total (label, CPU s, µs per message
    /// with its ±).
    fn cpu_rows(&self) -> Vec<(String, f64, String)> {
        let per = |us: Option<f64>, res: Option<f64>| match (us, res) {
            (Some(us), Some(res)) => format!("{us:.1} ± {res:.1}"),
            (Some(us), None) => format!("{us:.1}"),
            _ => "—".to_owned(),
        };
        let mut rows: Vec<(String, f64, String)> = self
            .cpu
            .iter()
            .map(|p| (p.label(), p.cpu_s, per(p.us_per_message, p.resolution_us)))
            .collect();
        let sum = |f: fn(&crate::stages::ProcessCpu) -> Option<f64>| {
            self.cpu.iter().map(f).sum::<Option<f64>>()
        };
        rows.push((
            "total".to_owned(),
            self.cpu.iter().map(|p| p.cpu_s).sum(),
            per(sum(|p| p.us_per_message), sum(|p| p.resolution_us)),
        ));
        rows
    }

    fn intervals(&self) -> Vec<(&'static str, &Summary)> {
        [
            ("connect", &self.connect),
            ("accept", &self.accept),
            ("deliver", &self.deliver),
            ("resume", &self.resume),
            ("lag", &self.lag),
        ]
        .into_iter()
        .filter_map(|(n, s)| s.as_ref().map(|s| (n, s)))
        .collect()
    }

    /// Plain figures for the table and the HTML page.
    pub fn figures(&self) -> Vec<(String, String)> {
        let mut f: Vec<(String, String)> = vec![
            ("duration".into(), format!("{:.1} s", self.duration_s)),
            ("sent".into(), self.sent.to_string()),
            ("accepted".into(), self.accepted.to_string()),
            ("delivered".into(), self.delivered.to_string()),
            ("lost".into(), self.lost.to_string()),
            ("duplicated".into(), self.duplicated.to_string()),
            ("reordered".into(), self.reordered.to_string()),
            ("errors".into(), self.errors.to_string()),
            ("unanswered".into(), self.unanswered.to_string()),
            ("connected".into(), self.connected.to_string()),
            ("connect_failed".into(), self.connect_failed.to_string()),
            ("disconnected".into(), self.disconnected.to_string()),
            ("reconnects".into(), self.reconnects.to_string()),
            (
                "rate_achieved".into(),
                format!("{:.1}/s", self.rate_achieved),
            ),
            (
                "deliveries_per_s".into(),
                format!("{:.1}/s", self.deliveries_per_s),
            ),
        ];
        if let Some(t) = self.rate_target {
            f.push(("rate_target".into(), format!("{t:.1}/s")));
        }
        if self.resumed + self.resume_failed > 0 {
            f.push(("resumed".into(), self.resumed.to_string()));
            f.push(("resume_failed".into(), self.resume_failed.to_string()));
        }
        if let Some(m) = &self.memory {
            if let Some(b) = m.bytes_per_connection {
                f.push(("edge_bytes_per_conn".into(), format!("{b:.0}")));
            }
            for (b, a) in m.before.iter().zip(&m.after) {
                f.push((
                    format!("edge {}", b.url),
                    format!(
                        "rss {} → {} MiB, connections gauge {} → {}",
                        mib(b.rss_bytes),
                        mib(a.rss_bytes),
                        opt(b.connections),
                        opt(a.connections)
                    ),
                ));
            }
        }
        for m in &self.memory_over_time {
            let first = m.samples.iter().find_map(|s| s.rss_bytes);
            let last = m.samples.iter().rev().find_map(|s| s.rss_bytes);
            let drift = m.drift.as_ref().map_or_else(
                || "drift ?".to_owned(),
                |d| {
                    format!(
                        "drift {} MiB ({} MiB/min) from {:.0} s",
                        signed_mib(d.bytes as f64),
                        signed_mib(d.bytes_per_min),
                        d.from_t
                    )
                },
            );
            f.push((
                format!("memory {}", m.label()),
                format!(
                    "rss {} → {} MiB over {} samples, {drift}",
                    mib(first),
                    mib(last),
                    m.samples.len()
                ),
            ));
        }
        for (k, v) in &self.extra {
            f.push((k.clone(), format!("{v:.3}")));
        }
        f.push((
            "own_cpu".into(),
            self.own_cpu
                .iter()
                .map(|c| format!("{:.0}%", c * 100.0))
                .collect::<Vec<_>>()
                .join(" "),
        ));
        f.push(("trustworthy".into(), self.trustworthy.to_string()));
        f
    }

    /// A self-contained HTML page: figures, verdict, machine, command, inline SVG plots.
    pub fn html(&self) -> Result<String> {
        let mut h = String::new();
        let title = format!("Relaydesk loadtest — {}", self.scenario);
        let _ = write!(
            h,
            "<!doctype html><html><head><meta charset=\"utf-8\"><title>{}</title><style>\
             body{{font-family:sans-serif;max-width:1000px;margin:2em auto;color:#222}}\
             table{{border-collapse:collapse;margin:1em 0}}td,th{{border:1px solid #ccc;padding:3px 8px;text-align:right}}\
             th{{background:#f4f4f4}}td:first-child{{text-align:left}}.pass{{color:#070}}.fail{{color:#b00}}\
             code{{background:#f4f4f4;padding:2px 4px}}</style></head><body><h1>{}</h1>",
            esc(&title),
            esc(&title)
        );
        let _ = write!(
            h,
            "<p class=\"{}\"><b>{}</b>{}</p><p><code>{}</code></p>",
            if self.passed { "pass" } else { "fail" },
            if self.passed { "PASS" } else { "FAIL" },
            if self.trustworthy {
                ""
            } else {
                " — not trustworthy"
            },
            esc(&self.command)
        );
        for f in &self.failures {
            let _ = write!(h, "<p class=\"fail\">{}</p>", esc(f));
        }
        for w in &self.warnings {
            let _ = write!(h, "<p>warning: {}</p>", esc(w));
        }
        h.push_str("<h2>Latency (ms)</h2><table><tr><th>interval</th><th>count</th><th>p50</th><th>p90</th><th>p99</th><th>p99.9</th><th>max</th></tr>");
        for (n, s) in self.intervals() {
            let _ = write!(
                h,
                "<tr><td>{n}</td><td>{}</td><td>{:.3}</td><td>{:.3}</td><td>{:.3}</td><td>{:.3}</td><td>{:.3}</td></tr>",
                s.count, s.p50, s.p90, s.p99, s.p999, s.max
            );
        }
        h.push_str("</table>");
        if !self.stages.is_empty() {
            h.push_str("<h2>Server stages (ms)</h2><p>From the servers' own histograms over this run (<code>/metrics</code> before and after), interpolated within buckets.</p><table><tr><th>stage</th><th>metric</th><th>count</th><th>mean</th><th>p50</th><th>p99</th></tr>");
            for st in &self.stages {
                let _ = write!(
                    h,
                    "<tr><td>{}</td><td><code>{}</code></td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
                    esc(&st.what),
                    esc(&st.metric),
                    st.count,
                    ms(st.mean_ms),
                    ms(st.p50_ms),
                    ms(st.p99_ms)
                );
            }
            h.push_str("</table>");
        }
        if !self.cpu.is_empty() {
            h.push_str("<h2>Server CPU per persisted message</h2><p>Growth of each process's <code>process_cpu_seconds_total</code> over the same window, divided by the messages accepted; ± the counter's resolution per message.</p><table><tr><th>process</th><th>CPU s</th><th>µs per message</th></tr>");
            for (label, cpu_s, per) in self.cpu_rows() {
                let _ = write!(
                    h,
                    "<tr><td>{}</td><td>{cpu_s:.2}</td><td>{}</td></tr>",
                    esc(&label),
                    esc(&per)
                );
            }
            h.push_str("</table>");
        }
        h.push_str("<h2>Figures</h2><table>");
        for (k, v) in self.figures() {
            let _ = write!(h, "<tr><td>{}</td><td>{}</td></tr>", esc(&k), esc(&v));
        }
        h.push_str("</table>");
        if !self.slo.is_empty() {
            h.push_str(
                "<h2>SLO gates</h2><table><tr><th>gate</th><th>actual</th><th>verdict</th></tr>",
            );
            for v in &self.slo {
                let _ = write!(
                    h,
                    "<tr><td>{}</td><td>{}</td><td class=\"{}\">{}</td></tr>",
                    esc(&v.gate),
                    v.actual
                        .map_or_else(|| "—".to_owned(), |a| format!("{a:.3}")),
                    if v.passed { "pass" } else { "fail" },
                    if v.passed { "ok" } else { "FAIL" }
                );
            }
            h.push_str("</table>");
        }
        h.push_str("<h2>Over time</h2>");
        let t: Vec<f64> = self.timeline.iter().map(|p| p.t).collect();
        let series = |f: fn(&Point) -> f64| -> Vec<(f64, f64)> {
            self.timeline.iter().map(|p| (p.t, f(p))).collect()
        };
        if !t.is_empty() {
            h.push_str(&plot(
                &format!("{} latency per second (ms)", self.main_interval),
                "ms",
                &[
                    ("p50", series(|p| p.p50)),
                    ("p99", series(|p| p.p99)),
                    ("max", series(|p| p.max)),
                ],
            )?);
            h.push_str(&plot(
                "throughput (per second)",
                "/s",
                &[
                    ("sent", series(|p| p.sent)),
                    ("accepted", series(|p| p.accepted)),
                    ("delivered", series(|p| p.delivered)),
                ],
            )?);
            h.push_str(&plot(
                "open connections",
                "connections",
                &[("connections", series(|p| p.connections as f64))],
            )?);
        }
        if !self.memory_over_time.is_empty() {
            h.push_str(&self.memory_html()?);
        }
        let m = &self.machine;
        let _ = write!(
            h,
            "<h2>Machine</h2><table><tr><td>host</td><td>{}</td></tr><tr><td>cores</td><td>{} × {}</td></tr>\
             <tr><td>memory</td><td>{:.1} GiB</td></tr><tr><td>kernel</td><td>{}</td></tr>\
             <tr><td>started</td><td>{}</td></tr><tr><td>workers</td><td>{}</td></tr></table>",
            esc(&m.hostname),
            m.cores,
            esc(&m.cpu_model),
            m.memory_bytes as f64 / (1u64 << 30) as f64,
            esc(&m.kernel),
            esc(&self.started_at),
            self.workers
        );
        let _ = write!(
            h,
            "<h2>Configuration</h2><pre>{}</pre></body></html>",
            esc(&serde_json::to_string_pretty(&self.config)?)
        );
        Ok(h)
    }
}

impl Report {
    /// The memory section of the HTML page: drift per process, RSS and connections plots.
    fn memory_html(&self) -> Result<String> {
        let mut h = String::from(
            "<h2>Memory over time</h2><table><tr><th>process</th><th>samples</th>\
             <th>first MiB</th><th>last MiB</th><th>drift from (s)</th><th>drift MiB</th>\
             <th>drift MiB/min</th></tr>",
        );
        for m in &self.memory_over_time {
            let d = m.drift.as_ref();
            let _ = write!(
                h,
                "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
                esc(&m.label()),
                m.samples.len(),
                mib(m.samples.iter().find_map(|s| s.rss_bytes)),
                mib(m.samples.iter().rev().find_map(|s| s.rss_bytes)),
                d.map_or_else(|| "—".to_owned(), |d| format!("{:.0}", d.from_t)),
                d.map_or_else(|| "—".to_owned(), |d| signed_mib(d.bytes as f64)),
                d.map_or_else(|| "—".to_owned(), |d| signed_mib(d.bytes_per_min)),
            );
        }
        h.push_str("</table>");
        let labels: Vec<String> = self
            .memory_over_time
            .iter()
            .map(MemorySeries::label)
            .collect();
        let rss: Vec<(&str, Vec<(f64, f64)>)> = self
            .memory_over_time
            .iter()
            .zip(&labels)
            .map(|(m, l)| {
                let pts = m
                    .samples
                    .iter()
                    .filter_map(|s| s.rss_bytes.map(|b| (s.t, b as f64 / 1048576.0)))
                    .collect();
                (l.as_str(), pts)
            })
            .collect();
        h.push_str(&plot_range("resident memory (MiB)", "MiB", &rss, false)?);
        let conns: Vec<(&str, Vec<(f64, f64)>)> = self
            .memory_over_time
            .iter()
            .zip(&labels)
            .filter(|(m, _)| m.samples.iter().any(|s| s.connections.is_some()))
            .map(|(m, l)| {
                let pts = m
                    .samples
                    .iter()
                    .filter_map(|s| s.connections.map(|c| (s.t, c)))
                    .collect();
                (l.as_str(), pts)
            })
            .collect();
        if !conns.is_empty() {
            h.push_str(&plot("connection gauge", "connections", &conns)?);
        }
        Ok(h)
    }
}

/// One line chart as an inline SVG, its y axis from 0.
fn plot(title: &str, unit: &str, lines: &[(&str, Vec<(f64, f64)>)]) -> Result<String> {
    plot_range(title, unit, lines, true)
}

/// One line chart as an inline SVG; without `from_zero` the y axis spans the data (so
/// that a small drift on a large value shows).
fn plot_range(
    title: &str,
    unit: &str,
    lines: &[(&str, Vec<(f64, f64)>)],
    from_zero: bool,
) -> Result<String> {
    let mut svg = String::new();
    let xmax = lines
        .iter()
        .flat_map(|(_, v)| v.iter().map(|p| p.0))
        .fold(1.0f64, f64::max);
    let ys = || lines.iter().flat_map(|(_, v)| v.iter().map(|p| p.1));
    let top = ys().fold(0.0f64, f64::max).max(1e-3);
    let (ymin, ymax) = if from_zero {
        (0.0, top * 1.1)
    } else {
        let bottom = ys().fold(f64::INFINITY, f64::min).min(top);
        let pad = ((top - bottom) * 0.1).max(top * 0.01).max(1e-3);
        ((bottom - pad).max(0.0), top + pad)
    };
    {
        let root = SVGBackend::with_string(&mut svg, (900, 280)).into_drawing_area();
        root.fill(&WHITE).map_err(plot_err)?;
        let mut chart = ChartBuilder::on(&root)
            .caption(title, ("sans-serif", 18))
            .margin(10)
            .x_label_area_size(30)
            .y_label_area_size(60)
            .build_cartesian_2d(0f64..xmax, ymin..ymax)
            .map_err(plot_err)?;
        chart
            .configure_mesh()
            .x_desc("seconds")
            .y_desc(unit)
            .draw()
            .map_err(plot_err)?;
        let colors = [BLUE, RED, GREEN, MAGENTA, BLACK];
        for (i, (name, pts)) in lines.iter().enumerate() {
            let c = colors[i % colors.len()];
            chart
                .draw_series(LineSeries::new(pts.iter().copied(), c.stroke_width(2)))
                .map_err(plot_err)?
                .label(*name)
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], c));
        }
        chart
            .configure_series_labels()
            .background_style(WHITE.mix(0.8))
            .border_style(BLACK)
            .draw()
            .map_err(plot_err)?;
        root.present().map_err(plot_err)?;
    }
    Ok(svg)
}

fn plot_err<E: std::fmt::Debug>(e: E) -> anyhow::Error {
    anyhow::anyhow!("plotting: {e:?}")
}

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

fn mib(b: Option<u64>) -> String {
    b.map_or_else(
        || "?".to_owned(),
        |b| format!("{:.1}", b as f64 / 1048576.0),
    )
}

/// Bytes as signed MiB: `+1.25`, `-0.50`.
fn signed_mib(b: f64) -> String {
    format!("{:+.2}", b / 1048576.0)
}

fn ms(v: Option<f64>) -> String {
    v.map_or_else(|| "—".to_owned(), |v| format!("{v:.3}"))
}

fn opt(v: Option<f64>) -> String {
    v.map_or_else(|| "?".to_owned(), |v| format!("{v}"))
}

/// The exact command line, shell-quoted where needed.
pub fn command_line() -> String {
    std::env::args()
        .map(|a| {
            if !a.is_empty()
                && a.chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-_./=:,@".contains(c))
            {
                a
            } else {
                format!("'{}'", a.replace('\'', r"'\''"))
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// Serializes a duration as humantime text (`10s`, `500ms`) in report configs.
pub fn human<S: serde::Serializer>(d: &std::time::Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&humantime::format_duration(*d).to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(t: f64, mib: Option<u64>) -> MemorySample {
        MemorySample {
            t,
            rss_bytes: mib.map(|m| m << 20),
            connections: None,
        }
    }

    #[test]
    fn drift_from_the_end_of_warmup() {
        let s = [
            sample(0.0, Some(10)),
            sample(5.0, Some(50)),
            sample(10.0, None),
            sample(15.0, Some(52)),
            sample(20.0, None),
        ];
        let d = Drift::of(&s, 4.0).unwrap();
        assert_eq!((d.from_t, d.to_t), (5.0, 15.0));
        assert_eq!(d.bytes, 2 << 20);
        assert!((d.bytes_per_min - f64::from(12 << 20)).abs() < 1e-6);
        // Shrinking is a negative drift.
        let d = Drift::of(&[sample(0.0, Some(9)), sample(30.0, Some(8))], 0.0).unwrap();
        assert_eq!(d.bytes, -(1 << 20));
        // Fewer than two samples after the warm-up: no figure.
        assert_eq!(Drift::of(&s, 12.0), None);
        assert_eq!(Drift::of(&[], 0.0), None);
    }

    #[test]
    fn memory_plot_in_html() {
        let mut r = Report::new("soak", stats::DELIVER, &Window::default());
        r.memory_over_time = vec![MemorySeries {
            process: "core".into(),
            url: "http://127.0.0.1:1".into(),
            samples: vec![sample(0.0, Some(10)), sample(5.0, Some(11))],
            drift: Drift::of(&[sample(0.0, Some(10)), sample(5.0, Some(11))], 0.0),
        }];
        let h = r.html().unwrap();
        assert!(h.contains("Memory over time") && h.contains("resident memory"));
        assert!(r.table().contains("memory core http://127.0.0.1:1"));
    }

    #[test]
    fn cpu_table_with_total() {
        let mut r = Report::new("chat", stats::DELIVER, &Window::default());
        let cpu = |process: &str, url: &str, cpu_s: f64| crate::stages::ProcessCpu {
            process: process.into(),
            url: url.into(),
            cpu_s,
            us_per_message: Some(cpu_s * 100.0),
            resolution_us: Some(100.0),
        };
        r.cpu = vec![cpu("edge", "ws://e1", 1.0), cpu("core", "http://c", 2.0)];
        let t = r.table();
        assert!(t.contains("server CPU (process_cpu_seconds_total)"));
        assert!(t.contains("core http://c") && t.contains("200.0 ± 100.0"));
        let total = t.lines().find(|l| l.starts_with("total")).unwrap();
        assert!(total.contains("3.00") && total.ends_with("300.0 ± 200.0"));
        assert!(r
            .html()
            .unwrap()
            .contains("Server CPU per persisted message"));
    }
}
