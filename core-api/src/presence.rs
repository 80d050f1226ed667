//! Agent availability and the queue's safety net, swept on a timer.
//!
//! **Grace period.** Every staff `hello` records the agent in the `staff_seen` hash
//! (`tenant:agent` → last time seen connected). Each sweep looks every recorded agent
//! up in the principal registry the edges keep: connected → the time is refreshed;
//! gone for longer than `away_grace` → an `online` agent becomes `away` (and receives no
//! new work), unless they set their status after that moment. A connection that drops
//! and comes back within the grace changes nothing. Several core-api processes may sweep
//! at once: the update is conditional, so it happens once.
//!
//! **Snoozes.** Conversations snoozed until a time are reopened when it comes.
//!
//! **Logged-out sessions.** Rows of `revoked_sessions` whose tokens have all expired
//! are deleted, at most [`SESSIONS_PER_SWEEP`] per sweep, oldest first.
//!
//! **Queue.** Tenants whose conversations were left queued are kept in a Redis set; each
//! sweep drains them (capacity may have appeared without an event, e.g. a core-api
//! crashed between a resolve and its drain) and publishes the queue gauges.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use fred::prelude::*;
use relaydesk_shared::bus::Egress;
use relaydesk_shared::wire::ServerFrame;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::error::Result;
use crate::fanout::{now_ms, Out};
use crate::{db, lifecycle, AppState};

/// Records that these staff connections said hello (they are connected now).
pub async fn seen(state: &AppState, staff: &[(Uuid, Uuid)]) -> Result<()> {
    if staff.is_empty() {
        return Ok(());
    }
    let now = now_ms().to_string();
    let fields: Vec<(String, String)> = staff
        .iter()
        .map(|(t, a)| (format!("{t}:{a}"), now.clone()))
        .collect();
    let () = state.redis.hset(state.keys.staff_seen(), fields).await?;
    Ok(())
}

/// Marks `tenant` as having queued conversations, for the sweep to drain.
pub async fn queued(state: &AppState, tenant: Uuid) {
    let r: std::result::Result<i64, _> = state
        .redis
        .sadd(state.keys.queued_tenants(), tenant.to_string())
        .await;
    if let Err(e) = r {
        tracing::warn!(error = %e, "could not record a queued tenant");
    }
}

/// Tells the agent's own consoles and the tenant's supervisors that its status changed.
pub async fn announce(state: &AppState, tenant: Uuid, agent: Uuid, status: &str) {
    if let Err(e) = try_announce(state, tenant, agent, status).await {
        tracing::warn!(error = %e, "could not announce a status change");
    }
}

async fn try_announce(state: &AppState, tenant: Uuid, agent: Uuid, status: &str) -> Result<()> {
    let mut client = state.pool.get().await?;
    let tx = db::tenant_tx(&mut client, tenant).await?;
    let mut to: Vec<Uuid> = tx
        .query(
            "SELECT id FROM agents WHERE tenant_id = $1 AND role IN ('supervisor', 'admin') AND id <> $2",
            &[&tenant, &agent],
        )
        .await?
        .iter()
        .map(|r| r.get(0))
        .collect();
    tx.commit().await?;
    drop(client);
    to.push(agent);
    let keys: Vec<String> = to
        .iter()
        .map(|p| state.keys.principal_edges(tenant, *p))
        .collect();
    let frame = Bytes::from(
        ServerFrame::Presence {
            agent,
            status: status.to_owned(),
        }
        .to_json(),
    );
    let mut outs = Vec::new();
    for (p, edges) in to.iter().zip(state.fanout.live_edges(&keys).await?) {
        for edge in edges {
            outs.push(Out {
                edge,
                header: Egress::ToPrincipal {
                    tenant,
                    principal: *p,
                    unsub: None,
                },
                frame: frame.clone(),
            });
        }
    }
    state.fanout.publish(&outs).await
}

/// Sweeps until `stop`: availability, then the queue.
pub async fn run(state: Arc<AppState>, stop: CancellationToken) {
    let every =
        (state.config.away_grace / 4).clamp(Duration::from_millis(100), Duration::from_secs(2));
    let mut gauges: HashSet<String> = HashSet::new();
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(every) => {}
        }
        if let Err(e) = sweep_staff(&state).await {
            tracing::warn!(error = %e, "availability sweep failed");
        }
        if let Err(e) = wake_snoozed(&state).await {
            tracing::warn!(error = %e, "snooze sweep failed");
        }
        if let Err(e) = sweep_queues(&state, &mut gauges).await {
            tracing::warn!(error = %e, "queue sweep failed");
        }
        if let Err(e) = sweep_sessions(&state).await {
            tracing::warn!(error = %e, "logged-out session sweep failed");
        }
    }
}

/// Most expired logged-out sessions deleted per sweep.
pub const SESSIONS_PER_SWEEP: i32 = 1000;

/// Deletes logged-out sessions whose tokens have all expired (every tenant's: the
/// function runs as the owning role, migration V6).
async fn sweep_sessions(state: &AppState) -> Result<()> {
    let client = state.pool.get().await?;
    let stmt = client
        .prepare_cached("SELECT relaydesk_sweep_revoked_sessions($1)")
        .await?;
    let deleted: i32 = client
        .query_one(&stmt, &[&SESSIONS_PER_SWEEP])
        .await?
        .get(0);
    if deleted > 0 {
        tracing::debug!(deleted, "expired logged-out sessions deleted");
    }
    Ok(())
}

async fn sweep_staff(state: &AppState) -> Result<()> {
    let seen: HashMap<String, u64> = state.redis.hgetall(state.keys.staff_seen()).await?;
    if seen.is_empty() {
        return Ok(());
    }
    let entries: Vec<(String, Uuid, Uuid, u64)> = seen
        .into_iter()
        .filter_map(|(field, at)| {
            let (t, a) = field.split_once(':')?;
            Some((
                field.clone(),
                Uuid::try_parse(t).ok()?,
                Uuid::try_parse(a).ok()?,
                at,
            ))
        })
        .collect();
    let keys: Vec<String> = entries
        .iter()
        .map(|(_, t, a, _)| state.keys.principal_edges(*t, *a))
        .collect();
    let live = state.fanout.live_edges(&keys).await?;
    let now = now_ms();
    let grace = state.config.away_grace.as_millis() as u64;
    let mut refresh = Vec::new();
    for ((field, tenant, agent, at), edges) in entries.into_iter().zip(live) {
        if !edges.is_empty() {
            refresh.push((field, now.to_string()));
            continue;
        }
        if now.saturating_sub(at) < grace {
            continue;
        }
        let mut client = state.pool.get().await?;
        let tx = db::tenant_tx(&mut client, tenant).await?;
        let changed = tx
            .execute(
                "UPDATE agents SET status = 'away', status_changed_at = now()
                  WHERE tenant_id = $1 AND id = $2 AND status = 'online'
                    AND status_changed_at <= to_timestamp($3::float8 / 1000)",
                &[&tenant, &agent, &(at as f64)],
            )
            .await?;
        tx.commit().await?;
        drop(client);
        let _: i64 = state.redis.hdel(state.keys.staff_seen(), &field).await?;
        if changed == 1 {
            metrics::counter!("relaydesk_core_agents_away_total").increment(1);
            tracing::info!(%tenant, %agent, "agent away: no console connection within the grace period");
            announce(state, tenant, agent, "away").await;
        }
    }
    if !refresh.is_empty() {
        let () = state.redis.hset(state.keys.staff_seen(), refresh).await?;
    }
    Ok(())
}

async fn sweep_queues(state: &AppState, gauges: &mut HashSet<String>) -> Result<()> {
    let tenants: Vec<String> = state.redis.smembers(state.keys.queued_tenants()).await?;
    let mut depth: HashMap<String, (f64, f64)> = HashMap::new();
    for t in tenants {
        let Ok(tenant) = Uuid::try_parse(&t) else {
            let _: i64 = state.redis.srem(state.keys.queued_tenants(), &t).await?;
            continue;
        };
        lifecycle::drain(state, tenant).await?;
        let mut client = state.pool.get().await?;
        let tx = db::tenant_tx(&mut client, tenant).await?;
        let rows = tx
            .query(
                "SELECT support_type, count(*)::float8,
                        extract(epoch FROM now() - min(queued_at))::float8
                   FROM conversations WHERE tenant_id = $1 AND status = 'queued'
                  GROUP BY support_type",
                &[&tenant],
            )
            .await?;
        tx.commit().await?;
        drop(client);
        if rows.is_empty() {
            // Forget the tenant, then look again: a conversation queued in between
            // puts it back.
            let _: i64 = state.redis.srem(state.keys.queued_tenants(), &t).await?;
            if has_queue(state, tenant).await? {
                queued(state, tenant).await;
            }
        }
        for r in rows {
            let e = depth.entry(r.get(0)).or_insert((0.0, 0.0));
            e.0 += r.get::<_, f64>(1);
            e.1 = e.1.max(r.get::<_, Option<f64>>(2).unwrap_or(0.0));
        }
    }
    for key in gauges.iter() {
        if !depth.contains_key(key) {
            metrics::gauge!("relaydesk_core_queue_depth", "support_type" => key.clone()).set(0.0);
            metrics::gauge!("relaydesk_core_queue_oldest_wait_seconds", "support_type" => key.clone())
                .set(0.0);
        }
    }
    gauges.clear();
    for (key, (n, oldest)) in depth {
        metrics::gauge!("relaydesk_core_queue_depth", "support_type" => key.clone()).set(n);
        metrics::gauge!("relaydesk_core_queue_oldest_wait_seconds", "support_type" => key.clone())
            .set(oldest);
        gauges.insert(key);
    }
    Ok(())
}

/// Schedules a snoozed conversation to be woken at `at_ms` (Unix ms) by the sweep.
pub async fn wake_at(state: &AppState, tenant: Uuid, conv: Uuid, at_ms: u64) -> Result<()> {
    let () = state
        .redis
        .zadd(
            state.keys.snoozes(),
            None,
            None,
            false,
            false,
            (at_ms as f64, format!("{tenant}:{conv}")),
        )
        .await?;
    Ok(())
}

/// Reopens snoozed conversations whose time has come. ZREM decides which process does
/// it; a conversation woken meanwhile (the visitor wrote) is left as it is.
async fn wake_snoozed(state: &AppState) -> Result<()> {
    let due: Vec<String> = state
        .redis
        .zrangebyscore(
            state.keys.snoozes(),
            "-inf",
            now_ms() as f64,
            false,
            Some((0, 100)),
        )
        .await?;
    for member in due {
        let mine: i64 = state.redis.zrem(state.keys.snoozes(), &member).await?;
        if mine == 0 {
            continue;
        }
        let Some((tenant, conv)) = member
            .split_once(':')
            .and_then(|(t, c)| Some((Uuid::try_parse(t).ok()?, Uuid::try_parse(c).ok()?)))
        else {
            continue;
        };
        match lifecycle::wake_due(state, tenant, conv).await {
            Ok(()) | Err(crate::Error::Client { .. }) => {}
            Err(e) => {
                // Put it back for the next sweep.
                wake_at(state, tenant, conv, now_ms()).await?;
                return Err(e);
            }
        }
    }
    Ok(())
}

async fn has_queue(state: &AppState, tenant: Uuid) -> Result<bool> {
    let mut client = state.pool.get().await?;
    let tx = db::tenant_tx(&mut client, tenant).await?;
    let found = tx
        .query_opt(
            "SELECT 1 FROM conversations WHERE tenant_id = $1 AND status = 'queued' LIMIT 1",
            &[&tenant],
        )
        .await?
        .is_some();
    tx.commit().await?;
    Ok(found)
}
