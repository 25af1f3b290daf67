//! Seals: periodic global checkpoints that chain every stream's head hash (DESIGN §3,
//! `migrations/20261123000006_seals.sql`).
//!
//! The per-stream chain proves that the events still stored were not altered and that none
//! is missing before a stored one; it cannot see the loss of a stream's *last* events when
//! whoever removed them also lowered the stream's version. A seal records the head of every
//! stream written in its window of positions and is hash-chained to the previous seal, so
//! [`crate::PgEventStore::verify_log`] names a removed or altered sealed head.
//!
//! A seal must only cover positions that can no longer change. Positions are taken before
//! their transaction commits, so [`Sealer::seal_now`] reads the position sequence's last
//! value, then waits until every transaction that could hold a position up to it has ended
//! (the oldest running transaction id passed the next unassigned one): appends take their
//! transaction id (the stream row's lock) before their positions, so a transaction still
//! holding a lower position cannot start after that read.

use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::postgres::PgPool;
use sqlx::Row;
use tokio_util::sync::CancellationToken;

use crate::append::StoreError;

/// Largest window of positions one seal covers: a verifier recomputes one seal's heads in
/// one query, so windows stay small enough to check quickly even when sealing starts on a
/// long log.
pub const MAX_SEAL_WINDOW: i64 = 100_000;

/// One stored seal.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Seal {
    pub seal_id: i64,
    /// The seal covers `after_position < global_position ≤ up_to_position`.
    pub after_position: i64,
    pub up_to_position: i64,
    /// Heads sealed: the streams written in the window.
    pub streams: i64,
    /// The seal's chained hash, hex: keep a copy outside the database to anchor the chain.
    pub hash: String,
    pub created_at: DateTime<Utc>,
}

/// What [`Sealer::seal_now`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SealOutcome {
    /// New seals, oldest first.
    Sealed(Vec<Seal>),
    /// The last seal already covers every position taken.
    UpToDate,
    /// A transaction that may hold a position to seal was still running after the wait.
    Unsettled,
}

/// Seals the log.
#[derive(Debug, Clone)]
pub struct Sealer {
    pool: PgPool,
}

impl Sealer {
    pub fn new(pool: PgPool) -> Self {
        Self { pool }
    }

    /// Seals every position taken so far, in windows of at most [`MAX_SEAL_WINDOW`],
    /// after waiting up to `settle` for the transactions that may still hold one of them.
    /// Concurrent sealers (one per API replica) are safe: they serialise in the database and
    /// the later one finds the work done.
    ///
    /// # Errors
    /// [`StoreError`] on database failure.
    pub async fn seal_now(&self, settle: Duration) -> Result<SealOutcome, StoreError> {
        let Some(up_to) = self.settled_position(settle).await? else {
            return Ok(SealOutcome::Unsettled);
        };
        let mut sealed = Vec::new();
        loop {
            let last: i64 =
                sqlx::query_scalar("SELECT coalesce(max(up_to_position), 0) FROM seals")
                    .fetch_one(&self.pool)
                    .await?;
            if last >= up_to {
                break;
            }
            let window_end = up_to.min(last.saturating_add(MAX_SEAL_WINDOW));
            let row = sqlx::query(
                "SELECT seal_id, after_position, up_to_position, streams, \
                        encode(hash, 'hex') AS hash_hex, created_at FROM seal_log($1)",
            )
            .bind(window_end)
            .fetch_optional(&self.pool)
            .await?;
            // None: another sealer sealed this window first; read where it got to.
            if let Some(row) = row {
                sealed.push(Seal {
                    seal_id: row.try_get("seal_id")?,
                    after_position: row.try_get("after_position")?,
                    up_to_position: row.try_get("up_to_position")?,
                    streams: row.try_get("streams")?,
                    hash: row.try_get("hash_hex")?,
                    created_at: row.try_get("created_at")?,
                });
            }
        }
        if let Some(last) = sealed.last() {
            metrics::gauge!("eventstore_sealed_position").set(last.up_to_position as f64);
            Ok(SealOutcome::Sealed(sealed))
        } else {
            Ok(SealOutcome::UpToDate)
        }
    }

    /// The last position taken, once no transaction that may hold a position up to it is
    /// running; `None` when one still is after `settle`.
    async fn settled_position(&self, settle: Duration) -> Result<Option<i64>, StoreError> {
        let last_taken: i64 = sqlx::query_scalar(
            "SELECT coalesce(pg_sequence_last_value(\
                 pg_get_serial_sequence('events', 'global_position')::regclass), 0)",
        )
        .fetch_one(&self.pool)
        .await?;
        // Read after the position: every transaction that took a position up to it already
        // has an id below this one.
        let next_xid: String =
            sqlx::query_scalar("SELECT pg_snapshot_xmax(pg_current_snapshot())::text")
                .fetch_one(&self.pool)
                .await?;
        let deadline = Instant::now() + settle;
        loop {
            let settled: bool = sqlx::query_scalar(
                "SELECT pg_snapshot_xmin(pg_current_snapshot()) >= $1::text::xid8",
            )
            .bind(&next_xid)
            .fetch_one(&self.pool)
            .await?;
            if settled {
                return Ok(Some(last_taken));
            }
            if Instant::now() >= deadline {
                return Ok(None);
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Seals every `interval` until `stop`, logging each seal's hash (the copy of the chain
    /// outside the database).
    pub async fn run(self, interval: Duration, stop: CancellationToken) {
        let settle = interval.min(Duration::from_secs(30));
        loop {
            tokio::select! {
                () = stop.cancelled() => return,
                () = tokio::time::sleep(interval) => {}
            }
            match self.seal_now(settle).await {
                Ok(SealOutcome::Sealed(seals)) => {
                    for seal in seals {
                        tracing::info!(
                            seal_id = seal.seal_id,
                            up_to_position = seal.up_to_position,
                            streams = seal.streams,
                            hash = %seal.hash,
                            "Sealed the log."
                        );
                    }
                }
                Ok(SealOutcome::UpToDate) => {}
                Ok(SealOutcome::Unsettled) => {
                    tracing::warn!("A long write transaction delayed the seal; will retry.");
                }
                Err(error) => {
                    tracing::warn!(%error, "Sealing the log failed; will retry.");
                }
            }
        }
    }
}
