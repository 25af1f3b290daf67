//! [`PgContent`]: the lite [`ContentStore`] in PostgreSQL, documents as jsonb (migration 4).

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use sqlx::PgPool;
use uuid::Uuid;

use super::{Change, CommentDoc, ContentStore, PostDoc, Profile};
use crate::error::ReadResult;
use crate::timeline::postgres::checked_schema;

/// Content in the tables of one schema (`read_model` by default; replay builds others).
#[derive(Debug, Clone)]
pub struct PgContent {
    pool: PgPool,
    schema: String,
}

/// The jsonb document of a post: what never changes after publication.
#[derive(Serialize, Deserialize)]
struct PostBody {
    title: String,
    body_markdown: String,
    body_html: String,
    preview: String,
    media: Vec<String>,
    created_at: DateTime<Utc>,
}

#[derive(Serialize, Deserialize)]
struct CommentBody {
    author_id: Uuid,
    body: String,
    created_at: DateTime<Utc>,
}

type PostRow = (Uuid, Uuid, i64, sqlx::types::Json<PostBody>, i64, i64);

fn post_doc((post_id, author_id, position, doc, like_count, comment_count): PostRow) -> PostDoc {
    let body = doc.0;
    PostDoc {
        post_id,
        author_id,
        position,
        title: body.title,
        body_markdown: body.body_markdown,
        body_html: body.body_html,
        preview: body.preview,
        media: body.media,
        like_count,
        comment_count,
        created_at: body.created_at,
    }
}

impl PgContent {
    /// Its tables, in every schema that holds a copy (replay copies and swaps them).
    pub const TABLES: &'static [&'static str] = &["profiles", "posts", "comments", "likes"];

    /// The live lite model, in [`crate::query::LITE_SCHEMA`].
    pub fn lite(pool: PgPool) -> Self {
        Self {
            pool,
            schema: crate::query::LITE_SCHEMA.to_owned(),
        }
    }

    /// The content in `schema`.
    ///
    /// # Errors
    /// [`crate::ReadModelError::Rejected`] when `schema` is not a plain identifier.
    pub fn new(pool: PgPool, schema: &str) -> ReadResult<Self> {
        Ok(Self {
            pool,
            schema: checked_schema(schema)?,
        })
    }

    fn select_posts(&self) -> String {
        format!(
            "SELECT post_id, author_id, position, doc, like_count, comment_count FROM {}.posts",
            self.schema
        )
    }
}

#[async_trait]
impl ContentStore for PgContent {
    async fn put_profile(&self, profile: &Profile) -> ReadResult<()> {
        sqlx::query(&format!(
            "INSERT INTO {}.profiles (user_id, username, display_name, registered_at) \
             VALUES ($1, $2, $3, $4) ON CONFLICT DO NOTHING",
            self.schema
        ))
        .bind(profile.user_id)
        .bind(&profile.username)
        .bind(&profile.display_name)
        .bind(profile.registered_at)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    async fn rename(&self, user: Uuid, display_name: &str) -> ReadResult<()> {
        sqlx::query(&format!(
            "UPDATE {}.profiles SET display_name = $2 WHERE user_id = $1",
            self.schema
        ))
        .bind(user)
        .bind(display_name)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    async fn remove_profile(&self, user: Uuid) -> ReadResult<()> {
        sqlx::query(&format!(
            "DELETE FROM {}.profiles WHERE user_id = $1",
            self.schema
        ))
        .bind(user)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    async fn profile(&self, user: Uuid) -> ReadResult<Option<Profile>> {
        let row: Option<(Uuid, String, String, DateTime<Utc>)> = sqlx::query_as(&format!(
            "SELECT user_id, username, display_name, registered_at FROM {}.profiles WHERE user_id = $1",
            self.schema
        ))
        .bind(user)
        .fetch_optional(&self.pool)
        .await?;
        Ok(
            row.map(|(user_id, username, display_name, registered_at)| Profile {
                user_id,
                username,
                display_name,
                registered_at,
            }),
        )
    }

    async fn insert_post(&self, post: &PostDoc) -> ReadResult<()> {
        let body = PostBody {
            title: post.title.clone(),
            body_markdown: post.body_markdown.clone(),
            body_html: post.body_html.clone(),
            preview: post.preview.clone(),
            media: post.media.clone(),
            created_at: post.created_at,
        };
        sqlx::query(&format!(
            "INSERT INTO {}.posts (post_id, author_id, position, doc) VALUES ($1, $2, $3, $4) \
             ON CONFLICT DO NOTHING",
            self.schema
        ))
        .bind(post.post_id)
        .bind(post.author_id)
        .bind(post.position)
        .bind(sqlx::types::Json(body))
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    async fn delete_post(&self, post: Uuid) -> ReadResult<()> {
        sqlx::query(&format!(
            "UPDATE {}.posts SET deleted = true WHERE post_id = $1",
            self.schema
        ))
        .bind(post)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    async fn post(&self, post: Uuid) -> ReadResult<Option<PostDoc>> {
        let row: Option<PostRow> = sqlx::query_as(&format!(
            "{} WHERE post_id = $1 AND NOT deleted",
            self.select_posts()
        ))
        .bind(post)
        .fetch_optional(&self.pool)
        .await?;
        Ok(row.map(post_doc))
    }

    async fn posts(&self, ids: &[Uuid]) -> ReadResult<Vec<PostDoc>> {
        let rows: Vec<PostRow> = sqlx::query_as(&format!(
            "{} WHERE post_id = ANY($1) AND NOT deleted",
            self.select_posts()
        ))
        .bind(ids)
        .fetch_all(&self.pool)
        .await?;
        Ok(rows.into_iter().map(post_doc).collect())
    }

    async fn add_comment(&self, comment: &CommentDoc) -> ReadResult<Change> {
        let s = &self.schema;
        let body = CommentBody {
            author_id: comment.author_id,
            body: comment.body.clone(),
            created_at: comment.created_at,
        };
        // One statement: the comment is stored and counted only on a live post, and only
        // the first time.
        let row: Option<(bool, i64)> = sqlx::query_as(&format!(
            "WITH live AS (SELECT post_id FROM {s}.posts WHERE post_id = $2 AND NOT deleted), \
             inserted AS ( \
                 INSERT INTO {s}.comments (comment_id, post_id, position, doc) \
                 SELECT $1, post_id, $3, $4 FROM live \
                 ON CONFLICT DO NOTHING RETURNING post_id), \
             counted AS ( \
                 UPDATE {s}.posts p SET comment_count = p.comment_count + 1 \
                   FROM inserted WHERE p.post_id = inserted.post_id \
                 RETURNING p.comment_count) \
             SELECT changed, n FROM ( \
                 SELECT true AS changed, comment_count AS n FROM counted \
                 UNION ALL SELECT false, comment_count FROM {s}.posts WHERE post_id = $2) r \
             ORDER BY changed DESC LIMIT 1"
        ))
        .bind(comment.comment_id)
        .bind(comment.post_id)
        .bind(comment.position)
        .bind(sqlx::types::Json(body))
        .fetch_optional(&self.pool)
        .await?;
        Ok(change(row))
    }

    async fn comments(
        &self,
        post: Uuid,
        before: Option<i64>,
        limit: usize,
    ) -> ReadResult<Vec<CommentDoc>> {
        let rows: Vec<(Uuid, Uuid, i64, sqlx::types::Json<CommentBody>)> =
            sqlx::query_as(&format!(
                "SELECT comment_id, post_id, position, doc FROM {}.comments \
                  WHERE post_id = $1 AND ($2::bigint IS NULL OR position < $2) \
                  ORDER BY position DESC LIMIT $3",
                self.schema
            ))
            .bind(post)
            .bind(before)
            .bind(i64::try_from(limit).unwrap_or(i64::MAX))
            .fetch_all(&self.pool)
            .await?;
        Ok(rows
            .into_iter()
            .map(|(comment_id, post_id, position, doc)| CommentDoc {
                comment_id,
                post_id,
                author_id: doc.0.author_id,
                position,
                body: doc.0.body,
                created_at: doc.0.created_at,
            })
            .collect())
    }

    async fn set_like(&self, post: Uuid, user: Uuid, liked: bool) -> ReadResult<Change> {
        let s = &self.schema;
        let (write, delta) = if liked {
            (
                format!(
                    "INSERT INTO {s}.likes (post_id, user_id) SELECT post_id, $2 FROM live \
                     ON CONFLICT DO NOTHING RETURNING post_id"
                ),
                "+ 1",
            )
        } else {
            (
                format!(
                    "DELETE FROM {s}.likes l USING live WHERE l.post_id = live.post_id \
                     AND l.user_id = $2 RETURNING l.post_id"
                ),
                "- 1",
            )
        };
        let row: Option<(bool, i64)> = sqlx::query_as(&format!(
            "WITH live AS (SELECT post_id FROM {s}.posts WHERE post_id = $1 AND NOT deleted), \
             changed AS ({write}), \
             counted AS ( \
                 UPDATE {s}.posts p SET like_count = p.like_count {delta} \
                   FROM changed WHERE p.post_id = changed.post_id \
                 RETURNING p.like_count) \
             SELECT changed, n FROM ( \
                 SELECT true AS changed, like_count AS n FROM counted \
                 UNION ALL SELECT false, like_count FROM {s}.posts WHERE post_id = $1) r \
             ORDER BY changed DESC LIMIT 1"
        ))
        .bind(post)
        .bind(user)
        .fetch_optional(&self.pool)
        .await?;
        Ok(change(row))
    }
}

/// The first row of "changed, count" queries: (true, new) when the write happened, else
/// (false, current); no row for an unknown post.
fn change(row: Option<(bool, i64)>) -> Change {
    match row {
        Some((changed, count)) => Change { changed, count },
        None => Change {
            changed: false,
            count: 0,
        },
    }
}
