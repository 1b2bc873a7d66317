//! Who is calling: password hashing (argon2id) and access tokens (HS256 JWT)
//! for users; API keys for backends.

pub mod apikey;
mod password;
mod token;

pub use apikey::{ApiCaller, ApiKeys};
pub use password::{hash_password, verify_password};
pub use token::{Caller, Claims, Tokens, DEFAULT_AUDIENCE, DEFAULT_ISSUER};
