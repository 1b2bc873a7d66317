//! Access tokens: HS256 JWTs signed with the secret every node shares, so any
//! node can check a token another node issued without asking anyone.
//!
//! Each token names its key in the header (`kid`, a short hash of the
//! secret): a node signs with `jwt_secret` and still accepts tokens signed
//! with any of `jwt_previous_secrets`, so the secret can be rotated without
//! logging anyone out (add the new one, move the old one to the previous
//! list, drop it once its tokens have expired). Claims: `iss`, `aud`,
//! `sub`, `iat`, `exp`, a random `jti`, all checked except `jti`, and `sid`,
//! the login session the token belongs to (see `sessions`), absent only
//! from tokens minted outside a login (`confab token`).

use std::time::Duration;

use bson::oid::ObjectId;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::error::{Error, Result};

pub use crate::config::{DEFAULT_JWT_AUDIENCE as DEFAULT_AUDIENCE, DEFAULT_JWT_ISSUER as DEFAULT_ISSUER};

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Claims {
    pub iss: String,
    pub aud: String,
    /// The user id (hex ObjectId).
    pub sub: String,
    pub username: String,
    pub iat: u64,
    pub exp: u64,
    /// Random, unique per token.
    pub jti: String,
    /// The session (hex ObjectId), for tokens issued at login or refresh.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sid: Option<String>,
}

/// A key tokens are checked with, under its `kid`.
#[derive(Clone)]
struct Key {
    kid: String,
    decoding: DecodingKey,
}

#[derive(Clone)]
pub struct Tokens {
    kid: String,
    encoding: EncodingKey,
    /// The current key first, then the previous ones.
    keys: Vec<Key>,
    validation: Validation,
    issuer: String,
    audience: String,
    ttl: Duration,
}

/// The caller behind a verified token.
#[derive(Debug, Clone)]
pub struct Caller {
    pub user_id: ObjectId,
    pub username: String,
    /// The login session the token belongs to; `None` for a minted token.
    pub session: Option<ObjectId>,
    /// When the token expires, Unix seconds.
    pub expires_at: u64,
}

impl Caller {
    /// A caller acting for the server itself, not through a token.
    pub fn system(user_id: ObjectId, username: &str) -> Caller {
        Caller { user_id, username: username.to_string(), session: None, expires_at: u64::MAX }
    }
}

/// A secret's key id: the first 8 bytes of its SHA-256, in hex. It names
/// the key without revealing it.
fn kid(secret: &str) -> String {
    hex::encode(&Sha256::digest(secret.as_bytes())[..8])
}

fn invalid() -> Error {
    Error::Unauthorized("invalid or expired access token".into())
}

impl Tokens {
    /// Tokens signed with `secret`, with the default issuer and audience.
    pub fn new(secret: &str, ttl: Duration) -> Self {
        Tokens::with(secret, &[], DEFAULT_ISSUER, DEFAULT_AUDIENCE, ttl)
    }

    /// Tokens signed with `secret`; tokens signed with any of `previous`
    /// are still accepted.
    pub fn with(secret: &str, previous: &[String], issuer: &str, audience: &str, ttl: Duration) -> Self {
        let mut validation = Validation::new(Algorithm::HS256);
        validation.leeway = 5;
        validation.set_required_spec_claims(&["exp", "sub", "iss", "aud"]);
        validation.set_issuer(&[issuer]);
        validation.set_audience(&[audience]);
        let keys = std::iter::once(secret)
            .chain(previous.iter().map(String::as_str))
            .map(|s| Key { kid: kid(s), decoding: DecodingKey::from_secret(s.as_bytes()) })
            .collect();
        Tokens {
            kid: kid(secret),
            encoding: EncodingKey::from_secret(secret.as_bytes()),
            keys,
            validation,
            issuer: issuer.to_string(),
            audience: audience.to_string(),
            ttl,
        }
    }

    pub fn ttl(&self) -> Duration {
        self.ttl
    }

    /// A token for `user_id`, of `session` if it belongs to one.
    pub fn issue(&self, user_id: ObjectId, username: &str, session: Option<ObjectId>) -> Result<String> {
        let now = jsonwebtoken::get_current_timestamp();
        let claims = Claims {
            iss: self.issuer.clone(),
            aud: self.audience.clone(),
            sub: user_id.to_hex(),
            username: username.to_string(),
            iat: now,
            exp: now + self.ttl.as_secs(),
            jti: hex::encode(rand::random::<[u8; 16]>()),
            sid: session.map(|s| s.to_hex()),
        };
        let mut header = Header::new(Algorithm::HS256);
        header.kid = Some(self.kid.clone());
        jsonwebtoken::encode(&header, &claims, &self.encoding)
            .map_err(|e| Error::Internal(format!("token signing failed: {e}").into()))
    }

    pub fn verify(&self, token: &str) -> Result<Caller> {
        let header = jsonwebtoken::decode_header(token).map_err(|_| invalid())?;
        let kid = header.kid.ok_or_else(invalid)?;
        let key = self.keys.iter().find(|k| k.kid == kid).ok_or_else(invalid)?;
        let data = jsonwebtoken::decode::<Claims>(token, &key.decoding, &self.validation).map_err(|_| invalid())?;
        let claims = data.claims;
        let user_id = ObjectId::parse_str(&claims.sub).map_err(|_| invalid())?;
        let session = match &claims.sid {
            Some(sid) => Some(ObjectId::parse_str(sid).map_err(|_| invalid())?),
            None => None,
        };
        Ok(Caller { user_id, username: claims.username, session, expires_at: claims.exp })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secret(c: char) -> String {
        c.to_string().repeat(32)
    }

    #[test]
    fn issued_tokens_verify_and_foreign_ones_do_not() {
        let tokens = Tokens::new(&secret('s'), Duration::from_secs(60));
        let id = ObjectId::new();
        let token = tokens.issue(id, "bob", None).unwrap();
        let caller = tokens.verify(&token).unwrap();
        assert_eq!((caller.user_id, caller.username.as_str()), (id, "bob"));
        let other = Tokens::new(&secret('t'), Duration::from_secs(60));
        assert!(other.verify(&token).is_err());
        assert!(tokens.verify("garbage").is_err());
        assert_ne!(tokens.issue(id, "bob", None).unwrap(), token, "a fresh jti each time");
    }

    #[test]
    fn claims_and_key_id_are_as_documented() {
        let tokens = Tokens::new(&secret('s'), Duration::from_secs(60));
        let token = tokens.issue(ObjectId::new(), "bob", None).unwrap();
        let header = jsonwebtoken::decode_header(&token).unwrap();
        assert_eq!(header.kid.as_deref(), Some(kid(&secret('s')).as_str()));
        assert_eq!(header.kid.unwrap().len(), 16);
        let key = DecodingKey::from_secret(secret('s').as_bytes());
        let mut v = Validation::new(Algorithm::HS256);
        v.validate_aud = false;
        let claims = jsonwebtoken::decode::<Claims>(&token, &key, &v).unwrap().claims;
        assert_eq!((claims.iss.as_str(), claims.aud.as_str()), ("confab", "confab"));
        assert_eq!(claims.exp - claims.iat, 60);
        assert_eq!(claims.jti.len(), 32);
        assert!(claims.sid.is_none(), "a minted token has no session");
        let session = ObjectId::new();
        let caller = tokens.verify(&tokens.issue(ObjectId::new(), "bob", Some(session)).unwrap()).unwrap();
        assert_eq!(caller.session, Some(session));
        assert!(caller.expires_at >= jsonwebtoken::get_current_timestamp() + 59);
    }

    #[test]
    fn a_rotated_secret_still_verifies_its_tokens_until_dropped() {
        let old = Tokens::new(&secret('o'), Duration::from_secs(60));
        let old_token = old.issue(ObjectId::new(), "bob", None).unwrap();
        let rotated = Tokens::with(&secret('n'), &[secret('o')], "confab", "confab", Duration::from_secs(60));
        assert!(rotated.verify(&old_token).is_ok(), "signed with a previous secret");
        let new_token = rotated.issue(ObjectId::new(), "amy", None).unwrap();
        assert!(rotated.verify(&new_token).is_ok());
        assert!(old.verify(&new_token).is_err(), "signed with the new one");
        let dropped = Tokens::new(&secret('n'), Duration::from_secs(60));
        assert!(dropped.verify(&old_token).is_err());
        assert!(dropped.verify(&new_token).is_ok());
    }

    /// A token signed with the right key but claims of its own making.
    fn forged(tokens: &Tokens, claims: &Claims, kid: Option<&str>) -> String {
        let mut header = Header::new(Algorithm::HS256);
        header.kid = kid.map(str::to_string);
        jsonwebtoken::encode(&header, claims, &tokens.encoding).unwrap()
    }

    #[test]
    fn expired_tokens_and_wrong_claims_are_refused() {
        let tokens = Tokens::new(&secret('s'), Duration::from_secs(60));
        let now = jsonwebtoken::get_current_timestamp();
        let good = Claims {
            iss: "confab".into(),
            aud: "confab".into(),
            sub: ObjectId::new().to_hex(),
            username: "bob".into(),
            iat: now,
            exp: now + 60,
            jti: "x".into(),
            sid: None,
        };
        let kid = kid(&secret('s'));
        assert!(tokens.verify(&forged(&tokens, &good, Some(&kid))).is_ok());
        assert!(tokens.verify(&forged(&tokens, &good, None)).is_err(), "no kid");
        assert!(tokens.verify(&forged(&tokens, &good, Some("0011223344556677"))).is_err(), "unknown kid");
        let stale = Claims { iat: 0, exp: 1, ..good.clone() };
        assert_eq!(tokens.verify(&forged(&tokens, &stale, Some(&kid))).unwrap_err().status().as_u16(), 401);
        let other_issuer = Claims { iss: "elsewhere".into(), ..good.clone() };
        assert!(tokens.verify(&forged(&tokens, &other_issuer, Some(&kid))).is_err());
        let other_audience = Claims { aud: "elsewhere".into(), ..good.clone() };
        assert!(tokens.verify(&forged(&tokens, &other_audience, Some(&kid))).is_err());
        let configured = Tokens::with(&secret('s'), &[], "chat.example", "chat-api", Duration::from_secs(60));
        assert!(configured.verify(&forged(&tokens, &good, Some(&kid))).is_err(), "default claims, other settings");
        assert!(configured.verify(&configured.issue(ObjectId::new(), "amy", None).unwrap()).is_ok());
    }
}
