//! Verification of the log: the per-stream hash chain (the `verify_events` SQL function) and
//! the seals over the stream heads (`verify_seals`), in bounded chunks.

use serde::Serialize;
use sqlx::Row;

use crate::append::{PgEventStore, StoreError};

/// Positions [`PgEventStore::verify_log`] checks per statement: each chunk is one short
/// query, so a long log never holds one snapshot (and vacuum) back for long.
pub const VERIFY_CHUNK: i64 = 50_000;

/// The outcome of a verification.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Verification {
    pub ok: bool,
    /// Events checked before the first problem (all of the range when `ok`).
    pub checked: u64,
    /// Seals checked (those whose window ends in the range).
    pub seals_checked: u64,
    /// The first event whose hash does not match, whose predecessor is missing, after
    /// which its stream lost events, or that a seal holds as a stream's head but is missing
    /// or altered.
    pub first_bad_position: Option<i64>,
    pub reason: Option<String>,
}

impl PgEventStore {
    /// Recomputes the hash of every event with `from ≤ global_position ≤ to` and checks that
    /// no stream touched by the range lost an event. Seals are not checked: see
    /// [`PgEventStore::verify_log`].
    ///
    /// # Errors
    /// [`StoreError`] on database failure.
    pub async fn verify(&self, from: i64, to: i64) -> Result<Verification, StoreError> {
        self.run_check("verify_events", from, to, false).await
    }

    /// Checks the seals whose window ends in `from..=to`: their chain, their stored heads,
    /// and the heads recomputed from the log (`checked` counts no events here).
    ///
    /// # Errors
    /// [`StoreError`] on database failure.
    pub async fn verify_seals(&self, from: i64, to: i64) -> Result<Verification, StoreError> {
        self.run_check("verify_seals", from, to, true).await
    }

    /// Everything an auditor checks over `from..=to`, in chunks of [`VERIFY_CHUNK`]
    /// positions: the hash chain of every event and every seal ending in the range. Stops
    /// at the first chunk with a problem and names the smallest bad position in it.
    ///
    /// # Errors
    /// [`StoreError`] on database failure.
    pub async fn verify_log(&self, from: i64, to: i64) -> Result<Verification, StoreError> {
        let end = self.log_end().await?.min(to);
        let mut total = Verification {
            ok: true,
            checked: 0,
            seals_checked: 0,
            first_bad_position: None,
            reason: None,
        };
        let mut start = from.max(1);
        while start <= end {
            let chunk_end = end.min(start.saturating_add(VERIFY_CHUNK - 1));
            let events = self.verify(start, chunk_end).await?;
            let seals = self.verify_seals(start, chunk_end).await?;
            total.checked += events.checked;
            total.seals_checked += seals.seals_checked;
            let first_bad = [events, seals]
                .into_iter()
                .filter(|v| !v.ok)
                .min_by_key(|v| v.first_bad_position.unwrap_or(i64::MAX));
            if let Some(bad) = first_bad {
                total.ok = false;
                total.first_bad_position = bad.first_bad_position;
                total.reason = bad.reason;
                return Ok(total);
            }
            if chunk_end == i64::MAX {
                break;
            }
            start = chunk_end + 1;
        }
        Ok(total)
    }

    /// The last position verification has to look at: the last event's, or the last seal's
    /// end when that is beyond (its last heads may be gone). 0 for an empty log.
    ///
    /// # Errors
    /// [`StoreError`] on database failure.
    pub async fn log_end(&self) -> Result<i64, StoreError> {
        let end: i64 = sqlx::query_scalar(
            "SELECT greatest((SELECT max(global_position) FROM events), \
                             (SELECT max(up_to_position) FROM seals), 0)",
        )
        .fetch_one(self.pool())
        .await?;
        Ok(end)
    }

    async fn run_check(
        &self,
        function: &'static str,
        from: i64,
        to: i64,
        seals: bool,
    ) -> Result<Verification, StoreError> {
        let row = sqlx::query(&format!(
            "SELECT ok, checked, first_bad_position, reason FROM {function}($1, $2)"
        ))
        .bind(from)
        .bind(to)
        .fetch_one(self.pool())
        .await?;
        let checked = u64::try_from(row.try_get::<i64, _>("checked")?).unwrap_or(0);
        let (events, seals) = if seals { (0, checked) } else { (checked, 0) };
        Ok(Verification {
            ok: row.try_get("ok")?,
            checked: events,
            seals_checked: seals,
            first_bad_position: row.try_get("first_bad_position")?,
            reason: row.try_get("reason")?,
        })
    }
}
