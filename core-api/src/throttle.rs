//! Login throttling: failed logins counted per account (tenant and email) and per source
//! address, in Redis, so that every core-api process sees the same counts and they
//! survive restarts.
//!
//! A subject (an account or an address) that reaches its failure limit within the window
//! (`LOGIN_ACCOUNT_FAILURES`, `LOGIN_ADDRESS_FAILURES`, `LOGIN_FAILURE_WINDOW_SECS`) is
//! locked out for `LOGIN_LOCKOUT_BASE_MS`, doubled by every further failure up to
//! `LOGIN_LOCKOUT_MAX_SECS`. While a subject is locked out, logins are answered 429
//! `rate_limited` with `Retry-After` before any password is checked. A successful login
//! clears its account's count (not its address's: one good password must not reopen an
//! address that guesses at many accounts). Unknown accounts count like known ones, so
//! throttling reveals nothing about which exist.
//!
//! The source address is the TCP peer's, unless the peer is a trusted proxy
//! (`TRUSTED_PROXIES`): then it is the right-most address of `X-Forwarded-For` that is
//! not a trusted proxy ([`client_address`]). Each proxy appends the address it received
//! the request from, so what lies left of the last untrusted entry may be forged.
//!
//! Keys (expiring): `<prefix>:login:{<tenant>:<email hash>}:n|lock` for an account (the
//! email is hashed, not stored) and `<prefix>:login:{addr:<ip>}:n|lock` for an address.
//! Metric: `relaydesk_core_login_throttled_total{scope="account|address"}`, logins
//! refused by a lockout.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use fred::prelude::*;
use ipnet::IpNet;
use sha2::{Digest, Sha256};
use uuid::Uuid;

use crate::error::{Error, Result};
use crate::AppState;

/// The address a request is throttled under: `peer`, unless it is one of the `trusted`
/// proxies; then the right-most `X-Forwarded-For` entry (over every such header, in
/// order) that is not a trusted proxy. If every entry is trusted, the left-most; if one
/// cannot be read (only the client can have written it, left of every trusted hop), the
/// trusted hop right of it.
pub fn client_address<'a>(
    peer: IpAddr,
    forwarded_for: impl IntoIterator<Item = &'a str>,
    trusted: &[IpNet],
) -> IpAddr {
    let is_trusted = |ip: &IpAddr| trusted.iter().any(|n| n.contains(ip));
    if !is_trusted(&peer) {
        return peer;
    }
    let entries: Vec<&str> = forwarded_for
        .into_iter()
        .flat_map(|h| h.split(','))
        .map(str::trim)
        .collect();
    let mut client = peer;
    for entry in entries.iter().rev() {
        let Some(ip) = entry
            .parse::<IpAddr>()
            .ok()
            .or_else(|| entry.parse::<SocketAddr>().ok().map(|s| s.ip()))
        else {
            break;
        };
        client = ip;
        if !is_trusted(&ip) {
            break;
        }
    }
    client
}

/// Counts a failure and, at the limit, (re)starts the lockout: `base * 2^(n - limit)`
/// milliseconds, at most `max`. The count lives for the window past the lockout.
/// KEYS: count, lock. ARGV: limit, window ms, base ms, max ms. Returns the lockout (ms).
const FAIL_SCRIPT: &str = r"
local n = redis.call('INCR', KEYS[1])
local limit = tonumber(ARGV[1])
local lock = 0
if n >= limit then
  lock = tonumber(ARGV[3]) * (2 ^ math.min(n - limit, 40))
  lock = math.floor(math.min(lock, tonumber(ARGV[4])))
  redis.call('SET', KEYS[2], '1', 'PX', lock)
end
redis.call('PEXPIRE', KEYS[1], tonumber(ARGV[2]) + lock)
return lock
";

/// Who is throttled: an account or a source address.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    Account,
    Address,
}

impl Scope {
    fn label(self) -> &'static str {
        match self {
            Scope::Account => "account",
            Scope::Address => "address",
        }
    }
}

/// The Redis keys of one login attempt's two subjects.
pub struct Subjects {
    account: String,
    address: String,
}

impl Subjects {
    pub fn new(prefix: &str, tenant: Uuid, email: &str, peer: IpAddr) -> Self {
        let digest = Sha256::digest(email.trim().to_lowercase().as_bytes());
        let email = hex::encode(&digest[..16]);
        // IPv4-mapped IPv6 peers count as their IPv4 address.
        let peer = match peer {
            IpAddr::V6(v6) => v6
                .to_ipv4_mapped()
                .map(IpAddr::V4)
                .unwrap_or(IpAddr::V6(v6)),
            v4 => v4,
        };
        Subjects {
            account: format!("{prefix}:login:{{{tenant}:{email}}}"),
            address: format!("{prefix}:login:{{addr:{peer}}}"),
        }
    }

    fn keys(&self, scope: Scope) -> (String, String) {
        let base = match scope {
            Scope::Account => &self.account,
            Scope::Address => &self.address,
        };
        (format!("{base}:n"), format!("{base}:lock"))
    }
}

/// Refuses the attempt with 429 while its account or its address is locked out.
pub async fn check(state: &AppState, subjects: &Subjects) -> Result<()> {
    let (_, account_lock) = subjects.keys(Scope::Account);
    let (_, address_lock) = subjects.keys(Scope::Address);
    let (account, address): (i64, i64) = tokio::try_join!(
        state.redis.pttl::<i64, _>(account_lock),
        state.redis.pttl::<i64, _>(address_lock),
    )?;
    // PTTL is -2 without the key (and -1 without expiry, which these keys never lack).
    let (scope, remaining) = if account >= address {
        (Scope::Account, account)
    } else {
        (Scope::Address, address)
    };
    if remaining <= 0 {
        return Ok(());
    }
    metrics::counter!("relaydesk_core_login_throttled_total", "scope" => scope.label())
        .increment(1);
    let ms = u64::try_from(remaining).unwrap_or(0);
    Err(Error::Throttled {
        retry_after: Duration::from_millis(ms),
    })
}

/// Counts a failed attempt against its account and its address.
pub async fn failed(state: &AppState, subjects: &Subjects) -> Result<()> {
    let c = &state.config;
    let window = c.login_failure_window.as_millis() as u64;
    let base = c.login_lockout_base.as_millis() as u64;
    let max = c.login_lockout_max.as_millis() as u64;
    let count = |scope: Scope, limit: u32| {
        let (n, lock) = subjects.keys(scope);
        state.redis.eval::<i64, _, _, _>(
            FAIL_SCRIPT,
            vec![n, lock],
            vec![u64::from(limit), window, base, max],
        )
    };
    tokio::try_join!(
        count(Scope::Account, c.login_account_failures),
        count(Scope::Address, c.login_address_failures),
    )?;
    Ok(())
}

/// A successful login clears its account's failures.
pub async fn succeeded(state: &AppState, subjects: &Subjects) -> Result<()> {
    let (n, lock) = subjects.keys(Scope::Account);
    state.redis.del::<i64, _>(vec![n, lock]).await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn account_keys_lead_with_the_tenant_and_hide_the_email() {
        let t = Uuid::new_v4();
        let s = Subjects::new("rd", t, " Ann@Example.com", "10.0.0.1".parse().unwrap());
        let same = Subjects::new("rd", t, "ann@example.com", "10.0.0.1".parse().unwrap());
        assert_eq!(s.account, same.account);
        assert!(s.account.starts_with(&format!("rd:login:{{{t}:")));
        assert!(!s.account.contains("example"));
        assert_eq!(s.address, "rd:login:{addr:10.0.0.1}");
        let mapped = Subjects::new("rd", t, "a@b.c", "::ffff:10.0.0.1".parse().unwrap());
        assert_eq!(mapped.address, s.address);
    }

    #[test]
    fn the_client_is_the_right_most_untrusted_forwarded_address() {
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        let trusted: Vec<IpNet> = vec!["10.0.0.0/8".parse().unwrap(), "::1/128".parse().unwrap()];
        let client =
            |peer: &str, xff: &[&str]| client_address(ip(peer), xff.iter().copied(), &trusted);
        // An untrusted peer is the client, whatever it forwards.
        assert_eq!(client("203.0.113.9", &["198.51.100.1"]), ip("203.0.113.9"));
        assert_eq!(client("203.0.113.9", &[]), ip("203.0.113.9"));
        // Behind trusted proxies: the right-most untrusted entry; what the client wrote
        // to its left is ignored.
        assert_eq!(
            client("10.0.0.2", &["1.1.1.1, 198.51.100.7"]),
            ip("198.51.100.7")
        );
        assert_eq!(
            client("10.0.0.2", &["1.1.1.1", "198.51.100.7, 10.0.0.5"]),
            ip("198.51.100.7")
        );
        assert_eq!(client("::1", &["198.51.100.7:4711"]), ip("198.51.100.7"));
        // Every entry trusted: the left-most; no header: the peer; garbage: the trusted
        // hop right of it.
        assert_eq!(client("10.0.0.2", &["10.0.0.3, 10.0.0.4"]), ip("10.0.0.3"));
        assert_eq!(client("10.0.0.2", &[]), ip("10.0.0.2"));
        assert_eq!(
            client("10.0.0.2", &["198.51.100.7, nonsense, 10.0.0.4"]),
            ip("10.0.0.4")
        );
        // Nobody trusted (the default): always the peer.
        assert_eq!(
            client_address(ip("10.0.0.2"), ["198.51.100.7"], &[]),
            ip("10.0.0.2")
        );
    }
}
