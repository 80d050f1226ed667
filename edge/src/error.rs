//! Errors that stop an edge process ([`EdgeError`]); per-connection failures never
//! surface here, they end as a WebSocket close code.

use relaydesk_shared::token::TokenError;

/// Why [`crate::run`] failed.
#[derive(Debug, thiserror::Error)]
pub enum EdgeError {
    #[error("invalid token public key: {0}")]
    TokenKey(#[from] TokenError),
    #[error("invalid Redis configuration: {0}")]
    RedisConfig(fred::error::Error),
    #[error("cannot connect to Redis: {0}")]
    RedisConnect(fred::error::Error),
    #[error("I/O error: {0}")]
    Io(#[from] std::io::Error),
}
