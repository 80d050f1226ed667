//! `cargo xtask test`: lints, then the workspace tests against private PostgreSQL and Redis
//! instances in `.relaydesk/test/<pid>/` (one folder per run, so runs in one checkout
//! never share instances; always stopped at the end, removed when the tests pass), then
//! the RFC 6455 conformance run of an edge in echo mode (`conformance`), the browser tests
//! of the console and the widget (`e2e`) and Schemathesis over the HTTP API
//! (`schemathesis`) on the same instances.

use std::path::Path;

use anyhow::{Context, Result};

use crate::services::{self, exit_code, run_child, PgMode, Postgres, Redis};
use crate::{cargo, check_interrupted, rel, step};

/// Returns the exit code of the first failing step, else the test runner's.
pub async fn run(root: &Path, no_lint: bool, only: Only, extra: &[String]) -> Result<u8> {
    let inst = services::ensure_installed()?;
    check_interrupted()?;

    // Lints need no services: fail fast before starting any.
    if !no_lint {
        let status = cargo_step(root, &["fmt", "--all", "--", "--check"]).await?;
        if !status.success() {
            eprintln!("xtask: `cargo fmt --all -- --check` failed; run `cargo fmt --all`");
            return Ok(exit_code(status));
        }
        check_interrupted()?;
        let status = cargo_step(
            root,
            &[
                "clippy",
                "--workspace",
                "--all-targets",
                "--",
                "-D",
                "warnings",
            ],
        )
        .await?;
        if !status.success() {
            eprintln!("xtask: clippy failed");
            return Ok(exit_code(status));
        }
        check_interrupted()?;
    }

    let base = root
        .join(".relaydesk")
        .join("test")
        .join(std::process::id().to_string());
    std::fs::create_dir_all(&base).with_context(|| format!("creating {}", base.display()))?;
    // Both stop when dropped: on success, on error and on interruption.
    let mut pg = Postgres::start(&inst, &base, PgMode::Ephemeral)?;
    let mut redis = Redis::start(&inst, &base.join("redis"), true)?;

    pg.ensure_database("relaydesk").await?;
    let owner_url = pg.url("postgres", "relaydesk");
    step("applying migrations");
    relaydesk_core::db::migrate(&owner_url)
        .await
        .with_context(|| format!("applying migrations to {owner_url}"))?;
    check_interrupted()?;

    let keys = base.join("keys");
    write_keypair(&keys, true)?;

    let runner = if nextest_available().await {
        "nextest"
    } else {
        "test"
    };
    let mut args: Vec<&str> = match runner {
        "nextest" => vec!["nextest", "run", "--workspace"],
        _ => vec!["test", "--workspace"],
    };
    args.extend(extra.iter().map(String::as_str));
    check_interrupted()?;
    let status = if only != Only::All {
        std::process::ExitStatus::default()
    } else {
        step(format!("running cargo {}", args.join(" ")));
        run_child(
            tokio::process::Command::new(cargo())
                .args(&args)
                .current_dir(root)
                .env(
                    "RELAYDESK_TEST_DATABASE_URL",
                    pg.url("relaydesk_app", "relaydesk"),
                )
                .env("RELAYDESK_TEST_ADMIN_DATABASE_URL", &owner_url)
                .env("RELAYDESK_TEST_REDIS_URL", redis.url())
                .env("RELAYDESK_TEST_KEYS_DIR", &keys),
            &format!("cargo {runner}"),
        )
        .await?
    };

    // The conformance, browser and schema stages need the suite's services; they run once
    // the suite has passed, after a full suite (not after a filtered one), or alone.
    let full = only == Only::All && extra.is_empty();
    let (app_url, redis_url) = (pg.url("relaydesk_app", "relaydesk"), redis.url());
    let status = if full && status.success() {
        stage(
            "conformance",
            crate::conformance::run(root, &redis_url, &keys),
        )
        .await
    } else {
        status
    };
    let status = if (full || only == Only::Browser) && status.success() {
        stage(
            "browser tests",
            crate::e2e::run(root, &app_url, &redis_url, &keys),
        )
        .await
    } else {
        status
    };
    let status = if (full || only == Only::Schema) && status.success() {
        // Alone, the arguments after `--` are Schemathesis's.
        let args = if only == Only::Schema { extra } else { &[] };
        let schema = crate::schemathesis::run(root, &app_url, &redis_url, &keys, args);
        stage("schema tests", schema).await
    } else {
        status
    };

    let redis_stopped = redis.stop();
    let stopped = pg.stop().and(redis_stopped);
    if status.success() {
        stopped?;
        step("tests passed");
        if let Err(e) = std::fs::remove_dir_all(&base) {
            eprintln!("xtask: could not remove {}: {e}", rel(root, &base));
        }
    } else {
        if let Err(e) = stopped {
            eprintln!("xtask: {e:#}");
        }
        let why = match crate::interrupted() {
            Some(_) => "interrupted".to_string(),
            None => format!("tests failed ({status})"),
        };
        eprintln!("xtask: {why}; service logs are in {}", rel(root, &base));
    }
    Ok(exit_code(status))
}

/// Which part of the tests to run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Only {
    /// The workspace tests, then (unless filtered) the browser and schema stages.
    All,
    /// Just the browser tests.
    Browser,
    /// Just Schemathesis over the HTTP API.
    Schema,
}

/// Runs a stage after the workspace tests unless interrupted; its outcome as a status.
async fn stage(
    what: &str,
    run: impl std::future::Future<Output = Result<bool>>,
) -> std::process::ExitStatus {
    if crate::interrupted().is_some() {
        return failed_status();
    }
    match run.await {
        Ok(true) => std::process::ExitStatus::default(),
        Ok(false) => failed_status(),
        Err(e) => {
            eprintln!("xtask: {what}: {e:#}");
            failed_status()
        }
    }
}

/// An exit status that is a failure (exit code 1).
fn failed_status() -> std::process::ExitStatus {
    use std::os::unix::process::ExitStatusExt;
    std::process::ExitStatus::from_raw(1 << 8)
}

async fn cargo_step(root: &Path, args: &[&str]) -> Result<std::process::ExitStatus> {
    step(format!("running cargo {}", args.join(" ")));
    run_child(
        tokio::process::Command::new(cargo())
            .args(args)
            .current_dir(root),
        &format!("cargo {}", args[0]),
    )
    .await
}

async fn nextest_available() -> bool {
    tokio::process::Command::new(cargo())
        .args(["nextest", "--version"])
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .await
        .is_ok_and(|s| s.success())
}

/// Writes a fresh Ed25519 key pair as `signing.pem` (PKCS#8, mode 600) and `public.pem` (SPKI)
/// into `dir`; with `overwrite` false, keeps a complete existing pair.
pub fn write_keypair(dir: &Path, overwrite: bool) -> Result<()> {
    let signing = dir.join("signing.pem");
    let public = dir.join("public.pem");
    if !overwrite && signing.is_file() && public.is_file() {
        return Ok(());
    }
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let (private_pem, public_pem) =
        relaydesk_shared::token::generate_keypair().context("generating an Ed25519 key pair")?;
    write_private(&signing, private_pem.as_bytes())?;
    std::fs::write(&public, public_pem).with_context(|| format!("writing {}", public.display()))?;
    step(format!("wrote a new Ed25519 key pair in {}", dir.display()));
    Ok(())
}

/// Writes a file readable by its owner only.
pub fn write_private(path: &Path, contents: &[u8]) -> Result<()> {
    use std::io::Write;
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("creating {}", path.display()))?;
    // An existing file keeps its mode through `open`: tighten it.
    file.set_permissions(std::fs::Permissions::from_mode(0o600))
        .with_context(|| format!("setting permissions of {}", path.display()))?;
    file.write_all(contents)
        .with_context(|| format!("writing {}", path.display()))
}
