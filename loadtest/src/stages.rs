//! Where a message's time goes on the server side: the stage histograms that the edges and
//! core-api export on `/metrics` (Redis append, PostgreSQL commit, edge receipt → published),
//! read before and after a run; their difference gives each stage's count and quantiles
//! for that run alone, shown next to the harness's own send → accepted and send → delivered.
//!
//! Quantiles are interpolated within Prometheus buckets (as `histogram_quantile` does), so
//! they are as coarse as the buckets (`shared::telemetry`).
//!
//! The same two reads give each process's CPU per persisted message ([`cpu_per_message`]):
//! the growth of its `process_cpu_seconds_total` divided by the messages accepted, ± the
//! counter's resolution (Relaydesk exports fractional seconds, a 10 ms tick; a counter of
//! whole seconds, as metrics-process exports by default, is ± 1 s), given with it.

use serde::{Deserialize, Serialize};

use crate::setup::{metrics_text, prometheus_value, Api, Target};

/// The stages, in message order: (metric, where it is exported, what it measures).
const STAGES: &[(&str, Exporter, &str)] = &[
    (
        "relaydesk_edge_ingress_append_seconds",
        Exporter::Edges,
        "edge → Redis ingress append (XADD), per frame",
    ),
    (
        "relaydesk_core_commit_seconds",
        Exporter::Core,
        "PostgreSQL commit of a batch of sends",
    ),
    (
        "relaydesk_core_accept_latency_seconds",
        Exporter::Core,
        "edge receipt → committed and published, oldest send of a batch",
    ),
];

#[derive(Debug, Clone, Copy)]
enum Exporter {
    Edges,
    Core,
}

/// One stage's figures over the run.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Stage {
    pub metric: String,
    pub what: String,
    pub count: u64,
    pub mean_ms: Option<f64>,
    pub p50_ms: Option<f64>,
    pub p99_ms: Option<f64>,
}

/// Every exporter's `/metrics` text at one moment (empty when unreadable).
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    /// (WebSocket URL, `/metrics` text) of each edge.
    edges: Vec<(String, String)>,
    core_url: String,
    core: String,
    /// When the reads began, in Unix seconds.
    at_unix_s: f64,
}

/// Reads every edge's and core-api's `/metrics`.
pub async fn snapshot(api: &Api, target: &Target) -> Snapshot {
    let at_unix_s = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64());
    let mut edges = Vec::new();
    for (i, ws) in target.edges.iter().enumerate() {
        if let Some(url) = target.edge_metrics_url(i) {
            let text = metrics_text(api, &url).await.unwrap_or_default();
            edges.push((ws.clone(), text));
        }
    }
    Snapshot {
        edges,
        core_url: target.core.clone(),
        core: metrics_text(api, &target.core_metrics_url())
            .await
            .unwrap_or_default(),
        at_unix_s,
    }
}

/// The wall-clock window between two snapshots, in Unix seconds: what the stage and CPU
/// figures cover (so that CPU read elsewhere, e.g. from `/proc`, can cover the same).
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq)]
pub struct Span {
    pub from_unix_s: f64,
    pub to_unix_s: f64,
}

pub fn span(before: &Snapshot, after: &Snapshot) -> Span {
    Span {
        from_unix_s: before.at_unix_s,
        to_unix_s: after.at_unix_s,
    }
}

/// The counter of user + system CPU time every edge and core-api exports.
const CPU_METRIC: &str = "process_cpu_seconds_total";

/// One process's CPU between two snapshots, per persisted message.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ProcessCpu {
    /// `edge` or `core`.
    pub process: String,
    /// The edge's WebSocket URL or core-api's base URL.
    pub url: String,
    /// CPU seconds (user + system) used between the snapshots.
    pub cpu_s: f64,
    /// `cpu_s` in µs per persisted message; `None` without messages.
    pub us_per_message: Option<f64>,
    /// ± on `us_per_message` from the counter's resolution: one step (1 s for a counter
    /// of whole seconds, else a 10 ms clock tick) per persisted message.
    pub resolution_us: Option<f64>,
}

impl ProcessCpu {
    /// `edge ws://…` or `core http://…`.
    pub fn label(&self) -> String {
        format!("{} {}", self.process, self.url)
    }
}

/// Each process's CPU between two snapshots and per persisted message (`messages`:
/// accepted over the same window); a process whose counter is missing from either
/// snapshot is left out.
pub fn cpu_per_message(before: &Snapshot, after: &Snapshot, messages: u64) -> Vec<ProcessCpu> {
    let mut out = Vec::new();
    let mut add = |process: &str, url: &str, before: &str, after: &str| {
        let (Some(b), Some(a)) = (
            prometheus_value(before, CPU_METRIC),
            prometheus_value(after, CPU_METRIC),
        ) else {
            return;
        };
        let step = if b.fract() == 0.0 && a.fract() == 0.0 {
            1.0
        } else {
            0.01
        };
        let per = |s: f64| (messages > 0).then(|| s * 1e6 / messages as f64);
        let cpu_s = (a - b).max(0.0);
        out.push(ProcessCpu {
            process: process.to_owned(),
            url: url.to_owned(),
            cpu_s,
            us_per_message: per(cpu_s),
            resolution_us: per(step),
        });
    };
    for (url, text) in &after.edges {
        let earlier = before
            .edges
            .iter()
            .find(|(u, _)| u == url)
            .map_or("", |(_, t)| t.as_str());
        add("edge", url, earlier, text);
    }
    add("core", &after.core_url, &before.core, &after.core);
    out
}

/// Each stage between two snapshots; stages nobody exported are left out.
pub fn between(before: &Snapshot, after: &Snapshot) -> Vec<Stage> {
    let mut out = Vec::new();
    for (metric, exporter, what) in STAGES {
        let texts = |s: &Snapshot| -> Vec<String> {
            match exporter {
                Exporter::Edges => s.edges.iter().map(|(_, t)| t.clone()).collect(),
                Exporter::Core => vec![s.core.clone()],
            }
        };
        let sum_of = |s: &Snapshot| {
            texts(s)
                .iter()
                .filter_map(|t| Histogram::parse(t, metric))
                .fold(None, |acc: Option<Histogram>, h| {
                    Some(match acc {
                        None => h,
                        Some(a) => a.plus(&h),
                    })
                })
        };
        let Some(after) = sum_of(after) else {
            continue;
        };
        let run = match sum_of(before) {
            Some(b) => after.minus(&b),
            None => after,
        };
        let ms = |v: Option<f64>| v.map(|s| s * 1000.0);
        out.push(Stage {
            metric: (*metric).to_owned(),
            what: (*what).to_owned(),
            count: run.count.max(0.0) as u64,
            mean_ms: ms(run.mean()),
            p50_ms: ms(run.quantile(0.5)),
            p99_ms: ms(run.quantile(0.99)),
        });
    }
    out
}

/// How much the counter `name` (all its label sets) grew over all edges between two
/// snapshots.
pub fn edge_counter(before: &Snapshot, after: &Snapshot, name: &str) -> f64 {
    let sum = |s: &Snapshot| -> f64 {
        s.edges
            .iter()
            .filter_map(|(_, t)| prometheus_value(t, name))
            .sum()
    };
    sum(after) - sum(before)
}

/// A Prometheus histogram: cumulative counts by upper bound, summed over label sets.
#[derive(Debug, Clone, PartialEq)]
struct Histogram {
    /// (`le`, cumulative count), ascending; the last bound is `+Inf`.
    buckets: Vec<(f64, f64)>,
    sum: f64,
    count: f64,
}

impl Histogram {
    /// `name`'s `_bucket`, `_sum` and `_count` lines, all label sets added together.
    fn parse(text: &str, name: &str) -> Option<Histogram> {
        let mut buckets: Vec<(f64, f64)> = Vec::new();
        let (mut sum, mut count, mut seen) = (0.0, 0.0, false);
        for line in text.lines().filter(|l| l.starts_with(name)) {
            let Some((series, value)) = line.rsplit_once(' ') else {
                continue;
            };
            let Ok(value) = value.parse::<f64>() else {
                continue;
            };
            let rest = &series[name.len()..];
            if let Some(labels) = rest.strip_prefix("_bucket{") {
                let Some(le) = labels
                    .split(',')
                    .find_map(|l| l.trim_end_matches('}').strip_prefix("le=\""))
                    .map(|v| v.trim_end_matches('"'))
                else {
                    continue;
                };
                let le = if le == "+Inf" {
                    f64::INFINITY
                } else {
                    match le.parse::<f64>() {
                        Ok(v) => v,
                        Err(_) => continue,
                    }
                };
                match buckets.iter_mut().find(|(b, _)| *b == le) {
                    Some((_, c)) => *c += value,
                    None => buckets.push((le, value)),
                }
                seen = true;
            } else if rest.starts_with("_sum") {
                sum += value;
            } else if rest.starts_with("_count") {
                count += value;
            }
        }
        buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
        seen.then_some(Histogram {
            buckets,
            sum,
            count,
        })
    }

    fn combine(&self, other: &Histogram, sign: f64) -> Histogram {
        let mut buckets = self.buckets.clone();
        for (le, c) in &other.buckets {
            match buckets.iter_mut().find(|(b, _)| b == le) {
                Some((_, mine)) => *mine += sign * c,
                None => buckets.push((*le, sign * c)),
            }
        }
        buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
        Histogram {
            buckets,
            sum: self.sum + sign * other.sum,
            count: self.count + sign * other.count,
        }
    }

    fn plus(&self, other: &Histogram) -> Histogram {
        self.combine(other, 1.0)
    }

    fn minus(&self, other: &Histogram) -> Histogram {
        self.combine(other, -1.0)
    }

    fn mean(&self) -> Option<f64> {
        (self.count > 0.0).then(|| self.sum / self.count)
    }

    /// The `q` quantile, linearly interpolated within its bucket; a quantile in the
    /// `+Inf` bucket is the highest finite bound.
    fn quantile(&self, q: f64) -> Option<f64> {
        let total = self.buckets.last()?.1;
        if total <= 0.0 {
            return None;
        }
        let rank = q * total;
        let (mut lower, mut below) = (0.0, 0.0);
        for (le, cumulative) in &self.buckets {
            if *cumulative >= rank {
                if le.is_infinite() {
                    return Some(lower);
                }
                let inside = cumulative - below;
                let frac = if inside > 0.0 {
                    (rank - below) / inside
                } else {
                    1.0
                };
                return Some(lower + (le - lower) * frac);
            }
            lower = *le;
            below = *cumulative;
        }
        Some(lower)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(counts: [u64; 4], sum: f64) -> String {
        let n = "relaydesk_core_commit_seconds";
        format!(
            "# TYPE {n} histogram\n{n}_bucket{{le=\"0.001\"}} {}\n{n}_bucket{{le=\"0.005\"}} {}\n{n}_bucket{{le=\"0.01\"}} {}\n{n}_bucket{{le=\"+Inf\"}} {}\n{n}_sum {sum}\n{n}_count {}\nrelaydesk_core_commit_seconds_other 5\n",
            counts[0], counts[1], counts[2], counts[3], counts[3]
        )
    }

    #[test]
    fn quantiles_of_the_difference() {
        let before = Snapshot {
            core: text([10, 10, 10, 10], 0.005),
            ..Snapshot::default()
        };
        // The run added 100 observations: 50 under 1 ms, 40 in 1–5 ms, 10 in 5–10 ms.
        let after = Snapshot {
            core: text([60, 100, 110, 110], 0.305),
            ..Snapshot::default()
        };
        let stages = between(&before, &after);
        let commit = stages
            .iter()
            .find(|s| s.metric == "relaydesk_core_commit_seconds")
            .unwrap();
        assert_eq!(commit.count, 100);
        assert!((commit.mean_ms.unwrap() - 3.0).abs() < 1e-9);
        assert!((commit.p50_ms.unwrap() - 1.0).abs() < 1e-9);
        // Rank 99 lies 9/10 into the 5–10 ms bucket.
        assert!((commit.p99_ms.unwrap() - 9.5).abs() < 1e-9);
        // Not exported by anyone: left out.
        assert!(!stages
            .iter()
            .any(|s| s.metric == "relaydesk_edge_ingress_append_seconds"));
    }

    #[test]
    fn label_sets_and_exporters_add_up() {
        let n = "relaydesk_edge_ingress_append_seconds";
        let edge = format!(
            "{n}_bucket{{shard=\"1\",le=\"0.001\"}} 1\n{n}_bucket{{shard=\"1\",le=\"+Inf\"}} 2\n{n}_bucket{{shard=\"2\",le=\"0.001\"}} 3\n{n}_bucket{{shard=\"2\",le=\"+Inf\"}} 3\n{n}_sum 0.01\n{n}_count 5\n"
        );
        let after = Snapshot {
            edges: vec![("ws://a".into(), edge.clone()), ("ws://b".into(), edge)],
            ..Snapshot::default()
        };
        let stages = between(&Snapshot::default(), &after);
        assert_eq!(stages.len(), 1);
        assert_eq!(stages[0].count, 10);
        // 8 of 10 under 1 ms; the p99 is in +Inf: the highest finite bound.
        assert_eq!(stages[0].p99_ms, Some(1.0));
    }

    #[test]
    fn cpu_per_persisted_message() {
        let cpu = |v: &str| format!("# TYPE {CPU_METRIC} counter\n{CPU_METRIC} {v}\n");
        let snap = |t: f64, e1: &str, e2: &str, core: &str| Snapshot {
            edges: vec![
                ("ws://e1/v1/ws".into(), cpu(e1)),
                ("ws://e2/v1/ws".into(), cpu(e2)),
            ],
            core_url: "http://core".into(),
            core: cpu(core),
            at_unix_s: t,
        };
        // Whole seconds (metrics-process's counter): ± 1 s / 20,000 messages = 50 µs.
        let before = snap(100.0, "10", "4", "7");
        let after = snap(130.5, "13", "4", "9");
        let figures = cpu_per_message(&before, &after, 20_000);
        assert_eq!(
            figures
                .iter()
                .map(|p| (p.label(), p.cpu_s, p.us_per_message, p.resolution_us))
                .collect::<Vec<_>>(),
            vec![
                (
                    "edge ws://e1/v1/ws".to_owned(),
                    3.0,
                    Some(150.0),
                    Some(50.0)
                ),
                ("edge ws://e2/v1/ws".to_owned(), 0.0, Some(0.0), Some(50.0)),
                ("core http://core".to_owned(), 2.0, Some(100.0), Some(50.0)),
            ]
        );
        assert_eq!(
            span(&before, &after),
            Span {
                from_unix_s: 100.0,
                to_unix_s: 130.5
            }
        );
        // Fractional seconds: a 10 ms tick of resolution; no messages: no per-message figure.
        let f = cpu_per_message(&snap(0.0, "1.25", "1", "1"), &snap(1.0, "1.5", "1", "1"), 0);
        assert!((f[0].cpu_s - 0.25).abs() < 1e-12);
        assert_eq!((f[0].us_per_message, f[0].resolution_us), (None, None));
        let f = cpu_per_message(
            &snap(0.0, "1.25", "1", "1"),
            &snap(1.0, "1.5", "1", "1"),
            100,
        );
        assert!((f[0].resolution_us.unwrap() - 100.0).abs() < 1e-9);
        // An edge whose counter could not be read before the run is left out.
        let mut unread = snap(0.0, "1", "1", "1");
        unread.edges[1].1.clear();
        let f = cpu_per_message(&unread, &snap(1.0, "2", "2", "2"), 10);
        assert_eq!(
            f.iter().map(ProcessCpu::label).collect::<Vec<_>>(),
            ["edge ws://e1/v1/ws", "core http://core"]
        );
    }
}
