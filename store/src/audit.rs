//! Audit queries of the log (API.md "Audit"): filtered, cursor-paged listing in position
//! order and the history of one stream, with each event's hash.
//!
//! The listing is paged by `global_position`, and positions are taken before their
//! transaction commits: a page read at the live head could show position 11 while 10 is
//! still uncommitted, and the next page (after 11) would never show 10. So the listing shows
//! only events of transactions older than the oldest one still running (the watermark of
//! [`crate::LogReader`]): the events of recent or running transactions appear a moment
//! later. What is left is a narrow race of two concurrent appends that take their
//! transaction ids and their positions in opposite orders. Positions at or below the last
//! seal ([`crate::seal`]) are final, so pages read below it are exact.

use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::Value;
use sqlx::postgres::{PgPool, PgRow};
use sqlx::{Postgres, QueryBuilder, Row};
use uuid::Uuid;

use crate::append::StoreError;

/// Largest page of [`AuditLog::list`].
pub const MAX_PAGE: u32 = 1000;
/// Page size when the caller names none.
pub const DEFAULT_PAGE: u32 = 100;

/// Which events to list; every filter that is set must match (`None` = any).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AuditFilter {
    pub stream_type: Option<String>,
    /// Only together with `stream_type` (a stream is named by both).
    pub stream_id: Option<String>,
    pub event_type: Option<String>,
    /// `metadata.correlation_id` (the request id of the command that appended the event).
    pub correlation_id: Option<String>,
    /// `metadata.actor`, e.g. `user:<uuid>` or `system:admin-cli`.
    pub actor: Option<String>,
    /// `recorded_at ≥ from`.
    pub from: Option<DateTime<Utc>>,
    /// `recorded_at < to`.
    pub to: Option<DateTime<Utc>>,
}

/// An event as auditors see it: every stored field but the transaction id, the hash in hex.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct AuditEvent {
    pub global_position: i64,
    pub event_id: Uuid,
    pub stream_type: String,
    pub stream_id: String,
    pub stream_version: i64,
    pub event_type: String,
    pub schema_version: i32,
    pub payload: Value,
    pub metadata: Value,
    pub recorded_at: DateTime<Utc>,
    /// sha256(previous event's hash in its stream ‖ canonical form of this event), hex.
    pub hash: String,
}

impl AuditEvent {
    fn from_row(row: &PgRow) -> Result<Self, StoreError> {
        Ok(Self {
            global_position: row.try_get("global_position")?,
            event_id: row.try_get("event_id")?,
            stream_type: row.try_get("stream_type")?,
            stream_id: row.try_get("stream_id")?,
            stream_version: row.try_get("stream_version")?,
            event_type: row.try_get("event_type")?,
            schema_version: row.try_get("schema_version")?,
            payload: row.try_get("payload")?,
            metadata: row.try_get("metadata")?,
            recorded_at: row.try_get("recorded_at")?,
            hash: row.try_get("hash_hex")?,
        })
    }
}

/// One page of a listing.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct AuditPage {
    pub items: Vec<AuditEvent>,
    /// The last item's position when more may follow (pass it as `after_position`); `None`
    /// at the end.
    pub next_cursor: Option<i64>,
}

const COLUMNS: &str = "global_position, event_id, stream_type, stream_id, stream_version, \
     event_type, schema_version, payload, metadata, recorded_at, encode(hash, 'hex') AS hash_hex";

/// Read-only queries of the log for auditors.
#[derive(Debug, Clone)]
pub struct AuditLog {
    pool: PgPool,
}

impl AuditLog {
    pub fn new(pool: PgPool) -> Self {
        Self { pool }
    }

    /// Up to `limit` (clamped to 1..=[`MAX_PAGE`]) events matching `filter` with
    /// `global_position > after_position`, in position order.
    ///
    /// # Errors
    /// [`StoreError`] on database failure or a corrupt row.
    pub async fn list(
        &self,
        filter: &AuditFilter,
        after_position: i64,
        limit: u32,
    ) -> Result<AuditPage, StoreError> {
        let limit = limit.clamp(1, MAX_PAGE);
        let mut query = QueryBuilder::<Postgres>::new(format!("SELECT {COLUMNS} FROM events"));
        query
            .push(" WHERE global_position > ")
            .push_bind(after_position)
            .push(" AND transaction_id < (SELECT pg_snapshot_xmin(pg_current_snapshot()))");
        push_filter(&mut query, filter);
        // One more than asked tells whether another page follows.
        query
            .push(" ORDER BY global_position LIMIT ")
            .push_bind(i64::from(limit) + 1);
        let rows = query.build().fetch_all(&self.pool).await?;
        let mut items = rows
            .iter()
            .map(AuditEvent::from_row)
            .collect::<Result<Vec<_>, _>>()?;
        let more = items.len() > limit as usize;
        items.truncate(limit as usize);
        let next_cursor = if more {
            items.last().map(|e| e.global_position)
        } else {
            None
        };
        Ok(AuditPage { items, next_cursor })
    }

    /// Every event of one stream, in version order (empty when the stream does not exist).
    ///
    /// # Errors
    /// [`StoreError`] on database failure or a corrupt row.
    pub async fn stream(
        &self,
        stream_type: &str,
        stream_id: &str,
    ) -> Result<Vec<AuditEvent>, StoreError> {
        let sql = format!(
            "SELECT {COLUMNS} FROM events WHERE stream_type = $1 AND stream_id = $2 \
              ORDER BY stream_version"
        );
        let rows = sqlx::query(&sql)
            .bind(stream_type)
            .bind(stream_id)
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(AuditEvent::from_row).collect()
    }
}

/// Only the conditions that are set, so each query can use the index of its filter.
fn push_filter(query: &mut QueryBuilder<'_, Postgres>, filter: &AuditFilter) {
    let text_conditions = [
        ("stream_type", &filter.stream_type),
        ("stream_id", &filter.stream_id),
        ("event_type", &filter.event_type),
        ("metadata ->> 'correlation_id'", &filter.correlation_id),
        ("metadata ->> 'actor'", &filter.actor),
    ];
    for (expression, value) in text_conditions {
        if let Some(value) = value {
            query
                .push(format!(" AND {expression} = "))
                .push_bind(value.clone());
        }
    }
    if let Some(from) = filter.from {
        query.push(" AND recorded_at >= ").push_bind(from);
    }
    if let Some(to) = filter.to {
        query.push(" AND recorded_at < ").push_bind(to);
    }
}
