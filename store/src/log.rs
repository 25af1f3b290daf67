//! The catch-up reader of the global log.
//!
//! Sequence values become visible before their transaction commits, so reading
//! "`global_position` > last seen" skips events under concurrency: a transaction that took
//! position 10 may commit after one that took 11 was already read. This reader orders by
//! `(transaction_id, global_position)` and reads only events of transactions older than the
//! oldest one still running (`pg_snapshot_xmin`), none of which can commit anything new. The
//! price: one long-open write transaction holds every reader back, which
//! [`LogReader::holdback`] measures.

use std::time::Duration;

use serde::{Deserialize, Serialize};
use sqlx::postgres::PgPool;

use crate::append::{RecordedEvent, StoreError, EVENT_COLUMNS, EVENT_COLUMNS_SKIPPING};

/// A point in the log's read order: everything at or before it has been read.
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
pub struct LogPosition {
    /// The writing transaction's id (`xid8`) of the last event read.
    pub transaction_id: u64,
    /// The global position of the last event read.
    pub global_position: i64,
}

impl LogPosition {
    /// Before the first event.
    pub const START: LogPosition = LogPosition {
        transaction_id: 0,
        global_position: 0,
    };

    /// The position of `event`: a reader that has handled it checkpoints this.
    pub fn of(event: &RecordedEvent) -> Self {
        Self {
            transaction_id: event.transaction_id,
            global_position: event.global_position,
        }
    }
}

/// Reads the committed log in a gap-free total order.
#[derive(Debug, Clone)]
pub struct LogReader {
    pool: PgPool,
    batch_sql: String,
    skipping_sql: String,
}

/// The events a batch reads: after `$1`/`$2` (transaction id as text, global position), up
/// to `$3` of them, committed by transactions older than every one still running.
const BATCH_WHERE: &str = "FROM events \
      WHERE (transaction_id, global_position) > ($1::text::xid8, $2) \
        AND transaction_id < (SELECT pg_snapshot_xmin(pg_current_snapshot())) \
      ORDER BY events.transaction_id, events.global_position \
      LIMIT $3";

impl LogReader {
    pub fn new(pool: PgPool) -> Self {
        let batch_sql = format!("SELECT {EVENT_COLUMNS} {BATCH_WHERE}");
        let skipping_sql = format!("SELECT {EVENT_COLUMNS_SKIPPING} {BATCH_WHERE}");
        Self {
            pool,
            batch_sql,
            skipping_sql,
        }
    }

    /// Up to `limit` events after `after`, in read order. An empty batch means the reader is
    /// caught up with everything that can no longer change.
    ///
    /// # Errors
    /// [`StoreError`] on database failure or a corrupt row.
    pub async fn read_batch(
        &self,
        after: LogPosition,
        limit: u32,
    ) -> Result<Vec<RecordedEvent>, StoreError> {
        let rows = sqlx::query(&self.batch_sql)
            .bind(after.transaction_id.to_string())
            .bind(after.global_position)
            .bind(i64::from(limit))
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(RecordedEvent::from_row).collect()
    }

    /// [`Self::read_batch`], with the payload and the metadata of the events whose type is
    /// in `skipped` left out (`Value::Null`): a reader that passes those types over does not
    /// make the server render them, nor the network carry them. Every event is still read,
    /// so positions advance as with [`Self::read_batch`].
    ///
    /// # Errors
    /// [`StoreError`] on database failure or a corrupt row.
    pub async fn read_batch_skipping(
        &self,
        after: LogPosition,
        limit: u32,
        skipped: &[String],
    ) -> Result<Vec<RecordedEvent>, StoreError> {
        if skipped.is_empty() {
            return self.read_batch(after, limit).await;
        }
        let rows = sqlx::query(&self.skipping_sql)
            .bind(after.transaction_id.to_string())
            .bind(after.global_position)
            .bind(i64::from(limit))
            .bind(skipped)
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(RecordedEvent::from_row).collect()
    }

    /// The last event in read order among those committed with a global position at or
    /// below `position`: a reader at or past it has read every one of them. (The event at the
    /// highest position is not always the last in read order: a transaction that took a
    /// smaller position can commit later.)
    ///
    /// # Errors
    /// How many events were committed after `position`, counted up to a million (to keep
    /// the count cheap): the backlog of a reader whose checkpoint is `position`.
    ///
    /// # Errors
    /// [`StoreError`] on database failure.
    pub async fn count_after(&self, position: LogPosition) -> Result<i64, StoreError> {
        Ok(sqlx::query_scalar(
            "SELECT count(*) FROM (SELECT 1 FROM events \
              WHERE (transaction_id, global_position) > ($1::text::xid8, $2) LIMIT 1000000) e",
        )
        .bind(position.transaction_id.to_string())
        .bind(position.global_position)
        .fetch_one(&self.pool)
        .await?)
    }

    /// [`StoreError`] on database failure or a corrupt row.
    pub async fn last_up_to(&self, position: i64) -> Result<Option<LogPosition>, StoreError> {
        let row: Option<(String, i64)> = sqlx::query_as(
            // `events.`: a bare `transaction_id` would name the output column, the text.
            "SELECT transaction_id::text, global_position FROM events \
              WHERE global_position <= $1 \
              ORDER BY events.transaction_id DESC, events.global_position DESC LIMIT 1",
        )
        .bind(position)
        .fetch_optional(&self.pool)
        .await?;
        row.map(|(xid, global_position)| {
            Ok(LogPosition {
                transaction_id: xid
                    .parse()
                    .map_err(|_| StoreError::Corrupt(format!("transaction id {xid}")))?,
                global_position,
            })
        })
        .transpose()
    }

    /// How long the oldest open write transaction (of any database of the cluster: they share
    /// one transaction-id space) has been running: readers cannot pass its events until it
    /// ends. Zero when none is open. Also sets the gauge `eventstore_reader_holdback_seconds`;
    /// reader loops call it every few seconds, not per batch. Needs `pg_read_all_stats` (or superuser) to see other
    /// roles' transactions.
    ///
    /// # Errors
    /// [`StoreError`] on database failure.
    pub async fn holdback(&self) -> Result<Duration, StoreError> {
        let seconds: Option<f64> = sqlx::query_scalar(
            "SELECT extract(epoch FROM now() - min(xact_start))::float8 \
               FROM pg_stat_activity \
              WHERE backend_xid IS NOT NULL AND pid <> pg_backend_pid()",
        )
        .fetch_one(&self.pool)
        .await?;
        let holdback = Duration::from_secs_f64(seconds.unwrap_or(0.0).max(0.0));
        metrics::gauge!("eventstore_reader_holdback_seconds").set(holdback.as_secs_f64());
        Ok(holdback)
    }
}

/// When the stream `stream_type`/`stream_id` began: the time its first event was recorded.
///
/// # Errors
/// On database failure.
pub async fn stream_started_at(
    pool: &PgPool,
    stream_type: &str,
    stream_id: &str,
) -> Result<Option<chrono::DateTime<chrono::Utc>>, StoreError> {
    Ok(sqlx::query_scalar(
        "SELECT recorded_at FROM events \
          WHERE stream_type = $1 AND stream_id = $2 AND stream_version = 1",
    )
    .bind(stream_type)
    .bind(stream_id)
    .fetch_optional(pool)
    .await?)
}

/// When the event at `position` was recorded, if there is one.
///
/// # Errors
/// On database failure.
pub async fn recorded_at(
    pool: &PgPool,
    position: i64,
) -> Result<Option<chrono::DateTime<chrono::Utc>>, StoreError> {
    Ok(
        sqlx::query_scalar("SELECT recorded_at FROM events WHERE global_position = $1")
            .bind(position)
            .fetch_optional(pool)
            .await?,
    )
}

/// Whether the database answers a query.
pub async fn reachable(pool: &PgPool) -> bool {
    sqlx::query_scalar::<_, i32>("SELECT 1")
        .fetch_one(pool)
        .await
        .is_ok()
}
