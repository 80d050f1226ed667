//! `cargo xtask bench-fanout`: the fan-out of one Relaydesk edge side by side with Bun's
//! built-in WebSocket pub/sub (`bench/bun/server.js`, uWebSockets inside), measured by the
//! same client (`loadtest fanout`) in the same run.
//!
//! Every point is S subscribers to one conversation on one server process, P publishers
//! (1, 4, 8) at 20 msg/s and at a saturating rate, 100-byte bodies. Both servers get their
//! world (tenant, conversation, tokens) from the real core-api of a local stack (the running
//! one, or one started like `cargo xtask up --detach` and stopped at the end); the edge then
//! carries each message through Redis, core-api and PostgreSQL, while Bun verifies no token
//! and persists nothing, so Bun's figures are a lower bound for any real system.
//!
//! The points alternate between the two servers so that both see the same machine, and each
//! starts once the machine is quiet (the previous point's backlog gone, no other load; at
//! most two minutes of waiting, noted on the page when it never got quiet). Writes
//! each report to `docs/bench/fanout-vs-bun/` and the table to `docs/bench/fanout-vs-bun.md`
//! (linked from `docs/benchmarks.md`).

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use loadtest::machine::machine_ticks;
use serde_json::Value;
use tokio::io::{AsyncBufReadExt, BufReader};

use crate::bench::{self, Run};
use crate::services::run_child;
use crate::{check_interrupted, rel, step};

/// The knobs of `cargo xtask bench-fanout`.
#[derive(Debug, Clone)]
pub struct Options {
    /// Subscriber counts; each gets the whole set of points.
    pub subscribers: Vec<usize>,
    /// The saturating rate (msg/s, all publishers together).
    pub saturation_rate: f64,
    pub duration: Duration,
    /// How long the saturating points wait for their backlog (the steady ones: 5 s); what
    /// is still undelivered then counts as lost.
    pub saturation_grace: Duration,
    /// Subscribers per harness process (`loadtest --per-process`); `None`: half of them,
    /// so that two worker processes read and the main one only keeps the send schedule.
    pub per_process: Option<usize>,
    pub body_bytes: usize,
    /// Subscriber connections opened per second (`loadtest --connect-rate`).
    pub connect_rate: f64,
    /// Run nothing: rewrite the page from the reports of the last run.
    pub from_reports: bool,
}

/// Publisher counts of the comparison.
const PUBLISHERS: [usize; 3] = [1, 4, 8];
/// The steady rate of the comparison (msg/s).
const STEADY_RATE: f64 = 20.0;

pub async fn run(root: &Path, opts: &Options) -> Result<u8> {
    if opts.from_reports {
        return rewrite(root, opts).await;
    }
    let stack = bench::Stack::use_or_start(root, 2).await?;
    let result = compare(root, &stack.env_file, opts).await;
    stack.stop_if_started(root);
    result
}

/// One server under test.
struct Server {
    /// `edge` or `bun`.
    name: &'static str,
    url: String,
    pid: Option<String>,
}

async fn compare(root: &Path, env_file: &Path, opts: &Options) -> Result<u8> {
    let bin = bench::build_loadtest(root).await?;
    let out = root.join("docs").join("bench").join("fanout-vs-bun");
    std::fs::create_dir_all(&out).with_context(|| format!("creating {}", out.display()))?;

    let Some(edge_url) = bench::env_value(env_file, "EDGE_URLS")
        .unwrap_or_default()
        .split_whitespace()
        .next()
        .map(str::to_owned)
    else {
        bail!("{} has no EDGE_URLS", env_file.display());
    };
    let bun = BunServer::start(root).await?;
    let servers = [
        Server {
            name: "edge",
            url: edge_url,
            pid: bench::edge_pids(root).into_iter().next(),
        },
        Server {
            name: "bun",
            url: bun.url.clone(),
            pid: Some(bun.pid.to_string()),
        },
    ];
    step(format!(
        "Bun {} at {} (pid {})",
        bun.version, bun.url, bun.pid
    ));

    let env_arg = format!("--env {}", rel(root, env_file));
    let mut done: Vec<(Run, Option<Value>)> = Vec::new();
    let mut busy_before = Vec::new();
    let mut failure = None;
    'points: for (subscribers, publishers, rate, grace) in points(opts) {
        // Alternate servers point by point: both see the same machine state.
        for s in &servers {
            if let Err(e) = check_interrupted() {
                failure = Some(e);
                break 'points;
            }
            let name = point_name(s.name, subscribers, publishers, rate);
            if let Some(busy) = wait_quiet().await {
                step(format!(
                    "the machine is still {:.0}% busy: running {name} anyway",
                    busy * 100.0
                ));
                busy_before.push((name.clone(), busy));
            }
            let mut a = bench::args(&format!(
                "fanout {env_arg} --edge {} --subscribers {subscribers} --publishers {publishers} --rate {rate} --duration {}s --grace {}s --body-bytes {} --per-process {} --connect-rate {}",
                s.url,
                opts.duration.as_secs().max(1),
                grace.as_secs(),
                opts.body_bytes,
                opts.per_process.unwrap_or(subscribers.div_ceil(2)).max(1),
                opts.connect_rate,
            ));
            if let Some(p) = &s.pid {
                a.extend(["--edge-pid".to_owned(), p.clone()]);
            }
            match bench::one(root, &bin, &out, &name, a).await {
                Ok(r) => done.push(r),
                Err(e) => {
                    failure = Some(e);
                    break 'points;
                }
            }
        }
    }
    let bun_version = bun.version.clone();
    bun.stop().await;
    if let Some(e) = failure {
        return Err(e);
    }
    let md = page(root);
    write_markdown(&md, opts, &bun_version, &done, &busy_before)?;
    step(format!("wrote {} and {}", rel(root, &md), rel(root, &out)));
    Ok(0)
}

/// Every point: (subscribers, publishers, rate, grace).
fn points(opts: &Options) -> Vec<(usize, usize, f64, Duration)> {
    let mut v = Vec::new();
    for &n in &opts.subscribers {
        for p in PUBLISHERS {
            v.push((n, p, STEADY_RATE, Duration::from_secs(5)));
            v.push((n, p, opts.saturation_rate, opts.saturation_grace));
        }
    }
    v
}

fn point_name(server: &str, subscribers: usize, publishers: usize, rate: f64) -> String {
    format!("{server}-s{subscribers}-p{publishers}-r{rate:.0}")
}

/// `--from-reports`: the page again from the reports in `docs/bench/fanout-vs-bun/`.
async fn rewrite(root: &Path, opts: &Options) -> Result<u8> {
    let out = root.join("docs").join("bench").join("fanout-vs-bun");
    let mut runs = Vec::new();
    for (subscribers, publishers, rate, _) in points(opts) {
        for server in ["edge", "bun"] {
            let name = point_name(server, subscribers, publishers, rate);
            let json = out.join(format!("{name}.json"));
            let report: Option<Value> = std::fs::read_to_string(&json)
                .ok()
                .and_then(|t| serde_json::from_str(&t).ok());
            // The command line the report recorded, less the binary's path.
            let args = report
                .as_ref()
                .and_then(|r| r["command"].as_str())
                .map(|c| bench::args(c).into_iter().skip(1).collect())
                .unwrap_or_default();
            runs.push((Run { name, args }, report));
        }
    }
    if runs.iter().all(|(_, r)| r.is_none()) {
        bail!("no reports in {} for these options", rel(root, &out));
    }
    let bin = root
        .join("bench")
        .join("bun")
        .join("node_modules")
        .join(".bin")
        .join("bun");
    let version = tokio::process::Command::new(&bin)
        .arg("--version")
        .output()
        .await
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_else(|_| "?".to_owned());
    let md = page(root);
    write_markdown(&md, opts, &version, &runs, &[])?;
    step(format!(
        "rewrote {} from {}",
        rel(root, &md),
        rel(root, &out)
    ));
    Ok(0)
}

/// Before each point, how long to wait for the machine to quiet down.
const QUIET_WAIT: Duration = Duration::from_secs(120);
/// Busy below this share of all cores counts as quiet (the idle stack and Bun included).
const QUIET_BUSY: f64 = 0.25;

/// Waits (up to [`QUIET_WAIT`]) until the machine is quiet over two seconds: the previous
/// point's backlog and connections are gone, and no other load competes for the cores.
/// Returns the last busy share if it never became quiet.
async fn wait_quiet() -> Option<f64> {
    let until = tokio::time::Instant::now() + QUIET_WAIT;
    let mut busy = None;
    while tokio::time::Instant::now() < until && check_interrupted().is_ok() {
        let (b0, t0) = machine_ticks()?;
        tokio::time::sleep(Duration::from_secs(2)).await;
        let (b1, t1) = machine_ticks()?;
        let share = b1.saturating_sub(b0) as f64 / t1.saturating_sub(t0).max(1) as f64;
        if share < QUIET_BUSY {
            return None;
        }
        busy = Some(share);
    }
    busy
}

/// `bench/bun/server.js` running under the `bun` npm package's binary.
struct BunServer {
    child: tokio::process::Child,
    pid: u32,
    url: String,
    version: String,
}

impl BunServer {
    async fn start(root: &Path) -> Result<BunServer> {
        let dir = root.join("bench").join("bun");
        let bin = dir.join("node_modules").join(".bin").join("bun");
        if !bin.exists() {
            step("installing Bun (npm ci in bench/bun)");
            let status = run_child(
                tokio::process::Command::new("npm")
                    .args(["ci", "--no-audit", "--no-fund"])
                    .current_dir(&dir),
                "npm ci",
            )
            .await?;
            if !status.success() || !bin.exists() {
                bail!("`npm ci` in {} failed ({status})", dir.display());
            }
        }
        let version = tokio::process::Command::new(&bin)
            .arg("--version")
            .output()
            .await
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
            .unwrap_or_default();
        let mut child = tokio::process::Command::new(&bin)
            .args(["server.js", "0"])
            .current_dir(&dir)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .process_group(0)
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("starting {}", bin.display()))?;
        let pid = child.id().context("the Bun server exited at once")?;
        let stdout = child.stdout.take().context("the Bun server's stdout")?;
        let mut lines = BufReader::new(stdout).lines();
        let first = tokio::time::timeout(Duration::from_secs(15), lines.next_line())
            .await
            .context("the Bun server did not print its URL within 15 s")?
            .context("reading the Bun server's output")?;
        let Some(url) = first.filter(|l| l.starts_with("ws://")) else {
            bail!("the Bun server did not start (see its output above)");
        };
        // Keep draining its output so that it never blocks on a full pipe.
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        Ok(BunServer {
            child,
            pid,
            url,
            version,
        })
    }

    async fn stop(mut self) {
        if let Ok(pid) = i32::try_from(self.pid) {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGTERM,
            );
        }
        if tokio::time::timeout(Duration::from_secs(5), self.child.wait())
            .await
            .is_err()
        {
            let _ = self.child.kill().await;
        }
    }
}

/// Deliveries per second while the publishers were sending: from the timeline, the
/// seconds with sends less the first (partial) one. The per-second windows of worker
/// processes arrive with jitter, so this averages over the whole stretch.
fn sending_deliveries(r: &Value) -> Option<f64> {
    let points = r["timeline"].as_array()?;
    let (mut delivered, mut secs) = (0.0, 0.0);
    let mut started = false;
    let mut prev_t = 0.0;
    for p in points {
        let t = p["t"].as_f64().unwrap_or(prev_t);
        let sending = p["sent"].as_f64().unwrap_or(0.0) > 0.0;
        if sending && started {
            let dt = t - prev_t;
            delivered += p["delivered"].as_f64().unwrap_or(0.0) * dt;
            secs += dt;
        }
        started |= sending;
        prev_t = t;
    }
    (secs > 0.0).then(|| delivered / secs)
}

fn thousands(x: Option<f64>) -> String {
    let Some(x) = x else {
        return "—".to_owned();
    };
    let n = x.round() as u64;
    let s = n.to_string();
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

fn write_markdown(
    page: &Path,
    opts: &Options,
    bun_version: &str,
    runs: &[(Run, Option<Value>)],
    busy_before: &[(String, f64)],
) -> Result<()> {
    let mut md = String::new();
    md.push_str("# Fan-out: a Relaydesk edge against Bun's built-in pub/sub\n\n");
    md.push_str("Written by `cargo xtask bench-fanout`; rerun it to refresh this page. The same client (`loadtest fanout`) measures both servers in the same run, point by point in turn, each point started on a quiet machine.\n\n");
    let _ = writeln!(
        md,
        "- **Load**: {} subscribers to one conversation on one server process; 1, 4 and 8 publishers together sending {STEADY_RATE:.0} msg/s and {:.0} msg/s (a high rate, meant to saturate) for {} s each, then waiting up to 5 s and {} s for the last deliveries (what is missing then counts as lost); every `body` {} bytes serialized (`--body-bytes`).",
        opts.subscribers
            .iter()
            .map(|&n| thousands(Some(n as f64)))
            .collect::<Vec<_>>()
            .join(" or "),
        opts.saturation_rate,
        opts.duration.as_secs(),
        opts.saturation_grace.as_secs(),
        opts.body_bytes,
    );
    md.push_str("- **edge**: one Relaydesk edge of a local `cargo xtask up` stack (release builds). Each message goes edge → Redis → core-api (PostgreSQL commit, seq) → Redis → edge → every subscriber.\n");
    let _ = writeln!(
        md,
        "- **bun**: `bench/bun/server.js` under Bun {bun_version} (npm package `bun`): `server.publish` of one frame serialized once per message to the conversation's topic. No persistence, no token check, no replay: a lower bound for any real system."
    );
    md.push_str("- Both get their world (tenant, admins, conversation, connection tokens) from the same core-api. Subscribers are spread over `loadtest` worker processes (`--per-process`, by default two, so that the main process only keeps the send schedule) and connect at `--connect-rate` per second before the publishers start.\n");
    if let Some(r) = runs.iter().find_map(|(_, r)| r.as_ref()) {
        let _ = writeln!(
            md,
            "- **Machine**: {}; server, stack and harness all on it.",
            bench::machine(r)
        );
    }
    md.push_str("\n## Results\n\n");
    md.push_str("*deliveries/s*: while sending (from the timeline, its first second left out); *loadtest deliveries/s*: everything delivered, the backlog drained during the grace included, over the send time. Latency: send → delivered to a subscriber, in ms. *Harness*, *server*: cores used while sending by all of `loadtest`'s processes and by the server process; *server µs/delivery*: the server's CPU time per delivery, the comparison least disturbed by a busy machine; *rest*: the other busy cores (for the edge, its Redis, core-api and PostgreSQL; for both, anything else running on the machine); *machine*: share of all cores busy while sending. *Trustworthy* is `loadtest`'s verdict on itself (schedule lag p99 ≤ 5 ms and no harness process above 90% of a core).\n\nHow to read it: the harness shares the machine with the server, and reading a delivery costs it CPU of the same order as a server spends sending one (compare *harness* and *server*). A row measures the server only where it is trustworthy and the machine kept idle CPU; where the machine was ~100% busy, the machine set the pace (latency there is mostly queueing on both sides), and *server µs/delivery* is the fairer comparison. Where *rest* is high for Bun (which has no stack behind it), something else was running on the machine during that point.\n\n");
    md.push_str("| server | subscribers | publishers | rate target | rate achieved | deliveries/s | loadtest deliveries/s | p50 | p99 | max | lost | dup | reordered | harness | server | server µs/delivery | rest | machine | trustworthy | report |\n|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|\n");
    for (run, r) in runs {
        let Some(r) = r else {
            let _ = writeln!(
                md,
                "| {} | did not run | | | | | | | | | | | | | | | | | | |",
                run.name
            );
            continue;
        };
        let cfg = &r["config"];
        let extra = &r["extra"];
        let cores = |k: &str| {
            extra[k]
                .as_f64()
                .map_or_else(|| "—".to_owned(), |c| format!("{c:.2}"))
        };
        // Whatever else was busy: the edge's Redis, core-api and PostgreSQL, and any
        // other load on the machine.
        let deliveries = sending_deliveries(r);
        // Server CPU per delivery: comparable even when the machine, not the server, set
        // the pace.
        let per_delivery = match (extra["edge_cores_while_sending"].as_f64(), deliveries) {
            (Some(c), Some(d)) if d > 0.0 => format!("{:.2}", c * 1e6 / d),
            _ => "—".to_owned(),
        };
        let rest = match (
            extra["machine_busy_while_sending"].as_f64(),
            r["machine"]["cores"].as_f64(),
            extra["harness_cores_while_sending"].as_f64(),
            extra["edge_cores_while_sending"].as_f64(),
        ) {
            (Some(b), Some(n), Some(h), Some(e)) => format!("{:.2}", (b * n - h - e).max(0.0)),
            _ => "—".to_owned(),
        };
        let _ = writeln!(
            md,
            "| {} | {} | {} | {} | {} | **{}** | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | [html](fanout-vs-bun/{}.html) · [json](fanout-vs-bun/{}.json) |",
            run.name.split('-').next().unwrap_or("?"),
            thousands(cfg["subscribers"].as_f64()),
            cfg["publishers"],
            bench::f(&r["rate_target"]),
            bench::f(&r["rate_achieved"]),
            thousands(deliveries),
            thousands(r["deliveries_per_s"].as_f64()),
            bench::f(&r["deliver"]["p50"]),
            bench::f(&r["deliver"]["p99"]),
            bench::f(&r["deliver"]["max"]),
            r["lost"],
            r["duplicated"],
            r["reordered"],
            cores("harness_cores_while_sending"),
            cores("edge_cores_while_sending"),
            per_delivery,
            rest,
            extra["machine_busy_while_sending"]
                .as_f64()
                .map_or_else(|| "—".to_owned(), |b| format!("{:.0}%", b * 100.0)),
            if r["trustworthy"].as_bool() == Some(true) {
                "yes"
            } else {
                "**no**"
            },
            run.name,
            run.name
        );
    }
    md.push_str("\nWarnings and failures reported by `loadtest`:\n\n");
    let mut any = false;
    for (run, r) in runs {
        let Some(r) = r else { continue };
        for key in ["warnings", "failures"] {
            for w in r[key].as_array().into_iter().flatten() {
                any = true;
                let _ = writeln!(md, "- {}: {}", run.name, w.as_str().unwrap_or(""));
            }
        }
    }
    for (name, busy) in busy_before {
        any = true;
        let _ = writeln!(
            md,
            "- {name}: started with the machine still {:.0}% busy after waiting {} s for it to quiet down (other load)",
            busy * 100.0,
            QUIET_WAIT.as_secs()
        );
    }
    if !any {
        md.push_str("- none\n");
    }
    md.push_str("\n## Commands\n\n```sh\n");
    let _ = writeln!(
        md,
        "cargo xtask bench-fanout --subscribers {} --saturation-rate {} --duration {}s --saturation-grace {}s{} --body-bytes {} --connect-rate {}",
        opts.subscribers
            .iter()
            .map(usize::to_string)
            .collect::<Vec<_>>()
            .join(","),
        opts.saturation_rate,
        opts.duration.as_secs(),
        opts.saturation_grace.as_secs(),
        opts.per_process
            .map_or_else(String::new, |n| format!(" --per-process {n}")),
        opts.body_bytes,
        opts.connect_rate
    );
    md.push_str(
        "# which runs, against the stack and `bench/bun/node_modules/.bin/bun server.js 0` (with\n# --from-reports the page is rewritten from the stored reports; each says when it started):\n",
    );
    for (run, r) in runs {
        let started = r
            .as_ref()
            .and_then(|r| r["started_at"].as_str())
            .map_or_else(String::new, |t| format!("  # started {t}"));
        let _ = writeln!(
            md,
            "cargo run --release -p loadtest -- {}{started}",
            run.args.join(" ")
        );
    }
    md.push_str("```\n");
    std::fs::write(page, md).with_context(|| format!("writing {}", page.display()))
}

/// `docs/bench/fanout-vs-bun.md` under `root`, for the link from `docs/benchmarks.md`.
pub fn page(root: &Path) -> PathBuf {
    root.join("docs").join("bench").join("fanout-vs-bun.md")
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn report() -> Value {
        json!({
            "config": {"subscribers": 10000, "publishers": 4},
            "machine": {"cores": 2, "cpu_model": "x", "memory_bytes": 1e9, "kernel": "k"},
            "rate_target": 20.0, "rate_achieved": 20.1, "deliveries_per_s": 200000.0,
            "deliver": {"p50": 1.0, "p99": 2.0, "max": 3.0},
            "lost": 0, "duplicated": 0, "reordered": 0, "trustworthy": true,
            "warnings": [], "failures": [],
            "extra": {"subscribers_ready": 10000.0, "machine_busy_while_sending": 0.5,
                      "harness_cores_while_sending": 0.4, "edge_cores_while_sending": 0.3},
            "timeline": [
                {"t": 1.0, "sent": 0.0, "delivered": 0.0},
                {"t": 2.0, "sent": 20.0, "delivered": 50.0},
                {"t": 3.0, "sent": 20.0, "delivered": 100.0},
                {"t": 5.0, "sent": 20.0, "delivered": 200.0},
                {"t": 6.0, "sent": 0.0, "delivered": 999.0},
            ],
        })
    }

    #[test]
    fn deliveries_while_sending_skip_the_first_second() {
        // (100·1 + 200·2) / 3
        let d = sending_deliveries(&report()).unwrap();
        assert!((d - 500.0 / 3.0).abs() < 1e-9, "{d}");
        assert_eq!(sending_deliveries(&json!({"timeline": []})), None);
    }

    #[test]
    fn thousands_separators() {
        assert_eq!(thousands(Some(1234567.4)), "1,234,567");
        assert_eq!(thousands(Some(999.0)), "999");
        assert_eq!(thousands(None), "—");
    }

    #[test]
    fn rows_match_the_header() {
        let dir = std::env::temp_dir().join(format!("bench-fanout-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let page = dir.join("p.md");
        let opts = Options {
            subscribers: vec![10_000, 2_000],
            saturation_rate: 100.0,
            duration: Duration::from_secs(10),
            saturation_grace: Duration::from_secs(30),
            per_process: None,
            body_bytes: 100,
            connect_rate: 500.0,
            from_reports: false,
        };
        let run = |name: &str| Run {
            name: name.to_owned(),
            args: vec!["fanout".to_owned()],
        };
        let runs = vec![
            (run("edge-s10000-p4-r20"), Some(report())),
            (run("bun-s10000-p4-r20"), None),
        ];
        write_markdown(
            &page,
            &opts,
            "1.0",
            &runs,
            &[("bun-s10000-p4-r20".to_owned(), 0.9)],
        )
        .unwrap();
        let md = std::fs::read_to_string(&page).unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
        let rows: Vec<&str> = md.lines().filter(|l| l.starts_with("| ")).collect();
        assert_eq!(rows.len(), 3, "{md}");
        let cols = |l: &str| l.matches('|').count();
        assert!(rows.iter().all(|r| cols(r) == cols(rows[0])), "{md}");
        assert!(rows[1].starts_with("| edge | 10,000 | 4 | 20.00 |"), "{md}");
        assert!(
            md.contains("- bun-s10000-p4-r20: started with the machine still 90% busy"),
            "{md}"
        );
        assert!(rows[1].contains("| **167** |"), "{md}");
        assert!(
            rows[1].contains("| 0.40 | 0.30 | 1800.00 | 0.30 | 50% | yes |"),
            "{md}"
        );
    }
}
