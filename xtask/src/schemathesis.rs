//! The schema stage of `cargo xtask test` (alone: `cargo xtask test --schema-only`):
//! Schemathesis, pinned to [`VERSION`] and installed from PyPI into a venv under
//! `.relaydesk/`, generates requests from core-api's own OpenAPI document
//! (`/v1/openapi.json`) and runs every check it has on the answers — no server error,
//! documented status codes, content types, headers and response schemas, valid data
//! accepted and invalid data refused, missing authentication refused, `Allow` on 405…
//!
//! It runs once per credential kind a client holds (the tenant's API key, an admin
//! agent's session token, a visitor's token), each on a tenant of its own, against one
//! core-api started as a process on the test run's PostgreSQL and Redis. Operations that
//! can revoke the very credential a run uses ([`REVOKING`]: deleting an API key, an
//! agent's role change, password change or deactivation, logout, logout-all; the
//! stateful phase finds the run's own ids in list answers) would turn the rest of that
//! run into 401s, so the API key's and the agent's main runs leave them out and a last
//! run of each does only them (docs/reliability.md, "Schemathesis over the HTTP API").

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use serde_json::{json, Value};

use crate::services::{self, run_child};
use crate::up::{core_command, random_hex, target_dir, Procs};
use crate::{cargo, check_interrupted, rel, step};

/// The Schemathesis release the stage installs (PyPI), the one place it is named.
pub const VERSION: &str = "4.32.5";
/// Test cases per operation and phase.
const MAX_EXAMPLES: u32 = 10;
/// The whole stage (install excluded) must finish within this.
const STAGE_TIMEOUT: Duration = Duration::from_secs(300);
/// A fixed seed, so that a failure found in CI reproduces; `SCHEMATHESIS_SEED` overrides it.
const DEFAULT_SEED: &str = "20261207";
/// Operations that can revoke the credential in use; run last, alone (module doc).
const REVOKING: [&str; 6] = [
    "DELETE /v1/api-keys/{id}",
    "PATCH /v1/agents/{id}",
    "PUT /v1/agents/{id}/password",
    "POST /v1/agents/{id}/deactivate",
    "POST /v1/auth/logout",
    "POST /v1/auth/logout-all",
];

/// One Schemathesis run: a credential and which operations it covers.
struct Run {
    name: &'static str,
    token: String,
    /// `--exclude-name` (or, when `only` is set, `--include-name`) values.
    names: &'static [&'static str],
    only: bool,
}

/// Runs the stage; `Ok(true)` when every run reports no failure.
/// `extra` goes to every `schemathesis run` (e.g. `--include-path-regex '^/v1/agents'`).
pub async fn run(
    root: &Path,
    database_url: &str,
    redis_url: &str,
    keys: &Path,
    extra: &[String],
) -> Result<bool> {
    let schemathesis = ensure_installed(root).await?;
    check_interrupted()?;

    step("building core-api for the schema tests");
    let status = run_child(
        tokio::process::Command::new(cargo())
            .args(["build", "-p", "relaydesk-core", "--bin", "core-api"])
            .current_dir(root),
        "cargo build",
    )
    .await?;
    if !status.success() {
        bail!("`cargo build -p relaydesk-core --bin core-api` failed ({status})");
    }
    let core_bin = target_dir(root).join("debug").join("core-api");

    let out = root
        .join(".relaydesk")
        .join("test")
        .join(format!("schemathesis-{}", std::process::id()));
    std::fs::create_dir_all(&out).with_context(|| format!("creating {}", out.display()))?;
    let operator = format!("schema-operator-{}", random_hex(12));
    let port = services::free_port()?;
    let core_url = format!("http://127.0.0.1:{port}");
    let mut procs = Procs::default();
    let mut core = core_command(&core_bin, port, database_url, redis_url, keys, &operator);
    core.env("RUST_LOG", "warn");
    procs.spawn("schema-core-api", core, &out, port)?;
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .context("building an HTTP client")?;
    for svc in &mut procs.list {
        svc.wait_ready(&http).await?;
    }

    let api_key = new_tenant(&http, &core_url, &operator, "Schema API key")
        .await?
        .api_key;
    let agent = agent_token(&http, &core_url, &operator).await?;
    let visitor = visitor_token(&http, &core_url, &operator).await?;
    let runs = [
        Run {
            name: "api-key",
            token: api_key.clone(),
            names: &REVOKING,
            only: false,
        },
        Run {
            name: "agent",
            token: agent.clone(),
            names: &REVOKING,
            only: false,
        },
        // A visitor revokes nothing: it meets every operation.
        Run {
            name: "visitor",
            token: visitor,
            names: &[],
            only: false,
        },
        Run {
            name: "api-key-revoking",
            token: api_key,
            names: &REVOKING,
            only: true,
        },
        Run {
            name: "agent-revoking",
            token: agent,
            names: &REVOKING,
            only: true,
        },
    ];

    let seed = std::env::var("SCHEMATHESIS_SEED").unwrap_or_else(|_| DEFAULT_SEED.to_string());
    let schema_url = format!("{core_url}/v1/openapi.json");
    let deadline = Instant::now() + STAGE_TIMEOUT;
    let mut failed = Vec::new();
    for run in &runs {
        check_interrupted()?;
        let dir = out.join(run.name);
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        let mut cmd = tokio::process::Command::new(&schemathesis);
        cmd.current_dir(&dir)
            .arg("--config-file")
            .arg(root.join("xtask").join("schemathesis.toml"))
            .args(["run", &schema_url, "--checks", "all", "--no-color"])
            .arg(format!("--max-examples={MAX_EXAMPLES}"))
            .arg(format!("--seed={seed}"))
            // NUL is refused in every string (`shared::input`, tested route by route in
            // `core-api/tests/bad_input.rs`); the document cannot say so of each string.
            .args(["--generation-allow-x00", "false"])
            .args(["--generation-database", "none", "--workers", "2"])
            .args(["--request-timeout", "10", "--report", "junit,ndjson"])
            .arg("--report-dir")
            .arg(&dir)
            .arg("--header")
            .arg(format!("Authorization: Bearer {}", run.token));
        let filter = if run.only {
            "--include-name"
        } else {
            "--exclude-name"
        };
        for name in run.names {
            cmd.args([filter, name]);
        }
        cmd.args(extra);
        step(format!(
            "running Schemathesis {VERSION} as the {} (report: {})",
            run.name,
            rel(root, &dir)
        ));
        let left = deadline.saturating_duration_since(Instant::now());
        let status = match tokio::time::timeout(left, run_child(&mut cmd, "schemathesis")).await {
            Ok(status) => status?,
            Err(_) => {
                eprintln!(
                    "xtask: the schema tests did not finish within {} s",
                    STAGE_TIMEOUT.as_secs()
                );
                failed.push(run.name);
                break;
            }
        };
        if !status.success() {
            failed.push(run.name);
        }
    }
    drop(procs);
    if failed.is_empty() {
        step(format!(
            "schema tests passed; reports in {}",
            rel(root, &out)
        ));
    } else {
        eprintln!(
            "xtask: schema tests failed as {} (seed {seed}); reports and the server log in {}",
            failed.join(", "),
            rel(root, &out)
        );
    }
    Ok(failed.is_empty())
}

/// The venv's `schemathesis`, installing [`VERSION`] first when it is not there.
async fn ensure_installed(root: &Path) -> Result<PathBuf> {
    let venv = root
        .join(".relaydesk")
        .join(format!("schemathesis-{VERSION}"));
    let bin = venv.join("bin").join("schemathesis");
    if bin.is_file() {
        return Ok(bin);
    }
    let python = ["python3.11", "python3"]
        .into_iter()
        .find(|p| {
            std::process::Command::new(p)
                .arg("--version")
                .stdout(std::process::Stdio::null())
                .status()
                .is_ok_and(|s| s.success())
        })
        .context("Python 3 is needed for the schema tests (python3.11 or python3)")?;
    step(format!(
        "installing Schemathesis {VERSION} into {} ({python} -m venv, pip)",
        rel(root, &venv)
    ));
    let status = run_child(
        tokio::process::Command::new(python)
            .args(["-m", "venv"])
            .arg(&venv),
        "python -m venv",
    )
    .await?;
    if !status.success() {
        bail!("`{python} -m venv {}` failed ({status})", venv.display());
    }
    let status = run_child(
        tokio::process::Command::new(venv.join("bin").join("pip"))
            .args(["install", "--quiet", "--disable-pip-version-check"])
            .arg(format!("schemathesis=={VERSION}")),
        "pip install",
    )
    .await?;
    if !status.success() || !bin.is_file() {
        // A half-made venv would be taken for a good one next time.
        let _ = std::fs::remove_dir_all(&venv);
        bail!("`pip install schemathesis=={VERSION}` failed ({status})");
    }
    Ok(bin)
}

struct NewTenant {
    api_key: String,
    site_key: String,
    id: String,
}

async fn new_tenant(
    http: &reqwest::Client,
    core: &str,
    operator: &str,
    name: &str,
) -> Result<NewTenant> {
    let tenant = post(http, core, "/v1/tenants", operator, json!({"name": name})).await?;
    let field = |v: &Value| v.as_str().unwrap_or_default().to_owned();
    Ok(NewTenant {
        api_key: field(&tenant["api_key"]),
        site_key: field(&tenant["tenant"]["site_key"]),
        id: field(&tenant["tenant"]["id"]),
    })
}

/// An admin agent's session token, on a tenant of its own.
async fn agent_token(http: &reqwest::Client, core: &str, operator: &str) -> Result<String> {
    let tenant = new_tenant(http, core, operator, "Schema agent").await?;
    let password = random_hex(10);
    let email = "admin@schema.test";
    post(
        http,
        core,
        "/v1/agents",
        &tenant.api_key,
        json!({"name": "Ada Admin", "email": email, "password": password, "role": "admin"}),
    )
    .await?;
    let login = post(
        http,
        core,
        "/v1/auth/login",
        "",
        json!({"tenant": tenant.id, "email": email, "password": password}),
    )
    .await?;
    Ok(login["token"].as_str().unwrap_or_default().to_owned())
}

/// A visitor's token from a widget session, on a tenant of its own.
async fn visitor_token(http: &reqwest::Client, core: &str, operator: &str) -> Result<String> {
    let tenant = new_tenant(http, core, operator, "Schema visitor").await?;
    let session = post(
        http,
        core,
        "/v1/widget/sessions",
        "",
        json!({"site_key": tenant.site_key}),
    )
    .await?;
    Ok(session["token"].as_str().unwrap_or_default().to_owned())
}

/// POSTs `body` (with a bearer token unless `bearer` is empty); the answer's JSON.
async fn post(
    http: &reqwest::Client,
    core: &str,
    path: &str,
    bearer: &str,
    body: Value,
) -> Result<Value> {
    let mut req = http.post(format!("{core}{path}")).json(&body);
    if !bearer.is_empty() {
        req = req.bearer_auth(bearer);
    }
    req.send()
        .await
        .and_then(reqwest::Response::error_for_status)
        .with_context(|| format!("POST {path}"))?
        .json()
        .await
        .with_context(|| format!("POST {path}: reading the answer"))
}
