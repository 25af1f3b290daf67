//! [`PgTimelines`]: the lite [`TimelineStore`] in PostgreSQL (tables of migration 4).

use async_trait::async_trait;
use sqlx::PgPool;
use uuid::Uuid;

use super::{FollowCounts, TimelineEntry, TimelineStore};
use crate::error::{ReadModelError, ReadResult};

/// Timelines in the tables of one schema (`read_model` by default; replay builds others).
#[derive(Debug, Clone)]
pub struct PgTimelines {
    pool: PgPool,
    schema: String,
}

/// Checks that `schema` is a plain identifier, since it is spliced into SQL.
pub fn checked_schema(schema: &str) -> ReadResult<String> {
    let plain = !schema.is_empty()
        && schema.len() <= 63
        && schema.starts_with(|c: char| c.is_ascii_lowercase() || c == '_')
        && schema
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
    if plain {
        Ok(schema.to_owned())
    } else {
        Err(ReadModelError::Rejected(format!(
            "`{schema}` is not a plain schema name"
        )))
    }
}

impl PgTimelines {
    /// Its tables, in every schema that holds a copy (replay copies and swaps them).
    pub const TABLES: &'static [&'static str] = &[
        "follows",
        "timelines",
        "timeline_lengths",
        "author_posts",
        "merged_authors",
    ];

    /// The live lite model, in [`crate::query::LITE_SCHEMA`].
    pub fn lite(pool: PgPool) -> Self {
        Self {
            pool,
            schema: crate::query::LITE_SCHEMA.to_owned(),
        }
    }

    /// The timelines in `schema`.
    ///
    /// # Errors
    /// [`ReadModelError::Rejected`] when `schema` is not a plain lower-case identifier.
    pub fn new(pool: PgPool, schema: &str) -> ReadResult<Self> {
        Ok(Self {
            pool,
            schema: checked_schema(schema)?,
        })
    }
}

fn limit(n: usize) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

#[async_trait]
impl TimelineStore for PgTimelines {
    async fn follow(&self, follower: Uuid, followee: Uuid) -> ReadResult<()> {
        sqlx::query(&format!(
            "INSERT INTO {}.follows (follower_id, followee_id) VALUES ($1, $2) ON CONFLICT DO NOTHING",
            self.schema
        ))
        .bind(follower)
        .bind(followee)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    async fn unfollow(&self, follower: Uuid, followee: Uuid) -> ReadResult<()> {
        sqlx::query(&format!(
            "DELETE FROM {}.follows WHERE follower_id = $1 AND followee_id = $2",
            self.schema
        ))
        .bind(follower)
        .bind(followee)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    async fn followers(&self, user: Uuid) -> ReadResult<Vec<Uuid>> {
        Ok(sqlx::query_scalar(&format!(
            "SELECT follower_id FROM {}.follows WHERE followee_id = $1",
            self.schema
        ))
        .bind(user)
        .fetch_all(&self.pool)
        .await?)
    }

    async fn counts(&self, user: Uuid) -> ReadResult<FollowCounts> {
        let s = &self.schema;
        let (followers, following): (i64, i64) = sqlx::query_as(&format!(
            "SELECT (SELECT count(*) FROM {s}.follows WHERE followee_id = $1), \
                    (SELECT count(*) FROM {s}.follows WHERE follower_id = $1)"
        ))
        .bind(user)
        .fetch_one(&self.pool)
        .await?;
        Ok(FollowCounts {
            followers: followers.unsigned_abs(),
            following: following.unsigned_abs(),
        })
    }

    async fn add_author_post(&self, entry: TimelineEntry) -> ReadResult<()> {
        sqlx::query(&format!(
            "INSERT INTO {}.author_posts (author_id, position, post_id) VALUES ($1, $2, $3) \
             ON CONFLICT DO NOTHING",
            self.schema
        ))
        .bind(entry.author_id)
        .bind(entry.position)
        .bind(entry.post_id)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    async fn deliver(&self, users: &[Uuid], entry: TimelineEntry, cap: usize) -> ReadResult<()> {
        let s = &self.schema;
        let cap = cap.max(1);
        let mut tx = self.pool.begin().await?;
        // Only rows really inserted count towards a timeline's length (idempotent); the
        // timelines that passed the cap by more than an eighth are trimmed back to it.
        let over: Vec<Uuid> = sqlx::query_scalar(&format!(
            "WITH inserted AS ( \
                 INSERT INTO {s}.timelines (user_id, position, post_id, author_id) \
                 SELECT u, $2, $3, $4 FROM unnest($1::uuid[]) AS u \
                 ON CONFLICT DO NOTHING RETURNING user_id), \
             counted AS ( \
                 INSERT INTO {s}.timeline_lengths (user_id, entries) \
                 SELECT user_id, 1 FROM inserted \
                 ON CONFLICT (user_id) DO UPDATE SET entries = {s}.timeline_lengths.entries + 1 \
                 RETURNING user_id, entries) \
             SELECT user_id FROM counted WHERE entries > $5"
        ))
        .bind(users)
        .bind(entry.position)
        .bind(entry.post_id)
        .bind(entry.author_id)
        .bind(limit(cap + cap / 8))
        .fetch_all(&mut *tx)
        .await?;
        if !over.is_empty() {
            sqlx::query(&format!(
                "WITH doomed AS ( \
                     DELETE FROM {s}.timelines t USING unnest($1::uuid[]) AS o(user_id) \
                     WHERE t.user_id = o.user_id AND t.position < ( \
                         SELECT x.position FROM {s}.timelines x WHERE x.user_id = o.user_id \
                         ORDER BY x.position DESC OFFSET $2 LIMIT 1) \
                     RETURNING t.user_id) \
                 UPDATE {s}.timeline_lengths l SET entries = l.entries - d.n \
                   FROM (SELECT user_id, count(*) AS n FROM doomed GROUP BY user_id) d \
                  WHERE l.user_id = d.user_id"
            ))
            .bind(&over)
            .bind(limit(cap - 1))
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    async fn mark_merged_at_read(&self, author: Uuid) -> ReadResult<()> {
        sqlx::query(&format!(
            "INSERT INTO {}.merged_authors (author_id) VALUES ($1) ON CONFLICT DO NOTHING",
            self.schema
        ))
        .bind(author)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    async fn merged_authors_followed_by(&self, user: Uuid) -> ReadResult<Vec<Uuid>> {
        let s = &self.schema;
        Ok(sqlx::query_scalar(&format!(
            "SELECT m.author_id FROM {s}.merged_authors m \
               JOIN {s}.follows f ON f.followee_id = m.author_id \
              WHERE f.follower_id = $1"
        ))
        .bind(user)
        .fetch_all(&self.pool)
        .await?)
    }

    async fn remove_post(&self, author: Uuid, post_id: Uuid) -> ReadResult<()> {
        let s = &self.schema;
        let mut tx = self.pool.begin().await?;
        sqlx::query(&format!(
            "DELETE FROM {s}.author_posts WHERE author_id = $1 AND post_id = $2"
        ))
        .bind(author)
        .bind(post_id)
        .execute(&mut *tx)
        .await?;
        sqlx::query(&format!(
            "WITH removed AS (DELETE FROM {s}.timelines WHERE post_id = $1 RETURNING user_id) \
             UPDATE {s}.timeline_lengths l SET entries = l.entries - 1 \
               FROM removed WHERE l.user_id = removed.user_id"
        ))
        .bind(post_id)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(())
    }

    async fn timeline(
        &self,
        user: Uuid,
        before: Option<i64>,
        limit_to: usize,
    ) -> ReadResult<Vec<TimelineEntry>> {
        self.page("timelines", "user_id", user, before, limit_to)
            .await
    }

    async fn author_posts(
        &self,
        author: Uuid,
        before: Option<i64>,
        limit_to: usize,
    ) -> ReadResult<Vec<TimelineEntry>> {
        self.page("author_posts", "author_id", author, before, limit_to)
            .await
    }
}

impl PgTimelines {
    /// Newest-first entries of one owner's list (`table` keyed by `owner_column`).
    async fn page(
        &self,
        table: &str,
        owner_column: &str,
        owner: Uuid,
        before: Option<i64>,
        limit_to: usize,
    ) -> ReadResult<Vec<TimelineEntry>> {
        let rows: Vec<(i64, Uuid, Uuid)> = sqlx::query_as(&format!(
            "SELECT position, post_id, author_id FROM {schema}.{table} \
              WHERE {owner_column} = $1 AND ($2::bigint IS NULL OR position < $2) \
              ORDER BY position DESC LIMIT $3",
            schema = self.schema,
        ))
        .bind(owner)
        .bind(before)
        .bind(limit(limit_to))
        .fetch_all(&self.pool)
        .await?;
        Ok(rows
            .into_iter()
            .map(|(position, post_id, author_id)| TimelineEntry {
                position,
                post_id,
                author_id,
            })
            .collect())
    }
}
