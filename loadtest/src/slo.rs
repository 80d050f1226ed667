//! Verdict gates: `--slo 'p99<10ms,loss=0,rate>=1000'`.
//!
//! Metrics: `p50`, `p90`, `p99`, `p999`, `max` (of the scenario's main interval: `deliver`
//! for chat and fanout, `connect` for connect, `resume` for storm; durations take `us`,
//! `ms`, `s`, `m`, plain numbers are ms), `loss`/`lost`, `dup`/`duplicated`,
//! `reorder`/`reordered`, `errors`, `failed` (connections that failed), `rate`
//! (`rate_achieved`), and `drift` (soak: the largest resident memory growth of any
//! process after the warm-up; sizes take `B`, `KB`, `MB`, `GB` (powers of 1000) or
//! `KiB`, `MiB`, `GiB`, plain numbers are bytes). Operators: `<`, `<=`, `>`, `>=`, `=`.

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};

use crate::report::Report;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Op {
    Lt,
    Le,
    Gt,
    Ge,
    Eq,
}

impl Op {
    fn holds(self, a: f64, b: f64) -> bool {
        match self {
            Op::Lt => a < b,
            Op::Le => a <= b,
            Op::Gt => a > b,
            Op::Ge => a >= b,
            Op::Eq => (a - b).abs() < 1e-9,
        }
    }
    fn as_str(self) -> &'static str {
        match self {
            Op::Lt => "<",
            Op::Le => "<=",
            Op::Gt => ">",
            Op::Ge => ">=",
            Op::Eq => "=",
        }
    }
}

/// One gate, as written.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Gate {
    pub metric: String,
    pub op: Op,
    /// In the metric's unit (ms for latencies).
    pub value: f64,
    pub text: String,
}

/// A gate applied to a report.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Verdict {
    pub gate: String,
    pub actual: Option<f64>,
    pub passed: bool,
}

const LATENCY: [&str; 5] = ["p50", "p90", "p99", "p999", "max"];

fn canonical(metric: &str) -> Option<&'static str> {
    Some(match metric {
        "p50" => "p50",
        "p90" => "p90",
        "p99" => "p99",
        "p999" | "p99.9" => "p999",
        "max" => "max",
        "loss" | "lost" => "lost",
        "dup" | "duplicated" => "duplicated",
        "reorder" | "reordered" => "reordered",
        "errors" => "errors",
        "failed" => "failed",
        "rate" | "rate_achieved" => "rate",
        "drift" => "drift",
        _ => return None,
    })
}

/// Parses `p99<10ms,loss=0`.
pub fn parse(spec: &str) -> Result<Vec<Gate>> {
    let mut gates = Vec::new();
    for part in spec.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (pos, op, len) = ["<=", ">=", "<", ">", "="]
            .iter()
            .find_map(|o| part.find(o).map(|p| (p, *o, o.len())))
            .with_context(|| format!("gate {part:?}: expected one of < <= > >= ="))?;
        let op = match op {
            "<=" => Op::Le,
            ">=" => Op::Ge,
            "<" => Op::Lt,
            ">" => Op::Gt,
            _ => Op::Eq,
        };
        let name = part[..pos].trim();
        let metric =
            canonical(name).with_context(|| format!("gate {part:?}: unknown metric {name:?}"))?;
        let raw = part[pos + len..].trim();
        let value = if LATENCY.contains(&metric) {
            parse_ms(raw).with_context(|| format!("gate {part:?}"))?
        } else if metric == "drift" {
            parse_bytes(raw).with_context(|| format!("gate {part:?}"))?
        } else {
            raw.trim_end_matches("/s")
                .parse()
                .with_context(|| format!("gate {part:?}: {raw:?} is not a number"))?
        };
        gates.push(Gate {
            metric: metric.to_owned(),
            op,
            value,
            text: part.to_owned(),
        });
    }
    Ok(gates)
}

fn parse_ms(s: &str) -> Result<f64> {
    let split = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: f64 = num
        .parse()
        .with_context(|| format!("{s:?} is not a duration"))?;
    Ok(match unit.trim() {
        "" | "ms" => n,
        "us" | "µs" => n / 1000.0,
        "s" => n * 1000.0,
        "m" | "min" => n * 60_000.0,
        u => bail!("unknown unit {u:?} in {s:?}"),
    })
}

fn parse_bytes(s: &str) -> Result<f64> {
    let split = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.' || c == '-'))
        .unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: f64 = num
        .parse()
        .with_context(|| format!("{s:?} is not a size"))?;
    Ok(n * match unit.trim() {
        "" | "B" => 1.0,
        "KB" | "kB" => 1e3,
        "MB" => 1e6,
        "GB" => 1e9,
        "KiB" => 1024.0,
        "MiB" => 1048576.0,
        "GiB" => 1073741824.0,
        u => bail!("unknown unit {u:?} in {s:?}"),
    })
}

/// The value of `metric` in `report`, if it has one.
pub fn actual(report: &Report, metric: &str) -> Option<f64> {
    let main = report.main_summary();
    Some(match metric {
        "p50" => main?.p50,
        "p90" => main?.p90,
        "p99" => main?.p99,
        "p999" => main?.p999,
        "max" => main?.max,
        "lost" => report.lost as f64,
        "duplicated" => report.duplicated as f64,
        "reordered" => report.reordered as f64,
        "errors" => report.errors as f64,
        "failed" => report.connect_failed as f64,
        "rate" => report.rate_achieved,
        "drift" => report
            .memory_over_time
            .iter()
            .filter_map(|m| m.drift.as_ref())
            .map(|d| d.bytes as f64)
            .reduce(f64::max)?,
        _ => return None,
    })
}

/// Applies every gate; a gate whose metric the report lacks fails.
pub fn evaluate(report: &Report, gates: &[Gate]) -> Vec<Verdict> {
    gates
        .iter()
        .map(|g| {
            let a = actual(report, &g.metric);
            Verdict {
                gate: format!("{} {} {}", g.metric, g.op.as_str(), g.value),
                actual: a,
                passed: a.is_some_and(|a| g.op.holds(a, g.value)),
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses() {
        let g = parse("p99<10ms, loss=0,rate>=1000,p999<=1s,max<500us").unwrap();
        assert_eq!(g.len(), 5);
        assert_eq!(
            (g[0].metric.as_str(), g[0].op, g[0].value),
            ("p99", Op::Lt, 10.0)
        );
        assert_eq!((g[1].metric.as_str(), g[1].op), ("lost", Op::Eq));
        assert_eq!(
            (g[2].metric.as_str(), g[2].op, g[2].value),
            ("rate", Op::Ge, 1000.0)
        );
        assert_eq!(g[3].value, 1000.0);
        assert_eq!(g[4].value, 0.5);
        let d = parse("drift<10MB,drift<=2MiB,drift<512").unwrap();
        assert_eq!(d[0].metric, "drift");
        assert_eq!(
            (d[0].value, d[1].value, d[2].value),
            (1e7, 2097152.0, 512.0)
        );
        assert!(parse("drift<10ms").is_err());
        let mut r = Report::default();
        assert_eq!(actual(&r, "drift"), None);
        for bytes in [-5, 3_000_000] {
            r.memory_over_time.push(crate::report::MemorySeries {
                drift: Some(crate::report::Drift {
                    bytes,
                    ..Default::default()
                }),
                ..Default::default()
            });
        }
        let v = evaluate(&r, &d);
        assert_eq!(v[0].actual, Some(3e6));
        assert_eq!(
            v.iter().map(|v| v.passed).collect::<Vec<_>>(),
            [true, false, false]
        );
        assert!(parse("p98<1ms").is_err());
        assert!(parse("p99~1").is_err());
    }
}
