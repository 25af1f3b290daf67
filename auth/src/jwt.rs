//! Access tokens: short-lived HS256 JWTs carrying the user id and roles.
//!
//! Verification pins the algorithm to HS256, so a token whose header says `none`, `HS512` or
//! any asymmetric algorithm is refused before its signature is even looked at; it requires
//! `exp`, `iss` and `sub`, checks the issuer, and allows [`LEEWAY_SECS`] of clock skew.

use std::fmt;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// Lifetime of an access token unless configured otherwise (DESIGN §8: 15 minutes).
pub const DEFAULT_ACCESS_TTL: Duration = Duration::from_secs(15 * 60);
/// Clock skew tolerated on `exp`, in seconds.
pub const LEEWAY_SECS: u64 = 5;
/// Shortest secret accepted outside the dev profile: 256 bits, the HS256 output size.
pub const MIN_SECRET_BYTES: usize = 32;
/// The secret the dev profile uses when `JWT_SECRET` is unset. Public, hence worthless:
/// [`check_secret`] refuses it.
pub const DEV_SECRET: &[u8] = b"hybrid-live-dev-secret-not-for-production-use";

/// Whether `secret` is [`DEV_SECRET`].
pub fn is_default_secret(secret: &[u8]) -> bool {
    secret == DEV_SECRET
}

/// Why a signing secret is refused outside the dev profile.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SecretError {
    /// The secret is the published [`DEV_SECRET`].
    #[error("JWT secret is the published development default; set JWT_SECRET")]
    Default,
    /// The secret is shorter than [`MIN_SECRET_BYTES`].
    #[error("JWT secret has {len} bytes; at least {min} are required")]
    TooShort {
        /// Its length in bytes.
        len: usize,
        /// [`MIN_SECRET_BYTES`].
        min: usize,
    },
}

/// What the binary calls before serving outside the dev profile.
///
/// # Errors
/// [`SecretError::Default`] for [`DEV_SECRET`], [`SecretError::TooShort`] under
/// [`MIN_SECRET_BYTES`] bytes.
pub fn check_secret(secret: &[u8]) -> Result<(), SecretError> {
    if is_default_secret(secret) {
        return Err(SecretError::Default);
    }
    if secret.len() < MIN_SECRET_BYTES {
        return Err(SecretError::TooShort {
            len: secret.len(),
            min: MIN_SECRET_BYTES,
        });
    }
    Ok(())
}

/// The claims of an access token.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AccessClaims {
    /// The user.
    pub sub: Uuid,
    /// The user's roles (`auditor`, `admin`) when the token was issued.
    pub roles: Vec<String>,
    /// Issued at, seconds since the Unix epoch.
    pub iat: u64,
    /// Expires at, seconds since the Unix epoch.
    pub exp: u64,
    /// The issuer the keys were configured with.
    pub iss: String,
    /// A unique token id, for logs.
    pub jti: Uuid,
}

impl AccessClaims {
    /// Whether the token carries `role`.
    pub fn has_role(&self, role: &str) -> bool {
        self.roles.iter().any(|r| r == role)
    }
}

/// Why an access token was refused. Both variants are the same 401 for the client; they are
/// distinct only for logs.
#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    /// Well-formed and correctly signed, but past `exp` (plus the leeway).
    #[error("access token expired")]
    Expired,
    /// Anything else: malformed, bad signature, wrong algorithm or issuer, missing claims.
    #[error("access token invalid")]
    Invalid(#[source] jsonwebtoken::errors::Error),
}

/// Why an access token could not be issued.
#[derive(Debug, thiserror::Error)]
pub enum IssueError {
    /// The system clock is before 1970.
    #[error("system clock is before the Unix epoch")]
    Clock,
    /// Encoding or signing failed.
    #[error("access token signing failed")]
    Sign(#[source] jsonwebtoken::errors::Error),
}

/// The signing and verification keys of access tokens, with their lifetime and issuer.
/// Cheap to share behind an `Arc`; build once at start-up.
#[derive(Clone)]
pub struct JwtKeys {
    encoding: EncodingKey,
    decoding: DecodingKey,
    validation: Validation,
    access_ttl: Duration,
    issuer: String,
}

impl fmt::Debug for JwtKeys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("JwtKeys")
            .field("secret", &"[redacted]")
            .field("access_ttl", &self.access_ttl)
            .field("issuer", &self.issuer)
            .finish()
    }
}

impl JwtKeys {
    /// Keys for HS256 with `secret`. Does not judge the secret: the binary calls
    /// [`check_secret`] outside the dev profile.
    pub fn new(secret: &[u8], access_ttl: Duration, issuer: &str) -> Self {
        // jsonwebtoken picks its crypto backend from crate features and panics at first use if
        // feature unification ever enables a second one. Installing ours explicitly removes
        // that trap; an `Err` means a provider is already installed, which is fine.
        let _ = jsonwebtoken::crypto::CryptoProvider::install_default(
            &jsonwebtoken::crypto::rust_crypto::DEFAULT_PROVIDER,
        );

        let mut validation = Validation::new(Algorithm::HS256);
        validation.leeway = LEEWAY_SECS;
        validation.validate_exp = true;
        validation.set_required_spec_claims(&["exp", "iss", "sub"]);
        validation.set_issuer(&[issuer]);
        Self {
            encoding: EncodingKey::from_secret(secret),
            decoding: DecodingKey::from_secret(secret),
            validation,
            access_ttl,
            issuer: issuer.to_owned(),
        }
    }

    /// The configured access token lifetime.
    pub fn access_ttl(&self) -> Duration {
        self.access_ttl
    }

    /// Issues an access token for `user_id` with `roles`; returns it with its lifetime in
    /// seconds (the API's `expires_in`).
    ///
    /// # Errors
    /// [`IssueError`] if the clock is before 1970 or signing fails; neither is expected.
    pub fn issue(&self, user_id: Uuid, roles: &[String]) -> Result<(String, u64), IssueError> {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_err(|_| IssueError::Clock)?
            .as_secs();
        let expires_in = self.access_ttl.as_secs();
        let claims = AccessClaims {
            sub: user_id,
            roles: roles.to_vec(),
            iat: now,
            exp: now.saturating_add(expires_in),
            iss: self.issuer.clone(),
            jti: Uuid::new_v4(),
        };
        let token = jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &self.encoding)
            .map_err(IssueError::Sign)?;
        Ok((token, expires_in))
    }

    /// Verifies `token` and returns its claims.
    ///
    /// # Errors
    /// [`TokenError::Expired`] past `exp` plus [`LEEWAY_SECS`]; [`TokenError::Invalid`] for
    /// everything else.
    pub fn verify(&self, token: &str) -> Result<AccessClaims, TokenError> {
        jsonwebtoken::decode::<AccessClaims>(token, &self.decoding, &self.validation)
            .map(|data| data.claims)
            .map_err(|e| match e.kind() {
                ErrorKind::ExpiredSignature => TokenError::Expired,
                _ => TokenError::Invalid(e),
            })
    }
}
