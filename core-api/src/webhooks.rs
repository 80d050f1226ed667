//! Webhook delivery: the sending half of the transactional outbox that `events` fills.
//!
//! Guarantee: every event row written to `webhook_deliveries` is POSTed to its webhook's
//! URL at least once, until a 2xx answer or `webhook_max_attempts` attempts. Receivers
//! dedupe on `Relaydesk-Event-Id`: a retry carries the same id and the same body bytes.
//!
//! How: [`run`] polls `relaydesk_due_webhook_tenants` (the only cross-tenant read, a
//! SECURITY DEFINER function that returns tenant ids only), then per tenant, in a
//! tenant-scoped transaction, claims due rows (`FOR UPDATE … SKIP LOCKED`), counts the
//! attempt and pushes `next_attempt_at` out by [`CLAIM_LEASE`], and commits. The claim is
//! the lease: another core-api process skips the rows until it ends. Each claimed row is
//! then sent by its own task (at most [`CONCURRENCY`] at once, and never more claimed
//! than there are free slots, so a claimed row is sent well within its lease) and its
//! outcome recorded: delivered, retried after [`backoff`] with jitter, or failed.
//!
//! A crash between claim and record loses nothing: the lease ends and any core-api sends
//! the row again (it counts as an attempt). Each request is signed:
//! `Relaydesk-Signature: t=<unix seconds>,v1=<`[`sign`]`>`.
//!
//! Targets must be public addresses unless `WEBHOOK_ALLOW_PRIVATE` (`webhook_target`):
//! a literal address is checked before each attempt, a name by the client's resolver,
//! whose checked addresses the client connects to; a refused target counts as a failed
//! attempt. Redirects are not followed.
//!
//! Metrics: `relaydesk_core_webhook_deliveries_total{outcome="delivered|retry|failed"}`
//! per attempt, and `relaydesk_core_webhook_latency_seconds`, the time each POST took
//! (answered or not).

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use hmac::{Mac, SimpleHmac};
use rand::Rng;
use reqwest::header::CONTENT_TYPE;
use sha2::Sha256;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::error::{Error, Result};
use crate::AppState;
use crate::{db, webhook_target};

/// How long a claimed delivery is hidden from other senders.
pub const CLAIM_LEASE: Duration = Duration::from_secs(60);
/// Deliveries in flight per core-api process.
pub const CONCURRENCY: usize = 16;
/// Time allowed for one POST, connection to response body.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// The longest pause between two attempts (before jitter).
pub const MAX_BACKOFF: Duration = Duration::from_secs(3600);

/// Pause between polls when the last one found nothing more to do.
const POLL_INTERVAL: Duration = Duration::from_millis(250);
/// Pause after a failed poll (the database is unreachable, say).
const ERROR_PAUSE: Duration = Duration::from_secs(1);
/// Tenants looked at per poll.
const TENANTS_PER_POLL: i32 = 16;
/// Most deliveries claimed from one tenant at once.
const CLAIM_LIMIT: usize = 64;
/// Time allowed for deliveries in flight to finish when stopping; the rest are retried
/// by whichever process finds them after their lease.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);
/// Most characters of an error (or of a refusing response's body) kept in `last_error`.
const ERROR_CHARS: usize = 300;

/// The hex HMAC-SHA256, keyed with the webhook's `secret`, of `"<t>.<body>"`: the `v1`
/// part of the `Relaydesk-Signature` header. A receiver recomputes it over the raw body
/// it received and the header's `t`, and rejects old `t`s to stop replays.
pub fn sign(secret: &str, t: u64, body: &[u8]) -> String {
    // HMAC accepts keys of any length: this cannot fail.
    let Ok(mut mac) = SimpleHmac::<Sha256>::new_from_slice(secret.as_bytes()) else {
        return String::new();
    };
    mac.update(t.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    hex::encode(mac.finalize().into_bytes())
}

/// The `Relaydesk-Signature` header value for `body` signed at `t` (unix seconds).
pub fn signature_header(secret: &str, t: u64, body: &[u8]) -> String {
    format!("t={t},v1={}", sign(secret, t, body))
}

/// The pause after failed attempt number `attempt` (1-based), before jitter:
/// `base * 2^(attempt-1)`, at most [`MAX_BACKOFF`].
pub fn backoff(base: Duration, attempt: u32) -> Duration {
    let doublings = attempt.saturating_sub(1).min(31);
    base.saturating_mul(1u32 << doublings).min(MAX_BACKOFF)
}

/// [`backoff`] spread by ±20 %, so that the retries of an outage do not arrive together.
fn jittered(pause: Duration) -> Duration {
    pause.mul_f64(rand::thread_rng().gen_range(0.8..=1.2))
}

/// Sends due webhook deliveries until `stop` is cancelled, then gives the requests in
/// flight [`SHUTDOWN_GRACE`] to finish.
pub async fn run(state: Arc<AppState>, stop: CancellationToken) {
    let http = match http_client(state.config.webhook_allow_private) {
        Ok(http) => http,
        Err(e) => {
            tracing::error!(error = %e, "cannot build the webhook HTTP client; webhooks are not sent");
            return;
        }
    };
    let slots = Arc::new(Semaphore::new(CONCURRENCY));
    let mut in_flight = JoinSet::new();
    loop {
        while in_flight.try_join_next().is_some() {}
        let pause = match poll(&state, &http, &slots, &mut in_flight).await {
            // More is due: go again as soon as a slot is free.
            Ok(true) => None,
            Ok(false) => Some(POLL_INTERVAL),
            Err(e) => {
                tracing::warn!(error = %e, "webhook poll failed");
                Some(ERROR_PAUSE)
            }
        };
        tokio::select! {
            _ = stop.cancelled() => break,
            _ = async {
                match pause {
                    Some(p) => tokio::time::sleep(p).await,
                    None => drop(slots.acquire().await),
                }
            } => {}
        }
    }
    let drained = async { while in_flight.join_next().await.is_some() {} };
    if tokio::time::timeout(SHUTDOWN_GRACE, drained).await.is_err() {
        in_flight.abort_all();
    }
}

/// The HTTP client of deliveries: bounded in time, never following a redirect (it is an
/// answer, a refusal, and could lead anywhere), and, unless `allow_private`, resolving
/// names through `webhook_target::PublicResolver`. Literal addresses bypass any resolver:
/// [`refused_target`] checks those before each attempt.
pub fn http_client(allow_private: bool) -> reqwest::Result<reqwest::Client> {
    let mut builder = reqwest::Client::builder()
        .timeout(REQUEST_TIMEOUT)
        .connect_timeout(REQUEST_TIMEOUT / 2)
        .redirect(reqwest::redirect::Policy::none())
        .user_agent("Relaydesk-Webhooks/1");
    if !allow_private {
        builder = builder.dns_resolver(Arc::new(webhook_target::PublicResolver));
    }
    builder.build()
}

/// One claimed delivery.
struct Due {
    tenant: Uuid,
    webhook: Uuid,
    event_id: Uuid,
    event: String,
    /// The payload's JSON text: signed and sent byte for byte, the same on every attempt.
    payload: String,
    /// This attempt's number (1 for the first).
    attempt: u32,
    url: String,
    secret: String,
}

/// Claims what is due for up to [`TENANTS_PER_POLL`] tenants, sharing the free slots
/// among them, and starts sending it. True when more may be due right away.
async fn poll(
    state: &Arc<AppState>,
    http: &reqwest::Client,
    slots: &Arc<Semaphore>,
    in_flight: &mut JoinSet<()>,
) -> Result<bool> {
    let mut client = state.pool.get().await?;
    let tenants: Vec<Uuid> = client
        .query(
            "SELECT tenant_id FROM relaydesk_due_webhook_tenants($1)",
            &[&TENANTS_PER_POLL],
        )
        .await?
        .iter()
        .map(|r| r.try_get(0))
        .collect::<Result<_, _>>()?;
    let mut more = tenants.len() >= TENANTS_PER_POLL as usize;
    for (i, tenant) in tenants.iter().enumerate() {
        let free = slots.available_permits();
        if free == 0 {
            return Ok(true);
        }
        let share = free.div_ceil(tenants.len() - i).min(CLAIM_LIMIT);
        let claimed = claim(&mut client, *tenant, share).await?;
        more |= claimed.len() >= share;
        for due in claimed {
            // Only this loop takes slots and it claimed no more than were free: no wait.
            let slot = slots
                .clone()
                .acquire_owned()
                .await
                .map_err(|_| Error::Internal("the webhook slots are closed".into()))?;
            in_flight.spawn(deliver(state.clone(), http.clone(), due, slot));
        }
    }
    Ok(more)
}

/// Claims up to `limit` due deliveries of `tenant`: counts the attempt and leases them.
async fn claim(
    client: &mut deadpool_postgres::Client,
    tenant: Uuid,
    limit: usize,
) -> Result<Vec<Due>> {
    let tx = db::tenant_tx(client, tenant).await?;
    let rows = tx
        .query(
            "WITH due AS (
                 SELECT d.webhook_id, d.event_id, w.url, w.secret
                   FROM webhook_deliveries d
                   JOIN webhooks w ON w.tenant_id = d.tenant_id AND w.id = d.webhook_id
                  WHERE d.tenant_id = $1 AND d.delivered_at IS NULL AND NOT d.failed
                    AND d.next_attempt_at <= now()
                  ORDER BY d.next_attempt_at
                  LIMIT $2
                    FOR UPDATE OF d SKIP LOCKED)
             UPDATE webhook_deliveries d
                SET attempts = d.attempts + 1,
                    next_attempt_at = now() + make_interval(secs => $3)
               FROM due
              WHERE d.tenant_id = $1 AND d.webhook_id = due.webhook_id
                AND d.event_id = due.event_id
          RETURNING d.webhook_id, d.event_id, d.event, d.payload::text, d.attempts,
                    due.url, due.secret",
            &[&tenant, &(limit as i64), &CLAIM_LEASE.as_secs_f64()],
        )
        .await?;
    tx.commit().await?;
    let due = |r: &tokio_postgres::Row| -> Result<Due, tokio_postgres::Error> {
        Ok(Due {
            tenant,
            webhook: r.try_get(0)?,
            event_id: r.try_get(1)?,
            event: r.try_get(2)?,
            payload: r.try_get(3)?,
            attempt: u32::try_from(r.try_get::<_, i32>(4)?).unwrap_or(1),
            url: r.try_get(5)?,
            secret: r.try_get(6)?,
        })
    };
    Ok(rows.iter().map(due).collect::<Result<_, _>>()?)
}

/// What one attempt came to.
#[derive(Debug, PartialEq)]
enum Verdict {
    Delivered,
    /// Try again after this long.
    Retry(Duration),
    /// Out of attempts.
    Failed,
}

impl Verdict {
    fn of(ok: bool, attempt: u32, max_attempts: u32, retry_base: Duration) -> Verdict {
        if ok {
            Verdict::Delivered
        } else if attempt >= max_attempts {
            Verdict::Failed
        } else {
            Verdict::Retry(jittered(backoff(retry_base, attempt)))
        }
    }

    fn label(&self) -> &'static str {
        match self {
            Verdict::Delivered => "delivered",
            Verdict::Retry(_) => "retry",
            Verdict::Failed => "failed",
        }
    }
}

/// The answer to one POST: the status if there was a response, an error text if it was
/// not a 2xx.
struct Sent {
    status: Option<u16>,
    error: Option<String>,
}

/// Sends one claimed delivery and records the outcome; holds its slot until done.
async fn deliver(
    state: Arc<AppState>,
    http: reqwest::Client,
    due: Due,
    _slot: OwnedSemaphorePermit,
) {
    let started = Instant::now();
    let refused = refused_target(state.config.webhook_allow_private, &due.url);
    let sent = match refused {
        Some(error) => Sent {
            status: None,
            error: Some(error),
        },
        None => post(&http, &due).await,
    };
    metrics::histogram!("relaydesk_core_webhook_latency_seconds")
        .record(started.elapsed().as_secs_f64());
    let ok = sent.status.is_some_and(|s| (200..300).contains(&s));
    let config = &state.config;
    let verdict = Verdict::of(
        ok,
        due.attempt,
        config.webhook_max_attempts,
        config.webhook_retry_base,
    );
    metrics::counter!("relaydesk_core_webhook_deliveries_total", "outcome" => verdict.label())
        .increment(1);
    match &verdict {
        Verdict::Failed => tracing::info!(
            tenant = %due.tenant, webhook = %due.webhook, event_id = %due.event_id,
            attempts = due.attempt, status = ?sent.status, error = ?sent.error,
            "webhook delivery failed for good"
        ),
        Verdict::Retry(after) => tracing::debug!(
            tenant = %due.tenant, webhook = %due.webhook, event_id = %due.event_id,
            attempt = due.attempt, status = ?sent.status, error = ?sent.error, ?after,
            "webhook delivery refused; will retry"
        ),
        Verdict::Delivered => {}
    }
    if let Err(e) = record(&state, &due, &sent, &verdict).await {
        // The lease ends and the delivery is sent again: at least once.
        tracing::warn!(error = %e, event_id = %due.event_id, "cannot record a webhook attempt");
    }
}

/// Why a delivery to `url` is not attempted, when its host is a refused literal address
/// (names are checked by [`http_client`]'s resolver).
pub fn refused_target(allow_private: bool, url: &str) -> Option<String> {
    if allow_private {
        return None;
    }
    let error = match reqwest::Url::parse(url) {
        Ok(url) => webhook_target::check_literal(&url).err()?.to_string(),
        Err(e) => format!("url is invalid: {e}"),
    };
    Some(truncate(error))
}

/// POSTs the payload, signed now.
async fn post(http: &reqwest::Client, due: &Due) -> Sent {
    let t = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let signature = signature_header(&due.secret, t, due.payload.as_bytes());
    let response = http
        .post(&due.url)
        .header(CONTENT_TYPE, "application/json")
        .header("Relaydesk-Event", &due.event)
        .header("Relaydesk-Event-Id", due.event_id.to_string())
        .header("Relaydesk-Signature", signature)
        .body(due.payload.clone())
        .send()
        .await;
    let mut response = match response {
        Ok(r) => r,
        Err(e) => {
            return Sent {
                status: None,
                error: Some(describe(e)),
            }
        }
    };
    let status = response.status();
    if status.is_success() {
        return Sent {
            status: Some(status.as_u16()),
            error: None,
        };
    }
    // Keep the start of the refusal's body: it usually says why.
    let mut head = Vec::new();
    while head.len() < ERROR_CHARS {
        match response.chunk().await {
            Ok(Some(chunk)) => head.extend_from_slice(&chunk),
            Ok(None) | Err(_) => break,
        }
    }
    let body = String::from_utf8_lossy(&head);
    let error = match body.trim() {
        "" => format!("HTTP {status}"),
        b => format!("HTTP {status}: {b}"),
    };
    Sent {
        status: Some(status.as_u16()),
        error: Some(truncate(error)),
    }
}

/// A request error with its causes, without the URL (which may carry credentials).
fn describe(e: reqwest::Error) -> String {
    if e.is_timeout() {
        return format!("timed out after {} s", REQUEST_TIMEOUT.as_secs());
    }
    let e = e.without_url();
    let mut text = e.to_string();
    let mut source = std::error::Error::source(&e);
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    truncate(text)
}

fn truncate(mut s: String) -> String {
    if let Some((i, _)) = s.char_indices().nth(ERROR_CHARS) {
        s.truncate(i);
        s.push('…');
    }
    s
}

/// Writes an attempt's outcome, unless another sender claimed the row since (its lease
/// ran out); a delivery is marked delivered whoever claimed it last.
async fn record(state: &AppState, due: &Due, sent: &Sent, verdict: &Verdict) -> Result<()> {
    let retry_after = match verdict {
        Verdict::Retry(after) => Some(after.as_secs_f64()),
        Verdict::Delivered | Verdict::Failed => None,
    };
    let delivered = *verdict == Verdict::Delivered;
    let failed = *verdict == Verdict::Failed;
    let status = sent.status.map(i32::from);
    let attempt = i32::try_from(due.attempt).unwrap_or(i32::MAX);
    let mut client = state.pool.get().await?;
    let tx = db::tenant_tx(&mut client, due.tenant).await?;
    tx.execute(
        "UPDATE webhook_deliveries
            SET delivered_at = CASE WHEN $4 THEN now() END,
                failed = $5,
                last_status = $6,
                last_error = $7,
                next_attempt_at = CASE WHEN $8::float8 IS NULL THEN next_attempt_at
                                       ELSE now() + make_interval(secs => $8::float8) END
          WHERE tenant_id = $1 AND webhook_id = $2 AND event_id = $3
            AND delivered_at IS NULL AND ($4 OR attempts = $9)",
        &[
            &due.tenant,
            &due.webhook,
            &due.event_id,
            &delivered,
            &failed,
            &status,
            &sent.error,
            &retry_after,
            &attempt,
        ],
    )
    .await?;
    tx.commit().await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signs_t_dot_body_with_the_secret() {
        // python3: hmac.new(b"whsec_test", b'1700000000.{"id":1}', sha256).hexdigest()
        assert_eq!(
            sign("whsec_test", 1_700_000_000, br#"{"id":1}"#),
            "2f441ba4b3b2d50d28a9ab9d9fd8880376ecd1eb5d0435401553f5d8d0a5dcf8"
        );
        assert_eq!(
            signature_header("whsec_test", 1_700_000_000, br#"{"id":1}"#),
            "t=1700000000,v1=2f441ba4b3b2d50d28a9ab9d9fd8880376ecd1eb5d0435401553f5d8d0a5dcf8"
        );
        assert_ne!(
            sign("whsec_test", 1_700_000_001, br#"{"id":1}"#),
            sign("whsec_test", 1_700_000_000, br#"{"id":1}"#)
        );
    }

    #[test]
    fn backoff_doubles_up_to_an_hour() {
        let base = Duration::from_secs(5);
        assert_eq!(backoff(base, 1), Duration::from_secs(5));
        assert_eq!(backoff(base, 2), Duration::from_secs(10));
        assert_eq!(backoff(base, 4), Duration::from_secs(40));
        assert_eq!(backoff(base, 11), MAX_BACKOFF);
        assert_eq!(backoff(base, u32::MAX), MAX_BACKOFF);
        for _ in 0..100 {
            let j = jittered(Duration::from_secs(100));
            assert!(j >= Duration::from_secs(80) && j <= Duration::from_secs(120));
        }
    }

    #[test]
    fn the_last_attempt_fails_for_good() {
        let base = Duration::from_millis(200);
        assert_eq!(Verdict::of(true, 12, 12, base), Verdict::Delivered);
        assert_eq!(Verdict::of(false, 12, 12, base), Verdict::Failed);
        assert!(matches!(Verdict::of(false, 1, 12, base), Verdict::Retry(d)
            if d >= Duration::from_millis(160) && d <= Duration::from_millis(240)));
    }
}
