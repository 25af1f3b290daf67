//! Authentication primitives of Hybrid Live (DESIGN §8): password hashing and rules, access
//! tokens, refresh tokens.
//!
//! A library under `api` in the layering (DESIGN §2): it knows no HTTP framework, no event
//! store and no domain type; the `api` crate maps its errors to responses and the binary
//! checks its configuration. Its only IO is Redis, for refresh tokens. Used by `api`, the
//! binary and the end-to-end tests.
//!
//! Invariants:
//! - passwords are stored only as Argon2id PHC strings (m=19456 KiB, t=2, p=1); an unknown
//!   user costs the same verification as a wrong password and gets the same answer;
//! - access tokens are HS256 JWTs and nothing else is accepted: the algorithm is pinned, so
//!   `alg: none` and algorithm substitution fail; `exp` (5 s leeway), `iss` and `sub` are
//!   required;
//! - refresh tokens are 256 random bits, stored only as their SHA-256, every key with a
//!   TTL; a token works once: rotation is one atomic Redis script, and presenting a rotated
//!   token revokes its whole family;
//! - Redis failures are [`RefreshError::Unavailable`] or [`RefreshError::Backend`], never a
//!   panic, and never mistaken for an invalid token;
//! - secrets and tokens never reach logs or `Debug` output.
//!
//! Layout:
//! - [`password`]: [`hash_password`], [`verify_password`], the dummy verification, async
//!   wrappers on the blocking pool, and [`check_password_strength`];
//! - [`jwt`]: [`JwtKeys`] (issue and verify access tokens), [`AccessClaims`], the secret
//!   checks for start-up;
//! - [`refresh`]: [`RefreshTokens`] (issue, rotate, revoke) in Redis;
//! - [`account_token`]: the tokens of emailed links (verify an address, reset a password),
//!   MACs stored nowhere;
//! - [`totp`]: two-factor login (RFC 6238 codes, recovery codes).

pub mod account_token;
pub mod jwt;
pub mod password;
pub mod refresh;
pub mod totp;

pub use jwt::{AccessClaims, IssueError, JwtKeys, SecretError, TokenError};
pub use password::{
    check_password_strength, hash_password, hash_password_async, verify_dummy_password,
    verify_password, verify_password_async, PasswordError, WeakPassword,
};
pub use refresh::{RefreshError, RefreshTokens, Rotated};
