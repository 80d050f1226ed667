//! Where a message's time goes on the server side: the stage histograms that the edges and
//! core-api export on `/metrics` (Redis append, PostgreSQL commit, edge receipt → published),
//! read before and after a run; their difference gives each stage's count and quantiles
//! for that run alone, shown next to the harness's own send → accepted and send → delivered.
//!
//! Quantiles are interpolated within Prometheus buckets (as `histogram_quantile` does), so
//! they are as coarse as the buckets (`shared::telemetry`).

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
    edges: Vec<String>,
    core: String,
}

/// Reads every edge's and core-api's `/metrics`.
pub async fn snapshot(api: &Api, target: &Target) -> Snapshot {
    let mut edges = Vec::new();
    for i in 0..target.edges.len() {
        if let Some(url) = target.edge_metrics_url(i) {
            edges.push(metrics_text(api, &url).await.unwrap_or_default());
        }
    }
    Snapshot {
        edges,
        core: metrics_text(api, &target.core_metrics_url())
            .await
            .unwrap_or_default(),
    }
}

/// Each stage between two snapshots; stages nobody exported are left out.
pub fn between(before: &Snapshot, after: &Snapshot) -> Vec<Stage> {
    let mut out = Vec::new();
    for (metric, exporter, what) in STAGES {
        let texts = |s: &Snapshot| -> Vec<String> {
            match exporter {
                Exporter::Edges => s.edges.clone(),
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
            .filter_map(|t| prometheus_value(t, name))
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
            edges: vec![],
            core: text([10, 10, 10, 10], 0.005),
        };
        // The run added 100 observations: 50 under 1 ms, 40 in 1–5 ms, 10 in 5–10 ms.
        let after = Snapshot {
            edges: vec![],
            core: text([60, 100, 110, 110], 0.305),
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
            edges: vec![edge.clone(), edge],
            core: String::new(),
        };
        let stages = between(&Snapshot::default(), &after);
        assert_eq!(stages.len(), 1);
        assert_eq!(stages[0].count, 10);
        // 8 of 10 under 1 ms; the p99 is in +Inf: the highest finite bound.
        assert_eq!(stages[0].p99_ms, Some(1.0));
    }
}
