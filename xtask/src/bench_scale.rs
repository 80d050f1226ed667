//! `cargo xtask bench-scale`: the most concurrent authenticated sockets this machine
//! holds, spread over as many edge and `loadtest` processes as the per-process file cap
//! requires (each edge at most 19,000 sockets; each `loadtest` worker on its own loopback
//! source address), held with heartbeats.
//!
//! Starts its own stack (`cargo xtask up --detach --edges N`) unless a running one has
//! enough edges, runs `loadtest connect` once against every edge, and writes the report to
//! `docs/bench/scale/` and a summary to `docs/bench/scale.md` (linked from
//! `docs/benchmarks.md`).

use std::fmt::Write as _;
use std::path::Path;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use serde_json::Value;

use crate::bench;
use crate::{rel, step, up};

/// Sockets one edge is given (its default cap is 19,000; the rest is headroom).
const PER_EDGE: usize = 18_500;

/// The knobs of `cargo xtask bench-scale`.
#[derive(Debug, Clone)]
pub struct Options {
    pub connections: usize,
    /// New connections per second, all workers together.
    pub rate: f64,
    pub hold: Duration,
    /// Sockets per `loadtest` process.
    pub per_process: usize,
}

pub async fn run(root: &Path, opts: &Options) -> Result<u8> {
    if opts.connections == 0 || opts.per_process == 0 {
        bail!("--connections and --per-process must be at least 1");
    }
    let edges = opts.connections.div_ceil(PER_EDGE);
    if edges > up::MAX_EDGES {
        bail!(
            "{} connections need {edges} edges; at most {} are started",
            opts.connections,
            up::MAX_EDGES
        );
    }
    let stack = bench::Stack::use_or_start(root, edges).await?;
    let result = measure(root, opts).await;
    stack.stop_if_started(root);
    result
}

async fn measure(root: &Path, opts: &Options) -> Result<u8> {
    let bin = bench::build_loadtest(root).await?;
    let out = root.join("docs").join("bench").join("scale");
    std::fs::create_dir_all(&out).with_context(|| format!("creating {}", out.display()))?;

    let mut args = vec![
        "connect".to_owned(),
        "--env".to_owned(),
        ".relaydesk/dev.env".to_owned(),
        "--connections".to_owned(),
        opts.connections.to_string(),
        "--rate".to_owned(),
        opts.rate.to_string(),
        "--hold".to_owned(),
        format!("{}s", opts.hold.as_secs()),
        "--per-process".to_owned(),
        opts.per_process.to_string(),
    ];
    for pid in bench::edge_pids(root) {
        args.extend(["--edge-pid".to_owned(), pid]);
    }
    let name = format!("connect-{}", opts.connections);
    let (run, report) = bench::one(root, &bin, &out, &name, args).await?;
    let Some(report) = report else {
        bail!("loadtest connect wrote no report");
    };
    let md = summary(root, &out, &run, &report);
    let page = root.join("docs").join("bench").join("scale.md");
    std::fs::write(&page, md).with_context(|| format!("writing {}", page.display()))?;
    step(format!("wrote {}", rel(root, &page)));
    Ok(if report["passed"].as_bool() == Some(true) {
        0
    } else {
        1
    })
}

/// The page: machine, command, the figures, each edge's memory.
fn summary(root: &Path, out: &Path, run: &bench::Run, r: &Value) -> String {
    let n = |k: &str| r[k].as_u64().unwrap_or(0);
    let mut md = String::from("# Concurrent connections on one machine\n\n");
    let _ = writeln!(md, "Machine: {}.\n", bench::machine(r));
    let _ = writeln!(
        md,
        "Command: `cargo xtask bench-scale` ran `loadtest {}`.\n",
        run.args.join(" ")
    );
    let c = &r["connect"];
    let _ = writeln!(
        md,
        "| connections asked | connected | failed | unexpected disconnects | held | connect p50 / p99 (ms) | worker processes | trustworthy |\n|---|---|---|---|---|---|---|---|\n| {} | {} | {} | {} | {} | {} / {} | {} | {} |\n",
        r["config"]["connections"],
        n("connected"),
        n("connect_failed"),
        n("disconnected"),
        r["config"]["hold"].as_str().unwrap_or("?"),
        bench::f(&c["p50"]),
        bench::f(&c["p99"]),
        n("workers"),
        r["trustworthy"],
    );
    let before = r["memory"]["before"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let after = r["memory"]["after"].as_array().cloned().unwrap_or_default();
    md.push_str("| edge | RSS before (MiB) | RSS held (MiB) |\n|---|---|---|\n");
    let mib = |v: &Value| {
        v["rss_bytes"]
            .as_f64()
            .map_or_else(|| "—".to_owned(), |b| format!("{:.1}", b / 1048576.0))
    };
    for (i, a) in after.iter().enumerate() {
        let _ = writeln!(
            md,
            "| {} | {} | {} |",
            a["url"].as_str().unwrap_or("?"),
            before.get(i).map_or_else(|| "—".to_owned(), mib),
            mib(a)
        );
    }
    let _ = writeln!(
        md,
        "\nBytes per connection over all edges: {}.\n",
        bench::f(&r["memory"]["bytes_per_connection"])
    );
    let _ = writeln!(
        md,
        "Report: [JSON]({0}/{1}.json), [HTML]({0}/{1}.html).",
        rel(root, out).trim_start_matches("docs/bench/"),
        run.name
    );
    md
}
