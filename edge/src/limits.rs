//! Limits that bound what one client, one source address or one tenant can take from an
//! edge: connections per source address and per tenant, the upgrade rate, and `send`
//! rates per connection and per tenant (token buckets, `governor`).
//!
//! Slots are RAII guards: a connection holds its [`Slot`]s for as long as it lives, so a
//! count can never leak when a session ends in any way.

use std::collections::HashMap;
use std::hash::Hash;
use std::net::IpAddr;
use std::num::NonZeroU32;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use governor::clock::{Clock, DefaultClock};
use governor::state::keyed::DefaultKeyedStateStore;
use governor::{DefaultDirectRateLimiter, DefaultKeyedRateLimiter, Quota, RateLimiter};
use uuid::Uuid;

use crate::config::Config;

/// Counts holders per key, up to a bound.
struct Counter<K> {
    max: usize,
    counts: Mutex<HashMap<K, usize>>,
}

impl<K: Hash + Eq + Copy> Counter<K> {
    fn new(max: usize) -> Self {
        Counter {
            max,
            counts: Mutex::new(HashMap::new()),
        }
    }

    fn acquire(&self, key: K) -> bool {
        let mut counts = self.counts.lock().unwrap_or_else(|p| p.into_inner());
        let n = counts.entry(key).or_insert(0);
        if *n >= self.max {
            return false;
        }
        *n += 1;
        true
    }

    fn release(&self, key: K) {
        let mut counts = self.counts.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = counts.get_mut(&key) {
            *n -= 1;
            if *n == 0 {
                counts.remove(&key);
            }
        }
    }
}

/// The edge-wide limit state.
pub struct Limits {
    per_ip: Counter<IpAddr>,
    per_tenant: Counter<Uuid>,
    upgrades: DefaultDirectRateLimiter,
    tenant_sends: DefaultKeyedRateLimiter<Uuid>,
    conn_quota: Quota,
    /// One calibrated clock for every bucket: creating a clock calibrates the TSC and
    /// runs CPUID, which costs tens of µs in a virtual machine, so never per connection
    /// or per `send`.
    clock: DefaultClock,
}

/// A held place in a per-key count; released on drop.
pub struct Slot {
    limits: Arc<Limits>,
    key: SlotKey,
}

enum SlotKey {
    Ip(IpAddr),
    Tenant(Uuid),
}

impl Drop for Slot {
    fn drop(&mut self) {
        match self.key {
            SlotKey::Ip(ip) => self.limits.per_ip.release(ip),
            SlotKey::Tenant(t) => self.limits.per_tenant.release(t),
        }
    }
}

fn per_second(n: u32) -> Quota {
    let n = NonZeroU32::new(n).unwrap_or(NonZeroU32::MIN);
    // A burst of one second's worth.
    Quota::per_second(n).allow_burst(n)
}

/// Why a `send` was refused, and when to try again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limited {
    pub retry_after: Duration,
}

impl Limits {
    pub fn new(config: &Config) -> Arc<Self> {
        let clock = DefaultClock::default();
        Arc::new(Limits {
            per_ip: Counter::new(config.max_connections_per_ip),
            per_tenant: Counter::new(config.tenant_max_connections),
            upgrades: RateLimiter::direct_with_clock(
                per_second(config.upgrades_per_sec),
                clock.clone(),
            ),
            tenant_sends: RateLimiter::new(
                per_second(config.tenant_msgs_per_sec),
                DefaultKeyedStateStore::default(),
                clock.clone(),
            ),
            conn_quota: per_second(config.conn_msgs_per_sec),
            clock,
        })
    }

    /// A connection from `ip`, if that address is under its cap.
    pub fn admit_ip(self: &Arc<Self>, ip: IpAddr) -> Option<Slot> {
        self.per_ip.acquire(ip).then(|| Slot {
            limits: self.clone(),
            key: SlotKey::Ip(ip),
        })
    }

    /// An authenticated connection of `tenant`, if the tenant is under its cap.
    pub fn admit_tenant(self: &Arc<Self>, tenant: Uuid) -> Option<Slot> {
        self.per_tenant.acquire(tenant).then(|| Slot {
            limits: self.clone(),
            key: SlotKey::Tenant(tenant),
        })
    }

    /// Whether one more WebSocket upgrade may start now.
    pub fn upgrade_allowed(&self) -> bool {
        self.upgrades.check().is_ok()
    }

    /// A per-connection `send` bucket.
    pub fn connection_bucket(&self) -> DefaultDirectRateLimiter {
        RateLimiter::direct_with_clock(self.conn_quota, self.clock.clone())
    }

    /// Takes one `send` from the connection's bucket and the tenant's.
    pub fn send(&self, conn: &DefaultDirectRateLimiter, tenant: Uuid) -> Result<(), Limited> {
        if let Err(not_until) = conn.check() {
            return Err(Limited {
                retry_after: not_until.wait_time_from(self.clock.now()),
            });
        }
        if let Err(not_until) = self.tenant_sends.check_key(&tenant) {
            return Err(Limited {
                retry_after: not_until.wait_time_from(self.clock.now()),
            });
        }
        Ok(())
    }

    /// Forgets idle tenants' buckets (call now and then).
    pub fn sweep(&self) {
        self.tenant_sends.retain_recent();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> Config {
        let mut c = Config::new("redis://x", "p", Vec::new());
        c.max_connections_per_ip = 2;
        c.tenant_max_connections = 1;
        c.conn_msgs_per_sec = 3;
        c.tenant_msgs_per_sec = 5;
        c
    }

    #[test]
    fn slots_are_bounded_and_released_on_drop() {
        let limits = Limits::new(&config());
        let ip: IpAddr = "127.0.0.1".parse().unwrap();
        let a = limits.admit_ip(ip).unwrap();
        let _b = limits.admit_ip(ip).unwrap();
        assert!(limits.admit_ip(ip).is_none());
        assert!(limits.admit_ip("127.0.0.2".parse().unwrap()).is_some());
        drop(a);
        assert!(limits.admit_ip(ip).is_some());

        let t = Uuid::new_v4();
        let held = limits.admit_tenant(t).unwrap();
        assert!(limits.admit_tenant(t).is_none());
        assert!(limits.admit_tenant(Uuid::new_v4()).is_some());
        drop(held);
        assert!(limits.admit_tenant(t).is_some());
    }

    #[test]
    fn sends_are_limited_per_connection_and_per_tenant() {
        let limits = Limits::new(&config());
        let t = Uuid::new_v4();
        let c1 = limits.connection_bucket();
        for _ in 0..3 {
            assert!(limits.send(&c1, t).is_ok());
        }
        let limited = limits.send(&c1, t).unwrap_err();
        assert!(limited.retry_after > Duration::ZERO);
        // A second connection of the same tenant has its own bucket, but the tenant's
        // (5/s) is nearly spent: 3 + 2 more.
        let c2 = limits.connection_bucket();
        assert!(limits.send(&c2, t).is_ok());
        assert!(limits.send(&c2, t).is_ok());
        assert!(limits.send(&c2, t).is_err());
        // Another tenant is unaffected.
        assert!(limits
            .send(&limits.connection_bucket(), Uuid::new_v4())
            .is_ok());
    }
}
