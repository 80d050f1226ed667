//! Relaydesk core-api: owns persistence (PostgreSQL), the HTTP API, and the ingress
//! consumer that turns edges' `send` entries into committed, fanned-out messages.
//!
//! The path of a message: `consumer` reads a batch from the ingress streams →
//! `store::commit_sends` commits it → `fanout` appends `msg` frames to the interested
//! edges' egress streams and `accepted` to the sender's → `consumer` XACKs.
//! Invariant: core-api never holds a client socket; edges never touch PostgreSQL.

pub mod access;
pub mod auth;
pub mod blast;
pub mod config;
pub mod consumer;
pub mod db;
pub mod error;
pub mod events;
pub mod fanout;
pub mod http;
pub mod lifecycle;
pub mod presence;
pub mod revoke;
pub mod routing;
pub mod store;
pub mod throttle;
pub mod webhook_target;
pub mod webhooks;

use std::future::Future;
use std::sync::Arc;

use deadpool_postgres::Pool;
use fred::prelude::*;
use relaydesk_shared::bus::Keys;
use relaydesk_shared::token::{self, TokenSigner, TokenVerifier, AUD_API};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

pub use config::Config;
pub use error::Error;

/// What every handler and the consumer share.
pub struct AppState {
    pub config: Config,
    pub pool: Pool,
    pub redis: Client,
    pub keys: Keys,
    pub fanout: fanout::Fanout,
    pub signer: TokenSigner,
    pub api_tokens: TokenVerifier,
}

/// Longest a Redis command may take before it counts as failed.
const REDIS_COMMAND_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// Connects a Redis client (fred) and waits until it is connected. The client reconnects
/// by itself (exponential backoff up to 2 s, forever) and bounds every command, so a
/// Redis restart stalls the consumer only until Redis answers again.
pub async fn redis_client(url: &str) -> Result<Client, Error> {
    let config = fred::types::config::Config::from_url(url)?;
    let client = Builder::from_config(config)
        .with_performance_config(|p| p.default_command_timeout = REDIS_COMMAND_TIMEOUT)
        .with_connection_config(|c| {
            c.connection_timeout = std::time::Duration::from_secs(5);
            c.internal_command_timeout = REDIS_COMMAND_TIMEOUT;
            c.max_command_attempts = 2;
        })
        .set_policy(fred::types::config::ReconnectPolicy::new_exponential(
            0, 100, 2000, 2,
        ))
        .build()?;
    client.init().await?;
    Ok(client)
}

impl AppState {
    pub async fn new(config: Config) -> Result<Self, Error> {
        let pool = db::pool(&config.database_url, config.database_pool)?;
        let redis = redis_client(&config.redis_url).await?;
        let keys = Keys::new(config.redis_prefix.clone());
        let pem = String::from_utf8(config.signing_key_pem.clone())
            .map_err(|_| Error::Internal("the signing key is not PEM text".into()))?;
        let signer = TokenSigner::from_pem(pem.as_bytes())?;
        let api_tokens = TokenVerifier::from_pem(token::public_pem_of(&pem)?.as_bytes(), AUD_API)?;
        let fanout = fanout::Fanout::new(redis.clone(), keys.clone(), config.egress_maxlen);
        Ok(AppState {
            config,
            pool,
            redis,
            keys,
            fanout,
            signer,
            api_tokens,
        })
    }
}

/// Serves the HTTP API on `listener` and runs the ingress consumer and the webhook sender
/// until `shutdown` resolves; then stops taking requests, finishes the batch in hand, and
/// returns.
pub async fn run(
    listener: TcpListener,
    config: Config,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), Error> {
    let _ = relaydesk_shared::telemetry::prometheus();
    let state = Arc::new(AppState::new(config).await?);
    auth::prepare_dummy_hash().await?;
    let reader = redis_client(&state.config.redis_url).await?;
    let stop = CancellationToken::new();
    let consumer = tokio::spawn(consumer::run(state.clone(), reader, stop.clone()));
    let webhooks = tokio::spawn(webhooks::run(state.clone(), stop.clone()));
    let sweeper = tokio::spawn(presence::run(state.clone(), stop.clone()));
    let app = http::router(state.clone());
    let stop_http = stop.clone();
    tracing::info!(addr = ?listener.local_addr().ok(), core = %state.config.core_id, "core-api listening");
    // Handlers see the TCP peer's address (login throttling counts per address).
    let app = app.into_make_service_with_connect_info::<std::net::SocketAddr>();
    let served = axum::serve(listener, app)
        .with_graceful_shutdown(async move {
            shutdown.await;
            stop_http.cancel();
        })
        .await;
    stop.cancel();
    let _ = consumer.await;
    let _ = webhooks.await;
    let _ = sweeper.await;
    served.map_err(|e| Error::Internal(format!("http server: {e}")))
}
