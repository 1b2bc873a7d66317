//! Who is calling: password hashing (argon2id) and access tokens (HS256 JWT).

mod password;
mod token;

pub use password::{hash_password, verify_password};
pub use token::{Caller, Claims, Tokens};
