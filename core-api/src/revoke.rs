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
//!
//! core-api also checks every agent's `hello` against PostgreSQL (`consumer.rs`), so a
//! revocation the edge never heard of (its record in Redis lost, or made by hand in the
//! database) still refuses the token: the answer is the revocation that matches it
//! ([`refusal`]), pushed to that edge only.

use std::time::Duration;

use bytes::Bytes;
use fred::prelude::SortedSetsInterface;
use relaydesk_shared::bus::{Egress, Revoked, TokenCred};
use uuid::Uuid;

use crate::auth::Standing;
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

/// The revocation that refuses a token of `principal` carrying `cred`, given what
/// PostgreSQL holds of it (`None`: no such agent), or `None` if the token is valid.
/// Below the agent's current version: every token below it (what bumped the version
/// revoked them all). A logged-out session: that session. A deactivated agent (its
/// tokens are all below its version, deactivation bumped it) or anything else: every
/// token up to the token's own version (activation bumps the version again, so the
/// agent's next tokens pass).
pub fn refusal(
    tenant: Uuid,
    principal: Uuid,
    cred: TokenCred,
    standing: Option<&Standing>,
) -> Option<Revoked> {
    if standing.is_some_and(|s| s.admits(cred.ver)) {
        return None;
    }
    let below = |min| Revoked::Version {
        tenant,
        principal,
        min,
    };
    Some(match (standing, cred.sid) {
        (Some(s), _) if cred.ver < s.version => below(s.version),
        (Some(s), Some(sid)) if s.logged_out && s.active && cred.ver == s.version => {
            Revoked::Session {
                tenant,
                principal,
                sid,
            }
        }
        _ => below(cred.ver.saturating_add(1)),
    })
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

#[cfg(test)]
mod tests {
    use relaydesk_shared::token::Role;

    use super::*;

    #[test]
    fn a_hello_is_refused_by_the_revocation_that_matches_it() {
        let (t, a, sid) = (Uuid::new_v4(), Uuid::new_v4(), Uuid::new_v4());
        let standing = |version, active, logged_out| Standing {
            role: Role::Agent,
            version,
            active,
            logged_out,
        };
        let cred = |ver| TokenCred {
            ver,
            sid: Some(sid),
        };
        let below = |min| {
            Some(Revoked::Version {
                tenant: t,
                principal: a,
                min,
            })
        };
        assert_eq!(
            refusal(t, a, cred(2), Some(&standing(2, true, false))),
            None
        );
        assert_eq!(
            refusal(t, a, cred(1), Some(&standing(3, true, false))),
            below(3)
        );
        assert_eq!(
            refusal(t, a, cred(1), Some(&standing(3, false, true))),
            below(3)
        );
        assert_eq!(
            refusal(t, a, cred(2), Some(&standing(2, true, true))),
            Some(Revoked::Session {
                tenant: t,
                principal: a,
                sid
            })
        );
        assert_eq!(
            refusal(t, a, cred(2), Some(&standing(2, false, false))),
            below(3)
        );
        assert_eq!(
            refusal(t, a, cred(4), Some(&standing(2, true, false))),
            below(5)
        );
        assert_eq!(refusal(t, a, cred(0), None), below(1));
    }
}
