//! Edge configuration: every tunable of an edge process, read from the environment by
//! [`Config::from_env`] or built in code (tests) with [`Config::new`] plus field updates.

use std::time::Duration;

/// Default inbound message limit (bytes, whole message): the message size limit of every
/// ingress (`relaydesk_shared::input`).
pub const DEFAULT_MAX_MESSAGE_BYTES: usize = relaydesk_shared::input::MAX_MESSAGE_BYTES;

/// Everything an edge needs to run.
#[derive(Debug, Clone)]
pub struct Config {
    /// Redis URL (env `REDIS_URL`, required).
    pub redis_url: String,
    /// Key prefix (env `REDIS_PREFIX`, default `rd`).
    pub redis_prefix: String,
    /// Number of ingress shards (env `INGRESS_SHARDS`, default 16); must equal core-api's.
    pub ingress_shards: u16,
    /// SPKI PEM of the token public key (env `TOKEN_PUBLIC_KEY_FILE` or `TOKEN_PUBLIC_KEY`).
    pub token_public_key_pem: Vec<u8>,
    /// This process's id on the bus (env `EDGE_ID`, default fresh random per start).
    pub edge_id: String,
    /// Time a client has to send `hello` (env `HELLO_TIMEOUT_MS`, default 5000).
    pub hello_timeout: Duration,
    /// Time a WebSocket frame, or a fragmented message, once begun, has to arrive whole
    /// (env `FRAME_TIMEOUT_MS`, default 10000); past it: close 1008.
    pub frame_timeout: Duration,
    /// WebSocket ping interval (env `HEARTBEAT_MS`, default 25000).
    pub heartbeat: Duration,
    /// Inbound message limit in bytes (env `MAX_MESSAGE_BYTES`, default 65536).
    pub max_message_bytes: usize,
    /// Outbound queue bound per connection in bytes (env `OUTBOUND_QUEUE_BYTES`, default 1 MiB).
    pub outbound_queue_bytes: usize,
    /// Maximum concurrent TCP connections (env `MAX_CONNECTIONS`, default 19000).
    pub max_connections: usize,
    /// Time allowed to send the HTTP request head (env `HEADER_TIMEOUT_MS`, default 10000).
    pub header_timeout: Duration,
    /// Wait for core-api's answer to `hello` (env `CORE_TIMEOUT_MS`, default 5000).
    pub core_timeout: Duration,
    /// Window over which WebSockets are closed when draining (env `DRAIN_WINDOW_MS`, default 5000).
    pub drain_window: Duration,
    /// Connections from one source address (env `MAX_CONNECTIONS_PER_IP`, default 19000).
    pub max_connections_per_ip: usize,
    /// WebSocket upgrades per second, all clients together (env `UPGRADES_PER_SEC`,
    /// default 5000); past it: HTTP 429.
    pub upgrades_per_sec: u32,
    /// Authenticated connections of one tenant on this edge (env
    /// `TENANT_MAX_CONNECTIONS`, default 19000); past it: close 4029.
    pub tenant_max_connections: usize,
    /// `send` frames per second of one connection (env `CONN_MSGS_PER_SEC`, default 200).
    pub conn_msgs_per_sec: u32,
    /// `send` frames per second of one tenant on this edge (env `TENANT_MSGS_PER_SEC`,
    /// default 20000).
    pub tenant_msgs_per_sec: u32,
    /// The path of the echo route (env `EDGE_ECHO_PATH`, default none: off): a
    /// WebSocket there gets every message back, with no `hello` (`crate::echo`), for
    /// conformance runs. Never set it in production.
    pub echo_path: Option<String>,
}

/// Why the environment does not describe a valid configuration.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("environment variable {0} is required")]
    Missing(&'static str),
    #[error("environment variable {var} is invalid ({value:?}): {reason}")]
    Invalid {
        var: &'static str,
        value: String,
        reason: String,
    },
    #[error("cannot read TOKEN_PUBLIC_KEY_FILE {path}: {source}")]
    KeyFile {
        path: String,
        source: std::io::Error,
    },
    #[error("either TOKEN_PUBLIC_KEY_FILE (path to an SPKI PEM) or TOKEN_PUBLIC_KEY (PEM text) is required")]
    MissingKey,
}

impl Config {
    /// A configuration with defaults for everything but Redis and the token key.
    pub fn new(
        redis_url: impl Into<String>,
        redis_prefix: impl Into<String>,
        token_public_key_pem: Vec<u8>,
    ) -> Config {
        Config {
            redis_url: redis_url.into(),
            redis_prefix: redis_prefix.into(),
            ingress_shards: 16,
            token_public_key_pem,
            edge_id: random_edge_id(),
            hello_timeout: Duration::from_millis(5000),
            frame_timeout: Duration::from_millis(10_000),
            heartbeat: Duration::from_millis(25_000),
            max_message_bytes: DEFAULT_MAX_MESSAGE_BYTES,
            outbound_queue_bytes: 1024 * 1024,
            max_connections: 19_000,
            header_timeout: Duration::from_millis(10_000),
            core_timeout: Duration::from_millis(5000),
            drain_window: Duration::from_millis(5000),
            max_connections_per_ip: 19_000,
            upgrades_per_sec: 5_000,
            tenant_max_connections: 19_000,
            conn_msgs_per_sec: 200,
            tenant_msgs_per_sec: 20_000,
            echo_path: None,
        }
    }

    /// Reads the configuration from the environment (see each field for its variable).
    pub fn from_env() -> Result<Config, ConfigError> {
        Self::from_lookup(|name| std::env::var(name).ok())
    }

    /// Like [`Config::from_env`], with variables looked up by `get` (testable).
    fn from_lookup(get: impl Fn(&str) -> Option<String>) -> Result<Config, ConfigError> {
        let get = |name: &str| get(name).filter(|v| !v.trim().is_empty());
        let redis_url = get("REDIS_URL").ok_or(ConfigError::Missing("REDIS_URL"))?;
        let pem = match (get("TOKEN_PUBLIC_KEY_FILE"), get("TOKEN_PUBLIC_KEY")) {
            (Some(path), _) => {
                std::fs::read(&path).map_err(|source| ConfigError::KeyFile { path, source })?
            }
            (None, Some(text)) => text.into_bytes(),
            (None, None) => return Err(ConfigError::MissingKey),
        };
        let mut c = Config::new(
            redis_url,
            get("REDIS_PREFIX").unwrap_or_else(|| "rd".to_owned()),
            pem,
        );
        if let Some(v) = get("INGRESS_SHARDS") {
            c.ingress_shards = parse_num::<u16>("INGRESS_SHARDS", &v)?;
            if c.ingress_shards == 0 {
                return Err(invalid("INGRESS_SHARDS", &v, "must be at least 1"));
            }
        }
        if let Some(v) = get("EDGE_ID") {
            if !valid_edge_id(&v) {
                return Err(invalid("EDGE_ID", &v, "1-64 characters of [A-Za-z0-9_.:-]"));
            }
            c.edge_id = v;
        }
        if let Some(p) = get("REDIS_PREFIX") {
            if p.contains(['{', '}']) {
                return Err(invalid("REDIS_PREFIX", &p, "must not contain '{' or '}'"));
            }
        }
        let ms = |var: &'static str, default: Duration| -> Result<Duration, ConfigError> {
            match get(var) {
                None => Ok(default),
                Some(v) => {
                    let n = parse_num::<u64>(var, &v)?;
                    if n == 0 {
                        return Err(invalid(var, &v, "must be greater than 0"));
                    }
                    Ok(Duration::from_millis(n))
                }
            }
        };
        c.hello_timeout = ms("HELLO_TIMEOUT_MS", c.hello_timeout)?;
        c.frame_timeout = ms("FRAME_TIMEOUT_MS", c.frame_timeout)?;
        c.heartbeat = ms("HEARTBEAT_MS", c.heartbeat)?;
        c.header_timeout = ms("HEADER_TIMEOUT_MS", c.header_timeout)?;
        c.core_timeout = ms("CORE_TIMEOUT_MS", c.core_timeout)?;
        c.drain_window = ms("DRAIN_WINDOW_MS", c.drain_window)?;
        let size = |var: &'static str, default: usize| -> Result<usize, ConfigError> {
            match get(var) {
                None => Ok(default),
                Some(v) => {
                    let n = parse_num::<usize>(var, &v)?;
                    if n == 0 {
                        return Err(invalid(var, &v, "must be greater than 0"));
                    }
                    Ok(n)
                }
            }
        };
        c.max_message_bytes = size("MAX_MESSAGE_BYTES", c.max_message_bytes)?;
        c.outbound_queue_bytes = size("OUTBOUND_QUEUE_BYTES", c.outbound_queue_bytes)?;
        c.max_connections = size("MAX_CONNECTIONS", c.max_connections)?;
        c.max_connections_per_ip = size("MAX_CONNECTIONS_PER_IP", c.max_connections_per_ip)?;
        c.tenant_max_connections = size("TENANT_MAX_CONNECTIONS", c.tenant_max_connections)?;
        let rate = |var: &'static str, default: u32| -> Result<u32, ConfigError> {
            let n = size(var, default as usize)?;
            u32::try_from(n).map_err(|_| invalid(var, &n.to_string(), "too large"))
        };
        c.upgrades_per_sec = rate("UPGRADES_PER_SEC", c.upgrades_per_sec)?;
        c.conn_msgs_per_sec = rate("CONN_MSGS_PER_SEC", c.conn_msgs_per_sec)?;
        c.tenant_msgs_per_sec = rate("TENANT_MSGS_PER_SEC", c.tenant_msgs_per_sec)?;
        if let Some(p) = get("EDGE_ECHO_PATH") {
            if !p.starts_with('/') || crate::http::ROUTES.contains(&p.as_str()) {
                return Err(invalid(
                    "EDGE_ECHO_PATH",
                    &p,
                    "must be a path (starting with '/') other than the edge's routes",
                ));
            }
            c.echo_path = Some(p);
        }
        Ok(c)
    }
}

/// A fresh edge id: `e-` and 12 random hex characters.
pub fn random_edge_id() -> String {
    format!("e-{:012x}", rand::random::<u64>() & 0xffff_ffff_ffff)
}

/// Edge ids go inside a Redis hash tag, so they are restricted to a safe alphabet.
fn valid_edge_id(id: &str) -> bool {
    (1..=64).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.' | b':'))
}

fn invalid(var: &'static str, value: &str, reason: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        var,
        value: value.to_owned(),
        reason: reason.into(),
    }
}

fn parse_num<T: std::str::FromStr>(var: &'static str, value: &str) -> Result<T, ConfigError>
where
    T::Err: std::fmt::Display,
{
    value
        .trim()
        .parse::<T>()
        .map_err(|e| invalid(var, value, e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn lookup(vars: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let m: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        move |k| m.get(k).cloned()
    }

    #[test]
    fn defaults_and_required() {
        let c = Config::from_lookup(lookup(&[
            ("REDIS_URL", "redis://x"),
            ("TOKEN_PUBLIC_KEY", "PEM"),
        ]))
        .unwrap();
        assert_eq!(c.redis_prefix, "rd");
        assert_eq!(c.ingress_shards, 16);
        assert_eq!(c.max_message_bytes, 65536);
        assert_eq!(c.outbound_queue_bytes, 1 << 20);
        assert_eq!(c.heartbeat, Duration::from_millis(25_000));
        assert_eq!(c.frame_timeout, Duration::from_millis(10_000));
        assert!(c.edge_id.starts_with("e-") && c.edge_id.len() == 14);
        assert_eq!(c.echo_path, None);
        assert!(matches!(
            Config::from_lookup(lookup(&[])),
            Err(ConfigError::Missing("REDIS_URL"))
        ));
        assert!(matches!(
            Config::from_lookup(lookup(&[("REDIS_URL", "redis://x")])),
            Err(ConfigError::MissingKey)
        ));
    }

    #[test]
    fn the_echo_route_is_a_path_of_its_own() {
        let with = |path| {
            Config::from_lookup(lookup(&[
                ("REDIS_URL", "redis://x"),
                ("TOKEN_PUBLIC_KEY", "PEM"),
                ("EDGE_ECHO_PATH", path),
            ]))
        };
        assert_eq!(with("/echo").unwrap().echo_path.as_deref(), Some("/echo"));
        for bad in ["echo", "/v1/ws", "/healthz"] {
            let e = with(bad).unwrap_err();
            assert!(e.to_string().contains("EDGE_ECHO_PATH"), "{e}");
        }
    }

    #[test]
    fn invalid_values_name_the_variable() {
        let e = Config::from_lookup(lookup(&[
            ("REDIS_URL", "redis://x"),
            ("TOKEN_PUBLIC_KEY", "PEM"),
            ("HEARTBEAT_MS", "soon"),
        ]))
        .unwrap_err();
        assert!(e.to_string().contains("HEARTBEAT_MS"));
        let e = Config::from_lookup(lookup(&[
            ("REDIS_URL", "redis://x"),
            ("TOKEN_PUBLIC_KEY", "PEM"),
            ("EDGE_ID", "a}b"),
        ]))
        .unwrap_err();
        assert!(e.to_string().contains("EDGE_ID"));
    }
}
