//! Verification of the per-stream hash chain (the `verify_events` SQL function).

use serde::Serialize;
use sqlx::Row;

use crate::append::{PgEventStore, StoreError};

/// The outcome of a verification.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Verification {
    pub ok: bool,
    /// Events checked before the first problem (all of the range when `ok`).
    pub checked: u64,
    /// The first event whose hash does not match, whose predecessor is missing, or after
    /// which its stream lost events.
    pub first_bad_position: Option<i64>,
    pub reason: Option<String>,
}

impl PgEventStore {
    /// Recomputes the hash of every event with `from ≤ global_position ≤ to` and checks that
    /// no stream touched by the range lost an event.
    ///
    /// # Errors
    /// [`StoreError`] on database failure.
    pub async fn verify(&self, from: i64, to: i64) -> Result<Verification, StoreError> {
        let row = sqlx::query(
            "SELECT ok, checked, first_bad_position, reason FROM verify_events($1, $2)",
        )
        .bind(from)
        .bind(to)
        .fetch_one(self.pool())
        .await?;
        Ok(Verification {
            ok: row.try_get("ok")?,
            checked: u64::try_from(row.try_get::<i64, _>("checked")?).unwrap_or(0),
            first_bad_position: row.try_get("first_bad_position")?,
            reason: row.try_get("reason")?,
        })
    }
}
