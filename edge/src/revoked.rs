//! Revoked agent credentials, as far as this edge knows them, and the connections they
//! may concern.
//!
//! core-api records each revocation (`relaydesk_shared::bus::Revoked`: every token of an
//! agent below a credential version, or every token of one session) in the Redis sorted
//! set `Keys::revocations` and pushes it as an `Egress::Revoke` entry to the edges that
//! hold a connection of the agent. This edge merges both sources into [`Revocations`]:
//! the push (through `egress.rs`) at once, the set at start and every [`RELOAD`] (this
//! task), so a lost push, or a `hello` that registered after core-api looked up the
//! agent's edges, is caught within [`RELOAD`] plus one Redis round trip. Every entry
//! carries the time after which no token it matches is still valid, and is forgotten
//! then, so the state stays bounded by the revocations of one token lifetime.
//!
//! A `hello` whose token a known entry matches is refused (4501); an entry that arrives
//! closes the open connections it matches with 4501. Admission and closing happen
//! under one lock, that of the agent's shard (the state is sharded by principal), so a
//! connection is either refused or seen by the entry, and a connection closing waits
//! only for its own shard: a visitor's takes no lock at all.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use fred::prelude::{Client, SortedSetsInterface};
use relaydesk_shared::bus::Revoked;
use relaydesk_shared::token::Claims;
use relaydesk_shared::CloseCode;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::writer::Outbound;
use crate::Ctx;

/// How often the edge re-reads the revocation set.
pub const RELOAD: Duration = Duration::from_secs(2);

/// The credential identity of one authenticated connection.
struct Cred {
    ver: u32,
    sid: Option<Uuid>,
    out: Outbound,
}

/// (tenant, principal).
pub type Principal = (Uuid, Uuid);

/// Shards of the state, each behind its own lock: a principal's entries and connections
/// all live in one, so admitting, closing and revoking one agent's connections contend
/// only with the agents that share its shard.
const SHARDS: usize = 16;

#[derive(Default)]
struct Shard {
    /// Principal → (lowest valid version, until when, Unix ms).
    versions: HashMap<Principal, (u32, u64)>,
    /// Logged-out session → until when (Unix ms).
    sessions: HashMap<Uuid, u64>,
    /// Authenticated connections by principal: a revocation looks at its principal's only.
    conns: HashMap<Principal, HashMap<u64, Cred>>,
}

impl Shard {
    fn matches(&self, who: Principal, ver: u32, sid: Option<Uuid>) -> bool {
        self.versions.get(&who).is_some_and(|(min, _)| ver < *min)
            || sid.is_some_and(|s| self.sessions.contains_key(&s))
    }
}

/// What this edge knows of revoked credentials.
pub struct Revocations {
    shards: [Mutex<Shard>; SHARDS],
}

impl Default for Revocations {
    fn default() -> Self {
        Revocations {
            shards: std::array::from_fn(|_| Mutex::default()),
        }
    }
}

impl Revocations {
    fn shard(&self, who: Principal) -> &Mutex<Shard> {
        &self.shards[(who.1.as_u128() % SHARDS as u128) as usize]
    }

    /// Records an authenticated connection unless its token is revoked (then `false`).
    /// Only agents' credentials are revocable: visitors' connections, most of an edge's,
    /// are admitted without being recorded, so they cost nothing here (and need no
    /// [`Revocations::forget`]).
    pub fn admit(&self, conn: u64, claims: &Claims, out: &Outbound) -> bool {
        if claims.role == relaydesk_shared::token::Role::Visitor {
            return true;
        }
        let who = (claims.tid, claims.sub);
        let mut s = crate::lock(self.shard(who));
        if s.matches(who, claims.version(), claims.sid) {
            return false;
        }
        s.conns.entry(who).or_default().insert(
            conn,
            Cred {
                ver: claims.version(),
                sid: claims.sid,
                out: out.clone(),
            },
        );
        true
    }

    /// Forgets a closed connection of `who` that [`Revocations::admit`] recorded (an
    /// agent's); takes only the lock of `who`'s shard.
    pub fn forget(&self, conn: u64, who: Principal) {
        let mut s = crate::lock(self.shard(who));
        if let Some(of) = s.conns.get_mut(&who) {
            of.remove(&conn);
            if of.is_empty() {
                s.conns.remove(&who);
            }
        }
    }

    /// Records a revocation valid until `until_ms` (Unix ms) and closes the connections
    /// it matches with 4501; returns how many. An entry already known (every re-read of
    /// the set repeats them) only extends its time and looks at no connection.
    pub fn apply(&self, revoked: &Revoked, until_ms: u64) -> usize {
        if until_ms <= crate::registry::now_ms() {
            return 0;
        }
        let who = revoked.principal();
        let mut s = crate::lock(self.shard(who));
        let new = match *revoked {
            Revoked::Version { min, .. } => {
                let e = s.versions.entry(who).or_insert((0, until_ms));
                // A later entry's tokens outlive an earlier one's.
                e.1 = e.1.max(until_ms);
                let raised = min > e.0;
                e.0 = e.0.max(min);
                raised
            }
            Revoked::Session { sid, .. } => match s.sessions.get_mut(&sid) {
                Some(e) => {
                    *e = (*e).max(until_ms);
                    false
                }
                None => {
                    s.sessions.insert(sid, until_ms);
                    true
                }
            },
        };
        if !new {
            return 0;
        }
        let mut closed = 0;
        if let Some(of) = s.conns.get(&who) {
            for (conn, c) in of {
                if s.matches(who, c.ver, c.sid) {
                    tracing::debug!(conn, tenant = %who.0, principal = %who.1, "credentials revoked: closing");
                    c.out.close(CloseCode::Unauthorized);
                    closed += 1;
                }
            }
        }
        if closed > 0 {
            metrics::counter!("relaydesk_edge_revoked_closes_total").increment(closed as u64);
        }
        closed
    }

    /// Forgets entries past their time.
    pub fn sweep(&self, now_ms: u64) {
        for shard in &self.shards {
            let mut s = crate::lock(shard);
            s.versions.retain(|_, (_, until)| *until > now_ms);
            s.sessions.retain(|_, until| *until > now_ms);
        }
    }

    /// (version entries, session entries) held.
    pub fn counts(&self) -> (usize, usize) {
        self.shards.iter().fold((0, 0), |(v, n), shard| {
            let s = crate::lock(shard);
            (v + s.versions.len(), n + s.sessions.len())
        })
    }
}

/// Loads the revocation set at start and every [`RELOAD`] until `stop`.
pub(crate) async fn run_loader(ctx: Arc<Ctx>, stop: CancellationToken) {
    loop {
        if let Err(e) = load(&ctx).await {
            tracing::warn!(error = %e, "could not read the revocation set");
        }
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(RELOAD) => {}
        }
    }
}

async fn load(ctx: &Ctx) -> Result<(), fred::error::Error> {
    let now = crate::registry::now_ms();
    ctx.revoked.sweep(now);
    let entries: Vec<(String, f64)> = read(&ctx.redis, &ctx.keys.revocations(), now).await?;
    for (member, until) in entries {
        match serde_json::from_str::<Revoked>(&member) {
            Ok(r) => {
                ctx.revoked.apply(&r, until as u64);
            }
            Err(e) => tracing::debug!(error = %e, "unknown revocation entry"),
        }
    }
    Ok(())
}

async fn read(
    redis: &Client,
    key: &str,
    now_ms: u64,
) -> Result<Vec<(String, f64)>, fred::error::Error> {
    redis
        .zrangebyscore(key, now_ms as f64, "+inf", true, None)
        .await
}

#[cfg(test)]
mod tests {
    use super::*;
    use relaydesk_shared::token::{Role, AUD_EDGE};

    fn claims(t: Uuid, p: Uuid, ver: Option<u32>, sid: Option<Uuid>) -> Claims {
        let mut c = Claims::new(t, p, Role::Agent, AUD_EDGE, 60);
        c.ver = ver;
        c.sid = sid;
        c
    }

    #[test]
    fn versions_and_sessions_close_and_refuse() {
        let r = Revocations::default();
        let (t, p) = (Uuid::new_v4(), Uuid::new_v4());
        let (s1, s2) = (Uuid::new_v4(), Uuid::new_v4());
        let later = crate::registry::now_ms() + 60_000;
        let a = Outbound::new(1024);
        let b = Outbound::new(1024);
        assert!(r.admit(1, &claims(t, p, Some(1), Some(s1)), &a));
        assert!(r.admit(2, &claims(t, p, Some(1), Some(s2)), &b));
        let session = Revoked::Session {
            tenant: t,
            principal: p,
            sid: s1,
        };
        assert_eq!(r.apply(&session, later), 1);
        assert_eq!(a.close_code(), Some(4501));
        assert!(!b.is_closing());
        assert!(!r.admit(3, &claims(t, p, Some(1), Some(s1)), &Outbound::new(1024)));
        let version = Revoked::Version {
            tenant: t,
            principal: p,
            min: 2,
        };
        r.forget(1, (t, p));
        assert_eq!(r.apply(&version, later), 1);
        assert_eq!(b.close_code(), Some(4501));
        // A token without a version counts as version 0.
        assert!(!r.admit(4, &claims(t, p, None, None), &Outbound::new(1024)));
        assert!(r.admit(5, &claims(t, p, Some(2), None), &Outbound::new(1024)));
        // Another principal is untouched.
        assert!(r.admit(
            6,
            &claims(t, Uuid::new_v4(), None, None),
            &Outbound::new(1024)
        ));
        // Expired entries are neither recorded nor kept.
        assert_eq!(r.apply(&version, 1), 0);
        // Repeating a known entry (the periodic re-read) closes nothing new.
        let c = Outbound::new(1024);
        assert!(r.admit(8, &claims(t, p, Some(2), Some(s2)), &c));
        assert_eq!(r.apply(&version, later + 5), 0);
        assert!(!c.is_closing());
        r.sweep(later + 1);
        assert_eq!(r.counts(), (1, 0));
        r.sweep(later + 6);
        assert_eq!(r.counts(), (0, 0));
        assert!(r.admit(7, &claims(t, p, Some(1), Some(s1)), &Outbound::new(1024)));
    }

    #[test]
    fn closing_waits_only_for_its_own_shard() {
        let r = std::sync::Arc::new(Revocations::default());
        let t = Uuid::new_v4();
        let p = Uuid::new_v4();
        // Another agent in another shard.
        let q = loop {
            let q = Uuid::new_v4();
            if !std::ptr::eq(r.shard((t, q)), r.shard((t, p))) {
                break q;
            }
        };
        let out = Outbound::new(1024);
        assert!(r.admit(1, &claims(t, q, Some(0), None), &out));
        // While p's shard is held (a revocation being applied there), q's connection
        // closes.
        let held = crate::lock(r.shard((t, p)));
        let (done_tx, done_rx) = std::sync::mpsc::channel();
        let closer = r.clone();
        std::thread::spawn(move || {
            closer.forget(1, (t, q));
            let _ = done_tx.send(());
        });
        assert!(
            done_rx.recv_timeout(Duration::from_secs(10)).is_ok(),
            "forget waited for another shard's lock"
        );
        drop(held);
        assert!(crate::lock(r.shard((t, q))).conns.is_empty());
    }
}
