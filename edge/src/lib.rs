//! Relaydesk edge: a stateless WebSocket node between clients and the Redis Streams bus.
//!
//! Message path (one module each): [`accept`] (TCP accept loop, HTTP/1 connections,
//! connection cap) → [`http`] (routes, WebSocket upgrade) → [`session`] (one task per
//! WebSocket: `hello`, client frames) reading through [`reader`] (frames, pooled
//! buffers) → [`ingress`] (pipelined XADDs to the ingress shards) … core-api …
//! [`egress`] (XREAD of this edge's stream, dispatch) → [`hub`] (local subscriptions,
//! per-connection ordering) → [`writer`] (bounded outbound queue, coalesced socket
//! writes, edge-wide heartbeats). [`registry`] keeps this edge's registry entries fresh;
//! [`revoked`] knows which agent credentials core-api revoked. [`echo`] is the
//! off-by-default echo route for conformance runs, over the same reader and writer.
//!
//! [`run`] wires them together and drains on shutdown: `/readyz` fails, no new
//! connections are accepted, and every WebSocket is closed with 1012, spread over the
//! drain window.

pub mod accept;
pub mod config;
pub mod echo;
pub mod egress;
pub mod error;
pub mod http;
pub mod hub;
pub mod ingress;
pub mod limits;
pub mod reader;
pub mod registry;
pub mod revoked;
pub mod session;
pub mod writer;

use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use bytes::Bytes;
use fred::prelude::{
    Builder, Client, ClientLike, ConnectionConfig, PerformanceConfig, ReconnectPolicy,
};
use relaydesk_shared::bus::Keys;
use relaydesk_shared::token::{TokenVerifier, AUD_EDGE};
use relaydesk_shared::wire::ServerFrame;
use relaydesk_shared::CloseCode;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

pub use config::{Config, ConfigError};
pub use error::EdgeError;

use hub::Hub;
use ingress::IngressTx;
use registry::Registrar;
use writer::Outbound;

/// Capacity of the ingress append queue.
const INGRESS_QUEUE: usize = 65_536;
/// Concurrent typing fan-outs (each one registry read); more are dropped.
const TYPING_FANOUTS: usize = 256;
/// Longest a Redis command may take before it counts as failed.
const REDIS_COMMAND_TIMEOUT: Duration = Duration::from_secs(10);
/// Extra time, after the drain window, for connections to finish their close handshake.
const DRAIN_GRACE: Duration = Duration::from_secs(3);

/// State shared by every task of one edge process.
pub(crate) struct Ctx {
    pub config: Config,
    /// `config.edge_id`, shared by every connection's bus identity.
    pub edge_id: Arc<str>,
    pub keys: Keys,
    /// Commands (pipelined); the egress reader has its own connection.
    pub redis: Client,
    pub verifier: TokenVerifier,
    /// Revoked credentials and the connections they may concern.
    pub revoked: revoked::Revocations,
    pub limits: Arc<limits::Limits>,
    hub: Mutex<Hub>,
    pub ingress: IngressTx,
    /// Every WebSocket session, authenticated or not, for drain and heartbeats.
    sessions: Mutex<HashMap<u64, Outbound>>,
    draining: AtomicBool,
    next_conn: AtomicU64,
    /// Connection and session tasks.
    pub tracker: TaskTracker,
    pub typing_permits: Arc<Semaphore>,
    /// The serialized `pong` frame.
    pub pong: Bytes,
    /// Since when Redis has been failing (egress reads, ingress appends), if it is.
    redis_down: Mutex<Option<Instant>>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // Critical sections never panic half-way; recover the data if one did.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Ctx {
    pub fn hub(&self) -> MutexGuard<'_, Hub> {
        lock(&self.hub)
    }

    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::SeqCst)
    }

    /// A connection id unique in this process (and, seeded by the start time, unlikely
    /// to repeat one of a previous process with the same edge id).
    pub fn next_conn_id(&self) -> u64 {
        self.next_conn.fetch_add(1, Ordering::Relaxed)
    }

    pub fn session_opened(&self, conn: u64, out: Outbound) {
        lock(&self.sessions).insert(conn, out);
        metrics::gauge!("relaydesk_edge_connections").increment(1.0);
    }

    pub fn session_closed(&self, conn: u64) {
        if lock(&self.sessions).remove(&conn).is_some() {
            metrics::gauge!("relaydesk_edge_connections").decrement(1.0);
        }
    }

    /// Calls `f` on every session (under the sessions lock: keep it short).
    pub fn each_session(&self, mut f: impl FnMut(u64, &Outbound)) {
        for (conn, out) in lock(&self.sessions).iter() {
            f(*conn, out);
        }
    }

    pub fn all_outbounds(&self) -> Vec<(u64, Outbound)> {
        let mut v: Vec<(u64, Outbound)> = lock(&self.sessions)
            .iter()
            .map(|(k, o)| (*k, o.clone()))
            .collect();
        v.sort_by_key(|(k, _)| *k);
        v
    }

    /// Records a successful Redis round trip, ending an outage if there was one.
    pub fn redis_ok(&self) {
        if let Some(since) = lock(&self.redis_down).take() {
            tracing::info!(
                down_ms = since.elapsed().as_millis() as u64,
                "Redis reachable again: sends accepted"
            );
        }
    }

    /// Records a failed Redis round trip. While Redis is failing, sessions keep their
    /// sockets and refuse `send`s with `unavailable` and `retry_after_ms`.
    pub fn redis_failed(&self) {
        let mut down = lock(&self.redis_down);
        if down.is_none() {
            *down = Some(Instant::now());
            tracing::warn!("Redis unreachable: refusing sends until it answers");
        }
    }

    pub fn redis_healthy(&self) -> bool {
        lock(&self.redis_down).is_none()
    }
}

fn redis_client(config: &Config) -> Result<Client, EdgeError> {
    let redis_config =
        fred::prelude::Config::from_url(&config.redis_url).map_err(EdgeError::RedisConfig)?;
    let client = Builder::from_config(redis_config)
        .with_performance_config(|p: &mut PerformanceConfig| {
            // Generous: a command stalled by a loaded machine is not an outage.
            p.default_command_timeout = REDIS_COMMAND_TIMEOUT;
        })
        .with_connection_config(|c: &mut ConnectionConfig| {
            c.connection_timeout = Duration::from_secs(3);
            c.internal_command_timeout = REDIS_COMMAND_TIMEOUT;
            c.max_command_attempts = 2;
        })
        .set_policy(ReconnectPolicy::new_exponential(0, 100, 2000, 2))
        .build()
        .map_err(EdgeError::RedisConfig)?;
    Ok(client)
}

/// Serves WebSockets on `listener` until `shutdown` resolves, then drains and returns.
pub async fn run(
    listener: tokio::net::TcpListener,
    config: Config,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), EdgeError> {
    let prometheus = relaydesk_shared::telemetry::prometheus();
    let verifier = TokenVerifier::from_pem(&config.token_public_key_pem, AUD_EDGE)?;
    let redis = redis_client(&config)?;
    let _redis_task = redis.init().await.map_err(EdgeError::RedisConnect)?;
    let reader = redis.clone_new();
    let _reader_task = reader.init().await.map_err(EdgeError::RedisConnect)?;

    let keys = Keys::new(config.redis_prefix.clone());
    let (registrar, reg_rx) = Registrar::channel();
    let (ingress, ingress_rx) =
        IngressTx::channel(keys.clone(), config.ingress_shards, INGRESS_QUEUE);
    // Seeded by the start time (s << 20, below 2^53 so JSON tooling keeps it exact): a
    // restart under the same EDGE_ID does not reuse the ids of stale egress entries.
    let seed = (registry::now_ms() / 1000) << 20;
    let ctx = Arc::new(Ctx {
        hub: Mutex::new(Hub::new(registrar, config.outbound_queue_bytes)),
        keys: keys.clone(),
        redis: redis.clone(),
        verifier,
        revoked: revoked::Revocations::default(),
        limits: limits::Limits::new(&config),
        ingress,
        sessions: Mutex::new(HashMap::new()),
        draining: AtomicBool::new(false),
        next_conn: AtomicU64::new(seed.max(1)),
        tracker: TaskTracker::new(),
        typing_permits: Arc::new(Semaphore::new(TYPING_FANOUTS)),
        pong: Bytes::from(ServerFrame::Pong.to_json()),
        redis_down: Mutex::new(None),
        edge_id: Arc::from(config.edge_id.as_str()),
        config,
    });
    tracing::info!(edge_id = %ctx.config.edge_id, prefix = %ctx.keys.prefix(), "edge started");
    // The connection gauge is exported from the start (0), not from the first connection.
    // An increment, not a set: edges sharing a process (tests) share the gauge.
    metrics::gauge!("relaydesk_edge_connections").increment(0.0);

    let background = CancellationToken::new();
    // The registry task outlives the ingress and egress tasks so that it can remove
    // this edge's entries last.
    let registry_stop = CancellationToken::new();
    let registry_task = tokio::spawn(registry::run_registry(
        redis.clone(),
        keys,
        ctx.config.edge_id.clone(),
        reg_rx,
        registry_stop.clone(),
    ));
    let ingress_task = tokio::spawn(ingress::run_ingress(
        ctx.clone(),
        redis.clone(),
        ingress_rx,
        background.clone(),
    ));
    let egress_task = tokio::spawn(egress::run_egress(
        ctx.clone(),
        reader.clone(),
        background.clone(),
    ));
    let sweeper_task = tokio::spawn(egress::run_sweeper(ctx.clone(), background.clone()));
    let revoked_task = tokio::spawn(revoked::run_loader(ctx.clone(), background.clone()));
    let heartbeat_task = tokio::spawn(writer::run_heartbeats(ctx.clone(), background.clone()));
    let upkeep_task = tokio::spawn({
        let stop = background.clone();
        let upkeep_ctx = ctx.clone();
        async move {
            let ctx = upkeep_ctx;
            let mut ticker = tokio::time::interval(Duration::from_secs(5));
            loop {
                tokio::select! {
                    _ = ticker.tick() => {
                        if let Some(handle) = &prometheus {
                            handle.run_upkeep();
                        }
                        ctx.limits.sweep();
                    }
                    _ = stop.cancelled() => break,
                }
            }
        }
    });

    accept::serve(ctx.clone(), listener, shutdown).await;
    drain(&ctx).await;

    background.cancel();
    let _ = tokio::join!(
        ingress_task,
        egress_task,
        sweeper_task,
        revoked_task,
        heartbeat_task,
        upkeep_task
    );
    registry_stop.cancel();
    let _ = registry_task.await;
    let _ = reader.quit().await;
    let _ = redis.quit().await;
    tracing::info!(edge_id = %ctx.config.edge_id, "edge stopped");
    Ok(())
}

/// Closes every WebSocket with 1012, spread evenly over the drain window, then waits
/// for sessions to end.
async fn drain(ctx: &Arc<Ctx>) {
    let window = ctx.config.drain_window;
    let outs = ctx.all_outbounds();
    tracing::info!(
        connections = outs.len(),
        window_ms = window.as_millis() as u64,
        "draining"
    );
    if !outs.is_empty() {
        let step = window / u32::try_from(outs.len()).unwrap_or(u32::MAX);
        let start = tokio::time::Instant::now();
        for (i, (_, out)) in outs.iter().enumerate() {
            tokio::time::sleep_until(start + step * u32::try_from(i).unwrap_or(u32::MAX)).await;
            out.close(CloseCode::Restart);
        }
    }
    ctx.tracker.close();
    let deadline = tokio::time::Instant::now() + window.min(Duration::from_secs(1)) + DRAIN_GRACE;
    loop {
        // Sessions that were still starting when the window began.
        for (_, out) in ctx.all_outbounds() {
            out.close(CloseCode::Restart);
        }
        if tokio::time::timeout(Duration::from_millis(200), ctx.tracker.wait())
            .await
            .is_ok()
        {
            break;
        }
        if tokio::time::Instant::now() >= deadline {
            tracing::warn!(left = ctx.tracker.len(), "drain deadline passed");
            break;
        }
    }
}
