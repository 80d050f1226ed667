//! The Redis Streams bus between edges and core-api: key layout and entry formats.
//!
//! ```text
//! client ─ws─▶ edge ──XADD──▶ {p}:in:{shard}      (ingress, sharded by conversation)
//!                                  │ XREADGROUP "core" (many core-api processes)
//!                                  ▼
//!                              core-api ── commit in PostgreSQL
//!                                  │ XADD to each interested edge
//!                                  ▼
//! client ◀─ws─ edge ◀─XREAD── {p}:eg:{edge id}   (egress, one per edge, bounded)
//! ```
//!
//! Every key carries a hash tag (`{…}`) so the layout works unchanged on Redis Cluster:
//! each key is used alone, never in a multi-key command, so each may live in any slot.
//!
//! Which edge needs which conversation is kept in two registries of Redis hashes whose
//! fields are edge ids and whose values are expiry times (Unix ms). Edges refresh their
//! entries every [`REGISTRY_REFRESH_MS`]; readers ignore expired fields, so a dead edge
//! drops out by itself within [`REGISTRY_TTL_MS`].
//!
//! Ingress entries have one field, [`FIELD_DATA`], holding an [`Ingress`] as JSON.
//! Egress entries hold one or more pairs, in order, of [`FIELD_HEADER`] (an [`Egress`] as
//! JSON) and [`FIELD_FRAME`]: the client frame(s), already serialized, which the edge
//! writes to sockets as they are.

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::token::Role;

/// Field of an ingress entry: the [`Ingress`] JSON.
pub const FIELD_DATA: &str = "d";
/// Field of an egress entry: the [`Egress`] JSON.
pub const FIELD_HEADER: &str = "h";
/// Field of an egress entry: serialized client frame bytes (possibly empty).
pub const FIELD_FRAME: &str = "f";
/// The consumer group core-api processes read ingress streams through.
pub const INGRESS_GROUP: &str = "core";
/// How long a registry entry lives without a refresh.
pub const REGISTRY_TTL_MS: u64 = 30_000;
/// How often edges refresh their registry entries.
pub const REGISTRY_REFRESH_MS: u64 = 10_000;
/// Idle time of an egress stream after which Redis drops it (its edge is gone).
pub const EGRESS_EXPIRE_SECS: i64 = 120;

/// Redis key names under one prefix (which isolates deployments and tests).
#[derive(Debug, Clone)]
pub struct Keys {
    prefix: String,
}

impl Keys {
    pub fn new(prefix: impl Into<String>) -> Self {
        Keys {
            prefix: prefix.into(),
        }
    }

    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// Ingress stream of one shard.
    pub fn ingress(&self, shard: u16) -> String {
        format!("{}:in:{{{shard}}}", self.prefix)
    }

    /// Egress stream of one edge process.
    pub fn egress(&self, edge: &str) -> String {
        format!("{}:eg:{{{edge}}}", self.prefix)
    }

    /// Registry: edges with at least one subscriber of a conversation.
    pub fn conv_edges(&self, tenant: Uuid, conv: Uuid) -> String {
        format!("{}:ce:{{{tenant}:{conv}}}", self.prefix)
    }

    /// Staff whose consoles were connected: hash of `tenant:agent` → last time (Unix
    /// ms) core-api saw them connected. Read by the availability sweep.
    pub fn staff_seen(&self) -> String {
        format!("{}:{{staff-seen}}", self.prefix)
    }

    /// Tenants that may have queued conversations (a set), drained by the sweep.
    pub fn queued_tenants(&self) -> String {
        format!("{}:{{queued-tenants}}", self.prefix)
    }

    /// Snoozed conversations with a wake-up time: sorted set of `tenant:conv` scored by
    /// that time (Unix ms).
    pub fn snoozes(&self) -> String {
        format!("{}:{{snoozes}}", self.prefix)
    }

    /// Revoked credentials: sorted set of [`Revoked`] (JSON) scored by the time (Unix ms)
    /// after which no token it matches can still be valid. core-api adds and prunes;
    /// every edge loads it at start and re-reads it periodically.
    pub fn revocations(&self) -> String {
        format!("{}:{{revocations}}", self.prefix)
    }

    /// Registry: edges holding at least one connection of a principal.
    pub fn principal_edges(&self, tenant: Uuid, principal: Uuid) -> String {
        format!("{}:pe:{{{tenant}:{principal}}}", self.prefix)
    }
}

/// The ingress shard of a conversation (or, for `hello`, of a principal).
pub fn shard_of(id: Uuid, shards: u16) -> u16 {
    (id.as_u128() % u128::from(shards.max(1))) as u16
}

/// Where an ingress entry came from: enough for core-api to authorize it and answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Source {
    /// Edge id: the answer goes to `Keys::egress(edge)`. Shared: every connection of an
    /// edge carries the same one.
    pub edge: std::sync::Arc<str>,
    /// Connection id on that edge.
    pub conn: u64,
    pub tenant: Uuid,
    pub principal: Uuid,
    pub role: Role,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
}

/// The credential identity an agent's token carries: its credential version (0 when
/// absent) and its session.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenCred {
    pub ver: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sid: Option<Uuid>,
}

/// A revoked credential of an agent: what edges refuse at `hello` and close open
/// connections for (4501).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "k", rename_all = "snake_case")]
pub enum Revoked {
    /// Every token of (tenant, principal) whose credential version is below `min`.
    Version {
        tenant: Uuid,
        principal: Uuid,
        min: u32,
    },
    /// Every token of session `sid` (a logout).
    Session {
        tenant: Uuid,
        principal: Uuid,
        sid: Uuid,
    },
}

impl Revoked {
    pub fn principal(&self) -> (Uuid, Uuid) {
        match self {
            Revoked::Version {
                tenant, principal, ..
            }
            | Revoked::Session {
                tenant, principal, ..
            } => (*tenant, *principal),
        }
    }
}

/// An entry of an ingress stream (edge → core-api).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "k", rename_all = "snake_case")]
pub enum Ingress {
    /// A new connection asks for its automatic subscriptions; answered by
    /// [`Egress::Welcome`], or, when the agent's token is no longer valid in PostgreSQL,
    /// by an [`Egress::Revoke`] that closes it.
    Hello {
        src: Source,
        /// The token's credential version and session (agents' tokens), which core-api
        /// checks again.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        cred: Option<TokenCred>,
    },
    /// A client `send`; answered by [`Egress::Reply`] (`accepted` or `error`) after commit.
    Send {
        src: Source,
        id: String,
        conv: Uuid,
        kind: String,
        body: serde_json::Value,
        /// When the edge received the frame (Unix µs), for end-to-end latency.
        rx_us: u64,
    },
    /// A client `sub` (or an edge repairing a gap); answered by [`Egress::Replay`] chunks,
    /// or an [`Egress::Reply`] carrying an `error`.
    Sub { src: Source, conv: Uuid, after: u64 },
    /// Cumulative delivery acknowledgement.
    Ack { src: Source, conv: Uuid, seq: u64 },
    /// Read receipt; fanned out as a `read` frame to the other participants.
    Read { src: Source, conv: Uuid, seq: u64 },
}

impl Ingress {
    pub fn source(&self) -> &Source {
        match self {
            Ingress::Hello { src, .. }
            | Ingress::Send { src, .. }
            | Ingress::Sub { src, .. }
            | Ingress::Ack { src, .. }
            | Ingress::Read { src, .. } => src,
        }
    }
}

/// The header of an egress entry (core-api or edge → one edge).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "k", rename_all = "snake_case")]
pub enum Egress {
    /// A committed message: the frame is its `msg`. For every local subscription of
    /// (tenant, conv), delivered in `seq` order without duplicates; `agents_only`
    /// messages are skipped (but counted as seen) for visitor connections.
    Deliver {
        tenant: Uuid,
        conv: Uuid,
        seq: u64,
        agents_only: bool,
    },
    /// A frame for one connection (`accepted`, `error`).
    Reply { conn: u64 },
    /// One chunk of the answer to a `sub`: the frame field holds the `msg` frames with
    /// `seqs`, concatenated, `lens[i]` bytes each. The edge sends `subbed` (with `head`)
    /// before the first chunk; `done` marks the last chunk.
    Replay {
        conn: u64,
        conv: Uuid,
        head: u64,
        seqs: Vec<u64>,
        lens: Vec<u32>,
        done: bool,
    },
    /// The answer to [`Ingress::Hello`]: the connection's automatic subscriptions, each
    /// live from `head` (messages up to `head` are history, fetched with `sub`).
    Welcome { conn: u64, subs: Vec<(Uuid, u64)> },
    /// Subscribe every local connection of `principal` to `conv`, live after `head`,
    /// and send them the frame (a `conv` event) if there is one.
    AutoSub {
        tenant: Uuid,
        principal: Uuid,
        conv: Uuid,
        head: u64,
    },
    /// A frame (a `conv` event of the queue, a presence update) for every local
    /// connection of (tenant, principal). With `unsub`, those connections first stop
    /// receiving that conversation (it was transferred away from the principal).
    ToPrincipal {
        tenant: Uuid,
        principal: Uuid,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        unsub: Option<Uuid>,
    },
    /// A non-message frame (`read`, `typing`, `conv`) for the subscribers of (tenant,
    /// conv), except connections of `exclude`; `agents_only` skips visitors.
    Event {
        tenant: Uuid,
        conv: Uuid,
        exclude: Option<Uuid>,
        agents_only: bool,
    },
    /// A credential was revoked: close the local connections it matches with 4501 and
    /// refuse it at `hello` until `until_ms` (Unix ms), when no token it matches is
    /// still valid.
    Revoke { revoked: Revoked, until_ms: u64 },
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_carry_hash_tags() {
        let k = Keys::new("rd");
        assert_eq!(k.ingress(3), "rd:in:{3}");
        assert_eq!(k.egress("e1"), "rd:eg:{e1}");
        let t = Uuid::nil();
        assert_eq!(k.conv_edges(t, t), format!("rd:ce:{{{t}:{t}}}"));
    }

    #[test]
    fn revocations_round_trip() {
        let r = Revoked::Session {
            tenant: Uuid::new_v4(),
            principal: Uuid::new_v4(),
            sid: Uuid::new_v4(),
        };
        let e = Egress::Revoke {
            revoked: r.clone(),
            until_ms: 9,
        };
        let s = serde_json::to_string(&e).unwrap();
        assert_eq!(serde_json::from_str::<Egress>(&s).unwrap(), e);
        let s = serde_json::to_string(&r).unwrap();
        assert_eq!(serde_json::from_str::<Revoked>(&s).unwrap(), r);
    }

    #[test]
    fn shards_are_stable_and_bounded() {
        let id = Uuid::new_v4();
        assert_eq!(shard_of(id, 16), shard_of(id, 16));
        assert!(shard_of(id, 16) < 16);
        assert_eq!(shard_of(id, 0), 0);
    }

    #[test]
    fn ingress_round_trips() {
        let src = Source {
            edge: "e".into(),
            conn: 7,
            tenant: Uuid::new_v4(),
            principal: Uuid::new_v4(),
            role: Role::Visitor,
            name: None,
        };
        let i = Ingress::Sub {
            src,
            conv: Uuid::new_v4(),
            after: 4,
        };
        let s = serde_json::to_string(&i).unwrap();
        assert_eq!(serde_json::from_str::<Ingress>(&s).unwrap(), i);
    }
}
