//! The `loadtest` command line: one subcommand per scenario, the same target, output and
//! verdict flags on each. Exit code 0 when the run passed, 1 when a gate or a correctness
//! check failed, 2 on an error.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::{Args, Parser, Subcommand};
use loadtest::scenarios::{chat, connect, fanout, route, soak, storm, Common};
use loadtest::worker::Scale;
use loadtest::{slo, Report, Target};

#[derive(Parser)]
#[command(
    name = "loadtest",
    version,
    about = "Relaydesk load harness (wire protocol v1, HTTP API v1)"
)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Ramp to N authenticated idle connections, hold them, report connect latency and memory.
    Connect {
        #[command(flatten)]
        common: CommonArgs,
        #[arg(long, default_value_t = 1000)]
        connections: usize,
        /// New connections per second.
        #[arg(long, default_value_t = 500.0)]
        rate: f64,
        #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
        hold: Duration,
    },
    /// Two-party conversations exchanging messages at a total rate.
    Chat {
        #[command(flatten)]
        common: CommonArgs,
        #[arg(long, default_value_t = 200)]
        conversations: usize,
        /// Messages per second, all conversations together.
        #[arg(long, default_value_t = 2000.0)]
        rate: f64,
        #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
        duration: Duration,
        /// Wait this long for the last deliveries.
        #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
        grace: Duration,
        /// Conversations per agent.
        #[arg(long, default_value_t = 50)]
        per_agent: usize,
        /// Meanwhile, another tenant sends this many messages per second (far over its
        /// limit, to show it does not slow this run down); 0: none.
        #[arg(long, default_value_t = 0.0)]
        noisy_rate: f64,
        /// Meanwhile, this many extra connections of the run's agents never read.
        #[arg(long, default_value_t = 0)]
        stalled: usize,
    },
    /// One conversation, many subscribers (admins), one or more publishers.
    Fanout {
        #[command(flatten)]
        common: CommonArgs,
        #[arg(long, default_value_t = 1000)]
        subscribers: usize,
        #[arg(long, default_value_t = 1)]
        publishers: usize,
        /// Messages per second, all publishers together.
        #[arg(long, default_value_t = 20.0)]
        rate: f64,
        #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
        duration: Duration,
        #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
        grace: Duration,
        /// Subscriber connections opened per second.
        #[arg(long, default_value_t = 1000.0)]
        connect_rate: f64,
        /// Pad each message so that its serialized `body` is this many bytes.
        #[arg(long)]
        body_bytes: Option<usize>,
    },
    /// N clients drop at once and reconnect with resume.
    Storm {
        #[command(flatten)]
        common: CommonArgs,
        #[arg(long, default_value_t = 2000)]
        connections: usize,
        #[arg(long, default_value_t = 20)]
        conversations: usize,
        /// Background messages per second during the storm.
        #[arg(long, default_value_t = 100.0)]
        rate: f64,
        #[arg(long, default_value_t = 1000.0)]
        connect_rate: f64,
        #[arg(long, default_value = "2s", value_parser = humantime::parse_duration)]
        warmup: Duration,
        #[arg(long, default_value = "60s", value_parser = humantime::parse_duration)]
        resume_timeout: Duration,
        #[arg(long, default_value = "3s", value_parser = humantime::parse_duration)]
        grace: Duration,
    },
    /// A mixed load for a long time (idle connections, chat, periodic resumes), sampling
    /// each edge's and core-api's memory to show drift.
    Soak {
        #[command(flatten)]
        common: CommonArgs,
        /// Idle authenticated connections held (the resuming subscribers included).
        #[arg(long, default_value_t = 1000)]
        connections: usize,
        /// Two-party conversations carrying the chat traffic.
        #[arg(long, default_value_t = 100)]
        conversations: usize,
        /// Messages per second, all conversations together.
        #[arg(long, default_value_t = 200.0)]
        rate: f64,
        #[arg(long, default_value = "10m", value_parser = humantime::parse_duration)]
        duration: Duration,
        /// How often each edge's and core-api's /metrics is read.
        #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
        sample_every: Duration,
        /// Memory drift is measured from the first sample this long after the load is up.
        #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
        warmup: Duration,
        /// How often the resuming subscribers drop their connections and resume.
        #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
        reconnect_every: Duration,
        /// Fraction of --connections subscribed to the chat conversations that drop and
        /// resume (0: none).
        #[arg(long, default_value_t = 0.02)]
        reconnect_fraction: f64,
        /// New connections per second while ramping up.
        #[arg(long, default_value_t = 500.0)]
        connect_rate: f64,
        #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
        resume_timeout: Duration,
        /// Wait this long for the last deliveries.
        #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
        grace: Duration,
        /// Conversations per agent.
        #[arg(long, default_value_t = 50)]
        per_agent: usize,
    },
    /// Routing and assignment: agents of fixed capacity, conversations opened at a rate and
    /// resolved a while after their assignment; create latency, time to assignment, queue
    /// depth, and the capacity invariant (sampled every second).
    ///
    /// `--slo` also gates the route figures: `stranded=0`, `violations=0`, `unresolved=0`,
    /// `queued`, `max_queue_depth`, and `<create|assign|assign_at_once|assign_queued|resolve>_<p50|p90|p99|p999|max>`
    /// (e.g. `assign_queued_p99<5s`); the generic `p99` is the create latency. A capacity
    /// violation or a stranded conversation fails the run without a gate.
    Route {
        #[command(flatten)]
        common: CommonArgs,
        /// Human agents, all online, one WebSocket each.
        #[arg(long, default_value_t = 50)]
        agents: usize,
        /// `max_concurrent` of every agent.
        #[arg(long, default_value_t = 4)]
        capacity: u32,
        /// Visitor sessions, used round robin (default: one per conversation).
        #[arg(long)]
        visitors: Option<usize>,
        /// New conversations per second.
        #[arg(long, default_value_t = 200.0)]
        rate: f64,
        #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
        duration: Duration,
        /// Each conversation is resolved this long after it was assigned.
        #[arg(long, default_value = "2s", value_parser = humantime::parse_duration)]
        hold: Duration,
        /// After the load, give up waiting for the queue to drain after this long without
        /// an assignment or a resolve.
        #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
        grace: Duration,
        /// Creates in flight at most, and resolves in flight at most.
        #[arg(long, default_value_t = 64)]
        concurrency: usize,
    },
    /// Internal: one pool of connections for a parent process (stdin/stdout JSON lines).
    #[command(hide = true)]
    Worker,
}

#[derive(Args, Clone)]
struct CommonArgs {
    /// core-api base URL.
    #[arg(long)]
    core: Option<String>,
    /// Edge WebSocket URL (repeatable).
    #[arg(long = "edge")]
    edges: Vec<String>,
    #[arg(long, env = "RELAYDESK_OPERATOR_TOKEN", hide_env_values = true)]
    operator_token: Option<String>,
    /// A `.relaydesk/dev.env` file (CORE_URL, EDGE_URLS, OPERATOR_TOKEN); flags override it.
    #[arg(long)]
    env: Option<PathBuf>,
    /// Edge process id, in the order of the edges (memory from /proc when /metrics has none).
    #[arg(long = "edge-pid")]
    edge_pids: Vec<u32>,
    /// Write the report as JSON.
    #[arg(long)]
    json: Option<PathBuf>,
    /// Write the report as a self-contained HTML page.
    #[arg(long)]
    html: Option<PathBuf>,
    /// Gates, e.g. 'p99<10ms,loss=0,rate>=1000'.
    #[arg(long)]
    slo: Option<String>,
    /// Connections per process; more are spread over worker processes.
    #[arg(long, default_value_t = 15_000)]
    per_process: usize,
    #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
    connect_timeout: Duration,
    /// No live progress line.
    #[arg(long)]
    quiet: bool,
}

impl CommonArgs {
    fn common(&self) -> Result<Common> {
        let mut target = match &self.env {
            Some(p) => Target::from_env_file(p)?,
            None => Target::default(),
        };
        if let Some(c) = &self.core {
            target.core.clone_from(c);
        }
        if !self.edges.is_empty() {
            target.edges.clone_from(&self.edges);
        }
        if let Some(t) = &self.operator_token {
            target.operator_token.clone_from(t);
        }
        target.edge_pids.clone_from(&self.edge_pids);
        target.validate()?;
        let mut common = Common::new(target);
        common.scale = Scale {
            per_process: self.per_process,
            worker_exe: std::env::current_exe().ok(),
        };
        common.slo = match &self.slo {
            Some(s) => slo::parse(s)?,
            None => Vec::new(),
        };
        common.progress = !self.quiet;
        common.connect_timeout = self.connect_timeout;
        Ok(common)
    }

    fn output(&self, report: &Report) -> Result<()> {
        println!("{}", report.table());
        if let Some(p) = &self.json {
            report.write_json(p)?;
            println!("  report: {}", p.display());
        }
        if let Some(p) = &self.html {
            report.write_html(p)?;
            println!("  report: {}", p.display());
        }
        Ok(())
    }
}

async fn run(cmd: Cmd) -> Result<bool> {
    let (args, report) = match cmd {
        Cmd::Worker => {
            loadtest::worker::worker_main().await?;
            return Ok(true);
        }
        Cmd::Connect {
            common,
            connections,
            rate,
            hold,
        } => {
            let c = common.common()?;
            let cfg = connect::ConnectConfig {
                connections,
                rate,
                hold,
            };
            (common, connect::run(&c, &cfg).await?)
        }
        Cmd::Chat {
            common,
            conversations,
            rate,
            duration,
            grace,
            per_agent,
            noisy_rate,
            stalled,
        } => {
            let c = common.common()?;
            let cfg = chat::ChatConfig {
                conversations,
                rate,
                duration,
                grace,
                per_agent,
                noisy_rate,
                stalled,
            };
            (common, chat::run(&c, &cfg).await?)
        }
        Cmd::Fanout {
            common,
            subscribers,
            publishers,
            rate,
            duration,
            grace,
            connect_rate,
            body_bytes,
        } => {
            let c = common.common()?;
            let cfg = fanout::FanoutConfig {
                subscribers,
                publishers,
                rate,
                duration,
                grace,
                connect_rate,
                body_bytes,
            };
            (common, fanout::run(&c, &cfg).await?)
        }
        Cmd::Storm {
            common,
            connections,
            conversations,
            rate,
            connect_rate,
            warmup,
            resume_timeout,
            grace,
        } => {
            let c = common.common()?;
            let cfg = storm::StormConfig {
                connections,
                conversations,
                rate,
                connect_rate,
                warmup,
                resume_timeout,
                grace,
            };
            (common, storm::run(&c, &cfg).await?)
        }
        Cmd::Soak {
            common,
            connections,
            conversations,
            rate,
            duration,
            sample_every,
            warmup,
            reconnect_every,
            reconnect_fraction,
            connect_rate,
            resume_timeout,
            grace,
            per_agent,
        } => {
            let c = common.common()?;
            let cfg = soak::SoakConfig {
                connections,
                conversations,
                rate,
                duration,
                sample_every,
                warmup,
                reconnect_every,
                reconnect_fraction,
                connect_rate,
                resume_timeout,
                grace,
                per_agent,
            };
            (common, soak::run(&c, &cfg).await?)
        }
        Cmd::Route {
            mut common,
            agents,
            capacity,
            visitors,
            rate,
            duration,
            hold,
            grace,
            concurrency,
        } => {
            // The route figures (`stranded=0`, `violations=0`, …) are gated by the scenario.
            let (generic, gates) = route::split_slo(common.slo.take().as_deref().unwrap_or(""))?;
            let mut c = common.common()?;
            c.slo = generic;
            let cfg = route::RouteConfig {
                agents,
                capacity,
                visitors,
                rate,
                duration,
                hold,
                grace,
                concurrency,
                gates,
            };
            let report = route::run(&c, &cfg).await?;
            print!("{}", route::summary(&report));
            (common, report)
        }
    };
    args.output(&report).context("writing the report")?;
    Ok(report.passed)
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("loadtest: cannot start the runtime: {e}");
            return ExitCode::from(2);
        }
    };
    match rt.block_on(run(cli.command)) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(1),
        Err(e) => {
            eprintln!("loadtest: error: {e:#}");
            ExitCode::from(2)
        }
    }
}
