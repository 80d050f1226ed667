//! `route`: routing and assignment under load. A fresh tenant with N human agents of
//! capacity C, all online, each holding one WebSocket (`hello` with its connection token)
//! on which it hears `{"t":"conv","event":"assigned",…}` when a conversation is assigned to
//! it. Visitors open conversations (`POST /v1/conversations`) at a rate, with bounded
//! concurrency; every conversation is resolved by the API key `hold` after its `assigned`
//! frame arrived, which frees the agent's slot and drains the queue oldest first. With a
//! rate above `N·C / hold` the agents are mostly busy and conversations queue.
//!
//! Measured (HDR histograms, one [`Rec`] like every scenario):
//! - create: the HTTP round trip of `POST /v1/conversations` (the report's `accept`, and
//!   the main interval of the generic gates: `--slo p99<50ms` gates it);
//! - time to assignment: from the start of the create request to the `assigned` frame at
//!   the assignee's socket (the report's `deliver`), also split into the conversations
//!   assigned at creation (`assign_at_once`) and those that waited in the queue
//!   (`assign_queued`);
//! - resolve: the HTTP round trip of `POST /v1/conversations/{id}/resolve`.
//!
//! Every second it reads `GET /v1/agents` (every page) and counts each agent whose
//! `open_conversations` exceeds its `max_concurrent` (the capacity invariant: must never
//! happen), and `GET /v1/queue` for the queue depth. After the load it waits until every
//! conversation was assigned and resolved, giving up after `grace` without progress; a
//! conversation never assigned is `stranded` (its status read back with `GET`: still
//! `queued`), one the API shows assigned but whose frame never came is `assigned_unseen`.
//! Capacity violations, stranded, unseen or unresolved conversations and failed creates
//! fail the run; `--slo` also takes the route figures (see [`split_slo`]).

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use futures::{stream, StreamExt, TryStreamExt};
use relaydesk_shared::wire::{ConvEvent, ServerFrame};
use serde::Serialize;
use serde_json::{json, Value};
use tokio::sync::{watch, Semaphore};
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::Message as WsMessage;
use uuid::Uuid;

use super::{finish_report, schedule, settle, Common, Live};
use crate::client::{self, Ws};
use crate::machine::CpuClock;
use crate::report::Report;
use crate::setup::{Api, Tenant, Visitor};
use crate::slo::{self, Gate, Op, Verdict};
use crate::stats::{self, Rec, Summary};

/// Histogram names besides `accept` (create) and `deliver` (time to assignment, all).
pub const ASSIGN_AT_ONCE: &str = "assign_at_once";
pub const ASSIGN_QUEUED: &str = "assign_queued";
pub const RESOLVE: &str = "resolve";
/// Counter names.
const QUEUED: &str = "queued";
const AT_ONCE: &str = "assigned_at_once";
const RESOLVED: &str = "resolved";
const RESOLVE_ERRORS: &str = "resolve_errors";
/// Creates that waited for a free slot of the concurrency bound before they started.
const CREATE_DELAYED: &str = "create_delayed";
/// Resolves that waited for a free slot of the concurrency bound when they were due.
const RESOLVE_DELAYED: &str = "resolve_delayed";

/// Concurrent requests while creating visitors.
const SETUP_PARALLEL: usize = 32;

#[derive(Debug, Clone, Serialize)]
pub struct RouteConfig {
    /// Human agents, all online, one WebSocket each.
    pub agents: usize,
    /// `max_concurrent` of every agent.
    pub capacity: u32,
    /// Visitor sessions, used round robin; `None`: one per conversation of the run.
    pub visitors: Option<usize>,
    /// New conversations per second.
    pub rate: f64,
    #[serde(serialize_with = "crate::report::human")]
    pub duration: Duration,
    /// Each conversation is resolved this long after its `assigned` frame arrived.
    #[serde(serialize_with = "crate::report::human")]
    pub hold: Duration,
    /// After the load, the longest wait without a conversation being assigned or resolved.
    #[serde(serialize_with = "crate::report::human")]
    pub grace: Duration,
    /// Creates in flight at most, and resolves in flight at most (the API key's client is
    /// one backend with a bounded pool; unbounded resolves each running the queue drain
    /// only contend with each other).
    pub concurrency: usize,
    /// Gates on the route figures (from [`split_slo`]); the generic ones are in `Common`.
    #[serde(skip)]
    pub gates: Vec<Gate>,
}

impl Default for RouteConfig {
    fn default() -> Self {
        RouteConfig {
            agents: 50,
            capacity: 4,
            visitors: None,
            rate: 200.0,
            duration: Duration::from_secs(30),
            hold: Duration::from_secs(2),
            grace: Duration::from_secs(30),
            concurrency: 64,
            gates: Vec::new(),
        }
    }
}

impl RouteConfig {
    /// Conversations the schedule opens.
    fn expected(&self) -> usize {
        ((self.rate * self.duration.as_secs_f64()).ceil() as usize).max(1)
    }
}

/// One conversation this run created.
#[derive(Debug, Clone, Copy)]
struct Conv {
    /// Start of its create request.
    t0: Instant,
    /// The create answered without an assignee.
    queued: bool,
    assigned: Option<Instant>,
}

#[derive(Debug, Default)]
struct Tracker {
    convs: HashMap<Uuid, Conv>,
    /// `assigned` frames of conversations whose create had not answered yet.
    early: HashMap<Uuid, Instant>,
    /// Conversations whose `assigned` frame arrived (first frame only).
    seen: HashSet<Uuid>,
    resolved: HashSet<Uuid>,
    resolve_failed: HashSet<Uuid>,
    /// Bumped on every assignment and resolve: the end waits while it moves.
    progress: u64,
    /// First resolve error.
    resolve_error: Option<String>,
}

impl Tracker {
    /// Every created conversation assigned, and every assigned one resolved (or failed).
    fn done(&self, created: u64) -> bool {
        self.convs.len() as u64 >= created
            && self.convs.values().all(|c| c.assigned.is_some())
            && self.resolved.len() + self.resolve_failed.len() >= self.seen.len()
    }
}

/// What the agents' sockets, the creates and the resolves share.
struct Shared {
    track: Mutex<Tracker>,
    rec: Rec,
    http: reqwest::Client,
    core: String,
    api_key: String,
    hold: Duration,
    resolves: Semaphore,
    stop: watch::Receiver<bool>,
}

impl Shared {
    fn track(&self) -> MutexGuard<'_, Tracker> {
        self.track.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn record_assignment(&self, c: &Conv, at: Instant) {
        let d = at.saturating_duration_since(c.t0);
        self.rec.record(stats::DELIVER, d);
        self.rec.record(
            if c.queued {
                ASSIGN_QUEUED
            } else {
                ASSIGN_AT_ONCE
            },
            d,
        );
        self.rec.add(stats::DELIVERED, 1);
    }

    /// A create answered.
    fn created(&self, id: Uuid, t0: Instant, queued: bool) {
        let mut t = self.track();
        let mut c = Conv {
            t0,
            queued,
            assigned: None,
        };
        if let Some(at) = t.early.remove(&id) {
            c.assigned = Some(at);
            self.record_assignment(&c, at);
        }
        t.convs.insert(id, c);
    }

    /// The assignee's socket got the `assigned` frame: measure, then resolve after `hold`.
    fn assigned(self: &Arc<Self>, id: Uuid, at: Instant) {
        {
            let mut t = self.track();
            if !t.seen.insert(id) {
                return;
            }
            t.progress += 1;
            match t.convs.get_mut(&id) {
                Some(c) => {
                    c.assigned = Some(at);
                    let c = *c;
                    self.record_assignment(&c, at);
                }
                None => {
                    t.early.insert(id, at);
                }
            }
        }
        let me = Arc::clone(self);
        tokio::spawn(async move {
            let mut stop = me.stop.clone();
            tokio::select! {
                _ = stop.wait_for(|s| *s) => {}
                () = me.resolve(id, at + me.hold) => {}
            }
        });
    }

    async fn resolve(&self, id: Uuid, due: Instant) {
        tokio::time::sleep_until(due).await;
        let permit = match self.resolves.try_acquire() {
            Ok(p) => Ok(p),
            Err(_) => {
                self.rec.add(RESOLVE_DELAYED, 1);
                self.resolves.acquire().await
            }
        };
        let Ok(_permit) = permit else { return };
        let started = Instant::now();
        let url = format!("{}/v1/conversations/{id}/resolve", self.core);
        let r = post(&self.http, &url, &self.api_key, json!({"reason": "solved"})).await;
        let took = started.elapsed();
        let mut t = self.track();
        t.progress += 1;
        match r {
            Ok(_) => {
                self.rec.record(RESOLVE, took);
                self.rec.add(RESOLVED, 1);
                t.resolved.insert(id);
            }
            Err(e) => {
                self.rec.add(RESOLVE_ERRORS, 1);
                t.resolve_failed.insert(id);
                t.resolve_error.get_or_insert_with(|| format!("{e:#}"));
            }
        }
    }
}

async fn post(http: &reqwest::Client, url: &str, bearer: &str, body: Value) -> Result<Value> {
    let resp = http
        .post(url)
        .bearer_auth(bearer)
        .json(&body)
        .send()
        .await
        .with_context(|| format!("POST {url}"))?;
    answer(url, resp).await
}

async fn get(http: &reqwest::Client, url: &str, bearer: &str) -> Result<Value> {
    let resp = http
        .get(url)
        .bearer_auth(bearer)
        .send()
        .await
        .with_context(|| format!("GET {url}"))?;
    answer(url, resp).await
}

async fn answer(url: &str, resp: reqwest::Response) -> Result<Value> {
    let status = resp.status();
    let body: Value = resp.json().await.unwrap_or(Value::Null);
    if !status.is_success() {
        bail!("{url}: {status}: {body}");
    }
    Ok(body)
}

/// One agent's socket: hears its `assigned` frames until `stop`. Returns why it ended
/// early, if it did.
async fn listen(
    mut ws: Ws,
    me: Uuid,
    shared: Arc<Shared>,
    mut stop: watch::Receiver<bool>,
) -> Option<String> {
    let me_text = me.to_string();
    let why = loop {
        let m = tokio::select! {
            _ = stop.wait_for(|s| *s) => break None,
            m = ws.next() => m,
        };
        match m {
            Some(Ok(WsMessage::Text(t))) => {
                // Queued conversations are announced to every eligible agent: look closer
                // only at frames that can be an assignment to this agent.
                if !(t.contains("\"assigned\"") && t.contains(&me_text)) {
                    continue;
                }
                let at = Instant::now();
                if let Some(ServerFrame::Conv {
                    conv,
                    event: ConvEvent::Assigned,
                    assignee: Some(a),
                    ..
                }) = client::parse(&t)
                {
                    if a == me {
                        shared.assigned(conv, at);
                    }
                }
            }
            Some(Ok(WsMessage::Close(c))) => {
                break Some(format!(
                    "closed by the edge: {:?}",
                    c.map(|c| u16::from(c.code))
                ))
            }
            Some(Ok(_)) => {}
            Some(Err(e)) => break Some(format!("connection lost: {e}")),
            None => break Some("connection ended".to_owned()),
        }
    };
    if why.is_none() {
        let _ = ws.close(None).await;
    }
    why
}

/// What the once-a-second sampler of `GET /v1/agents` and `GET /v1/queue` saw.
#[derive(Debug, Default)]
struct Samples {
    /// Reads of every agent page.
    agent_samples: u64,
    /// (agent, sample) pairs with `open_conversations > max_concurrent`.
    violations: u64,
    first_violation: Option<String>,
    /// Most slots in use at once (Σ open_conversations).
    max_busy: i64,
    max_queue_depth: i64,
    max_oldest_wait_ms: i64,
    errors: u64,
    first_error: Option<String>,
}

impl Samples {
    fn error(&mut self, e: anyhow::Error) {
        self.errors += 1;
        self.first_error.get_or_insert_with(|| format!("{e:#}"));
    }
}

async fn sample_agents(
    http: &reqwest::Client,
    core: &str,
    key: &str,
    s: &mut Samples,
) -> Result<()> {
    let mut cursor: Option<String> = None;
    let mut busy = 0;
    let mut over = Vec::new();
    loop {
        let url = match &cursor {
            Some(c) => format!("{core}/v1/agents?limit=200&cursor={c}"),
            None => format!("{core}/v1/agents?limit=200"),
        };
        let b = get(http, &url, key).await?;
        let agents = b["agents"]
            .as_array()
            .context("no agents in GET /v1/agents")?;
        for a in agents {
            let open = a["open_conversations"]
                .as_i64()
                .context("an agent without open_conversations")?;
            let max = a["max_concurrent"]
                .as_i64()
                .context("an agent without max_concurrent")?;
            busy += open;
            if open > max {
                over.push(format!("agent {} open {open} > max {max}", a["id"]));
            }
        }
        match b["next_cursor"].as_str() {
            Some(c) => cursor = Some(c.to_owned()),
            None => break,
        }
    }
    s.agent_samples += 1;
    s.max_busy = s.max_busy.max(busy);
    s.violations += over.len() as u64;
    if s.first_violation.is_none() {
        s.first_violation = over.into_iter().next();
    }
    Ok(())
}

async fn sample_queue(
    http: &reqwest::Client,
    core: &str,
    key: &str,
    s: &mut Samples,
) -> Result<()> {
    let b = get(http, &format!("{core}/v1/queue"), key).await?;
    let types = b["support_types"]
        .as_array()
        .context("no support_types in GET /v1/queue")?;
    let depth: i64 = types.iter().filter_map(|t| t["depth"].as_i64()).sum();
    let oldest = types
        .iter()
        .filter_map(|t| t["oldest_wait_ms"].as_i64())
        .max()
        .unwrap_or(0);
    s.max_queue_depth = s.max_queue_depth.max(depth);
    s.max_oldest_wait_ms = s.max_oldest_wait_ms.max(oldest);
    Ok(())
}

/// Samples every second until `stop`, then once more.
async fn sampler(
    http: reqwest::Client,
    core: String,
    key: String,
    mut stop: watch::Receiver<bool>,
) -> Samples {
    let mut s = Samples::default();
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let last = tokio::select! {
            _ = tick.tick() => false,
            _ = stop.wait_for(|s| *s) => true,
        };
        if let Err(e) = sample_agents(&http, &core, &key, &mut s).await {
            s.error(e);
        }
        if let Err(e) = sample_queue(&http, &core, &key, &mut s).await {
            s.error(e);
        }
        if last {
            return s;
        }
    }
}

pub async fn run(common: &Common, cfg: &RouteConfig) -> Result<Report> {
    if cfg.agents == 0 || cfg.capacity == 0 {
        bail!("--agents and --capacity must be at least 1");
    }
    if cfg.rate <= 0.0 || cfg.concurrency == 0 {
        bail!("--rate and --concurrency must be positive");
    }
    let api = common.api().await?;
    let tenant = api.tenant(&common.target.operator_token).await?;
    let agents = api
        .agents(&tenant, "agent", cfg.agents, cfg.capacity)
        .await?;
    let n_visitors = cfg.visitors.unwrap_or_else(|| cfg.expected()).max(1);
    let visitors: Arc<Vec<Visitor>> = Arc::new(create_visitors(&api, &tenant, n_visitors).await?);

    let rec = Rec::new();
    let (stop_tx, stop) = watch::channel(false);
    let shared = Arc::new(Shared {
        track: Mutex::new(Tracker::default()),
        rec: rec.clone(),
        http: api.http().clone(),
        core: common.target.core.trim_end_matches('/').to_owned(),
        api_key: tenant.api_key.clone(),
        hold: cfg.hold,
        resolves: Semaphore::new(cfg.concurrency),
        stop: stop.clone(),
    });

    // Every agent's socket is up before the first conversation.
    let mut listeners = Vec::with_capacity(agents.len());
    for (i, a) in agents.iter().enumerate() {
        let token = api.connect_token(&tenant, *a).await?;
        let (ws, w, took) =
            client::connect(common.edge(i), None, &token, common.connect_timeout).await?;
        if w.principal != *a {
            bail!("welcome names {} for agent {a}", w.principal);
        }
        rec.record(stats::CONNECT, took);
        rec.add(stats::CONNECTED, 1);
        rec.connections(1);
        listeners.push(tokio::spawn(listen(
            ws,
            *a,
            Arc::clone(&shared),
            stop.clone(),
        )));
    }

    let cpu = CpuClock::start();
    let live = Live::start("route", stats::ACCEPT, &rec, common.progress);
    let (sampler_stop_tx, sampler_stop) = watch::channel(false);
    let sampler = tokio::spawn(sampler(
        api.http().clone(),
        shared.core.clone(),
        tenant.api_key.clone(),
        sampler_stop,
    ));

    // The load: creates on an open-loop schedule, at most `concurrency` in flight.
    let creates = Arc::new(Semaphore::new(cfg.concurrency));
    let answered = Arc::new(AtomicU64::new(0));
    let create_error: Arc<Mutex<Option<String>>> = Arc::default();
    let load_start = std::time::Instant::now();
    let scheduled = schedule(cfg.rate, cfg.duration, None, &rec, |i| {
        let (api, shared, creates, answered, visitors, create_error) = (
            api.clone(),
            Arc::clone(&shared),
            Arc::clone(&creates),
            Arc::clone(&answered),
            Arc::clone(&visitors),
            Arc::clone(&create_error),
        );
        tokio::spawn(async move {
            let permit = match creates.try_acquire() {
                Ok(p) => Ok(p),
                Err(_) => {
                    shared.rec.add(CREATE_DELAYED, 1);
                    creates.acquire().await
                }
            };
            let Ok(_permit) = permit else { return };
            let v = &visitors[i as usize % visitors.len()];
            shared.rec.add(stats::SENT, 1);
            let t0 = Instant::now();
            match api.conversation(v).await {
                Ok((id, assignee)) => {
                    shared.rec.record(stats::ACCEPT, t0.elapsed());
                    shared.rec.add(stats::ACCEPTED, 1);
                    let queued = assignee.is_none();
                    shared.rec.add(if queued { QUEUED } else { AT_ONCE }, 1);
                    shared.created(id, t0, queued);
                }
                Err(e) => {
                    shared.rec.add(stats::ERRORS, 1);
                    let mut first = create_error.lock().unwrap_or_else(|p| p.into_inner());
                    first.get_or_insert_with(|| format!("{e:#}"));
                }
            }
            answered.fetch_add(1, Ordering::Relaxed);
        });
    })
    .await;
    let load_secs = load_start.elapsed().as_secs_f64();
    // Creates still in flight answer within the HTTP client's timeout.
    settle(Duration::from_secs(40), || {
        answered.load(Ordering::Relaxed) >= scheduled
    })
    .await;
    // Until the last create answered: creates held back by the concurrency bound end late.
    let create_secs = load_start.elapsed().as_secs_f64().max(load_secs);
    let created = rec.count(stats::ACCEPTED);

    // The end: until every conversation was assigned and resolved, or no progress for `grace`.
    let drain_start = std::time::Instant::now();
    let mut last = (shared.track().progress, Instant::now());
    loop {
        let (done, progress) = {
            let t = shared.track();
            (t.done(created), t.progress)
        };
        if done {
            break;
        }
        if progress != last.0 {
            last = (progress, Instant::now());
        } else if last.1.elapsed() >= cfg.grace {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let drain_secs = drain_start.elapsed().as_secs_f64();
    sampler_stop_tx.send_replace(true);
    let samples = sampler.await.unwrap_or_default();
    stop_tx.send_replace(true);
    let mut closed = Vec::new();
    for l in listeners {
        if let Ok(Some(why)) = l.await {
            closed.push(why);
        }
    }
    rec.connections(-(agents.len() as i64));
    let (timeline, secs) = live.finish().await;

    // Never assigned (as the agents' sockets saw it), or assigned and not resolved (as
    // the resolve requests saw it): what the API says about them now.
    let (unassigned, not_resolved, early, resolve_error) = {
        let t = shared.track();
        let unassigned: Vec<Uuid> = t
            .convs
            .iter()
            .filter(|(_, c)| c.assigned.is_none())
            .map(|(id, _)| *id)
            .collect();
        let not_resolved: Vec<Uuid> = t
            .seen
            .iter()
            .filter(|id| !t.resolved.contains(id))
            .copied()
            .collect();
        (
            unassigned,
            not_resolved,
            t.early.len(),
            t.resolve_error.clone(),
        )
    };
    let status = |id: Uuid| {
        let url = format!("{}/v1/conversations/{id}", shared.core);
        let (http, key) = (&shared.http, &tenant.api_key);
        async move {
            get(http, &url, key)
                .await
                .map(|b| b["conversation"].clone())
        }
    };
    let mut stranded = 0u64;
    let mut unseen = 0u64;
    let mut unknown = Vec::new();
    for id in unassigned {
        match status(id).await {
            Ok(c) if c["status"] == "queued" => stranded += 1,
            Ok(c) if c["assignee"].is_string() => unseen += 1,
            Ok(c) => unknown.push(format!("{id}: {}", c["status"])),
            Err(e) => {
                // Counted as stranded: it was never seen assigned.
                stranded += 1;
                unknown.push(format!("{id}: {e:#}"));
            }
        }
    }
    // A resolve that timed out may still have been committed.
    let mut unresolved = 0u64;
    for id in not_resolved {
        match status(id).await {
            Ok(c) if c["status"] == "resolved" => {}
            _ => unresolved += 1,
        }
    }
    let resolve_errors = rec.count(RESOLVE_ERRORS);

    let total = rec.total();
    let mut report = Report::new("route", stats::ACCEPT, &total);
    report.config = serde_json::to_value(cfg)?;
    report.rate_target = Some(cfg.rate);
    report.rate_achieved = created as f64 / create_secs.max(1e-3);
    report.deliveries_per_s = total.count(stats::DELIVERED) as f64 / secs.max(1e-3);
    report.unanswered = scheduled.saturating_sub(answered.load(Ordering::Relaxed));
    report.disconnected = closed.len() as u64;
    let x = &mut report.extra;
    let count = |k: &str| total.count(k) as f64;
    x.insert("agents".into(), agents.len() as f64);
    x.insert(
        "capacity_slots".into(),
        f64::from(cfg.capacity) * agents.len() as f64,
    );
    x.insert("visitors".into(), visitors.len() as f64);
    x.insert("opened".into(), created as f64);
    x.insert("assigned_at_once".into(), count(AT_ONCE));
    x.insert("queued".into(), count(QUEUED));
    x.insert("assigned".into(), count(stats::DELIVERED));
    x.insert("stranded".into(), stranded as f64);
    x.insert("assigned_unseen".into(), unseen as f64);
    x.insert("resolved".into(), count(RESOLVED));
    x.insert("resolve_errors".into(), count(RESOLVE_ERRORS));
    x.insert("unresolved".into(), unresolved as f64);
    x.insert("create_errors".into(), count(stats::ERRORS));
    x.insert("create_delayed".into(), count(CREATE_DELAYED));
    x.insert("resolve_delayed".into(), count(RESOLVE_DELAYED));
    x.insert("capacity_violations".into(), samples.violations as f64);
    x.insert("capacity_samples".into(), samples.agent_samples as f64);
    x.insert("max_busy_slots".into(), samples.max_busy as f64);
    x.insert("max_queue_depth".into(), samples.max_queue_depth as f64);
    x.insert(
        "max_queue_oldest_wait_ms".into(),
        samples.max_oldest_wait_ms as f64,
    );
    x.insert("drain_s".into(), drain_secs);
    for (name, hist) in INTERVALS {
        if let Some(s) = total.summary(hist) {
            insert_summary(x, name, &s);
        }
    }

    if samples.violations > 0 {
        report.failures.push(format!(
            "capacity invariant broken {} times (first: {})",
            samples.violations,
            samples.first_violation.as_deref().unwrap_or("?")
        ));
    }
    if samples.agent_samples == 0 {
        report
            .failures
            .push("the capacity invariant was never sampled (GET /v1/agents)".into());
    }
    if let Some(e) = &samples.first_error {
        report.warnings.push(format!(
            "{} samples of GET /v1/agents or /v1/queue failed (first: {e})",
            samples.errors
        ));
    }
    if stranded > 0 {
        report.failures.push(format!(
            "{stranded} conversations stranded (never assigned)"
        ));
    }
    if unseen > 0 {
        report.failures.push(format!(
            "{unseen} conversations assigned without an `assigned` frame at the assignee's socket"
        ));
    }
    if unresolved > 0 {
        report.failures.push(format!(
            "{unresolved} assigned conversations not resolved at the end{}",
            resolve_error
                .as_deref()
                .map_or_else(String::new, |e| format!(" (first resolve error: {e})"))
        ));
    }
    let create_errors = total.count(stats::ERRORS);
    if create_errors > 0 {
        let first = create_error
            .lock()
            .map(|e| e.clone())
            .unwrap_or_default()
            .unwrap_or_default();
        report.failures.push(format!(
            "{create_errors} of {scheduled} creates failed (first: {first})"
        ));
    }
    if report.unanswered > 0 {
        report.failures.push(format!(
            "{} creates unanswered at the end",
            report.unanswered
        ));
    }
    if !closed.is_empty() {
        report.failures.push(format!(
            "{} agent connections ended early (first: {})",
            closed.len(),
            closed[0]
        ));
    }
    let delayed = total.count(CREATE_DELAYED);
    if delayed > 0 {
        report.warnings.push(format!(
            "{delayed} creates waited for one of the {} in flight (--concurrency): the rate was not held open-loop",
            cfg.concurrency
        ));
    }
    let delayed = total.count(RESOLVE_DELAYED);
    if delayed > 0 {
        report.warnings.push(format!(
            "{delayed} resolves waited for one of the {} in flight (--concurrency): held longer than --hold",
            cfg.concurrency
        ));
    }
    if resolve_errors > 0 {
        report.warnings.push(format!(
            "{resolve_errors} resolve requests failed ({} of those conversations were resolved all the same; first error: {})",
            resolve_errors.saturating_sub(unresolved),
            resolve_error.as_deref().unwrap_or("?")
        ));
    }
    if early > 0 {
        report.warnings.push(format!(
            "{early} assignments of conversations whose create never answered"
        ));
    }
    if let Some(u) = unknown.first() {
        report.warnings.push(format!(
            "{} unassigned conversations in an unexpected state (first: {u})",
            unknown.len()
        ));
    }
    if let Some(v) = cfg.visitors.filter(|v| *v < scheduled as usize) {
        report.warnings.push(format!(
            "{v} visitors for {scheduled} conversations: visitors open several (their previous agent is preferred)"
        ));
    }
    finish_report(&mut report, common, timeline, secs, vec![cpu.fraction()]);
    conclude_route(&mut report, &cfg.gates);
    Ok(report)
}

async fn create_visitors(api: &Api, tenant: &Tenant, n: usize) -> Result<Vec<Visitor>> {
    stream::iter(0..n)
        .map(|_| api.visitor(tenant))
        .buffered(SETUP_PARALLEL)
        .try_collect()
        .await
}

/// Report name of each interval → histogram.
const INTERVALS: [(&str, &str); 5] = [
    ("create", stats::ACCEPT),
    ("assign", stats::DELIVER),
    ("assign_at_once", ASSIGN_AT_ONCE),
    ("assign_queued", ASSIGN_QUEUED),
    ("resolve", RESOLVE),
];

const QUANTILES: [&str; 5] = ["p50", "p90", "p99", "p999", "max"];

fn insert_summary(x: &mut std::collections::BTreeMap<String, f64>, name: &str, s: &Summary) {
    for (q, v) in QUANTILES.iter().zip([s.p50, s.p90, s.p99, s.p999, s.max]) {
        x.insert(format!("{name}_{q}_ms"), v);
    }
    x.insert(format!("{name}_count"), s.count as f64);
}

/// Route figures a gate may name (values from the report's `extra`).
const COUNT_GATES: [&str; 8] = [
    "stranded",
    "capacity_violations",
    "queued",
    "assigned_at_once",
    "assigned_unseen",
    "unresolved",
    "max_queue_depth",
    "create_errors",
];

/// The `extra` key a route gate reads, and whether its value is a latency (ms).
fn route_metric(name: &str) -> Option<(String, bool)> {
    let name = match name {
        "violations" => "capacity_violations",
        "queue_depth" => "max_queue_depth",
        n => n,
    };
    if COUNT_GATES.contains(&name) {
        return Some((name.to_owned(), false));
    }
    let (interval, q) = name.rsplit_once('_')?;
    let q = if q == "p99.9" { "p999" } else { q };
    (INTERVALS.iter().any(|(n, _)| *n == interval) && QUANTILES.contains(&q))
        .then(|| (format!("{interval}_{q}_ms"), true))
}

/// Splits `--slo` into the generic gates (`p99<50ms` on the create latency, `rate>=190`,
/// `errors=0`, …: [`slo::parse`]) and the route gates: `stranded`, `violations` (or
/// `capacity_violations`), `queued`, `assigned_at_once`, `assigned_unseen`, `unresolved`,
/// `max_queue_depth` (or `queue_depth`), `create_errors` (counts), and
/// `<interval>_<p50|p90|p99|p999|max>` for the intervals `create`, `assign`,
/// `assign_at_once`, `assign_queued`, `resolve` (durations: `assign_queued_p99<5s`).
pub fn split_slo(spec: &str) -> Result<(Vec<Gate>, Vec<Gate>)> {
    let mut generic = Vec::new();
    let mut route = Vec::new();
    for part in spec.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let name_end = part.find(['<', '>', '=']).unwrap_or(part.len());
        let name = part[..name_end].trim();
        match route_metric(name) {
            Some((key, latency)) => {
                // The generic parser reads the operator and the value in the right unit.
                let stand_in = if latency { "p99" } else { "errors" };
                let mut g = slo::parse(&format!("{stand_in}{}", &part[name_end..]))
                    .with_context(|| format!("gate {part:?}"))?
                    .pop()
                    .with_context(|| format!("gate {part:?}: no value"))?;
                g.metric = key;
                g.text = part.to_owned();
                route.push(g);
            }
            None => generic.extend(slo::parse(part)?),
        }
    }
    Ok((generic, route))
}

fn holds(op: Op, a: f64, b: f64) -> bool {
    match op {
        Op::Lt => a < b,
        Op::Le => a <= b,
        Op::Gt => a > b,
        Op::Ge => a >= b,
        Op::Eq => (a - b).abs() < 1e-9,
    }
}

fn op_str(op: Op) -> &'static str {
    match op {
        Op::Lt => "<",
        Op::Le => "<=",
        Op::Gt => ">",
        Op::Ge => ">=",
        Op::Eq => "=",
    }
}

/// Applies the route gates after the generic verdict; a gate without a value fails.
pub fn conclude_route(report: &mut Report, gates: &[Gate]) {
    for g in gates {
        let actual = report.extra.get(&g.metric).copied();
        let v = Verdict {
            gate: format!("{} {} {}", g.metric, op_str(g.op), g.value),
            actual,
            passed: actual.is_some_and(|a| holds(g.op, a, g.value)),
        };
        if !v.passed {
            let a = actual.map_or_else(|| "no value".to_owned(), |a| format!("{a:.3}"));
            report
                .failures
                .push(format!("SLO gate failed: {} (actual {a})", v.gate));
        }
        report.slo.push(v);
    }
    report.passed = report.failures.is_empty();
}

/// The route figures as text (printed above the generic table).
pub fn summary(r: &Report) -> String {
    use std::fmt::Write as _;
    let x = |k: &str| r.extra.get(k).copied().unwrap_or(0.0);
    let mut s = String::new();
    let cfg = &r.config;
    let _ = writeln!(
        s,
        "\nroute — {} agents × capacity {}, {} conversations/s for {}, hold {}",
        x("agents"),
        cfg["capacity"],
        cfg["rate"],
        cfg["duration"].as_str().unwrap_or("?"),
        cfg["hold"].as_str().unwrap_or("?"),
    );
    let _ = writeln!(
        s,
        "  conversations opened   {:>8}   achieved {:.1}/s",
        x("opened"),
        r.rate_achieved
    );
    for (label, key) in [
        ("assigned at once", "assigned_at_once"),
        ("queued", "queued"),
        ("stranded", "stranded"),
        ("assigned, no frame", "assigned_unseen"),
        ("unresolved", "unresolved"),
        ("create errors", "create_errors"),
        ("capacity violations", "capacity_violations"),
        ("max queue depth", "max_queue_depth"),
    ] {
        let _ = writeln!(s, "  {label:<22} {:>8}", x(key));
    }
    let _ = writeln!(
        s,
        "  {:<22} {:>8}   of {} slots ({} samples of GET /v1/agents)",
        "max busy slots",
        x("max_busy_slots"),
        x("capacity_slots"),
        x("capacity_samples")
    );
    let _ = writeln!(
        s,
        "  {:<22} {:>8.1} s after the last create answered",
        "drained in",
        x("drain_s")
    );
    let _ = writeln!(
        s,
        "\n  {:<34} {:>8} {:>10} {:>10} {:>10} {:>10}",
        "interval", "count", "p50 ms", "p90 ms", "p99 ms", "max ms"
    );
    for (name, label) in [
        ("create", "create (POST /v1/conversations)"),
        ("assign", "time to assignment, all"),
        ("assign_at_once", "  assigned at creation"),
        ("assign_queued", "  waited in the queue"),
        ("resolve", "resolve (POST …/resolve)"),
    ] {
        if !r.extra.contains_key(&format!("{name}_count")) {
            continue;
        }
        let q = |q: &str| x(&format!("{name}_{q}_ms"));
        let _ = writeln!(
            s,
            "  {label:<34} {:>8} {:>10.3} {:>10.3} {:>10.3} {:>10.3}",
            x(&format!("{name}_count")),
            q("p50"),
            q("p90"),
            q("p99"),
            q("max")
        );
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_route_gates_from_generic_ones() {
        let (g, r) =
            split_slo("p99<50ms, stranded=0,violations=0,assign_queued_p99<5s,rate>=10").unwrap();
        assert_eq!(
            g.iter().map(|g| g.metric.as_str()).collect::<Vec<_>>(),
            ["p99", "rate"]
        );
        assert_eq!(
            r.iter().map(|g| g.metric.as_str()).collect::<Vec<_>>(),
            ["stranded", "capacity_violations", "assign_queued_p99_ms"]
        );
        assert_eq!(r[2].value, 5000.0);
        assert_eq!(r[2].op, Op::Lt);
        assert!(split_slo("assign_p98<1ms").is_err());
        assert!(split_slo("stranded~0").is_err());

        let mut report = Report::default();
        report.extra.insert("stranded".into(), 0.0);
        report.extra.insert("capacity_violations".into(), 2.0);
        conclude_route(&mut report, &r);
        assert_eq!(
            report.slo.iter().map(|v| v.passed).collect::<Vec<_>>(),
            [true, false, false]
        );
        assert!(!report.passed);
    }
}
