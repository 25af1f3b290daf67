//! In-app notifications: who followed you, who liked and who commented on your posts,
//! grouped per post and kind ("ada and 12 others liked your post"), never for your own
//! acts. PostgreSQL in both profiles (`read_model.notification_*`, migration 20).
//!
//! **Order.** The acts arrive on other topics than the posts they are about, so every
//! write commutes: an act is stored under its target (the post, or the person followed)
//! whether or not the post is known yet, and a post's author when the post arrives; the
//! reader joins them. A like consumed before its post is shown once the post is there; one
//! consumed after the post's deletion never is. Like and unlike of one person on one post
//! (one stream, one partition) arrive in order, as do follow and unfollow.
//!
//! **Read marks** are events (`user.notifications_read`), so a rebuilt read model keeps them:
//! a group is read when its newest act is at or below the person's mark.

use chrono::{DateTime, Utc};
use event_schemas::{Event, EventEnvelope};
use serde_json::json;
use sqlx::PgPool;
use uuid::Uuid;

use crate::error::{ReadModelError, ReadResult};
use projection_runtime::runner::{ApplyError, Projection};
use real_time::live::{user_channel, LivePublisher, Push};

/// Kinds of notification.
pub mod kind {
    pub const FOLLOW: &str = "follow";
    pub const LIKE: &str = "like";
    pub const COMMENT: &str = "comment";
}

/// Actors named per group; the count covers them all.
pub const ACTORS_SHOWN: usize = 3;
/// Unread groups counted at most (the bell shows "99+").
pub const UNREAD_CAP: i64 = 100;

/// One group of notifications.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Group {
    pub kind: String,
    /// `None` for follows.
    pub post_id: Option<Uuid>,
    /// The newest first, at most [`ACTORS_SHOWN`].
    pub actors: Vec<Uuid>,
    /// Distinct people in the group.
    pub count: i64,
    pub latest_at: DateTime<Utc>,
    /// The log position of the newest act: the group's id and cursor.
    pub latest: i64,
    pub read: bool,
}

/// A page of groups, newest first, with the unread count.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Page {
    pub items: Vec<Group>,
    /// Unread groups, at most [`UNREAD_CAP`].
    pub unread: i64,
}

/// The acts that notify `$1`, as (kind, post_id, actor, position, at).
const MINE: &str = "\
    SELECT a.kind, NULL::uuid AS post_id, a.actor, a.position, a.at \
      FROM read_model.notification_acts a \
     WHERE a.target = $1 AND a.kind = 'follow' \
    UNION ALL \
    SELECT a.kind, a.target, a.actor, a.position, a.at \
      FROM read_model.notification_posts p \
      JOIN read_model.notification_acts a ON a.target = p.post_id AND a.kind IN ('like', 'comment') \
     WHERE p.author = $1 AND NOT p.deleted AND a.actor <> $1";

/// The read side of notifications.
#[derive(Debug, Clone)]
pub struct Notifications {
    pool: PgPool,
}

/// A row of [`Notifications::page`]: the unread count, then a group's columns (all null
/// when the page is empty).
type PageRow = (
    i64,
    Option<String>,
    Option<Uuid>,
    Option<Vec<Uuid>>,
    Option<i64>,
    Option<DateTime<Utc>>,
    Option<i64>,
    Option<bool>,
);

impl Notifications {
    pub fn new(pool: PgPool) -> Self {
        Self { pool }
    }

    /// `user`'s groups whose newest act is before `before` (a group's `latest`), newest
    /// first, at most `limit`.
    ///
    /// # Errors
    /// When PostgreSQL fails.
    pub async fn page(&self, user: Uuid, before: Option<i64>, limit: u32) -> ReadResult<Page> {
        // The groups are aggregated once, for the page and the unread count both; the count
        // comes on every row, and alone (the group's columns null) when the page is empty.
        let rows: Vec<PageRow> = sqlx::query_as(&format!(
            "WITH mine AS ({MINE}), \
                  mark AS (SELECT coalesce((SELECT up_to FROM read_model.notification_reads \
                                             WHERE user_id = $1), 0) AS up_to), \
                  groups AS ( \
                    SELECT kind, post_id, \
                           (array_agg(actor ORDER BY position DESC))[1:{ACTORS_SHOWN}] AS actors, \
                           count(*) AS people, max(at) AS latest_at, max(position) AS latest \
                      FROM mine GROUP BY kind, post_id), \
                  unread AS ( \
                    SELECT count(*) AS groups FROM ( \
                      SELECT 1 FROM groups WHERE latest > (SELECT up_to FROM mark) \
                       LIMIT {UNREAD_CAP}) u) \
             SELECT unread.groups, g.kind, g.post_id, g.actors, g.people, g.latest_at, g.latest, \
                    g.latest <= (SELECT up_to FROM mark) \
               FROM unread LEFT JOIN LATERAL ( \
                    SELECT * FROM groups WHERE latest < $2 ORDER BY latest DESC LIMIT $3) g ON true \
              ORDER BY g.latest DESC"
        ))
        .bind(user)
        .bind(before.unwrap_or(i64::MAX))
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await?;
        let unread = rows.first().map_or(0, |row| row.0);
        let items = rows
            .into_iter()
            .filter_map(
                |(_, kind, post_id, actors, count, latest_at, latest, read)| {
                    Some(Group {
                        kind: kind?,
                        post_id,
                        actors: actors?,
                        count: count?,
                        latest_at: latest_at?,
                        latest: latest?,
                        read: read?,
                    })
                },
            )
            .collect();
        Ok(Page { items, unread })
    }
}

/// The `notifications` projection.
#[derive(Debug, Clone)]
pub struct NotificationsProjection {
    pool: PgPool,
    schema: String,
    live: Option<LivePublisher>,
}

impl NotificationsProjection {
    pub const NAME: &'static str = "notifications";

    /// Its tables, in every schema that holds a copy (replay copies and swaps them).
    pub const TABLES: &'static [&'static str] = &[
        "notification_posts",
        "notification_acts",
        "notification_reads",
    ];

    /// Over the live tables, in [`crate::lite::LITE_SCHEMA`].
    pub fn new(pool: PgPool) -> Self {
        Self {
            pool,
            schema: crate::lite::LITE_SCHEMA.to_owned(),
            live: None,
        }
    }

    /// Over the tables in `schema` (a replay's), pushing nothing.
    ///
    /// # Errors
    /// [`ReadModelError::Rejected`] when `schema` is not a plain identifier.
    pub fn in_schema(pool: PgPool, schema: &str) -> ReadResult<Self> {
        Ok(Self {
            pool,
            schema: crate::lite::checked_schema(schema)?,
            live: None,
        })
    }

    /// Pushes a `notification` event to the person notified.
    #[must_use]
    pub fn with_live(mut self, live: Option<LivePublisher>) -> Self {
        self.live = live;
        self
    }

    async fn act(
        &self,
        kind: &str,
        target: Uuid,
        actor: Uuid,
        envelope: &EventEnvelope,
    ) -> ReadResult<()> {
        // An act consumed after its actor's erasure (another topic) is not stored.
        if store::keys::is_erased(&self.pool, actor)
            .await
            .map_err(|e| ReadModelError::Unavailable(e.to_string()))?
        {
            return Ok(());
        }
        let s = &self.schema;
        sqlx::query(&format!(
            "INSERT INTO {s}.notification_acts (kind, target, actor, position, at) \
             VALUES ($1, $2, $3, $4, $5) \
             ON CONFLICT (target, kind, actor) DO UPDATE \
                SET position = EXCLUDED.position, at = EXCLUDED.at \
              WHERE notification_acts.position < EXCLUDED.position"
        ))
        .bind(kind)
        .bind(target)
        .bind(actor)
        .bind(envelope.global_position)
        .bind(envelope.recorded_at)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    async fn undo(&self, kind: &str, target: Uuid, actor: Uuid, position: i64) -> ReadResult<()> {
        let s = &self.schema;
        sqlx::query(&format!(
            "DELETE FROM {s}.notification_acts \
              WHERE target = $1 AND kind = $2 AND actor = $3 AND position < $4"
        ))
        .bind(target)
        .bind(kind)
        .bind(actor)
        .bind(position)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// The person a new act on `post` notifies: its author, if the post is known and
    /// live and the act is not theirs.
    async fn author(&self, post: Uuid, actor: Uuid) -> ReadResult<Option<Uuid>> {
        let s = &self.schema;
        let author: Option<Uuid> = sqlx::query_scalar(&format!(
            "SELECT author FROM {s}.notification_posts WHERE post_id = $1 AND NOT deleted"
        ))
        .bind(post)
        .fetch_optional(&self.pool)
        .await?;
        Ok(author.filter(|author| *author != actor))
    }

    async fn push(
        &self,
        to: Option<Uuid>,
        kind: &str,
        post_id: Option<Uuid>,
        actor: Uuid,
        envelope: &EventEnvelope,
    ) -> Result<(), ApplyError> {
        let (Some(live), Some(to)) = (&self.live, to) else {
            return Ok(());
        };
        let data = json!({
            "id": envelope.global_position.to_string(),
            "kind": kind,
            "post_id": post_id,
            "actor": actor,
            "latest_at": envelope.recorded_at,
        });
        let push = Push {
            once_for: Some(envelope.event_id),
            outcome: false,
        };
        live.push(&user_channel(to), "notification", &data, push)
            .await
            .map_err(|e| ApplyError::Transient(e.to_string()))?;
        Ok(())
    }

    async fn forget(&self, user: Uuid) -> ReadResult<()> {
        let mut tx = self.pool.begin().await?;
        let s = &self.schema;
        for statement in [
            format!("DELETE FROM {s}.notification_acts WHERE actor = $1 OR target = $1"),
            format!("UPDATE {s}.notification_posts SET deleted = true WHERE author = $1"),
            format!("DELETE FROM {s}.notification_reads WHERE user_id = $1"),
        ] {
            sqlx::query(&statement).bind(user).execute(&mut *tx).await?;
        }
        tx.commit().await?;
        Ok(())
    }
}

impl Projection for NotificationsProjection {
    fn name(&self) -> &str {
        Self::NAME
    }

    fn handles(&self, event_type: &str) -> bool {
        matches!(
            event_type,
            "post.published"
                | "post.deleted"
                | "post.liked"
                | "post.unliked"
                | "comment.added"
                | "social.followed"
                | "social.unfollowed"
                | "user.erased"
                | "user.notifications_read"
        )
    }

    async fn apply(&self, envelope: &EventEnvelope) -> Result<(), ApplyError> {
        let position = envelope.global_position;
        let s = &self.schema;
        match &envelope.event {
            Event::PostPublished(e) => {
                sqlx::query(&format!(
                    "INSERT INTO {s}.notification_posts (post_id, author) VALUES ($1, $2) \
                     ON CONFLICT (post_id) DO NOTHING"
                ))
                .bind(e.post_id)
                .bind(e.author_id)
                .execute(&self.pool)
                .await
                .map_err(ReadModelError::from)?;
            }
            Event::PostDeleted(e) => {
                let mut tx = self.pool.begin().await.map_err(ReadModelError::from)?;
                sqlx::query(&format!(
                    "INSERT INTO {s}.notification_posts (post_id, author, deleted) \
                     VALUES ($1, $2, true) ON CONFLICT (post_id) DO UPDATE SET deleted = true"
                ))
                .bind(e.post_id)
                .bind(e.author_id)
                .execute(&mut *tx)
                .await
                .map_err(ReadModelError::from)?;
                sqlx::query(&format!(
                    "DELETE FROM {s}.notification_acts WHERE target = $1"
                ))
                .bind(e.post_id)
                .execute(&mut *tx)
                .await
                .map_err(ReadModelError::from)?;
                tx.commit().await.map_err(ReadModelError::from)?;
            }
            Event::PostLiked(e) => {
                self.act(kind::LIKE, e.post_id, e.user_id, envelope).await?;
                let author = self.author(e.post_id, e.user_id).await?;
                self.push(author, kind::LIKE, Some(e.post_id), e.user_id, envelope)
                    .await?;
            }
            Event::PostUnliked(e) => {
                self.undo(kind::LIKE, e.post_id, e.user_id, position)
                    .await?
            }
            Event::CommentAdded(e) => {
                self.act(kind::COMMENT, e.post_id, e.author_id, envelope)
                    .await?;
                let author = self.author(e.post_id, e.author_id).await?;
                self.push(
                    author,
                    kind::COMMENT,
                    Some(e.post_id),
                    e.author_id,
                    envelope,
                )
                .await?;
            }
            Event::Followed(e) => {
                self.act(kind::FOLLOW, e.followee_id, e.follower_id, envelope)
                    .await?;
                self.push(
                    Some(e.followee_id),
                    kind::FOLLOW,
                    None,
                    e.follower_id,
                    envelope,
                )
                .await?;
            }
            Event::Unfollowed(e) => {
                self.undo(kind::FOLLOW, e.followee_id, e.follower_id, position)
                    .await?;
            }
            Event::UserErased(e) => self.forget(e.user_id).await?,
            Event::UserNotificationsRead(e) => {
                sqlx::query(&format!(
                    "INSERT INTO {s}.notification_reads (user_id, up_to) VALUES ($1, $2) \
                     ON CONFLICT (user_id) DO UPDATE \
                        SET up_to = greatest(notification_reads.up_to, EXCLUDED.up_to)"
                ))
                .bind(e.user_id)
                .bind(e.up_to)
                .execute(&self.pool)
                .await
                .map_err(ReadModelError::from)?;
            }
            _ => {}
        }
        Ok(())
    }
}
