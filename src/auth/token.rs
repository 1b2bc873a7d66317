//! Access tokens: HS256 JWTs signed with the secret every node shares, so any
//! node can check a token another node issued without asking anyone.

use std::time::Duration;

use bson::oid::ObjectId;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Claims {
    /// The user id (hex ObjectId).
    pub sub: String,
    pub username: String,
    pub iat: u64,
    pub exp: u64,
}

#[derive(Clone)]
pub struct Tokens {
    encoding: EncodingKey,
    decoding: DecodingKey,
    validation: Validation,
    ttl: Duration,
}

/// The caller behind a verified token.
#[derive(Debug, Clone)]
pub struct Caller {
    pub user_id: ObjectId,
    pub username: String,
}

impl Tokens {
    pub fn new(secret: &str, ttl: Duration) -> Self {
        let mut validation = Validation::new(Algorithm::HS256);
        validation.leeway = 5;
        validation.set_required_spec_claims(&["exp", "sub"]);
        Tokens {
            encoding: EncodingKey::from_secret(secret.as_bytes()),
            decoding: DecodingKey::from_secret(secret.as_bytes()),
            validation,
            ttl,
        }
    }

    pub fn ttl(&self) -> Duration {
        self.ttl
    }

    pub fn issue(&self, user_id: ObjectId, username: &str) -> Result<String> {
        let now = jsonwebtoken::get_current_timestamp();
        let claims =
            Claims { sub: user_id.to_hex(), username: username.to_string(), iat: now, exp: now + self.ttl.as_secs() };
        jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &self.encoding)
            .map_err(|e| Error::Internal(format!("token signing failed: {e}").into()))
    }

    pub fn verify(&self, token: &str) -> Result<Caller> {
        let data = jsonwebtoken::decode::<Claims>(token, &self.decoding, &self.validation)
            .map_err(|_| Error::Unauthorized("invalid or expired access token".into()))?;
        let user_id = ObjectId::parse_str(&data.claims.sub)
            .map_err(|_| Error::Unauthorized("invalid or expired access token".into()))?;
        Ok(Caller { user_id, username: data.claims.username })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn issued_tokens_verify_and_foreign_ones_do_not() {
        let tokens = Tokens::new(&"s".repeat(32), Duration::from_secs(60));
        let id = ObjectId::new();
        let caller = tokens.verify(&tokens.issue(id, "bob").unwrap()).unwrap();
        assert_eq!((caller.user_id, caller.username.as_str()), (id, "bob"));
        let other = Tokens::new(&"t".repeat(32), Duration::from_secs(60));
        assert!(other.verify(&tokens.issue(id, "bob").unwrap()).is_err());
        assert!(tokens.verify("garbage").is_err());
    }

    #[test]
    fn expired_tokens_are_refused() {
        let tokens = Tokens::new(&"s".repeat(32), Duration::from_secs(60));
        let claims = Claims { sub: ObjectId::new().to_hex(), username: "bob".into(), iat: 0, exp: 1 };
        let stale = jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &tokens.encoding).unwrap();
        assert_eq!(tokens.verify(&stale).unwrap_err().status().as_u16(), 401);
    }
}
