//! Relaydesk developer commands, run as `cargo xtask <command>`.
//!
//! - `test`: fmt, clippy and the test suite against private PostgreSQL and Redis instances,
//!   then the WebSocket conformance run, the browser tests and Schemathesis over the HTTP API.
//! - `conformance`: the edge's WebSocket framing against Autobahn|Testsuite (also part of
//!   a full `test`).
//! - `up`: PostgreSQL, Redis, one core-api and two edges for local development.
//! - `down`: stop what `up --detach` started.
//! - `restart-edges`: a rolling restart of the edges `up --detach` started.
//! - `bench`: the standard load suite (`loadtest`), reports in `docs/bench/`.
//! - `bench-fanout`: one edge's fan-out side by side with Bun's pub/sub (`bench/bun/`).
//! - `bench-core`: CPU per persisted message per process (PostgreSQL, Redis, core-api, each
//!   edge) against pgbench's raw insert of message-shaped rows on the same PostgreSQL.
//!
//! Nothing here ever touches a system PostgreSQL or Redis: every instance is private, listens on
//! a free port of 127.0.0.1 and keeps its data under `<workspace>/.relaydesk/`.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::OnceLock;

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::watch;

mod bench;
mod bench_core;
mod bench_fanout;
mod bench_scale;
mod conformance;
mod e2e;
mod schemathesis;
mod services;
mod test;
mod up;

#[derive(Parser)]
#[command(name = "xtask", about = "Relaydesk developer commands")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run fmt, clippy and the workspace tests against private PostgreSQL and Redis instances.
    ///
    /// Arguments after `--` are passed to the test runner (`cargo nextest run --workspace` when
    /// cargo-nextest is installed, `cargo test --workspace` otherwise), or with
    /// `--schema-only` to Schemathesis. The browser tests of the console and the widget,
    /// then Schemathesis over the HTTP API, run after a full suite (not after a filtered
    /// one).
    Test {
        /// Skip `cargo fmt --check` and `cargo clippy`.
        #[arg(long)]
        no_lint: bool,
        /// Run only the browser tests (headless Chromium), not the workspace tests.
        #[arg(long, conflicts_with = "schema_only")]
        browser_only: bool,
        /// Run only Schemathesis over the HTTP API (every credential kind), not the
        /// workspace tests.
        #[arg(long)]
        schema_only: bool,
        /// Extra arguments for the test runner.
        #[arg(last = true)]
        args: Vec<String>,
    },
    /// Play Autobahn|Testsuite's RFC 6455 cases 1-7 and 9 against an edge in echo mode;
    /// fails on any case not OK, and rewrites docs/conformance/summary.md. A full
    /// `cargo xtask test` runs it too.
    Conformance,
    /// Start PostgreSQL, Redis, one core-api and two edges, with a demo tenant and agent.
    Up {
        /// Leave everything running in the background; stop it with `cargo xtask down`.
        #[arg(long)]
        detach: bool,
        /// Edge processes to start (each holds up to 19,000 sockets).
        #[arg(long, default_value_t = 2)]
        edges: usize,
    },
    /// Stop what `cargo xtask up --detach` started.
    Down,
    /// Rolling restart of the edges `cargo xtask up --detach` started: each in turn gets
    /// SIGTERM (drain: 1012 to its clients over its drain window), exits and is started
    /// again on the same port; run it while `loadtest chat` runs to check that clients
    /// reconnect and resume without loss.
    RestartEdges {
        /// Seconds between one edge being ready again and the next one's SIGTERM.
        #[arg(long, default_value_t = 2, value_parser = parse_secs)]
        pause: u64,
    },
    /// Run the standard load suite (about 10 minutes); reports go to docs/bench/ and
    /// docs/benchmarks.md.
    Bench {
        /// Also sustain chat for 5 minutes at 8,000 msg/s and 10 minutes at 2,000 msg/s
        /// (15 minutes more).
        #[arg(long)]
        long: bool,
    },
    /// Hold the most concurrent sockets the machine allows, over as many edge and
    /// loadtest processes as needed; writes docs/bench/scale.md.
    BenchScale {
        #[arg(long, default_value_t = 200_000)]
        connections: usize,
        /// New connections per second, all workers together.
        #[arg(long, default_value_t = 1000.0)]
        rate: f64,
        /// How long to hold them, in seconds.
        #[arg(long, default_value_t = 300, value_parser = parse_secs)]
        hold: u64,
        /// Sockets per loadtest process (each on its own loopback source address).
        #[arg(long, default_value_t = 18_000)]
        per_process: usize,
    },
    /// Compare one edge's fan-out with Bun's built-in pub/sub (bench/bun/), same client,
    /// same run; writes docs/bench/fanout-vs-bun.md.
    BenchFanout {
        /// Subscribers to the one conversation; several (comma-separated) run the whole
        /// set of points for each.
        #[arg(long, value_delimiter = ',', default_value = "10000")]
        subscribers: Vec<usize>,
        /// The saturating rate, msg/s over all publishers (the steady one is 20).
        #[arg(long, default_value_t = 100.0)]
        saturation_rate: f64,
        /// Sending time of each point, in seconds.
        #[arg(long, default_value_t = 10, value_parser = parse_secs)]
        duration: u64,
        /// How long a saturating point waits for its backlog, in seconds.
        #[arg(long, default_value_t = 30, value_parser = parse_secs)]
        saturation_grace: u64,
        /// Subscribers per loadtest process (more are spread over worker processes);
        /// default: half of them, two workers.
        #[arg(long)]
        per_process: Option<usize>,
        /// Size of each message's serialized body.
        #[arg(long, default_value_t = 100)]
        body_bytes: usize,
        /// Subscriber connections opened per second (at 1000/s some hellos to the edge
        /// exceed its 5 s core-api timeout on a busy 2-core machine).
        #[arg(long, default_value_t = 500.0)]
        connect_rate: f64,
        /// Run nothing: rewrite docs/bench/fanout-vs-bun.md from the last run's reports.
        #[arg(long)]
        from_reports: bool,
    },
    /// CPU per persisted message of PostgreSQL, Redis, core-api and each edge under
    /// `loadtest chat` (from /proc), against pgbench's raw batched insert of message-shaped
    /// rows on the same PostgreSQL; writes docs/bench/core.md.
    BenchCore {
        /// Chat's rate, msg/s over its 1,000 conversations.
        #[arg(long, default_value_t = 2000.0)]
        rate: f64,
        /// Chat's sending time, in seconds.
        #[arg(long, default_value_t = 60, value_parser = parse_secs)]
        duration: u64,
        /// pgbench's run time, in seconds.
        #[arg(long, default_value_t = 20, value_parser = parse_secs)]
        insert_duration: u64,
        /// Rows per INSERT of the raw insert (one transaction each), at most 1000.
        #[arg(long, default_value_t = 100)]
        batch_rows: u32,
        /// pgbench's connections.
        #[arg(long, default_value_t = 4)]
        insert_clients: u32,
    },
}

/// Seconds, with an optional `s` suffix.
fn parse_secs(s: &str) -> Result<u64, String> {
    s.trim_end_matches('s')
        .parse()
        .map_err(|_| format!("{s:?}: expected whole seconds, e.g. 10 or 10s"))
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("xtask: error: cannot start the tokio runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        install_signal_handlers()?;
        let root = workspace_root()?;
        match cli.command {
            Command::Test {
                no_lint,
                browser_only,
                schema_only,
                args,
            } => {
                let only = match (browser_only, schema_only) {
                    (true, _) => test::Only::Browser,
                    (_, true) => test::Only::Schema,
                    _ => test::Only::All,
                };
                test::run(&root, no_lint, only, &args).await
            }
            Command::Conformance => conformance::standalone(&root).await,
            Command::Up { detach, edges } => up::up(&root, detach, edges).await,
            Command::Down => up::down(&root).map(|()| 0),
            Command::RestartEdges { pause } => {
                up::restart_edges(&root, std::time::Duration::from_secs(pause)).await
            }
            Command::Bench { long } => bench::run(&root, long).await,
            Command::BenchScale {
                connections,
                rate,
                hold,
                per_process,
            } => {
                let opts = bench_scale::Options {
                    connections,
                    rate,
                    hold: std::time::Duration::from_secs(hold),
                    per_process,
                };
                bench_scale::run(&root, &opts).await
            }
            Command::BenchFanout {
                subscribers,
                saturation_rate,
                duration,
                saturation_grace,
                per_process,
                body_bytes,
                connect_rate,
                from_reports,
            } => {
                let opts = bench_fanout::Options {
                    subscribers,
                    saturation_rate,
                    duration: std::time::Duration::from_secs(duration),
                    saturation_grace: std::time::Duration::from_secs(saturation_grace),
                    per_process,
                    body_bytes,
                    connect_rate,
                    from_reports,
                };
                bench_fanout::run(&root, &opts).await
            }
            Command::BenchCore {
                rate,
                duration,
                insert_duration,
                batch_rows,
                insert_clients,
            } => {
                let opts = bench_core::Options {
                    rate,
                    duration: std::time::Duration::from_secs(duration),
                    insert_duration: std::time::Duration::from_secs(insert_duration),
                    batch_rows,
                    insert_clients,
                };
                bench_core::run(&root, &opts).await
            }
        }
    });
    match result {
        Ok(code) => ExitCode::from(code),
        Err(e) if interrupted().is_some() => {
            eprintln!("xtask: interrupted ({e:#})");
            ExitCode::from(130)
        }
        Err(e) => {
            // The chain without a backtrace (RUST_BACKTRACE would add one to `{:?}`).
            eprintln!("xtask: error: {e}");
            for cause in e.chain().skip(1) {
                eprintln!("  caused by: {cause}");
            }
            ExitCode::FAILURE
        }
    }
}

/// The workspace root: the parent of this crate's manifest directory.
fn workspace_root() -> Result<PathBuf> {
    // `cargo run` sets CARGO_MANIFEST_DIR at run time too; the compile-time value is a fallback
    // for running the binary directly.
    let manifest_dir = std::env::var_os("CARGO_MANIFEST_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")));
    let root = manifest_dir.parent().with_context(|| {
        format!(
            "xtask manifest directory {} has no parent",
            manifest_dir.display()
        )
    })?;
    if !root.join("Cargo.toml").is_file() {
        bail!(
            "{} does not look like the workspace root (no Cargo.toml)",
            root.display()
        );
    }
    Ok(root.to_path_buf())
}

/// The `cargo` that runs us (`CARGO`), so that nested builds use the same toolchain.
fn cargo() -> PathBuf {
    std::env::var_os("CARGO")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("cargo"))
}

/// Prints a progress line.
fn step(msg: impl std::fmt::Display) {
    eprintln!("xtask: {msg}");
}

/// Relative to the workspace root when possible, for shorter messages.
fn rel<'a>(root: &Path, path: &'a Path) -> std::borrow::Cow<'a, str> {
    match path.strip_prefix(root) {
        Ok(p) => std::borrow::Cow::Owned(p.display().to_string()),
        Err(_) => path.to_string_lossy(),
    }
}

// ---- interruption (SIGINT / SIGTERM) ---------------------------------------------------------

/// The signal number that interrupted us, 0 while none has.
static INTERRUPT: OnceLock<watch::Sender<i32>> = OnceLock::new();

/// From now on SIGINT and SIGTERM no longer kill xtask: they are recorded so that every command
/// can stop what it started before exiting.
fn install_signal_handlers() -> Result<()> {
    let mut int = signal(SignalKind::interrupt()).context("installing the SIGINT handler")?;
    let mut term = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
    let tx = INTERRUPT.get_or_init(|| watch::channel(0).0).clone();
    tokio::spawn(async move {
        loop {
            let sig = tokio::select! {
                _ = int.recv() => nix::libc::SIGINT,
                _ = term.recv() => nix::libc::SIGTERM,
            };
            if *tx.borrow() == 0 {
                eprintln!("\nxtask: interrupted, cleaning up...");
                tx.send_replace(sig);
            } else {
                eprintln!("\nxtask: still cleaning up, please wait...");
            }
        }
    });
    Ok(())
}

/// The signal that interrupted us, if any.
fn interrupted() -> Option<i32> {
    INTERRUPT
        .get()
        .map(|tx| *tx.borrow())
        .filter(|&sig| sig != 0)
}

/// Fails if we have been interrupted; call between steps and in polling loops.
fn check_interrupted() -> Result<()> {
    match interrupted() {
        Some(sig) => bail!("interrupted by signal {sig}"),
        None => Ok(()),
    }
}

/// Resolves with the signal number once we are interrupted.
async fn wait_interrupt() -> i32 {
    let Some(tx) = INTERRUPT.get() else {
        return std::future::pending().await;
    };
    let mut rx = tx.subscribe();
    let sig = match rx.wait_for(|&sig| sig != 0).await {
        Ok(sig) => *sig,
        // The sender lives in a static and is never dropped.
        Err(_) => return std::future::pending().await,
    };
    sig
}
