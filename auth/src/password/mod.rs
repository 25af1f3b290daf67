//! Password hashing (Argon2id, PHC strings) and the strength rules of registration.
//!
//! Hashing and verifying cost about the same (one Argon2id run with the OWASP parameters),
//! which is what makes [`verify_password_async`] with no stored hash indistinguishable, by
//! answer and by time, from a wrong password: it verifies against a dummy hash with the same
//! parameters instead of returning early.

mod strength;

use std::sync::OnceLock;

use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::{Algorithm, Argon2, Params, Version};
use rand::rngs::OsRng;
use tracing::error;

pub use strength::{
    check_password_strength, WeakPassword, MAX_PASSWORD_CHARS, MIN_DISTINCT_CHARS,
    MIN_PASSWORD_CHARS,
};

/// Argon2id memory cost in KiB (OWASP password storage cheat sheet: m=19456, t=2, p=1).
pub const ARGON2_M_COST_KIB: u32 = 19_456;
/// Argon2id iterations.
pub const ARGON2_T_COST: u32 = 2;
/// Argon2id lanes.
pub const ARGON2_P_COST: u32 = 1;

/// Why a password could not be hashed. Verification never fails: it answers `false`.
#[derive(Debug, thiserror::Error)]
pub enum PasswordError {
    /// Argon2 refused the parameters or the input (for example a password over 4 GiB).
    #[error("password hashing failed")]
    Hash(#[source] argon2::password_hash::Error),
    /// The blocking task that ran the hash did not complete (the runtime is shutting down).
    #[error("password hashing task did not complete")]
    Worker(#[source] tokio::task::JoinError),
}

/// The Argon2id hasher with the OWASP parameters. Verification reads the parameters from the
/// stored PHC string instead, so hashes made with older parameters keep verifying.
fn hasher() -> Result<Argon2<'static>, PasswordError> {
    let params = Params::new(ARGON2_M_COST_KIB, ARGON2_T_COST, ARGON2_P_COST, None)
        .map_err(|e| PasswordError::Hash(e.into()))?;
    Ok(Argon2::new(Algorithm::Argon2id, Version::V0x13, params))
}

/// Hashes `password` with Argon2id and a fresh random salt; returns the PHC string
/// (`$argon2id$v=19$m=19456,t=2,p=1$<salt>$<hash>`). Takes tens of milliseconds of CPU: from
/// async code use [`hash_password_async`].
///
/// # Errors
/// [`PasswordError::Hash`] when Argon2 rejects the input; not expected for any password that
/// fits in a request body.
pub fn hash_password(password: &str) -> Result<String, PasswordError> {
    let salt = SaltString::generate(&mut OsRng);
    let hash = hasher()?
        .hash_password(password.as_bytes(), &salt)
        .map_err(PasswordError::Hash)?;
    Ok(hash.to_string())
}

/// Whether `password` matches the PHC string `phc`. A malformed `phc` answers `false` (and
/// is logged: a stored hash that does not parse needs an operator). CPU heavy like
/// [`hash_password`].
pub fn verify_password(password: &str, phc: &str) -> bool {
    let parsed = match PasswordHash::new(phc) {
        Ok(parsed) => parsed,
        Err(e) => {
            error!(error = %e, "Stored password hash does not parse; login refused.");
            return false;
        }
    };
    Argon2::default()
        .verify_password(password.as_bytes(), &parsed)
        .is_ok()
}

/// Burns the time of one [`verify_password`] and answers `false`: what login does when the
/// user does not exist, so that an unknown user and a wrong password take the same time.
pub fn verify_dummy_password(password: &str) -> bool {
    // The result is ignored on purpose: the dummy password is never a valid credential.
    let _ = verify_password(password, dummy_phc());
    false
}

/// Computes the dummy hash now rather than on the first login of an unknown user (whose
/// answer would otherwise take two hashes). Optional; call it at start-up, off the async
/// threads if you care about the tens of milliseconds.
pub fn prepare_dummy_hash() {
    let _ = dummy_phc();
}

/// A hash of a fixed password, made once per process with the same parameters as every new
/// hash, so verifying against it costs what a real verification costs.
fn dummy_phc() -> &'static str {
    static DUMMY: OnceLock<String> = OnceLock::new();
    DUMMY.get_or_init(|| {
        hash_password("hybrid-live: no such user").unwrap_or_else(|e| {
            // Unreachable with constant parameters; without a dummy the unknown-user path is
            // faster, which leaks existence by timing but stays correct.
            error!(error = %e, "Could not compute the dummy password hash.");
            String::new()
        })
    })
}

/// [`hash_password`] on the blocking thread pool, so the async workers keep serving.
///
/// # Errors
/// As [`hash_password`], plus [`PasswordError::Worker`] if the task does not complete.
pub async fn hash_password_async(password: String) -> Result<String, PasswordError> {
    tokio::task::spawn_blocking(move || hash_password(&password))
        .await
        .map_err(PasswordError::Worker)?
}

/// The login check, on the blocking thread pool: verifies `password` against the stored
/// hash, or, when there is no such user (`phc` is `None`), against the dummy hash, so both
/// failures give the same answer in the same time.
///
/// # Errors
/// [`PasswordError::Worker`] if the task does not complete; a wrong password is `Ok(false)`.
pub async fn verify_password_async(
    password: String,
    phc: Option<String>,
) -> Result<bool, PasswordError> {
    tokio::task::spawn_blocking(move || match phc {
        Some(phc) => verify_password(&password, &phc),
        None => verify_dummy_password(&password),
    })
    .await
    .map_err(PasswordError::Worker)
}
