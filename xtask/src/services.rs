//! Private PostgreSQL and Redis instances, and the process helpers they need.
//!
//! Each instance listens on a free port of 127.0.0.1 only and keeps its files in a folder of its
//! own under `<workspace>/.relaydesk/`. [`Postgres`] and [`Redis`] stop their server when dropped
//! (unless detached), so an error or an interruption never leaves one running.
//!
//! PostgreSQL refuses to run as root: as root, `initdb`, `pg_ctl` and friends run as the
//! `postgres` user (through `runuser`) in a folder that user owns.

use std::collections::HashSet;
use std::fs;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use nix::sys::signal::{kill, killpg, Signal};
use nix::unistd::{Pid, User};

use crate::{check_interrupted, step};

/// The OS user PostgreSQL runs as when we are root.
const PG_USER: &str = "postgres";
/// How long a server may take to start or stop.
const SERVER_TIMEOUT: Duration = Duration::from_secs(60);

// ---- installation ---------------------------------------------------------------------------

/// Where the server binaries are.
#[derive(Debug, Clone)]
pub struct Installation {
    /// Directory of `initdb`, `pg_ctl`, `postgres`, `pg_isready`.
    pub pg_bin: PathBuf,
    pub redis_server: PathBuf,
}

const PG_PROGRAMS: [&str; 4] = ["initdb", "pg_ctl", "postgres", "pg_isready"];
const APT_PACKAGES: [&str; 2] = ["postgresql", "redis-server"];

/// Finds the PostgreSQL server binaries and `redis-server`, installing them with apt when they
/// are missing and we are root. Not root: fails with the command to run.
pub fn ensure_installed() -> Result<Installation> {
    if let Some(found) = find_installation() {
        return Ok(found);
    }
    let install = format!(
        "apt-get update && apt-get install -y {}",
        APT_PACKAGES.join(" ")
    );
    if !is_root() {
        bail!(
            "PostgreSQL server binaries and/or redis-server are missing ({}). Install them with:\n\n    sudo sh -c '{install}'\n",
            missing_description()
        );
    }
    if which("apt-get").is_none() {
        bail!("PostgreSQL server binaries and/or redis-server are missing ({}) and apt-get is not available: install PostgreSQL (server) and Redis with your package manager", missing_description());
    }
    step(format!("installing {} ({install})", APT_PACKAGES.join(" ")));
    // We never use the packages' own services (they listen on the default ports); we only need
    // the binaries.
    let apt = |args: &[&str]| -> Result<()> {
        let status = Command::new("apt-get")
            .args(args)
            .env("DEBIAN_FRONTEND", "noninteractive")
            .stdin(Stdio::null())
            .status()
            .with_context(|| format!("running apt-get {}", args.join(" ")))?;
        if !status.success() {
            bail!("`apt-get {}` failed ({status})", args.join(" "));
        }
        Ok(())
    };
    apt(&["update"])?;
    check_interrupted()?;
    let mut args = vec!["install", "-y"];
    args.extend(APT_PACKAGES);
    apt(&args)?;
    check_interrupted()?;
    find_installation().ok_or_else(|| {
        anyhow!(
            "installed {} but still cannot find {}",
            APT_PACKAGES.join(" "),
            missing_description()
        )
    })
}

/// The binaries, if all are present.
pub fn find_installation() -> Option<Installation> {
    Some(Installation {
        pg_bin: find_pg_bin()?,
        redis_server: find_redis_server()?,
    })
}

fn missing_description() -> String {
    let mut missing = Vec::new();
    if find_pg_bin().is_none() {
        missing.push(format!("PostgreSQL {}", PG_PROGRAMS.join("/")));
    }
    if find_redis_server().is_none() {
        missing.push("redis-server".to_string());
    }
    missing.join(", ")
}

/// Debian's `/usr/lib/postgresql/<version>/bin` (highest version), else the directory of a
/// `pg_ctl` found on PATH.
fn find_pg_bin() -> Option<PathBuf> {
    let complete = |dir: &Path| PG_PROGRAMS.iter().all(|p| dir.join(p).is_file());
    let mut versions: Vec<(u32, PathBuf)> = fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|entry| {
            let version = entry
                .file_name()
                .to_str()?
                .split('.')
                .next()?
                .parse::<u32>()
                .ok()?;
            let bin = entry.path().join("bin");
            complete(&bin).then_some((version, bin))
        })
        .collect();
    versions.sort();
    if let Some((_, bin)) = versions.pop() {
        return Some(bin);
    }
    let pg_ctl = which("pg_ctl")?;
    let dir = fs::canonicalize(pg_ctl).ok()?.parent()?.to_path_buf();
    complete(&dir).then_some(dir)
}

fn find_redis_server() -> Option<PathBuf> {
    which("redis-server").or_else(|| {
        [
            "/usr/bin/redis-server",
            "/usr/sbin/redis-server",
            "/usr/local/bin/redis-server",
        ]
        .iter()
        .map(PathBuf::from)
        .find(|p| p.is_file())
    })
}

/// The first executable called `name` on PATH.
fn which(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(name))
        .find(|p| p.is_file())
}

// ---- process helpers ------------------------------------------------------------------------

pub fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

/// A free TCP port of 127.0.0.1 (bound, read and released), never the same twice in one run.
pub fn free_port() -> Result<u16> {
    static GIVEN: Mutex<Option<HashSet<u16>>> = Mutex::new(None);
    for _ in 0..100 {
        let listener =
            TcpListener::bind("127.0.0.1:0").context("binding 127.0.0.1:0 to find a free port")?;
        let port = listener
            .local_addr()
            .context("reading the port of a bound socket")?
            .port();
        drop(listener);
        let mut given = GIVEN
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if given.get_or_insert_with(HashSet::new).insert(port) {
            return Ok(port);
        }
    }
    bail!("could not find a free port on 127.0.0.1")
}

/// Whether process `pid` exists and is not a zombie.
pub fn pid_alive(pid: i32) -> bool {
    if pid <= 0 {
        return false;
    }
    match fs::read_to_string(format!("/proc/{pid}/stat")) {
        // The state follows the parenthesised command name, which may itself contain ')'.
        Ok(stat) => stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.trim_start().chars().next())
            .is_some_and(|state| state != 'Z' && state != 'X'),
        Err(_) if Path::new("/proc/self").exists() => false,
        Err(_) => kill(Pid::from_raw(pid), None).is_ok(),
    }
}

/// The command line of process `pid`, arguments separated by spaces.
pub fn pid_cmdline(pid: i32) -> Option<String> {
    let raw = fs::read(format!("/proc/{pid}/cmdline")).ok()?;
    Some(
        String::from_utf8_lossy(&raw)
            .split('\0')
            .filter(|s| !s.is_empty())
            .collect::<Vec<_>>()
            .join(" "),
    )
}

/// Sends `sig` to `pid`, ignoring a process that is already gone.
pub fn send_signal(pid: i32, sig: Signal) -> Result<()> {
    match kill(Pid::from_raw(pid), sig) {
        Ok(()) | Err(nix::errno::Errno::ESRCH) => Ok(()),
        Err(e) => Err(anyhow!("sending {sig} to process {pid}: {e}")),
    }
}

/// Polls until `done` holds or `timeout` passes; true if it held.
fn poll_until(timeout: Duration, mut done: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if done() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// SIGTERM, wait up to `grace`, then SIGKILL. True if the process ended within the grace period.
pub fn terminate_pid(pid: i32, grace: Duration) -> Result<bool> {
    if !pid_alive(pid) {
        return Ok(true);
    }
    send_signal(pid, Signal::SIGTERM)?;
    if poll_until(grace, || !pid_alive(pid)) {
        return Ok(true);
    }
    send_signal(pid, Signal::SIGKILL)?;
    poll_until(Duration::from_secs(5), || !pid_alive(pid));
    Ok(false)
}

/// The last `lines` lines of a (log) file, for error messages.
pub fn tail(path: &Path, lines: usize) -> String {
    match fs::read(path) {
        Ok(bytes) => {
            let text = String::from_utf8_lossy(&bytes);
            let all: Vec<&str> = text.lines().collect();
            let start = all.len().saturating_sub(lines);
            let shown = all[start..].join("\n");
            if shown.trim().is_empty() {
                format!("({} is empty)", path.display())
            } else {
                format!("--- last lines of {} ---\n{shown}\n---", path.display())
            }
        }
        Err(e) => format!("(cannot read {}: {e})", path.display()),
    }
}

/// Runs a child in its own process group with stdin closed and waits for it. If we are
/// interrupted meanwhile, the signal is forwarded to the child's whole group (SIGKILL after
/// 30 s); the child's status is returned either way.
pub async fn run_child(cmd: &mut tokio::process::Command, what: &str) -> Result<ExitStatus> {
    cmd.stdin(Stdio::null()).process_group(0).kill_on_drop(true);
    let mut child = cmd.spawn().with_context(|| format!("starting {what}"))?;
    let Some(pid) = child.id() else {
        return child
            .wait()
            .await
            .with_context(|| format!("waiting for {what}"));
    };
    let group = Pid::from_raw(i32::try_from(pid).context("child pid out of range")?);
    tokio::select! {
        status = child.wait() => return status.with_context(|| format!("waiting for {what}")),
        sig = crate::wait_interrupt() => {
            let sig = Signal::try_from(sig).unwrap_or(Signal::SIGTERM);
            let _ = killpg(group, sig);
        }
    }
    match tokio::time::timeout(Duration::from_secs(30), child.wait()).await {
        Ok(status) => status.with_context(|| format!("waiting for {what}")),
        Err(_) => {
            eprintln!("xtask: {what} did not stop within 30 s, killing it");
            let _ = killpg(group, Signal::SIGKILL);
            child
                .wait()
                .await
                .with_context(|| format!("waiting for {what}"))
        }
    }
}

/// The exit code to report for a child's status (128 + signal if it was killed).
pub fn exit_code(status: ExitStatus) -> u8 {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(code), _) => u8::try_from(code).unwrap_or(1),
        (None, Some(sig)) => u8::try_from(128 + sig).unwrap_or(1),
        (None, None) => 1,
    }
}

// ---- PostgreSQL -----------------------------------------------------------------------------

/// How a [`Postgres`] instance treats its data.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PgMode {
    /// Wiped before start; durability traded for speed (`initdb --no-sync`,
    /// `synchronous_commit = off`).
    Ephemeral,
    /// Kept across runs; initialized on first use.
    Persistent,
}

/// A private PostgreSQL server.
#[derive(Debug)]
pub struct Postgres {
    bin: PathBuf,
    /// `PGDATA`.
    data: PathBuf,
    log: PathBuf,
    port: u16,
    /// `Some("postgres")` when we are root.
    run_as: Option<String>,
    running: bool,
}

impl Postgres {
    /// Starts PostgreSQL with its files in `<profile_dir>/pg` (data in `pg/data`, log in
    /// `pg/postgres.log`, Unix socket in `pg/`), on a free port.
    pub fn start(inst: &Installation, profile_dir: &Path, mode: PgMode) -> Result<Self> {
        let run_as = is_root().then(|| PG_USER.to_string());
        let dir = pg_dir(profile_dir, run_as.is_some())?;
        let data = dir.join("data");
        let mut pg = Postgres {
            bin: inst.pg_bin.clone(),
            log: dir.join("postgres.log"),
            data,
            port: 0,
            run_as,
            running: false,
        };

        // A server left behind by a run that could not clean up (e.g. SIGKILL) still owns the
        // data directory: stop it first.
        if running_postmaster(&pg.data).is_some() {
            step(format!(
                "stopping a PostgreSQL left running in {}",
                pg.data.display()
            ));
            pg.pg_ctl_stop("immediate")?;
        }
        if mode == PgMode::Ephemeral {
            remove_dir_all_if_exists(&dir)?;
        }
        create_owned_dir(&dir, pg.run_as.as_deref())?;

        if !pg.data.join("PG_VERSION").is_file() {
            // Whatever an interrupted initdb left behind.
            remove_dir_all_if_exists(&pg.data)?;
            pg.initdb(mode)?;
        }
        check_interrupted()?;
        pg.port = free_port()?;
        pg.write_config(&dir, mode)?;

        step(format!(
            "starting PostgreSQL on 127.0.0.1:{} ({})",
            pg.port,
            pg.data.display()
        ));
        let output = pg
            .pg_command("pg_ctl")
            .arg("start")
            .arg("-D")
            .arg(&pg.data)
            .arg("-l")
            .arg(&pg.log)
            .args(["-w", "-t"])
            .arg(SERVER_TIMEOUT.as_secs().to_string())
            .stdin(Stdio::null())
            .process_group(0)
            .output()
            .context("running pg_ctl start")?;
        pg.running = true; // From here on, Drop stops whatever may have started.
        if !output.status.success() {
            bail!(
                "PostgreSQL failed to start (pg_ctl: {}):\n{}{}\n{}",
                output.status,
                String::from_utf8_lossy(&output.stdout),
                String::from_utf8_lossy(&output.stderr),
                tail(&pg.log, 30)
            );
        }
        pg.wait_ready()?;
        Ok(pg)
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn data_dir(&self) -> &Path {
        &self.data
    }

    /// `postgres://<user>@127.0.0.1:<port>/<database>`.
    pub fn url(&self, user: &str, database: &str) -> String {
        format!("postgres://{user}@127.0.0.1:{}/{database}", self.port)
    }

    /// Creates `name` (owned by `postgres`) unless it exists.
    pub async fn ensure_database(&self, name: &str) -> Result<()> {
        let url = self.url("postgres", "postgres");
        let (client, connection) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
            .await
            .with_context(|| format!("connecting to {url}"))?;
        let conn = tokio::spawn(connection);
        let exists = client
            .query_opt("SELECT 1 FROM pg_database WHERE datname = $1", &[&name])
            .await
            .context("looking up databases")?
            .is_some();
        if !exists {
            let ident = name.replace('"', "\"\"");
            client
                .batch_execute(&format!(
                    "CREATE DATABASE \"{ident}\" OWNER postgres ENCODING 'UTF8'"
                ))
                .await
                .with_context(|| format!("creating database {name}"))?;
        }
        drop(client);
        let _ = conn.await;
        Ok(())
    }

    /// Stops the server (`pg_ctl stop -m fast`, then `-m immediate` if that fails).
    pub fn stop(&mut self) -> Result<()> {
        if !self.running {
            return Ok(());
        }
        self.running = false;
        step(format!("stopping PostgreSQL (127.0.0.1:{})", self.port));
        self.pg_ctl_stop("fast").or_else(|e| {
            eprintln!("xtask: {e:#}; trying immediate shutdown");
            self.pg_ctl_stop("immediate")
        })
    }

    /// Leaves the server running when this value is dropped.
    pub fn detach(mut self) {
        self.running = false;
    }

    /// Stops a server started by an earlier, detached run, given its data directory.
    pub fn stop_detached(inst: &Installation, data: &Path) -> Result<()> {
        let pg = Postgres {
            bin: inst.pg_bin.clone(),
            data: data.to_path_buf(),
            log: PathBuf::new(),
            port: 0,
            run_as: is_root().then(|| PG_USER.to_string()),
            running: false,
        };
        pg.pg_ctl_stop("fast").or_else(|e| {
            eprintln!("xtask: {e:#}; trying immediate shutdown");
            pg.pg_ctl_stop("immediate")
        })
    }

    fn initdb(&self, mode: PgMode) -> Result<()> {
        step(format!(
            "initializing a PostgreSQL cluster in {}",
            self.data.display()
        ));
        let mut cmd = self.pg_command("initdb");
        cmd.arg("-D").arg(&self.data).args([
            "-A",
            "trust",
            "-U",
            "postgres",
            "--encoding",
            "UTF8",
            "--no-locale",
        ]);
        if mode == PgMode::Ephemeral {
            cmd.arg("--no-sync");
        }
        let output = cmd
            .stdin(Stdio::null())
            .output()
            .context("running initdb")?;
        if !output.status.success() {
            bail!(
                "initdb failed ({}):\n{}{}",
                output.status,
                String::from_utf8_lossy(&output.stdout),
                String::from_utf8_lossy(&output.stderr)
            );
        }
        // Our settings live in relaydesk.conf, rewritten at every start (the port changes).
        let conf = self.data.join("postgresql.conf");
        let mut file = fs::OpenOptions::new()
            .append(true)
            .open(&conf)
            .with_context(|| format!("opening {}", conf.display()))?;
        file.write_all(b"\n# Relaydesk (cargo xtask)\ninclude_if_exists = 'relaydesk.conf'\n")
            .with_context(|| format!("writing {}", conf.display()))?;
        Ok(())
    }

    fn write_config(&self, dir: &Path, mode: PgMode) -> Result<()> {
        // Unix socket paths are limited to 107 bytes; TCP is all we use, so go without a socket
        // rather than fail when the workspace path is long.
        let socket_dir = if dir.join(".s.PGSQL.65535").as_os_str().len() <= 100 {
            dir.to_string_lossy().replace('\'', "''")
        } else {
            String::new()
        };
        let mut conf = format!(
            "listen_addresses = '127.0.0.1'\n\
             port = {}\n\
             unix_socket_directories = '{socket_dir}'\n\
             max_connections = 300\n\
             shared_buffers = 128MB\n\
             autovacuum_naptime = 10s\n",
            self.port
        );
        // autovacuum_naptime: the pool's prepared statements keep the plans made at their
        // first execution until an ANALYZE of their tables invalidates them; on a fresh
        // database those first plans are made on empty tables, so let autoanalyze notice
        // growing tables within seconds rather than a minute.
        if mode == PgMode::Ephemeral {
            conf.push_str("synchronous_commit = off\n");
        }
        let path = self.data.join("relaydesk.conf");
        fs::write(&path, conf).with_context(|| format!("writing {}", path.display()))?;
        chown_to(&path, self.run_as.as_deref())
    }

    fn wait_ready(&self) -> Result<()> {
        let deadline = Instant::now() + SERVER_TIMEOUT;
        loop {
            check_interrupted()?;
            let status = self
                .pg_command("pg_isready")
                .args(["-h", "127.0.0.1", "-p"])
                .arg(self.port.to_string())
                .args(["-U", "postgres", "-d", "postgres", "-t", "2"])
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .context("running pg_isready")?;
            if status.success() {
                return Ok(());
            }
            if Instant::now() >= deadline {
                bail!(
                    "PostgreSQL on 127.0.0.1:{} not ready after {} s\n{}",
                    self.port,
                    SERVER_TIMEOUT.as_secs(),
                    tail(&self.log, 30)
                );
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    fn pg_ctl_stop(&self, mode: &str) -> Result<()> {
        let output = self
            .pg_command("pg_ctl")
            .arg("stop")
            .arg("-D")
            .arg(&self.data)
            .args(["-m", mode, "-w", "-t"])
            .arg(SERVER_TIMEOUT.as_secs().to_string())
            .stdin(Stdio::null())
            .output()
            .context("running pg_ctl stop")?;
        let stderr = String::from_utf8_lossy(&output.stderr);
        // No server (no or a stale pid file): nothing to stop.
        if output.status.success() || running_postmaster(&self.data).is_none() {
            return Ok(());
        }
        bail!(
            "pg_ctl stop -m {mode} failed for {} ({}): {}",
            self.data.display(),
            output.status,
            stderr.trim()
        )
    }

    /// A PostgreSQL program, run as `postgres` when we are root.
    fn pg_command(&self, program: &str) -> Command {
        let exe = self.bin.join(program);
        let mut cmd = match &self.run_as {
            Some(user) => {
                let mut cmd = Command::new("runuser");
                cmd.args(["-u", user, "--"]).arg(exe);
                cmd
            }
            None => Command::new(exe),
        };
        // The postgres user may not be able to enter our working directory.
        cmd.current_dir("/");
        for var in [
            "PGDATA",
            "PGHOST",
            "PGPORT",
            "PGUSER",
            "PGDATABASE",
            "PGPASSWORD",
            "PGSERVICE",
            "PGOPTIONS",
        ] {
            cmd.env_remove(var);
        }
        cmd
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        if let Err(e) = self.stop() {
            eprintln!("xtask: error stopping PostgreSQL: {e:#}");
        }
    }
}

/// The pid of the PostgreSQL server running on `data`, if any (a stale `postmaster.pid`, e.g.
/// after a crash or reboot, does not count; PostgreSQL replaces it at start).
pub fn running_postmaster(data: &Path) -> Option<i32> {
    let text = fs::read_to_string(data.join("postmaster.pid")).ok()?;
    let pid = text.lines().next()?.trim().parse().ok()?;
    (pid_alive(pid) && pid_cmdline(pid).is_some_and(|c| c.contains("postgres"))).then_some(pid)
}

/// The folder of a profile's PostgreSQL files: `<profile_dir>/pg`, unless we are root and the
/// `postgres` user cannot reach it (e.g. a clone under /root, mode 700), in which case a folder
/// under /var/tmp derived from that path.
pub fn pg_dir(profile_dir: &Path, as_postgres: bool) -> Result<PathBuf> {
    let preferred = profile_dir.join("pg");
    if !as_postgres {
        return Ok(preferred);
    }
    fs::create_dir_all(profile_dir)
        .with_context(|| format!("creating {}", profile_dir.display()))?;
    if postgres_can_reach(profile_dir)? {
        return Ok(preferred);
    }
    // FNV-1a: stable across Rust versions, so `down` finds the same folder.
    let hash = preferred
        .as_os_str()
        .as_encoded_bytes()
        .iter()
        .fold(0xcbf2_9ce4_8422_2325_u64, |h, &b| {
            (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
        });
    let fallback = PathBuf::from(format!("/var/tmp/relaydesk-{hash:016x}/pg"));
    Ok(fallback)
}

/// Whether the `postgres` user can traverse into `dir` (every ancestor searchable).
fn postgres_can_reach(dir: &Path) -> Result<bool> {
    let status = Command::new("runuser")
        .args(["-u", PG_USER, "--", "test", "-x"])
        .arg(dir)
        .current_dir("/")
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .context("running runuser (util-linux) to check the postgres user's access")?;
    Ok(status.success())
}

/// Creates `dir` (and parents) and, as root, hands it to the postgres user with mode 700.
fn create_owned_dir(dir: &Path, owner: Option<&str>) -> Result<()> {
    fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    if owner.is_some() {
        // Fallback folders under /var/tmp: make the parent private to root and postgres.
        chown_to(dir, owner)?;
    }
    use std::os::unix::fs::PermissionsExt;
    fs::set_permissions(dir, fs::Permissions::from_mode(0o700))
        .with_context(|| format!("setting permissions of {}", dir.display()))
}

fn chown_to(path: &Path, owner: Option<&str>) -> Result<()> {
    let Some(owner) = owner else { return Ok(()) };
    let user = User::from_name(owner)
        .with_context(|| format!("looking up user {owner}"))?
        .with_context(|| {
            format!("user {owner} does not exist (it comes with the postgresql package)")
        })?;
    nix::unistd::chown(path, Some(user.uid), Some(user.gid))
        .with_context(|| format!("giving {} to {owner}", path.display()))
}

fn remove_dir_all_if_exists(dir: &Path) -> Result<()> {
    match fs::remove_dir_all(dir) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e).with_context(|| format!("removing {}", dir.display())),
    }
}

// ---- Redis ----------------------------------------------------------------------------------

/// A private Redis server (no persistence).
#[derive(Debug)]
pub struct Redis {
    port: u16,
    pid: Option<i32>,
    running: bool,
}

impl Redis {
    /// Starts redis-server on a free port with its files (pid, log) in `dir`, wiped first when
    /// `fresh`.
    pub fn start(inst: &Installation, dir: &Path, fresh: bool) -> Result<Self> {
        Redis::stop_in(dir)?; // One left behind by a run that could not clean up.
        if fresh {
            remove_dir_all_if_exists(dir)?;
        }
        fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        let port = free_port()?;
        let pidfile = dir.join("redis.pid");
        let logfile = dir.join("redis.log");
        let _ = fs::remove_file(&pidfile);
        step(format!(
            "starting Redis on 127.0.0.1:{port} ({})",
            dir.display()
        ));
        let output = Command::new(&inst.redis_server)
            .args([
                "--port",
                &port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
            ])
            .arg("--dir")
            .arg(dir)
            .args(["--daemonize", "yes", "--pidfile"])
            .arg(&pidfile)
            .arg("--logfile")
            .arg(&logfile)
            .current_dir(dir)
            .stdin(Stdio::null())
            .process_group(0)
            .output()
            .with_context(|| format!("running {}", inst.redis_server.display()))?;
        let mut redis = Redis {
            port,
            pid: None,
            running: true,
        };
        if !output.status.success() {
            bail!(
                "redis-server failed to start ({}):\n{}{}\n{}",
                output.status,
                String::from_utf8_lossy(&output.stdout),
                String::from_utf8_lossy(&output.stderr),
                tail(&logfile, 30)
            );
        }
        let deadline = Instant::now() + SERVER_TIMEOUT;
        loop {
            check_interrupted()?;
            if redis.pid.is_none() {
                redis.pid = read_pid(&pidfile);
            }
            if redis.pid.is_some() && ping(port).is_ok() {
                return Ok(redis);
            }
            if let Some(pid) = redis.pid.filter(|&pid| !pid_alive(pid)) {
                bail!(
                    "redis-server (pid {pid}) exited during startup\n{}",
                    tail(&logfile, 30)
                );
            }
            if Instant::now() >= deadline {
                let why = ping(port)
                    .err()
                    .map(|e| format!("{e:#}"))
                    .unwrap_or_else(|| "no pid file".into());
                bail!(
                    "Redis on 127.0.0.1:{port} not ready after {} s ({why})\n{}",
                    SERVER_TIMEOUT.as_secs(),
                    tail(&logfile, 30)
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn pid(&self) -> Option<i32> {
        self.pid
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// `SHUTDOWN NOSAVE`, then signals if the server does not go away.
    pub fn stop(&mut self) -> Result<()> {
        if !self.running {
            return Ok(());
        }
        self.running = false;
        step(format!("stopping Redis (127.0.0.1:{})", self.port));
        shutdown(self.port, self.pid)
    }

    /// Leaves the server running when this value is dropped.
    pub fn detach(mut self) {
        self.running = false;
    }

    /// Stops a server started by an earlier run in `dir` (found through its pid file).
    pub fn stop_in(dir: &Path) -> Result<()> {
        let Some(pid) = read_pid(&dir.join("redis.pid")) else {
            return Ok(());
        };
        if !pid_alive(pid) || !pid_cmdline(pid).is_some_and(|c| c.contains("redis")) {
            return Ok(());
        }
        step(format!(
            "stopping a Redis left running from {} (pid {pid})",
            dir.display()
        ));
        terminate_pid(pid, Duration::from_secs(10)).map(|_| ())
    }

    /// Stops a server started by an earlier, detached run.
    pub fn stop_detached(port: u16, pid: Option<i32>) -> Result<()> {
        shutdown(port, pid)
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        if let Err(e) = self.stop() {
            eprintln!("xtask: error stopping Redis: {e:#}");
        }
    }
}

fn read_pid(path: &Path) -> Option<i32> {
    fs::read_to_string(path).ok()?.trim().parse().ok()
}

/// Sends one RESP command and returns the first reply line.
fn redis_command(port: u16, args: &[&str]) -> Result<String> {
    let mut stream =
        TcpStream::connect_timeout(&([127, 0, 0, 1], port).into(), Duration::from_secs(2))
            .with_context(|| format!("connecting to Redis on 127.0.0.1:{port}"))?;
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .context("setting a socket timeout")?;
    let mut request = format!("*{}\r\n", args.len());
    for arg in args {
        request.push_str(&format!("${}\r\n{arg}\r\n", arg.len()));
    }
    stream
        .write_all(request.as_bytes())
        .context("writing to Redis")?;
    let mut reply = Vec::new();
    let mut buf = [0u8; 256];
    while !reply.ends_with(b"\r\n") {
        match stream.read(&mut buf).context("reading from Redis")? {
            0 => break,
            n => reply.extend_from_slice(&buf[..n]),
        }
    }
    Ok(String::from_utf8_lossy(&reply).trim_end().to_string())
}

fn ping(port: u16) -> Result<()> {
    let reply = redis_command(port, &["PING"])?;
    if reply == "+PONG" {
        Ok(())
    } else {
        bail!("unexpected reply to PING: {reply:?}")
    }
}

fn shutdown(port: u16, pid: Option<i32>) -> Result<()> {
    // The server closes the connection without a reply when it shuts down.
    let _ = redis_command(port, &["SHUTDOWN", "NOSAVE"]);
    match pid {
        Some(pid) => {
            if poll_until(Duration::from_secs(10), || !pid_alive(pid)) {
                return Ok(());
            }
            eprintln!("xtask: Redis (pid {pid}) ignored SHUTDOWN, terminating it");
            terminate_pid(pid, Duration::from_secs(10)).map(|_| ())
        }
        None => {
            if poll_until(Duration::from_secs(10), || ping(port).is_err()) {
                Ok(())
            } else {
                bail!("Redis on 127.0.0.1:{port} is still answering after SHUTDOWN")
            }
        }
    }
}
