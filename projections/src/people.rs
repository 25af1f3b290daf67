//! Finding people by name: the `people` projection keeps each registered person's username
//! and display name in PostgreSQL (`read_model.people`, migration 16), with trigram indexes
//! (`pg_trgm`) for prefix and typo-tolerant search. It runs in both profiles: the production
//! stores (Cassandra, MongoDB) have no such index, and PostgreSQL is always there.
//!
//! Each person's events are one stream (one Kafka partition), so they arrive in order; every
//! write is idempotent. A rolled-back registration and an erasure delete the row.

use chrono::{DateTime, Utc};
use event_schemas::{Event, EventEnvelope};
use sqlx::PgPool;
use uuid::Uuid;

use crate::error::{ReadModelError, ReadResult};
use projection_runtime::runner::{ApplyError, Projection};

/// One person as search finds them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Person {
    pub user_id: Uuid,
    pub username: String,
    pub display_name: String,
    pub registered_at: DateTime<Utc>,
}

type PersonRow = (Uuid, String, String, DateTime<Utc>);

fn person((user_id, username, display_name, registered_at): PersonRow) -> Person {
    Person {
        user_id,
        username,
        display_name,
        registered_at,
    }
}

/// Longest query searched, in characters (a longer one is cut).
pub const MAX_QUERY: usize = 64;

/// The `people` read model.
#[derive(Debug, Clone)]
pub struct People {
    pool: PgPool,
}

impl People {
    pub fn new(pool: PgPool) -> Self {
        Self { pool }
    }

    /// Up to `limit` people whose username or display name starts with `query` or is
    /// close to it (trigram similarity), best first: an exact username, then prefixes, then
    /// by similarity; ties by username. Case-insensitive.
    ///
    /// # Errors
    /// When PostgreSQL fails.
    pub async fn search(&self, query: &str, limit: u32) -> ReadResult<Vec<Person>> {
        let query: String = query
            .trim()
            .to_lowercase()
            .chars()
            .take(MAX_QUERY)
            .collect();
        if query.is_empty() {
            return Ok(Vec::new());
        }
        let rows: Vec<PersonRow> = sqlx::query_as(
            "SELECT user_id, username, display_name, registered_at \
               FROM read_model.people \
              WHERE username % $1 OR lower(display_name) % $1 \
                 OR starts_with(username, $1) OR starts_with(lower(display_name), $1) \
              ORDER BY username = $1 DESC, \
                       starts_with(username, $1) OR starts_with(lower(display_name), $1) DESC, \
                       greatest(similarity(username, $1), similarity(lower(display_name), $1)) DESC, \
                       username, user_id \
              LIMIT $2",
        )
        .bind(&query)
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await?;
        Ok(rows.into_iter().map(person).collect())
    }

    /// The people among `ids` that are found, in the order of `ids`.
    ///
    /// # Errors
    /// When PostgreSQL fails.
    pub async fn by_ids(&self, ids: &[Uuid]) -> ReadResult<Vec<Person>> {
        let rows: Vec<PersonRow> = sqlx::query_as(
            "SELECT p.user_id, p.username, p.display_name, p.registered_at \
               FROM unnest($1::uuid[]) WITH ORDINALITY AS i(user_id, n) \
               JOIN read_model.people p ON p.user_id = i.user_id ORDER BY i.n",
        )
        .bind(ids)
        .fetch_all(&self.pool)
        .await?;
        Ok(rows.into_iter().map(person).collect())
    }

    /// The person who holds `username` now (after an erasure and a new registration, the
    /// newest).
    ///
    /// # Errors
    /// When PostgreSQL fails.
    pub async fn by_username(&self, username: &str) -> ReadResult<Option<Person>> {
        let row: Option<PersonRow> = sqlx::query_as(
            "SELECT user_id, username, display_name, registered_at FROM read_model.people \
              WHERE username = $1 ORDER BY registered_at DESC LIMIT 1",
        )
        .bind(username)
        .fetch_optional(&self.pool)
        .await?;
        Ok(row.map(person))
    }
}

/// The `people` projection.
#[derive(Debug, Clone)]
pub struct PeopleProjection {
    pool: PgPool,
    schema: String,
}

impl PeopleProjection {
    pub const NAME: &'static str = "people";

    /// Its tables, in every schema that holds a copy (replay copies and swaps them).
    pub const TABLES: &'static [&'static str] = &["people"];

    /// Over the live table, in [`crate::lite::LITE_SCHEMA`].
    pub fn new(pool: PgPool) -> Self {
        Self {
            pool,
            schema: crate::lite::LITE_SCHEMA.to_owned(),
        }
    }

    /// Over the table in `schema` (a replay's).
    ///
    /// # Errors
    /// [`crate::ReadModelError::Rejected`] when `schema` is not a plain identifier.
    pub fn in_schema(pool: PgPool, schema: &str) -> ReadResult<Self> {
        Ok(Self {
            pool,
            schema: crate::lite::checked_schema(schema)?,
        })
    }
}

impl Projection for PeopleProjection {
    fn name(&self) -> &str {
        Self::NAME
    }

    fn handles(&self, event_type: &str) -> bool {
        matches!(
            event_type,
            "user.registered"
                | "user.profile_updated"
                | "user.registration_rolled_back"
                | "user.erased"
        )
    }

    async fn apply(&self, envelope: &EventEnvelope) -> Result<(), ApplyError> {
        let s = &self.schema;
        let pool = &self.pool;
        let remove = || format!("DELETE FROM {s}.people WHERE user_id = $1");
        let done = match &envelope.event {
            Event::UserRegistered(e) => {
                sqlx::query(&format!(
                    "INSERT INTO {s}.people (user_id, username, display_name, registered_at) \
                     VALUES ($1, $2, $3, $4) ON CONFLICT (user_id) DO NOTHING"
                ))
                .bind(e.user_id)
                .bind(&e.username)
                .bind(&e.display_name)
                .bind(envelope.recorded_at)
                .execute(pool)
                .await
            }
            Event::UserProfileUpdated(e) => {
                sqlx::query(&format!(
                    "UPDATE {s}.people SET display_name = $2 WHERE user_id = $1"
                ))
                .bind(e.user_id)
                .bind(&e.display_name)
                .execute(pool)
                .await
            }
            Event::UserRegistrationRolledBack(e) => {
                sqlx::query(&remove()).bind(e.user_id).execute(pool).await
            }
            Event::UserErased(e) => sqlx::query(&remove()).bind(e.user_id).execute(pool).await,
            _ => return Ok(()),
        };
        done.map_err(ReadModelError::from)?;
        Ok(())
    }
}
