//! Refresh tokens: opaque, random, stored hashed in Redis, rotated on every use.
//!
//! A login starts a *family*; each rotation replaces the presented token by a new one of the
//! same family. Presenting a token that was already rotated means two parties hold it (the
//! legitimate client and a thief, in an unknown order), so the whole family is revoked:
//! both lose the session and the user logs in again. Logout revokes the family too.
//!
//! Keys, under the configured prefix `P` (every one with a TTL):
//! - `P` `refresh:token:<sha256 hex of the token>` → hash `{user, family, state}`, `state`
//!   `active` or `rotated`; expires one TTL after the token was issued. A rotated record is
//!   kept until then so that a reuse is detected for as long as the token could be used.
//! - `P` `refresh:family:<uuid>` → `active` or `revoked`; pushed one TTL ahead at every
//!   rotation, and a revoked marker lives one TTL, so it outlives every token of its family.
//! - `P` `refresh:session:<family>` → hash `{user, created, last_used, user_agent}`: the
//!   login as its person sees it (`GET /v1/me/sessions`); pushed one TTL ahead and its
//!   `last_used` set at every rotation.
//! - `P` `refresh:sessions:<user>` → sorted set of the person's families by creation;
//!   a family that expired or was revoked is dropped from it when the list is read.
//!
//! The raw token is never stored: a dump of Redis grants nothing.
//!
//! Concurrency: rotation is one Lua script, so Redis runs rotations one at a time. Of two
//! concurrent rotations of the same token, the first wins and the second is a reuse, which
//! revokes the family — including the token the winner just received. A client that retries a
//! refresh whose answer it lost is therefore logged out; that is the secure outcome, since
//! Redis cannot tell a retry from a replay.
//!
//! The scripts derive the family key from the token record, so they are for a single Redis
//! (or a primary with replicas), not Redis Cluster.

use std::fmt;
use std::fmt::Write as _;
use std::sync::LazyLock;
use std::time::Duration;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use rand::rngs::OsRng;
use rand::RngCore as _;
use redis::aio::ConnectionManager;
use redis::{ErrorKind, RedisError, Script, ServerErrorKind};
use sha2::{Digest as _, Sha256};
use tracing::{instrument, warn};
use uuid::Uuid;

/// Lifetime of a refresh token unless configured otherwise (DESIGN §8: 7 days).
pub const DEFAULT_REFRESH_TTL: Duration = Duration::from_secs(7 * 24 * 60 * 60);

/// Random bytes in a token: 256 bits.
const TOKEN_BYTES: usize = 32;
/// Length of a token: [`TOKEN_BYTES`] in unpadded base64url.
const TOKEN_CHARS: usize = 43;

static ROTATE: LazyLock<Script> = LazyLock::new(|| Script::new(include_str!("rotate.lua")));
static REVOKE: LazyLock<Script> = LazyLock::new(|| Script::new(include_str!("revoke.lua")));

/// Longest user agent kept with a session, in bytes (a longer one is cut).
const USER_AGENT_BYTES: usize = 256;

/// One login of a person, as `GET /v1/me/sessions` shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Session {
    /// The login's refresh-token family.
    pub id: Uuid,
    pub created_ms: i64,
    pub last_used_ms: i64,
    pub user_agent: String,
}

/// Why a refresh token was not accepted or the store could not answer.
#[derive(Debug, thiserror::Error)]
pub enum RefreshError {
    /// Unknown, malformed, expired, or of a revoked family (API: 401).
    #[error("refresh token is invalid, expired or revoked")]
    Invalid,
    /// Already rotated: presented a second time. Its whole family is now revoked (API: 401).
    #[error("refresh token was reused; its family is revoked")]
    Reused,
    /// Redis could not be reached or timed out (API: 503).
    #[error("refresh token store unavailable")]
    Unavailable(#[source] RedisError),
    /// Redis answered, but with an error or an unexpected reply: a bug or a misconfiguration
    /// (API: 500).
    #[error("refresh token store failed")]
    Backend(#[source] RedisError),
}

impl From<RedisError> for RefreshError {
    fn from(e: RedisError) -> Self {
        let transient = e.is_io_error()
            || e.is_cluster_error()
            || matches!(
                e.kind(),
                ErrorKind::Server(
                    ServerErrorKind::BusyLoading
                        | ServerErrorKind::MasterDown
                        | ServerErrorKind::ReadOnly
                )
            );
        if transient {
            Self::Unavailable(e)
        } else {
            Self::Backend(e)
        }
    }
}

/// The outcome of a successful rotation.
#[derive(Clone, PartialEq, Eq)]
pub struct Rotated {
    /// The user the token belongs to.
    pub user_id: Uuid,
    /// The new refresh token, to hand to the client; the presented one is spent.
    pub token: String,
}

impl fmt::Debug for Rotated {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Rotated")
            .field("user_id", &self.user_id)
            .field("token", &"[redacted]")
            .finish()
    }
}

/// The refresh token store. Cheap to clone (the connection manager is shared).
#[derive(Clone)]
pub struct RefreshTokens {
    conn: ConnectionManager,
    prefix: String,
    ttl: Duration,
}

impl fmt::Debug for RefreshTokens {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RefreshTokens")
            .field("prefix", &self.prefix)
            .field("ttl", &self.ttl)
            .finish_non_exhaustive()
    }
}

impl RefreshTokens {
    /// A store writing under `prefix` (for example `hl:`; tests use one prefix per test)
    /// whose tokens live `ttl` ([`DEFAULT_REFRESH_TTL`] in production).
    pub fn new(conn: ConnectionManager, prefix: String, ttl: Duration) -> Self {
        Self { conn, prefix, ttl }
    }

    /// The configured token lifetime.
    pub fn ttl(&self) -> Duration {
        self.ttl
    }

    /// Starts a new family for `user_id` (a login from `user_agent`) and returns its first
    /// token.
    ///
    /// # Errors
    /// [`RefreshError::Unavailable`] when Redis cannot be reached; [`RefreshError::Backend`]
    /// when it answers with an error.
    #[instrument(skip_all, fields(%user_id))]
    pub async fn issue(&self, user_id: Uuid, user_agent: &str) -> Result<String, RefreshError> {
        let token = new_token();
        let family = Uuid::new_v4();
        let ttl_ms = self.ttl_millis();
        let token_key = self.token_key(&token);
        let family_key = format!("{}{family}", self.family_prefix());
        let now = now_ms();
        let mut agent = user_agent.to_owned();
        if agent.len() > USER_AGENT_BYTES {
            let mut cut = USER_AGENT_BYTES;
            while !agent.is_char_boundary(cut) {
                cut -= 1;
            }
            agent.truncate(cut);
        }
        let mut conn = self.conn.clone();
        let () = redis::pipe()
            .atomic()
            .cmd("HSET")
            .arg(self.session_key(family))
            .arg("user")
            .arg(user_id.to_string())
            .arg("created")
            .arg(now)
            .arg("last_used")
            .arg(now)
            .arg("user_agent")
            .arg(&agent)
            .ignore()
            .cmd("PEXPIRE")
            .arg(self.session_key(family))
            .arg(ttl_ms)
            .ignore()
            .cmd("ZADD")
            .arg(self.sessions_key(user_id))
            .arg(now)
            .arg(family.to_string())
            .ignore()
            .cmd("PEXPIRE")
            .arg(self.sessions_key(user_id))
            .arg(ttl_ms)
            .ignore()
            .cmd("HSET")
            .arg(&token_key)
            .arg("user")
            .arg(user_id.to_string())
            .arg("family")
            .arg(family.to_string())
            .arg("state")
            .arg("active")
            .ignore()
            .cmd("PEXPIRE")
            .arg(&token_key)
            .arg(ttl_ms)
            .ignore()
            .cmd("SET")
            .arg(&family_key)
            .arg("active")
            .arg("PX")
            .arg(ttl_ms)
            .ignore()
            .query_async(&mut conn)
            .await?;
        Ok(token)
    }

    /// Spends `token` and returns its successor in the same family, in one atomic step.
    ///
    /// # Errors
    /// - [`RefreshError::Invalid`]: unknown, malformed, expired, or its family is revoked;
    /// - [`RefreshError::Reused`]: it was already rotated; the family is now revoked, so the
    ///   newest token of the family is [`RefreshError::Invalid`] from now on;
    /// - [`RefreshError::Unavailable`] / [`RefreshError::Backend`]: Redis failed; nothing
    ///   changed, or the rotation happened and its answer was lost (the client must log in).
    #[instrument(skip_all)]
    pub async fn rotate(&self, token: &str) -> Result<Rotated, RefreshError> {
        if !is_well_formed(token) {
            return Err(RefreshError::Invalid);
        }
        let successor = new_token();
        let mut conn = self.conn.clone();
        let (outcome, user): (String, String) = ROTATE
            .key(self.token_key(token))
            .key(self.token_key(&successor))
            .arg(self.family_prefix())
            .arg(self.ttl_millis())
            .arg(self.session_prefix())
            .arg(now_ms())
            .arg(format!("{}refresh:sessions:", self.prefix))
            .invoke_async(&mut conn)
            .await?;
        match outcome.as_str() {
            "rotated" => Ok(Rotated {
                user_id: parse_user(&user)?,
                token: successor,
            }),
            "reused" => {
                warn!(user_id = %user, "Refresh token reused; its family is revoked.");
                Err(RefreshError::Reused)
            }
            "invalid" => Err(RefreshError::Invalid),
            _ => Err(RefreshError::Backend(RedisError::from((
                ErrorKind::UnexpectedReturnType,
                "refresh rotation script returned an unknown outcome",
            )))),
        }
    }

    /// Logout: revokes the family of `token`, so neither it nor any token of its family
    /// works again. Idempotent; an unknown, malformed or expired token is `Ok` too, so that
    /// logout does not tell whether a token existed.
    ///
    /// # Errors
    /// [`RefreshError::Unavailable`] / [`RefreshError::Backend`] when Redis fails.
    #[instrument(skip_all)]
    pub async fn revoke(&self, token: &str) -> Result<(), RefreshError> {
        if !is_well_formed(token) {
            return Ok(());
        }
        let mut conn = self.conn.clone();
        let _revoked: i64 = REVOKE
            .key(self.token_key(token))
            .arg(self.family_prefix())
            .arg(self.ttl_millis())
            .invoke_async(&mut conn)
            .await?;
        Ok(())
    }

    /// The person's live logins, newest first. Families that expired or were revoked are
    /// dropped from the list as it is read.
    ///
    /// # Errors
    /// [`RefreshError::Unavailable`] / [`RefreshError::Backend`] when Redis fails.
    #[instrument(skip_all, fields(%user_id))]
    pub async fn sessions(&self, user_id: Uuid) -> Result<Vec<Session>, RefreshError> {
        let mut conn = self.conn.clone();
        let families: Vec<String> = redis::cmd("ZREVRANGE")
            .arg(self.sessions_key(user_id))
            .arg(0)
            .arg(-1)
            .query_async(&mut conn)
            .await?;
        let mut live = Vec::new();
        for family in families {
            let Ok(id) = Uuid::parse_str(&family) else {
                continue;
            };
            let (state, fields): (Option<String>, Vec<Option<String>>) = redis::pipe()
                .cmd("GET")
                .arg(format!("{}{id}", self.family_prefix()))
                .cmd("HMGET")
                .arg(self.session_key(id))
                .arg(&["user", "created", "last_used", "user_agent"])
                .query_async(&mut conn)
                .await?;
            let field = |i: usize| fields.get(i).cloned().flatten();
            let number = |i: usize| field(i).and_then(|v| v.parse::<i64>().ok());
            match (state.as_deref(), field(0), number(1), number(2)) {
                (Some("active"), Some(user), Some(created_ms), Some(last_used_ms))
                    if user == user_id.to_string() =>
                {
                    live.push(Session {
                        id,
                        created_ms,
                        last_used_ms,
                        user_agent: field(3).unwrap_or_default(),
                    });
                }
                _ => {
                    let _: i64 = redis::cmd("ZREM")
                        .arg(self.sessions_key(user_id))
                        .arg(&family)
                        .query_async(&mut conn)
                        .await?;
                }
            }
        }
        Ok(live)
    }

    /// Revokes `user_id`'s login `session` (its refresh-token family): every token of it
    /// stops working. False when the person has no such live login.
    ///
    /// # Errors
    /// [`RefreshError::Unavailable`] / [`RefreshError::Backend`] when Redis fails.
    #[instrument(skip_all, fields(%user_id, %session))]
    pub async fn revoke_session(&self, user_id: Uuid, session: Uuid) -> Result<bool, RefreshError> {
        if !self
            .sessions(user_id)
            .await?
            .iter()
            .any(|s| s.id == session)
        {
            return Ok(false);
        }
        let mut conn = self.conn.clone();
        let () = redis::pipe()
            .cmd("SET")
            .arg(format!("{}{session}", self.family_prefix()))
            .arg("revoked")
            .arg("PX")
            .arg(self.ttl_millis())
            .ignore()
            .cmd("ZREM")
            .arg(self.sessions_key(user_id))
            .arg(session.to_string())
            .ignore()
            .query_async(&mut conn)
            .await?;
        Ok(true)
    }

    /// Revokes every login of `user_id` (a password reset); returns how many were live.
    ///
    /// # Errors
    /// [`RefreshError::Unavailable`] / [`RefreshError::Backend`] when Redis fails.
    #[instrument(skip_all, fields(%user_id))]
    pub async fn revoke_all(&self, user_id: Uuid) -> Result<usize, RefreshError> {
        let mut revoked = 0;
        for session in self.sessions(user_id).await? {
            if self.revoke_session(user_id, session.id).await? {
                revoked += 1;
            }
        }
        Ok(revoked)
    }

    fn session_prefix(&self) -> String {
        format!("{}refresh:session:", self.prefix)
    }

    fn session_key(&self, family: Uuid) -> String {
        format!("{}{family}", self.session_prefix())
    }

    fn sessions_key(&self, user_id: Uuid) -> String {
        format!("{}refresh:sessions:{user_id}", self.prefix)
    }

    fn token_key(&self, token: &str) -> String {
        let digest = Sha256::digest(token.as_bytes());
        let mut key = format!("{}refresh:token:", self.prefix);
        for byte in digest {
            // Writing to a String cannot fail.
            let _ = write!(key, "{byte:02x}");
        }
        key
    }

    fn family_prefix(&self) -> String {
        format!("{}refresh:family:", self.prefix)
    }

    /// The TTL for `PX`/`PEXPIRE`: at least 1 ms, which Redis requires.
    fn ttl_millis(&self) -> u64 {
        u64::try_from(self.ttl.as_millis())
            .unwrap_or(u64::MAX)
            .max(1)
    }
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or_default()
}

/// A fresh token: 256 bits from the OS generator, base64url without padding.
fn new_token() -> String {
    let mut bytes = [0u8; TOKEN_BYTES];
    OsRng.fill_bytes(&mut bytes);
    URL_SAFE_NO_PAD.encode(bytes)
}

/// Whether `token` could be one of ours; anything else is refused without asking Redis.
fn is_well_formed(token: &str) -> bool {
    token.len() == TOKEN_CHARS
        && token
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

fn parse_user(user: &str) -> Result<Uuid, RefreshError> {
    Uuid::parse_str(user).map_err(|_| {
        RefreshError::Backend(RedisError::from((
            ErrorKind::UnexpectedReturnType,
            "refresh token record holds a malformed user id",
        )))
    })
}
