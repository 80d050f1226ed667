//! Every scenario at small scale against a real in-process stack (core-api and two edges
//! on the private PostgreSQL and Redis that `cargo xtask test` starts), through the
//! library API: nothing lost, duplicated or reordered, and a failing gate fails the run;
//! `soak` also samples every process's memory over time.

#![allow(clippy::unwrap_used)]

use std::time::Duration;

use loadtest::scenarios::{chat, connect, fanout, soak, storm, Common};
use loadtest::{slo, Target};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

/// A running stack; stops when dropped.
struct Stack {
    target: Target,
    stop: CancellationToken,
}

impl Drop for Stack {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

fn var(name: &str) -> String {
    std::env::var(name)
        .unwrap_or_else(|_| panic!("{name} is not set: run the suite with `cargo xtask test`"))
}

async fn listener() -> (TcpListener, String) {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap().to_string();
    (l, addr)
}

async fn start(edges: usize) -> Stack {
    start_with(edges, None).await
}

/// A stack whose edges ping every `heartbeat` (and close peers silent for two of them).
async fn start_with(edges: usize, heartbeat: Option<Duration>) -> Stack {
    let keys = std::path::PathBuf::from(var("RELAYDESK_TEST_KEYS_DIR"));
    let signing = std::fs::read(keys.join("signing.pem")).unwrap();
    let public = std::fs::read(keys.join("public.pem")).unwrap();
    let redis = var("RELAYDESK_TEST_REDIS_URL");
    let prefix = format!("t{}", &Uuid::new_v4().simple().to_string()[..10]);
    let operator = format!("op-{}", Uuid::new_v4().simple());
    let stop = CancellationToken::new();
    let mut edge_urls = Vec::new();
    for _ in 0..edges {
        let (l, addr) = listener().await;
        edge_urls.push(format!("ws://{addr}/v1/ws"));
        let mut config = relaydesk_edge::Config::new(redis.clone(), prefix.clone(), public.clone());
        if let Some(h) = heartbeat {
            config.heartbeat = h;
        }
        let s = stop.clone();
        tokio::spawn(async move {
            if let Err(e) = relaydesk_edge::run(l, config, async move { s.cancelled().await }).await
            {
                eprintln!("edge stopped: {e}");
            }
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
    };
    let http = reqwest::Client::new();
    let mut bases = vec![stack.target.core.clone()];
    for e in &stack.target.edges {
        bases.push(e.replace("ws://", "http://").replace("/v1/ws", ""));
    }
    for base in bases {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        loop {
            let last = match http.get(format!("{base}/readyz")).send().await {
                Ok(r) if r.status().is_success() => break,
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
    stack
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
    let stack = start_with(2, Some(Duration::from_millis(500))).await;
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
