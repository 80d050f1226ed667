//! `cargo xtask up` and `cargo xtask down`: a local Relaydesk (PostgreSQL, Redis, one core-api,
//! two edges or `--edges N`) with its files in `.relaydesk/dev/`, plus a demo tenant and agent;
//! and `cargo xtask restart-edges`: a rolling restart of a detached stack's edges.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use nix::sys::signal::Signal;
use serde_json::{json, Value};
use std::os::unix::process::CommandExt;

use crate::services::{
    self, pid_alive, pid_cmdline, run_child, send_signal, tail, terminate_pid, PgMode, Postgres,
    Redis,
};
use crate::test::{write_keypair, write_private};
use crate::{cargo, check_interrupted, rel, step};

const READY_TIMEOUT: Duration = Duration::from_secs(60);
const STOP_GRACE: Duration = Duration::from_secs(15);
const INGRESS_SHARDS: &str = "16";
const REDIS_PREFIX: &str = "rd";
const DEMO_AGENT_EMAIL: &str = "agent@demo.test";

/// Edge processes `up` starts at most (each holds up to 19,000 sockets).
pub const MAX_EDGES: usize = 32;

fn dev_dir(root: &Path) -> PathBuf {
    root.join(".relaydesk").join("dev")
}

pub async fn up(root: &Path, detach: bool, edges: usize) -> Result<u8> {
    if !(1..=MAX_EDGES).contains(&edges) {
        bail!("--edges must be between 1 and {MAX_EDGES}");
    }
    let dev = dev_dir(root);
    let pids_file = dev.join("pids");
    if let Some(state) = State::read(&pids_file)? {
        if state.services().any(|(name, pid)| service_alive(name, pid)) {
            bail!(
                "Relaydesk is already running detached (see {}); stop it first with `cargo xtask down`",
                rel(root, &pids_file)
            );
        }
        // Stale: whatever is left of it (PostgreSQL, Redis) is stopped below.
        fs::remove_file(&pids_file).with_context(|| format!("removing {}", pids_file.display()))?;
    }

    let inst = services::ensure_installed()?;
    check_interrupted()?;

    // Build before starting anything: a compile error should not leave servers idling.
    step("building core-api and edge (release)");
    let status = run_child(
        tokio::process::Command::new(cargo())
            .args([
                "build",
                "--release",
                "-p",
                "relaydesk-core",
                "-p",
                "relaydesk-edge",
            ])
            .current_dir(root),
        "cargo build",
    )
    .await?;
    if !status.success() {
        bail!("`cargo build --release -p relaydesk-core -p relaydesk-edge` failed ({status})");
    }
    check_interrupted()?;
    let release = target_dir(root).join("release");
    let core_bin = release.join("core-api");
    let edge_bin = release.join("edge");
    for bin in [&core_bin, &edge_bin] {
        if !bin.is_file() {
            bail!("{} is missing after the build", bin.display());
        }
    }

    fs::create_dir_all(&dev).with_context(|| format!("creating {}", dev.display()))?;
    // Declared before the services so that, dropped after them, they stop last.
    let mut pg = Postgres::start(&inst, &dev, PgMode::Persistent)?;
    let mut redis = Redis::start(&inst, &dev.join("redis"), false)?;
    pg.ensure_database("relaydesk").await?;
    let owner_url = pg.url("postgres", "relaydesk");
    step("applying migrations");
    relaydesk_core::db::migrate(&owner_url)
        .await
        .with_context(|| format!("applying migrations to {owner_url}"))?;
    check_interrupted()?;

    let keys = dev.join("keys");
    write_keypair(&keys, false)?;
    let operator_token = operator_token(&dev.join("operator_token"))?;

    let database_url = pg.url("relaydesk_app", "relaydesk");
    let redis_url = redis.url();
    let core_port = services::free_port()?;
    let edge_ports = (0..edges)
        .map(|_| services::free_port())
        .collect::<Result<Vec<u16>>>()?;
    let core_url = format!("http://127.0.0.1:{core_port}");
    let edge_ws: Vec<String> = edge_ports
        .iter()
        .map(|p| format!("ws://127.0.0.1:{p}/v1/ws"))
        .collect();
    let edge_urls = edge_ws.join(" ");

    let logs = dev.join("logs");
    fs::create_dir_all(&logs).with_context(|| format!("creating {}", logs.display()))?;
    let mut procs = Procs::default();
    let mut core = core_command(
        &core_bin,
        core_port,
        &database_url,
        &redis_url,
        &keys,
        &operator_token,
    );
    core.env("EDGE_URLS", &edge_urls);
    procs.spawn("core-api", core, &logs, core_port)?;
    for (i, port) in edge_ports.iter().enumerate() {
        let edge = edge_command(&edge_bin, *port, &redis_url, &keys);
        procs.spawn(&format!("edge-{}", i + 1), edge, &logs, *port)?;
    }

    let http = procs.wait_all_ready().await?;

    let demo = Demo::ensure(&http, &core_url, &operator_token, &dev.join("demo.json")).await?;

    let env_file = root.join(".relaydesk").join("dev.env");
    let env = format!(
        "CORE_URL={core_url}\n\
         EDGE_URLS=\"{edge_urls}\"\n\
         DATABASE_URL={database_url}\n\
         REDIS_URL={redis_url}\n\
         OPERATOR_TOKEN={operator_token}\n\
         DEMO_TENANT_ID={}\n\
         DEMO_API_KEY={}\n\
         DEMO_SITE_KEY={}\n\
         DEMO_AGENT_EMAIL={}\n\
         DEMO_AGENT_PASSWORD={}\n",
        demo.tenant_id, demo.api_key, demo.site_key, demo.agent_email, demo.agent_password
    );
    write_private(&env_file, env.as_bytes())?;

    println!();
    println!("Relaydesk is up.");
    println!("  core-api        {core_url}");
    println!("  API document    {core_url}/v1/openapi.json");
    println!(
        "  agent console   {core_url}/console?tenant={}",
        demo.tenant_id
    );
    println!(
        "  widget demo     {core_url}/demo?site_key={}",
        demo.site_key
    );
    for (i, url) in edge_ws.iter().enumerate() {
        println!("  edge {}          {url}", i + 1);
    }
    println!("  PostgreSQL      {database_url}  (owner: {owner_url})");
    println!("  Redis           {redis_url}  (prefix {REDIS_PREFIX})");
    println!("  operator token  {operator_token}");
    println!(
        "  demo tenant     {}  (site key {})",
        demo.tenant_id, demo.site_key
    );
    println!("  demo API key    {}", demo.api_key);
    println!(
        "  demo agent      {} / {}",
        demo.agent_email, demo.agent_password
    );
    println!("  logs            {}", rel(root, &logs));
    println!("  environment     {}", rel(root, &env_file));
    println!();

    if detach {
        let mut state = State::default();
        for svc in &procs.list {
            state.push(&svc.name, svc.child.id().to_string());
        }
        if let Some(pid) = redis.pid() {
            state.push("redis", pid.to_string());
        }
        state.push("redis_port", redis.port().to_string());
        state.push("pg_port", pg.port().to_string());
        state.push("pg_data", pg.data_dir().display().to_string());
        state.write(&pids_file)?;
        procs.detach();
        redis.detach();
        pg.detach();
        println!("Running in the background; stop it with `cargo xtask down`.");
        return Ok(0);
    }

    println!("Press Ctrl-C to stop.");
    let code = loop {
        tokio::select! {
            _ = crate::wait_interrupt() => break 0,
            _ = tokio::time::sleep(Duration::from_secs(1)) => {
                if let Some((name, status, log)) = procs.first_exited() {
                    eprintln!("xtask: {name} exited unexpectedly ({status}); stopping everything\n{}", tail(&log, 40));
                    break 1;
                }
            }
        }
    };
    procs.stop();
    let redis_stopped = redis.stop();
    pg.stop().and(redis_stopped)?;
    step("stopped");
    Ok(code)
}

pub fn down(root: &Path) -> Result<()> {
    let dev = dev_dir(root);
    let pids_file = dev.join("pids");
    let state = State::read(&pids_file)?.unwrap_or_else(|| {
        step(format!(
            "{} not found; stopping any leftover PostgreSQL and Redis of .relaydesk/dev",
            rel(root, &pids_file)
        ));
        State::default()
    });
    let mut failures = Vec::new();

    let services: Vec<(&str, i32)> = state.services().collect();
    for &(name, pid) in &services {
        if service_alive(name, pid) {
            step(format!("stopping {name} (pid {pid})"));
            if let Err(e) = send_signal(pid, Signal::SIGTERM) {
                failures.push(format!("{e:#}"));
            }
        }
    }
    for &(name, pid) in &services {
        if service_alive(name, pid) {
            match terminate_pid(pid, STOP_GRACE) {
                Ok(true) => {}
                Ok(false) => eprintln!("xtask: {name} (pid {pid}) ignored SIGTERM and was killed"),
                Err(e) => failures.push(format!("{e:#}")),
            }
        }
    }

    let redis_pid = state.get("redis").and_then(|p| p.parse::<i32>().ok());
    let redis_port = state.get("redis_port").and_then(|p| p.parse::<u16>().ok());
    if let (Some(pid), Some(port)) = (redis_pid, redis_port) {
        if pid_alive(pid) && pid_cmdline(pid).is_some_and(|c| c.contains("redis")) {
            step(format!("stopping Redis (127.0.0.1:{port})"));
            if let Err(e) = Redis::stop_detached(port, Some(pid)) {
                failures.push(format!("{e:#}"));
            }
        }
    }
    if let Err(e) = Redis::stop_in(&dev.join("redis")) {
        failures.push(format!("{e:#}"));
    }

    let pg_data = match state.get("pg_data") {
        Some(data) => PathBuf::from(data),
        None => services::pg_dir(&dev, services::is_root())?.join("data"),
    };
    if services::running_postmaster(&pg_data).is_some() {
        step(format!("stopping PostgreSQL ({})", pg_data.display()));
        match services::find_installation() {
            Some(inst) => {
                if let Err(e) = Postgres::stop_detached(&inst, &pg_data) {
                    failures.push(format!("{e:#}"));
                }
            }
            None => failures.push(format!(
                "cannot find pg_ctl to stop the PostgreSQL server of {}",
                pg_data.display()
            )),
        }
    }

    if !failures.is_empty() {
        bail!(
            "some services could not be stopped:\n  {}",
            failures.join("\n  ")
        );
    }
    match fs::remove_file(&pids_file) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e).with_context(|| format!("removing {}", pids_file.display())),
    }
    step("stopped");
    Ok(())
}

/// Orders `edge-N` service names by number (`edge-10` after `edge-9`).
pub(crate) fn edge_number(name: &str) -> usize {
    name.trim_start_matches("edge-")
        .parse()
        .unwrap_or(usize::MAX)
}

/// How long a restarted edge may take to drain and exit before it is killed.
const DRAIN_LIMIT: Duration = Duration::from_secs(60);

/// The core-api `up` (and the browser and schema stages of `test`) start on `port`.
pub(crate) fn core_command(
    core_bin: &Path,
    port: u16,
    database_url: &str,
    redis_url: &str,
    keys: &Path,
    operator_token: &str,
) -> Command {
    let mut core = Command::new(core_bin);
    core.env("CORE_ADDR", format!("127.0.0.1:{port}"))
        .env("DATABASE_URL", database_url)
        .env("REDIS_URL", redis_url)
        .env("REDIS_PREFIX", REDIS_PREFIX)
        .env("INGRESS_SHARDS", INGRESS_SHARDS)
        .env("TOKEN_SIGNING_KEY_FILE", keys.join("signing.pem"))
        .env("OPERATOR_TOKEN", operator_token);
    core
}

/// The edge `up` starts on `port` (and `restart-edges` starts again).
pub(crate) fn edge_command(edge_bin: &Path, port: u16, redis_url: &str, keys: &Path) -> Command {
    let mut edge = Command::new(edge_bin);
    edge.env("EDGE_ADDR", format!("127.0.0.1:{port}"))
        .env("REDIS_URL", redis_url)
        .env("REDIS_PREFIX", REDIS_PREFIX)
        .env("INGRESS_SHARDS", INGRESS_SHARDS)
        .env("TOKEN_PUBLIC_KEY_FILE", keys.join("public.pem"));
    edge
}

/// `cargo xtask restart-edges`: restarts every edge of the stack `up --detach` started, one
/// at a time, as a deployment would: SIGTERM (the edge fails `/readyz`, stops accepting and
/// closes its WebSockets with 1012 spread over its drain window), wait for it to exit, start
/// it again on the same port with the same environment (the edge binary now in
/// `target/release`, so a rebuilt one rolls out), wait until it is ready, then `pause`
/// before the next. Clients of a draining edge reconnect to the others and resume.
pub async fn restart_edges(root: &Path, pause: Duration) -> Result<u8> {
    let dev = dev_dir(root);
    let pids_file = dev.join("pids");
    let Some(mut state) = State::read(&pids_file)? else {
        bail!(
            "no detached stack ({} not found): start one with `cargo xtask up --detach`",
            rel(root, &pids_file)
        );
    };
    let env_file = root.join(".relaydesk").join("dev.env");
    let env = |key: &str| {
        crate::bench::env_value(&env_file, key)
            .with_context(|| format!("{} has no {key}", rel(root, &env_file)))
    };
    let redis_url = env("REDIS_URL")?;
    let ports = env("EDGE_URLS")?
        .split_whitespace()
        .map(|url| {
            url.rsplit_once(':')
                .and_then(|(_, rest)| rest.split('/').next()?.parse::<u16>().ok())
                .with_context(|| format!("no port in the edge URL {url}"))
        })
        .collect::<Result<Vec<u16>>>()?;
    let mut edges: Vec<(String, i32)> = state
        .services()
        .filter(|(name, _)| name.starts_with("edge-"))
        .map(|(name, pid)| (name.to_owned(), pid))
        .collect();
    edges.sort_by_key(|(name, _)| edge_number(name));
    if edges.len() != ports.len() {
        bail!(
            "{} lists {} edges but {} has {} edge URLs",
            rel(root, &pids_file),
            edges.len(),
            rel(root, &env_file),
            ports.len()
        );
    }
    let edge_bin = target_dir(root).join("release").join("edge");
    if !edge_bin.is_file() {
        bail!(
            "{} is missing: build it with `cargo build --release -p relaydesk-edge`",
            edge_bin.display()
        );
    }
    let keys = dev.join("keys");
    let logs = dev.join("logs");
    let http = http_client()?;
    for (i, ((name, pid), port)) in edges.into_iter().zip(ports).enumerate() {
        check_interrupted()?;
        if i > 0 {
            // Load time between two restarts, so clients settle on the new edge.
            tokio::select! {
                _ = tokio::time::sleep(pause) => {}
                _ = crate::wait_interrupt() => {}
            }
            check_interrupted()?;
        }
        if !service_alive(&name, pid) {
            bail!(
                "{name} (pid {pid}) is not running; restart the stack with `cargo xtask down` \
                 and `cargo xtask up --detach`"
            );
        }
        step(format!("draining {name} (pid {pid}): SIGTERM"));
        let drained = Instant::now();
        send_signal(pid, Signal::SIGTERM)?;
        while pid_alive(pid) {
            if drained.elapsed() >= DRAIN_LIMIT {
                eprintln!(
                    "xtask: {name} did not exit within {} s of SIGTERM, killing it",
                    DRAIN_LIMIT.as_secs()
                );
                terminate_pid(pid, Duration::ZERO)?;
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        step(format!(
            "{name} exited after {:.1} s",
            drained.elapsed().as_secs_f64()
        ));
        let mut procs = Procs::default();
        procs.spawn_logged(
            &name,
            edge_command(&edge_bin, port, &redis_url, &keys),
            &logs.join(format!("{name}.log")),
            true,
            port,
        )?;
        if let Some(svc) = procs.list.first_mut() {
            svc.wait_ready(&http).await?;
            state.set(&name, svc.child.id().to_string());
            state.write(&pids_file)?;
        }
        procs.detach();
    }
    step("every edge restarted");
    Ok(0)
}

/// Whether `pid` is still the service `name` (and not a process that reused its pid).
fn service_alive(name: &str, pid: i32) -> bool {
    let binary = if name.starts_with("edge") {
        "edge"
    } else {
        "core-api"
    };
    pid_alive(pid) && pid_cmdline(pid).is_some_and(|c| c.contains(binary))
}

pub(crate) fn target_dir(root: &Path) -> PathBuf {
    match std::env::var_os("CARGO_TARGET_DIR") {
        Some(dir) => root.join(dir), // `join` keeps an absolute path as is.
        None => root.join("target"),
    }
}

/// The operator token of the dev instance: 32 random hex digits, created once.
fn operator_token(path: &Path) -> Result<String> {
    match fs::read_to_string(path) {
        Ok(token) if !token.trim().is_empty() => return Ok(token.trim().to_string()),
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
    }
    let token = random_hex(16);
    write_private(path, format!("{token}\n").as_bytes())?;
    Ok(token)
}

pub(crate) fn random_hex(bytes: usize) -> String {
    let mut buf = vec![0u8; bytes];
    rand::RngCore::fill_bytes(&mut rand::thread_rng(), &mut buf);
    hex::encode(buf)
}

/// An HTTP client for the services' APIs and readiness checks (10 s per request).
pub(crate) fn http_client() -> Result<reqwest::Client> {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .context("building an HTTP client")
}

// ---- child services ------------------------------------------------------------------------

pub(crate) struct Service {
    pub(crate) name: String,
    pub(crate) child: Child,
    log: PathBuf,
    base_url: String,
}

impl Service {
    /// Polls `GET /readyz` until it answers 200.
    pub(crate) async fn wait_ready(&mut self, http: &reqwest::Client) -> Result<()> {
        let url = format!("{}/readyz", self.base_url);
        step(format!("waiting for {} ({url})", self.name));
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            check_interrupted()?;
            if let Some(status) = self
                .child
                .try_wait()
                .with_context(|| format!("checking on {}", self.name))?
            {
                bail!(
                    "{} exited during startup ({status})\n{}",
                    self.name,
                    tail(&self.log, 40)
                );
            }
            let last = match http.get(&url).timeout(Duration::from_secs(2)).send().await {
                Ok(resp) if resp.status() == reqwest::StatusCode::OK => return Ok(()),
                Ok(resp) => format!("HTTP {}", resp.status()),
                Err(e) => format!("{e}"),
            };
            if Instant::now() >= deadline {
                bail!(
                    "{} not ready after {} s (GET {url}: {last})\n{}",
                    self.name,
                    READY_TIMEOUT.as_secs(),
                    tail(&self.log, 40)
                );
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }
}

/// The core-api and edge processes; terminated when dropped unless detached.
#[derive(Default)]
pub(crate) struct Procs {
    pub(crate) list: Vec<Service>,
    detached: bool,
}

impl Procs {
    /// Waits until every service answers `GET /readyz`; returns the HTTP client it used
    /// (see [`http_client`]) for what follows.
    pub(crate) async fn wait_all_ready(&mut self) -> Result<reqwest::Client> {
        let http = http_client()?;
        for svc in &mut self.list {
            svc.wait_ready(&http).await?;
        }
        Ok(http)
    }

    /// Starts `cmd` in its own process group (so that Ctrl-C reaches only xtask, which then stops
    /// it in order), output to `<logs>/<name>.log`.
    pub(crate) fn spawn(&mut self, name: &str, cmd: Command, logs: &Path, port: u16) -> Result<()> {
        self.spawn_logged(name, cmd, &logs.join(format!("{name}.log")), false, port)
    }

    /// [`Procs::spawn`] with output to `log`, appended to it when `append`.
    fn spawn_logged(
        &mut self,
        name: &str,
        mut cmd: Command,
        log: &Path,
        append: bool,
        port: u16,
    ) -> Result<()> {
        let log = log.to_path_buf();
        let out = fs::OpenOptions::new()
            .create(true)
            .write(true)
            .append(append)
            .truncate(!append)
            .open(&log)
            .with_context(|| format!("opening {}", log.display()))?;
        let err = out
            .try_clone()
            .with_context(|| format!("duplicating the handle of {}", log.display()))?;
        step(format!(
            "starting {name} on 127.0.0.1:{port} (log: {})",
            log.display()
        ));
        if std::env::var_os("NO_COLOR").is_none() {
            cmd.env("NO_COLOR", "1"); // Plain log files.
        }
        let child = cmd
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .process_group(0)
            .spawn()
            .with_context(|| format!("starting {name} ({:?})", cmd.get_program()))?;
        self.list.push(Service {
            name: name.to_string(),
            child,
            log,
            base_url: format!("http://127.0.0.1:{port}"),
        });
        Ok(())
    }

    /// The first service that has exited, with its status and log.
    fn first_exited(&mut self) -> Option<(String, ExitStatus, PathBuf)> {
        self.list
            .iter_mut()
            .find_map(|svc| match svc.child.try_wait() {
                Ok(Some(status)) => Some((svc.name.clone(), status, svc.log.clone())),
                Ok(None) | Err(_) => None,
            })
    }

    /// SIGTERM to all, wait up to [`STOP_GRACE`], SIGKILL the rest.
    fn stop(&mut self) {
        if self.detached || self.list.is_empty() {
            return;
        }
        for svc in &mut self.list {
            if matches!(svc.child.try_wait(), Ok(None)) {
                step(format!("stopping {}", svc.name));
                if let Ok(pid) = i32::try_from(svc.child.id()) {
                    if let Err(e) = send_signal(pid, Signal::SIGTERM) {
                        eprintln!("xtask: {e:#}");
                    }
                }
            }
        }
        let deadline = Instant::now() + STOP_GRACE;
        for svc in &mut self.list {
            loop {
                match svc.child.try_wait() {
                    Ok(Some(_)) | Err(_) => break,
                    Ok(None) if Instant::now() >= deadline => {
                        eprintln!(
                            "xtask: {} did not stop within {} s, killing it",
                            svc.name,
                            STOP_GRACE.as_secs()
                        );
                        let _ = svc.child.kill();
                        let _ = svc.child.wait();
                        break;
                    }
                    Ok(None) => std::thread::sleep(Duration::from_millis(100)),
                }
            }
        }
        self.list.clear();
    }

    fn detach(&mut self) {
        self.detached = true;
    }
}

impl Drop for Procs {
    fn drop(&mut self) {
        self.stop();
    }
}

// ---- demo tenant ----------------------------------------------------------------------------

/// The demo tenant and agent, kept in `.relaydesk/dev/demo.json` and reused while valid.
struct Demo {
    tenant_id: String,
    api_key: String,
    site_key: String,
    agent_id: String,
    agent_email: String,
    agent_password: String,
}

impl Demo {
    async fn ensure(
        http: &reqwest::Client,
        core: &str,
        operator_token: &str,
        path: &Path,
    ) -> Result<Demo> {
        if let Some(demo) = Demo::load(path) {
            match demo.set_online(http, core).await {
                Ok(()) => {
                    step(format!("reusing the demo tenant {}", demo.tenant_id));
                    return Ok(demo);
                }
                Err(e) => step(format!(
                    "the stored demo tenant is not usable ({e:#}); creating a new one"
                )),
            }
        }
        let demo = Demo::create(http, core, operator_token).await?;
        demo.set_online(http, core).await?;
        write_private(path, demo.to_json().to_string().as_bytes())?;
        Ok(demo)
    }

    async fn create(http: &reqwest::Client, core: &str, operator_token: &str) -> Result<Demo> {
        step("creating the demo tenant");
        let resp = http
            .post(format!("{core}/v1/tenants"))
            .bearer_auth(operator_token)
            .json(&json!({ "name": "Demo" }))
            .send()
            .await
            .context("POST /v1/tenants")?;
        let tenant = expect_json(resp, reqwest::StatusCode::CREATED, "POST /v1/tenants").await?;
        let api_key = field(&tenant, "/api_key")?;

        step("creating the demo agent");
        let password = random_hex(12);
        let resp = http
            .post(format!("{core}/v1/agents"))
            .bearer_auth(&api_key)
            .json(&json!({
                "name": "Demo Agent",
                "email": DEMO_AGENT_EMAIL,
                "password": password,
                "role": "admin",
                "kind": "human",
                "max_concurrent": 5,
            }))
            .send()
            .await
            .context("POST /v1/agents")?;
        let agent = expect_json(resp, reqwest::StatusCode::CREATED, "POST /v1/agents").await?;
        Ok(Demo {
            tenant_id: field(&tenant, "/tenant/id")?,
            site_key: field(&tenant, "/tenant/site_key")?,
            api_key,
            agent_id: field(&agent, "/agent/id")?,
            agent_email: DEMO_AGENT_EMAIL.to_string(),
            agent_password: password,
        })
    }

    async fn set_online(&self, http: &reqwest::Client, core: &str) -> Result<()> {
        let what = format!("PUT /v1/agents/{}/status", self.agent_id);
        let resp = http
            .put(format!("{core}/v1/agents/{}/status", self.agent_id))
            .bearer_auth(&self.api_key)
            .json(&json!({ "status": "online" }))
            .send()
            .await
            .with_context(|| what.clone())?;
        if !resp.status().is_success() {
            let status = resp.status();
            let body = resp.text().await.unwrap_or_default();
            bail!("{what}: HTTP {status}: {body}");
        }
        Ok(())
    }

    fn load(path: &Path) -> Option<Demo> {
        let value: Value = serde_json::from_slice(&fs::read(path).ok()?).ok()?;
        let get = |key: &str| value.get(key)?.as_str().map(str::to_string);
        Some(Demo {
            tenant_id: get("tenant_id")?,
            api_key: get("api_key")?,
            site_key: get("site_key")?,
            agent_id: get("agent_id")?,
            agent_email: get("agent_email")?,
            agent_password: get("agent_password")?,
        })
    }

    fn to_json(&self) -> Value {
        json!({
            "tenant_id": self.tenant_id,
            "api_key": self.api_key,
            "site_key": self.site_key,
            "agent_id": self.agent_id,
            "agent_email": self.agent_email,
            "agent_password": self.agent_password,
        })
    }
}

async fn expect_json(
    resp: reqwest::Response,
    expected: reqwest::StatusCode,
    what: &str,
) -> Result<Value> {
    let status = resp.status();
    let body = resp
        .text()
        .await
        .with_context(|| format!("{what}: reading the response"))?;
    if status != expected {
        bail!("{what}: expected HTTP {expected}, got {status}: {body}");
    }
    serde_json::from_str(&body).with_context(|| format!("{what}: response is not JSON: {body}"))
}

/// A string field (or a number, rendered) at a JSON pointer.
fn field(value: &Value, pointer: &str) -> Result<String> {
    match value.pointer(pointer) {
        Some(Value::String(s)) => Ok(s.clone()),
        Some(Value::Number(n)) => Ok(n.to_string()),
        _ => Err(anyhow!("response has no {pointer}: {value}")),
    }
}

// ---- .relaydesk/dev/pids ----------------------------------------------------------------------

/// What `up --detach` leaves for `down`: `name=value` lines (service pids, the Redis pid and
/// port, the PostgreSQL data directory).
#[derive(Default)]
struct State {
    entries: Vec<(String, String)>,
}

impl State {
    fn read(path: &Path) -> Result<Option<State>> {
        let text = match fs::read_to_string(path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
        };
        let entries = text
            .lines()
            .filter_map(|line| line.split_once('='))
            .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
            .collect();
        Ok(Some(State { entries }))
    }

    fn write(&self, path: &Path) -> Result<()> {
        let text: String = self
            .entries
            .iter()
            .map(|(k, v)| format!("{k}={v}\n"))
            .collect();
        fs::write(path, text).with_context(|| format!("writing {}", path.display()))
    }

    fn push(&mut self, key: &str, value: String) {
        self.entries.push((key.to_string(), value));
    }

    /// Replaces the value of `key` (or adds it).
    fn set(&mut self, key: &str, value: String) {
        match self.entries.iter_mut().find(|(k, _)| k == key) {
            Some((_, v)) => *v = value,
            None => self.push(key, value),
        }
    }

    fn get(&self, key: &str) -> Option<&str> {
        self.entries
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    /// The core-api and edge processes: `(name, pid)`.
    fn services(&self) -> impl Iterator<Item = (&str, i32)> {
        self.entries
            .iter()
            .filter(|(k, _)| k == "core-api" || k.starts_with("edge-"))
            .filter_map(|(k, v)| Some((k.as_str(), v.parse().ok()?)))
    }
}
