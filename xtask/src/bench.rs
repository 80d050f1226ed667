//! `cargo xtask bench`: the standard load suite (the `loadtest` crate) against a local stack.
//!
//! Uses the running stack when `.relaydesk/dev.env` exists and its core-api answers `/readyz`;
//! otherwise starts one like `cargo xtask up --detach` and stops it at the end. Builds
//! `loadtest` in release, runs connect, chat at increasing rates up to saturation, fanout,
//! storm and a one-minute soak, writes each report to `docs/bench/` (JSON and HTML) and
//! rewrites `docs/benchmarks.md` with the machine, the commands, a table of the figures
//! (with each process's memory drift under the soak) and links, among them to
//! `docs/bench/fanout-vs-bun.md` and `docs/bench/scale.md` when `cargo xtask bench-fanout`
//! and `cargo xtask bench-scale` have written them.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use serde_json::Value;

use crate::services::run_child;
use crate::{cargo, check_interrupted, rel, step, up};

/// One run of the suite.
pub(crate) struct Run {
    pub(crate) name: String,
    pub(crate) args: Vec<String>,
}

pub async fn run(root: &Path, long: bool) -> Result<u8> {
    let stack = Stack::use_or_start(root, 2).await?;
    let result = suite(root, &stack.env_file, long).await;
    stack.stop_if_started(root);
    result
}

/// The stack a bench runs against: the running one (`.relaydesk/dev.env` answering
/// `/readyz`) when it has at least the edges needed, or one it starts like
/// `cargo xtask up --detach --edges N` and stops at the end.
pub(crate) struct Stack {
    pub(crate) env_file: PathBuf,
    started: bool,
}

impl Stack {
    pub(crate) async fn use_or_start(root: &Path, edges: usize) -> Result<Stack> {
        let env_file = root.join(".relaydesk").join("dev.env");
        if stack_ready(&env_file).await {
            let running = edge_pids(root).len();
            if running < edges {
                bail!(
                    "the running stack has {running} edges and {edges} are needed: stop it \
                     with `cargo xtask down` (the bench then starts its own)"
                );
            }
            step(format!(
                "using the running stack ({})",
                rel(root, &env_file)
            ));
            return Ok(Stack {
                env_file,
                started: false,
            });
        }
        step(format!(
            "no running stack: starting one (as `cargo xtask up --detach --edges {edges}`)"
        ));
        up::up(root, true, edges).await?;
        Ok(Stack {
            env_file,
            started: true,
        })
    }

    pub(crate) fn stop_if_started(self, root: &Path) {
        if self.started {
            step("stopping the stack this bench started");
            if let Err(e) = up::down(root) {
                eprintln!("xtask: {e:#}");
            }
        }
    }
}

pub(crate) fn env_value(env_file: &Path, key: &str) -> Option<String> {
    let text = std::fs::read_to_string(env_file).ok()?;
    text.lines().find_map(|l| {
        let (k, v) = l.split_once('=')?;
        (k.trim() == key).then(|| v.trim().trim_matches('"').to_owned())
    })
}

pub(crate) async fn stack_ready(env_file: &Path) -> bool {
    let Some(core) = env_value(env_file, "CORE_URL") else {
        return false;
    };
    let Ok(http) = reqwest::Client::builder()
        .timeout(Duration::from_secs(3))
        .build()
    else {
        return false;
    };
    matches!(http.get(format!("{core}/readyz")).send().await, Ok(r) if r.status().is_success())
}

/// What `cargo xtask up --detach` wrote to `.relaydesk/dev/pids`: `(name, value)` (pids of
/// `core-api`, `edge-N` and `redis`, `redis_port`, `pg_port`, `pg_data`); empty without it.
pub(crate) fn dev_state(root: &Path) -> Vec<(String, String)> {
    std::fs::read_to_string(root.join(".relaydesk").join("dev").join("pids"))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned()))
        .collect()
}

/// Edge pids from `.relaydesk/dev/pids` (`edge-1=…`), in order.
pub(crate) fn edge_pids(root: &Path) -> Vec<String> {
    let mut pids: Vec<(String, String)> = dev_state(root)
        .into_iter()
        .filter(|(k, _)| k.starts_with("edge-"))
        .collect();
    pids.sort_by_key(|(k, _)| up::edge_number(k));
    pids.into_iter().map(|(_, v)| v).collect()
}

pub(crate) fn target_dir(root: &Path) -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| root.join("target"))
}

/// Builds `loadtest` in release and returns its binary.
pub(crate) async fn build_loadtest(root: &Path) -> Result<PathBuf> {
    step("building loadtest (release)");
    let status = run_child(
        tokio::process::Command::new(cargo())
            .args(["build", "--release", "-p", "loadtest"])
            .current_dir(root),
        "cargo build",
    )
    .await?;
    if !status.success() {
        bail!("`cargo build --release -p loadtest` failed ({status})");
    }
    Ok(target_dir(root).join("release").join("loadtest"))
}

pub(crate) fn args(s: &str) -> Vec<String> {
    s.split_whitespace().map(str::to_owned).collect()
}

async fn suite(root: &Path, env_file: &Path, long: bool) -> Result<u8> {
    let bin = build_loadtest(root).await?;
    let out = root.join("docs").join("bench");
    std::fs::create_dir_all(&out).with_context(|| format!("creating {}", out.display()))?;
    let edges: Vec<String> = env_value(env_file, "EDGE_URLS")
        .unwrap_or_default()
        .split_whitespace()
        .map(str::to_owned)
        .collect();
    let Some(first_edge) = edges.first().cloned() else {
        bail!("{} has no EDGE_URLS", env_file.display());
    };
    let pids = edge_pids(root);
    let env_arg = format!("--env {}", rel(root, env_file));
    let all_pids: String = pids.iter().map(|p| format!(" --edge-pid {p}")).collect();

    let mut done: Vec<(Run, Option<Value>)> = Vec::new();
    // connect: 19,000 connections on one edge, spread over two worker processes, held
    // past two heartbeat intervals so that the memory figure includes heartbeats.
    let mut connect = args(&format!(
        "connect {env_arg} --edge {first_edge} --connections 19000 --rate 800 --hold 60s --per-process 10000"
    ));
    if let Some(p) = pids.first() {
        connect.extend(args(&format!("--edge-pid {p}")));
    }
    done.push(one(root, &bin, &out, "connect-19000", connect).await?);

    // chat at increasing rates until saturation.
    for rate in [1000, 2000, 4000, 8000, 10000] {
        check_interrupted()?;
        let (run, report) = one(
            root,
            &bin,
            &out,
            &format!("chat-{rate}"),
            args(&format!(
                "chat {env_arg}{all_pids} --conversations 1000 --rate {rate} --duration 10s --slo p99<100ms,loss=0,dup=0,reorder=0"
            )),
        )
        .await?;
        let saturated = report.as_ref().is_none_or(|r| {
            let achieved = r["rate_achieved"].as_f64().unwrap_or(0.0);
            let p99 = r["deliver"]["p99"].as_f64().unwrap_or(f64::MAX);
            achieved < 0.9 * f64::from(rate) || p99 > 100.0
        });
        done.push((run, report));
        if saturated {
            step(format!("chat saturated at {rate} msgs/s; not going higher"));
            break;
        }
    }
    if long {
        // Sustained: five minutes at 8,000 msg/s, and ten at 2,000 (its worst second
        // against its median second).
        for (rate, secs) in [(8000, 300), (2000, 600)] {
            check_interrupted()?;
            done.push(
                one(
                    root,
                    &bin,
                    &out,
                    &format!("chat-{rate}-{secs}s"),
                    args(&format!(
                        "chat {env_arg}{all_pids} --conversations 1000 --rate {rate} --duration {secs}s --slo p99<100ms,loss=0,dup=0,reorder=0"
                    )),
                )
                .await?,
            );
        }
    }
    check_interrupted()?;
    done.push(
        one(
            root,
            &bin,
            &out,
            "fanout-1000",
            args(&format!(
                "fanout {env_arg} --subscribers 1000 --publishers 1 --rate 20 --duration 10s"
            )),
        )
        .await?,
    );
    for n in [2000, 19000] {
        check_interrupted()?;
        let slo = if n <= 2000 { "p99<1s" } else { "p99<5s" };
        done.push(
            one(
                root,
                &bin,
                &out,
                &format!("storm-{n}"),
                args(&format!(
                    "storm {env_arg} --connections {n} --slo {slo},loss=0"
                )),
            )
            .await?,
        );
    }
    check_interrupted()?;
    done.push(
        one(
            root,
            &bin,
            &out,
            "route-200",
            args(&format!(
                "route {env_arg} --agents 50 --capacity 4 --rate 200 --duration 30s --hold 2s"
            )),
        )
        .await?,
    );
    check_interrupted()?;
    // soak: a short one, enough to see whether memory keeps growing under mixed load.
    done.push(
        one(
            root,
            &bin,
            &out,
            "soak-60s",
            args(&format!(
                "soak {env_arg}{all_pids} --connections 2000 --conversations 200 --rate 500 --duration 60s --sample-every 5s --warmup 15s --reconnect-every 15s --slo loss=0"
            )),
        )
        .await?,
    );
    check_interrupted()?;
    // Last, as it adds a scratch table to PostgreSQL: CPU per message, process by process.
    let core = match crate::bench_core::measure(root, env_file, &Default::default()).await {
        Ok(c) => Some(c),
        Err(e) => {
            eprintln!("xtask: bench-core: {e:#}");
            None
        }
    };
    write_markdown(root, &done, core.as_ref(), long)?;
    step(format!(
        "wrote {} and {}",
        rel(root, &root.join("docs").join("benchmarks.md")),
        rel(root, &out)
    ));
    Ok(0)
}

/// Runs one scenario; a failed gate is a result, not an error.
pub(crate) async fn one(
    root: &Path,
    bin: &Path,
    out: &Path,
    name: &str,
    mut a: Vec<String>,
) -> Result<(Run, Option<Value>)> {
    let json = out.join(format!("{name}.json"));
    let html = out.join(format!("{name}.html"));
    a.extend([
        "--quiet".to_owned(),
        "--json".to_owned(),
        rel(root, &json).into_owned(),
        "--html".to_owned(),
        rel(root, &html).into_owned(),
    ]);
    step(format!("loadtest {}", a.join(" ")));
    let status = run_child(
        tokio::process::Command::new(bin).args(&a).current_dir(root),
        "loadtest",
    )
    .await?;
    check_interrupted()?;
    let report = if status.code() == Some(0) || status.code() == Some(1) {
        std::fs::read_to_string(&json)
            .ok()
            .and_then(|t| serde_json::from_str(&t).ok())
    } else {
        eprintln!("xtask: {name} failed to run ({status})");
        None
    };
    Ok((
        Run {
            name: name.to_owned(),
            args: a,
        },
        report,
    ))
}

pub(crate) fn f(v: &Value) -> String {
    v.as_f64()
        .map_or_else(|| "—".to_owned(), |x| format!("{x:.2}"))
}

/// The machine a report ran on, in one line: cores (model), memory, kernel.
pub(crate) fn machine(report: &Value) -> String {
    let m = &report["machine"];
    format!(
        "{} cores ({}), {:.1} GiB, {}",
        m["cores"],
        m["cpu_model"].as_str().unwrap_or("?"),
        m["memory_bytes"].as_f64().unwrap_or(0.0) / f64::from(1u32 << 30),
        m["kernel"].as_str().unwrap_or("?"),
    )
}

/// Per-process CPU per message of a chat-like report: "edges a + b, core c".
fn cpu_cell(r: &Value) -> String {
    let Some(cpu) = r["cpu"].as_array().filter(|c| !c.is_empty()) else {
        return String::new();
    };
    let of = |kind: &str| -> Vec<String> {
        cpu.iter()
            .filter(|c| c["process"].as_str() == Some(kind))
            .filter_map(|c| c["us_per_message"].as_f64())
            .map(|v| format!("{v:.0}"))
            .collect()
    };
    format!(
        "edges {}; core {}",
        of("edge").join(" + "),
        of("core").join(" + ")
    )
}

/// Worst second's deliver p99 ÷ the median second's, over the seconds that carried at
/// least half the target rate (a run's first and last seconds ramp).
fn worst_second_cell(r: &Value) -> String {
    let target = r["rate_target"].as_f64().unwrap_or(0.0);
    let mut p99s: Vec<f64> = r["timeline"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|s| s["delivered"].as_f64().unwrap_or(0.0) >= 0.5 * target && target > 0.0)
        .filter_map(|s| s["p99"].as_f64())
        .collect();
    if p99s.len() < 3 {
        return String::new();
    }
    p99s.sort_by(f64::total_cmp);
    let median = p99s[p99s.len() / 2];
    let worst = p99s[p99s.len() - 1];
    if median <= 0.0 {
        return String::new();
    }
    format!("{worst:.1} / {median:.1} = {:.1}×", worst / median)
}

/// How a batch's cost on a big tenant is measured (by the test suite, not by this run).
const HISTORY_NOTE: &str = "\nA batch on a tenant with 1,000,000 unanalyzed messages commits within 1.5× of a fresh tenant's batch: asserted by `cargo xtask test --no-lint -- -p relaydesk-core --test history` (add `--no-capture` to see both medians; the latest are in [bench/notes.md](bench/notes.md)). CPU per message falls as batches grow with the rate: the chat rows above give the edges' and core-api's at each rate.\n";

fn write_markdown(
    root: &Path,
    runs: &[(Run, Option<Value>)],
    core: Option<&crate::bench_core::Summary>,
    long: bool,
) -> Result<()> {
    let mut md = String::new();
    let _ = writeln!(
        md,
        "# Benchmarks\n\nWritten by `cargo xtask bench{}` (the `loadtest` crate against a local `cargo xtask up` stack: one core-api, two edges, PostgreSQL with `synchronous_commit` and `fsync` on, and Redis, all on the same machine as the harness). Every figure on this page comes from that one run; rerun the command to refresh it. Analyses recorded by hand, each with its date, are in [bench/notes.md](bench/notes.md).\n",
        if long { " --long" } else { "" }
    );
    if let Some(r) = runs.iter().find_map(|(_, r)| r.as_ref()) {
        let _ = writeln!(
            md,
            "## Machine\n\n- {}\n- loadtest {}; run started {}\n",
            machine(r),
            r["version"].as_str().unwrap_or("?"),
            r["started_at"].as_str().unwrap_or("?")
        );
    }
    md.push_str("## Results\n\nLatencies in ms of each scenario's main interval (connect: TCP + upgrade + hello→welcome; chat, fanout and soak: send → delivered to the other party; storm: drop → resumed and caught up; route: the create request). *CPU µs/msg*: each edge's and core-api's CPU per persisted message over the run, from their `process_cpu_seconds_total`. *Worst second*: the highest per-second deliver p99 against the median second's. Under the soak, each process's resident memory drift from the first sample after the warm-up to the last. Each run's command is under [Commands](#commands), by its name.\n\n");
    md.push_str("| run | interval | p50 | p99 | max | rate target | rate achieved | lost | dup | reordered | CPU µs/msg | worst second p99 (ms) | trustworthy | verdict | report |\n|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|\n");
    for (run, r) in runs {
        let Some(r) = r else {
            let _ = writeln!(
                md,
                "| {} | did not run | | | | | | | | | | | | | |",
                run.name
            );
            continue;
        };
        let main = r["main_interval"].as_str().unwrap_or("deliver");
        let s = &r[main];
        let _ = writeln!(
            md,
            "| {} | {main} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | [html](bench/{}.html) · [json](bench/{}.json) |",
            run.name,
            f(&s["p50"]),
            f(&s["p99"]),
            f(&s["max"]),
            f(&r["rate_target"]),
            f(&r["rate_achieved"]),
            r["lost"],
            r["duplicated"],
            r["reordered"],
            cpu_cell(r),
            worst_second_cell(r),
            r["trustworthy"],
            if r["passed"].as_bool() == Some(true) { "pass" } else { "FAIL" },
            run.name,
            run.name
        );
        if let Some(mem) = r["memory"]["bytes_per_connection"].as_f64() {
            let _ = writeln!(
                md,
                "| ↳ {} edge memory | {:.0} bytes per connection | | | | | | | | | | | | | |",
                run.name, mem
            );
        }
        for m in r["memory_over_time"].as_array().into_iter().flatten() {
            let d = &m["drift"];
            let drift = match (d["bytes"].as_f64(), d["bytes_per_min"].as_f64()) {
                (Some(b), Some(per_min)) => format!(
                    "drift {:+.2} MiB ({:+.2} MiB/min) from {:.0} s to {:.0} s",
                    b / 1048576.0,
                    per_min / 1048576.0,
                    d["from_t"].as_f64().unwrap_or(0.0),
                    d["to_t"].as_f64().unwrap_or(0.0)
                ),
                _ => "no drift figure".to_owned(),
            };
            let _ = writeln!(
                md,
                "| ↳ {} {} {} memory | {drift} | | | | | | | | | | | | | |",
                run.name,
                m["process"].as_str().unwrap_or("?"),
                m["url"].as_str().unwrap_or("?"),
            );
        }
    }
    md.push_str("\nWarnings (a run is *not trustworthy* when the harness's schedule lag p99 exceeded 5 ms or one of its processes used more than 90% of a core):\n\n");
    for (run, r) in runs {
        if let Some(ws) = r.as_ref().and_then(|r| r["warnings"].as_array()) {
            for w in ws {
                let _ = writeln!(md, "- {}: {}", run.name, w.as_str().unwrap_or(""));
            }
        }
    }
    if let Some(c) = core {
        let d = &c.report["deliver"];
        let _ = writeln!(
            md,
            "\n## The persisted path: CPU per message\n\n`{}` (page: [bench/core.md](bench/core.md)): `loadtest chat` with 1,000 conversations while every process's CPU is read from `/proc` (PostgreSQL: the postmaster and all its children), then pgbench's raw batched insert of message-shaped rows on the same PostgreSQL. {} messages persisted; deliver p50 {} ms, p99 {} ms, worst second {}; {} lost, {} duplicated, {} reordered.\n\n| process | µs CPU per persisted message |\n|---|---|",
            c.command,
            c.messages,
            f(&d["p50"]),
            f(&d["p99"]),
            worst_second_cell(&c.report),
            c.report["lost"],
            c.report["duplicated"],
            c.report["reordered"],
        );
        for (name, us) in &c.per_message {
            let _ = writeln!(
                md,
                "| {name} | {} |",
                us.map_or_else(|| "—".to_owned(), |v| format!("{v:.1}"))
            );
        }
        let _ = writeln!(
            md,
            "| raw insert: PostgreSQL per row | {} |",
            c.raw_us
                .map_or_else(|| "—".to_owned(), |v| format!("{v:.1}"))
        );
        md.push_str(HISTORY_NOTE);
    }
    if crate::bench_fanout::page(root).is_file() {
        md.push_str("\n## Fan-out against Bun\n\nOne edge's fan-out side by side with Bun's built-in WebSocket pub/sub, same client, same run (`cargo xtask bench-fanout`, which this suite does not rerun): [bench/fanout-vs-bun.md](bench/fanout-vs-bun.md).\n");
    }
    if root.join("docs").join("bench").join("scale.md").is_file() {
        md.push_str("\n## Concurrent connections\n\nThe most sockets the machine holds, over several edge and loadtest processes (`cargo xtask bench-scale`, which this suite does not rerun): [bench/scale.md](bench/scale.md).\n");
    }
    md.push_str("\n## Commands\n\n```sh\n");
    for (run, _) in runs {
        let _ = writeln!(
            md,
            "# {}\ncargo run --release -p loadtest -- {}",
            run.name,
            run.args.join(" ")
        );
    }
    if let Some(c) = core {
        let _ = writeln!(md, "# the persisted path\n{}", c.command);
    }
    md.push_str("```\n");
    let path = root.join("docs").join("benchmarks.md");
    std::fs::write(&path, md).with_context(|| format!("writing {}", path.display()))
}
