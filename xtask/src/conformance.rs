//! `cargo xtask conformance`, also a stage of every full `cargo xtask test`: the edge's
//! WebSocket framing against Autobahn|Testsuite, the reference RFC 6455 conformance suite.
//!
//! An edge runs in echo mode (`EDGE_ECHO_PATH`: every message comes back through its own
//! reader and writer) and `wstest --mode fuzzingclient` plays cases 1–7 and 9 against it
//! (framing, pings, reserved bits, opcodes, fragmentation, UTF-8, close handling, limits
//! and performance). Any case whose behaviour is not OK (or INFORMATIONAL, the suite's
//! word for "recorded, not judged") fails the stage, NON-STRICT included;
//! `docs/conformance/summary.md` is rewritten from the suite's report.
//!
//! The testsuite runs on Python 2.7 only. It is installed with pip from the pinned
//! `xtask/autobahn/requirements.txt` into `target/autobahn/` (once per change of that
//! file), with the first Python 2.7 found: `PYTHON2`, `python2.7` or `python2` on the
//! `PATH`, or a pyenv version `2.7.*`.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use serde_json::{json, Value};

use crate::services::{self, run_child, Redis};
use crate::up::{edge_command, target_dir, Procs};
use crate::{cargo, check_interrupted, rel, step};

/// The sections played: 1 framing, 2 pings and pongs, 3 reserved bits, 4 opcodes,
/// 5 fragmentation, 6 UTF-8, 7 close handling, 9 limits and performance (10 and up
/// are about extensions the edge does not offer, 8 does not exist).
const SECTIONS: [(&str, &str); 8] = [
    ("1", "framing"),
    ("2", "pings and pongs"),
    ("3", "reserved bits"),
    ("4", "opcodes"),
    ("5", "fragmentation"),
    ("6", "UTF-8 handling"),
    ("7", "close handling"),
    ("9", "limits and performance"),
];
/// The echo edge's message limit: section 9's largest message (16 MiB).
const MAX_MESSAGE_BYTES: usize = 16 << 20;
/// The echo edge's outbound bound: room for the largest echo.
const OUTBOUND_QUEUE_BYTES: usize = 2 * MAX_MESSAGE_BYTES;
/// The whole run of the testsuite must finish within this.
const RUN_TIMEOUT: Duration = Duration::from_secs(170);
/// Behaviours that pass.
const PASSING: [&str; 2] = ["OK", "INFORMATIONAL"];

/// `cargo xtask conformance`: the stage on its own, with a private Redis (the edge needs
/// one to start).
pub async fn standalone(root: &Path) -> Result<u8> {
    let inst = services::ensure_installed()?;
    let base = root
        .join(".relaydesk")
        .join("conformance")
        .join(std::process::id().to_string());
    std::fs::create_dir_all(&base).with_context(|| format!("creating {}", base.display()))?;
    let mut redis = Redis::start(&inst, &base.join("redis"), true)?;
    let keys = base.join("keys");
    crate::test::write_keypair(&keys, true)?;
    let passed = run(root, &redis.url(), &keys).await;
    let stopped = redis.stop();
    let passed = passed?;
    stopped?;
    if passed {
        if let Err(e) = std::fs::remove_dir_all(&base) {
            eprintln!("xtask: could not remove {}: {e}", rel(root, &base));
        }
    }
    Ok(if passed { 0 } else { 1 })
}

/// Runs the testsuite against an echo edge on `redis_url`; `Ok(true)` when every case
/// passes. Rewrites `docs/conformance/summary.md` either way once the suite reported.
pub async fn run(root: &Path, redis_url: &str, keys: &Path) -> Result<bool> {
    let python = python27()?;
    let lib = ensure_testsuite(root, &python).await?;
    check_interrupted()?;

    step("building the edge for the conformance run");
    let status = run_child(
        tokio::process::Command::new(cargo())
            .args(["build", "-p", "relaydesk-edge"])
            .current_dir(root),
        "cargo build",
    )
    .await?;
    if !status.success() {
        bail!("`cargo build -p relaydesk-edge` failed ({status})");
    }
    let edge_bin = target_dir(root).join("debug").join("edge");

    let work = root
        .join(".relaydesk")
        .join("test")
        .join(format!("conformance-{}", std::process::id()));
    let reports = work.join("reports");
    std::fs::create_dir_all(&reports).with_context(|| format!("creating {}", reports.display()))?;
    let port = services::free_port()?;
    let mut edge = edge_command(&edge_bin, port, redis_url, keys);
    edge.env("EDGE_ECHO_PATH", "/echo")
        .env("MAX_MESSAGE_BYTES", MAX_MESSAGE_BYTES.to_string())
        .env("OUTBOUND_QUEUE_BYTES", OUTBOUND_QUEUE_BYTES.to_string())
        .env("RUST_LOG", "info");
    let mut procs = Procs::default();
    procs.spawn("conformance-edge", edge, &work, port)?;
    procs.wait_all_ready().await?;

    let spec = json!({
        "outdir": reports,
        "servers": [{"agent": "relaydesk-edge", "url": format!("ws://127.0.0.1:{port}/echo")}],
        "cases": SECTIONS.iter().map(|(s, _)| format!("{s}.*")).collect::<Vec<_>>(),
        "exclude-cases": [],
        "exclude-agent-cases": {},
    });
    let spec_file = work.join("fuzzingclient.json");
    std::fs::write(&spec_file, serde_json::to_vec_pretty(&spec)?)
        .with_context(|| format!("writing {}", spec_file.display()))?;
    let log = work.join("wstest.log");
    let log_file =
        std::fs::File::create(&log).with_context(|| format!("creating {}", log.display()))?;
    step(format!(
        "running Autobahn|Testsuite (wstest --mode fuzzingclient, cases 1-7 and 9; log: {})",
        rel(root, &log)
    ));
    let started = Instant::now();
    let mut wstest = tokio::process::Command::new(&python);
    wstest
        .arg("-c")
        .arg(launcher(&lib))
        .args(["--mode", "fuzzingclient", "--spec"])
        .arg(&spec_file)
        .current_dir(&work)
        .stdout(log_file.try_clone().context("duplicating a file handle")?)
        .stderr(log_file);
    let status = match tokio::time::timeout(RUN_TIMEOUT, run_child(&mut wstest, "wstest")).await {
        Ok(status) => status?,
        Err(_) => bail!(
            "Autobahn|Testsuite did not finish within {} s\n{}",
            RUN_TIMEOUT.as_secs(),
            services::tail(&log, 20)
        ),
    };
    drop(procs);
    if !status.success() {
        bail!("wstest failed ({status})\n{}", services::tail(&log, 40));
    }
    let secs = started.elapsed().as_secs_f64();

    let index = reports.join("index.json");
    let text = std::fs::read_to_string(&index)
        .with_context(|| format!("reading the suite's report {}", index.display()))?;
    let cases = parse_index(&serde_json::from_str(&text).context("parsing index.json")?)?;
    let version = testsuite_version(root)?;
    let summary = summary(&cases, &version);
    let out = root.join("docs").join("conformance").join("summary.md");
    std::fs::create_dir_all(out.parent().unwrap_or(root))
        .with_context(|| format!("creating the folder of {}", out.display()))?;
    std::fs::write(&out, &summary).with_context(|| format!("writing {}", out.display()))?;
    // The table, for the run's log.
    for line in summary.lines().filter(|l| l.starts_with('|')) {
        eprintln!("{line}");
    }

    let failing: Vec<&Case> = cases.iter().filter(|c| !c.passed()).collect();
    for c in &failing {
        let detail = case_detail(&reports, &c.report);
        eprintln!(
            "xtask: case {} {} (close: {}): {detail}",
            c.id, c.behavior, c.behavior_close
        );
    }
    if failing.is_empty() {
        step(format!(
            "conformance: all {} cases of sections 1-7 and 9 passed in {secs:.0} s; summary in {}",
            cases.len(),
            rel(root, &out)
        ));
        let _ = std::fs::remove_dir_all(&work);
        Ok(true)
    } else {
        eprintln!(
            "xtask: conformance: {} of {} cases failed; reports in {}",
            failing.len(),
            cases.len(),
            rel(root, &reports)
        );
        Ok(false)
    }
}

/// One case's outcome, from the suite's `index.json`.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Case {
    id: String,
    behavior: String,
    behavior_close: String,
    /// The case's own report file, beside `index.json`.
    report: String,
}

impl Case {
    fn passed(&self) -> bool {
        PASSING.contains(&self.behavior.as_str()) && PASSING.contains(&self.behavior_close.as_str())
    }

    fn section(&self) -> &str {
        self.id.split('.').next().unwrap_or("")
    }

    /// The id's numbers, for sorting 9.10 after 9.9.
    fn key(&self) -> Vec<u32> {
        self.id.split('.').map(|n| n.parse().unwrap_or(0)).collect()
    }
}

/// The cases of the one agent in `index.json` (`{agent: {case: {behavior, …}}}`), in order.
fn parse_index(index: &Value) -> Result<Vec<Case>> {
    let agents = index.as_object().context("index.json is not an object")?;
    let Some((_, cases)) = agents.iter().next() else {
        bail!("index.json names no agent");
    };
    let field = |v: &Value, name: &str| v[name].as_str().unwrap_or("").to_owned();
    let mut out: Vec<Case> = cases
        .as_object()
        .context("the agent's cases are not an object")?
        .iter()
        .map(|(id, v)| Case {
            id: id.clone(),
            behavior: field(v, "behavior"),
            behavior_close: field(v, "behaviorClose"),
            report: field(v, "reportfile"),
        })
        .collect();
    out.sort_by_key(Case::key);
    if out.is_empty() {
        bail!("index.json holds no case");
    }
    Ok(out)
}

/// What a failing case's own report says it expected and saw.
fn case_detail(reports: &Path, file: &str) -> String {
    let Ok(text) = std::fs::read_to_string(reports.join(file)) else {
        return format!("(no report {file})");
    };
    let Ok(v) = serde_json::from_str::<Value>(&text) else {
        return format!("(unreadable report {file})");
    };
    let s = |k: &str| v[k].as_str().unwrap_or("").to_owned();
    format!(
        "{} | expected: {} | result: {} | close: {}",
        s("description"),
        s("expectation"),
        s("result"),
        s("resultClose")
    )
}

/// `docs/conformance/summary.md`: counts per section and behaviour, what was not OK,
/// and how the run was made. Holds nothing that varies between passing runs.
fn summary(cases: &[Case], version: &str) -> String {
    let mut by_section: BTreeMap<&str, BTreeMap<String, usize>> = BTreeMap::new();
    for c in cases {
        // A case counts under its worse behaviour: the frames', else its closing's.
        let b = if c.behavior == "OK" {
            &c.behavior_close
        } else {
            &c.behavior
        };
        *by_section
            .entry(c.section())
            .or_default()
            .entry(b.clone())
            .or_default() += 1;
    }
    let cols = ["OK", "INFORMATIONAL", "NON-STRICT", "FAILED"];
    let mut s = String::new();
    let _ = writeln!(s, "# WebSocket conformance (RFC 6455)\n");
    let _ = writeln!(
        s,
        "Autobahn|Testsuite {version} (`wstest --mode fuzzingclient`), cases 1–7 and 9, against\n\
         an edge in echo mode (`EDGE_ECHO_PATH=/echo`): every message goes through the edge's\n\
         own frame reader (`edge/src/reader.rs`) and writer (`edge/src/writer.rs`). The echo\n\
         edge runs with `MAX_MESSAGE_BYTES={MAX_MESSAGE_BYTES}` (section 9's largest message is 16 MiB;\n\
         the default limit is 64 KiB) and `OUTBOUND_QUEUE_BYTES={OUTBOUND_QUEUE_BYTES}`, its other\n\
         settings at their defaults.\n"
    );
    let _ = writeln!(
        s,
        "Written by `cargo xtask conformance`, which every full `cargo xtask test` runs; it\n\
         fails on any case whose behaviour is not OK or INFORMATIONAL (the suite's mark for\n\
         what it records without judging). See docs/reliability.md, \"WebSocket strictness\".\n"
    );
    let _ = writeln!(
        s,
        "| section | cases | OK | INFORMATIONAL | NON-STRICT | FAILED | other |"
    );
    let _ = writeln!(s, "|---|---:|---:|---:|---:|---:|---:|");
    let mut totals = [0usize; 6];
    for (sec, name) in SECTIONS {
        let counts = by_section.get(sec).cloned().unwrap_or_default();
        let total: usize = counts.values().sum();
        let mut row = [total, 0, 0, 0, 0, 0];
        for (i, col) in cols.iter().enumerate() {
            row[i + 1] = counts.get(*col).copied().unwrap_or(0);
        }
        row[5] = total - row[1..5].iter().sum::<usize>();
        for (t, r) in totals.iter_mut().zip(row) {
            *t += r;
        }
        let _ = writeln!(
            s,
            "| {sec} {name} | {} | {} | {} | {} | {} | {} |",
            row[0], row[1], row[2], row[3], row[4], row[5]
        );
    }
    let _ = writeln!(
        s,
        "| **all** | **{}** | **{}** | **{}** | **{}** | **{}** | **{}** |\n",
        totals[0], totals[1], totals[2], totals[3], totals[4], totals[5]
    );
    let informational: Vec<&str> = cases
        .iter()
        .filter(|c| c.passed() && (c.behavior != "OK" || c.behavior_close != "OK"))
        .map(|c| c.id.as_str())
        .collect();
    if !informational.is_empty() {
        let _ = writeln!(
            s,
            "INFORMATIONAL (recorded, not judged by the suite): {}.\n",
            informational.join(", ")
        );
    }
    let failing: Vec<String> = cases
        .iter()
        .filter(|c| !c.passed())
        .map(|c| format!("{} ({} / close {})", c.id, c.behavior, c.behavior_close))
        .collect();
    if failing.is_empty() {
        let _ = writeln!(s, "Cases not passing: none.");
    } else {
        let _ = writeln!(s, "Cases not passing: {}.", failing.join(", "));
    }
    s
}

/// The pinned testsuite version, from the requirements file.
fn testsuite_version(root: &Path) -> Result<String> {
    let reqs = requirements(root)?;
    Ok(reqs
        .lines()
        .find_map(|l| l.trim().strip_prefix("autobahntestsuite=="))
        .unwrap_or("(unpinned)")
        .to_owned())
}

fn requirements(root: &Path) -> Result<String> {
    let path = requirements_path(root);
    std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))
}

fn requirements_path(root: &Path) -> PathBuf {
    root.join("xtask").join("autobahn").join("requirements.txt")
}

/// The Python code that starts `wstest` with the packages in `lib` (as a site directory,
/// so that namespace packages such as `zope` resolve).
fn launcher(lib: &Path) -> String {
    format!(
        "import site, sys; site.addsitedir({:?}); sys.argv[0] = 'wstest'; \
         from autobahntestsuite.wstest import run; run()",
        lib.display().to_string()
    )
}

/// The first Python 2.7 found (see the module docs).
fn python27() -> Result<PathBuf> {
    let mut candidates: Vec<PathBuf> = Vec::new();
    if let Some(p) = std::env::var_os("PYTHON2") {
        candidates.push(PathBuf::from(p));
    }
    candidates.push("python2.7".into());
    candidates.push("python2".into());
    let pyenv = std::env::var_os("PYENV_ROOT")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".pyenv")));
    if let Some(versions) = pyenv.map(|p| p.join("versions")) {
        if let Ok(entries) = std::fs::read_dir(&versions) {
            let mut found: Vec<PathBuf> = entries
                .filter_map(|e| e.ok())
                .filter(|e| e.file_name().to_string_lossy().starts_with("2.7"))
                .map(|e| e.path().join("bin").join("python2.7"))
                .collect();
            found.sort();
            candidates.extend(found.into_iter().rev());
        }
    }
    for c in &candidates {
        let is_27 = Command::new(c)
            .args(["-c", "import sys; sys.exit(sys.version_info[:2] != (2, 7))"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if is_27 {
            return Ok(c.clone());
        }
    }
    bail!(
        "Autobahn|Testsuite needs Python 2.7 and none was found (tried PYTHON2, python2.7 and \
         python2 on the PATH, pyenv's versions 2.7.*): set PYTHON2 to one"
    )
}

/// Installs the pinned testsuite into `target/autobahn/lib` unless the requirements it
/// was installed from are unchanged; returns that folder.
async fn ensure_testsuite(root: &Path, python: &Path) -> Result<PathBuf> {
    let dir = target_dir(root).join("autobahn");
    let lib = dir.join("lib");
    let stamp = dir.join("installed-requirements.txt");
    let reqs = requirements(root)?;
    if lib.is_dir() && std::fs::read_to_string(&stamp).is_ok_and(|s| s == reqs) {
        return Ok(lib);
    }
    step(format!(
        "installing Autobahn|Testsuite ({}) into {}",
        rel(root, &requirements_path(root)),
        rel(root, &lib)
    ));
    if lib.exists() {
        std::fs::remove_dir_all(&lib).with_context(|| format!("removing {}", lib.display()))?;
    }
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let status = run_child(
        tokio::process::Command::new(python)
            .args([
                "-m",
                "pip",
                "install",
                "--quiet",
                "--disable-pip-version-check",
                "--no-warn-script-location",
                "--target",
            ])
            .arg(&lib)
            .arg("-r")
            .arg(requirements_path(root)),
        "pip install",
    )
    .await?;
    if !status.success() {
        bail!("installing Autobahn|Testsuite with pip failed ({status})");
    }
    std::fs::write(&stamp, reqs).with_context(|| format!("writing {}", stamp.display()))?;
    Ok(lib)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn index() -> Value {
        json!({"relaydesk-edge": {
            "9.10.1": {"behavior": "OK", "behaviorClose": "OK", "reportfile": "c"},
            "1.1.1": {"behavior": "OK", "behaviorClose": "OK", "reportfile": "a"},
            "9.2.1": {"behavior": "OK", "behaviorClose": "OK", "reportfile": "b"},
            "6.4.3": {"behavior": "NON-STRICT", "behaviorClose": "OK", "reportfile": "d"},
            "7.1.6": {"behavior": "INFORMATIONAL", "behaviorClose": "INFORMATIONAL", "reportfile": "e"},
            "7.9.1": {"behavior": "OK", "behaviorClose": "WRONG CODE", "reportfile": "f"},
        }})
    }

    #[test]
    fn cases_sort_by_number_and_only_ok_or_informational_pass() {
        let cases = parse_index(&index()).unwrap();
        let ids: Vec<&str> = cases.iter().map(|c| c.id.as_str()).collect();
        assert_eq!(ids, ["1.1.1", "6.4.3", "7.1.6", "7.9.1", "9.2.1", "9.10.1"]);
        let passed: Vec<bool> = cases.iter().map(Case::passed).collect();
        assert_eq!(passed, [true, false, true, false, true, true]);
    }

    #[test]
    fn the_summary_counts_each_case_once_under_its_worse_behaviour() {
        let s = summary(&parse_index(&index()).unwrap(), "1.0");
        assert!(
            s.contains("| 6 UTF-8 handling | 1 | 0 | 0 | 1 | 0 | 0 |"),
            "{s}"
        );
        assert!(
            s.contains("| 7 close handling | 2 | 0 | 1 | 0 | 0 | 1 |"),
            "{s}"
        );
        assert!(
            s.contains("| 9 limits and performance | 2 | 2 | 0 | 0 | 0 | 0 |"),
            "{s}"
        );
        assert!(s.contains("| **all** | **6** | **3** | **1** | **1** | **0** | **1** |"));
        assert!(s.contains("Cases not passing: 6.4.3 (NON-STRICT / close OK), 7.9.1"));
        assert!(s.contains("INFORMATIONAL (recorded, not judged by the suite): 7.1.6."));
    }
}
