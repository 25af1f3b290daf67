//! The query side over the read models: what the API's read routes call (API.md "Posts",
//! "Feed", "Social graph").
//!
//! The feed: timeline ids (plus the own lists of followed authors merged at read time) →
//! one Redis round trip for previews and counts → the content store for the misses → a
//! lease-guarded cache fill ([`PostCache`]). A post that is deleted (or not yet in the
//! content store) is left out.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use sqlx::PgPool;
use uuid::Uuid;

use crate::cache::{CacheSettings, PostCache};
use crate::content::{CommentDoc, ContentStore, PostDoc, Profile};
use crate::error::ReadResult;
use crate::messaging::MessagingStore;
use crate::presence::PresenceHistory;
use crate::timeline::{FollowCounts, TimelineEntry, TimelineStore};

/// Registers the feed cache's hit and miss counters at zero, so that a gateway that has not
/// served a feed yet exports `0` rather than no series.
pub fn register_metrics() {
    metrics::counter!("read_model_cache_hits_total", "cache" => "feed_item").increment(0);
    metrics::counter!("read_model_cache_misses_total", "cache" => "feed_item").increment(0);
}

/// One item of a home feed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FeedItem {
    pub post_id: Uuid,
    pub author_id: Uuid,
    pub title: String,
    pub preview: String,
    pub like_count: i64,
    pub comment_count: i64,
    pub created_at: DateTime<Utc>,
}

/// A page of results and the cursor of the next one (a position), if there may be more.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Page<T> {
    pub items: Vec<T>,
    pub next_cursor: Option<i64>,
}

/// The read models the queries use.
#[derive(Debug, Clone)]
pub struct ReadModels {
    pub timelines: Arc<dyn TimelineStore>,
    pub content: Arc<dyn ContentStore>,
    pub messaging: Arc<dyn MessagingStore>,
    pub presence: Arc<dyn PresenceHistory>,
    pub cache: PostCache,
}

impl ReadModels {
    /// The lite read models: PostgreSQL (schema [`LITE_SCHEMA`](crate::lite::LITE_SCHEMA)) and the Redis caches under
    /// `<redis_prefix>rm:`.
    pub fn lite(pool: PgPool, redis: redis::aio::ConnectionManager, redis_prefix: &str) -> Self {
        Self {
            timelines: Arc::new(crate::timeline::postgres::PgTimelines::lite(pool.clone())),
            content: Arc::new(crate::content::postgres::PgContent::lite(pool.clone())),
            messaging: Arc::new(crate::messaging::PgMessaging::new(pool.clone())),
            presence: Arc::new(crate::presence::PgPresenceHistory::new(
                pool,
                crate::presence::DEFAULT_RETENTION,
            )),
            cache: PostCache::new(
                redis,
                format!("{redis_prefix}rm:"),
                CacheSettings::default(),
            ),
        }
    }

    /// `user`'s home feed, newest first: up to `limit` items older than `before`.
    ///
    /// # Errors
    /// When a store or Redis fails.
    pub async fn feed(
        &self,
        user: Uuid,
        before: Option<i64>,
        limit: usize,
    ) -> ReadResult<Page<FeedItem>> {
        let mut entries = self.timelines.timeline(user, before, limit).await?;
        let merged = self.timelines.merged_authors_followed_by(user).await?;
        let lists = futures::future::try_join_all(
            merged
                .iter()
                .map(|&author| self.timelines.author_posts(author, before, limit)),
        )
        .await?;
        if !lists.is_empty() {
            entries.extend(lists.into_iter().flatten());
            entries.sort_by_key(|e| std::cmp::Reverse(e.position));
            let mut seen = HashSet::new();
            entries.retain(|e| seen.insert(e.post_id));
            entries.truncate(limit);
        }
        let next_cursor = (entries.len() == limit)
            .then(|| entries.last().map(|e| e.position))
            .flatten();
        let items = self.items(&entries).await?;
        Ok(Page { items, next_cursor })
    }

    /// `author`'s own posts, newest first: up to `limit` items older than `before`.
    ///
    /// # Errors
    /// When a store or Redis fails.
    pub async fn posts_by(
        &self,
        author: Uuid,
        before: Option<i64>,
        limit: usize,
    ) -> ReadResult<Page<FeedItem>> {
        let entries = self.timelines.author_posts(author, before, limit).await?;
        let next_cursor = (entries.len() == limit)
            .then(|| entries.last().map(|e| e.position))
            .flatten();
        let items = self.items(&entries).await?;
        Ok(Page { items, next_cursor })
    }

    async fn items(&self, entries: &[TimelineEntry]) -> ReadResult<Vec<FeedItem>> {
        let ids: Vec<Uuid> = entries.iter().map(|e| e.post_id).collect();
        let cached = self.cache.feed_items(&ids).await?;
        let missing: Vec<Uuid> = ids
            .iter()
            .zip(&cached)
            .filter(|(_, hit)| hit.is_none())
            .map(|(&id, _)| id)
            .collect();
        let loaded = if missing.is_empty() {
            Vec::new()
        } else {
            metrics::counter!("read_model_cache_misses_total", "cache" => "feed_item")
                .increment(missing.len() as u64);
            self.cache
                .fill_feed_items(&missing, || self.content.posts(&missing))
                .await?
        };
        metrics::counter!("read_model_cache_hits_total", "cache" => "feed_item")
            .increment((ids.len() - missing.len()) as u64);
        let mut items = Vec::with_capacity(ids.len());
        for (id, hit) in ids.iter().zip(cached) {
            if let Some(hit) = hit {
                items.push(FeedItem {
                    post_id: hit.preview.post_id,
                    author_id: hit.preview.author_id,
                    title: hit.preview.title,
                    preview: hit.preview.preview,
                    like_count: hit.like_count,
                    comment_count: hit.comment_count,
                    created_at: hit.preview.created_at,
                });
            } else if let Some(post) = loaded.iter().find(|p| p.post_id == *id) {
                items.push(FeedItem {
                    post_id: post.post_id,
                    author_id: post.author_id,
                    title: post.title.clone(),
                    preview: post.preview.clone(),
                    like_count: post.like_count,
                    comment_count: post.comment_count,
                    created_at: post.created_at,
                });
            }
        }
        Ok(items)
    }

    /// A live post.
    ///
    /// # Errors
    /// When the content store fails.
    pub async fn post(&self, post: Uuid) -> ReadResult<Option<PostDoc>> {
        self.content.post(post).await
    }

    /// Comments of a live post, newest first; `None` when the post does not exist (or is
    /// deleted). The first page comes from the cached list when it can.
    ///
    /// # Errors
    /// When a store or Redis fails.
    pub async fn comments(
        &self,
        post: Uuid,
        before: Option<i64>,
        limit: usize,
    ) -> ReadResult<Option<Page<CommentDoc>>> {
        let page = |items: Vec<CommentDoc>| {
            let next_cursor = (items.len() == limit)
                .then(|| items.last().map(|c| c.position))
                .flatten();
            Page { items, next_cursor }
        };
        if before.is_none() && limit <= self.cache.settings().comments_cap {
            if let Some(items) = self.cache.first_comments(post, limit).await? {
                return Ok(Some(page(items)));
            }
        }
        if self.content.post(post).await?.is_none() {
            return Ok(None);
        }
        let items = if before.is_none() && limit <= self.cache.settings().comments_cap {
            self.cache
                .fill_first_comments(post, limit, |n| self.content.comments(post, None, n))
                .await?
        } else {
            self.content.comments(post, before, limit).await?
        };
        Ok(Some(page(items)))
    }

    /// A public profile with follower counts.
    ///
    /// # Errors
    /// When a store fails.
    pub async fn profile(&self, user: Uuid) -> ReadResult<Option<(Profile, FollowCounts)>> {
        let Some(profile) = self.content.profile(user).await? else {
            return Ok(None);
        };
        let counts = self.timelines.counts(user).await?;
        Ok(Some((profile, counts)))
    }
}

/// Whether every projection in `projections` has applied the event at `position` (or,
/// when no event has that position, the first one after it). Compares in the log's read
/// order `(transaction_id, global_position)`, not by position alone: a smaller position can
/// commit later.
///
/// # Errors
/// On database failure.
pub async fn caught_up(
    pool: &PgPool,
    projections: &[&str],
    position: i64,
) -> Result<bool, sqlx::Error> {
    let names: Vec<String> = projections
        .iter()
        .map(|p| format!("projection:{p}"))
        .collect();
    sqlx::query_scalar(
        "SELECT count(*) = cardinality($2::text[]) FROM checkpoints c, \
                (SELECT transaction_id, global_position FROM events WHERE global_position >= $1 \
                  ORDER BY global_position LIMIT 1) e \
          WHERE c.name = ANY($2) \
            AND (c.transaction_id, c.global_position) >= (e.transaction_id, e.global_position)",
    )
    .bind(position)
    .bind(&names)
    .fetch_one(pool)
    .await
}

/// Polls [`caught_up`] every 5 ms until it holds or `bound` has passed; returns whether it
/// holds.
///
/// # Errors
/// On database failure.
pub async fn wait_caught_up(
    pool: &PgPool,
    projections: &[&str],
    position: i64,
    bound: Duration,
) -> Result<bool, sqlx::Error> {
    let deadline = Instant::now() + bound;
    loop {
        if caught_up(pool, projections, position).await? {
            return Ok(true);
        }
        if Instant::now() >= deadline {
            return Ok(false);
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}
