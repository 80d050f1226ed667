//! The browser end-to-end stage of `cargo xtask test`: the agent console and the visitor
//! widget driven in headless Chromium (Debian's `chromium`, through `playwright-core`
//! from npm) against a real stack — core-api and two edges as processes, on the test
//! run's PostgreSQL and Redis — so that an edge can be killed (SIGKILL) mid-conversation.
//!
//! The script (`e2e/browser.mjs`) asks for a kill by printing `KILL <edge ws url>` on its
//! stdout and waits for `KILLED` on its stdin. The client library's unit tests
//! (`node --test web/client/`) run first. Installs what is missing first: the
//! `chromium` package (apt, as root) and `e2e/node_modules` (`npm ci`, from the lockfile).

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use nix::sys::signal::Signal;
use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

use crate::services::{self, run_child, send_signal};
use crate::up::{core_command, edge_command, target_dir, Procs};
use crate::{cargo, check_interrupted, step};

/// Where Debian puts Chromium.
const CHROMIUM: &str = "/usr/bin/chromium";
/// The whole browser scenario must finish within this.
const SCENARIO_TIMEOUT: Duration = Duration::from_secs(300);

/// Runs the browser tests; `Ok(true)` when they pass.
pub async fn run(root: &Path, database_url: &str, redis_url: &str, keys: &Path) -> Result<bool> {
    ensure_chromium()?;
    ensure_node_modules(root).await?;
    check_interrupted()?;

    step("running the client library's unit tests (node --test web/client/)");
    let status = run_child(
        tokio::process::Command::new("node")
            .args(["--test", "web/client/"])
            .current_dir(root),
        "node --test",
    )
    .await?;
    if !status.success() {
        eprintln!("xtask: the client library's unit tests failed ({status})");
        return Ok(false);
    }
    check_interrupted()?;

    step("building core-api and edge for the browser tests");
    let status = run_child(
        tokio::process::Command::new(cargo())
            .args(["build", "-p", "relaydesk-core", "-p", "relaydesk-edge"])
            .current_dir(root),
        "cargo build",
    )
    .await?;
    if !status.success() {
        bail!("`cargo build -p relaydesk-core -p relaydesk-edge` failed ({status})");
    }
    let debug = target_dir(root).join("debug");
    let (core_bin, edge_bin) = (debug.join("core-api"), debug.join("edge"));

    let logs = root
        .join(".relaydesk")
        .join("test")
        .join(format!("e2e-{}", std::process::id()));
    std::fs::create_dir_all(&logs).with_context(|| format!("creating {}", logs.display()))?;
    let operator = format!("e2e-operator-{}", crate::up::random_hex(12));
    let core_port = services::free_port()?;
    let edge_ports = [services::free_port()?, services::free_port()?];
    let core_url = format!("http://127.0.0.1:{core_port}");
    let edge_ws: Vec<String> = edge_ports
        .iter()
        .map(|p| format!("ws://127.0.0.1:{p}/v1/ws"))
        .collect();

    let mut procs = Procs::default();
    let mut core = core_command(
        &core_bin,
        core_port,
        database_url,
        redis_url,
        keys,
        &operator,
    );
    core.env("EDGE_URLS", edge_ws.join(" "))
        .env("RUST_LOG", "info");
    procs.spawn("e2e-core-api", core, &logs, core_port)?;
    for (i, port) in edge_ports.iter().enumerate() {
        let mut edge = edge_command(&edge_bin, *port, redis_url, keys);
        // A killed edge's clients must reconnect quickly: short heartbeats.
        edge.env("HEARTBEAT_MS", "5000");
        procs.spawn(&format!("e2e-edge-{}", i + 1), edge, &logs, *port)?;
    }
    let http = procs.wait_all_ready().await?;

    let setup = setup_tenant(&http, &core_url, &operator).await?;
    let shots = root.join("docs").join("screenshots");
    std::fs::create_dir_all(&shots).with_context(|| format!("creating {}", shots.display()))?;

    step("running the browser tests (node e2e/browser.mjs)");
    let mut node = tokio::process::Command::new("node")
        .arg("browser.mjs")
        .current_dir(root.join("e2e"))
        .env("CORE_URL", &core_url)
        .env("EDGE_URLS", edge_ws.join(" "))
        .env("CHROMIUM", CHROMIUM)
        .env("SCREENSHOTS", &shots)
        .env("SETUP", setup.to_string())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .context("starting node (is Node.js installed?)")?;
    let stdout = node.stdout.take().ok_or_else(|| anyhow!("no stdout"))?;
    let mut stdin = node.stdin.take().ok_or_else(|| anyhow!("no stdin"))?;
    let mut lines = BufReader::new(stdout).lines();
    let scenario = async {
        while let Some(line) = lines.next_line().await? {
            match line.strip_prefix("KILL ") {
                Some(url) => {
                    let i = edge_ws
                        .iter()
                        .position(|u| u == url.trim())
                        .ok_or_else(|| anyhow!("asked to kill an unknown edge {url}"))?;
                    let svc = &mut procs.list[1 + i];
                    let pid = i32::try_from(svc.child.id()).context("pid")?;
                    step(format!("killing {} (SIGKILL, pid {pid})", svc.name));
                    send_signal(pid, Signal::SIGKILL)?;
                    let _ = svc.child.wait();
                    stdin.write_all(b"KILLED\n").await?;
                    stdin.flush().await?;
                }
                None => println!("{line}"),
            }
        }
        node.wait().await.context("waiting for node")
    };
    let status = match tokio::time::timeout(SCENARIO_TIMEOUT, scenario).await {
        Ok(status) => status?,
        Err(_) => bail!(
            "the browser tests did not finish within {} s",
            SCENARIO_TIMEOUT.as_secs()
        ),
    };
    drop(procs);
    if status.success() {
        step(format!(
            "browser tests passed; screenshots in {}",
            shots.display()
        ));
    } else {
        eprintln!(
            "xtask: browser tests failed ({status}); server logs in {}",
            logs.display()
        );
    }
    Ok(status.success())
}

/// A tenant, an agent who logs into the console, and the API key for checks.
async fn setup_tenant(http: &reqwest::Client, core: &str, operator: &str) -> Result<Value> {
    let post = |path: &str, bearer: &str, body: Value| {
        http.post(format!("{core}{path}"))
            .bearer_auth(bearer)
            .json(&body)
            .send()
    };
    let tenant: Value = post("/v1/tenants", operator, json!({"name": "Acme Store"}))
        .await?
        .error_for_status()?
        .json()
        .await?;
    let api_key = tenant["api_key"].as_str().unwrap_or_default().to_owned();
    let password = crate::up::random_hex(10);
    let agent: Value = post(
        "/v1/agents",
        &api_key,
        json!({"name": "Ann Agent", "email": "ann@acme.test", "password": password,
               "role": "supervisor", "kind": "human", "max_concurrent": 5}),
    )
    .await?
    .error_for_status()?
    .json()
    .await?;
    Ok(json!({
        "tenant_id": tenant["tenant"]["id"],
        "site_key": tenant["tenant"]["site_key"],
        "api_key": api_key,
        "agent_id": agent["agent"]["id"],
        "agent_email": "ann@acme.test",
        "agent_password": password,
    }))
}

fn ensure_chromium() -> Result<()> {
    if Path::new(CHROMIUM).is_file() {
        return Ok(());
    }
    if !services::is_root() {
        bail!("{CHROMIUM} is missing: install it with `sudo apt-get install -y chromium`");
    }
    step("installing chromium (apt-get install -y chromium)");
    let status = Command::new("apt-get")
        .args(["install", "-y", "chromium"])
        .env("DEBIAN_FRONTEND", "noninteractive")
        .stdin(Stdio::null())
        .status()
        .context("running apt-get")?;
    if !status.success() {
        // A fresh machine may need the package lists first.
        let updated = Command::new("apt-get")
            .arg("update")
            .stdin(Stdio::null())
            .status()
            .context("running apt-get update")?;
        let again = Command::new("apt-get")
            .args(["install", "-y", "chromium"])
            .env("DEBIAN_FRONTEND", "noninteractive")
            .stdin(Stdio::null())
            .status()
            .context("running apt-get")?;
        if !updated.success() || !again.success() {
            bail!("`apt-get install -y chromium` failed ({again})");
        }
    }
    Ok(())
}

async fn ensure_node_modules(root: &Path) -> Result<()> {
    let dir: PathBuf = root.join("e2e");
    if dir.join("node_modules").join("playwright-core").is_dir() {
        return Ok(());
    }
    step("installing the browser test's npm packages (npm ci in e2e/)");
    let status = run_child(
        tokio::process::Command::new("npm")
            .args(["ci", "--no-audit", "--no-fund"])
            .current_dir(&dir),
        "npm ci",
    )
    .await?;
    if !status.success() {
        bail!("`npm ci` in e2e/ failed ({status})");
    }
    Ok(())
}
