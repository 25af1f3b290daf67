//! Unique claims (`unique_claims`): values one stream holds — a username, an email address —
//! taken in the transaction of the append that claims them ([`crate::append`]). Lookups
//! for the API (is a name free, whose is a login) and for operators.

use sqlx::PgPool;

use crate::StoreError;

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
