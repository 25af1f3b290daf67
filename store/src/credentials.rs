//! Credentials (`credentials`): the secrets of a stream — a user's password hash — kept
//! beside its events, never in them (DESIGN §8a). An append writes them in its transaction
//! ([`crate::AppendRequest::credentials`]), so a secret is stored exactly when the event
//! recording its change is. The log's readers cannot read the table.

use secrecy::{ExposeSecret, SecretString};
use sqlx::PgPool;

use crate::StoreError;

/// A secret of kind `kind` (`"password"`) for the appended stream; replaces the one it had.
#[derive(Debug, Clone)]
pub struct Credential {
    pub kind: &'static str,
    pub secret: SecretString,
}

/// The kinds and the secrets of `credentials`, as arrays to bind.
pub(crate) fn columns(credentials: &[Credential]) -> (Vec<&str>, Vec<&str>) {
    credentials
        .iter()
        .map(|c| (c.kind, c.secret.expose_secret()))
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
