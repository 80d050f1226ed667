//! Telling the edges that an agent's credentials were revoked.
//!
//! PostgreSQL is the truth for HTTP (`auth.rs` checks every agent request there). Edges
//! never read PostgreSQL, so each revocation ([`Revoked`]: every token of an agent below a
//! credential version, or every token of one session) is, after its transaction
//! committed, (1) added to the Redis sorted set `Keys::revocations`, scored by the time
//! after which no token it matches can still be valid (now + the longer of the session
//! and connection token lifetimes + the verifiers' leeway), pruning what has expired,
//! and (2) pushed as an `Egress::Revoke` entry to every edge that holds a connection of
//! the agent (`Keys::principal_edges`), which closes the matching connections at once.
//! Edges also re-read the set periodically (`edge/src/revoked.rs`), which bounds how
//! long a lost push or a `hello` racing the push can go unnoticed.

use std::time::Duration;

use bytes::Bytes;
use fred::prelude::SortedSetsInterface;
use relaydesk_shared::bus::{Egress, Revoked};

use crate::error::{Error, Result};
use crate::fanout::{now_ms, Out};
use crate::AppState;

/// Slack on top of the token lifetimes: the verifiers' leeway and clock skew.
const SLACK: Duration = Duration::from_secs(60);

/// Until when (Unix ms) a revocation made now can match a still-valid token.
pub fn until_ms(state: &AppState) -> u64 {
    let longest = state.config.session_ttl.max(state.config.connect_token_ttl) + SLACK;
    now_ms() + u64::try_from(longest.as_millis()).unwrap_or(u64::MAX / 2)
}

/// Records `revoked` in Redis and pushes it to the edges holding the agent's connections.
/// Called after the change committed; an error means the edges may not know yet (they
/// will not learn it from the periodic read either, since the record failed).
pub async fn publish(state: &AppState, revoked: Revoked) -> Result<()> {
    let until = until_ms(state);
    let member = serde_json::to_string(&revoked).map_err(|e| Error::Internal(e.to_string()))?;
    let key = state.keys.revocations();
    let () = state
        .redis
        .zadd(&key, None, None, false, false, (until as f64, member))
        .await?;
    let _: i64 = state
        .redis
        .zremrangebyscore(&key, "-inf", now_ms() as f64)
        .await?;
    let (tenant, principal) = revoked.principal();
    let edges = state
        .fanout
        .live_edges(&[state.keys.principal_edges(tenant, principal)])
        .await?;
    let outs: Vec<Out> = edges
        .into_iter()
        .flatten()
        .map(|edge| Out {
            edge,
            header: Egress::Revoke {
                revoked: revoked.clone(),
                until_ms: until,
            },
            frame: Bytes::new(),
        })
        .collect();
    state.fanout.publish(&outs).await?;
    tracing::info!(%tenant, agent = %principal, edges = outs.len(), "credentials revoked");
    Ok(())
}
