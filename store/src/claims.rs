//! Unique claims (`unique_claims`): values one stream holds — a username, an email address —
//! taken in the transaction of the append that claims them ([`crate::append`]). Lookups
//! for the API (is a name free, whose is a login) and for operators.
//!
//! The domain decides what an event claims (`domain::claims`); the write side hands it to
//! the store as a [`Claim`] of an [`crate::AppendRequest`].

use sqlx::PgPool;

use crate::StoreError;

/// What an append does to `unique_claims`, in its transaction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Claim {
    /// Take `value` in `scope` (`"username"`, `"email"`) for the appended stream: held by
    /// another stream, it refuses the whole append ([`crate::AppendError::Taken`]).
    Reserve { scope: &'static str, value: String },
    /// Give back every value the appended stream holds.
    ReleaseAll,
}

/// A claimed value is held by another stream.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{scope} `{value}` is already taken")]
pub struct ClaimTaken {
    pub scope: String,
    pub value: String,
}

/// The stream holding the first of `claims` (`(scope, value)`, in their order) that is held.
///
/// # Errors
/// On database failure.
pub async fn holder(pool: &PgPool, claims: &[(&str, &str)]) -> Result<Option<String>, StoreError> {
    let (scopes, values) = split(claims);
    Ok(sqlx::query_scalar(
        "SELECT c.stream_id \
           FROM unnest($1::text[], $2::text[]) WITH ORDINALITY AS w(scope, value, n) \
           JOIN unique_claims c ON c.scope = w.scope AND c.value = w.value \
          ORDER BY w.n LIMIT 1",
    )
    .bind(scopes)
    .bind(values)
    .fetch_optional(pool)
    .await?)
}

/// The scopes of `claims` (`(scope, value)`) whose value some stream holds.
///
/// # Errors
/// On database failure.
pub async fn taken(pool: &PgPool, claims: &[(&str, &str)]) -> Result<Vec<String>, StoreError> {
    let (scopes, values) = split(claims);
    Ok(sqlx::query_scalar(
        "SELECT c.scope \
           FROM unnest($1::text[], $2::text[]) AS w(scope, value) \
           JOIN unique_claims c ON c.scope = w.scope AND c.value = w.value",
    )
    .bind(scopes)
    .bind(values)
    .fetch_all(pool)
    .await?)
}

fn split<'a>(claims: &[(&'a str, &'a str)]) -> (Vec<&'a str>, Vec<&'a str>) {
    claims.iter().copied().unzip()
}
