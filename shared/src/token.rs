//! Signed tokens: EdDSA (Ed25519) JWTs minted by core-api.
//!
//! Two audiences share one key pair: connection tokens (`aud = "edge"`) that edges verify
//! locally with only the public key, and API session tokens (`aud = "api"`) for agents'
//! consoles and visitors' widgets. Verification pins the algorithm to EdDSA and requires
//! `exp` and `aud`; nothing else in the project decodes a token.

use std::time::{SystemTime, UNIX_EPOCH};

use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// Audience of connection tokens, verified by edges.
pub const AUD_EDGE: &str = "edge";
/// Audience of API session tokens, verified by core-api.
pub const AUD_API: &str = "api";

/// Who a principal is within its tenant.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    Visitor,
    Agent,
    Bot,
    Supervisor,
    Admin,
}

impl Role {
    /// Agents, bots, supervisors and admins: everyone who works on the tenant's side.
    pub fn is_staff(self) -> bool {
        !matches!(self, Role::Visitor)
    }

    /// Supervisors and admins may watch any conversation of their tenant.
    pub fn is_supervisor(self) -> bool {
        matches!(self, Role::Supervisor | Role::Admin)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Role::Visitor => "visitor",
            Role::Agent => "agent",
            Role::Bot => "bot",
            Role::Supervisor => "supervisor",
            Role::Admin => "admin",
        }
    }

    pub fn parse(s: &str) -> Option<Role> {
        Some(match s {
            "visitor" => Role::Visitor,
            "agent" => Role::Agent,
            "bot" => Role::Bot,
            "supervisor" => Role::Supervisor,
            "admin" => Role::Admin,
            _ => return None,
        })
    }
}

/// The claims of every Relaydesk token.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    /// Tenant id.
    pub tid: Uuid,
    /// Principal id (agent or visitor).
    pub sub: Uuid,
    pub role: Role,
    /// Expiry, seconds since the Unix epoch.
    pub exp: u64,
    pub iat: u64,
    pub aud: String,
    /// Allowed `Origin` values for browser clients; absent means any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub origins: Option<Vec<String>>,
    /// Display name shown to other participants.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// The agent's credential version when the token was minted; absent counts as 0. A
    /// token whose version is below the agent's current one is revoked.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ver: Option<u32>,
    /// The session (one login) the token belongs to: an agent's session token and the
    /// connection tokens minted with it carry the same id, revoked together by a logout.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sid: Option<Uuid>,
}

impl Claims {
    /// Claims for `aud`, valid for `ttl_secs` from now.
    pub fn new(tid: Uuid, sub: Uuid, role: Role, aud: &str, ttl_secs: u64) -> Self {
        let now = unix_now();
        Claims {
            tid,
            sub,
            role,
            exp: now + ttl_secs,
            iat: now,
            aud: aud.to_owned(),
            origins: None,
            name: None,
            ver: None,
            sid: None,
        }
    }

    /// The credential version the token carries (0 when absent).
    pub fn version(&self) -> u32 {
        self.ver.unwrap_or(0)
    }

    /// Whether a browser `Origin` may use this token.
    pub fn origin_allowed(&self, origin: Option<&str>) -> bool {
        match (&self.origins, origin) {
            (None, _) => true,
            (Some(list), Some(o)) => list.iter().any(|allowed| allowed == o),
            // Non-browser clients send no Origin; a token restricted to origins is for browsers.
            (Some(_), None) => false,
        }
    }
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    #[error("invalid key: {0}")]
    Key(String),
    #[error("invalid token: {0}")]
    Invalid(#[from] jsonwebtoken::errors::Error),
}

/// Mints tokens; held only by core-api.
pub struct TokenSigner {
    key: EncodingKey,
}

impl TokenSigner {
    /// From a PKCS#8 PEM Ed25519 private key.
    pub fn from_pem(pem: &[u8]) -> Result<Self, TokenError> {
        EncodingKey::from_ed_pem(pem)
            .map(|key| TokenSigner { key })
            .map_err(|e| TokenError::Key(e.to_string()))
    }

    pub fn sign(&self, claims: &Claims) -> Result<String, TokenError> {
        Ok(jsonwebtoken::encode(
            &Header::new(Algorithm::EdDSA),
            claims,
            &self.key,
        )?)
    }
}

/// Verifies tokens of one audience with the public key only.
pub struct TokenVerifier {
    key: DecodingKey,
    validation: Validation,
}

impl TokenVerifier {
    /// From an SPKI PEM Ed25519 public key, for tokens of audience `aud`.
    pub fn from_pem(pem: &[u8], aud: &str) -> Result<Self, TokenError> {
        let key = DecodingKey::from_ed_pem(pem).map_err(|e| TokenError::Key(e.to_string()))?;
        let mut validation = Validation::new(Algorithm::EdDSA);
        validation.algorithms = vec![Algorithm::EdDSA];
        validation.set_audience(&[aud]);
        validation.set_required_spec_claims(&["exp", "aud"]);
        validation.leeway = 5;
        Ok(TokenVerifier { key, validation })
    }

    pub fn verify(&self, token: &str) -> Result<Claims, TokenError> {
        Ok(jsonwebtoken::decode::<Claims>(token, &self.key, &self.validation)?.claims)
    }
}

/// A fresh Ed25519 key pair as (PKCS#8 private PEM, SPKI public PEM).
pub fn generate_keypair() -> Result<(String, String), TokenError> {
    use ed25519_dalek::pkcs8::{spki::der::pem::LineEnding, EncodePrivateKey, EncodePublicKey};
    let signing = ed25519_dalek::SigningKey::generate(&mut rand::rngs::OsRng);
    let private = signing
        .to_pkcs8_pem(LineEnding::LF)
        .map_err(|e| TokenError::Key(e.to_string()))?;
    let public = signing
        .verifying_key()
        .to_public_key_pem(LineEnding::LF)
        .map_err(|e| TokenError::Key(e.to_string()))?;
    Ok((private.to_string(), public))
}

/// The SPKI PEM public key of a PKCS#8 PEM private key (core-api verifies its own API
/// tokens with it).
pub fn public_pem_of(private_pem: &str) -> Result<String, TokenError> {
    use ed25519_dalek::pkcs8::{spki::der::pem::LineEnding, DecodePrivateKey, EncodePublicKey};
    let signing = ed25519_dalek::SigningKey::from_pkcs8_pem(private_pem)
        .map_err(|e| TokenError::Key(e.to_string()))?;
    signing
        .verifying_key()
        .to_public_key_pem(LineEnding::LF)
        .map_err(|e| TokenError::Key(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pair() -> (TokenSigner, TokenVerifier) {
        let (private, public) = generate_keypair().unwrap();
        (
            TokenSigner::from_pem(private.as_bytes()).unwrap(),
            TokenVerifier::from_pem(public.as_bytes(), AUD_EDGE).unwrap(),
        )
    }

    #[test]
    fn public_key_derives_from_private() {
        let (private, public) = generate_keypair().unwrap();
        assert_eq!(public_pem_of(&private).unwrap(), public);
    }

    #[test]
    fn round_trip() {
        let (s, v) = pair();
        let c = Claims::new(Uuid::new_v4(), Uuid::new_v4(), Role::Agent, AUD_EDGE, 60);
        assert_eq!(v.verify(&s.sign(&c).unwrap()).unwrap(), c);
    }

    #[test]
    fn wrong_audience_and_expired_are_refused() {
        let (s, v) = pair();
        let api = Claims::new(Uuid::new_v4(), Uuid::new_v4(), Role::Agent, AUD_API, 60);
        assert!(v.verify(&s.sign(&api).unwrap()).is_err());
        let mut old = Claims::new(Uuid::new_v4(), Uuid::new_v4(), Role::Agent, AUD_EDGE, 0);
        old.exp -= 3600;
        assert!(v.verify(&s.sign(&old).unwrap()).is_err());
    }

    #[test]
    fn other_key_and_hs256_are_refused() {
        let (s, _) = pair();
        let (_, v) = pair();
        let c = Claims::new(Uuid::new_v4(), Uuid::new_v4(), Role::Visitor, AUD_EDGE, 60);
        assert!(v.verify(&s.sign(&c).unwrap()).is_err());
        let hs =
            jsonwebtoken::encode(&Header::default(), &c, &EncodingKey::from_secret(b"k")).unwrap();
        assert!(v.verify(&hs).is_err());
    }

    #[test]
    fn version_and_session_are_optional() {
        let (s, v) = pair();
        let mut c = Claims::new(Uuid::new_v4(), Uuid::new_v4(), Role::Agent, AUD_EDGE, 60);
        assert_eq!(c.version(), 0);
        c.ver = Some(3);
        c.sid = Some(Uuid::new_v4());
        let back = v.verify(&s.sign(&c).unwrap()).unwrap();
        assert_eq!(back.version(), 3);
        assert_eq!(back.sid, c.sid);
    }

    #[test]
    fn origins() {
        let mut c = Claims::new(Uuid::nil(), Uuid::nil(), Role::Visitor, AUD_EDGE, 60);
        assert!(c.origin_allowed(Some("https://a.test")));
        c.origins = Some(vec!["https://a.test".into()]);
        assert!(c.origin_allowed(Some("https://a.test")));
        assert!(!c.origin_allowed(Some("https://evil.test")));
        assert!(!c.origin_allowed(None));
    }
}
