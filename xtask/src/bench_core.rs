//! `cargo xtask bench-core`: the CPU the persisted message path spends per message, process
//! by process, next to what the same PostgreSQL spends inserting message-shaped rows raw.
//!
//! 1. Against the running stack or one it starts ([`bench::Stack`]), `loadtest chat
//!    --conversations 1000 --rate R --duration D`, while a sampler reads every 200 ms the
//!    CPU of PostgreSQL (the postmaster and every child), Redis, core-api and each edge from
//!    `/proc/<pid>/stat`: utime + stime + cutime + cstime, so that a backend that exits is
//!    still counted, in its postmaster's cutime. The figures cover chat's own window (its
//!    report's `stage_span`: from just before the first send to after the last delivery),
//!    interpolated between samples, per message persisted in that window (the report's
//!    `persisted_in_window`); the whole chat run, creating its world included, is beside.
//! 2. On the same PostgreSQL in the same run, pgbench inserts message-shaped rows (the
//!    columns of `messages`) in batches (`INSERT … SELECT … FROM generate_series`) into a
//!    scratch table `bench_messages`, created `LIKE messages INCLUDING DEFAULTS INCLUDING
//!    INDEXES` (so with the same primary key and unique index, without the foreign key and
//!    row-level security) and dropped at the end; PostgreSQL's CPU per inserted row is
//!    measured the same way.
//! 3. Writes `docs/bench/core.md` (chat's report goes to `docs/bench/core/`): µs of CPU per
//!    persisted message per process, the raw insert's µs per row, and their ratio.
//!
//! PostgreSQL's settings are left as they are (`synchronous_commit` and `fsync` on).

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context, Result};
use serde_json::Value;
use tokio::sync::watch;

use crate::bench::{self, Run};
use crate::services::{self, run_child};
use crate::{check_interrupted, rel, step};
use loadtest::machine::{machine_ticks, ProcStat};

/// The knobs of `cargo xtask bench-core`.
#[derive(Debug, Clone)]
pub struct Options {
    /// Chat's rate, msg/s over its 1,000 conversations.
    pub rate: f64,
    /// Chat's sending time.
    pub duration: Duration,
    /// pgbench's run time.
    pub insert_duration: Duration,
    /// Rows per INSERT (one transaction each).
    pub batch_rows: u32,
    /// pgbench's connections.
    pub insert_clients: u32,
}

/// Chat's conversations.
const CONVERSATIONS: usize = 1000;
/// How often the sampler reads `/proc`.
const SAMPLE_EVERY: Duration = Duration::from_millis(200);
/// The scratch table (and its batch sequence) of the raw insert.
const TABLE: &str = "bench_messages";

pub async fn run(root: &Path, opts: &Options) -> Result<u8> {
    if opts.rate <= 0.0 || opts.duration.is_zero() || opts.insert_duration.is_zero() {
        bail!("--rate, --duration and --insert-duration must be positive");
    }
    if !(1..=1000).contains(&opts.batch_rows) || opts.insert_clients == 0 {
        bail!("--batch-rows must be 1–1000 and --insert-clients at least 1");
    }
    let stack = bench::Stack::use_or_start(root, 2).await?;
    let result = measure(root, &stack.env_file, opts).await;
    stack.stop_if_started(root);
    result.map(|_| 0)
}

impl Default for Options {
    fn default() -> Self {
        Options {
            rate: 2000.0,
            duration: Duration::from_secs(60),
            insert_duration: Duration::from_secs(20),
            batch_rows: 100,
            insert_clients: 4,
        }
    }
}

/// What `cargo xtask bench` shows of a bench-core run.
pub(crate) struct Summary {
    /// The command that reproduces the run.
    pub(crate) command: String,
    pub(crate) messages: u64,
    /// (process, µs of CPU per persisted message over chat's window).
    pub(crate) per_message: Vec<(String, Option<f64>)>,
    /// PostgreSQL's µs of CPU per row of the raw insert.
    pub(crate) raw_us: Option<f64>,
    /// Chat's report (latency, loss, timeline).
    pub(crate) report: Value,
}

/// Measures against the stack of `env_file` and writes `docs/bench/core.md`.
pub(crate) async fn measure(root: &Path, env_file: &Path, opts: &Options) -> Result<Summary> {
    let bin = bench::build_loadtest(root).await?;
    let pgbench = find_pgbench()?;
    let out = root.join("docs").join("bench").join("core");
    std::fs::create_dir_all(&out).with_context(|| format!("creating {}", out.display()))?;
    let work = root.join(".relaydesk").join("bench-core");
    std::fs::create_dir_all(&work).with_context(|| format!("creating {}", work.display()))?;
    let stack = Processes::of_stack(root, env_file)?;
    step(format!(
        "measuring {}",
        stack
            .list
            .iter()
            .map(|p| format!("{} (pid {})", p.name, p.pid))
            .collect::<Vec<_>>()
            .join(", ")
    ));
    let pg_children = children(stack.list[0].pid).len();

    // 1. The message path.
    let sampler = Sampler::start(&stack);
    let chat = bench::one(
        root,
        &bin,
        &out,
        "chat",
        bench::args(&format!(
            "chat --env {} --conversations {CONVERSATIONS} --rate {} --duration {}s",
            rel(root, env_file),
            opts.rate,
            opts.duration.as_secs()
        )),
    )
    .await;
    let samples = sampler.finish().await;
    let (chat_run, report) = chat?;
    let Some(report) = report else {
        bail!("loadtest chat wrote no report");
    };
    let path = PathCost::of(&stack, &samples, &report)?;
    check_interrupted()?;

    // 2. The raw insert, on the same PostgreSQL.
    let raw = raw_insert(root, &work, &pgbench, &stack, opts).await?;

    // 3. The page.
    let page = Page {
        opts: opts.clone(),
        machine: bench::machine(&report),
        chat: chat_run,
        report,
        processes: stack.list.iter().map(|p| p.name.clone()).collect(),
        pg_children,
        path,
        raw,
    };
    let md = root.join("docs").join("bench").join("core.md");
    std::fs::write(&md, page.markdown()).with_context(|| format!("writing {}", md.display()))?;
    print!("{}", page.summary());
    step(format!("wrote {}", rel(root, &md)));
    let n = page.path.messages;
    let mut per_message: Vec<(String, Option<f64>)> = page
        .processes
        .iter()
        .zip(&page.path.cpu)
        .map(|(name, c)| (name.clone(), c.window_s.and_then(|s| per(s, n))))
        .collect();
    per_message.push((
        "whole path".to_owned(),
        page.path.total_window_s().and_then(|s| per(s, n)),
    ));
    Ok(Summary {
        command: page.bench_command(),
        messages: n,
        per_message,
        raw_us: page.raw.us_per_row(),
        report: page.report,
    })
}

/// pgbench, next to the server binaries (Debian: postgresql-client), else on PATH.
fn find_pgbench() -> Result<PathBuf> {
    let beside = services::find_installation().map(|i| i.pg_bin.join("pgbench"));
    if let Some(p) = beside.filter(|p| p.is_file()) {
        return Ok(p);
    }
    std::env::var_os("PATH")
        .and_then(|path| {
            std::env::split_paths(&path)
                .map(|d| d.join("pgbench"))
                .find(|p| p.is_file())
        })
        .context("pgbench not found (Debian: apt-get install postgresql-client postgresql-contrib)")
}

// ---- CPU from /proc ---------------------------------------------------------------------------

/// The children of `pid`: from `/proc/<pid>/task/<tid>/children` of each of its threads,
/// else (a kernel without that file) from a scan of `/proc`.
fn children(pid: u32) -> Vec<u32> {
    if Path::new(&format!("/proc/{pid}/task/{pid}/children")).exists() {
        return std::fs::read_dir(format!("/proc/{pid}/task"))
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|t| std::fs::read_to_string(t.path().join("children")).ok())
            .flat_map(|text| {
                text.split_whitespace()
                    .filter_map(|c| c.parse().ok())
                    .collect::<Vec<u32>>()
            })
            .collect();
    }
    std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|&c| ProcStat::read(c).is_some_and(|s| s.ppid == pid))
        .collect()
}

/// One measured process: alone, or with all its children (PostgreSQL).
#[derive(Debug, Clone)]
struct Process {
    name: String,
    pid: u32,
    tree: bool,
}

impl Process {
    /// Its cumulative CPU seconds now; `None` once it is gone.
    fn cpu_s(&self) -> Option<f64> {
        if !self.tree {
            return ProcStat::read(self.pid).map(|s| s.with_children_seconds());
        }
        // Children first: one that exits meanwhile is then in the postmaster's cutime.
        let kids: f64 = children(self.pid)
            .into_iter()
            .filter_map(ProcStat::read)
            .map(|s| s.with_children_seconds())
            .sum();
        Some(ProcStat::read(self.pid)?.with_children_seconds() + kids)
    }
}

/// The stack's processes, PostgreSQL first, then Redis, core-api and the edges in the
/// order of `EDGE_URLS`; and where its PostgreSQL listens.
struct Processes {
    list: Vec<Process>,
    pg_port: u16,
    /// Each edge's WebSocket URL, in the order of the edges in `list`.
    edge_urls: Vec<String>,
}

impl Processes {
    /// From `.relaydesk/dev/pids` (what `cargo xtask up --detach` wrote).
    fn of_stack(root: &Path, env_file: &Path) -> Result<Processes> {
        let state = bench::dev_state(root);
        let get = |k: &str| {
            state
                .iter()
                .find(|(key, _)| key == k)
                .map(|(_, v)| v.as_str())
        };
        let pid = |k: &str| -> Result<u32> {
            get(k)
                .and_then(|v| v.parse().ok())
                .with_context(|| format!("no {k} pid in .relaydesk/dev/pids"))
        };
        let pg_data = get("pg_data").context("no pg_data in .relaydesk/dev/pids")?;
        let postmaster = services::running_postmaster(Path::new(pg_data))
            .and_then(|p| u32::try_from(p).ok())
            .with_context(|| format!("no PostgreSQL running on {pg_data}"))?;
        let pg_port = get("pg_port")
            .and_then(|p| p.parse().ok())
            .context("no pg_port in .relaydesk/dev/pids")?;
        let mut list = vec![
            Process {
                name: "PostgreSQL".into(),
                pid: postmaster,
                tree: true,
            },
            Process {
                name: "Redis".into(),
                pid: pid("redis")?,
                tree: false,
            },
            Process {
                name: "core-api".into(),
                pid: pid("core-api")?,
                tree: false,
            },
        ];
        let edge_urls: Vec<String> = bench::env_value(env_file, "EDGE_URLS")
            .unwrap_or_default()
            .split_whitespace()
            .map(str::to_owned)
            .collect();
        for (i, p) in bench::edge_pids(root).iter().enumerate() {
            list.push(Process {
                name: format!("edge-{}", i + 1),
                pid: p.parse().with_context(|| format!("edge pid {p:?}"))?,
                tree: false,
            });
        }
        Ok(Processes {
            list,
            pg_port,
            edge_urls,
        })
    }
}

fn unix_now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

/// Every process's cumulative CPU seconds and the machine's (busy, total) ticks at `t`
/// (Unix seconds).
#[derive(Debug, Clone, Default)]
struct Sample {
    t: f64,
    cpu: Vec<Option<f64>>,
    machine: Option<(u64, u64)>,
}

fn sample(procs: &[Process]) -> Sample {
    Sample {
        t: unix_now(),
        cpu: procs.iter().map(Process::cpu_s).collect(),
        machine: machine_ticks(),
    }
}

/// Samples the processes every [`SAMPLE_EVERY`] until finished (once more then).
struct Sampler {
    stop: watch::Sender<bool>,
    task: tokio::task::JoinHandle<Vec<Sample>>,
}

impl Sampler {
    fn start(procs: &Processes) -> Sampler {
        let list = procs.list.clone();
        let (stop, mut stopped) = watch::channel(false);
        let task = tokio::spawn(async move {
            let mut out = vec![sample(&list)];
            loop {
                tokio::select! {
                    _ = tokio::time::sleep(SAMPLE_EVERY) => out.push(sample(&list)),
                    _ = stopped.wait_for(|s| *s) => break,
                }
            }
            out.push(sample(&list));
            out
        });
        Sampler { stop, task }
    }

    async fn finish(self) -> Vec<Sample> {
        self.stop.send_replace(true);
        self.task.await.unwrap_or_default()
    }
}

/// The value of a cumulative series at `t`, linearly interpolated between the samples
/// around it (the first or last sample outside them); `None` when one of those is missing.
fn at(series: &[(f64, Option<f64>)], t: f64) -> Option<f64> {
    let after = series.iter().position(|(ts, _)| *ts >= t);
    let (i, j) = match after {
        Some(0) => (0, 0),
        Some(j) => (j - 1, j),
        None => (series.len().checked_sub(1)?, series.len() - 1),
    };
    let ((t0, v0), (t1, v1)) = (series[i], series[j]);
    let (v0, v1) = (v0?, v1?);
    if t1 <= t0 {
        return Some(v1);
    }
    let frac = ((t - t0) / (t1 - t0)).clamp(0.0, 1.0);
    Some(v0 + (v1 - v0) * frac)
}

/// How much a cumulative series grew from `from` to `to`.
fn grew(series: &[(f64, Option<f64>)], from: f64, to: f64) -> Option<f64> {
    Some((at(series, to)? - at(series, from)?).max(0.0))
}

/// µs per item.
fn per(cpu_s: f64, items: u64) -> Option<f64> {
    (items > 0).then(|| cpu_s * 1e6 / items as f64)
}

// ---- the message path -----------------------------------------------------------------------

/// One process's CPU on the message path.
#[derive(Debug, Clone, Default, PartialEq)]
struct PathCpu {
    /// Over chat's window.
    window_s: Option<f64>,
    /// Over the whole chat run.
    run_s: Option<f64>,
    /// loadtest's own figure from the process's `/metrics` (core-api and edges).
    loadtest_us: Option<f64>,
}

/// What the chat run cost.
#[derive(Debug, Clone, Default)]
struct PathCost {
    window: (f64, f64),
    run: (f64, f64),
    messages: u64,
    /// In the order of [`Processes::list`].
    cpu: Vec<PathCpu>,
    /// Share of all cores busy over the window.
    machine_busy: Option<f64>,
}

impl PathCost {
    fn of(stack: &Processes, samples: &[Sample], report: &Value) -> Result<PathCost> {
        let span = &report["stage_span"];
        let (Some(from), Some(to)) = (span["from_unix_s"].as_f64(), span["to_unix_s"].as_f64())
        else {
            bail!("chat's report has no stage_span (is loadtest older than this xtask?)");
        };
        let (Some(first), Some(last)) = (samples.first(), samples.last()) else {
            bail!("no CPU samples");
        };
        let messages = report["extra"]["persisted_in_window"]
            .as_f64()
            .or_else(|| report["accepted"].as_f64())
            .unwrap_or(0.0) as u64;
        let loadtest_cpu = report["cpu"].as_array().cloned().unwrap_or_default();
        // loadtest names core-api `core` and each edge `edge` with its URL.
        let loadtest_us = |name: &str| -> Option<f64> {
            let edge_url = name
                .strip_prefix("edge-")
                .and_then(|n| n.parse::<usize>().ok())
                .and_then(|n| stack.edge_urls.get(n.checked_sub(1)?));
            loadtest_cpu
                .iter()
                .find(|c| match edge_url {
                    Some(url) => c["process"] == "edge" && c["url"].as_str() == Some(url),
                    None => name == "core-api" && c["process"] == "core",
                })
                .and_then(|c| c["us_per_message"].as_f64())
        };
        let cpu = stack
            .list
            .iter()
            .enumerate()
            .map(|(i, p)| {
                let series: Vec<(f64, Option<f64>)> = samples
                    .iter()
                    .map(|s| (s.t, s.cpu.get(i).copied().flatten()))
                    .collect();
                PathCpu {
                    window_s: grew(&series, from, to),
                    run_s: grew(&series, first.t, last.t),
                    loadtest_us: loadtest_us(&p.name),
                }
            })
            .collect();
        let ticks = |pick: fn((u64, u64)) -> u64| -> Vec<(f64, Option<f64>)> {
            samples
                .iter()
                .map(|s| (s.t, s.machine.map(|m| pick(m) as f64)))
                .collect()
        };
        let machine_busy = match (
            grew(&ticks(|m| m.0), from, to),
            grew(&ticks(|m| m.1), from, to),
        ) {
            (Some(b), Some(t)) if t > 0.0 => Some(b / t),
            _ => None,
        };
        Ok(PathCost {
            window: (from, to),
            run: (first.t, last.t),
            messages,
            cpu,
            machine_busy,
        })
    }

    fn window_secs(&self) -> f64 {
        self.window.1 - self.window.0
    }

    /// Every process's CPU over the window together; `None` if one is unknown.
    fn total_window_s(&self) -> Option<f64> {
        self.cpu.iter().map(|c| c.window_s).sum()
    }
}

// ---- the raw insert -------------------------------------------------------------------------

/// What pgbench's raw insert cost PostgreSQL.
#[derive(Debug, Clone, Default)]
struct Raw {
    rows: u64,
    secs: f64,
    pg_cpu_s: f64,
    /// pgbench's `tps = …` line.
    tps_line: String,
    /// The scratch table's indexes, as PostgreSQL defines them.
    indexes: Vec<String>,
    script: String,
    command: String,
}

impl Raw {
    fn us_per_row(&self) -> Option<f64> {
        per(self.pg_cpu_s, self.rows)
    }
}

/// The pgbench script: one batch of `rows` message-shaped rows per transaction, over 1,000
/// conversations, with seqs rising per conversation (as the path allocates them) and
/// distinct client ids.
fn script(rows: u32) -> String {
    [
        "-- cargo xtask bench-core: one batch of message-shaped rows, one transaction.",
        &format!("INSERT INTO {TABLE} (tenant_id, conversation_id, seq, id, sender_id, sender_role,"),
        "                            sender_name, client_msg_id, kind, body, created_at)",
        "SELECT '00000000-0000-4000-8000-00000000be7c'::uuid,",
        "       ('00000000-0000-4000-8000-' || lpad(to_hex((b + g) % 1000), 12, '0'))::uuid,",
        "       b * 1000 + g,",
        "       gen_random_uuid(),",
        "       ('00000000-0000-4000-9000-' || lpad(to_hex((b + g) % 1000), 12, '0'))::uuid,",
        "       'visitor', NULL, 'v-' || (b * 1000 + g), 'text',",
        r#"       '{"text":"loadtest","t0":1700000000000000000,"n":1}'::jsonb, now()"#,
        &format!("  FROM (SELECT nextval('{TABLE}_batch') AS b) AS batch, generate_series(1, {rows}) AS g;"),
        "",
    ]
    .join("\n")
}

async fn raw_insert(
    root: &Path,
    work: &Path,
    pgbench: &Path,
    stack: &Processes,
    opts: &Options,
) -> Result<Raw> {
    let url = format!("postgres://postgres@127.0.0.1:{}/relaydesk", stack.pg_port);
    let (client, connection) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
        .await
        .with_context(|| format!("connecting to {url}"))?;
    let conn = tokio::spawn(connection);
    client
        .batch_execute(&format!(
            "DROP TABLE IF EXISTS {TABLE}; DROP SEQUENCE IF EXISTS {TABLE}_batch;\n\
             CREATE TABLE {TABLE} (LIKE messages INCLUDING DEFAULTS INCLUDING INDEXES);\n\
             CREATE SEQUENCE {TABLE}_batch;"
        ))
        .await
        .with_context(|| format!("creating {TABLE}"))?;
    let result = pgbench_run(root, work, pgbench, stack, opts, &client).await;
    let dropped = client
        .batch_execute(&format!(
            "DROP TABLE IF EXISTS {TABLE}; DROP SEQUENCE IF EXISTS {TABLE}_batch;"
        ))
        .await
        .with_context(|| format!("dropping {TABLE}"));
    drop(client);
    let _ = conn.await;
    let raw = result?;
    dropped?;
    Ok(raw)
}

async fn pgbench_run(
    root: &Path,
    work: &Path,
    pgbench: &Path,
    stack: &Processes,
    opts: &Options,
    client: &tokio_postgres::Client,
) -> Result<Raw> {
    let indexes = client
        .query(
            "SELECT indexdef FROM pg_indexes WHERE tablename = $1 ORDER BY indexname",
            &[&TABLE],
        )
        .await
        .context("reading the scratch table's indexes")?
        .iter()
        .map(|r| r.get::<_, String>(0))
        .collect();
    let script = script(opts.batch_rows);
    let script_file = work.join("insert.sql");
    std::fs::write(&script_file, &script)
        .with_context(|| format!("writing {}", script_file.display()))?;
    let log = work.join("pgbench.log");
    let out = std::fs::File::create(&log).with_context(|| format!("creating {}", log.display()))?;
    let err = out.try_clone().context("duplicating a file handle")?;
    let args: Vec<String> = bench::args(&format!(
        "-n -M prepared -h 127.0.0.1 -p {} -U postgres -c {} -j {} -T {} -f {} relaydesk",
        stack.pg_port,
        opts.insert_clients,
        opts.insert_clients.min(2),
        opts.insert_duration.as_secs(),
        rel(root, &script_file),
    ));
    step(format!("pgbench {}", args.join(" ")));
    // For the page: the port changes with every `cargo xtask up`.
    let port = format!("-p {}", stack.pg_port);
    let command = format!(
        "pgbench {}",
        args.join(" ").replacen(&port, "-p $PG_PORT", 1)
    );
    let postgres = &stack.list[0];
    let cpu0 = postgres.cpu_s().context("PostgreSQL is gone")?;
    let t0 = std::time::Instant::now();
    let mut cmd = tokio::process::Command::new(pgbench);
    cmd.args(&args)
        .current_dir(root)
        .stdout(Stdio::from(out))
        .stderr(Stdio::from(err));
    for var in [
        "PGHOST",
        "PGPORT",
        "PGUSER",
        "PGDATABASE",
        "PGOPTIONS",
        "PGSERVICE",
    ] {
        cmd.env_remove(var);
    }
    let status = run_child(&mut cmd, "pgbench").await?;
    let secs = t0.elapsed().as_secs_f64();
    let cpu1 = postgres.cpu_s().context("PostgreSQL is gone")?;
    check_interrupted()?;
    let text = std::fs::read_to_string(&log).unwrap_or_default();
    if !status.success() {
        bail!("pgbench failed ({status})\n{}", services::tail(&log, 20));
    }
    let rows: i64 = client
        .query_one(&format!("SELECT count(*) FROM {TABLE}"), &[])
        .await
        .context("counting the inserted rows")?
        .get(0);
    Ok(Raw {
        rows: u64::try_from(rows).unwrap_or(0),
        secs,
        pg_cpu_s: cpu1 - cpu0,
        tps_line: text
            .lines()
            .find(|l| l.starts_with("tps = "))
            .unwrap_or("")
            .to_owned(),
        indexes,
        script,
        command,
    })
}

// ---- the page -------------------------------------------------------------------------------

struct Page {
    opts: Options,
    machine: String,
    chat: Run,
    report: Value,
    /// In the order of [`PathCost::cpu`].
    processes: Vec<String>,
    /// PostgreSQL's children when the run began (the pool's backends among them).
    pg_children: usize,
    path: PathCost,
    raw: Raw,
}

fn us(v: Option<f64>) -> String {
    v.map_or_else(|| "—".to_owned(), |v| format!("{v:.1}"))
}

fn ratio(a: Option<f64>, b: Option<f64>) -> String {
    match (a, b) {
        (Some(a), Some(b)) if b > 0.0 => format!("{:.1}×", a / b),
        _ => "—".to_owned(),
    }
}

impl Page {
    /// PostgreSQL's and the whole path's µs per message over the window.
    fn path_us(&self) -> (Option<f64>, Option<f64>) {
        let n = self.path.messages;
        let pg = self.path.cpu.first().and_then(|c| c.window_s);
        (
            pg.and_then(|s| per(s, n)),
            self.path.total_window_s().and_then(|s| per(s, n)),
        )
    }

    fn bench_command(&self) -> String {
        format!(
            "cargo xtask bench-core --rate {} --duration {}s --insert-duration {}s --batch-rows {} --insert-clients {}",
            self.opts.rate,
            self.opts.duration.as_secs(),
            self.opts.insert_duration.as_secs(),
            self.opts.batch_rows,
            self.opts.insert_clients
        )
    }

    /// The few lines printed at the end.
    fn summary(&self) -> String {
        let (pg, total) = self.path_us();
        let raw = self.raw.us_per_row();
        format!(
            "\nbench-core: {} messages persisted in {:.1} s; µs CPU per message: PostgreSQL {}, whole path {}; raw insert {} µs per row; ratio PostgreSQL {}, whole path {}\n",
            self.path.messages,
            self.path.window_secs(),
            us(pg),
            us(total),
            us(raw),
            ratio(pg, raw),
            ratio(total, raw)
        )
    }

    fn markdown(&self) -> String {
        let r = &self.report;
        let p = &self.path;
        let n = p.messages;
        let mut md = String::new();
        let _ = writeln!(
            md,
            "# CPU per persisted message\n\nWritten by `{}` on {} (rerun it to refresh this page). \
             What the persisted message path (edge → Redis → core-api → PostgreSQL → Redis → edge) \
             costs in CPU per message, process by process, next to what the same PostgreSQL, in the \
             same run, costs inserting message-shaped rows raw. PostgreSQL's settings are as \
             `cargo xtask up` leaves them: `synchronous_commit` and `fsync` on.\n",
            self.bench_command(),
            r["started_at"].as_str().unwrap_or("?")
        );
        let _ = writeln!(
            md,
            "## Machine\n\n- {}\n- loadtest {}; the harness, the stack and PostgreSQL share it\n",
            self.machine,
            r["version"].as_str().unwrap_or("?")
        );
        let d = &r["deliver"];
        let _ = writeln!(
            md,
            "## The message path\n\n`loadtest chat`, {CONVERSATIONS} conversations at {} msg/s for {} s: \
             rate achieved {} msg/s, deliver (send → the other party's `msg`) p50 {} ms, p99 {} ms, \
             max {} ms; {} lost, {} duplicated, {} reordered; {}. \
             {n} messages persisted in its window of {:.1} s (from just before the first send to \
             after the last delivery); the machine was {} busy over it (all cores; the harness and \
             anything else running included). Report: [html](core/chat.html) · [json](core/chat.json).\n",
            self.opts.rate,
            self.opts.duration.as_secs(),
            bench::f(&r["rate_achieved"]),
            bench::f(&d["p50"]),
            bench::f(&d["p99"]),
            bench::f(&d["max"]),
            r["lost"],
            r["duplicated"],
            r["reordered"],
            if r["passed"].as_bool() == Some(true) {
                "PASS"
            } else {
                "FAIL"
            },
            p.window_secs(),
            p.machine_busy
                .map_or_else(|| "?".to_owned(), |b| format!("{:.0}%", b * 100.0)),
        );
        let _ = writeln!(
            md,
            "CPU is utime + stime + cutime + cstime from `/proc/<pid>/stat`, sampled every 200 ms \
             and interpolated to the window's ends; PostgreSQL is the postmaster and every child \
             (backends, WAL writer, checkpointer, autovacuum). *Whole run* also counts creating the \
             run's world (tenant, agents, 1,000 visitors and conversations through the HTTP API, \
             connections and hellos; {:.1} s in all) over the same messages. *loadtest* is `loadtest chat`'s own \
             figure from each process's `process_cpu_seconds_total` (± its resolution per \
             message).\n",
            p.run.1 - p.run.0
        );
        md.push_str("| process | CPU s | cores | µs per message | µs per message, whole run | loadtest's figure |\n|---|---|---|---|---|---|\n");
        let secs = p.window_secs().max(1e-9);
        for (name, c) in self.processes.iter().zip(&p.cpu) {
            let label = match name.as_str() {
                "PostgreSQL" => format!("PostgreSQL (postmaster + {} children)", self.pg_children),
                _ => name.clone(),
            };
            let _ = writeln!(
                md,
                "| {label} | {} | {} | {} | {} | {} |",
                c.window_s
                    .map_or_else(|| "—".to_owned(), |s| format!("{s:.2}")),
                c.window_s
                    .map_or_else(|| "—".to_owned(), |s| format!("{:.2}", s / secs)),
                us(c.window_s.and_then(|s| per(s, n))),
                us(c.run_s.and_then(|s| per(s, n))),
                us(c.loadtest_us),
            );
        }
        let total_run: Option<f64> = p.cpu.iter().map(|c| c.run_s).sum();
        let total = p.total_window_s();
        let _ = writeln!(
            md,
            "| **total** | {} | {} | **{}** | {} | |\n",
            total.map_or_else(|| "—".to_owned(), |s| format!("{s:.2}")),
            total.map_or_else(|| "—".to_owned(), |s| format!("{:.2}", s / secs)),
            us(total.and_then(|s| per(s, n))),
            us(total_run.and_then(|s| per(s, n))),
        );

        let raw = &self.raw;
        let _ = writeln!(
            md,
            "## The raw insert\n\npgbench on the same PostgreSQL right after: {} clients, {} rows per \
             INSERT (one transaction each), {} s: {} rows inserted ({:.0} rows/s; pgbench: `{}`). \
             PostgreSQL used {:.2} s of CPU: **{} µs per row**. The scratch table is `LIKE messages \
             INCLUDING DEFAULTS INCLUDING INDEXES`, created and dropped by the command; its indexes:\n",
            self.opts.insert_clients,
            self.opts.batch_rows,
            self.opts.insert_duration.as_secs(),
            raw.rows,
            raw.rows as f64 / raw.secs.max(1e-9),
            raw.tps_line,
            raw.pg_cpu_s,
            us(raw.us_per_row()),
        );
        for i in &raw.indexes {
            let _ = writeln!(md, "- `{i}`");
        }
        let _ = writeln!(
            md,
            "\nThe rows' values are computed by the SELECT (the path sends them as parameters), \
             which makes the raw figure, if anything, higher.\n\n```sql\n{}```\n",
            raw.script
        );

        let (pg, path) = self.path_us();
        let _ = writeln!(
            md,
            "## Ratio\n\n| | µs CPU per message | ÷ raw insert µs per row |\n|---|---|---|\n\
             | PostgreSQL on the path | {} | **{}** |\n| the whole path | {} | **{}** |\n",
            us(pg),
            ratio(pg, raw.us_per_row()),
            us(path),
            ratio(path, raw.us_per_row()),
        );

        let _ = writeln!(
            md,
            "## Commands\n\n```sh\n{}\n```\n\nwhich, against the running stack (`cargo xtask up --detach`; \
             otherwise it starts one and stops it at the end), runs\n\n```sh\n\
             cargo run --release -p loadtest -- {}\n\
             PG_PORT=$(sed -n 's/^pg_port=//p' .relaydesk/dev/pids)   # the stack's PostgreSQL\n\
             {}   # the script above, written there by the command, on a fresh {TABLE}\n```\n",
            self.bench_command(),
            self.chat.args.join(" "),
            raw.command
        );
        md
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_children_of_any_thread() {
        let me = std::process::id();
        let mut child = std::process::Command::new("sleep")
            .arg("30")
            .spawn()
            .unwrap();
        let pid = child.id();
        let found = children(me).contains(&pid);
        let _ = child.kill();
        let _ = child.wait();
        assert!(found);
        assert_eq!(ProcStat::read(pid), None);
        assert!(Process {
            name: "me".into(),
            pid: me,
            tree: true,
        }
        .cpu_s()
        .is_some_and(|s| s >= 0.0));
    }

    #[test]
    fn cpu_over_a_window_per_message() {
        let s = [
            (10.0, Some(1.0)),
            (11.0, Some(3.0)),
            (12.0, Some(4.0)),
            (13.0, None),
        ];
        assert_eq!(at(&s, 10.5), Some(2.0));
        assert_eq!(at(&s, 9.0), Some(1.0));
        // 2.5 → 3.5 s of CPU between 10.75 and 11.5.
        let cpu = grew(&s, 10.75, 11.5).unwrap();
        assert!((cpu - 1.0).abs() < 1e-9);
        assert_eq!(per(cpu, 4000), Some(250.0));
        assert_eq!(per(cpu, 0), None);
        // The process was gone by the end.
        assert_eq!(grew(&s, 10.0, 12.5), None);
        assert_eq!(at(&[], 1.0), None);
        assert_eq!(ratio(Some(300.0), Some(25.0)), "12.0×");
        assert_eq!(ratio(Some(300.0), None), "—");
    }

    #[test]
    fn the_script_keeps_keys_unique() {
        let s = script(100);
        assert!(
            s.contains("generate_series(1, 100)") && s.contains("nextval('bench_messages_batch')")
        );
        // seq = batch * 1000 + g, g ≤ 1000: distinct for distinct (batch, g).
        assert!(s.contains("b * 1000 + g"));
    }
}
