//! Credentials (`credentials`): the secrets of a stream — a user's password hash — kept
//! beside its events, never in them (DESIGN §8a). An append writes them in its transaction
//! ([`crate::AppendRequest::credentials`]), so a secret is stored exactly when the event
//! recording its change is. The log's readers cannot read the table.

use secrecy::{ExposeSecret, SecretString};
use sqlx::PgPool;

use crate::StoreError;

/// A secret of kind `kind` (`"password"`) for the appended stream; replaces the one it had,
/// or, with no secret, deletes it.
#[derive(Debug, Clone)]
pub struct Credential {
    pub kind: &'static str,
    pub secret: Option<SecretString>,
}

/// The kinds and the secrets of `credentials` (NULL: delete), as arrays to bind.
pub(crate) fn columns(credentials: &[Credential]) -> (Vec<&str>, Vec<Option<&str>>) {
    credentials
        .iter()
        .map(|c| (c.kind, c.secret.as_ref().map(ExposeSecret::expose_secret)))
        .unzip()
}

/// The `kind` secret of stream `stream_type`/`stream_id`, if it has one.
///
/// # Errors
/// On database failure.
pub async fn secret(
    pool: &PgPool,
    stream_type: &str,
    stream_id: &str,
    kind: &str,
) -> Result<Option<SecretString>, StoreError> {
    let secret: Option<String> = sqlx::query_scalar(
        "SELECT secret FROM credentials WHERE stream_type = $1 AND stream_id = $2 AND kind = $3",
    )
    .bind(stream_type)
    .bind(stream_id)
    .bind(kind)
    .fetch_optional(pool)
    .await?;
    Ok(secret.map(SecretString::from))
}

/// Stores `secret` as the stream's `kind` outside an append: for a secret whose setting
/// changes nothing about the account yet (a two-factor seed offered, not confirmed), so no
/// event records it.
///
/// # Errors
/// On database failure.
pub async fn put(
    pool: &PgPool,
    stream_type: &str,
    stream_id: &str,
    kind: &str,
    secret: &SecretString,
) -> Result<(), StoreError> {
    sqlx::query(
        "INSERT INTO credentials (stream_type, stream_id, kind, secret) VALUES ($1, $2, $3, $4) \
         ON CONFLICT (stream_type, stream_id, kind) DO UPDATE \
            SET secret = EXCLUDED.secret, set_at = now()",
    )
    .bind(stream_type)
    .bind(stream_id)
    .bind(kind)
    .bind(secret.expose_secret())
    .execute(pool)
    .await?;
    Ok(())
}

/// Records one use of the stream's `kind` credential, named `used` (a TOTP step, a recovery
/// code's hash): true the first time, false if it was used before — or if the credential
/// is gone (two-factor login turned off meanwhile). Atomic: of two concurrent uses, one wins.
///
/// # Errors
/// On database failure.
pub async fn use_once(
    pool: &PgPool,
    stream_type: &str,
    stream_id: &str,
    kind: &str,
    used: &str,
) -> Result<bool, StoreError> {
    let inserted: Option<i32> = sqlx::query_scalar(
        "INSERT INTO credential_uses (stream_type, stream_id, kind, used) \
         SELECT $1, $2, $3, $4 FROM credentials \
          WHERE stream_type = $1 AND stream_id = $2 AND kind = $3 \
         ON CONFLICT DO NOTHING RETURNING 1",
    )
    .bind(stream_type)
    .bind(stream_id)
    .bind(kind)
    .bind(used)
    .fetch_optional(pool)
    .await?;
    Ok(inserted.is_some())
}
