//! Scaling past one process: a [`Fleet`] of connection pools, either in this process or,
//! past `--per-process` connections, in worker processes of this same binary (the hidden
//! `worker` subcommand), each bound to its own loopback source address (127.0.0.2, …)
//! so that each has its own range of ephemeral ports.
//!
//! Parent → worker (stdin, JSON lines): the [`PoolTask`], then [`Command`]s.
//! Worker → parent (stdout, JSON lines): [`WorkerMsg`]s — every second the window of
//! measurements (HDR histograms V2-serialized, base64), merged exactly by the parent,
//! and the pool's [`Event`]s.

use std::net::{IpAddr, Ipv4Addr};
use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::sync::mpsc;

use crate::pool::{self, Command, Event, PoolTask};
use crate::stats::{Rec, WireWindow};

/// What a worker prints, one JSON object per line.
#[derive(Debug, Serialize, Deserialize)]
pub enum WorkerMsg {
    Progress {
        window: WireWindow,
        connections: i64,
    },
    Event(Event),
}

/// How to split connections over processes.
#[derive(Debug, Clone)]
pub struct Scale {
    /// Connections one process holds at most.
    pub per_process: usize,
    /// This program, to start workers with; `None`: never spawn workers.
    pub worker_exe: Option<PathBuf>,
}

impl Default for Scale {
    fn default() -> Self {
        Scale {
            per_process: 15_000,
            worker_exe: None,
        }
    }
}

/// Every pool of a scenario, wherever it runs.
pub struct Fleet {
    cmds: Vec<mpsc::UnboundedSender<Command>>,
    events: mpsc::UnboundedReceiver<Event>,
    children: Vec<tokio::process::Child>,
    /// Own CPU use (fraction of a core) reported by each pool at its end.
    pub cpu: Vec<f64>,
    /// How many worker processes were used (0: in-process).
    pub workers: usize,
}

impl Fleet {
    /// Starts `task` (all of its connections) in-process or split over workers.
    pub fn start(task: PoolTask, scale: &Scale, rec: &Rec) -> Result<Fleet> {
        let (ev_tx, events) = mpsc::unbounded_channel();
        let per = scale.per_process.max(1);
        if task.connections <= per {
            let (tx, rx) = mpsc::unbounded_channel();
            tokio::spawn(pool::run(task, rec.clone(), rx, ev_tx));
            return Ok(Fleet {
                cmds: vec![tx],
                events,
                children: Vec::new(),
                cpu: Vec::new(),
                workers: 0,
            });
        }
        let Some(exe) = &scale.worker_exe else {
            bail!(
                "{} connections exceed --per-process {per}, and no worker executable is available",
                task.connections
            );
        };
        let n = task.connections.div_ceil(per);
        if n > 250 {
            bail!("{n} worker processes needed: raise --per-process");
        }
        let mut fleet = Fleet {
            cmds: Vec::new(),
            events,
            children: Vec::new(),
            cpu: Vec::new(),
            workers: n,
        };
        let mut offset = 0;
        for i in 0..n {
            let count = task.connections / n + usize::from(i < task.connections % n);
            let mut t = task.clone();
            t.connections = count;
            t.offset = task.offset + offset;
            t.rate = task.rate / n as f64;
            t.source = Some(IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2 + i as u8)));
            offset += count;
            fleet.spawn_worker(i, exe, &t, rec, ev_tx.clone())?;
        }
        Ok(fleet)
    }

    fn spawn_worker(
        &mut self,
        i: usize,
        exe: &PathBuf,
        task: &PoolTask,
        rec: &Rec,
        ev_tx: mpsc::UnboundedSender<Event>,
    ) -> Result<()> {
        let mut child = tokio::process::Command::new(exe)
            .arg("worker")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("starting worker {} ({})", i, exe.display()))?;
        let mut stdin = child.stdin.take().context("worker stdin")?;
        let stdout = child.stdout.take().context("worker stdout")?;
        let first = serde_json::to_string(task)? + "\n";
        let (tx, mut rx) = mpsc::unbounded_channel::<Command>();
        tokio::spawn(async move {
            if stdin.write_all(first.as_bytes()).await.is_err() {
                return;
            }
            while let Some(cmd) = rx.recv().await {
                let Ok(line) = serde_json::to_string(&cmd) else {
                    continue;
                };
                if stdin.write_all((line + "\n").as_bytes()).await.is_err() {
                    return;
                }
                let _ = stdin.flush().await;
            }
        });
        let rec = rec.clone();
        tokio::spawn(async move {
            let mut lines = BufReader::new(stdout).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                match serde_json::from_str::<WorkerMsg>(&line) {
                    Ok(WorkerMsg::Progress {
                        window,
                        connections,
                    }) => {
                        match window.decode() {
                            Ok(w) => rec.merge(&w),
                            Err(e) => eprintln!("loadtest: worker {i}: {e:#}"),
                        }
                        rec.lock().remote_connections.insert(i, connections);
                    }
                    Ok(WorkerMsg::Event(e)) => {
                        let _ = ev_tx.send(e);
                    }
                    Err(e) => eprintln!("loadtest: worker {i}: unreadable line ({e})"),
                }
            }
            rec.lock().remote_connections.remove(&i);
        });
        self.cmds.push(tx);
        self.children.push(child);
        Ok(())
    }

    /// Process ids of the worker processes (none when the pools run in this process).
    pub fn pids(&self) -> Vec<u32> {
        self.children.iter().filter_map(|c| c.id()).collect()
    }

    pub fn pools(&self) -> usize {
        self.cmds.len()
    }

    pub fn send(&self, cmd: &Command) {
        for tx in &self.cmds {
            let _ = tx.send(cmd.clone());
        }
    }

    /// Waits until every pool has sent an event accepted by `pick`, or `timeout`;
    /// returns those events. `Done` events also record the pools' CPU use.
    pub async fn wait(&mut self, pick: fn(&Event) -> bool, timeout: Duration) -> Vec<Event> {
        let deadline = tokio::time::Instant::now() + timeout;
        let mut got = Vec::new();
        while got.len() < self.pools() {
            match tokio::time::timeout_at(deadline, self.events.recv()).await {
                Ok(Some(e)) => {
                    if let Event::Done { cpu } = e {
                        self.cpu.push(cpu);
                    }
                    if pick(&e) {
                        got.push(e);
                    }
                }
                Ok(None) | Err(_) => break,
            }
        }
        got
    }

    /// Stops every pool (counting what is missing up to `heads`) and waits for them.
    pub async fn stop(
        mut self,
        heads: std::collections::HashMap<uuid::Uuid, u64>,
        timeout: Duration,
    ) -> Vec<f64> {
        self.send(&Command::Stop { heads });
        self.wait(|e| matches!(e, Event::Done { .. }), timeout)
            .await;
        for c in &mut self.children {
            // Workers exit after Done; give the last progress line a moment to arrive.
            let _ = tokio::time::timeout(Duration::from_secs(5), c.wait()).await;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
        self.cpu
    }
}

/// The sum of `ok`/`failed` over `Ready` or `Resumed` events.
pub fn tally(events: &[Event]) -> (usize, usize) {
    events.iter().fold((0, 0), |(o, f), e| match e {
        Event::Ready { ok, failed } | Event::Resumed { ok, failed } => (o + ok, f + failed),
        Event::Done { .. } => (o, f),
    })
}

/// The hidden `worker` subcommand: runs one pool for the parent over stdin/stdout.
pub async fn worker_main() -> Result<()> {
    crate::machine::raise_nofile();
    let mut lines = BufReader::new(tokio::io::stdin()).lines();
    let first = lines
        .next_line()
        .await?
        .context("worker: no task on stdin")?;
    let task: PoolTask = serde_json::from_str(&first).context("worker: bad task")?;
    let rec = Rec::new();
    let (cmd_tx, cmd_rx) = mpsc::unbounded_channel();
    let (ev_tx, mut ev_rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Ok(Some(line)) = lines.next_line().await {
            match serde_json::from_str::<Command>(&line) {
                Ok(c) => {
                    let _ = cmd_tx.send(c);
                }
                Err(e) => eprintln!("loadtest worker: bad command ({e})"),
            }
        }
        // The parent went away: stop.
        let _ = cmd_tx.send(Command::Stop {
            heads: Default::default(),
        });
    });
    tokio::spawn(pool::run(task, rec.clone(), cmd_rx, ev_tx));
    let mut out = tokio::io::stdout();
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        tokio::select! {
            _ = tick.tick() => emit(&mut out, &progress(&rec)).await?,
            e = ev_rx.recv() => {
                let Some(e) = e else { break };
                let done = matches!(e, Event::Done { .. });
                if done {
                    emit(&mut out, &progress(&rec)).await?;
                }
                emit(&mut out, &WorkerMsg::Event(e)).await?;
                if done {
                    break;
                }
            }
        }
    }
    Ok(())
}

fn progress(rec: &Rec) -> WorkerMsg {
    WorkerMsg::Progress {
        window: rec.take_window().to_wire(),
        connections: rec.open_connections(),
    }
}

async fn emit(out: &mut tokio::io::Stdout, m: &WorkerMsg) -> Result<()> {
    let line = serde_json::to_string(m)? + "\n";
    out.write_all(line.as_bytes()).await?;
    out.flush().await?;
    Ok(())
}
