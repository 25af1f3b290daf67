//! The analytics read model: signups, posts and likes per day, and the most liked
//! posts, in PostgreSQL tables of one schema (`analytics` live; migration 7).
//!
//! Built only by replay: no worker follows the log with it. The contract with `hybridlive
//! replay analytics`: copy [`TABLES`] into a fresh schema (`CREATE TABLE fresh.t (LIKE
//! analytics.t INCLUDING ALL)`), drive an [`AnalyticsProjection`] on that schema through
//! the [`Projection`] trait, move the tables into [`LIVE_SCHEMA`] (`ALTER TABLE … SET
//! SCHEMA`, the old ones out first) and run [`GRANTS`] again, since grants do not travel
//! with `LIKE`. Hence the tables have no sequences and no foreign keys between them.
//!
//! # Idempotency
//! The tables hold facts keyed by the ids of what they record, and every write merges into
//! them: insert-or-keep, `LEAST` of days, `GREATEST` of positions, and for the current like
//! of a (post, user) pair the event with the highest version of its stream wins. Each merge
//! is idempotent and commutative, so applying any events any number of times, in any
//! order, leaves the state that applying each once in log order leaves: a batch applied
//! again after a crash (the runner checkpoints per batch) changes nothing. Figures are
//! aggregated at query time from these facts; no counter is ever incremented.
//!
//! # What the figures mean
//! Days are UTC days of the events' `recorded_at`.
//! - **signups** of a day: users whose `user.registered` was recorded that day, less those
//!   whose registration was rolled back since (`user.registration_rolled_back`, the saga's
//!   compensation: that user never came into being). They are reported as `rolled_back` of
//!   their registration day instead, so signups + rolled_back = registrations of the day.
//! - **posts** of a day: `post.published` recorded that day, deleted since or not (they were
//!   published); **posts_deleted**: `post.deleted` recorded that day.
//! - **likes** / **unlikes** of a day: `post.liked` / `post.unliked` events recorded that day.
//!   A day's figures are what happened that day and never change afterwards; likes − unlikes
//!   summed over all days is the number of likes standing now.
//! - **top posts**: live (not deleted) posts by the number of users who like them now;
//!   posts nobody likes are left out; ties go to the smaller post id.
//! - **built**: the highest global position and the newest `recorded_at` among the events
//!   applied — the model is as of then. The model records this itself (table `built`), so
//!   it travels with the tables when they are swapped; nothing reads `checkpoints`.

use chrono::{DateTime, NaiveDate, Utc};
use event_schemas::personal::ERASED;
use event_schemas::{Event, EventEnvelope};
use sqlx::PgPool;
use uuid::Uuid;

use crate::error::{ReadModelError, ReadResult};
use crate::lite::checked_schema;
use projection_runtime::runner::{ApplyError, Projection};

/// The schema the API reads.
pub const LIVE_SCHEMA: &str = "analytics";

/// Every table of the model, as the replay copies and swaps them.
pub const TABLES: &[&str] = &["signups", "posts", "like_events", "likes", "built"];

/// The grants of migration 7 on [`LIVE_SCHEMA`], to run again after tables were moved in.
pub const GRANTS: &[&str] = &[
    "GRANT USAGE ON SCHEMA analytics TO hybridlive_writer, hybridlive_reader",
    "GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA analytics TO hybridlive_writer",
    "GRANT SELECT ON ALL TABLES IN SCHEMA analytics TO hybridlive_reader",
];

/// Signups of one day.
#[derive(Debug, Clone, Copy, PartialEq, Eq, sqlx::FromRow)]
pub struct DailySignups {
    pub day: NaiveDate,
    /// Registrations of the day that stand.
    pub signups: i64,
    /// Registrations of the day rolled back since.
    pub rolled_back: i64,
}

/// Posts and likes of one day.
#[derive(Debug, Clone, Copy, PartialEq, Eq, sqlx::FromRow)]
pub struct DailyActivity {
    pub day: NaiveDate,
    pub posts: i64,
    pub posts_deleted: i64,
    pub likes: i64,
    pub unlikes: i64,
}

/// A live post and how many users like it now.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct TopPost {
    pub post_id: Uuid,
    pub author_id: Uuid,
    pub title: String,
    /// The day it was published.
    pub day: NaiveDate,
    pub like_count: i64,
}

/// How far the model is built.
#[derive(Debug, Clone, Copy, PartialEq, Eq, sqlx::FromRow)]
pub struct Built {
    /// The highest global position among the events applied.
    pub global_position: i64,
    /// The newest `recorded_at` among them.
    pub recorded_at: DateTime<Utc>,
}

/// The `analytics` projection and the queries on its tables.
#[derive(Debug, Clone)]
pub struct AnalyticsProjection {
    pool: PgPool,
    schema: String,
}

impl AnalyticsProjection {
    pub const NAME: &'static str = "analytics";

    /// The model in `schema` (the replay's fresh schema, or [`LIVE_SCHEMA`]).
    ///
    /// # Errors
    /// [`ReadModelError::Rejected`] when `schema` is not a plain lower-case identifier.
    pub fn new(pool: PgPool, schema: &str) -> ReadResult<Self> {
        Ok(Self {
            pool,
            schema: checked_schema(schema)?,
        })
    }

    /// The live model, in [`LIVE_SCHEMA`].
    pub fn live(pool: PgPool) -> Self {
        Self {
            pool,
            schema: LIVE_SCHEMA.to_owned(),
        }
    }

    pub fn schema(&self) -> &str {
        &self.schema
    }

    /// Signups per day from `from` to `to` (inclusive), every day listed (zeros too); empty
    /// when `from` is after `to`. The caller bounds the range.
    ///
    /// # Errors
    /// [`ReadModelError`] when the store fails.
    pub async fn daily_signups(
        &self,
        from: NaiveDate,
        to: NaiveDate,
    ) -> ReadResult<Vec<DailySignups>> {
        let s = &self.schema;
        Ok(sqlx::query_as(&format!(
            "WITH days AS ( \
                 SELECT d::date AS day FROM generate_series($1::date, $2::date, interval '1 day') d), \
             counted AS ( \
                 SELECT day, count(*) FILTER (WHERE NOT rolled_back) AS signups, \
                        count(*) FILTER (WHERE rolled_back) AS rolled_back \
                   FROM {s}.signups WHERE day BETWEEN $1 AND $2 GROUP BY day) \
             SELECT days.day, coalesce(signups, 0) AS signups, \
                    coalesce(rolled_back, 0) AS rolled_back \
               FROM days LEFT JOIN counted USING (day) ORDER BY days.day"
        ))
        .bind(from)
        .bind(to)
        .fetch_all(&self.pool)
        .await?)
    }

    /// Posts and likes per day from `from` to `to` (inclusive), every day listed; empty
    /// when `from` is after `to`. The caller bounds the range.
    ///
    /// # Errors
    /// [`ReadModelError`] when the store fails.
    pub async fn daily_activity(
        &self,
        from: NaiveDate,
        to: NaiveDate,
    ) -> ReadResult<Vec<DailyActivity>> {
        let s = &self.schema;
        Ok(sqlx::query_as(&format!(
            "WITH days AS ( \
                 SELECT d::date AS day FROM generate_series($1::date, $2::date, interval '1 day') d), \
             published AS ( \
                 SELECT day, count(*) AS n FROM {s}.posts WHERE day BETWEEN $1 AND $2 GROUP BY day), \
             deleted AS ( \
                 SELECT deleted_day AS day, count(*) AS n FROM {s}.posts \
                  WHERE deleted_day BETWEEN $1 AND $2 GROUP BY deleted_day), \
             liked AS ( \
                 SELECT day, count(*) FILTER (WHERE liked) AS likes, \
                        count(*) FILTER (WHERE NOT liked) AS unlikes \
                   FROM {s}.like_events WHERE day BETWEEN $1 AND $2 GROUP BY day) \
             SELECT days.day, coalesce(published.n, 0) AS posts, \
                    coalesce(deleted.n, 0) AS posts_deleted, \
                    coalesce(liked.likes, 0) AS likes, coalesce(liked.unlikes, 0) AS unlikes \
               FROM days LEFT JOIN published USING (day) LEFT JOIN deleted USING (day) \
                    LEFT JOIN liked USING (day) \
              ORDER BY days.day"
        ))
        .bind(from)
        .bind(to)
        .fetch_all(&self.pool)
        .await?)
    }

    /// Up to `limit` live posts that someone likes, most liked first.
    ///
    /// # Errors
    /// [`ReadModelError`] when the store fails.
    pub async fn top_posts(&self, limit: u32) -> ReadResult<Vec<TopPost>> {
        let s = &self.schema;
        Ok(sqlx::query_as(&format!(
            "SELECT p.post_id, p.author_id, p.title, p.day, l.like_count \
               FROM (SELECT post_id, count(*) AS like_count FROM {s}.likes WHERE liked \
                      GROUP BY post_id) l \
               JOIN {s}.posts p USING (post_id) \
              WHERE p.deleted_day IS NULL AND p.day IS NOT NULL AND p.title IS NOT NULL \
              ORDER BY l.like_count DESC, p.post_id \
              LIMIT $1"
        ))
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await?)
    }

    /// How far the model is built; `None` before its first event.
    ///
    /// # Errors
    /// [`ReadModelError`] when the store fails.
    pub async fn built(&self) -> ReadResult<Option<Built>> {
        Ok(sqlx::query_as(&format!(
            "SELECT global_position, recorded_at FROM {}.built",
            self.schema
        ))
        .fetch_optional(&self.pool)
        .await?)
    }
}

impl Projection for AnalyticsProjection {
    fn name(&self) -> &str {
        Self::NAME
    }

    fn handles(&self, event_type: &str) -> bool {
        matches!(
            event_type,
            "user.registered"
                | "user.registration_rolled_back"
                | "post.published"
                | "post.deleted"
                | "post.liked"
                | "post.unliked"
                | "user.erased"
        )
    }

    async fn apply(&self, envelope: &EventEnvelope) -> Result<(), ApplyError> {
        let s = &self.schema;
        let day = envelope.recorded_at.date_naive();
        // `LEAST`/`GREATEST` ignore NULLs; each merge keeps what any order of the same
        // events would keep (module docs).
        match &envelope.event {
            Event::UserRegistered(e) => {
                let sql = self.merge(
                    &[format!(
                        "INSERT INTO {s}.signups AS u (user_id, day) VALUES ($1, $2) \
                         ON CONFLICT (user_id) DO UPDATE SET day = LEAST(u.day, EXCLUDED.day)"
                    )],
                    3,
                );
                self.execute(sqlx::query(&sql).bind(e.user_id).bind(day), envelope)
                    .await
            }
            Event::UserRegistrationRolledBack(e) => {
                let sql = self.merge(
                    &[format!(
                        "INSERT INTO {s}.signups (user_id, rolled_back) VALUES ($1, true) \
                         ON CONFLICT (user_id) DO UPDATE SET rolled_back = true"
                    )],
                    2,
                );
                self.execute(sqlx::query(&sql).bind(e.user_id), envelope)
                    .await
            }
            Event::PostPublished(e) => {
                // One publication per post (the aggregate refuses a second), so keeping the
                // first title seen is keeping its title.
                let sql = self.merge(
                    &[format!(
                        "INSERT INTO {s}.posts AS p (post_id, author_id, title, day) \
                         VALUES ($1, $2, $3, $4) \
                         ON CONFLICT (post_id) DO UPDATE SET \
                             title = coalesce(p.title, EXCLUDED.title), \
                             day = LEAST(p.day, EXCLUDED.day)"
                    )],
                    5,
                );
                // An erased author's title opens to `[erased]`: none is kept.
                let query = sqlx::query(&sql)
                    .bind(e.post_id)
                    .bind(e.author_id)
                    .bind((e.title != ERASED).then_some(&e.title))
                    .bind(day);
                self.execute(query, envelope).await
            }
            Event::PostDeleted(e) => {
                let sql = self.merge(
                    &[format!(
                        "INSERT INTO {s}.posts AS p (post_id, author_id, deleted_day) \
                         VALUES ($1, $2, $3) \
                         ON CONFLICT (post_id) DO UPDATE SET \
                             deleted_day = LEAST(p.deleted_day, EXCLUDED.deleted_day)"
                    )],
                    4,
                );
                let query = sqlx::query(&sql)
                    .bind(e.post_id)
                    .bind(e.author_id)
                    .bind(day);
                self.execute(query, envelope).await
            }
            Event::PostLiked(e) => self.like(envelope, e.post_id, e.user_id, true).await,
            Event::PostUnliked(e) => self.like(envelope, e.post_id, e.user_id, false).await,
            Event::UserErased(e) => {
                let sql = self.merge(&[forget_titles_sql(s)], 2);
                self.execute(sqlx::query(&sql).bind(e.user_id), envelope)
                    .await
            }
            _ => Ok(()),
        }
    }
}

/// Empties the titles of `$1`'s posts in schema `s`: the only personal data the model holds.
fn forget_titles_sql(s: &str) -> String {
    format!("UPDATE {s}.posts SET title = NULL WHERE author_id = $1 AND title IS NOT NULL")
}

/// Forgets the titles of an erased person's posts in the live model at once (no worker
/// follows the log with this model; a replay applies `user.erased` itself). Idempotent.
///
/// # Errors
/// On database failure.
pub async fn forget_author(pool: &PgPool, user: Uuid) -> ReadResult<()> {
    sqlx::query(&forget_titles_sql(LIVE_SCHEMA))
        .bind(user)
        .execute(pool)
        .await?;
    Ok(())
}

/// The writes of [`Projection::apply`].
impl AnalyticsProjection {
    /// One statement: the `facts` (data-modifying CTEs over parameters `$1…$(next - 1)`),
    /// then `built` moved up to parameters `$next` (position) and `$next + 1`
    /// (recorded_at).
    fn merge(&self, facts: &[String], next: usize) -> String {
        let s = &self.schema;
        let ctes: Vec<String> = facts
            .iter()
            .enumerate()
            .map(|(i, fact)| format!("fact{i} AS ({fact})"))
            .collect();
        format!(
            "WITH {} \
             INSERT INTO {s}.built AS b (global_position, recorded_at) VALUES (${next}, ${}) \
             ON CONFLICT (singleton) DO UPDATE SET \
                 global_position = GREATEST(b.global_position, EXCLUDED.global_position), \
                 recorded_at = GREATEST(b.recorded_at, EXCLUDED.recorded_at)",
            ctes.join(", "),
            next + 1
        )
    }

    /// Binds the `built` parameters of [`Self::merge`] (the last two) and runs the statement.
    async fn execute(
        &self,
        query: sqlx::query::Query<'_, sqlx::Postgres, sqlx::postgres::PgArguments>,
        envelope: &EventEnvelope,
    ) -> Result<(), ApplyError> {
        query
            .bind(envelope.global_position)
            .bind(envelope.recorded_at)
            .execute(&self.pool)
            .await
            .map_err(ReadModelError::from)?;
        Ok(())
    }

    /// A like or unlike: the event itself, and the pair's current like if this event is
    /// the newest of its stream applied so far.
    async fn like(
        &self,
        envelope: &EventEnvelope,
        post_id: Uuid,
        user_id: Uuid,
        liked: bool,
    ) -> Result<(), ApplyError> {
        let s = &self.schema;
        let version = i64::try_from(envelope.stream_version).map_err(|_| {
            ApplyError::Poison(format!(
                "stream version {} of event {} is out of range",
                envelope.stream_version, envelope.event_id
            ))
        })?;
        let sql = self.merge(
            &[
                format!(
                    "INSERT INTO {s}.like_events (event_id, post_id, user_id, liked, day) \
                     VALUES ($1, $2, $3, $4, $5) ON CONFLICT (event_id) DO NOTHING"
                ),
                format!(
                    "INSERT INTO {s}.likes AS l (post_id, user_id, liked, version) \
                     VALUES ($2, $3, $4, $6) \
                     ON CONFLICT (post_id, user_id) DO UPDATE \
                         SET liked = EXCLUDED.liked, version = EXCLUDED.version \
                         WHERE l.version < EXCLUDED.version"
                ),
            ],
            7,
        );
        let query = sqlx::query(&sql)
            .bind(envelope.event_id)
            .bind(post_id)
            .bind(user_id)
            .bind(liked)
            .bind(envelope.recorded_at.date_naive())
            .bind(version);
        self.execute(query, envelope).await
    }
}
