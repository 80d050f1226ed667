//! core-api configuration: one typed struct, read once from environment variables.

use std::time::Duration;

/// Everything core-api needs to run. Tests build it with [`Config::new`].
#[derive(Debug, Clone)]
pub struct Config {
    /// PostgreSQL as the non-owner application role (`DATABASE_URL`).
    pub database_url: String,
    /// Size of the PostgreSQL pool (`DATABASE_POOL`, default 16).
    pub database_pool: usize,
    /// Redis (`REDIS_URL`).
    pub redis_url: String,
    /// Key prefix isolating a deployment in Redis (`REDIS_PREFIX`, default `rd`).
    pub redis_prefix: String,
    /// Number of ingress shards; must match the edges' (`INGRESS_SHARDS`, default 16).
    pub ingress_shards: u16,
    /// Ed25519 private key, PKCS#8 PEM (`TOKEN_SIGNING_KEY_FILE` or `TOKEN_SIGNING_KEY`).
    pub signing_key_pem: Vec<u8>,
    /// Bearer token of the deployment's operator (`OPERATOR_TOKEN`).
    pub operator_token: String,
    /// Public WebSocket URLs of the edges, handed out with connection tokens (`EDGE_URLS`,
    /// space-separated).
    pub edge_urls: Vec<String>,
    /// This process's consumer name in the ingress group (`CORE_ID`, default random).
    pub core_id: String,
    /// Entries pending longer than this on another consumer are reclaimed
    /// (`CLAIM_IDLE_MS`, default 10000).
    pub claim_idle: Duration,
    /// Most entries read from each shard per batch (`BATCH_SIZE`, default 256).
    pub batch_size: u64,
    /// Commit tasks of the ingress consumer, each owning a disjoint set of shards, so
    /// that this many batches commit at once (`COMMIT_WORKERS`, default 1; at most
    /// `INGRESS_SHARDS`, and fewer than `DATABASE_POOL`). One worker's batches group
    /// the most messages per transaction, which is what PostgreSQL's CPU per message
    /// depends on (docs/benchmarks.md); more help only where PostgreSQL has idle cores.
    pub commit_workers: usize,
    /// After an ingress read of fewer than [`crate::consumer::LINGER_BELOW`] entries,
    /// the next read starts no sooner than this after the previous one started
    /// (`INGRESS_LINGER_US`, default 5000; 0 reads again at once). Under load, fewer and
    /// fuller reads mean fuller batches, which is what Redis's, core-api's and
    /// PostgreSQL's CPU per message depend on; a message waits at most this much longer.
    pub ingress_linger: Duration,
    /// Approximate bound of each edge's egress stream (`EGRESS_MAXLEN`, default 100000).
    pub egress_maxlen: u64,
    /// Lifetime of connection tokens (`CONNECT_TOKEN_TTL_SECS`, default 3600).
    pub connect_token_ttl: Duration,
    /// Lifetime of agent and visitor API tokens (`SESSION_TTL_SECS`, default 43200).
    pub session_ttl: Duration,
    /// Delay before a failed webhook delivery's first retry; it doubles with each attempt
    /// up to an hour (`WEBHOOK_RETRY_BASE_MS`, default 5000).
    pub webhook_retry_base: Duration,
    /// Attempts of a webhook delivery before it is marked failed (`WEBHOOK_MAX_ATTEMPTS`,
    /// default 12).
    pub webhook_max_attempts: u32,
    /// An online agent whose every console connection has been gone this long becomes
    /// `away` (`AGENT_AWAY_GRACE_MS`, default 60000).
    pub away_grace: Duration,
    /// Longest an HTTP request body may take to arrive once its handler reads it; past
    /// it the request is answered 408 (`BODY_TIMEOUT_MS`, default 10000).
    pub body_timeout: Duration,
    /// Failed logins of one account (tenant and email) before it is locked out
    /// (`LOGIN_ACCOUNT_FAILURES`, default 5).
    pub login_account_failures: u32,
    /// Failed logins from one source address before it is locked out
    /// (`LOGIN_ADDRESS_FAILURES`, default 20).
    pub login_address_failures: u32,
    /// Failures are counted over this window, from the last one
    /// (`LOGIN_FAILURE_WINDOW_SECS`, default 900).
    pub login_failure_window: Duration,
    /// The first lockout; each further failure doubles it (`LOGIN_LOCKOUT_BASE_MS`,
    /// default 30000).
    pub login_lockout_base: Duration,
    /// The longest lockout (`LOGIN_LOCKOUT_MAX_SECS`, default 900).
    pub login_lockout_max: Duration,
    /// Lets webhooks target private, loopback, link-local and other non-public
    /// addresses; for development only (`WEBHOOK_ALLOW_PRIVATE`, default false).
    pub webhook_allow_private: bool,
    /// Reverse proxies whose `X-Forwarded-For` names the client, for login throttling
    /// (`TRUSTED_PROXIES`: addresses or CIDRs, comma- or space-separated; none by default).
    pub trusted_proxies: Vec<ipnet::IpNet>,
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{0} must be set")]
    Missing(&'static str),
    #[error("{name} is invalid: {reason}")]
    Invalid { name: &'static str, reason: String },
}

impl Config {
    /// A configuration with defaults for everything but the essentials.
    pub fn new(
        database_url: impl Into<String>,
        redis_url: impl Into<String>,
        redis_prefix: impl Into<String>,
        signing_key_pem: Vec<u8>,
        operator_token: impl Into<String>,
    ) -> Self {
        Config {
            database_url: database_url.into(),
            database_pool: 16,
            redis_url: redis_url.into(),
            redis_prefix: redis_prefix.into(),
            ingress_shards: 16,
            signing_key_pem,
            operator_token: operator_token.into(),
            edge_urls: vec!["ws://127.0.0.1:8081/v1/ws".into()],
            core_id: format!("core-{}", &uuid::Uuid::new_v4().simple().to_string()[..12]),
            claim_idle: Duration::from_secs(10),
            batch_size: 256,
            commit_workers: 1,
            ingress_linger: Duration::from_millis(5),
            egress_maxlen: 100_000,
            connect_token_ttl: Duration::from_secs(3600),
            session_ttl: Duration::from_secs(12 * 3600),
            webhook_retry_base: Duration::from_secs(5),
            webhook_max_attempts: 12,
            away_grace: Duration::from_secs(60),
            body_timeout: Duration::from_secs(10),
            login_account_failures: 5,
            login_address_failures: 20,
            login_failure_window: Duration::from_secs(900),
            login_lockout_base: Duration::from_secs(30),
            login_lockout_max: Duration::from_secs(900),
            webhook_allow_private: false,
            trusted_proxies: Vec::new(),
        }
    }

    /// Reads the configuration from the environment.
    pub fn from_env() -> Result<Self, ConfigError> {
        let signing_key_pem = match (var("TOKEN_SIGNING_KEY_FILE"), var("TOKEN_SIGNING_KEY")) {
            (Some(path), _) => std::fs::read(&path).map_err(|e| ConfigError::Invalid {
                name: "TOKEN_SIGNING_KEY_FILE",
                reason: format!("cannot read {path}: {e}"),
            })?,
            (None, Some(pem)) => pem.into_bytes(),
            (None, None) => return Err(ConfigError::Missing("TOKEN_SIGNING_KEY_FILE")),
        };
        let mut c = Config::new(
            var("DATABASE_URL").ok_or(ConfigError::Missing("DATABASE_URL"))?,
            var("REDIS_URL").ok_or(ConfigError::Missing("REDIS_URL"))?,
            var("REDIS_PREFIX").unwrap_or_else(|| "rd".into()),
            signing_key_pem,
            var("OPERATOR_TOKEN").ok_or(ConfigError::Missing("OPERATOR_TOKEN"))?,
        );
        if c.operator_token.len() < 16 {
            return Err(ConfigError::Invalid {
                name: "OPERATOR_TOKEN",
                reason: "use at least 16 characters".into(),
            });
        }
        c.database_pool = parse("DATABASE_POOL", c.database_pool)?;
        c.ingress_shards = parse("INGRESS_SHARDS", c.ingress_shards)?;
        if c.ingress_shards == 0 {
            return Err(ConfigError::Invalid {
                name: "INGRESS_SHARDS",
                reason: "must be at least 1".into(),
            });
        }
        if let Some(urls) = var("EDGE_URLS") {
            c.edge_urls = urls.split_whitespace().map(str::to_owned).collect();
        }
        if let Some(id) = var("CORE_ID") {
            c.core_id = id;
        }
        c.claim_idle =
            Duration::from_millis(parse("CLAIM_IDLE_MS", c.claim_idle.as_millis() as u64)?);
        c.batch_size = parse("BATCH_SIZE", c.batch_size)?;
        if c.batch_size == 0 {
            return Err(ConfigError::Invalid {
                name: "BATCH_SIZE",
                reason: "must be at least 1".into(),
            });
        }
        c.commit_workers = parse("COMMIT_WORKERS", c.commit_workers)?;
        if c.commit_workers == 0 || c.commit_workers >= c.database_pool {
            return Err(ConfigError::Invalid {
                name: "COMMIT_WORKERS",
                reason: format!(
                    "must be at least 1 and less than DATABASE_POOL ({})",
                    c.database_pool
                ),
            });
        }
        c.ingress_linger = Duration::from_micros(parse(
            "INGRESS_LINGER_US",
            c.ingress_linger.as_micros() as u64,
        )?);
        if c.ingress_linger > Duration::from_millis(100) {
            return Err(ConfigError::Invalid {
                name: "INGRESS_LINGER_US",
                reason: "must be at most 100000 (100 ms)".into(),
            });
        }
        c.egress_maxlen = parse("EGRESS_MAXLEN", c.egress_maxlen)?;
        c.connect_token_ttl = Duration::from_secs(parse(
            "CONNECT_TOKEN_TTL_SECS",
            c.connect_token_ttl.as_secs(),
        )?);
        c.session_ttl = Duration::from_secs(parse("SESSION_TTL_SECS", c.session_ttl.as_secs())?);
        c.webhook_retry_base = Duration::from_millis(parse(
            "WEBHOOK_RETRY_BASE_MS",
            c.webhook_retry_base.as_millis() as u64,
        )?);
        if c.webhook_retry_base.is_zero() {
            return Err(ConfigError::Invalid {
                name: "WEBHOOK_RETRY_BASE_MS",
                reason: "must be at least 1".into(),
            });
        }
        c.webhook_max_attempts = parse("WEBHOOK_MAX_ATTEMPTS", c.webhook_max_attempts)?;
        if c.webhook_max_attempts == 0 {
            return Err(ConfigError::Invalid {
                name: "WEBHOOK_MAX_ATTEMPTS",
                reason: "must be at least 1".into(),
            });
        }
        c.away_grace = Duration::from_millis(parse(
            "AGENT_AWAY_GRACE_MS",
            c.away_grace.as_millis() as u64,
        )?);
        c.body_timeout =
            Duration::from_millis(parse("BODY_TIMEOUT_MS", c.body_timeout.as_millis() as u64)?);
        if c.body_timeout.is_zero() {
            return Err(ConfigError::Invalid {
                name: "BODY_TIMEOUT_MS",
                reason: "must be at least 1".into(),
            });
        }
        c.login_account_failures = parse("LOGIN_ACCOUNT_FAILURES", c.login_account_failures)?;
        c.login_address_failures = parse("LOGIN_ADDRESS_FAILURES", c.login_address_failures)?;
        for (name, value) in [
            ("LOGIN_ACCOUNT_FAILURES", c.login_account_failures),
            ("LOGIN_ADDRESS_FAILURES", c.login_address_failures),
        ] {
            if value == 0 {
                return Err(ConfigError::Invalid {
                    name,
                    reason: "must be at least 1".into(),
                });
            }
        }
        c.login_failure_window = Duration::from_secs(parse(
            "LOGIN_FAILURE_WINDOW_SECS",
            c.login_failure_window.as_secs(),
        )?);
        c.login_lockout_base = Duration::from_millis(parse(
            "LOGIN_LOCKOUT_BASE_MS",
            c.login_lockout_base.as_millis() as u64,
        )?);
        c.login_lockout_max = Duration::from_secs(parse(
            "LOGIN_LOCKOUT_MAX_SECS",
            c.login_lockout_max.as_secs(),
        )?);
        if c.login_failure_window.is_zero()
            || c.login_lockout_base.is_zero()
            || c.login_lockout_max < c.login_lockout_base
        {
            return Err(ConfigError::Invalid {
                name: "LOGIN_LOCKOUT_BASE_MS",
                reason: "the window and the lockouts must be positive, and \
                         LOGIN_LOCKOUT_MAX_SECS at least LOGIN_LOCKOUT_BASE_MS"
                    .into(),
            });
        }
        c.webhook_allow_private = parse("WEBHOOK_ALLOW_PRIVATE", c.webhook_allow_private)?;
        if let Some(list) = var("TRUSTED_PROXIES") {
            c.trusted_proxies = networks(&list).map_err(|reason| ConfigError::Invalid {
                name: "TRUSTED_PROXIES",
                reason,
            })?;
        }
        Ok(c)
    }
}

/// Addresses and CIDRs, comma- or space-separated (an address is a network of one).
fn networks(list: &str) -> Result<Vec<ipnet::IpNet>, String> {
    list.split(|c: char| c == ',' || c.is_whitespace())
        .filter(|s| !s.is_empty())
        .map(|s| {
            s.parse::<ipnet::IpNet>()
                .or_else(|_| s.parse::<std::net::IpAddr>().map(ipnet::IpNet::from))
                .map_err(|_| format!("{s:?} is neither an address nor a CIDR"))
        })
        .collect()
}

fn var(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.trim().is_empty())
}

fn parse<T: std::str::FromStr>(name: &'static str, default: T) -> Result<T, ConfigError>
where
    T::Err: std::fmt::Display,
{
    match var(name) {
        None => Ok(default),
        Some(v) => v.trim().parse().map_err(|e: T::Err| ConfigError::Invalid {
            name,
            reason: e.to_string(),
        }),
    }
}
