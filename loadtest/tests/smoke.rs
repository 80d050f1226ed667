//! Every scenario at small scale against a real in-process stack (core-api and two edges
//! on the private PostgreSQL and Redis that `cargo xtask test` starts), through the
//! library API: nothing lost, duplicated or reordered, and a failing gate fails the run;
//! `soak` also samples every process's memory over time; `chat` also survives a rolling
//! restart of every edge (each drained, then replaced on the same address); `route`
//! assigns every conversation, queues some, and never breaks an agent's capacity.

#![allow(clippy::unwrap_used)]

use std::net::SocketAddr;
use std::time::Duration;

use loadtest::scenarios::{chat, connect, fanout, route, soak, storm, Common};
use loadtest::{slo, Target};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

/// A running stack: core-api and in-process edges; everything stops when it is dropped.
struct Stack {
    target: Target,
    /// Cancels core-api and, through their child tokens, every edge.
    stop: CancellationToken,
    edges: Vec<Edge>,
    /// How each edge is started (again).
    edge_setup: EdgeSetup,
}

/// One in-process edge: its address, its own stop token (a child of the stack's) and task.
struct Edge {
    addr: SocketAddr,
    stop: CancellationToken,
    task: JoinHandle<()>,
}

/// Edge settings a test changes from the defaults.
#[derive(Debug, Clone, Default)]
struct EdgeOptions {
    /// Ping every `heartbeat` (and close peers silent for two of them).
    heartbeat: Option<Duration>,
    /// Window over which a draining edge closes its sockets with 1012.
    drain_window: Option<Duration>,
    /// Messages per second per tenant on each edge.
    tenant_msgs_per_sec: Option<u32>,
}

/// What every edge of a stack is started with.
struct EdgeSetup {
    redis: String,
    prefix: String,
    public: Vec<u8>,
    options: EdgeOptions,
}

impl EdgeSetup {
    /// Starts an edge (under a fresh edge id) on `l` until `stop` is cancelled.
    fn spawn(&self, l: TcpListener, stop: CancellationToken) -> JoinHandle<()> {
        let mut config = relaydesk_edge::Config::new(
            self.redis.clone(),
            self.prefix.clone(),
            self.public.clone(),
        );
        if let Some(h) = self.options.heartbeat {
            config.heartbeat = h;
        }
        if let Some(w) = self.options.drain_window {
            config.drain_window = w;
        }
        if let Some(r) = self.options.tenant_msgs_per_sec {
            config.tenant_msgs_per_sec = r;
        }
        tokio::spawn(async move {
            if let Err(e) =
                relaydesk_edge::run(l, config, async move { stop.cancelled().await }).await
            {
                eprintln!("edge stopped: {e}");
            }
        })
    }
}

impl Drop for Stack {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

impl Stack {
    /// Restarts edge `i` as a deployment would: drains it (what SIGTERM does: `/readyz`
    /// fails, accepting stops, sockets close with 1012 over the drain window), waits for
    /// it to exit, starts a new edge on the same address (so core-api's edge URLs stay
    /// true) and waits until it is ready.
    async fn restart_edge(&mut self, i: usize) {
        let edge = &mut self.edges[i];
        edge.stop.cancel();
        (&mut edge.task).await.unwrap();
        let l = TcpListener::bind(edge.addr).await.unwrap();
        edge.stop = self.stop.child_token();
        edge.task = self.edge_setup.spawn(l, edge.stop.clone());
        wait_ready(&format!("http://{}", edge.addr)).await;
    }
}

fn var(name: &str) -> String {
    std::env::var(name)
        .unwrap_or_else(|_| panic!("{name} is not set: run the suite with `cargo xtask test`"))
}

async fn listener() -> (TcpListener, SocketAddr) {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    (l, addr)
}

async fn start(edges: usize) -> Stack {
    start_with(edges, EdgeOptions::default()).await
}

async fn start_with(edges: usize, options: EdgeOptions) -> Stack {
    let keys = std::path::PathBuf::from(var("RELAYDESK_TEST_KEYS_DIR"));
    let signing = std::fs::read(keys.join("signing.pem")).unwrap();
    let public = std::fs::read(keys.join("public.pem")).unwrap();
    let redis = var("RELAYDESK_TEST_REDIS_URL");
    let prefix = format!("t{}", &Uuid::new_v4().simple().to_string()[..10]);
    let operator = format!("op-{}", Uuid::new_v4().simple());
    let stop = CancellationToken::new();
    let edge_setup = EdgeSetup {
        redis: redis.clone(),
        prefix: prefix.clone(),
        public,
        options,
    };
    let mut edge_urls = Vec::new();
    let mut running = Vec::new();
    for _ in 0..edges {
        let (l, addr) = listener().await;
        edge_urls.push(format!("ws://{addr}/v1/ws"));
        let edge_stop = stop.child_token();
        running.push(Edge {
            addr,
            task: edge_setup.spawn(l, edge_stop.clone()),
            stop: edge_stop,
        });
    }
    let (l, addr) = listener().await;
    let mut config = relaydesk_core::Config::new(
        var("RELAYDESK_TEST_DATABASE_URL"),
        redis,
        prefix,
        signing,
        operator.clone(),
    );
    config.edge_urls.clone_from(&edge_urls);
    config.database_pool = 4;
    config.commit_workers = 2;
    let s = stop.clone();
    tokio::spawn(async move {
        if let Err(e) = relaydesk_core::run(l, config, async move { s.cancelled().await }).await {
            eprintln!("core-api stopped: {e}");
        }
    });
    let stack = Stack {
        target: Target {
            core: format!("http://{addr}"),
            edges: edge_urls,
            operator_token: operator,
            edge_pids: Vec::new(),
        },
        stop,
        edges: running,
        edge_setup,
    };
    wait_ready(&stack.target.core).await;
    for e in &stack.edges {
        wait_ready(&format!("http://{}", e.addr)).await;
    }
    stack
}

/// Waits until `{base}/readyz` answers 200 (a minute at most).
async fn wait_ready(base: &str) {
    let http = reqwest::Client::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let last = match http.get(format!("{base}/readyz")).send().await {
            Ok(r) if r.status().is_success() => return,
            Ok(r) => format!("{}: {}", r.status(), r.text().await.unwrap_or_default()),
            Err(e) => e.to_string(),
        };
        assert!(
            tokio::time::Instant::now() < deadline,
            "{base} never became ready ({last})"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn clean(r: &loadtest::Report) {
    assert_eq!(
        (r.lost, r.duplicated, r.reordered),
        (0, 0, 0),
        "{}",
        r.table()
    );
    assert!(r.passed, "{}", r.table());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chat_is_clean_and_gates_fail() {
    let stack = start(2).await;
    let mut common = Common::new(stack.target.clone());
    common.slo = slo::parse("loss=0,dup=0").unwrap();
    let cfg = chat::ChatConfig {
        conversations: 20,
        rate: 200.0,
        duration: Duration::from_secs(2),
        grace: Duration::from_secs(5),
        per_agent: 8,
        ..chat::ChatConfig::default()
    };
    let r = chat::run(&common, &cfg).await.unwrap();
    clean(&r);
    assert!(r.sent >= 390, "{}", r.table());
    assert_eq!(r.accepted, r.sent, "{}", r.table());
    assert_eq!(r.delivered, r.accepted, "{}", r.table());
    let d = r.deliver.clone().unwrap();
    assert!(d.count == r.delivered && d.p50 > 0.0 && d.p50 <= d.p99 && d.p99 <= d.max);
    let json: serde_json::Value = serde_json::to_value(&r).unwrap();
    for k in [
        "sent",
        "accepted",
        "delivered",
        "lost",
        "duplicated",
        "reordered",
        "reconnects",
        "rate_achieved",
        "trustworthy",
        "warnings",
    ] {
        assert!(json.get(k).is_some(), "JSON report lacks {k}");
    }
    for k in ["p50", "p90", "p99", "p999", "max", "count"] {
        assert!(json["deliver"].get(k).is_some(), "deliver lacks {k}");
        assert!(json["accept"].get(k).is_some(), "accept lacks {k}");
    }
    assert!(r.html().unwrap().contains("<svg"));
    // The server's own stages over the run, next to the harness's view. (This test's edges
    // and core-api share one process and one recorder, so only presence is checked.)
    let commit = r
        .stages
        .iter()
        .find(|s| s.metric == "relaydesk_core_commit_seconds")
        .unwrap_or_else(|| panic!("no commit stage: {:?}", r.stages));
    assert!(
        commit.count > 0 && commit.p50_ms <= commit.p99_ms,
        "{commit:?}"
    );
    assert!(r.table().contains("PostgreSQL commit"), "{}", r.table());
    assert!(r.html().unwrap().contains("Server stages"));

    // An impossible gate fails the run, and says which gate.
    let mut failing = r.clone();
    failing.failures.clear();
    failing.conclude(&slo::parse("p99<1us,loss=0").unwrap());
    assert!(!failing.passed);
    assert!(failing.table().contains("FAIL"));
    assert!(
        failing.failures.iter().any(|f| f.contains("p99")),
        "{:?}",
        failing.failures
    );
}

/// Pause between two edge restarts: load time (messages flow through the new edge before
/// the next one drains), not synchronization.
const LOAD_BETWEEN_RESTARTS: Duration = Duration::from_millis(300);

/// A rolling restart of every edge under chat load: each edge in turn drains (sockets
/// closed with 1012 over 400 ms) and exits, and a new edge takes its address. The parties
/// reconnect to the next edge, resume and resend; nothing may be lost, stored twice or
/// delivered out of order, and every send is accepted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chat_beside_a_noisy_tenant_and_stalled_clients_is_untouched() {
    // 50 messages/s per tenant on each edge: the measured run sends 20 on each, the
    // noisy tenant 250 on each (10× its limit).
    let stack = start_with(
        2,
        EdgeOptions {
            tenant_msgs_per_sec: Some(50),
            ..EdgeOptions::default()
        },
    )
    .await;
    let mut common = Common::new(stack.target.clone());
    common.slo = slo::parse("loss=0,dup=0,reorder=0").unwrap();
    let cfg = chat::ChatConfig {
        conversations: 10,
        rate: 40.0,
        duration: Duration::from_secs(3),
        grace: Duration::from_secs(5),
        per_agent: 5,
        noisy_rate: 500.0,
        stalled: 20,
    };
    let r = chat::run(&common, &cfg).await.unwrap();
    clean(&r);
    assert!(r.sent >= 100, "{}", r.table());
    assert_eq!((r.accepted, r.errors), (r.sent, 0), "{}", r.table());
    assert_eq!(r.delivered, r.accepted, "{}", r.table());
    assert_eq!(r.disconnected, 0, "{}", r.table());
    let x = |k: &str| r.extra.get(k).copied().unwrap_or(-1.0);
    assert!(x("noisy_sent") >= 1000.0, "{}", r.table());
    assert!(
        x("noisy_refused") > x("noisy_sent") / 2.0,
        "the noisy tenant was not limited: {}",
        r.table()
    );
    assert_eq!(x("stalled"), 20.0, "{}", r.table());
    assert!(r.memory.is_some(), "{}", r.table());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chat_survives_a_rolling_restart_of_every_edge() {
    let mut stack = start_with(
        3,
        EdgeOptions {
            drain_window: Some(Duration::from_millis(400)),
            ..EdgeOptions::default()
        },
    )
    .await;
    let mut common = Common::new(stack.target.clone());
    common.slo = slo::parse("loss=0,dup=0,reorder=0").unwrap();
    let cfg = chat::ChatConfig {
        conversations: 20,
        rate: 200.0,
        // Long enough for all three restarts to happen while messages are sent.
        duration: Duration::from_secs(8),
        grace: Duration::from_secs(10),
        per_agent: 8,
        ..chat::ChatConfig::default()
    };
    let (loaded_tx, loaded) = tokio::sync::oneshot::channel();
    let run = chat::run_with(&common, &cfg, move || {
        let _ = loaded_tx.send(());
    });
    let restarts = async {
        loaded.await.unwrap();
        for i in 0..stack.edges.len() {
            tokio::time::sleep(LOAD_BETWEEN_RESTARTS).await;
            stack.restart_edge(i).await;
        }
    };
    let (r, ()) = tokio::join!(run, restarts);
    let r = r.unwrap();
    println!("{}", r.table());
    clean(&r);
    assert_eq!(r.disconnected, 0, "{}", r.table());
    assert_eq!(r.errors, 0, "{}", r.table());
    assert_eq!(r.accepted, r.sent, "{}", r.table());
    assert_eq!(r.delivered, r.accepted, "{}", r.table());
    assert!(r.sent >= 1500, "{}", r.table());
    // Visitors start on edge 0, agents on edge 1; each drained edge's parties move to the
    // next: the 20 visitors, then all 20 + 3 parties twice.
    let agents = r.extra["agents"] as u64;
    assert_eq!(agents, 3, "{}", r.table());
    assert!(r.reconnects >= 20 + 2 * (20 + agents), "{}", r.table());
    assert!(
        r.resume.as_ref().is_some_and(|s| s.count > 0),
        "{}",
        r.table()
    );
    let json: serde_json::Value = serde_json::to_value(&r).unwrap();
    assert_eq!(json["reconnects"], r.reconnects);
    assert!(r.table().contains("reconnects"));
    assert!(r.html().unwrap().contains("reconnects"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_holds_connections() {
    let stack = start(2).await;
    let common = Common::new(stack.target.clone());
    let cfg = connect::ConnectConfig {
        connections: 100,
        rate: 500.0,
        hold: Duration::from_millis(500),
    };
    let r = connect::run(&common, &cfg).await.unwrap();
    clean(&r);
    assert_eq!(r.connected, 100, "{}", r.table());
    assert_eq!(r.connect.as_ref().unwrap().count, 100);
    let mem = r.memory.as_ref().unwrap();
    // In-process edges: the gauge is process-wide, so only check that it was read.
    assert!(mem.after.iter().all(|s| s.connections.is_some()), "{mem:?}");
}

/// The command line: a passing gate exits 0, a failing one 1 (what CI pipelines see).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_exit_code_follows_the_gates() {
    let stack = start(1).await;
    let t = &stack.target;
    let run = |slo: &'static str| {
        let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_loadtest"));
        cmd.args([
            "connect",
            "--core",
            &t.core,
            "--operator-token",
            &t.operator_token,
        ])
        .args(["--edge", &t.edges[0]])
        .args(["--connections", "5", "--rate", "50", "--hold", "200ms"])
        .args(["--quiet", "--slo", slo])
        .kill_on_drop(true);
        async move { cmd.output().await.unwrap() }
    };
    let ok = run("loss=0").await;
    assert_eq!(
        ok.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&ok.stdout)
    );
    let failed = run("p99<1us").await;
    assert_eq!(
        failed.status.code(),
        Some(1),
        "{}",
        String::from_utf8_lossy(&failed.stdout)
    );
    assert!(String::from_utf8_lossy(&failed.stdout).contains("FAIL"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fanout_delivers_to_every_subscriber() {
    let stack = start(2).await;
    let common = Common::new(stack.target.clone());
    let cfg = fanout::FanoutConfig {
        subscribers: 50,
        publishers: 2,
        rate: 20.0,
        duration: Duration::from_secs(2),
        grace: Duration::from_secs(5),
        connect_rate: 500.0,
        body_bytes: Some(100),
    };
    let r = fanout::run(&common, &cfg).await.unwrap();
    clean(&r);
    assert!(r.accepted >= 38, "{}", r.table());
    assert_eq!(r.delivered, r.accepted * 50, "{}", r.table());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn storm_resumes_without_gaps() {
    let stack = start(2).await;
    let common = Common::new(stack.target.clone());
    let cfg = storm::StormConfig {
        connections: 100,
        conversations: 5,
        rate: 50.0,
        connect_rate: 500.0,
        warmup: Duration::from_secs(1),
        resume_timeout: Duration::from_secs(20),
        grace: Duration::from_secs(3),
    };
    let r = storm::run(&common, &cfg).await.unwrap();
    clean(&r);
    assert_eq!(r.resumed, 100, "{}", r.table());
    assert_eq!(r.resume.as_ref().unwrap().count, 100);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn soak_samples_memory_and_stays_clean() {
    // Edges ping every 500 ms and drop peers silent for 1 s: held connections must answer.
    let stack = start_with(
        2,
        EdgeOptions {
            heartbeat: Some(Duration::from_millis(500)),
            ..EdgeOptions::default()
        },
    )
    .await;
    let mut common = Common::new(stack.target.clone());
    common.slo = slo::parse("loss=0,dup=0,reorder=0,drift<1GB").unwrap();
    let cfg = soak::SoakConfig {
        connections: 40,
        conversations: 10,
        rate: 100.0,
        duration: Duration::from_secs(5),
        sample_every: Duration::from_secs(1),
        warmup: Duration::from_secs(1),
        reconnect_every: Duration::from_millis(1500),
        reconnect_fraction: 0.1,
        connect_rate: 500.0,
        resume_timeout: Duration::from_secs(20),
        grace: Duration::from_secs(5),
        per_agent: 5,
    };
    let r = soak::run(&common, &cfg).await.unwrap();
    clean(&r);
    assert_eq!(r.disconnected, 0, "{}", r.table());
    assert!(r.sent >= 490, "{}", r.table());
    assert_eq!(r.accepted, r.sent, "{}", r.table());
    assert_eq!(r.delivered, r.accepted, "{}", r.table());
    assert_eq!(r.extra["idle_connections"], 36.0, "{}", r.table());
    assert_eq!(r.extra["resumers"], 4.0, "{}", r.table());
    let rounds = r.extra["reconnect_rounds"];
    assert!(rounds >= 2.0, "{}", r.table());
    assert_eq!(r.resumed as f64, 4.0 * rounds, "{}", r.table());
    assert!(r.extra["resumer_deliveries"] > 0.0, "{}", r.table());

    // A series per edge and one for core-api, sampled about every second throughout.
    let json: serde_json::Value = serde_json::to_value(&r).unwrap();
    for k in ["lost", "duplicated", "reordered", "deliver", "accept"] {
        assert!(json.get(k).is_some(), "JSON report lacks {k}");
    }
    let series = json["memory_over_time"].as_array().unwrap();
    let who: Vec<(&str, &str)> = series
        .iter()
        .map(|s| (s["process"].as_str().unwrap(), s["url"].as_str().unwrap()))
        .collect();
    assert_eq!(
        who,
        [
            ("edge", stack.target.edges[0].as_str()),
            ("edge", stack.target.edges[1].as_str()),
            ("core", stack.target.core.as_str()),
        ]
    );
    for s in series {
        let samples = s["samples"].as_array().unwrap();
        assert!(samples.len() >= 5, "{s}");
        for p in samples {
            assert!(p["t"].as_f64().is_some(), "{p}");
            assert!(p["rss_bytes"].as_u64().is_some_and(|b| b > 0), "{p}");
            if s["process"] == "edge" {
                assert!(p["connections"].as_f64().is_some(), "{p}");
            }
        }
        let d = &s["drift"];
        for k in [
            "from_t",
            "to_t",
            "from_bytes",
            "to_bytes",
            "bytes",
            "bytes_per_min",
        ] {
            assert!(d.get(k).is_some(), "drift lacks {k}: {s}");
        }
        assert!(d["from_t"].as_f64().unwrap() >= r.extra["drift_from_s"]);
    }
    assert!(r
        .slo
        .iter()
        .any(|v| v.gate.starts_with("drift") && v.passed));
    let html = r.html().unwrap();
    assert!(html.contains("Memory over time") && html.contains("<svg"));
}

/// 5 agents × capacity 2 resolving 400 ms after assignment serve 25 conversations/s; 40/s
/// for 3 s queues some, which the resolves drain oldest first. Nothing may be stranded,
/// no agent may exceed its capacity, and every conversation is assigned and resolved.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn route_assigns_everything_within_capacity() {
    let stack = start(2).await;
    let (generic, gates) =
        route::split_slo("stranded=0,violations=0,unresolved=0,p99<5s,assign_at_once_p99<5s")
            .unwrap();
    let mut common = Common::new(stack.target.clone());
    common.slo = generic;
    let cfg = route::RouteConfig {
        agents: 5,
        capacity: 2,
        visitors: None,
        rate: 40.0,
        duration: Duration::from_secs(3),
        hold: Duration::from_millis(400),
        grace: Duration::from_secs(10),
        concurrency: 16,
        gates,
    };
    let r = route::run(&common, &cfg).await.unwrap();
    let summary = route::summary(&r);
    println!("{summary}{}", r.table());
    assert!(r.passed, "{summary}{}", r.table());
    let x = |k: &str| r.extra.get(k).copied().unwrap_or(-1.0);
    assert_eq!(x("opened"), 120.0, "{summary}");
    assert_eq!(
        (x("stranded"), x("capacity_violations")),
        (0.0, 0.0),
        "{summary}"
    );
    assert_eq!(
        (x("assigned_unseen"), x("unresolved")),
        (0.0, 0.0),
        "{summary}"
    );
    assert!(x("capacity_samples") >= 3.0, "{summary}");
    assert!(
        x("queued") > 0.0 && x("assigned_at_once") > 0.0,
        "{summary}"
    );
    assert_eq!(
        x("queued") + x("assigned_at_once"),
        x("opened"),
        "{summary}"
    );
    assert_eq!(x("assigned"), x("opened"), "{summary}");
    assert_eq!(x("resolved"), x("opened"), "{summary}");
    assert!(x("max_busy_slots") <= 10.0, "{summary}");
    // Queued conversations wait for a resolve: at least longer than the ones assigned at once.
    assert!(
        x("assign_queued_p50_ms") > x("assign_at_once_p50_ms"),
        "{summary}"
    );
    assert_eq!(r.accept.as_ref().unwrap().count, 120);
    assert_eq!(r.deliver.as_ref().unwrap().count, 120);
    assert_eq!(r.slo.len(), 5, "{:?}", r.slo);
    let json: serde_json::Value = serde_json::to_value(&r).unwrap();
    for k in [
        "stranded",
        "capacity_violations",
        "max_queue_depth",
        "create_p99_ms",
        "assign_queued_p99_ms",
        "resolve_p50_ms",
    ] {
        assert!(
            json["extra"].get(k).is_some(),
            "JSON report lacks extra.{k}"
        );
    }
    assert_eq!(json["config"]["capacity"], 2);

    // An impossible route gate fails the run and says which.
    let mut failing = r.clone();
    failing.failures.clear();
    failing.slo.clear();
    route::conclude_route(
        &mut failing,
        &route::split_slo("assign_queued_p99<1us").unwrap().1,
    );
    assert!(!failing.passed);
    assert!(
        failing.failures[0].contains("assign_queued_p99"),
        "{:?}",
        failing.failures
    );
}
