//! Server API keys: how a backend, rather than a user, calls Confab.
//!
//! A key reads `ck_<id>_<secret>`. The id is the key document's `_id`, so
//! checking a key is one primary-key lookup (cheap on every MongoDB-compatible
//! server) and needs no index on secrets. The secret is 32 random bytes from
//! the operating system; only its SHA-256 is stored. A fast hash is enough
//! here, unlike for passwords: 256 random bits cannot be guessed from their
//! hash however fast the guessing, and a slow hash would cost every API
//! request its time. The key itself is shown once, when it is made.

use std::sync::Arc;

use bson::oid::ObjectId;
use chrono::Utc;
use rand::RngCore;
use sha2::{Digest, Sha256};

use crate::error::{Error, Result};
use crate::store::{ApiKey, Store};

/// Every key starts with this, so a leaked one is easy to recognise.
pub const PREFIX: &str = "ck_";

/// A key just made: the stored document and the key to hand out, once.
pub struct Minted {
    pub key: ApiKey,
    pub plaintext: String,
}

/// Who is calling the server API.
#[derive(Debug, Clone)]
pub struct ApiCaller {
    pub key_id: ObjectId,
    pub name: String,
}

fn secret_hash(secret: &str) -> String {
    Sha256::digest(secret.as_bytes()).iter().map(|b| format!("{b:02x}")).collect()
}

/// Compares without stopping at the first difference.
fn same(a: &str, b: &str) -> bool {
    a.len() == b.len() && a.bytes().zip(b.bytes()).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Splits `ck_<id>_<secret>` into id and secret.
pub fn parse(raw: &str) -> Option<(ObjectId, &str)> {
    let (id, secret) = raw.strip_prefix(PREFIX)?.split_once('_')?;
    let id = ObjectId::parse_str(id).ok()?;
    (secret.len() == 64 && secret.bytes().all(|b| b.is_ascii_hexdigit())).then_some((id, secret))
}

/// Makes a new key named `name` (1–64 characters, no control characters).
pub fn mint(name: &str) -> Result<Minted> {
    let name = name.trim();
    if name.is_empty() || name.chars().count() > 64 || name.chars().any(char::is_control) {
        return Err(Error::invalid("name", "must be 1 to 64 characters without control characters"));
    }
    let mut bytes = [0u8; 32];
    rand::rngs::OsRng.fill_bytes(&mut bytes);
    let secret: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    let id = ObjectId::new();
    let key =
        ApiKey { id, name: name.to_string(), hash: secret_hash(&secret), created_at: Utc::now(), revoked_at: None };
    Ok(Minted { key, plaintext: format!("{PREFIX}{}_{secret}", id.to_hex()) })
}

/// The server API's keys, as stored.
pub struct ApiKeys {
    store: Arc<Store>,
}

impl ApiKeys {
    pub fn new(store: Arc<Store>) -> Self {
        ApiKeys { store }
    }

    /// Every key, revoked ones included.
    pub async fn list(&self) -> Result<Vec<ApiKey>> {
        Ok(self.store.api_keys().await?)
    }

    /// Stores a new key; the caller shows `plaintext` once.
    pub async fn create(&self, name: &str) -> Result<Minted> {
        let minted = mint(name)?;
        self.store.insert_api_key(&minted.key).await?;
        Ok(minted)
    }

    /// The caller behind a key; 401 for a key that is malformed, unknown,
    /// wrong or revoked (all alike, so a caller learns nothing from which).
    pub async fn authenticate(&self, raw: &str) -> Result<ApiCaller> {
        let invalid = || Error::Unauthorized("invalid or revoked API key".into());
        let (id, secret) = parse(raw.trim()).ok_or_else(invalid)?;
        let key = self.store.api_key(id).await?.ok_or_else(invalid)?;
        if key.revoked_at.is_some() || !same(&key.hash, &secret_hash(secret)) {
            return Err(invalid());
        }
        Ok(ApiCaller { key_id: key.id, name: key.name })
    }

    /// Revokes a key given by id or as the whole key. Returns its id and
    /// whether this call revoked it (false: it already was).
    pub async fn revoke(&self, id_or_key: &str) -> Result<(ObjectId, bool)> {
        let raw = id_or_key.trim();
        let id = match parse(raw) {
            Some((id, _)) => id,
            None => ObjectId::parse_str(raw)
                .map_err(|_| Error::BadRequest(format!("`{raw}` is neither a key id nor a key")))?,
        };
        if self.store.api_key(id).await?.is_none() {
            return Err(Error::NotFound(format!("no API key with id {}", id.to_hex())));
        }
        Ok((id, self.store.revoke_api_key(id, Utc::now()).await?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn minted_keys_parse_and_match_only_their_own_hash() {
        let m = mint("billing").unwrap();
        let (id, secret) = parse(&m.plaintext).unwrap();
        assert_eq!(id, m.key.id);
        assert!(same(&m.key.hash, &secret_hash(secret)));
        assert!(!m.plaintext.contains(&m.key.hash), "the stored hash is not the secret");
        let other = mint("billing").unwrap();
        assert_ne!(other.plaintext, m.plaintext);
        assert!(!same(&m.key.hash, &other.key.hash));
    }

    #[test]
    fn malformed_keys_do_not_parse() {
        let m = mint("x").unwrap();
        let (id, _) = parse(&m.plaintext).unwrap();
        for bad in [
            "",
            "ck_",
            &m.plaintext[3..],
            &m.plaintext[..m.plaintext.len() - 1],
            &format!("ck_{}_{}", id.to_hex(), "z".repeat(64)),
            &format!("ck_nothex_{}", "a".repeat(64)),
        ] {
            assert!(parse(bad).is_none(), "{bad}");
        }
    }

    #[test]
    fn names_are_checked() {
        assert!(mint("").is_err());
        assert!(mint("   ").is_err());
        assert!(mint(&"n".repeat(65)).is_err());
        assert!(mint("a\nb").is_err());
        assert_eq!(mint("  billing backend ").unwrap().key.name, "billing backend");
    }
}
