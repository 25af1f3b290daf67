//! What folding a stream into an aggregate needs from the store: its latest snapshot and the
//! events after it, in one round trip, and saving a snapshot. The fold itself — the
//! aggregate types, cqrs-es — is the write side's (`commands::AggregateStore`).

use event_schemas::Event;
use serde_json::Value;
use sqlx::Row;

use crate::append::{to_i64, to_u64, PgEventStore, StoreError};

/// A stream from its latest snapshot on: the snapshot, if one was asked for and exists, then
/// every event after it, decoded (and upcast) to the current schema, in version order.
#[derive(Debug, Clone, Default)]
pub struct StreamTail {
    pub snapshot: Option<Snapshot>,
    /// `(stream version, event)`.
    pub events: Vec<(u64, Event)>,
}

/// An aggregate's state as serialised at a stream version.
#[derive(Debug, Clone, PartialEq)]
pub struct Snapshot {
    pub version: u64,
    pub state: Value,
}

impl PgEventStore {
    /// The stream's latest snapshot (when `with_snapshot`) and the events after it, in one
    /// statement ([`LOAD_SQL`]) of only the columns a fold needs.
    ///
    /// # Errors
    /// [`StoreError`] on database failure or an event that cannot be decoded.
    pub async fn load_tail(
        &self,
        stream_type: &str,
        stream_id: &str,
        with_snapshot: bool,
    ) -> Result<StreamTail, StoreError> {
        let rows = sqlx::query(LOAD_SQL)
            .bind(stream_type)
            .bind(stream_id)
            .bind(with_snapshot)
            .fetch_all(self.pool())
            .await?;
        let mut tail = StreamTail::default();
        let mut stored = Vec::with_capacity(rows.len());
        for row in rows {
            let version = to_u64(row.try_get("stream_version")?)?;
            let Some(event_type) = row.try_get::<Option<String>, _>("event_type")? else {
                tail.snapshot = Some(Snapshot {
                    version,
                    state: row.try_get("payload")?,
                });
                continue;
            };
            let schema_version = u32::try_from(row.try_get::<i32, _>("schema_version")?)
                .map_err(|_| StoreError::Corrupt("negative schema_version".into()))?;
            let payload: Value = row.try_get("payload")?;
            stored.push((version, event_type, schema_version, payload));
        }
        let mut payloads: Vec<(&str, &mut Value)> = stored
            .iter_mut()
            .map(|(_, event_type, _, payload)| (event_type.as_str(), payload))
            .collect();
        self.keyring().open_payloads(&mut payloads).await?;
        for (version, event_type, schema_version, payload) in stored {
            let event = Event::decode(&event_type, schema_version, payload)?;
            tail.events.push((version, event));
        }
        Ok(tail)
    }

    /// Saves `state` as the snapshot of the stream at `version`, unless a later one is saved.
    ///
    /// # Errors
    /// On database failure.
    pub async fn save_snapshot(
        &self,
        stream_type: &str,
        stream_id: &str,
        version: u64,
        state: &Value,
    ) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO snapshots (stream_type, stream_id, version, state) \
             VALUES ($1, $2, $3, $4) \
             ON CONFLICT (stream_type, stream_id) DO UPDATE \
                SET version = EXCLUDED.version, state = EXCLUDED.state, taken_at = now() \
              WHERE snapshots.version < EXCLUDED.version",
        )
        .bind(stream_type)
        .bind(stream_id)
        .bind(to_i64(version)?)
        .bind(state)
        .execute(self.pool())
        .await?;
        Ok(())
    }
}

/// Snapshot (when `$3`) and later events in one statement: the snapshot first, as a row
/// with a NULL `event_type` and the state as `payload`, then the events after it in version
/// order, with only the columns a fold needs. (The snapshot's version is below every event's
/// it is followed by, so ordering by version puts it first.)
const LOAD_SQL: &str = r"
WITH snapshot AS (
    SELECT version, state FROM snapshots
     WHERE $3 AND stream_type = $1 AND stream_id = $2
)
SELECT version AS stream_version, NULL::text AS event_type, NULL::integer AS schema_version,
       state AS payload
  FROM snapshot
UNION ALL
SELECT stream_version, event_type, schema_version, payload
  FROM events
 WHERE stream_type = $1 AND stream_id = $2
   AND stream_version > COALESCE((SELECT version FROM snapshot), 0)
ORDER BY stream_version
";
