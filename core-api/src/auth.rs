//! Credentials: who is calling the HTTP API.
//!
//! `Authorization: Bearer <…>` carries one of: the operator token (from configuration),
//! a tenant API key (`rk_<tenant>_<secret>`, stored as a SHA-256 hash), or an API
//! session token (an EdDSA JWT with `aud = "api"`) of an agent or a visitor. Passwords
//! are hashed with argon2.
//!
//! An agent's token is checked against PostgreSQL on every request ([`standings`]: one
//! prepared statement, one round trip, no transaction of its own; the agent and the
//! session read by primary key): the agent must exist and be active, the token's
//! credential version (`ver`) must be the agent's current one and its session (`sid`)
//! must not be logged out; the role used is the stored one, never the token's. The same
//! check answers a batch of `hello`s (`consumer.rs`). API keys are looked up by hash on
//! every request, so a deleted key fails at once.

use std::collections::HashMap;
use std::sync::Arc;

use argon2::password_hash::{
    rand_core::OsRng, PasswordHash, PasswordHasher, PasswordVerifier, SaltString,
};
use argon2::Argon2;
use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use deadpool_postgres::GenericClient;
use rand::RngCore;
use relaydesk_shared::token::Role;
use sha2::{Digest, Sha256};
use uuid::Uuid;

use crate::error::{Error, Result};
use crate::AppState;

/// The authenticated caller of a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Caller {
    Operator,
    ApiKey {
        tenant: Uuid,
    },
    Agent {
        tenant: Uuid,
        id: Uuid,
        role: Role,
        /// The session of the token (absent in tokens minted before sessions had ids).
        sid: Option<Uuid>,
    },
    Visitor {
        tenant: Uuid,
        id: Uuid,
    },
}

impl Caller {
    pub fn tenant(&self) -> Result<Uuid> {
        match self {
            Caller::Operator => Err(Error::forbidden("the operator token has no tenant")),
            Caller::ApiKey { tenant }
            | Caller::Agent { tenant, .. }
            | Caller::Visitor { tenant, .. } => Ok(*tenant),
        }
    }

    /// Tenant API keys and admins manage the tenant.
    pub fn tenant_admin(&self) -> Result<Uuid> {
        match self {
            Caller::ApiKey { tenant }
            | Caller::Agent {
                tenant,
                role: Role::Admin,
                ..
            } => Ok(*tenant),
            _ => Err(Error::forbidden("needs the tenant's API key or an admin")),
        }
    }
}

impl FromRequestParts<Arc<AppState>> for Caller {
    type Rejection = Error;

    async fn from_request_parts(parts: &mut Parts, state: &Arc<AppState>) -> Result<Self> {
        let header = parts
            .headers
            .get(axum::http::header::AUTHORIZATION)
            .ok_or_else(Error::unauthorized)?;
        let token = header
            .to_str()
            .ok()
            .and_then(|h| h.strip_prefix("Bearer "))
            .map(str::trim)
            .ok_or_else(Error::unauthorized)?;
        authenticate(state, token).await
    }
}

async fn authenticate(state: &AppState, token: &str) -> Result<Caller> {
    if constant_time_eq(token.as_bytes(), state.config.operator_token.as_bytes()) {
        return Ok(Caller::Operator);
    }
    if let Some(tenant) = api_key_tenant(token) {
        let hash = sha256(token);
        let mut client = state.pool.get().await?;
        let tx = crate::db::tenant_tx(&mut client, tenant).await?;
        let found = tx
            .query_opt(
                "SELECT 1 FROM api_keys WHERE tenant_id = $1 AND key_hash = $2",
                &[&tenant, &hash],
            )
            .await?;
        tx.commit().await?;
        return found
            .map(|_| Caller::ApiKey { tenant })
            .ok_or_else(Error::unauthorized);
    }
    let claims = state
        .api_tokens
        .verify(token)
        .map_err(|_| Error::unauthorized())?;
    if claims.role == Role::Visitor {
        return Ok(Caller::Visitor {
            tenant: claims.tid,
            id: claims.sub,
        });
    }
    let client = state.pool.get().await?;
    let key = (claims.tid, claims.sub, claims.sid);
    let standing = standings(&client, &[key]).await?.remove(&key);
    drop(client);
    match standing {
        Some(s) if s.admits(claims.version()) => Ok(Caller::Agent {
            tenant: claims.tid,
            id: claims.sub,
            role: s.role,
            sid: claims.sid,
        }),
        _ => Err(Error::unauthorized()),
    }
}

/// An agent token's credential: (tenant, agent, session).
pub type TokenKey = (Uuid, Uuid, Option<Uuid>);

/// What PostgreSQL holds of an agent token's credential.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Standing {
    /// The stored role (bots are `bot`).
    pub role: Role,
    pub version: u32,
    pub active: bool,
    /// The token's session was logged out.
    pub logged_out: bool,
}

impl Standing {
    /// Whether a token of credential version `ver` (of this session) is valid.
    pub fn admits(&self, ver: u32) -> bool {
        self.active && !self.logged_out && ver == self.version
    }
}

/// The credential check of agent tokens, any tenants' (`relaydesk_agent_credentials`,
/// migration V5: scoped to each tenant in turn, primary-key reads of `agents` and
/// `revoked_sessions`).
pub const CREDENTIALS_SQL: &str =
    "SELECT tenant_id, agent_id, sid, role, kind, credential_version, active, logged_out
       FROM relaydesk_agent_credentials($1::uuid[], $2::uuid[], $3::uuid[])";

/// Looks up the credentials of agent tokens in one statement (one round trip, on a
/// pooled connection or inside a transaction). An agent that does not exist in its
/// tenant is absent from the answer.
pub async fn standings(
    client: &impl GenericClient,
    keys: &[TokenKey],
) -> Result<HashMap<TokenKey, Standing>> {
    if keys.is_empty() {
        return Ok(HashMap::new());
    }
    let tenants: Vec<Uuid> = keys.iter().map(|k| k.0).collect();
    let agents: Vec<Uuid> = keys.iter().map(|k| k.1).collect();
    let sids: Vec<Option<Uuid>> = keys.iter().map(|k| k.2).collect();
    let stmt = client.prepare_cached(CREDENTIALS_SQL).await?;
    let rows = client.query(&stmt, &[&tenants, &agents, &sids]).await?;
    Ok(rows
        .iter()
        .map(|r| {
            let version = u32::try_from(r.get::<_, i32>(5)).unwrap_or(0);
            let standing = Standing {
                role: agent_role(r.get(3), r.get(4)),
                version,
                active: r.get(6),
                logged_out: r.get(7),
            };
            ((r.get(0), r.get(1), r.get(2)), standing)
        })
        .collect())
}

/// The token role of an agent row: bots are `bot` whatever their role column says.
pub fn agent_role(role: &str, kind: &str) -> Role {
    if kind == "bot" {
        return Role::Bot;
    }
    Role::parse(role).unwrap_or(Role::Agent)
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// A new API key for `tenant`: shown once, stored only as its hash.
pub struct NewApiKey {
    pub key: String,
    pub hash: Vec<u8>,
    /// `rk_` and the first 8 hex digits of the secret (32 of its 192 bits): enough to
    /// tell keys apart in a listing, too little to guess the rest.
    pub prefix: String,
}

pub fn new_api_key(tenant: Uuid) -> NewApiKey {
    let secret = random_hex(24);
    let key = format!("rk_{}_{}", tenant.simple(), secret);
    NewApiKey {
        hash: sha256(&key),
        prefix: format!("rk_{}", &secret[..8]),
        key,
    }
}

fn api_key_tenant(token: &str) -> Option<Uuid> {
    let rest = token.strip_prefix("rk_")?;
    let (tenant, _) = rest.split_once('_')?;
    Uuid::try_parse(tenant).ok()
}

/// A public site key that names its tenant: `site_<tenant>_<random>`.
pub fn new_site_key(tenant: Uuid) -> String {
    format!("site_{}_{}", tenant.simple(), random_hex(8))
}

pub fn site_key_tenant(key: &str) -> Option<Uuid> {
    let rest = key.strip_prefix("site_")?;
    let (tenant, _) = rest.split_once('_')?;
    Uuid::try_parse(tenant).ok()
}

pub fn random_hex(bytes: usize) -> String {
    let mut buf = vec![0u8; bytes];
    rand::rngs::OsRng.fill_bytes(&mut buf);
    hex::encode(buf)
}

fn sha256(s: &str) -> Vec<u8> {
    Sha256::digest(s.as_bytes()).to_vec()
}

/// Hashes a password with argon2 (off the async runtime: it is deliberately slow).
pub async fn hash_password(password: String) -> Result<String> {
    tokio::task::spawn_blocking(move || {
        let salt = SaltString::generate(&mut OsRng);
        Argon2::default()
            .hash_password(password.as_bytes(), &salt)
            .map(|h| h.to_string())
    })
    .await
    .map_err(|e| Error::Internal(e.to_string()))?
    .map_err(|e| Error::Internal(e.to_string()))
}

/// Verifies `password` against a stored argon2 hash, or, when there is none (an unknown
/// account), against a dummy hash made once with the same parameters, so that an unknown
/// account costs what a wrong password does and the answer's timing tells them apart no
/// better than its body. Always false without a stored hash.
pub async fn verify_password(password: String, hash: Option<String>) -> Result<bool> {
    tokio::task::spawn_blocking(move || {
        let known = hash.is_some();
        let hash = match hash {
            Some(h) => h,
            None => dummy_hash()?.to_owned(),
        };
        let h = PasswordHash::new(&hash).map_err(|e| Error::Internal(e.to_string()))?;
        let ok = Argon2::default()
            .verify_password(password.as_bytes(), &h)
            .is_ok();
        Ok(ok && known)
    })
    .await
    .map_err(|e| Error::Internal(e.to_string()))?
}

/// The argon2 hash of a random password, made once per process with the parameters of
/// [`hash_password`].
fn dummy_hash() -> Result<&'static str> {
    static DUMMY: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    if let Some(h) = DUMMY.get() {
        return Ok(h);
    }
    let salt = SaltString::generate(&mut OsRng);
    let hash = Argon2::default()
        .hash_password(random_hex(16).as_bytes(), &salt)
        .map_err(|e| Error::Internal(e.to_string()))?
        .to_string();
    Ok(DUMMY.get_or_init(|| hash))
}

/// Warms the dummy hash of [`verify_password`] (off the async runtime), so that the
/// first unknown account costs no more than any other.
pub async fn prepare_dummy_hash() -> Result<()> {
    tokio::task::spawn_blocking(|| dummy_hash().map(drop))
        .await
        .map_err(|e| Error::Internal(e.to_string()))?
}

/// Verifies a visitor's identity hash: hex HMAC-SHA256 of `external_id` under the
/// tenant's identity secret. Takes the same steps whatever the input (the MAC is always
/// computed, a malformed hash is compared as zeros) and compares in constant time.
pub fn identity_hash_valid(secret: &str, external_id: &str, hash: &str) -> bool {
    use hmac::{Mac, SimpleHmac};
    let mut given = [0u8; 32];
    let well_formed = hex::decode_to_slice(hash.trim(), &mut given).is_ok();
    // HMAC accepts keys of any length: this cannot fail.
    let Ok(mut mac) = SimpleHmac::<Sha256>::new_from_slice(secret.as_bytes()) else {
        return false;
    };
    mac.update(external_id.as_bytes());
    let expected = mac.finalize().into_bytes();
    let same = constant_time_eq(&expected, &given);
    same & well_formed
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_name_their_tenant() {
        let t = Uuid::new_v4();
        let k = new_api_key(t);
        assert_eq!(api_key_tenant(&k.key), Some(t));
        assert_eq!(k.hash, sha256(&k.key));
        assert!(k.key.contains(&k.prefix[3..]));
        assert_eq!(site_key_tenant(&new_site_key(t)), Some(t));
        assert_eq!(api_key_tenant("rk_nope_x"), None);
    }

    #[test]
    fn identity_hash() {
        use hmac::{Mac, SimpleHmac};
        let mut mac = SimpleHmac::<Sha256>::new_from_slice(b"s3cret").unwrap();
        mac.update(b"user-1");
        let good = hex::encode(mac.finalize().into_bytes());
        assert!(identity_hash_valid("s3cret", "user-1", &good));
        assert!(!identity_hash_valid("s3cret", "user-2", &good));
        assert!(!identity_hash_valid("other", "user-1", &good));
        assert!(!identity_hash_valid("s3cret", "user-1", "zz"));
        assert!(!identity_hash_valid("s3cret", "user-1", ""));
        assert!(!identity_hash_valid("s3cret", "user-1", &good[..62]));
        assert!(identity_hash_valid(
            "s3cret",
            "user-1",
            &format!(" {good} ")
        ));
    }

    #[tokio::test]
    async fn passwords() {
        let h = hash_password("pw-1".into()).await.unwrap();
        assert!(verify_password("pw-1".into(), Some(h.clone()))
            .await
            .unwrap());
        assert!(!verify_password("pw-2".into(), Some(h)).await.unwrap());
        assert!(!verify_password("pw-1".into(), None).await.unwrap());
        let dummy = PasswordHash::new(dummy_hash().unwrap())
            .unwrap()
            .to_string();
        let real = hash_password("pw-1".into()).await.unwrap();
        let params = |h: &str| h.rsplitn(3, '$').nth(2).unwrap().to_owned();
        assert_eq!(
            params(&dummy),
            params(&real),
            "the dummy hash uses the same parameters"
        );
    }
}
