//! Audit queries of the log (API.md "Audit"): filtered, cursor-paged listing and the
//! history of one stream, with each event's hash.
//!
//! The listing pages in the log's gap-free read order, `(transaction_id, global_position)`,
//! the order of [`crate::LogReader`], and shows only events of transactions older than the
//! oldest one still running (the watermark, `pg_snapshot_xmin`). Positions alone would not
//! do: they are taken before their transaction commits, and two concurrent appends can take
//! their transaction ids and their positions in opposite orders, so a page ending at
//! position 11 could be read while the transaction holding position 10 is still open, and a
//! cursor of "position > 11" would never show 10. Below the watermark no transaction can
//! commit anything new, so once a page has passed a point of the read order nothing can
//! appear before it: a client that pages to the end and keeps polling with the last
//! [`AuditCursor`] sees every committed event that matches its filters exactly once.
//!
//! A cursor also carries a floor: a client may start from a plain position `N` ("events
//! with `global_position > N`"), which then holds for every later page too.

use std::fmt;
use std::str::FromStr;

use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::Value;
use sqlx::postgres::{PgPool, PgRow};
use sqlx::{Postgres, QueryBuilder, Row};
use uuid::Uuid;

use crate::append::StoreError;
use crate::keys::Keyring;
use crate::log::LogPosition;

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
    /// Fields of `payload` whose stored value is withheld (`"[redacted]"`): secrets that an
    /// old version of the event held. The hash covers the stored value; `audit verify`
    /// checks it in the database.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub redacted: Vec<&'static str>,
    /// Personal fields of `payload` stored sealed (`crate::keys`), shown opened — or as
    /// `"[erased]"` once their person is erased. The hash covers the sealed form.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub opened: Vec<&'static str>,
}

impl AuditEvent {
    fn from_row(row: &PgRow) -> Result<Self, StoreError> {
        let mut event = Self::stored(row)?;
        let version = u32::try_from(event.schema_version).unwrap_or_default();
        if event_schemas::redact::redact_secrets(&event.event_type, version, &mut event.payload) {
            event.redacted = event_schemas::redact::secret_fields(&event.event_type, version)
                .unwrap_or_default()
                .to_vec();
        }
        Ok(event)
    }

    fn stored(row: &PgRow) -> Result<Self, StoreError> {
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
            redacted: Vec::new(),
            opened: Vec::new(),
        })
    }
}

/// Where a listing continues: after a point of the read order `(transaction_id,
/// global_position)`, and only above a floor position. Its wire form (`Display`, `FromStr`)
/// is an opaque token; `FromStr` also takes a plain non-negative integer `N`, which starts
/// at the beginning of the log with floor `N` (events with `global_position > N`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct AuditCursor {
    /// The listing continues after this point of the read order.
    pub after: LogPosition,
    /// Only events with `global_position > floor`, on every page.
    pub floor: i64,
}

impl AuditCursor {
    /// The whole log.
    pub const START: AuditCursor = AuditCursor {
        after: LogPosition::START,
        floor: 0,
    };

    /// The log from the beginning, but only events with `global_position > position`.
    pub fn above_position(position: i64) -> Self {
        Self {
            after: LogPosition::START,
            floor: position.max(0),
        }
    }

    /// This cursor moved up to `watermark`, past every event of the transactions below it
    /// (for a listing that has shown all of those that match). Never moves back.
    pub fn caught_up(self, watermark: u64) -> Self {
        let at_watermark = LogPosition {
            transaction_id: watermark,
            global_position: 0,
        };
        Self {
            after: self.after.max(at_watermark),
            floor: self.floor,
        }
    }
}

/// Version prefix of the token, so its form can change without misreading old tokens.
const TOKEN_PREFIX: &str = "v1";

/// `v1.<transaction id>.<global position>.<floor>`.
impl fmt::Display for AuditCursor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{TOKEN_PREFIX}.{}.{}.{}",
            self.after.transaction_id, self.after.global_position, self.floor
        )
    }
}

/// A string that is neither a token of [`AuditCursor`] nor a non-negative integer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("expected the next_cursor of an earlier page or a non-negative integer position")]
pub struct InvalidCursor;

impl FromStr for AuditCursor {
    type Err = InvalidCursor;

    fn from_str(raw: &str) -> Result<Self, Self::Err> {
        // Digits only: `str::parse` would also take a sign.
        fn number<T: FromStr>(digits: &str) -> Result<T, InvalidCursor> {
            if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
                return Err(InvalidCursor);
            }
            digits.parse().map_err(|_| InvalidCursor)
        }
        if let Ok(position) = number::<i64>(raw) {
            return Ok(Self::above_position(position));
        }
        let mut parts = raw.split('.');
        if parts.next() != Some(TOKEN_PREFIX) {
            return Err(InvalidCursor);
        }
        let (Some(xid), Some(position), Some(floor), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(InvalidCursor);
        };
        Ok(Self {
            after: LogPosition {
                transaction_id: number(xid)?,
                global_position: number(position)?,
            },
            floor: number(floor)?,
        })
    }
}

/// One page of a listing.
#[derive(Debug, Clone, PartialEq)]
pub struct AuditPage {
    pub items: Vec<AuditEvent>,
    /// Where the next page starts, always set: after the last item of a full page, else at
    /// the watermark the page was read below (past every settled event, matching or not).
    pub next_cursor: AuditCursor,
    /// More settled events follow at once (the query saw one past the page); `false`: the
    /// listing has caught up, and later polls with `next_cursor` show the events settled
    /// since.
    pub has_more: bool,
}

const COLUMNS: &str = "global_position, event_id, stream_type, stream_id, stream_version, \
     event_type, schema_version, payload, metadata, recorded_at, encode(hash, 'hex') AS hash_hex";

/// Read-only queries of the log for auditors.
#[derive(Debug, Clone)]
pub struct AuditLog {
    pool: PgPool,
    keyring: Keyring,
}

impl AuditLog {
    pub fn new(pool: PgPool) -> Self {
        Self {
            keyring: Keyring::new(pool.clone()),
            pool,
        }
    }

    /// Opens the sealed personal fields of `events`, naming them in `opened`.
    async fn open(&self, events: &mut [AuditEvent]) -> Result<(), StoreError> {
        for event in events.iter_mut() {
            if let Some(personal) = event_schemas::personal::personal_fields(&event.event_type) {
                if crate::keys::holds_sealed(&event.event_type, &event.payload) {
                    event.opened = personal.fields.to_vec();
                }
            }
        }
        let mut payloads: Vec<(&str, &mut Value)> = events
            .iter_mut()
            .map(|e| (e.event_type.as_str(), &mut e.payload))
            .collect();
        self.keyring.open_payloads(&mut payloads).await
    }

    /// The oldest transaction id still running anywhere on the server (the transaction id
    /// space is cluster-wide): every transaction below it has ended, so its events are
    /// settled.
    ///
    /// # Errors
    /// [`StoreError`] on database failure.
    pub async fn watermark(&self) -> Result<u64, StoreError> {
        let xmin: String =
            sqlx::query_scalar("SELECT pg_snapshot_xmin(pg_current_snapshot())::text")
                .fetch_one(&self.pool)
                .await?;
        xmin.parse()
            .map_err(|_| StoreError::Corrupt(format!("watermark {xmin}")))
    }

    /// Up to `limit` (clamped to 1..=[`MAX_PAGE`]) settled events matching `filter` after
    /// `after`, in `(transaction_id, global_position)` order.
    ///
    /// # Errors
    /// [`StoreError`] on database failure or a corrupt row.
    pub async fn list(
        &self,
        filter: &AuditFilter,
        after: AuditCursor,
        limit: u32,
    ) -> Result<AuditPage, StoreError> {
        let watermark = self.watermark().await?;
        self.list_below(filter, after, limit, watermark).await
    }

    /// [`AuditLog::list`] of the events of transactions below `watermark`, an earlier
    /// [`AuditLog::watermark`]: paging with one watermark lists a fixed set of events (what
    /// an export wants), and ends.
    ///
    /// # Errors
    /// [`StoreError`] on database failure or a corrupt row.
    pub async fn list_below(
        &self,
        filter: &AuditFilter,
        after: AuditCursor,
        limit: u32,
        watermark: u64,
    ) -> Result<AuditPage, StoreError> {
        let limit = limit.clamp(1, MAX_PAGE);
        let mut query = QueryBuilder::<Postgres>::new(format!(
            "SELECT {COLUMNS}, transaction_id::text AS transaction_id_text FROM events"
        ));
        // Served by events_commit_order_idx, or by a filter's index whose key goes on with
        // (transaction_id, global_position) (migrations/20261123000008_audit_cursor.sql).
        query
            .push(" WHERE (transaction_id, global_position) > (")
            .push_bind(after.after.transaction_id.to_string())
            .push("::text::xid8, ")
            .push_bind(after.after.global_position)
            .push(") AND transaction_id < ")
            .push_bind(watermark.to_string())
            .push("::text::xid8");
        if after.floor > 0 {
            query.push(" AND global_position > ").push_bind(after.floor);
        }
        push_filter(&mut query, filter);
        // One more than asked tells whether another page follows.
        query
            .push(" ORDER BY transaction_id, global_position LIMIT ")
            .push_bind(i64::from(limit) + 1);
        let rows = query.build().fetch_all(&self.pool).await?;
        let has_more = rows.len() > limit as usize;
        let mut items = Vec::with_capacity(rows.len().min(limit as usize));
        let mut last = None;
        for row in rows.iter().take(limit as usize) {
            let event = AuditEvent::from_row(row)?;
            last = Some(LogPosition {
                transaction_id: row
                    .try_get::<String, _>("transaction_id_text")?
                    .parse()
                    .map_err(|_| StoreError::Corrupt("transaction_id".into()))?,
                global_position: event.global_position,
            });
            items.push(event);
        }
        self.open(&mut items).await?;
        let next_cursor = match last {
            Some(last) if has_more => AuditCursor {
                after: last,
                floor: after.floor,
            },
            // Every settled event after `after` that matches is on this page.
            _ => after.caught_up(watermark),
        };
        Ok(AuditPage {
            items,
            next_cursor,
            has_more,
        })
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
        let mut events = rows
            .iter()
            .map(AuditEvent::from_row)
            .collect::<Result<Vec<_>, _>>()?;
        self.open(&mut events).await?;
        Ok(events)
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cursor_survives_its_token() {
        let cursor = AuditCursor {
            after: LogPosition {
                transaction_id: u64::MAX,
                global_position: 42,
            },
            floor: 7,
        };
        let token = cursor.to_string();
        assert!(token.parse::<i64>().is_err(), "{token} reads as a position");
        assert_eq!(token.parse(), Ok(cursor));
    }

    #[test]
    fn a_plain_position_is_a_floor_from_the_start() {
        assert_eq!("0".parse(), Ok(AuditCursor::START));
        assert_eq!("12".parse(), Ok(AuditCursor::above_position(12)));
        assert_eq!(AuditCursor::above_position(12).after, LogPosition::START);
    }

    #[test]
    fn anything_else_is_refused() {
        for raw in [
            "",
            "-1",
            "+1",
            " 1",
            "1.5",
            "9223372036854775808",
            "v1",
            "v1.1.2",
            "v1.1.2.3.4",
            "v1.1.-2.3",
            "v1.1.2.-3",
            "v1.18446744073709551616.2.3",
            "v1..2.3",
            "v2.1.2.3",
            "V1.1.2.3",
        ] {
            assert_eq!(raw.parse::<AuditCursor>(), Err(InvalidCursor), "{raw:?}");
        }
    }

    #[test]
    fn catching_up_moves_to_the_watermark_and_never_back() {
        let cursor = AuditCursor {
            after: LogPosition {
                transaction_id: 10,
                global_position: 500,
            },
            floor: 3,
        };
        let caught_up = cursor.caught_up(20);
        assert_eq!(
            caught_up.after,
            LogPosition {
                transaction_id: 20,
                global_position: 0
            }
        );
        assert_eq!(caught_up.floor, 3);
        assert_eq!(caught_up.caught_up(15), caught_up);
    }
}
