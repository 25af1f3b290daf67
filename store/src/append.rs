//! Appending to streams and reading them back.

use chrono::{DateTime, Utc};
use event_schemas::{DecodeError, Event, EventEnvelope, Metadata};
use serde_json::Value;
use sqlx::postgres::{PgConnection, PgExecutor, PgPool};
use sqlx::Row;
use uuid::Uuid;

use crate::claims::{Claim, ClaimTaken};
use crate::credentials::{self, Credential};
use crate::keys::Keyring;
use crate::wakeup::Waker;
use event_schemas::personal::personal_fields;
use std::borrow::Cow;

/// One event to append, already encoded in its current schema version.
#[derive(Debug, Clone, PartialEq)]
pub struct NewEvent {
    /// Unique for all time; appending a known id again is an idempotent no-op.
    pub event_id: Uuid,
    pub event_type: String,
    pub schema_version: u32,
    pub payload: Value,
}

impl NewEvent {
    /// Encodes `event` with a fresh time-ordered id.
    ///
    /// # Errors
    /// If the payload cannot be serialised.
    pub fn encode(event: &Event) -> Result<Self, event_schemas::EncodeError> {
        Self::encode_with_id(Uuid::now_v7(), event)
    }

    /// Encodes `event` with a caller-chosen id (deterministic ids make retries idempotent).
    ///
    /// # Errors
    /// If the payload cannot be serialised.
    pub fn encode_with_id(
        event_id: Uuid,
        event: &Event,
    ) -> Result<Self, event_schemas::EncodeError> {
        Ok(Self {
            event_id,
            event_type: event.event_type().to_owned(),
            schema_version: event.schema_version(),
            payload: event.encode()?,
        })
    }
}

/// An append: events for one stream, written atomically, if the stream is at
/// `expected_version` (0 for a stream that does not exist yet).
#[derive(Debug, Clone)]
pub struct AppendRequest {
    pub stream_type: String,
    pub stream_id: String,
    pub expected_version: u64,
    pub events: Vec<NewEvent>,
    pub metadata: Metadata,
    /// Unique values claimed or released in the same transaction.
    pub claims: Vec<Claim>,
    /// Secrets of the stream stored in the same transaction (never in an event).
    pub credentials: Vec<Credential>,
    /// The append erases the person whose id is `stream_id` (`user.erased`): in the same
    /// transaction their data key is destroyed (the personal fields of their events no
    /// longer open, `crate::keys`), and the stream's credentials and snapshot are deleted.
    pub erases_subject: bool,
}

/// The result of an append (or of the original append, for an idempotent retry).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Appended {
    /// The stream's version after the append.
    pub stream_version: u64,
    pub first_position: i64,
    pub last_position: i64,
    /// True when every event id was already stored: nothing was written this time.
    pub duplicate: bool,
}

/// Why an append was refused.
#[derive(Debug, thiserror::Error)]
pub enum AppendError {
    /// The stream is not at the expected version (someone else appended first).
    #[error("stream {stream_type}/{stream_id} is at version {actual}, not {expected}")]
    Conflict {
        stream_type: String,
        stream_id: String,
        expected: u64,
        actual: u64,
    },
    /// A claimed unique value is held by another stream.
    #[error(transparent)]
    Taken(ClaimTaken),
    /// Some of the event ids are stored, but not as this append (a reused id).
    #[error("event id {0} is already stored with different content")]
    EventIdReused(Uuid),
    /// An append needs at least one event.
    #[error("an append needs at least one event")]
    Empty,
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// A failure of the database or of the data in it; never the caller's fault.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("database error: {0}")]
    Database(#[from] sqlx::Error),
    #[error("stored event cannot be decoded: {0}")]
    Decode(#[from] DecodeError),
    #[error("stored value is out of range: {0}")]
    Corrupt(String),
}

/// A committed event as stored, before decoding. Its JSON form (without the hash, which
/// auditors check in the log itself) is the value of the relay's Kafka messages.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct RecordedEvent {
    pub global_position: i64,
    pub event_id: Uuid,
    pub stream_type: String,
    pub stream_id: String,
    pub stream_version: u64,
    pub event_type: String,
    pub schema_version: u32,
    pub payload: Value,
    pub metadata: Value,
    pub recorded_at: DateTime<Utc>,
    /// The id of the transaction that wrote the event.
    pub transaction_id: u64,
    #[serde(skip)]
    pub hash: Vec<u8>,
}

impl RecordedEvent {
    /// Decodes (and upcasts) the payload and metadata into the read side's envelope.
    ///
    /// # Errors
    /// [`StoreError::Decode`] for an unknown type or version or a payload or metadata that
    /// does not match its schema.
    pub fn decode(&self) -> Result<EventEnvelope, StoreError> {
        let event = Event::decode(&self.event_type, self.schema_version, self.payload.clone())?;
        let metadata: Metadata = serde_json::from_value(self.metadata.clone()).map_err(|e| {
            StoreError::Corrupt(format!("metadata of event {}: {e}", self.event_id))
        })?;
        Ok(EventEnvelope {
            global_position: self.global_position,
            event_id: self.event_id,
            stream_type: self.stream_type.clone(),
            stream_id: self.stream_id.clone(),
            stream_version: self.stream_version,
            stored_schema_version: self.schema_version,
            event,
            metadata,
            recorded_at: self.recorded_at,
        })
    }

    /// The event of `row`, its payload redacted (`event_schemas::redact`): old versions of
    /// some events held a secret, and what is read here leaves the write side.
    pub(crate) fn from_row(row: &sqlx::postgres::PgRow) -> Result<Self, StoreError> {
        let mut event = Self::stored(row)?;
        event_schemas::redact::redact_secrets(
            &event.event_type,
            event.schema_version,
            &mut event.payload,
        );
        Ok(event)
    }

    fn stored(row: &sqlx::postgres::PgRow) -> Result<Self, StoreError> {
        let corrupt = |what: &str| StoreError::Corrupt(what.to_owned());
        Ok(Self {
            global_position: row.try_get("global_position")?,
            event_id: row.try_get("event_id")?,
            stream_type: row.try_get("stream_type")?,
            stream_id: row.try_get("stream_id")?,
            stream_version: u64::try_from(row.try_get::<i64, _>("stream_version")?)
                .map_err(|_| corrupt("stream_version"))?,
            event_type: row.try_get("event_type")?,
            schema_version: u32::try_from(row.try_get::<i32, _>("schema_version")?)
                .map_err(|_| corrupt("schema_version"))?,
            // NULL only where a reader asked for them to be left out.
            payload: row
                .try_get::<Option<Value>, _>("payload")?
                .unwrap_or_default(),
            metadata: row
                .try_get::<Option<Value>, _>("metadata")?
                .unwrap_or_default(),
            recorded_at: row.try_get("recorded_at")?,
            transaction_id: row
                .try_get::<String, _>("transaction_id_text")?
                .parse()
                .map_err(|_| corrupt("transaction_id"))?,
            hash: row.try_get("hash")?,
        })
    }
}

/// The columns of [`RecordedEvent`], for every query that reads events.
pub(crate) const EVENT_COLUMNS: &str = "global_position, event_id, stream_type, stream_id, \
     stream_version, event_type, schema_version, payload, metadata, recorded_at, \
     transaction_id::text AS transaction_id_text, hash";

/// [`EVENT_COLUMNS`] with the payload and metadata NULL for the event types in `$4`
/// (`LogReader::read_batch_skipping`).
pub(crate) const EVENT_COLUMNS_SKIPPING: &str = "global_position, event_id, stream_type, \
     stream_id, stream_version, event_type, schema_version, \
     CASE WHEN event_type = ANY($4) THEN NULL ELSE payload END AS payload, \
     CASE WHEN event_type = ANY($4) THEN NULL ELSE metadata END AS metadata, recorded_at, \
     transaction_id::text AS transaction_id_text, hash";

/// The whole append in one statement, so one round trip and one transaction. The stream
/// row's upsert is the first write (every other write reads from `stream`), and when the
/// stream is not at `$3` nothing is written and `version` comes back NULL.
const APPEND_SQL: &str = r#"
WITH stream AS (
    INSERT INTO streams AS s (stream_type, stream_id, version)
    VALUES ($1, $2, $3 + cardinality($4::uuid[]))
    ON CONFLICT (stream_type, stream_id) DO UPDATE
        SET version = EXCLUDED.version
        WHERE s.version = $3
    RETURNING s.version
), released AS (
    DELETE FROM unique_claims c
     USING stream
     WHERE $10 AND c.stream_type = $1 AND c.stream_id = $2
    RETURNING 1
), claimed AS (
    INSERT INTO unique_claims (scope, value, stream_type, stream_id)
    SELECT n.scope, n.value, $1, $2
      FROM stream, unnest($8::text[], $9::text[]) AS n(scope, value)
    RETURNING 1
), secured AS (
    INSERT INTO credentials AS k (stream_type, stream_id, kind, secret)
    SELECT $1, $2, n.kind, n.secret
      FROM stream, unnest($12::text[], $13::text[]) AS n(kind, secret)
     WHERE n.secret IS NOT NULL
    ON CONFLICT (stream_type, stream_id, kind) DO UPDATE
        SET secret = EXCLUDED.secret, set_at = now()
    RETURNING 1
), revoked AS (
    DELETE FROM credentials k
     USING stream, unnest($12::text[], $13::text[]) AS n(kind, secret)
     WHERE n.secret IS NULL AND k.stream_type = $1 AND k.stream_id = $2 AND k.kind = n.kind
    RETURNING 1
), shredded AS (
    INSERT INTO data_keys AS d (subject, wrapped, kek_id, erased_at)
    SELECT $14, NULL, NULL, now()
      FROM stream
     WHERE $14 IS NOT NULL
    ON CONFLICT (subject) DO UPDATE
        SET wrapped = NULL, kek_id = NULL, erased_at = coalesce(d.erased_at, now())
    RETURNING 1
), forgotten AS (
    DELETE FROM credentials k
     USING stream
     WHERE $14 IS NOT NULL AND k.stream_type = $1 AND k.stream_id = $2
    RETURNING 1
), unsnapshotted AS (
    DELETE FROM snapshots s
     USING stream
     WHERE $14 IS NOT NULL AND s.stream_type = $1 AND s.stream_id = $2
    RETURNING 1
), appended AS (
    INSERT INTO events (event_id, stream_type, stream_id, stream_version,
                        event_type, schema_version, payload, metadata)
    SELECT e.event_id, $1, $2, $3 + e.n, e.event_type, e.schema_version, e.payload, $11
      FROM stream,
           unnest($4::uuid[], $5::text[], $6::int4[], $7::jsonb[])
               WITH ORDINALITY AS e(event_id, event_type, schema_version, payload, n)
    RETURNING global_position
)
SELECT (SELECT version FROM stream) AS version,
       min(global_position) AS first_position,
       max(global_position) AS last_position
  FROM appended
"#;

/// Counts the events of a committed append in `eventstore_appended_events_total`, by stream
/// type (a short list fixed by the code: `user`, `post`, `social_graph`, …; never an id).
fn record_appended(request: &AppendRequest) {
    metrics::counter!("eventstore_appended_events_total", "stream_type" => request.stream_type.clone())
        .increment(request.events.len() as u64);
}

/// The event store: appends and stream reads over a connection pool.
#[derive(Debug, Clone)]
pub struct PgEventStore {
    pool: PgPool,
    waker: Waker,
    keyring: Keyring,
}

impl PgEventStore {
    pub fn new(pool: PgPool) -> Self {
        Self {
            keyring: Keyring::new(pool.clone()),
            pool,
            waker: Waker::default(),
        }
    }

    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    /// The data keys its appends seal personal data with, and its reads open it with.
    pub fn keyring(&self) -> &Keyring {
        &self.keyring
    }

    /// Appends `request.events` to the stream if it is at `request.expected_version`.
    ///
    /// # Errors
    /// [`AppendError::Conflict`] for a stale expected version, [`AppendError::Taken`] for a
    /// unique value held by another stream, [`AppendError::EventIdReused`] for an event id
    /// stored with other content, [`AppendError::Store`] for database failures.
    #[tracing::instrument(skip_all, fields(stream_type = %request.stream_type, stream_id = %request.stream_id, expected = request.expected_version, events = request.events.len()))]
    pub async fn append(&self, request: &AppendRequest) -> Result<Appended, AppendError> {
        let appended = self.append_on(&self.pool, request).await?;
        if !appended.duplicate {
            self.waker.wake(&self.pool);
            record_appended(request);
        }
        Ok(appended)
    }

    /// [`Self::append`] inside the caller's transaction on `connection`, which commits or
    /// rolls back as the caller decides; the stream stays locked for other writers until
    /// then. Log readers are not woken: they find the events at their next poll, and
    /// `eventstore_appended_events_total` does not count them (only the caller knows
    /// whether they commit). The
    /// duplicate and conflict look-ups that follow a refused append read committed state
    /// through the pool; after an [`AppendError::Store`] or [`AppendError::Taken`] the
    /// transaction is aborted and must be rolled back.
    ///
    /// # Errors
    /// As [`Self::append`].
    pub async fn append_in(
        &self,
        connection: &mut PgConnection,
        request: &AppendRequest,
    ) -> Result<Appended, AppendError> {
        self.append_on(connection, request).await
    }

    async fn append_on<'e, E: PgExecutor<'e>>(
        &self,
        executor: E,
        request: &AppendRequest,
    ) -> Result<Appended, AppendError> {
        if request.events.is_empty() {
            return Err(AppendError::Empty);
        }
        let expected = to_i64(request.expected_version)?;
        let mut reserve_scopes = Vec::new();
        let mut reserve_values = Vec::new();
        let mut release_all = false;
        for claim in &request.claims {
            match claim {
                Claim::Reserve { scope, value } => {
                    reserve_scopes.push(*scope);
                    reserve_values.push(value.as_str());
                }
                Claim::ReleaseAll => release_all = true,
            }
        }
        let ids: Vec<Uuid> = request.events.iter().map(|e| e.event_id).collect();
        let types: Vec<&str> = request
            .events
            .iter()
            .map(|e| e.event_type.as_str())
            .collect();
        let versions = request
            .events
            .iter()
            .map(|e| i32::try_from(e.schema_version))
            .collect::<Result<Vec<i32>, _>>()
            .map_err(|_| StoreError::Corrupt("schema_version above i32::MAX".into()))?;
        // Personal fields sealed with their subjects' keys (`crate::keys`).
        let mut sealed = Cow::Borrowed(&request.events);
        if request
            .events
            .iter()
            .any(|e| personal_fields(&e.event_type).is_some())
        {
            self.keyring.seal(sealed.to_mut()).await?;
        }
        let payloads: Vec<&Value> = sealed.iter().map(|e| &e.payload).collect();
        let metadata = serde_json::to_value(&request.metadata)
            .map_err(|e| StoreError::Corrupt(format!("metadata: {e}")))?;
        let (kinds, secrets) = credentials::columns(&request.credentials);
        let erased: Option<Uuid> = if request.erases_subject {
            Some(Uuid::parse_str(&request.stream_id).map_err(|_| {
                StoreError::Corrupt(format!(
                    "stream {}/{} erases a person, yet its id is not a person's",
                    request.stream_type, request.stream_id
                ))
            })?)
        } else {
            None
        };

        let result = sqlx::query(APPEND_SQL)
            .bind(&request.stream_type)
            .bind(&request.stream_id)
            .bind(expected)
            .bind(&ids)
            .bind(&types)
            .bind(&versions)
            .bind(&payloads)
            .bind(&reserve_scopes)
            .bind(&reserve_values)
            .bind(release_all)
            .bind(&metadata)
            .bind(&kinds)
            .bind(&secrets)
            .bind(erased)
            .fetch_one(executor)
            .await;

        let row = match result {
            Ok(row) => row,
            Err(e) => return self.recover(request, &ids, e).await,
        };
        let Some(version) = row
            .try_get::<Option<i64>, _>("version")
            .map_err(StoreError::from)?
        else {
            return self.conflict_or_duplicate(request, &ids).await;
        };
        if let Some(subject) = erased {
            self.keyring.forget(subject);
        }
        Ok(Appended {
            stream_version: to_u64(version)?,
            first_position: row.try_get("first_position").map_err(StoreError::from)?,
            last_position: row.try_get("last_position").map_err(StoreError::from)?,
            duplicate: false,
        })
    }

    /// The stream was not at the expected version: either this is a retry of an append that
    /// already committed (same event ids), or a genuine conflict.
    async fn conflict_or_duplicate(
        &self,
        request: &AppendRequest,
        ids: &[Uuid],
    ) -> Result<Appended, AppendError> {
        if let Some(original) = self.find_original(request, ids).await? {
            return Ok(original);
        }
        let actual: Option<i64> = sqlx::query_scalar(
            "SELECT version FROM streams WHERE stream_type = $1 AND stream_id = $2",
        )
        .bind(&request.stream_type)
        .bind(&request.stream_id)
        .fetch_optional(&self.pool)
        .await
        .map_err(StoreError::from)?;
        Err(AppendError::Conflict {
            stream_type: request.stream_type.clone(),
            stream_id: request.stream_id.clone(),
            expected: request.expected_version,
            actual: to_u64(actual.unwrap_or(0))?,
        })
    }

    /// The original result when every id of `ids` is stored as this append's events.
    async fn find_original(
        &self,
        request: &AppendRequest,
        ids: &[Uuid],
    ) -> Result<Option<Appended>, AppendError> {
        let stored = sqlx::query(
            "SELECT event_id, stream_type, stream_id, stream_version, global_position \
               FROM events WHERE event_id = ANY($1) ORDER BY stream_version",
        )
        .bind(ids)
        .fetch_all(&self.pool)
        .await
        .map_err(StoreError::from)?;
        if stored.is_empty() {
            return Ok(None);
        }
        let same_append = stored.len() == ids.len()
            && stored.iter().zip(ids).all(|(row, id)| {
                row.try_get::<Uuid, _>("event_id").ok() == Some(*id)
                    && row.try_get::<String, _>("stream_type").ok().as_deref()
                        == Some(request.stream_type.as_str())
                    && row.try_get::<String, _>("stream_id").ok().as_deref()
                        == Some(request.stream_id.as_str())
            });
        if !same_append {
            let first_stored = stored[0].try_get("event_id").map_err(StoreError::from)?;
            return Err(AppendError::EventIdReused(first_stored));
        }
        let last = &stored[stored.len() - 1];
        Ok(Some(Appended {
            stream_version: to_u64(last.try_get("stream_version").map_err(StoreError::from)?)?,
            first_position: stored[0]
                .try_get("global_position")
                .map_err(StoreError::from)?,
            last_position: last.try_get("global_position").map_err(StoreError::from)?,
            duplicate: true,
        }))
    }

    /// Maps a failed append statement: a unique violation on a named constraint is the
    /// caller's conflict (or, for event ids, possibly a retry); anything else is a store error.
    async fn recover(
        &self,
        request: &AppendRequest,
        ids: &[Uuid],
        error: sqlx::Error,
    ) -> Result<Appended, AppendError> {
        let constraint = error
            .as_database_error()
            .filter(|db| db.is_unique_violation())
            .and_then(|db| db.constraint().map(str::to_owned));
        match constraint.as_deref() {
            Some("unique_claims_pkey") => Err(AppendError::Taken(self.taken_claim(request).await?)),
            Some("events_event_id_key") => match self.find_original(request, ids).await? {
                Some(original) => Ok(original),
                None => Err(StoreError::Database(error).into()),
            },
            _ => Err(StoreError::Database(error).into()),
        }
    }

    /// Which of the request's claims another stream holds (the unique violation said one does).
    async fn taken_claim(&self, request: &AppendRequest) -> Result<ClaimTaken, StoreError> {
        for claim in &request.claims {
            if let Claim::Reserve { scope, value } = claim {
                let holder: Option<(String, String)> = sqlx::query_as(
                    "SELECT stream_type, stream_id FROM unique_claims WHERE scope = $1 AND value = $2",
                )
                .bind(scope)
                .bind(value)
                .fetch_optional(&self.pool)
                .await?;
                let held_by_other = holder
                    .is_some_and(|(t, id)| t != request.stream_type || id != request.stream_id);
                if held_by_other {
                    return Ok(ClaimTaken {
                        scope: (*scope).to_owned(),
                        value: value.clone(),
                    });
                }
            }
        }
        // The holder released it between our failure and this look-up; report the first.
        request
            .claims
            .iter()
            .find_map(|c| match c {
                Claim::Reserve { scope, value } => Some(ClaimTaken {
                    scope: (*scope).to_owned(),
                    value: value.clone(),
                }),
                Claim::ReleaseAll => None,
            })
            .ok_or_else(|| StoreError::Corrupt("unique violation without a claim".into()))
    }

    /// The stream's events after `after_version`, in version order, opened (`crate::keys`).
    ///
    /// # Errors
    /// [`StoreError`] on database failure or a corrupt row.
    pub async fn read_stream(
        &self,
        stream_type: &str,
        stream_id: &str,
        after_version: u64,
    ) -> Result<Vec<RecordedEvent>, StoreError> {
        let sql = format!(
            "SELECT {EVENT_COLUMNS} FROM events \
              WHERE stream_type = $1 AND stream_id = $2 AND stream_version > $3 \
              ORDER BY stream_version"
        );
        let rows = sqlx::query(&sql)
            .bind(stream_type)
            .bind(stream_id)
            .bind(to_i64(after_version)?)
            .fetch_all(&self.pool)
            .await?;
        let mut events = rows
            .iter()
            .map(RecordedEvent::from_row)
            .collect::<Result<Vec<_>, _>>()?;
        self.keyring.open(&mut events).await?;
        Ok(events)
    }

    /// One event by its id, if it is stored, opened (`crate::keys`).
    ///
    /// # Errors
    /// [`StoreError`] on database failure or a corrupt row.
    pub async fn event(&self, event_id: Uuid) -> Result<Option<RecordedEvent>, StoreError> {
        let sql = format!("SELECT {EVENT_COLUMNS} FROM events WHERE event_id = $1");
        let row = sqlx::query(&sql)
            .bind(event_id)
            .fetch_optional(&self.pool)
            .await?;
        let mut event = row.as_ref().map(RecordedEvent::from_row).transpose()?;
        if let Some(event) = &mut event {
            self.keyring.open(std::slice::from_mut(event)).await?;
        }
        Ok(event)
    }

    /// The stream's current version (0 when it does not exist).
    ///
    /// # Errors
    /// [`StoreError`] on database failure.
    pub async fn stream_version(
        &self,
        stream_type: &str,
        stream_id: &str,
    ) -> Result<u64, StoreError> {
        let version: Option<i64> = sqlx::query_scalar(
            "SELECT version FROM streams WHERE stream_type = $1 AND stream_id = $2",
        )
        .bind(stream_type)
        .bind(stream_id)
        .fetch_optional(&self.pool)
        .await?;
        to_u64(version.unwrap_or(0))
    }
}

pub(crate) fn to_i64(v: u64) -> Result<i64, StoreError> {
    i64::try_from(v).map_err(|_| StoreError::Corrupt(format!("version {v} above i64::MAX")))
}

pub(crate) fn to_u64(v: i64) -> Result<u64, StoreError> {
    u64::try_from(v).map_err(|_| StoreError::Corrupt(format!("negative version {v}")))
}
