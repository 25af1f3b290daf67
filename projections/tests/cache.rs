//! The post caches against a reader that fills them between the projection's store write
//! and its cache write: the reader already saw the write, so the cache write must not count
//! it again (an increment would) nor list the comment twice; and against two consumers
//! whose cache writes land in the other order than their store writes.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use chrono::{SubsecRound, Utc};
use event_schemas::like::PostLikedV1;
use event_schemas::{Event, EventEnvelope, Metadata};
use projections::cache::{CacheSettings, PostCache};
use projections::content::postgres::PgContent;
use projections::content::{Change, CommentDoc, ContentStore, PostDoc, Profile};
use projections::{ContentProjection, Projection, ReadResult};
use testkit::TestDb;
use uuid::Uuid;

async fn cache() -> PostCache {
    let url = std::env::var("REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into());
    let redis = redis::Client::open(url).unwrap();
    let manager = redis::aio::ConnectionManager::new(redis).await.unwrap();
    let prefix = format!("test:{}:", Uuid::new_v4().simple());
    PostCache::new(manager, prefix, CacheSettings::default())
}

fn post() -> PostDoc {
    PostDoc {
        post_id: Uuid::now_v7(),
        author_id: Uuid::new_v4(),
        position: 1,
        title: "Title".to_owned(),
        body_markdown: "hi".to_owned(),
        body_html: "<p>hi</p>".to_owned(),
        preview: "hi".to_owned(),
        media: Vec::new(),
        like_count: 0,
        comment_count: 0,
        created_at: Utc::now().trunc_subsecs(3),
    }
}

#[tokio::test]
async fn a_fill_between_the_store_write_and_the_cache_write_is_not_counted_twice() {
    let db = TestDb::new().await;
    let store = PgContent::lite(db.pool.clone());
    let cache = cache().await;
    let post = post();
    store.insert_post(&post).await.unwrap();
    let id = post.post_id;

    // A like, stored; a reader misses and fills from the store; then the cache write.
    let change = store.set_like(id, Uuid::new_v4(), true).await.unwrap();
    assert!(change.changed);
    let ids = [id];
    let load = || store.posts(&ids);
    cache.fill_feed_items(&[id], load).await.unwrap();
    cache.like_count_is(id, change.count).await.unwrap();
    let item = cache.feed_items(&[id]).await.unwrap()[0].clone().unwrap();
    assert_eq!((item.like_count, item.comment_count), (1, 0));

    // A comment, the same way: the list filled with it, then the cache write.
    let comment = CommentDoc {
        comment_id: Uuid::now_v7(),
        post_id: id,
        author_id: Uuid::new_v4(),
        position: 2,
        body: "first".to_owned(),
        created_at: Utc::now().trunc_subsecs(3),
    };
    let change = store.add_comment(&comment).await.unwrap();
    cache.invalidate(id).await.unwrap();
    cache.fill_feed_items(&[id], load).await.unwrap();
    let page = |cap| store.comments(id, None, cap);
    cache.fill_first_comments(id, 10, page).await.unwrap();
    cache.comment_added(&comment, change.count).await.unwrap();
    let listed = cache.first_comments(id, 10).await.unwrap().unwrap();
    assert_eq!(listed, vec![comment.clone()]);
    let item = cache.feed_items(&[id]).await.unwrap()[0].clone().unwrap();
    assert_eq!((item.like_count, item.comment_count), (1, 1));

    // A newer comment the list does not hold yet goes on top; the cached count follows the
    // store.
    cache.invalidate(id).await.unwrap();
    cache.fill_feed_items(&[id], load).await.unwrap();
    let newer = CommentDoc {
        comment_id: Uuid::now_v7(),
        position: 3,
        body: "second".to_owned(),
        ..comment.clone()
    };
    cache.fill_first_comments(id, 10, page).await.unwrap();
    let change = store.add_comment(&newer).await.unwrap();
    cache.comment_added(&newer, change.count).await.unwrap();
    let listed = cache.first_comments(id, 10).await.unwrap().unwrap();
    assert_eq!(listed, vec![newer, comment]);
    let item = cache.feed_items(&[id]).await.unwrap()[0].clone().unwrap();
    assert_eq!((item.like_count, item.comment_count), (1, 2));

    // A cold count stays cold.
    cache.invalidate(id).await.unwrap();
    cache.like_count_is(id, 5).await.unwrap();
    assert_eq!(cache.feed_items(&[id]).await.unwrap(), vec![None]);
    cache.clear().await.unwrap();
}

/// On Kafka, two comments of one post may be applied in either order (different
/// partitions): an older comment applied after a newer one was listed must not be missing
/// from the cached list, which ends as complete.
#[tokio::test]
async fn a_comment_applied_after_a_newer_one_is_not_missing_from_the_cached_list() {
    let db = TestDb::new().await;
    let store = PgContent::lite(db.pool.clone());
    let cache = cache().await;
    let post = post();
    store.insert_post(&post).await.unwrap();
    let id = post.post_id;
    let comment = |position: i64| CommentDoc {
        comment_id: Uuid::now_v7(),
        post_id: id,
        author_id: Uuid::new_v4(),
        position,
        body: format!("at {position}"),
        created_at: Utc::now().trunc_subsecs(3),
    };
    let (older, newer) = (comment(2), comment(3));
    let page = |cap| store.comments(id, None, cap);

    // The newer one first: stored, listed by a reader, pushed.
    let change = store.add_comment(&newer).await.unwrap();
    cache.fill_first_comments(id, 10, page).await.unwrap();
    cache.comment_added(&newer, change.count).await.unwrap();
    // Then the older one.
    let change = store.add_comment(&older).await.unwrap();
    cache.comment_added(&older, change.count).await.unwrap();

    let listed = match cache.first_comments(id, 10).await.unwrap() {
        Some(listed) => listed,
        None => {
            cache.fill_first_comments(id, 10, page).await.unwrap();
            cache.first_comments(id, 10).await.unwrap().unwrap()
        }
    };
    assert_eq!(listed, vec![newer, older]);
    cache.clear().await.unwrap();
}

/// A store whose `set_like` stays held, after storing, until released: the first consumer
/// of a group stored its like and has not written the cache yet.
#[derive(Debug)]
struct HeldLikes {
    inner: PgContent,
    stored: std::sync::Arc<tokio::sync::Notify>,
    release: std::sync::Arc<tokio::sync::Notify>,
}

#[async_trait::async_trait]
impl ContentStore for HeldLikes {
    async fn put_profile(&self, profile: &Profile) -> ReadResult<()> {
        self.inner.put_profile(profile).await
    }
    async fn rename(&self, user: Uuid, display_name: &str) -> ReadResult<()> {
        self.inner.rename(user, display_name).await
    }
    async fn remove_profile(&self, user: Uuid) -> ReadResult<()> {
        self.inner.remove_profile(user).await
    }
    async fn profile(&self, user: Uuid) -> ReadResult<Option<Profile>> {
        self.inner.profile(user).await
    }
    async fn insert_post(&self, post: &PostDoc) -> ReadResult<()> {
        self.inner.insert_post(post).await
    }
    async fn delete_post(&self, post: Uuid) -> ReadResult<()> {
        self.inner.delete_post(post).await
    }
    async fn post(&self, post: Uuid) -> ReadResult<Option<PostDoc>> {
        self.inner.post(post).await
    }
    async fn posts(&self, ids: &[Uuid]) -> ReadResult<Vec<PostDoc>> {
        self.inner.posts(ids).await
    }
    async fn add_comment(&self, comment: &CommentDoc) -> ReadResult<Change> {
        self.inner.add_comment(comment).await
    }
    async fn comments(
        &self,
        post: Uuid,
        before: Option<i64>,
        limit: usize,
    ) -> ReadResult<Vec<CommentDoc>> {
        self.inner.comments(post, before, limit).await
    }
    async fn set_like(&self, post: Uuid, user: Uuid, liked: bool) -> ReadResult<Change> {
        let change = self.inner.set_like(post, user, liked).await?;
        self.stored.notify_one();
        self.release.notified().await;
        Ok(change)
    }
    async fn erase_user(&self, user: Uuid) -> ReadResult<Vec<Uuid>> {
        self.inner.erase_user(user).await
    }
    async fn erased(&self, users: &[Uuid]) -> ReadResult<std::collections::HashSet<Uuid>> {
        self.inner.erased(users).await
    }
}

fn liked(post: Uuid, position: i64) -> EventEnvelope {
    EventEnvelope {
        global_position: position,
        event_id: Uuid::new_v4(),
        stream_type: "like".to_owned(),
        stream_id: post.to_string(),
        stream_version: 1,
        stored_schema_version: 1,
        event: Event::PostLiked(PostLikedV1 {
            post_id: post,
            user_id: Uuid::new_v4(),
        }),
        metadata: Metadata::default(),
        recorded_at: Utc::now(),
    }
}

/// Two consumers of one Kafka group like one post at once (its likes spread over
/// partitions): the first stores its like (count 1), the second stores and caches its own
/// (count 2), then the first writes its count, 1, onto the cache. The first one's check
/// against the store drops the stale count, so a reader refills 2.
#[tokio::test]
async fn a_count_cached_out_of_order_by_another_consumer_is_dropped() {
    let db = TestDb::new().await;
    let store = PgContent::lite(db.pool.clone());
    let cache = cache().await;
    let post = post();
    store.insert_post(&post).await.unwrap();
    let id = post.post_id;
    let ids = [id];
    cache
        .fill_feed_items(&[id], || store.posts(&ids))
        .await
        .unwrap();

    let (stored, release) = (
        std::sync::Arc::new(tokio::sync::Notify::new()),
        std::sync::Arc::new(tokio::sync::Notify::new()),
    );
    let first = ContentProjection::new(
        std::sync::Arc::new(HeldLikes {
            inner: PgContent::lite(db.pool.clone()),
            stored: stored.clone(),
            release: release.clone(),
        }),
        cache.clone(),
    );
    let second = ContentProjection::new(
        std::sync::Arc::new(PgContent::lite(db.pool.clone())),
        cache.clone(),
    );
    let held = tokio::spawn(async move { first.apply(&liked(id, 10)).await });
    stored.notified().await;
    second.apply(&liked(id, 11)).await.unwrap();
    let item = cache.feed_items(&[id]).await.unwrap()[0].clone().unwrap();
    assert_eq!(item.like_count, 2, "the second consumer cached its count");
    release.notify_one();
    held.await.unwrap().unwrap();

    assert_eq!(store.post(id).await.unwrap().unwrap().like_count, 2);
    if let Some(item) = cache.feed_items(&[id]).await.unwrap()[0].clone() {
        assert_eq!(item.like_count, 2, "a stale count stayed cached");
    }
}
